"""`adalas adapt`: from a model to a faster one that keeps as much of its quality as it can, exported
for the tools people serve with. Five stages, each resumable, recorded in `DIR/adapt.json`.

Notable:
- Stages, in order: `data` (the model's own instructions and answers, or `--data FILE`, split into
  training and held-out rows), `route` (the N layers to keep, `adalas.route_search` on the first
  held-out rows), `train` (LoRA plus self-distillation on that route, `adalas.train`), `evaluate`
  (full depth, the route off the shelf and the adapted route on the held-out rows the search did not
  use and on each `--test` file, paired intervals; tokens/s of the export against full depth in
  transformers, side by side) and `export` (a plain transformers checkpoint, adapter merged, skipped
  layers deleted, with a model card; a GGUF for llama.cpp with `--format gguf`).
- `adapt.json` holds, per stage, `status` (pending, running, done), `inputs` and their sha256
  (`inputs_sha256`: the settings the stage reads and the sha256 of what earlier stages made),
  `wall_s` and `outputs` (paths relative to DIR, with their sha256). A stage that is done with the
  same inputs is skipped; one left `running` with the same inputs resumes its own work (synth rows,
  Trainer checkpoints, sweep rows); otherwise its work directory is cleared and it runs from the
  start. A later stage's inputs hold the sha256 of what the earlier ones made, so a change reaches
  every stage it affects and no other: a new `--test` file re-filters the data (the same rows: route
  and training are kept) and redoes the evaluation and the export; new `--steps` redo training on.
- The prompt follows the route by default (`skip_prompt=true`): the export, which has the skipped
  layers deleted, is then exactly the model that was trained and evaluated. `--prompt-depth full`
  trains and evaluates with the prompt at full depth (the paper's setting); the card then says that
  the export is a different model.
- Data without `--data`: `adalas synth` rows, written once per model and settings and reused by every
  later run (the repository's committed rows where they were made with the same settings, else a file
  under the cache directory keyed on the model's weights and the settings). Rows sharing a word 8-gram
  with a `--test` file are dropped (counted) before the split, so the test files can change without
  writing the data again. The first `--heldout` rows are held out (at most half), as
  data/synth/README.md splits the committed rows; the route search reads the first `--route-rows`
  of them and the held-out evaluation the rest.
- Library code: `run_adapt(AdaptSettings)` raises ValueError on bad input before anything is written
  (`check_settings`); the command turns it into one line and exit code 2.
"""
from __future__ import annotations

import copy
import hashlib
import json
import os
import re
import shlex
import shutil
import statistics
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

from .config import DepthConfig
from .io import atomic_write_json, atomic_write_text, file_sha256

STAGE_NAMES = ("data", "route", "train", "evaluate", "export")
RECORD_FILE = "adapt.json"
RECORD_VERSION = 1
FORMATS = ("hf", "gguf")
PROMPT_DEPTHS = ("route", "full")
# the repository's committed self-written rows (relative to its root), reused where their settings match
SELF_WRITTEN_ROWS = {"smollm2-135m": "data/synth/smollm2-135m.jsonl"}
# the training recipe (src/adalas/recipes/smollm2-135m-adapted-20.yaml): LoRA on every projection of a layer
# plus KL to the full-depth model on response tokens, from a cached top-k teacher
RECIPE = {"distill_alpha": 1.0, "distill_temperature": 1.0, "distill_top_k": 32, "lora_dropout": 0.0,
          "lr_scheduler_type": "cosine", "max_seq_length": 224, "prompt_fraction": 0.5, "save_steps": 40,
          "logging_steps": 10}


@dataclass(frozen=True)
class AdaptSettings:
    """What `adalas adapt` was asked for (flags of the same names, dashes for underscores)."""

    model: str
    layers: int
    out: str
    data: str | None = None
    tests: tuple[str, ...] = ()
    format: str = "hf"
    steps: int = 160
    seed: int = 0
    prompt_depth: str = "route"
    heldout: int = 96            # held-out rows (at most half of the data)
    route_rows: int = 32         # of them, the first K score the route search
    response_tokens: int = 32    # response tokens per row in the search
    max_candidates: int = 100    # routes the search scores at most
    synth_rows: int = 1600       # rows the model writes itself when no --data
    max_new_tokens: int = 64     # in evaluation
    eval_rows: int | None = None  # held-out rows evaluated (default: all the search did not use)
    batch_size: int = 8
    learning_rate: float = 5e-4
    lora_r: int = 16
    gguf_dtype: str = "f16"
    speed_tokens: int = 32       # new tokens per timed generate() call
    speed_rounds: int = 3        # timed calls per model and batch size, alternating
    dtype: str = "float32"
    device: str = "cpu"
    allow_pickle: bool = False
    trust_remote_code: bool = False
    progress: bool = True
    command: str = field(default="", compare=False)  # how it was invoked (the record and the card say it)

    def __post_init__(self):
        counts = {"layers": 1, "steps": 1, "heldout": 1, "route_rows": 1, "response_tokens": 1, "max_candidates": 2,
                  "synth_rows": 2, "max_new_tokens": 1, "batch_size": 1, "lora_r": 1, "speed_tokens": 1,
                  "speed_rounds": 1, "eval_rows": 1}
        for name, least in counts.items():
            value = getattr(self, name)
            if value is not None and value < least:
                raise ValueError(f"--{name.replace('_', '-')}: must be >= {least}, got {value}")
        if self.format not in FORMATS:
            raise ValueError(f"--format: must be one of {', '.join(FORMATS)}, got {self.format!r}")
        if self.prompt_depth not in PROMPT_DEPTHS:
            raise ValueError(f"--prompt-depth: must be one of {', '.join(PROMPT_DEPTHS)}, got {self.prompt_depth!r}")
        if not self.learning_rate > 0:
            raise ValueError(f"--learning-rate: must be > 0, got {self.learning_rate}")
        from .gguf_export import GGUF_DTYPES
        if self.gguf_dtype not in GGUF_DTYPES:
            raise ValueError(f"--gguf-dtype: must be one of {', '.join(GGUF_DTYPES)}, got {self.gguf_dtype!r}")

    @property
    def skip_prompt(self) -> bool:
        return self.prompt_depth == "route"


