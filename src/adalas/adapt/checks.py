"""The checks before anything is written: every input that cannot work is a one-line ValueError before
the output directory is touched or the model loaded.
"""
from __future__ import annotations

from pathlib import Path

from ..io import file_sha256
from .data_stage import shape_settings, synth_finished, synth_location
from .export_stage import source_gguf
from .run import Checked, read_record
from .settings import RECORD_FILE, AdaptSettings


def check_settings(s: AdaptSettings) -> Checked:
    """ValueError (one line) for any input that cannot work, before anything is written or loaded:
    the output directory, the model (its config only), the layer count, the data and test files,
    and with --format gguf, a model llama.cpp's llama layout and tokenizer metadata can describe."""
    from transformers import AutoConfig

    from ..data import data_sha256, load_examples
    from ..hub import check_architecture, resolve
    from ..io import check_output_dir

    out = check_output_dir(s.out)
    if out.is_dir() and any(out.iterdir()) and read_record(out) is None:
        raise ValueError(f"--out: {str(out)!r} is not empty and holds no {RECORD_FILE}; pass a new or empty directory "
                         f"(or one an earlier adalas adapt wrote)")
    for f in s.tests:
        if not Path(f).expanduser().is_file():
            raise ValueError(f"--test: {f!r} is not a file")
        load_examples(f)  # a file that does not read fails here
    tests_sha = tuple(file_sha256(f) for f in s.tests)
    data_sha = None
    if s.data is not None:
        if str(s.data) == "builtin" or not Path(s.data).expanduser().is_file():
            raise ValueError(f"--data: {s.data!r} is not a file (rows with instruction, input and output, or a task's "
                             f"columns); the built-in set and hub datasets are evaluation data, never adapted on")
        from ..route_search import choice_data
        choice_data(s.model, s.data)  # refuses evaluation data (the built-in set, a file named as a test split)
        data_sha = data_sha256(s.data)
        if data_sha in tests_sha:
            raise ValueError(f"--data: {s.data!r} is also a --test file; adapt on other rows than you evaluate on")
        if len(load_examples(s.data)) < 2:
            raise ValueError(f"--data: {s.data!r} has fewer than 2 rows (training and held-out rows both need some)")
    check_architecture(s.model, trust_remote_code=s.trust_remote_code)
    config = AutoConfig.from_pretrained(resolve(s.model)[0], trust_remote_code=s.trust_remote_code)
    L = int(config.num_hidden_layers)
    if not 1 <= s.layers <= L - 1:
        raise ValueError(f"--layers: must be in 1..{L - 1} (the model has {L} layers), got {s.layers}")
    if s.format == "gguf":
        from ..gguf_export import check_gguf
        from ..hub import load_tokenizer
        check_gguf(config, load_tokenizer(s.model, trust_remote_code=s.trust_remote_code), source_gguf(s.model))
    if s.data is None and not all(synth_finished(*synth_location(s, c))
                                  for c in [None, *shape_settings(s, tests_sha)]):
        from ..hub import load_tokenizer
        if not getattr(load_tokenizer(s.model, trust_remote_code=s.trust_remote_code), "chat_template", None):
            raise ValueError(f"--data: required for {s.model!r}: its tokenizer has no chat template to write its own "
                             f"instructions from; pass --data FILE (rows with instruction, input, output)")
    return Checked(config, L, data_sha, tests_sha)
