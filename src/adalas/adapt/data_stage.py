"""Stage 1, `data`: rows to adapt on, the model's own (`adalas synth`, written once per model and settings
and reused) or `--data`; rows sharing a word 8-gram with a `--test` file dropped; the first rows held out.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from ..io import atomic_write_text, file_sha256
from .run import Run
from .settings import SELF_WRITTEN_ROWS, AdaptSettings, say, sha256_json


def synth_settings(s: AdaptSettings):
    """The settings of the rows the model writes itself (those the committed embedded rows were made with)."""
    from ..synth import SynthSettings
    return SynthSettings(model=s.model, n=s.synth_rows, seed=0, batch_size=32, max_new_tokens=96, max_prompt_tokens=64)


def synth_location(s: AdaptSettings):
    """(where the self-written rows are or will be, their settings): the repository's committed rows for
    the model when they were made with these settings, else a file in the cache directory keyed on the
    model's weights and the settings (every later run with the same model and settings reuses it)."""
    from ..hub import model_sha256
    from ..paths import cache_dir

    settings = synth_settings(s)
    known = SELF_WRITTEN_ROWS.get(s.model)
    if known is not None and synth_finished(Path(known), settings):
        return Path(known), settings
    key = sha256_json({"model": s.model, "model_sha256": model_sha256(s.model), "settings": asdict(settings)})[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s.model).name or s.model)[:48]
    return cache_dir() / "synth" / f"{slug}-{key}.jsonl", settings


def synth_finished(path: Path, settings) -> bool:
    """The synth file is complete and was made with `settings` (a setting its meta file predates counts
    at its default, as `adalas synth` resumes), and its bytes are those its meta file records."""
    from ..synth import SynthSettings, meta_path

    meta = meta_path(path)
    if not (path.is_file() and meta.is_file()):
        return False
    try:
        state = json.loads(meta.read_text(encoding="utf-8"))
    except ValueError:
        return False
    now = json.loads(json.dumps(asdict(settings)))
    default = json.loads(json.dumps(asdict(SynthSettings())))
    was = state.get("settings", {})
    if not state.get("done") or any(was.get(k, default[k]) != v for k, v in now.items()):
        return False
    return state.get("data_sha256") in (None, file_sha256(path))


def _records(path: Path) -> list[dict]:
    """A data file's rows as written (JSON array or JSON Lines), in file order."""
    from ..data_sources import read_records
    return read_records(path.read_text(encoding="utf-8"), str(path))[0]


def data_inputs(run: Run) -> dict:
    s = run.s
    source = {"file": s.data, "sha256": run.checked.data_sha256} if s.data is not None else \
        {"synth": json.loads(json.dumps(asdict(synth_settings(s))))}
    return {**run.identity(), "source": source, "heldout": s.heldout,
            "tests": [{"file": f, "sha256": h} for f, h in zip(s.tests, run.checked.tests_sha256)]}


def stage_data(run: Run, inputs: dict, resume: bool) -> dict:
    """Rows to adapt on: the model's own (synth, reused when written before) or --data; rows sharing a
    word 8-gram with a --test file dropped; the first rows held out, the rest for training."""
    from ..data import load_examples
    from ..io import dumps_row
    from ..synth import meta_path, synthesize, test_filter

    s = run.s
    synth = None
    if s.data is not None:
        source = Path(s.data).expanduser()
    else:
        source, settings = synth_location(s)
        reused = synth_finished(source, settings)
        if not reused:
            say(f"writing {settings.n} rows with {s.model} itself (adalas synth, resumable) into {source}")
            source.parent.mkdir(parents=True, exist_ok=True)
            synthesize(run.model(), run.tokenizer(), settings, source, progress=s.progress)
        else:
            say(f"reusing the self-written rows {source}")
        synth = {"file": str(source), "meta": str(meta_path(source)), "reused": reused}
    records = _records(source)
    examples = load_examples(str(source))
    leaks = test_filter(s.tests) if s.tests else None
    kept = [r for r, ex in zip(records, examples)
            if leaks is None or not any(t and leaks.seen(t) for t in (ex.instruction, ex.context, ex.response))]
    if len(kept) < 2:
        raise ValueError(f"data: {len(kept)} row(s) left of {len(records)} after dropping those that share text with "
                         f"the --test files; training and held-out rows both need some")
    h = min(s.heldout, len(kept) // 2)
    (run.out / "data").mkdir(parents=True, exist_ok=True)
    outputs = {"source": str(source), "source_sha256": file_sha256(source), "rows": len(records),
               "dropped_test": len(records) - len(kept), "synth": synth}
    for name, rows in (("heldout", kept[:h]), ("train", kept[h:])):
        path = run.path(f"data/{name}.jsonl")
        atomic_write_text(path, "".join(dumps_row(r) + "\n" for r in rows))
        outputs.update({name: f"data/{name}.jsonl", f"{name}_sha256": file_sha256(path), f"{name}_rows": len(rows)})
    return outputs