def sha256_json(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()


def _say(text: str) -> None:
    print(f"adalas adapt: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# Checks before anything is written

@dataclass
class Checked:
    """What the checks learned: the model's config and layer count, the file hashes."""

    config: Any
    num_layers: int
    data_sha256: str | None
    tests_sha256: tuple[str, ...]


def _read_record(out: Path) -> dict | None:
    path = out / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"--out: {str(path)!r} is not valid JSON; pass another directory or remove it") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), dict):
        raise ValueError(f"--out: {str(path)!r} is not an adalas adapt record; pass another directory")
    return record


def check_settings(s: AdaptSettings) -> Checked:
    """ValueError (one line) for any input that cannot work, before anything is written or loaded:
    the output directory, the model (its config only), the layer count, the data and test files,
    and with --format gguf, a model llama.cpp's llama layout and tokenizer metadata can describe."""
    from transformers import AutoConfig

    from .data import data_sha256, load_examples
    from .hub import check_architecture, resolve
    from .io import check_output_dir

    out = check_output_dir(s.out)
    if out.is_dir() and any(out.iterdir()) and _read_record(out) is None:
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
        from .route_search import choice_data
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
        from .gguf_export import check_gguf
        from .hub import load_tokenizer
        check_gguf(config, load_tokenizer(s.model, trust_remote_code=s.trust_remote_code), source_gguf(s.model))
    if s.data is None and not _synth_finished(*synth_location(s)):
        from .hub import load_tokenizer
        if not getattr(load_tokenizer(s.model, trust_remote_code=s.trust_remote_code), "chat_template", None):
            raise ValueError(f"--data: required for {s.model!r}: its tokenizer has no chat template to write its own "
                             f"instructions from; pass --data FILE (rows with instruction, input, output)")
    return Checked(config, L, data_sha, tests_sha)


def source_gguf(model: str) -> Path | None:
    """The GGUF an embedded model was read from (its llama.cpp metadata is copied), else None."""
    from .hub import EMBEDDED, embedded_gguf
    return embedded_gguf(model) if model in EMBEDDED else None


# ---------------------------------------------------------------------------------------------
# The run: the record, the loaded model, the stages

class Run:
    """One `adalas adapt` run: its settings, its directory, the record, and the base model (loaded once,
    on first use, at full depth)."""

    def __init__(self, s: AdaptSettings, checked: Checked):
        from .hub import model_sha256

        self.s = s
        self.checked = checked
        self.out = Path(s.out)
        self.num_layers = checked.num_layers
        self.model_sha256 = model_sha256(s.model)
        self.record: dict = {}
        self._model = None
        self._tokenizer = None

    def path(self, relative: str) -> Path:
        return self.out / relative

    def model(self):
        if self._model is None:
            from .model import AdalasForCausalLM
            self._model = AdalasForCausalLM.from_pretrained(self.s.model, dtype=self.s.dtype, device=self.s.device,
                                                            allow_pickle=self.s.allow_pickle,
                                                            trust_remote_code=self.s.trust_remote_code)
        return self._model

    def tokenizer(self):
        if self._tokenizer is None:
            from .hub import load_tokenizer
            self._tokenizer = load_tokenizer(self.s.model, trust_remote_code=self.s.trust_remote_code)
        return self._tokenizer

    def outputs(self, stage: str) -> dict:
        return self.record["stages"][stage]["outputs"]

    def identity(self) -> dict:
        """What every stage's results depend on: the model's name and weights, the dtype and device type."""
        return {"model": self.s.model, "model_sha256": self.model_sha256, "dtype": self.s.dtype,
                "device": self.s.device.split(":")[0]}

    def depth(self, skip: Sequence[int]) -> DepthConfig:
        return DepthConfig(mode="static_skip", skip_layers=sorted(skip), skip_prompt=self.s.skip_prompt)

    def save(self) -> None:
        atomic_write_json(self.out / RECORD_FILE, self.record)


def _new_stage() -> dict:
    return {"status": "pending", "inputs": None, "inputs_sha256": None, "wall_s": None, "outputs": {}}


# ---------------------------------------------------------------------------------------------
# Stage 1: data

def synth_settings(s: AdaptSettings):
    """The settings of the rows the model writes itself (those the committed embedded rows were made with)."""
    from .synth import SynthSettings
    return SynthSettings(model=s.model, n=s.synth_rows, seed=0, batch_size=32, max_new_tokens=96, max_prompt_tokens=64)


def synth_location(s: AdaptSettings):
    """(where the self-written rows are or will be, their settings): the repository's committed rows for
    the model when they were made with these settings, else a file in the cache directory keyed on the
    model's weights and the settings (every later run with the same model and settings reuses it)."""
    from .hub import model_sha256
    from .paths import cache_dir

    settings = synth_settings(s)
    known = SELF_WRITTEN_ROWS.get(s.model)
    if known is not None and _synth_finished(Path(known), settings):
        return Path(known), settings
    key = sha256_json({"model": s.model, "model_sha256": model_sha256(s.model), "settings": asdict(settings)})[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s.model).name or s.model)[:48]
    return cache_dir() / "synth" / f"{slug}-{key}.jsonl", settings


def _synth_finished(path: Path, settings) -> bool:
    """The synth file is complete and was made with `settings` (a setting its meta file predates counts
    at its default, as `adalas synth` resumes), and its bytes are those its meta file records."""
    from .synth import SynthSettings, meta_path

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
    from .data_sources import read_records
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
    from .data import load_examples
    from .io import dumps_row
    from .synth import meta_path, synthesize, test_filter

    s = run.s
    synth = None
    if s.data is not None:
        source = Path(s.data).expanduser()
    else:
        source, settings = synth_location(s)
        reused = _synth_finished(source, settings)
        if not reused:
            _say(f"writing {settings.n} rows with {s.model} itself (adalas synth, resumable) into {source}")
            source.parent.mkdir(parents=True, exist_ok=True)
            synthesize(run.model(), run.tokenizer(), settings, source, progress=s.progress)
        else:
            _say(f"reusing the self-written rows {source}")
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


# ---------------------------------------------------------------------------------------------
# Stage 2: route

def route_inputs(run: Run) -> dict:
    s, data = run.s, run.outputs("data")
    return {**run.identity(), "heldout_sha256": data["heldout_sha256"], "layers": s.layers,
            "skip_prompt": s.skip_prompt, "rows": s.route_rows, "response_tokens": s.response_tokens,
            "max_candidates": s.max_candidates}


def stage_route(run: Run, inputs: dict, resume: bool) -> dict:
    """`adalas route` on the first held-out rows: the N layers to keep, scored teacher-forced against full depth."""
    from .data import load_examples
    from .route_search import RouteScorer, prepare_rows, search_route

    s = run.s
    model, tok = run.model(), run.tokenizer()
    examples = load_examples(str(run.path(run.outputs("data")["heldout"])), limit=s.route_rows)
    context = model.family.max_positions
    rows = prepare_rows(examples, tok, response_tokens=s.response_tokens,
                        max_seq_length=512 if context is None else min(512, context))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scorer = RouteScorer(model, rows, pad_token_id=pad, batch_size=s.batch_size, skip_prompt=s.skip_prompt)
    doc = search_route(scorer, s.layers, max_candidates=s.max_candidates, progress=s.progress)
    doc.update(model=s.model, data=run.outputs("data")["heldout"], data_sha256=inputs["heldout_sha256"],
               prompt_depth=s.prompt_depth, response_tokens=s.response_tokens)
    atomic_write_json(run.path("route.json"), doc)
    base = doc["baseline"]
    return {"route": "route.json", "route_sha256": file_sha256(run.path("route.json")), "skip": doc["skip"],
            "keep": doc["keep"], "kl": doc["kl"], "top1_agreement": doc["top1_agreement"], "searched": doc["searched"],
            "rows": doc["rows"], "uniform_kl": base["uniform"]["kl"], "uniform_skip": base["uniform"]["skip"],
            "block_influence_kl": base["block_influence"]["kl"]}


# ---------------------------------------------------------------------------------------------
# Stage 3: train

def lora_targets(model) -> list[str]:
    """The names of every weight matrix in a layer (nn.Linear, or GPT-2's Conv1D): LoRA on all of them."""
    from torch import nn
    from transformers.pytorch_utils import Conv1D

    layer = model.family.layers()[0]
    return sorted({name.rsplit(".", 1)[-1] for name, m in layer.named_modules() if isinstance(m, (nn.Linear, Conv1D))})


def train_inputs(run: Run) -> dict:
    s = run.s
    return {**run.identity(), "train_sha256": run.outputs("data")["train_sha256"], "skip": run.outputs("route")["skip"],
            "skip_prompt": s.skip_prompt, "steps": s.steps, "seed": s.seed, "batch_size": s.batch_size,
            "learning_rate": s.learning_rate, "lora_r": s.lora_r, "recipe": RECIPE}


def train_argv(run: Run, inputs: dict, targets: Sequence[str], resume: bool) -> list[str]:
    """`adalas train` flags for the route: LoRA on every projection + self-distillation (the recipe)."""
    s = run.s
    context = run.model().family.max_positions
    r = RECIPE
    argv = ["--model", s.model, "--data", str(run.path(run.outputs("data")["train"])),
            "--output_dir", str(run.path("train")), "--depth", run.depth(inputs["skip"]).to_json(),
            "--prompt_format", "auto",
            "--max_seq_length", str(r["max_seq_length"] if context is None else min(r["max_seq_length"], context)),
            "--prompt_fraction", str(r["prompt_fraction"]), "--dtype", s.dtype,
            "--distill", "true", "--distill_alpha", str(r["distill_alpha"]),
            "--distill_temperature", str(r["distill_temperature"]), "--distill_top_k", str(r["distill_top_k"]),
            "--lora_r", str(s.lora_r), "--lora_alpha", str(2 * s.lora_r), "--lora_dropout", str(r["lora_dropout"]),
            "--lora_target_modules", *targets,
            "--max_steps", str(s.steps), "--learning_rate", str(s.learning_rate),
            "--lr_scheduler_type", r["lr_scheduler_type"], "--warmup_steps", str(min(10, s.steps // 10)),
            "--per_device_train_batch_size", str(s.batch_size), "--logging_steps", str(r["logging_steps"]),
            "--save_strategy", "steps", "--save_steps", str(r["save_steps"]), "--save_total_limit", "1",
            "--report_to", "none", "--seed", str(s.seed), "--dataloader_pin_memory", "false",
            "--disable_tqdm", "false" if s.progress else "true"]
    if s.device.split(":")[0] == "cpu":
        argv += ["--use_cpu", "true"]
    if s.allow_pickle:
        argv += ["--allow_pickle", "true"]
    if s.trust_remote_code:
        argv += ["--trust_remote_code", "true"]
    if resume:
        argv += ["--resume_from_checkpoint", "true"]
    return argv


def stage_train(run: Run, inputs: dict, resume: bool) -> dict:
    """`adalas train` on the route; the adapter goes to DIR/adapter (the shipped-adapter layout) with
    provenance naming this command; the run's checkpoints and merged weights are then removed."""
    from .checkpoints import replace_dir
    from .train import run as train_run

    t0 = time.monotonic()
    targets = lora_targets(run.model())
    argv = train_argv(run, inputs, targets, resume)
    with torch.enable_grad():  # (a caller inside torch.no_grad() must not turn training off)
        train_run(argv)
    work = run.path("train")
    trained = json.loads((work / "adapter" / "provenance.json").read_text(encoding="utf-8"))
    tmp = run.path(".adapter.new")
    if tmp.exists():
        shutil.rmtree(tmp)
    shutil.copytree(work / "adapter", tmp)
    provenance = {"base_model": run.s.model, "command": run.s.command or "adalas adapt",
                  "recipe": "adalas adapt (recipe smollm2-135m-adapted-20's defaults)", "data": "data/train.jsonl",
                  "data_sha256": inputs["train_sha256"], "steps": trained["steps"],
                  "wall_s": round((run.record["stages"]["train"]["wall_s"] or 0.0) + time.monotonic() - t0, 1),
                  "train_command": trained["command"]}  # wall_s: this stage's attempts with these inputs
    atomic_write_json(tmp / "provenance.json", provenance)
    replace_dir(tmp, run.path("adapter"))
    for p in work.iterdir():  # the adapter is the output; the merged copy and the checkpoints are big
        if p.name.startswith("checkpoint-") or p.name == "adapter":
            shutil.rmtree(p)
        elif p.suffix == ".safetensors":
            p.unlink()
    return {"adapter": "adapter", "adapter_sha256": file_sha256(run.path("adapter/adapter_model.safetensors")),
            "steps": trained["steps"], "lora_targets": targets, "train_command": trained["command"]}


# ---------------------------------------------------------------------------------------------
# Stage 4: evaluate

def evaluate_inputs(run: Run) -> dict:
    s = run.s
    return {**run.identity(), "adapter_sha256": run.outputs("train")["adapter_sha256"],
            "skip": run.outputs("route")["skip"], "skip_prompt": s.skip_prompt,
            "heldout_sha256": run.outputs("data")["heldout_sha256"], "search_rows": run.outputs("route")["rows"],
            "eval_rows": s.eval_rows, "max_new_tokens": s.max_new_tokens, "batch_size": s.batch_size,
            "speed": {"tokens": s.speed_tokens, "rounds": s.speed_rounds},
            "tests": [{"file": f, "sha256": h} for f, h in zip(s.tests, run.checked.tests_sha256)]}


def adapted_hf(run: Run):
    """A copy of the base model with the adapter in DIR/adapter merged into its weights."""
    from .hub import merge_adapter
    return merge_adapter(copy.deepcopy(run.model().model), run.path("adapter"))


def _finite(value: Any) -> Any:
    """JSON-safe: NaN and infinities (a ratio to a zero mean) become None."""
    if isinstance(value, float):
        return value if value == value and abs(value) != float("inf") else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def compare(rows: dict[str, list[float]]) -> dict:
    """Paired comparisons of the adapted route with full depth and with the route off the shelf
    (ROUGE-L F per row, the same rows in the same order): differences with their 95% intervals, the
    ratio to full depth, and two one-sided tests against 5% of full depth's mean."""
    import warnings

    from .stats import equivalence, paired_bootstrap, paired_ratio

    full, route, adapted = rows["full"], rows["route"], rows["adapted"]
    full_mean = sum(full) / len(full)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a ratio to a zero mean has no interval
        out = {"adapted_minus_full": paired_bootstrap(adapted, full),
               "adapted_minus_route": paired_bootstrap(adapted, route),
               "route_minus_full": paired_bootstrap(route, full),
               "adapted_ratio_to_full": paired_ratio(adapted, full),
               "route_ratio_to_full": paired_ratio(route, full),
               "equivalence": equivalence(adapted, full, 0.05 * full_mean) if full_mean > 0 else None}
    return _finite(out)


@torch.no_grad()
def measure_speed(full, export, prompts: Sequence[Sequence[int]], pad_token_id: int, tokens: int,
                  rounds: int) -> dict:
    """Greedy tokens/s of two plain transformers models, side by side: per batch size (1, and up to 8
    prompts), a warm-up call each, then `rounds` timed calls alternating between them, each generating
    exactly `tokens` new tokens per row; the median call is reported."""
    out = {}
    for batch in sorted({1, min(8, len(prompts))}):
        width = max(len(p) for p in prompts[:batch])
        ids = torch.tensor([[pad_token_id] * (width - len(p)) + list(p) for p in prompts[:batch]])  # (B, T) left-padded
        mask = (torch.arange(width)[None, :] >= torch.tensor([width - len(p) for p in prompts[:batch]])[:, None]).long()
        ids, mask = ids.to(full.device), mask.to(full.device)

        def call(m, n):
            t0 = time.perf_counter()
            m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                       pad_token_id=pad_token_id)
            return time.perf_counter() - t0

        for m in (full, export):
            call(m, 2)
        seconds: dict[str, list[float]] = {"full": [], "export": []}
        for _ in range(rounds):
            seconds["full"].append(call(full, tokens))
            seconds["export"].append(call(export, tokens))
        tps = {k: batch * tokens / statistics.median(v) for k, v in seconds.items()}
        out[f"batch_{batch}"] = {"batch": batch, "tokens": tokens, "full_tokens_per_s": round(tps["full"], 2),
                                 "export_tokens_per_s": round(tps["export"], 2),
                                 "ratio": round(tps["export"] / tps["full"], 3),
                                 "seconds": {k: [round(x, 4) for x in v] for k, v in seconds.items()}}
    return out


def _eval_sets(run: Run) -> list[dict]:
    """The held-out rows the route search did not use (all of them when it used every one), and each --test file."""
    from .data import load_examples

    s, data = run.s, run.outputs("data")
    heldout = load_examples(str(run.path(data["heldout"])))
    used = run.outputs("route")["rows"]
    unused = heldout[used:]
    rows = unused or heldout
    if s.eval_rows is not None:
        rows = rows[:s.eval_rows]
    sets = [{"name": "heldout", "file": data["heldout"], "sha256": data["heldout_sha256"], "examples": rows,
             "searched_on": not unused, "reference": "the row's answer (for self-written rows, the full model's own)"}]
    names = {"heldout"}
    for f, sha in zip(s.tests, run.checked.tests_sha256):
        name = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(f).name.removesuffix(".jsonl").removesuffix(".json"))
        while name in names:
            name += "_"
        names.add(name)
        sets.append({"name": name, "file": str(f), "sha256": sha, "examples": load_examples(f), "searched_on": False,
                     "reference": "the file's references"})
    return sets


def stage_evaluate(run: Run, inputs: dict, resume: bool) -> dict:
    """Full depth, the route off the shelf and the adapted route (adalas, greedy) on each evaluation set,
    as one sweep per set (resumable rows); paired comparisons; then tokens/s in transformers."""
    from .evaluate import context_length, make_items
    from .export import prune
    from .io import read_jsonl
    from .model import AdalasForCausalLM
    from .sweep import SweepConfig, run_sweep

    s = run.s
    model, tok = run.model(), run.tokenizer()
    skip = inputs["skip"]
    depth = run.depth(skip)
    merged = adapted_hf(run)
    adapted = AdalasForCausalLM.from_hf(merged, depth)
    L, N = run.num_layers, run.num_layers - len(skip)
    configs = [SweepConfig("full", "full", L, DepthConfig()),
               SweepConfig("route", "route", N, depth),
               SweepConfig("adapted", "adapted", N, depth, checkpoint="adapter", weights=inputs["adapter_sha256"])]
    sets, first_items = [], None
    for es in _eval_sets(run):
        items = make_items(es["examples"], tok, context=context_length(model), max_new_tokens=s.max_new_tokens,
                           long_prompts="truncate", source=es["name"])
        first_items = first_items or items
        out_dir = run.path(f"evaluate/{es['name']}")
        _say(f"evaluating on {es['name']} ({len(items)} rows): full depth, the route off the shelf, the adapted route")
        rows = run_sweep(model, tok, items, configs, out_dir, max_new_tokens=s.max_new_tokens, batch_size=s.batch_size,
                         model_id=s.model, data_id=es["file"], settings={"data_sha256": es["sha256"]},
                         load_checkpoint=lambda _: adapted, progress=s.progress)
        per_row = {c.config_id: {} for c in configs}
        for r in read_jsonl(out_dir / "per_sequence.jsonl"):
            per_row[r["config_id"]][r["id"]] = float(r["rougeL"])
        scores = {cid: [per_row[cid][it.id] for it in items] for cid in per_row}
        keep = ("rougeL", "rougeL_ci95", "rougeL_precision", "rougeL_recall", "output_tokens", "stop_share",
                "avg_layers", "n")
        sets.append({"name": es["name"], "file": es["file"], "sha256": es["sha256"], "n": len(items),
                     "searched_on": es["searched_on"], "reference": es["reference"], "sweep": f"evaluate/{es['name']}",
                     "configs": {r["config_id"]: {k: r.get(k) for k in keep} for r in rows},
                     "comparisons": compare(scores)})
    _say("timing greedy generation in transformers: full depth against the export, side by side")
    export_model = copy.deepcopy(merged)  # the export, in memory: the adapter merged, the skipped layers deleted
    prune(export_model, depth)
    prompts = [list(it.input_ids) for it in first_items[:8]]
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    speed = measure_speed(model.model, export_model, prompts, pad, s.speed_tokens, s.speed_rounds)
    doc = {"model": s.model, "layers": s.layers, "num_layers": L, "skip": skip, "depth": depth.to_dict(),
           "prompt_depth": s.prompt_depth, "max_new_tokens": s.max_new_tokens, "batch_size": s.batch_size,
           "dtype": s.dtype, "device": s.device, "threads": torch.get_num_threads(), "sets": sets, "speed": speed}
    atomic_write_json(run.path("evaluation.json"), doc)
    return {"evaluation": "evaluation.json", "evaluation_sha256": file_sha256(run.path("evaluation.json")),
            "rougeL": {es["name"]: {k: v["rougeL"] for k, v in es["configs"].items()} for es in sets},
            "speed_ratio": {k: v["ratio"] for k, v in speed.items()}}


# ---------------------------------------------------------------------------------------------
# Stage 5: export

def export_inputs(run: Run) -> dict:
    s = run.s
    return {**run.identity(), "adapter_sha256": run.outputs("train")["adapter_sha256"],
            "skip": run.outputs("route")["skip"], "skip_prompt": s.skip_prompt,
            "evaluation_sha256": run.outputs("evaluate")["evaluation_sha256"], "format": s.format,
            "gguf_dtype": s.gguf_dtype if s.format == "gguf" else None}


def stage_export(run: Run, inputs: dict, resume: bool) -> dict:
    """The plain checkpoint (adapter merged, skipped layers deleted, tokenizer) with its card, and a GGUF."""
    from .export import export_checkpoint

    s = run.s
    out = run.path("export")
    summary = export_checkpoint(adapted_hf(run), run.depth(inputs["skip"]), out, overwrite=True,
                                tokenizer=run.tokenizer())
    outputs = {"export": "export", "weights_sha256": file_sha256(out / "model.safetensors")
               if (out / "model.safetensors").is_file() else None, "kept_layers": summary["kept_layers"], "gguf": None}
    if s.format == "gguf":
        from .gguf_export import write_gguf
        _say(f"writing {out / 'model.gguf'} for llama.cpp ({s.gguf_dtype})")
        info = write_gguf(out, out / "model.gguf", dtype=s.gguf_dtype, source_gguf=source_gguf(s.model),
                          name=f"adalas {run.s.layers} of {run.num_layers} layers", progress=s.progress)
        outputs.update(gguf="export/model.gguf", gguf_sha256=file_sha256(out / "model.gguf"),
                       gguf_tensors=info["tensors"], gguf_metadata=info["metadata"])
    card = render_card(run, render_report(run, done_only=True))  # the stages finished so far
    atomic_write_text(out / "README.md", card)
    mask = os.umask(0)
    os.umask(mask)
    (out / "README.md").chmod(0o666 & ~mask)  # shareable like the rest of the export
    outputs["card"] = "export/README.md"
    return outputs


STAGES: dict[str, tuple[Callable[[Run], dict], Callable[[Run, dict, bool], dict]]] = {
    "data": (data_inputs, stage_data),
    "route": (route_inputs, stage_route),
    "train": (train_inputs, stage_train),
    "evaluate": (evaluate_inputs, stage_evaluate),
    "export": (export_inputs, stage_export),
}
WORK_DIRS = {"data": ("data",), "route": ("route.json",), "train": ("train", "adapter"),
             "evaluate": ("evaluate", "evaluation.json", "report.md"), "export": ("export",)}


# ---------------------------------------------------------------------------------------------
# The report and the model card

def _pct(x: float | None) -> str:
    return "–" if x is None else f"{x:.3f}"


def _ci(d: dict | None, key: str = "diff") -> str:
    if not d or d.get(key) is None:
        return "–"
    lo, hi = d["ci95"]
    if lo is None or hi is None:
        return f"{d[key]:+.3f}" if key == "diff" else f"{d[key]:.3f}"
    if key == "diff":
        return f"{d[key]:+.3f} [{lo:+.3f}, {hi:+.3f}]"
    return f"{d[key]:.3f} [{lo:.3f}, {hi:.3f}]"


def _alike(name: str, c: dict) -> str:
    """The equivalence sentence, worded by the test (docs/design.md, "Honest numbers": alike is a test)."""
    from .stats import describe_difference

    e = c.get("equivalence")
    diff = c["adapted_minus_full"]
    text = describe_difference("the adapted route", "full depth", diff, f"On {name}")
    if e is None:
        return text + " (full depth scores 0 here, so there is no margin to test equivalence against.)"
    if e["equivalent"]:
        return text + (f" Two one-sided tests put the difference within ±{e['margin']:.3f} (5% of full depth): "
                       f"equivalent at that margin.")
    return text + (f" Two one-sided tests do not put it within ±{e['margin']:.3f} (5% of full depth); these "
                   f"{diff['n']} rows could not detect less than {e['detectable']:.3f}.")


def render_report(run: Run, done_only: bool = False) -> str:
    """report.md: the route, how it was made, quality with paired intervals, speed, the stages' wall time
    (`done_only`: only the stages finished, as the card written during the export stage has them)."""
    s, rec = run.s, run.record
    route, train, ev = rec["stages"]["route"]["outputs"], rec["stages"]["train"]["outputs"], None
    evaluation_path = run.path("evaluation.json")
    ev = json.loads(evaluation_path.read_text()) if evaluation_path.is_file() else None
    data = rec["stages"]["data"]["outputs"]
    L, N = run.num_layers, s.layers
    lines = [f"# {s.model}, adapted to {N} of {L} layers (adalas adapt)", ""]
    lines += [f"Skipped layers: {route['skip']} (0-based). "
              + ("The prompt runs the route too (`skip_prompt=true`): the exported checkpoint below is exactly the "
                 "model that was trained and evaluated." if s.skip_prompt else
                 "Trained and evaluated with the prompt at full depth (`skip_prompt=false`, the paper's setting); "
                 "**the exported checkpoint is a different model**: it runs the prompt through the kept layers only, "
                 "and its quality was not measured here."), ""]
    lines += ["## How it was made", "",
              f"- Data: {data['train_rows']} training rows and {data['heldout_rows']} held-out rows "
              + ("written by the model itself (`adalas synth`, answers greedy at full depth)" if data.get("synth")
                 else f"from `{s.data}`")
              + f"; {data['dropped_test']} row(s) dropped for sharing text with the test files.",
              f"- Route: a search scored teacher-forced on the first {route['rows']} held-out rows (mean KL to the "
              f"full model over {s.response_tokens} response tokens; {route['searched']} routes scored): "
              f"KL {route['kl']:.4f}, "
              f"top-1 agreement {route['top1_agreement']:.3f}; uniform skipping {route['uniform_kl']:.4f}, "
              f"least block influence {route['block_influence_kl']:.4f}.",
              f"- Training: LoRA r={s.lora_r} on {', '.join(train['lora_targets'])}, self-distillation (KL to the same "
              f"model at full depth on response tokens, top-{RECIPE['distill_top_k']} teacher), {train['steps']} steps "
              f"at batch {s.batch_size}, learning rate {s.learning_rate:g} (cosine), seed {s.seed}.",
              f"- Command: `{s.command or 'adalas adapt'}`", ""]
    if ev is not None:
        lines += [f"## Quality (ROUGE-L F1, greedy, up to {ev['max_new_tokens']} new tokens)", "",
                  "| rows | n | full depth | route off the shelf | adapted route | adapted − full [95% CI] | "
                  "adapted / full [95% CI] | adapted − off the shelf [95% CI] |",
                  "| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
        for es in ev["sets"]:
            c, cmp_ = es["configs"], es["comparisons"]
            lines.append(f"| {es['name']}{' (searched on)' if es['searched_on'] else ''} | {es['n']} | "
                         f"{_pct(c['full']['rougeL'])} | {_pct(c['route']['rougeL'])} | "
                         f"{_pct(c['adapted']['rougeL'])} | "
                         f"{_ci(cmp_['adapted_minus_full'])} | {_ci(cmp_['adapted_ratio_to_full'], 'ratio')} | "
                         f"{_ci(cmp_['adapted_minus_route'])} |")
        lines += ["", "Recall and length beside F (adapted route / full depth):", ""]
        for es in ev["sets"]:
            a, f = es["configs"]["adapted"], es["configs"]["full"]
            lines.append(f"- {es['name']}: recall {_pct(a['rougeL_recall'])} / {_pct(f['rougeL_recall'])}, precision "
                         f"{_pct(a['rougeL_precision'])} / {_pct(f['rougeL_precision'])}, tokens "
                         f"{a['output_tokens']:.1f} / {f['output_tokens']:.1f}; reference: {es['reference']}.")
        lines += [""] + [_alike(es["name"], es["comparisons"]) for es in ev["sets"]] + [""]
        lines += [f"## Speed (transformers, {ev['dtype']} on {ev['device']}, {ev['threads']} thread(s), greedy)", "",
                  "| batch | new tokens | full depth tokens/s | export tokens/s | export / full |",
                  "| ---: | ---: | ---: | ---: | ---: |"]
        for v in ev["speed"].values():
            lines.append(f"| {v['batch']} | {v['tokens']} | {v['full_tokens_per_s']:.1f} | "
                         f"{v['export_tokens_per_s']:.1f} | {v['ratio']:.2f}x |")
        lines += ["", "Each figure is the median of timed calls alternating between the two models in one process."]
    stages = rec["stages"]
    lines += ["", "## Stages", "", "| stage | status | wall s |", "| --- | --- | ---: |"]
    lines += [f"| {name} | {stages[name]['status']} | "
              f"{'–' if stages[name]['wall_s'] is None else format(stages[name]['wall_s'], '.1f')} |"
              for name in STAGE_NAMES if stages[name]["status"] == "done" or not done_only]
    return "\n".join(lines) + "\n"


def render_card(run: Run, report: str) -> str:
    """The export's README.md: front matter, the report, and how to load the checkpoint (and the GGUF)."""
    from .hub import resolve

    s = run.s
    base = s.model if resolve(s.model)[1] is None else None  # a hub id names the base model
    front = ["---", "library_name: transformers", "tags:", "- adalas", "- layer-skipping"]
    if base:
        front.append(f"base_model: {base}")
    front.append("---")
    load = ["## Load it", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer",
            'model = AutoModelForCausalLM.from_pretrained("path/to/export")',
            'tokenizer = AutoTokenizer.from_pretrained("path/to/export")', "```", "",
            "No adalas needed: it is a plain checkpoint with "
            f"{s.layers} layers (the adapter is merged, the skipped layers are deleted)."]
    if s.format == "gguf":
        load += ["", "llama.cpp: `llama-cli -m model.gguf -p \"...\"` "
                 "(or `llama_cpp.Llama(model_path=\"model.gguf\")`); "
                 f"the file holds the same weights ({s.gguf_dtype.upper()}; norms F32)."]
    return "\n".join(front) + "\n\n" + report + "\n" + "\n".join(load) + "\n"


def write_report(run: Run) -> str:
    report = render_report(run)
    atomic_write_text(run.path("report.md"), report)
    return report


# ---------------------------------------------------------------------------------------------
# The pipeline

def run_adapt(s: AdaptSettings) -> dict:
    """Run (or resume) every stage into `s.out`; returns the record (`adapt.json`)."""
    checked = check_settings(s)  # nothing is written before this passes
    run = Run(s, checked)
    run.out.mkdir(parents=True, exist_ok=True)
    record = _read_record(run.out) or {}
    stages = {name: {**_new_stage(), **record.get("stages", {}).get(name, {})} for name in STAGE_NAMES}
    run.record = {"version": RECORD_VERSION, "command": s.command, "model": s.model, "layers": s.layers,
                  "num_layers": run.num_layers,
                  "settings": {k: v for k, v in asdict(s).items() if k not in ("command", "progress")},
                  "stages": stages}
    for i, name in enumerate(STAGE_NAMES, start=1):
        make_inputs, stage = STAGES[name]
        inputs = make_inputs(run)  # includes the sha256 of what the stages before made
        sha = sha256_json(inputs)
        st = stages[name]
        if st["status"] == "done" and st["inputs_sha256"] == sha:
            _say(f"[{i}/{len(STAGE_NAMES)}] {name}: done (inputs unchanged)")
            continue
        resume = st["status"] == "running" and st["inputs_sha256"] == sha
        if not resume:
            for p in WORK_DIRS[name]:
                target = run.path(p)
                if target.is_dir():
                    shutil.rmtree(target)
                elif target.exists():
                    target.unlink()
        spent = (st["wall_s"] or 0.0) if resume else 0.0
        stages[name] = {"status": "running", "inputs": inputs, "inputs_sha256": sha, "wall_s": spent, "outputs": {}}
        run.save()
        _say(f"[{i}/{len(STAGE_NAMES)}] {name}: {'resuming' if resume else 'running'}")
        t0 = time.monotonic()
        try:
            outputs = stage(run, inputs, resume)
        finally:
            stages[name]["wall_s"] = round(spent + time.monotonic() - t0, 1)
            run.save()
        stages[name].update(status="done", outputs=outputs)
        run.save()
        if stages["evaluate"]["status"] == "done":
            write_report(run)
    if stages["evaluate"]["status"] == "done":
        write_report(run)
    return run.record


def command_line(argv: Sequence[str]) -> str:
    return "adalas adapt " + shlex.join(list(argv))
