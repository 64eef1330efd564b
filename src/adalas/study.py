"""`adalas study`: the paper's training experiments (E1-E4), described as data and run end to end.

A plan (`adalas/studies/<name>.yaml`, or any YAML path) lists training runs, each a recipe plus
overrides (the paper's runs as overrides of one recipe), and what each experiment compares:
- E1: adapted layer skipping against adapted early exit at equal depth (paired over sequences).
- E2: per-token learned controllers reading the hidden state against ones that see a constant
  (`fixed`), over several cost weights: two curves (average layers, ROUGE-L) compared at common
  depths by interpolation, beside uniform skipping of the layer-dropout model.
- E3: the per-sequence oracle on the layer-dropout model over full + uniform skipping + early exit,
  with its null control (K - 1 sampled full-depth runs), and the interval of its null-adjusted match.
- E4: the cross-fitted per-sequence router on E3's sweep against uniform skipping, the best fixed mix
  (hindsight) and the oracle at matched depth, with its real decode speed.

Notable:
- Everything resumes. A run trains into `<runs_dir>/<name>` through `adalas.train.run` with
  `--resume_from_checkpoint true`, and is done once `<out>/train/<name>.json` (its command, data
  hash, steps, wall time) exists; a changed plan is refused rather than mixed. Evaluations are
  sweeps (`adalas.sweep.run_sweep`, rows appended and skipped when present): `<out>/adapted` (the
  base model at full depth and at the E1 routes, and every E1/E2 checkpoint) and `<out>/E3` (the
  dropout model). A stage whose rows are all there loads no model.
- The analysis reads files only (`analyse`), so `study.json`, `report.md` and the plots can be
  redrawn from a copied results directory. Every comparison is a paired bootstrap over the same
  sequences (`adalas.stats`); a verdict names the interval that decides it.
- `--quick` builds a tiny random Llama and its own rows (`build_tiny`) and runs the same pipeline.
"""
from __future__ import annotations

import hashlib
import json
import re
import shlex
import time
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import yaml

from .io import atomic_write_json, atomic_write_text, check_output_dir
from .oracle import match_depth, oracle_curve
from .report import _plt, oracle_score_at, read_json, read_scores, read_sweep, save_figure
from .stats import describe_difference, paired_bootstrap

EXPERIMENTS = ("E1", "E2", "E3", "E4")
VERDICTS = ("reproduced", "not reproduced", "inconclusive", "not run")
DEPTH_UNIT = ("average layers run per generated token: decode steps pooled over sequences (`avg_layers`; "
              "the prompt runs every layer)")
FULL_SAMPLE_NOTE = "temperature 0.7, top-p 0.9, seeds 1..K-1"
PAPER = {
    "E1": "Layer skipping holds up better than early exit (fine-tuned OPT models, Alpaca / CNN-DM / SAMSum).",
    "E2": "Per-token controllers that read the hidden state do no better than controllers that see no input.",
    "E3": "Per sequence, an oracle choosing among uniform skipping to 4, 8, 12 or 24 layers matches the full "
          "model with 23.3% of the layers (OPT-IML-1.3B, Alpaca).",
    "E4": "Not measured in the paper, which points to per-sequence allocation as the way forward: a router that "
          "picks each sequence's route from its prompt, against input-blind choices at the same depth.",
}


# ---------------------------------------------------------------------------------------------
# The plan

PLAN_KEYS = {"description", "model", "out", "runs_dir", "tiny", "eval", "overrides", "runs", "experiments"}
EVAL_KEYS = {"data", "limit", "max_new_tokens", "batch_size", "prompt_format", "seed"}
EVAL_DEFAULTS = {"data": "builtin", "limit": None, "max_new_tokens": 32, "batch_size": 8, "prompt_format": "auto",
                 "seed": 0}
EXPERIMENT_KEYS = {
    "E1": {"pairs"},
    "E2": {"hidden_states", "fixed", "baseline", "margin"},
    "E3": {"run", "uniform_skip", "early_exit", "random_route", "bootstrap", "goal_fraction", "paper_fraction",
           "off_the_shelf_oracle", "off_the_shelf_fraction", "off_the_shelf_source"},
    "E4": {"targets", "folds", "speed", "feature_layers"},
}


@dataclass(frozen=True)
class Run:
    """One training run: a recipe (optional) and overrides, in `<runs_dir>/<name>`."""

    name: str
    recipe: str | None
    overrides: dict

    def argv(self, shared: dict, runs_dir: Path) -> list[str]:
        """The `adalas train` arguments: the recipe, the plan's shared overrides, then the run's own."""
        from .recipes import to_argv

        head = ["--recipe", self.recipe] if self.recipe else []
        return [*head, *to_argv({**shared, **self.overrides}), "--output_dir", str(runs_dir / self.name),
                "--resume_from_checkpoint", "true"]


@dataclass
class Plan:
    name: str
    path: Path
    sha256: str
    description: str
    model: str
    out: Path
    runs_dir: Path
    eval: dict
    overrides: dict
    runs: list[Run]
    experiments: dict
    tiny: dict | None = None
    by_name: dict[str, Run] = field(default_factory=dict)

    @property
    def tiny_dir(self) -> Path:
        return self.runs_dir / "tiny"


def plan_dir() -> Path:
    return Path(str(resources.files("adalas") / "studies"))


def plan_names() -> list[str]:
    return sorted(p.stem for p in plan_dir().glob("*.yaml"))


def plan_path(name_or_path: str | Path) -> Path:
    """An existing YAML file, or a packaged plan's name (`smollm2-135m`, `quick`)."""
    text = str(name_or_path)
    for c in (Path(text).expanduser(), plan_dir() / text, plan_dir() / f"{text}.yaml"):
        if c.is_file():
            return c
    raise ValueError(f"--plan: {text!r}: no such file and no packaged plan of that name; packaged: "
                     f"{', '.join(plan_names())}")


def _substitute(value: Any, names: dict[str, str]) -> Any:
    """"{runs}/base" -> "runs/study/base", in every string of a nested value."""
    if isinstance(value, str):
        return re.sub(r"\{(\w+)\}", lambda m: names.get(m.group(1), m.group(0)), value)
    if isinstance(value, dict):
        return {k: _substitute(v, names) for k, v in value.items()}
    if isinstance(value, list):
        return [_substitute(v, names) for v in value]
    return value


def _mapping(value: Any, where: str) -> dict:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{where}: expected a mapping, got {type(value).__name__}")
    return value


def _unknown(keys: Any, allowed: set[str], where: str) -> None:
    bad = sorted(str(k) for k in keys if k not in allowed)
    if bad:
        raise ValueError(f"{where}: unknown field(s) {', '.join(bad)}; allowed: {', '.join(sorted(allowed))}")


def plan_ref(plan: "Plan") -> str:
    """How `--plan` names it: a packaged plan by name, another by its path."""
    return plan.name if plan.path.parent.resolve() == plan_dir().resolve() else str(plan.path)


def load_plan(name_or_path: str | Path, out: str | Path | None = None, runs_dir: str | Path | None = None) -> Plan:
    """Read and check a plan: fields, run names, the experiments' references to runs, and every run's
    `adalas train` arguments (parsed as training would parse them). Nothing is written."""
    path = plan_path(name_or_path)
    raw = path.read_bytes()
    try:
        doc = yaml.safe_load(raw)
    except yaml.YAMLError as e:
        raise ValueError(f"plan {path}: invalid YAML: {str(e).splitlines()[0]}") from None
    where = f"plan {path}"
    doc = _mapping(doc, where)
    _unknown(doc, PLAN_KEYS, where)
    for key in ("model", "runs", "experiments"):
        if key not in doc:
            raise ValueError(f"{where}: missing field {key!r}")
    runs_path = Path(runs_dir if runs_dir is not None else doc.get("runs_dir", "runs/study"))
    out_path = Path(out if out is not None else doc.get("out", "results/study"))
    check_output_dir(out_path, "--out")
    check_output_dir(runs_path, "--runs")
    doc = _substitute(doc, {"runs": str(runs_path), "tiny": str(runs_path / "tiny")})

    eval_spec = _mapping(doc.get("eval"), f"{where}: eval")
    _unknown(eval_spec, EVAL_KEYS, f"{where}: eval")
    eval_spec = {**EVAL_DEFAULTS, **eval_spec}
    for key in ("max_new_tokens", "batch_size", "limit"):
        if eval_spec[key] is not None and (not isinstance(eval_spec[key], int) or eval_spec[key] < 1):
            raise ValueError(f"{where}: eval.{key}: must be an integer >= 1, got {eval_spec[key]!r}")

    runs, seen = [], set()
    if not isinstance(doc["runs"], list) or not doc["runs"]:
        raise ValueError(f"{where}: runs: expected a non-empty list")
    for k, r in enumerate(doc["runs"]):
        r = _mapping(r, f"{where}: runs[{k}]")
        _unknown(r, {"name", "recipe", "overrides"}, f"{where}: runs[{k}]")
        name = str(r.get("name", ""))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name):
            raise ValueError(f"{where}: runs[{k}].name: {name!r} is not a directory name (letters, digits, . _ -)")
        if name in seen:
            raise ValueError(f"{where}: runs: duplicate name {name!r}")
        seen.add(name)
        overrides = {str(key).replace("-", "_"): v for key, v in _mapping(r.get("overrides"), f"run {name}").items()}
        if "output_dir" in overrides:
            raise ValueError(f"{where}: run {name}: output_dir is the study's ({runs_path}/{name}); remove it")
        runs.append(Run(name, r.get("recipe"), overrides))
    shared = {str(k).replace("-", "_"): v for k, v in _mapping(doc.get("overrides"), f"{where}: overrides").items()}

    experiments = _mapping(doc["experiments"], f"{where}: experiments")
    _unknown(experiments, set(EXPERIMENT_KEYS), f"{where}: experiments")
    for name, keys in EXPERIMENT_KEYS.items():
        if name not in experiments:
            raise ValueError(f"{where}: experiments: missing {name}")
        _unknown(_mapping(experiments[name], f"{where}: {name}"), keys, f"{where}: {name}")
    plan = Plan(name=path.stem, path=path, sha256=hashlib.sha256(raw).hexdigest(),
                description=str(doc.get("description", "")), model=str(doc["model"]), out=out_path,
                runs_dir=runs_path, eval=eval_spec, overrides=shared, runs=runs, experiments=experiments,
                tiny=_mapping(doc.get("tiny"), f"{where}: tiny") or None)
    plan.by_name = {r.name: r for r in runs}
    _check_experiments(plan, where)
    from .train import parse_args

    for run in runs:  # every run's arguments, exactly as training will parse them
        try:
            parse_args(run.argv(shared, runs_path))
        except ValueError as e:
            raise ValueError(f"{where}: run {run.name}: {e}") from None
    return plan


def _check_experiments(plan: Plan, where: str) -> None:
    ex = plan.experiments

    def known(name: Any, what: str) -> None:
        if name not in plan.by_name:
            raise ValueError(f"{where}: {what}: no run named {name!r}; runs: {', '.join(plan.by_name)}")

    pairs = ex["E1"].get("pairs") or []
    if not pairs:
        raise ValueError(f"{where}: E1.pairs: expected a list of {{depth, skip, exit}}")
    for p in pairs:
        _unknown(_mapping(p, f"{where}: E1.pairs"), {"depth", "skip", "exit"}, f"{where}: E1.pairs")
        known(p.get("skip"), "E1.pairs.skip")
        known(p.get("exit"), "E1.pairs.exit")
    for key in ("hidden_states", "fixed"):
        names = ex["E2"].get(key) or []
        if len(names) < 2:
            raise ValueError(f"{where}: E2.{key}: needs 2 or more runs (one per cost weight) for a curve")
        for n in names:
            known(n, f"E2.{key}")
    known(ex["E2"].get("baseline"), "E2.baseline")
    known(ex["E3"].get("run"), "E3.run")
    if ex["E2"]["baseline"] != ex["E3"]["run"]:
        raise ValueError(f"{where}: E2.baseline: must be E3.run ({ex['E3']['run']!r}): its uniform skipping comes "
                         f"from E3's sweep")
    for key in ("uniform_skip", "early_exit"):
        if not ex["E3"].get(key):
            raise ValueError(f"{where}: E3.{key}: expected a list of budgets (layers kept)")
    if not ex["E4"].get("targets"):
        raise ValueError(f"{where}: E4.targets: expected a list of average depths")


def null_k(plan: Plan) -> int:
    """K of E3's headline oracle: the full model, uniform skipping and early exit at their budgets."""
    e3 = plan.experiments["E3"]
    return 1 + len(set(e3["uniform_skip"])) + len(set(e3["early_exit"]))


# ---------------------------------------------------------------------------------------------
# The tiny model of --quick

TINY_WORDS = ("apple", "river", "stone", "cloud", "green", "music", "paper", "tiger", "lemon", "water", "north",
              "glass")


def tiny_rows() -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows): "Repeat the word w ." with input v -> "w w w , then v ."; every
    7th (w, v) pair is held out for evaluation."""
    pairs = [(w, v) for w in TINY_WORDS for v in TINY_WORDS if w != v]
    train, held = [], []
    for k, (w, v) in enumerate(pairs):
        row = {"instruction": f"Repeat the word {w} .", "input": v, "output": f"{w} {w} {w} , then {v} ."}
        (held if k % 7 == 3 else train).append(row)
    return train, [{"id": f"e{i:02d}", **r} for i, r in enumerate(held)]


def build_tiny(directory: str | Path, layers: int = 8, seed: int = 0) -> Path:
    """A tiny random Llama with a word-level tokenizer over the Alpaca template and TINY_WORDS
    (`directory/model`), and its rows (`train.jsonl`, `eval.jsonl`). Built once (`done` marks it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from .data import ALPACA_INTRO, ALPACA_INTRO_WITH_INPUT

    d = Path(directory)
    if (d / "done").is_file():
        return d
    train, held = tiny_rows()
    text = " ".join([ALPACA_INTRO, ALPACA_INTRO_WITH_INPUT, "### Instruction:\n### Input:\n### Response:\n",
                     "Repeat the word , then .", *TINY_WORDS])
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=layers, intermediate_size=96,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    atomic_write_text(d / "train.jsonl", "".join(json.dumps(r) + "\n" for r in train))
    atomic_write_text(d / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in held))
    atomic_write_text(d / "done", "")
    return d


# ---------------------------------------------------------------------------------------------
# Small helpers: the log, wall time

def _log(text: str) -> None:
    print(f"[study] {text}", flush=True)


class Stages:
    """Wall seconds per stage, summed over every invocation that did work (`<out>/stages.json`)."""

    def __init__(self, out: Path):
        self.path = out / "stages.json"
        self.totals: dict[str, float] = read_json(self.path) or {}

    def add(self, name: str, seconds: float) -> None:
        self.totals = read_json(self.path) or {}  # another invocation (other experiments) may have added
        self.totals[name] = round(self.totals.get(name, 0.0) + seconds, 1)
        atomic_write_json(self.path, self.totals)


# ---------------------------------------------------------------------------------------------
# Training: run by run, resumed from the latest checkpoint

def record_path(plan: Plan, name: str) -> Path:
    return plan.out / "train" / f"{name}.json"


def check_training_data(plan: Plan, names: Sequence[str] | None = None) -> None:
    """Every run still to train (of `names`, default all) has its local training data (before anything
    is written)."""
    from .train import parse_args

    for r in plan.runs:
        if (names is not None and r.name not in names) or record_path(plan, r.name).is_file():
            continue
        cfg, _ = parse_args(r.argv(plan.overrides, plan.runs_dir))
        data = Path(cfg.data).expanduser()
        if data.suffix in (".json", ".jsonl") and not data.is_file():
            raise ValueError(f"run {r.name}: training data {cfg.data!r} not found (data/synth/README.md says how to "
                             f"make the self-written data)")


def _compared(plan: Plan, experiments: Sequence[str]) -> set[str]:
    ex, names = plan.experiments, set()
    if "E1" in experiments:
        names |= {n for p in ex["E1"]["pairs"] for n in (p["skip"], p["exit"])}
    if "E2" in experiments:
        names |= {*ex["E2"]["hidden_states"], *ex["E2"]["fixed"], ex["E2"]["baseline"]}
    if {"E2", "E3", "E4"} & set(experiments):
        names.add(ex["E3"]["run"])
    return names


def runs_for(plan: Plan, experiments: Sequence[str]) -> list[str]:
    """The runs the given experiments need, in plan order: those they compare (E2, E3 and E4 all need
    E3's dropout run) and every run that no experiment compares (a prerequisite, such as --quick's base)."""
    names, anywhere = _compared(plan, experiments), _compared(plan, EXPERIMENTS)
    return [r.name for r in plan.runs if r.name in names or r.name not in anywhere]


# TrainingArguments that say where a run was written and logged, not how it was trained
WHERE_ONLY = {"output_dir", "logging_dir", "report_to", "run_name", "resume_from_checkpoint", "disable_tqdm"}


def same_training(command: str, argv: list[str]) -> bool:
    """Whether a recorded `adalas train` command trains exactly as `argv` does, up to where it wrote and
    logged (so a run trained by its recipe outside the study, e.g. a shipped adapter's, is adopted
    rather than trained again). Both are parsed as training parses them, recipes included."""
    from dataclasses import asdict

    from .train import parse_args

    words = shlex.split(command)
    if words[:2] != ["adalas", "train"]:
        return False
    try:
        (a, ta), (b, tb) = parse_args(words[2:]), parse_args(argv)
    except ValueError:
        return False
    strip = lambda t: {k: v for k, v in t.to_dict().items() if k not in WHERE_ONLY}  # noqa: E731
    return asdict(a) == asdict(b) and strip(ta) == strip(tb)


def read_records(plan: Plan) -> dict[str, dict]:
    """The records of every run trained so far (any invocation), by name."""
    return {r.name: rec for r in plan.runs if (rec := read_json(record_path(plan, r.name))) is not None}


def train_runs(plan: Plan, stages: Stages, names: Sequence[str] | None = None) -> list[dict]:
    """Train every run (of `names`, default all) whose record is missing, in plan order; returns their
    records in plan order.

    A run directory whose `adalas_training.json` already records this command, or one that trained
    exactly alike (`same_training`) to the same steps on the same data (hash), finished: it is adopted,
    not trained again; its record keeps the wall time and the command that made it (`adopted_from`)."""
    from .data import TRAINING_FILE, data_sha256
    from .train import latest_checkpoint, parse_args, run

    records = []
    for r in plan.runs:
        if names is not None and r.name not in names:
            continue
        argv = r.argv(plan.overrides, plan.runs_dir)
        command = "adalas train " + shlex.join(argv)
        path, run_dir = record_path(plan, r.name), plan.runs_dir / r.name
        rec = read_json(path)
        if rec is not None:
            if rec.get("command") != command:
                raise ValueError(f"run {r.name}: {path} records another command: the plan changed; use another "
                                 f"--out, or delete {path} and {run_dir} to retrain it")
            records.append(rec)
            continue
        cfg, targs = parse_args(argv)
        made = read_json(run_dir / TRAINING_FILE) or {}
        resumed, adopted = None, None
        if made.get("command") != command:
            if (made.get("command") and made.get("steps") == targs.max_steps and same_training(made["command"], argv)
                    and made.get("data_sha256") == data_sha256(cfg.data)):
                adopted = made["command"]
                _log(f"train {r.name}: adopting {run_dir} (made by `{adopted}`, which trains alike)")
            else:
                resumed = latest_checkpoint(run_dir)
                _log(f"train {r.name}" + (f" (resuming from {resumed.name})" if resumed else "") + f": {command}")
                t0 = time.perf_counter()
                run(argv)
                stages.add(f"train:{r.name}", time.perf_counter() - t0)
                made = read_json(run_dir / TRAINING_FILE) or {}
        rec = {"name": r.name, "command": command, "recipe": r.recipe, "overrides": r.overrides,
               "output_dir": str(run_dir), "data": cfg.data, "data_sha256": made.get("data_sha256") or data_sha256(cfg.data),
               "steps": made.get("steps"), "wall_s": made.get("wall_s"),
               "resumed_from": resumed.name if resumed else None, "adopted_from": adopted,
               "depth": read_json(run_dir / "adalas_depth.json"), "cost_alpha": cfg.cost_alpha}
        atomic_write_json(path, rec)
        records.append(rec)
    return records


# ---------------------------------------------------------------------------------------------
# Evaluation: sweeps over the same sequences

def _rows_complete(sweep_dir: Path, n: int) -> set[str]:
    """The configs with all n rows in the sweep's per_sequence.jsonl."""
    from .io import read_jsonl

    ids: dict[str, set] = {}
    if (sweep_dir / "per_sequence.jsonl").is_file():
        for r in read_jsonl(sweep_dir / "per_sequence.jsonl"):
            ids.setdefault(r["config_id"], set()).add(r["id"])
    return {c for c, seen in ids.items() if len(seen) == n}


def _sweep_complete(sweep_dir: Path, config_ids: Sequence[str], n: int) -> bool:
    """Whether every config has its n rows in per_sequence.jsonl and its line in sweep.jsonl (then no
    model needs loading)."""
    from .io import read_jsonl

    if not (sweep_dir / "sweep.jsonl").is_file():
        return False
    summarized = {r["config_id"] for r in read_jsonl(sweep_dir / "sweep.jsonl")}
    return set(config_ids) <= summarized & _rows_complete(sweep_dir, n)


class Evaluator:
    """The evaluation set and the models, loaded once and only when a stage has rows to make."""

    def __init__(self, plan: Plan, device: str = "cpu", progress: bool = False):
        self.plan, self.device, self.progress = plan, device, progress
        self._tok, self._items, self._models = None, None, {}
        self.data_id = {"name": plan.eval["data"], "split": "test"}
        self.settings = {"prompt_format": plan.eval["prompt_format"], "max_prompt_tokens": None, "dtype": "float32"}

    @property
    def tokenizer(self):
        if self._tok is None:
            from .hub import load_tokenizer
            self._tok = load_tokenizer(self.plan.model)
        return self._tok

    def model(self, path: str):
        if path not in self._models:
            from .model import AdalasForCausalLM
            if Path(path).parent == self.plan.runs_dir and not Path(path).is_dir():
                raise ValueError(f"{path}: the run's model directory is gone but its rows are missing; delete "
                                 f"{record_path(self.plan, Path(path).name)} to retrain it")
            self._models = {path: AdalasForCausalLM.from_pretrained(path, device=self.device)}  # one at a time
        return self._models[path]

    @property
    def items(self):
        if self._items is None:
            from .evaluate import load_items
            ev = self.plan.eval
            self._items = load_items(ev["data"], self.tokenizer, limit=ev["limit"], prompt_format=ev["prompt_format"],
                                     max_new_tokens=ev["max_new_tokens"])
        return self._items

    def sweep(self, model_path: str, configs, out: Path) -> list[dict]:
        from .sweep import run_sweep

        ev = self.plan.eval
        return run_sweep(self.model(model_path), self.tokenizer, self.items, configs, out,
                         max_new_tokens=ev["max_new_tokens"], batch_size=ev["batch_size"], model_id=model_path,
                         data_id=self.data_id, settings=self.settings, progress=self.progress)


def adapted_configs(plan: Plan, records: dict[str, dict]) -> list:
    """The base model at full depth and at each E1 run's own depth (off the shelf), then every E1 and
    E2 checkpoint at its saved depth (config ids `base@<run>`, `learned:<run>`): those of `records`."""
    from .config import DepthConfig
    from .sweep import SweepConfig

    e1, e2 = plan.experiments["E1"], plan.experiments["E2"]
    e1_names = [n for p in e1["pairs"] for n in (p["skip"], p["exit"]) if n in records]
    names = e1_names + [n for n in [*e2["hidden_states"], *e2["fixed"]] if n in records]
    configs = [SweepConfig("full", "full", None, DepthConfig())]
    for n in e1_names:
        depth = DepthConfig.parse(json.dumps(records[n]["depth"]))
        strategy = "early_exit" if depth.mode == "early_exit" else "route"
        configs.append(SweepConfig(f"base@{n}", strategy, None, depth))
    for n in dict.fromkeys(names):
        depth = DepthConfig.parse(json.dumps(records[n]["depth"]))
        configs.append(SweepConfig(f"learned:{n}", "learned", None, depth, checkpoint=str(plan.runs_dir / n)))
    return configs


def _with_budgets(configs: list, num_layers: int) -> list:
    """Fill each config's budget from its static route (None for per-token modes)."""
    from dataclasses import replace

    out = []
    for c in configs:
        route = c.depth.static_route(num_layers)
        out.append(replace(c, budget=sum(route) if route else (num_layers if c.strategy == "full" else None)))
    return out


def e3_configs(plan: Plan, num_layers: int) -> list:
    """Full, uniform skipping, early exit, random routes (keeping layer 0) and K - 1 `full_sample` runs."""
    from .sweep import build_configs

    e3, L = plan.experiments["E3"], num_layers
    rnd = e3.get("random_route") or {}
    configs = build_configs(L, ["uniform_skip"], e3["uniform_skip"])
    configs += build_configs(L, ["early_exit"], e3["early_exit"])[1:]
    if rnd.get("budgets") and rnd.get("per_budget"):
        configs += build_configs(L, ["random_route"], rnd["budgets"], rnd["per_budget"], plan.eval["seed"],
                                 keep_first=True)[1:]
    configs += build_configs(L, [], [], null_k=null_k(plan))[1:]
    return configs


def _num_layers(path: str) -> int:
    from transformers import AutoConfig

    from .hub import resolve

    return int(AutoConfig.from_pretrained(resolve(path)[0]).num_hidden_layers)


def run_e4(plan: Plan, ev: Evaluator, configs: list, stages: Stages) -> None:
    """The cross-fitted router's rows (strategy `sequence`, by lookup) added to E3's sweep, its curves
    (`E4/router_crossfit.json`), and a router fit once for the real decode speed (`E4/speed.json`)."""
    from .config import DepthConfig
    from .sequence import crossfit_curves, crossfit_rows, load_sweep, measure_speed, prompt_features, train_router
    from .sequence.training import save_features
    from .sweep import SweepConfig, add_configs

    e4, e3_dir, out = plan.experiments["E4"], plan.out / "E3", plan.out / "E4"
    dropout = str(plan.runs_dir / plan.experiments["E3"]["run"])
    targets = [float(t) for t in e4["targets"]]
    ids_needed = [f"sequence@{t:g}" for t in targets]
    crossfit_path = out / "router_crossfit.json"
    table = load_sweep(e3_dir, ["full", "uniform_skip", "early_exit"])
    L = table.num_layers
    layers = sorted(set(e4.get("feature_layers") or (0, L // 8, L // 4, L // 2)))
    folds = min(int(e4.get("folds", 5)), len(table.ids) // 3)
    features = None
    if read_json(crossfit_path) is None or not _sweep_complete(e3_dir, [c.config_id for c in configs] + ids_needed,
                                                               len(ev.items)):
        t0 = time.perf_counter()
        model = ev.model(dropout)
        model.set_depth(DepthConfig())
        prompts = {it.id: list(it.input_ids) for it in ev.items}
        features = prompt_features(model, [prompts[s] for s in table.ids], layers, batch_size=16)
        crossfit = crossfit_curves(table, features, folds=folds, seed=plan.eval["seed"], targets=targets)
        routed = [(SweepConfig(f"sequence@{t:g}", "sequence", None, DepthConfig(mode="sequence", target_avg_layers=t)),
                   crossfit_rows(e3_dir, table, crossfit["choices"][f"{t:g}"], f"sequence@{t:g}")) for t in targets]
        add_configs(e3_dir, ev.items, configs, routed, num_layers=L, model_id=dropout, data_id=ev.data_id)
        atomic_write_json(crossfit_path, {"folds": folds, "seed": plan.eval["seed"], "feature_layers": layers,
                                          "candidates": list(table.config_ids), "targets": targets, **crossfit})
        stages.add("E4:router", time.perf_counter() - t0)
    speed = e4.get("speed") or {}
    speed_path = out / "speed.json"
    if speed.get("n") and read_json(speed_path) is None:
        t0 = time.perf_counter()
        model = ev.model(dropout)
        model.set_depth(DepthConfig())
        prompts = {it.id: list(it.input_ids) for it in ev.items}
        if features is None:
            features = prompt_features(model, [prompts[s] for s in table.ids], layers, batch_size=16)
        target = float(speed.get("target", targets[len(targets) // 2]))
        ctrl, info = train_router(table, features, target_avg_layers=target, seed=plan.eval["seed"])
        router_dir = out / "router"
        ctrl.save(router_dir)
        save_features(router_dir, table.ids, features)
        heldout = ctrl.meta["split"]["test"][:int(speed["n"])]
        model.set_depth(DepthConfig(mode="sequence", router_path=str(router_dir), target_avg_layers=target))
        tok = ev.tokenizer
        result = measure_speed(model, [prompts[s] for s in heldout], plan.eval["batch_size"],
                               plan.eval["max_new_tokens"], int(speed.get("repeats", 2)),
                               eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
        model.set_depth(DepthConfig())
        for key in ("routes", "sequences", "full_sequences"):
            result.pop(key, None)
        atomic_write_json(speed_path, {"target_avg_layers": target, "heldout_ids": heldout, "router": str(router_dir),
                                       "fit": info, **result})
        stages.add("E4:speed", time.perf_counter() - t0)


def run_study(plan: Plan, device: str = "cpu", progress: bool = False,
              experiments: Sequence[str] = EXPERIMENTS) -> dict:
    """Build (quick), train, evaluate, analyse and report; returns the study.json document.

    `experiments` limits the work (training and evaluation) to what those experiments need, so that
    parts of a long study can run, and land, on their own; the analysis covers every experiment whose
    files are complete, from this invocation or an earlier one."""
    from .oracle import run_oracle

    unknown = [e for e in experiments if e not in EXPERIMENTS]
    if unknown or not experiments:
        raise ValueError(f"--experiments: expected some of {', '.join(EXPERIMENTS)}, got {', '.join(experiments)}")
    t_start = time.perf_counter()
    if plan.tiny:
        build_tiny(plan.tiny_dir, layers=int(plan.tiny.get("layers", 8)))
    names = runs_for(plan, experiments)
    check_training_data(plan, names)
    plan.out.mkdir(parents=True, exist_ok=True)
    stages = Stages(plan.out)
    train_runs(plan, stages, names)
    records = read_records(plan)

    ev = Evaluator(plan, device, progress)
    L = _num_layers(plan.model)
    if {"E1", "E2"} & set(experiments):
        n = len(ev.items)
        adapted = plan.out / "adapted"
        # the runs asked for, and those an earlier invocation evaluated here: the sweep's summary is
        # rewritten from the configs it is given, so leaving those out would drop their lines
        kept = _rows_complete(adapted, n)
        runs = {k: v for k, v in records.items() if k in names or f"learned:{k}" in kept}
        configs = _with_budgets(adapted_configs(plan, runs), L)
        if not _sweep_complete(adapted, [c.config_id for c in configs], n):
            _log(f"sweep {adapted}: {len(configs)} configs x {n} sequences")
            t0 = time.perf_counter()
            ev.sweep(plan.model, configs, adapted)
            stages.add("sweep:adapted", time.perf_counter() - t0)

    if {"E2", "E3", "E4"} & set(experiments):
        dropout = str(plan.runs_dir / plan.experiments["E3"]["run"])
        e3 = e3_configs(plan, L)
        e3_dir = plan.out / "E3"
        if not _sweep_complete(e3_dir, [c.config_id for c in e3], len(ev.items)):
            _log(f"sweep {e3_dir}: {len(e3)} configs x {len(ev.items)} sequences (K = {null_k(plan)})")
            t0 = time.perf_counter()
            ev.sweep(dropout, e3, e3_dir)
            stages.add("sweep:E3", time.perf_counter() - t0)
        run_oracle(e3_dir, strategies=["uniform_skip", "early_exit"])
        run_oracle(e3_dir, out=e3_dir / "oracle_all_routes.json",
                   strategies=["uniform_skip", "early_exit", "random_route"])
        if "E4" in experiments:
            run_e4(plan, ev, e3, stages)

    doc = analyse(plan, read_records(plan), Stages(plan.out).totals)  # and those another invocation has adopted since
    doc["study"]["wall_s_this_invocation"] = round(time.perf_counter() - t_start, 1)
    doc["study"]["experiments_this_invocation"] = list(experiments)
    atomic_write_json(plan.out / "study.json", doc)
    write_report(plan.out, doc)
    return doc


# ---------------------------------------------------------------------------------------------
# Analysis (files only)

def _aligned(scores: dict, configs: Sequence[str]) -> tuple[list[str], list[np.ndarray]]:
    """The sequence ids every config scored, and each config's scores over them (same order)."""
    missing = [c for c in configs if c not in scores]
    if missing:
        raise ValueError(f"no per-sequence rows for config(s) {missing}")
    ids = sorted(set.intersection(*(set(scores[c]) for c in configs)))
    return ids, [np.array([scores[c][i] for i in ids]) for c in configs]


def _point(row: dict) -> dict:
    return {"config_id": row["config_id"], "avg_layers": row["avg_layers"], "rougeL": row["rougeL"],
            "ci95": row.get("rougeL_ci95"), "n": row["n"]}


def _direction(ci: Sequence[float]) -> int:
    """+1: the interval lies above 0; -1: below; 0: it covers 0."""
    return 1 if ci[0] > 0 else -1 if ci[1] < 0 else 0


def _curve_scores(points: Sequence[tuple[float, np.ndarray]], depth: float) -> np.ndarray | None:
    """Per-sequence scores of a curve at `depth`, linear between its two bracketing points (a mix of
    the two configs with that average depth; None outside the curve). points: (avg_layers, (N,)) sorted."""
    xs = [x for x, _ in points]
    if not points or depth < xs[0] - 1e-9 or depth > xs[-1] + 1e-9:
        return None
    hi = next(k for k, x in enumerate(xs) if x >= depth - 1e-9)
    if abs(xs[hi] - depth) <= 1e-9 or hi == 0:
        return points[hi][1]
    lo = hi - 1
    p = (depth - xs[lo]) / (xs[hi] - xs[lo])
    return (1 - p) * points[lo][1] + p * points[hi][1]


def _curve(rows: dict[str, dict], scores: dict, config_ids: Sequence[str], ids: Sequence[str]) -> list:
    """[(avg_layers, (N,) scores over ids)] sorted by depth; configs at the same depth are averaged."""
    by_depth: dict[float, list[np.ndarray]] = {}
    for c in config_ids:
        by_depth.setdefault(round(float(rows[c]["avg_layers"]), 6), []).append(np.array([scores[c][i] for i in ids]))
    return [(d, np.mean(v, axis=0)) for d, v in sorted(by_depth.items())]


def analyse_e1(plan: Plan, records: dict, adapted: Path) -> dict:
    rows = {r["config_id"]: r for r in read_sweep(adapted)}
    scores = read_scores(adapted)
    full = rows["full"]
    out = {"finding": PAPER["E1"], "depth_unit": DEPTH_UNIT, "n": full["n"], "base_full": _point(full),
           "comparisons": []}
    for pair in plan.experiments["E1"]["pairs"]:
        skip, exit_ = pair["skip"], pair["exit"]
        ids, (a, b) = _aligned(scores, [f"learned:{skip}", f"learned:{exit_}"])
        adapted_diff = paired_bootstrap(a, b)
        _, (c, d) = _aligned(scores, [f"base@{skip}", f"base@{exit_}"])
        shelf_diff = paired_bootstrap(c, d)
        sa, ea = rows[f"learned:{skip}"]["avg_layers"], rows[f"learned:{exit_}"]["avg_layers"]
        where = f"at {pair['depth']} layers"
        out["comparisons"].append({
            "depth": pair["depth"], "skip_run": skip, "exit_run": exit_,
            "equal_depth": abs(sa - ea) < 1e-6,
            "skip": _point(rows[f"learned:{skip}"]), "exit": _point(rows[f"learned:{exit_}"]),
            "skip_minus_exit": adapted_diff,
            "sentence": describe_difference("adapted skipping", "adapted early exit", adapted_diff, where),
            "off_the_shelf": {"skip": _point(rows[f"base@{skip}"]), "exit": _point(rows[f"base@{exit_}"]),
                              "skip_minus_exit": shelf_diff,
                              "sentence": describe_difference("skipping off the shelf", "early exit off the shelf",
                                                              shelf_diff, where)},
        })
    signs = [_direction(c["skip_minus_exit"]["ci95"]) for c in out["comparisons"]]
    if all(s > 0 for s in signs):
        verdict, why = "reproduced", "adapted skipping scores higher than adapted early exit at every depth"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "adapted early exit scores higher than adapted skipping at some depth"
    else:
        verdict, why = "inconclusive", "at some depth the paired interval covers 0"
    out.update(verdict=verdict, reason=why, decided_by=[c["sentence"] for c in out["comparisons"]],
               runs=[records[n] for p in plan.experiments["E1"]["pairs"] for n in (p["skip"], p["exit"])])
    return out


def analyse_e2(plan: Plan, records: dict, adapted: Path, e3_dir: Path) -> dict:
    spec = plan.experiments["E2"]
    margin = float(spec.get("margin", 0.02))
    rows = {r["config_id"]: r for r in read_sweep(adapted)}
    e3_rows = {r["config_id"]: r for r in read_sweep(e3_dir)}
    scores, e3_scores = read_scores(adapted), read_scores(e3_dir)
    inputs = {"hidden_states": spec["hidden_states"], "fixed": spec["fixed"]}
    cids = {k: [f"learned:{n}" for n in v] for k, v in inputs.items()}
    skip_ids = ["full"] + [c for c, r in e3_rows.items() if r["strategy"] == "uniform_skip"]
    ids, _ = _aligned({**scores, **{f"E3:{c}": e3_scores[c] for c in skip_ids}},
                      [*cids["hidden_states"], *cids["fixed"], *(f"E3:{c}" for c in skip_ids)])
    curves = {k: _curve(rows, scores, v, ids) for k, v in cids.items()}
    baseline = _curve(e3_rows, e3_scores, skip_ids, ids)
    out: dict[str, Any] = {"finding": PAPER["E2"], "depth_unit": DEPTH_UNIT, "n": len(ids), "margin": margin,
                           "curves": {}, "baseline": f"uniform skipping of the {spec['baseline']} model (E3's sweep)"}
    for k, names in inputs.items():
        out["curves"][k] = sorted(({"run": n, "cost_alpha": records[n].get("cost_alpha"),
                                    **_point(rows[f"learned:{n}"])} for n in names), key=lambda p: p["avg_layers"])
    out["curves"]["dropout_uniform_skip"] = [_point(e3_rows[c]) for c in
                                             sorted(skip_ids, key=lambda c: e3_rows[c]["avg_layers"])]
    # beside uniform skipping of the dropout model at each controller's own depth
    beside = []
    for k in inputs:
        for p in out["curves"][k]:
            base = _curve_scores(baseline, p["avg_layers"])
            if base is not None:
                mine = np.array([scores[p["config_id"]][i] for i in ids])
                diff = paired_bootstrap(mine, base)
                beside.append({"input": k, "run": p["run"], "avg_layers": p["avg_layers"], "minus_uniform_skip": diff,
                               "sentence": describe_difference(f"the {k} controller ({p['run']})",
                                                               "uniform skipping of the dropout model", diff,
                                                               f"at {p['avg_layers']:.2f} layers")})
    out["beside_uniform_skip"] = beside
    h, f = curves["hidden_states"], curves["fixed"]
    lo, hi = max(h[0][0], f[0][0]), min(h[-1][0], f[-1][0])
    out["common_range"] = None if lo > hi + 1e-9 else [lo, hi]
    if out["common_range"] is None:
        out.update(at_common_depths=[], overall=None, verdict="inconclusive",
                   reason="the two curves share no range of depths, so they cannot be compared at equal depth",
                   decided_by=[f"hidden_states spans {h[0][0]:.2f}-{h[-1][0]:.2f} layers, fixed "
                               f"{f[0][0]:.2f}-{f[-1][0]:.2f}"])
    else:
        grid = sorted({round(x, 6) for x, _ in h + f if lo - 1e-9 <= x <= hi + 1e-9} | {round(lo, 6), round(hi, 6)})
        at, hs, fs = [], [], []
        for d in grid:
            a, b = _curve_scores(h, d), _curve_scores(f, d)
            hs.append(a)
            fs.append(b)
            diff = paired_bootstrap(a, b)
            base = _curve_scores(baseline, d)
            at.append({"avg_layers": d, "hidden_states": float(a.mean()), "fixed": float(b.mean()),
                       "dropout_uniform_skip": None if base is None else float(base.mean()),
                       "hidden_minus_fixed": diff})
        overall = paired_bootstrap(np.mean(hs, axis=0), np.mean(fs, axis=0))
        where = (f"averaged over {len(grid)} common depth{'s' if len(grid) != 1 else ''} from {lo:.2f} to {hi:.2f} "
                 f"layers (each curve interpolated per sequence)")
        sentence = describe_difference("the hidden-state curve", "the fixed-input curve", overall, where)
        olo, ohi = overall["ci95"]
        if -margin <= olo and ohi <= margin:
            verdict, why = "reproduced", f"the paired interval lies within +-{margin}: no difference that matters"
        elif olo > 0:
            verdict, why = "not reproduced", "the hidden state helps: the paired interval lies above 0"
        elif ohi < 0:
            verdict, why = "reproduced", "the hidden state does no better; the interval lies below 0, so it scores lower"
        else:
            verdict, why = "inconclusive", f"the paired interval covers 0 but reaches beyond +-{margin}"
        out.update(at_common_depths=at, overall={**overall, "over": [lo, hi], "depths": grid}, verdict=verdict,
                   reason=why, decided_by=[sentence])
    out["runs"] = [records[n] for v in inputs.values() for n in v] + [records[spec["baseline"]]]
    return out


def _match_interval(e3_dir: Path, oracle: dict, resamples: int, seed: int) -> dict:
    """Percentile-bootstrap interval (over sequences) of the oracle's match fraction after the null
    gain: each resample recomputes the oracle curve, the full score and the null control's gain."""
    from .sequence import load_sweep

    table = load_sweep(e3_dir, ["full", "uniform_skip", "early_exit"])
    cols = table.columns(oracle["configs"])
    full_col = table.config_ids.index("full")
    scores = read_scores(e3_dir)
    null = oracle.get("null_control")
    if not null:
        return {"ci95": None, "resamples": 0, "never_matched": None}
    alts = np.array([[scores[c][s] for c in null["configs"]] for s in table.ids])  # (N, K) full + samples
    L, N = table.num_layers, len(table.ids)
    w = table.weights if table.weights is not None else np.ones(N)
    rng = np.random.default_rng(seed)
    fractions, never = [], 0
    for _ in range(resamples):
        idx = rng.integers(0, N, size=N)
        s = table.scores[idx][:, cols]
        full = float(table.scores[idx, full_col].mean())
        gain = float(alts[idx].max(axis=1).mean()) - full
        curve = oracle_curve(s, table.layers[idx][:, cols], weights=w[idx])
        m = match_depth(curve, full + gain)
        never += m is None
        fractions.append((L if m is None else m) / L)
    lo, hi = np.percentile(fractions, [2.5, 97.5])
    return {"ci95": [float(lo), float(hi)], "resamples": resamples, "never_matched": never,
            "note": "a resample whose null-adjusted oracle never reaches full depth counts as 100% of the layers"}


def analyse_e3(plan: Plan, records: dict, e3_dir: Path) -> dict:
    spec = plan.experiments["E3"]
    rows = read_sweep(e3_dir)
    by = {r["config_id"]: r for r in rows}
    oracle = read_json(e3_dir / "oracle.json")
    L = oracle["num_layers"]
    null = oracle.get("null_control")
    gain = None if not null else null["score"] - null["full_score"]
    top = oracle["curve"][-1]["score"] if oracle["curve"] else oracle["full_score"]
    rnd: dict[int, list[float]] = {}
    for r in rows:
        if r["strategy"] == "random_route":
            rnd.setdefault(int(r["budget"]), []).append(r["rougeL"])
    interval = _match_interval(e3_dir, oracle, int(spec.get("bootstrap", 200)), plan.eval["seed"])
    adj, goal = oracle.get("match_avg_layers_null_adjusted"), float(spec.get("goal_fraction", 0.6))
    floor = min(r["avg_layers"] for r in rows if r["config_id"] in oracle["configs"]) / L
    out = {
        "finding": PAPER["E3"], "depth_unit": DEPTH_UNIT, "n": oracle["n_sequences"], "model": spec["run"],
        "k": oracle["n_configs"], "configs": oracle["configs"],
        "full": _point(by["full"]),
        "uniform_skip": [_point(r) for r in rows if r["strategy"] == "uniform_skip"],
        "early_exit": [_point(r) for r in rows if r["strategy"] == "early_exit"],
        "random_routes": [{"budget": b, "mean": float(np.mean(v)), "n_routes": len(v),
                           "sd": float(np.std(v, ddof=1)) if len(v) > 1 else 0.0}
                          for b, v in sorted(rnd.items(), reverse=True)],
        "oracle": {"full_score": oracle["full_score"], "score_with_every_layer": top,
                   "gain_at_full_depth": top - oracle["full_score"], "null_control": null, "null_gain": gain,
                   "match_avg_layers": oracle["match_avg_layers"], "match_fraction": oracle["match_fraction"],
                   "match_avg_layers_null_adjusted": adj,
                   "match_fraction_null_adjusted": None if adj is None else adj / L,
                   "match_fraction_null_adjusted_ci95": interval["ci95"], "bootstrap": interval,
                   "shallowest_candidate_fraction": floor},
        "paper_fraction": spec.get("paper_fraction", 0.233), **_off_the_shelf(spec), "goal_fraction": goal,
        "differences": [
            f"model: {plan.model} ({L} layers), adapted by LoRA + self-distillation with layer dropout "
            f"(run {spec['run']}), against OPT-IML-1.3B (24 layers) fine-tuned on each task",
            f"candidates: the full model, uniform skipping to {', '.join(map(str, sorted(spec['uniform_skip'])))} and "
            f"early exit at {', '.join(map(str, sorted(spec['early_exit'])))} layers (the shallowest at "
            f"{100 * floor:.0f}% of the depth: the oracle cannot go below it), against uniform skipping to 4, 8, 12 "
            f"of 24 layers (17-50%)",
            f"data: {plan.eval['data']}, {oracle['n_sequences']} sequences, {plan.eval['max_new_tokens']} new tokens "
            f"(greedy), against the Alpaca test split",
            "a null control (the same best-of-K over K full-depth runs) is subtracted here; the paper has none",
        ],
    }
    ci = interval["ci95"]
    interval_of = "the interval of the null-adjusted match"
    if not null or ci is None:
        verdict, why = "inconclusive", "no null control (full_sample rows) to subtract"
    elif ci[1] <= goal:
        verdict, why = "reproduced", f"{interval_of} lies at or below {100 * goal:.0f}% of the layers"
    elif ci[0] > goal:
        verdict, why = "not reproduced", (f"{interval_of} lies above {100 * goal:.0f}% of the layers (a resample that "
                                          f"never matches counts as 100%)")
    else:
        verdict, why = "inconclusive", f"{interval_of} straddles {100 * goal:.0f}% of the layers"
    out["decided_by"] = [_e3_sentence(out, L)]
    out.update(verdict=verdict, reason=why, runs=[records[spec["run"]]])
    return out


def _off_the_shelf(spec: dict) -> dict:
    """The base model's oracle: read from `off_the_shelf_oracle` (an oracle.json, e.g. adalas reproduce's)
    when that file exists, else the plan's `off_the_shelf_fraction` and `off_the_shelf_source`."""
    path = spec.get("off_the_shelf_oracle")
    doc = read_json(Path(path)) if path else None
    if doc is None:
        return {"off_the_shelf_fraction": spec.get("off_the_shelf_fraction"),
                "off_the_shelf_fraction_null_adjusted": None, "off_the_shelf_source": spec.get("off_the_shelf_source")}
    adj = doc.get("match_avg_layers_null_adjusted")
    return {"off_the_shelf_fraction": doc.get("match_fraction"),
            "off_the_shelf_fraction_null_adjusted": None if adj is None else adj / doc["num_layers"],
            "off_the_shelf_source": f"{path}: {doc['n_sequences']} sequences, K = {doc['n_configs']}"
                                    + ("" if doc.get("null_control") else ", no null control")}


def _e3_sentence(e3: dict, L: int) -> str:
    """The oracle's match before and after the null gain, with the interval, beside the paper's."""
    o = e3["oracle"]
    pct = lambda x: f"{x:.2f} of {L} layers ({100 * x / L:.1f}%)"  # noqa: E731
    raw = "never" if o["match_avg_layers"] is None else f"with {pct(o['match_avg_layers'])}"
    shelf = e3["off_the_shelf_fraction"]
    shelf_adj = e3.get("off_the_shelf_fraction_null_adjusted")
    tail = (f" The paper: {100 * e3['paper_fraction']:.1f}%"
            + (f"; the base model off the shelf: {100 * shelf:.1f}%" if shelf else "")
            + (f" ({100 * shelf_adj:.1f}% with its null gain subtracted)" if shelf_adj is not None else "") + ".")
    if not o["null_control"]:
        return f"The oracle matches full depth {raw}, with no null control (no full_sample rows): uncontrolled.{tail}"
    adj, b = o["match_avg_layers_null_adjusted"], o["bootstrap"]
    text = (f"With the null gain ({o['null_gain']:+.3f}) taken off, the oracle "
            + ("never reaches full depth" if adj is None else f"matches full depth with {pct(adj)}"))
    if b["ci95"] is not None:
        text += (f" (95% CI {100 * b['ci95'][0]:.1f}% to {100 * b['ci95'][1]:.1f}% of the layers over "
                 f"{b['resamples']} resamples of the sequences"
                 + (f"; {b['never_matched']} of them never match" if b["never_matched"] else "") + ")")
    return text + f"; without it, it matches {raw}.{tail}"


def analyse_e4(plan: Plan, records: dict, e3_dir: Path) -> dict:
    crossfit = read_json(plan.out / "E4" / "router_crossfit.json")
    speed = read_json(plan.out / "E4" / "speed.json")
    oracle = read_json(e3_dir / "oracle.json")
    rows = {r["config_id"]: r for r in read_sweep(e3_dir)}
    scores = read_scores(e3_dir)
    ids = crossfit["ids"]
    skip = _curve(rows, scores, ["full"] + [c for c, r in rows.items() if r["strategy"] == "uniform_skip"], ids)
    paired_mix = {float(p["target_avg_layers"]): p for p in crossfit["paired"]}
    targets = []
    for t in crossfit["targets"]:
        cid = f"sequence@{t:g}"
        router = rows[cid]
        mine = np.array([scores[cid][i] for i in ids])
        base = _curve_scores(skip, router["avg_layers"])
        vs_skip = None if base is None else paired_bootstrap(mine, base)
        mix = paired_mix[float(t)]
        vs_mix = {"diff": mix["diff"], "ci95": mix["ci95"], "n": len(ids), "mix": mix["mix"]}
        where = f"aiming at {t:g} layers ({router['avg_layers']:.2f} run)"
        targets.append({
            "target": t, "router": _point(router), "minus_uniform_skip": vs_skip, "minus_best_fixed_mix": vs_mix,
            "oracle_at_depth": oracle_score_at(oracle, router["avg_layers"]),
            "input_blind": next((p["score"] for p in crossfit["curves"]["input_blind"]
                                 if float(p["target_avg_layers"]) == float(t)), None),
            "sentences": [s for s in (
                vs_skip and describe_difference("the cross-fitted router", "uniform skipping at the same depth",
                                                vs_skip, where),
                describe_difference("the cross-fitted router", "the best fixed mix at the same depth (hindsight)",
                                    vs_mix, where)) if s]})
    signs = [_direction(t["minus_best_fixed_mix"]["ci95"]) for t in targets]
    within = all(-0.02 <= t["minus_best_fixed_mix"]["ci95"][0] and t["minus_best_fixed_mix"]["ci95"][1] <= 0.02
                 for t in targets)
    if any(s > 0 for s in signs) and not any(s < 0 for s in signs):
        verdict, why = "reproduced", "the router beats the best fixed mix (hindsight) at some depth and loses at none"
    elif any(s < 0 for s in signs):
        verdict, why = "not reproduced", "the best fixed mix beats the router at some depth"
    elif within:
        verdict, why = "not reproduced", "every paired interval lies within +-0.02: the prompt buys nothing measurable"
    else:
        verdict, why = "inconclusive", "the paired intervals cover 0"
    out = {"finding": PAPER["E4"], "depth_unit": DEPTH_UNIT, "n": len(ids), "folds": crossfit["folds"],
           "candidates": crossfit["candidates"], "feature_layers": crossfit["feature_layers"], "targets": targets,
           "speed": None if speed is None else {
               "target_avg_layers": speed["target_avg_layers"], "n": speed["n"], "batch_size": speed["batch_size"],
               "max_new_tokens": speed["max_new_tokens"], "full_tokens_per_s": speed["full"]["tokens_per_s"],
               "router_tokens_per_s": speed["sequence"]["tokens_per_s"], "speedup_tokens_per_s":
               speed["speedup_tokens_per_s"], "speedup_wall": speed["speedup_wall"],
               "avg_layers": speed["sequence"]["measured_avg_layers"]},
           "verdict": verdict, "reason": why,
           "decided_by": [t["sentences"][-1] for t in targets], "runs": [records[plan.experiments["E3"]["run"]]]}
    return out


def missing(plan: Plan, records: dict, name: str) -> str | None:
    """What experiment `name` still lacks (runs, sweep configs, files), or None when it can be analysed."""
    ex, adapted, e3_dir = plan.experiments, plan.out / "adapted", plan.out / "E3"
    runs = [n for n in runs_for(plan, [name]) if n not in records]
    if runs:
        return f"runs not trained yet: {', '.join(runs)}"
    done = {r["config_id"] for r in read_sweep(adapted)} if (adapted / "sweep.jsonl").is_file() else set()
    if name == "E1":
        e1 = [n for p in ex["E1"]["pairs"] for n in (p["skip"], p["exit"])]
        want = ["full"] + [f"base@{n}" for n in e1] + [f"learned:{n}" for n in e1]
    elif name == "E2":
        want = [f"learned:{n}" for n in [*ex["E2"]["hidden_states"], *ex["E2"]["fixed"]]]
    else:
        want = []
    if [c for c in want if c not in done]:
        return f"not evaluated yet: {', '.join(c for c in want if c not in done)} (in {adapted})"
    files = {"E2": e3_dir / "oracle.json", "E3": e3_dir / "oracle.json", "E4": plan.out / "E4" / "router_crossfit.json"}
    if name in files and not files[name].is_file():
        return f"not evaluated yet: {files[name]} is missing"
    return None


def not_run(name: str, why: str) -> dict:
    """An experiment's place in study.json before its runs and evaluations exist."""
    return {"finding": PAPER[name], "depth_unit": DEPTH_UNIT, "verdict": "not run", "reason": why,
            "decided_by": ["–"], "runs": []}


def analyse(plan: Plan, records: dict, stages: dict) -> dict:
    """study.json: E1-E4 (numbers, 95% intervals, n, the depth unit, the runs, a verdict) and the study's
    settings. An experiment whose runs or evaluations are not all there is marked `not run`, with what
    it lacks."""
    from .evaluate import versions

    adapted, e3_dir = plan.out / "adapted", plan.out / "E3"
    from .data import data_sha256

    eval_sha = data_sha256(plan.eval["data"])
    analysers = {"E1": lambda: analyse_e1(plan, records, adapted), "E2": lambda: analyse_e2(plan, records, adapted, e3_dir),
                 "E3": lambda: analyse_e3(plan, records, e3_dir), "E4": lambda: analyse_e4(plan, records, e3_dir)}
    doc = {}
    for name, analyse_one in analysers.items():
        why = missing(plan, records, name)
        doc[name] = not_run(name, why) if why else analyse_one()
    evals = {"E1": [("sweep:adapted", adapted)], "E2": [("sweep:adapted", adapted), ("sweep:E3", e3_dir)],
             "E3": [("sweep:E3", e3_dir)], "E4": [("sweep:E3", e3_dir), ("E4:router", None), ("E4:speed", None)]}
    for name, stage_list in evals.items():
        if doc[name]["verdict"] == "not run":
            continue
        for stage, _ in stage_list:
            doc[name]["runs"].append({"name": stage, "command": f"adalas study --plan {plan_ref(plan)} (stage {stage})",
                                      "data": plan.eval["data"], "data_sha256": eval_sha,
                                      "wall_s": stages.get(stage, 0.0)})
    doc["runs"] = list(records.values())
    doc["study"] = {"plan": plan_ref(plan), "plan_sha256": plan.sha256,
                    "description": plan.description, "model": plan.model, "eval": plan.eval,
                    "eval_data_sha256": eval_sha, "k": null_k(plan), "depth_unit": DEPTH_UNIT,
                    "stages_s": stages, "train_wall_s": round(sum(r["wall_s"] or 0.0 for r in records.values()), 1),
                    "versions": versions()}
    return doc


# ---------------------------------------------------------------------------------------------
# The report and its plots

def _ci_text(p: dict | None) -> str:
    if not p:
        return "–"
    ci = p.get("ci95")
    return f"{p['rougeL']:.3f}" + (f" [{ci[0]:.3f}, {ci[1]:.3f}]" if ci else "")


def _diff_text(d: dict | None) -> str:
    return "–" if not d else f"{d['diff']:+.3f} [{d['ci95'][0]:+.3f}, {d['ci95'][1]:+.3f}]"


def findings_table(doc: dict) -> str:
    """One line per experiment: the paper's finding, the interval that decides ours, the verdict."""
    lines = ["| experiment | the paper's finding | what decides it here (95% CI) | verdict |", "|---|---|---|---|"]
    for name in ("E1", "E2", "E3", "E4"):
        e = doc[name]
        lines.append(f"| {name} | {e['finding']} | {' '.join(e['decided_by'])} | **{e['verdict']}** ({e['reason']}) |")
    return "\n".join(lines)


def readme_study(doc: dict) -> str:
    """The README's "Training study" results from study.json: the findings with the intervals that
    decide them, E1's table, and each other experiment's deciding sentence (report.md has the rest)."""
    s = doc["study"]
    md = [f"From `adalas study` (plan `{s['plan']}`, `results/study/report.md`; ROUGE-L on `{s['eval']['data']}`, "
          f"{s['eval']['max_new_tokens']} new tokens, greedy; paired 95% intervals over the same sequences):", "",
          findings_table(doc), ""]
    e1 = doc["E1"]
    if e1["verdict"] != "not run":
        md += _e1_table(e1) + ["", f"Base model at full depth: {_ci_text(e1['base_full'])} ({e1['n']} sequences).", ""]
    for name in ("E2", "E3", "E4"):
        if doc[name]["verdict"] != "not run":
            md += [f"- {name}: " + " ".join(doc[name]["decided_by"])]
    return "\n".join(md).rstrip() + "\n"


def _yerr(points: Sequence[dict], ys: Sequence[float]) -> np.ndarray:
    """(2, n) error bars from each point's ci95 (clipped at 0: a bootstrap bound can differ from the mean
    in the last float digit)."""
    return np.clip(np.array([[y - p["ci95"][0], p["ci95"][1] - y] for p, y in zip(points, ys)]).T, 0, None)


def plot_e1(doc: dict, path: Path) -> Path:
    plt = _plt()
    e1 = doc["E1"]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    bars = [("skipping, off the shelf", lambda c: c["off_the_shelf"]["skip"], "lightsteelblue"),
            ("early exit, off the shelf", lambda c: c["off_the_shelf"]["exit"], "mistyrose"),
            ("skipping, adapted", lambda c: c["skip"], "tab:blue"),
            ("early exit, adapted", lambda c: c["exit"], "tab:red")]
    width = 0.2
    for k, (label, get, color) in enumerate(bars):
        xs = [i + (k - 1.5) * width for i in range(len(e1["comparisons"]))]
        pts = [get(c) for c in e1["comparisons"]]
        ys = [p["rougeL"] for p in pts]
        ax.bar(xs, ys, width, yerr=_yerr(pts, ys), capsize=3, color=color, label=label)
    ax.axhline(e1["base_full"]["rougeL"], color="black", linestyle=":", linewidth=1, label="base model, full depth")
    ax.set_xticks(range(len(e1["comparisons"])), [f"{c['depth']} layers" for c in e1["comparisons"]])
    ax.set_ylabel("ROUGE-L (95% CI)")
    ax.set_title(f"E1: skipping against early exit at equal depth ({e1['n']} sequences)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return save_figure(fig, path)


def plot_e2(doc: dict, path: Path) -> Path:
    plt = _plt()
    e2 = doc["E2"]
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key, label, color, marker in [("hidden_states", "controllers reading the hidden state", "tab:orange", "D"),
                                      ("fixed", "controllers with a fixed input", "tab:purple", "s"),
                                      ("dropout_uniform_skip", "uniform skipping, layer-dropout model", "tab:blue",
                                       "o")]:
        pts = e2["curves"][key]
        xs, ys = [p["avg_layers"] for p in pts], [p["rougeL"] for p in pts]
        ax.errorbar(xs, ys, yerr=_yerr(pts, ys), color=color, marker=marker, capsize=3, label=label)
    if e2.get("common_range"):
        ax.axvspan(*e2["common_range"], color="gray", alpha=0.12, label="common depths (compared)")
    ax.set_xlabel("average layers run per generated token")
    ax.set_ylabel("ROUGE-L (95% CI)")
    ax.set_title(f"E2: per-token controllers ({e2['n']} sequences)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def plot_e4(out: Path, doc: dict, path: Path) -> Path:
    plt = _plt()
    crossfit = read_json(out / "E4" / "router_crossfit.json")
    fig, ax = plt.subplots(figsize=(7, 4.5))
    curves = crossfit["curves"]
    for key, label, color, style in [("uniform_skip", "uniform skipping", "tab:blue", "-o"),
                                     ("early_exit", "early exit", "tab:red", "-o"),
                                     ("best_fixed_mix", "best fixed mix (hindsight)", "gray", "--"),
                                     ("oracle", "oracle (in-sample upper bound)", "black", "-"),
                                     ("input_blind", "same router without the prompt", "tab:green", ":^")]:
        pts = sorted(curves.get(key) or [], key=lambda p: p["avg_layers"])
        if pts:
            ax.plot([p["avg_layers"] for p in pts], [p["score"] for p in pts], style, color=color, label=label,
                    markersize=4)
    pts = [t["router"] for t in doc["E4"]["targets"]]
    xs, ys = [p["avg_layers"] for p in pts], [p["rougeL"] for p in pts]
    ax.errorbar(xs, ys, yerr=_yerr(pts, ys), fmt="P", color="tab:brown", capsize=3,
                label="per-sequence router (cross-fitted)")
    ax.set_xlabel("average layers run per generated token")
    ax.set_ylabel("ROUGE-L")
    ax.set_title(f"E4: the per-sequence router on the layer-dropout model ({doc['E4']['n']} sequences)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return save_figure(fig, path)


def write_report(out: Path, doc: dict) -> Path:
    """report.md and e1.png, e2.png, e4.png (E3's figure and its own report come from `adalas.report`)."""
    from .report import write_report as sweep_report

    out = Path(out)
    s = doc["study"]
    ran = {k for k in EXPERIMENTS if doc[k]["verdict"] != "not run"}
    for name, plot in (("E1", plot_e1), ("E2", plot_e2)):
        if name in ran:
            plot(doc, out / f"{name.lower()}.png")
    if "E4" in ran:
        plot_e4(out, doc, out / "e4.png")
    if "E3" in ran:
        sweep_report(out / "E3", meta={"data": {"name": s["eval"]["data"]}, "max_new_tokens": s["eval"]["max_new_tokens"],
                                       "batch_size": s["eval"]["batch_size"], "null_k": s["k"]})
    n = next((doc[k]["n"] for k in EXPERIMENTS if k in ran), None)
    md = ["# adalas study: the paper's training experiments", "",
          f"Plan `{s['plan']}` ({s['description']}); model `{s['model']}`; evaluation on `{s['eval']['data']}` "
          f"({n or 'all its'} sequences, {s['eval']['max_new_tokens']} new tokens, greedy, batch {s['eval']['batch_size']}); "
          f"training wall time {s['train_wall_s'] / 60:.1f} min over {len(doc['runs'])} runs. "
          f"Depth: {s['depth_unit']}. "
          "Every comparison is a paired bootstrap over the same sequences (1,000 resamples); an interval that "
          "covers 0 is no measurable difference.", "",
          "## Findings", "", findings_table(doc), ""]

    for name, (title, section) in SECTIONS.items():
        e = doc[name]
        md += [title, ""] + ([f"Not run yet: {e['reason']}.", ""] if e["verdict"] == "not run" else section(e))
    md += ["## Runs", "", "| run | steps | wall | data sha256 | command |", "|---|---|---|---|---|"]
    md += [f"| {r['name']} | {r['steps']} | {(r['wall_s'] or 0) / 60:.1f} min | `{(r['data_sha256'] or '–')[:12]}` | "
           f"`{r['command']}`" + (f" (trained by `{r['adopted_from']}`, which trains alike)" if r.get("adopted_from")
                                  else "") + " |" for r in doc["runs"]]
    md += ["", "Stages (wall seconds, summed over invocations): "
           + ", ".join(f"{k} {v:.0f}" for k, v in s["stages_s"].items()) + ".", ""]
    path = out / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _e1_table(e1: dict) -> list[str]:
    """E1's comparisons, adapted and off the shelf, one row per depth (report.md and the README)."""
    md = ["| depth | skipping, adapted | early exit, adapted | difference | skipping, off the shelf | early exit, off "
          "the shelf | difference |", "|---|---|---|---|---|---|---|"]
    for c in e1["comparisons"]:
        o = c["off_the_shelf"]
        md.append(f"| {c['depth']} | {_ci_text(c['skip'])} | {_ci_text(c['exit'])} | "
                  f"{_diff_text(c['skip_minus_exit'])} | {_ci_text(o['skip'])} | {_ci_text(o['exit'])} | "
                  f"{_diff_text(o['skip_minus_exit'])} |")
    return md


def _e1_section(e1: dict) -> list[str]:
    md = ["![E1](e1.png)", ""] + _e1_table(e1)
    md += ["", f"Base model at full depth: {_ci_text(e1['base_full'])}.", ""]
    md += [f"- {c['sentence']} ({c['skip_run']} against {c['exit_run']}, same data, steps and LoRA.)"
           for c in e1["comparisons"]]
    md += [f"- {c['off_the_shelf']['sentence']}" for c in e1["comparisons"]]
    md += ["", f"Verdict: **{e1['verdict']}**: {e1['reason']}.", ""]
    return md


def _e2_section(e2: dict) -> list[str]:
    md = ["![E2](e2.png)", "",
           "| input | run | cost weight | avg layers | ROUGE-L [95% CI] |", "|---|---|---|---|---|"]
    for k in ("hidden_states", "fixed"):
        md += [f"| {k} | {p['run']} | {p['cost_alpha']} | {p['avg_layers']:.2f} | {_ci_text(p)} |"
               for p in e2["curves"][k]]
    md += [""]
    if e2["at_common_depths"]:
        md += ["| common depth | hidden state | fixed | difference [95% CI] | uniform skipping (dropout model) |",
               "|---|---|---|---|---|"]
        md += [f"| {a['avg_layers']:.2f} | {a['hidden_states']:.3f} | {a['fixed']:.3f} | "
               f"{_diff_text(a['hidden_minus_fixed'])} | "
               f"{'–' if a['dropout_uniform_skip'] is None else format(a['dropout_uniform_skip'], '.3f')} |"
               for a in e2["at_common_depths"]]
        md += [""]
    md += [f"- {x}" for x in e2["decided_by"]]
    md += [f"- {b['sentence']}" for b in e2["beside_uniform_skip"]]
    md += ["", f"Verdict: **{e2['verdict']}**: {e2['reason']} (a \"no difference\" finding counts as reproduced when "
           f"the paired interval lies within ±{e2['margin']}).", ""]
    return md


def _e3_section(e3: dict) -> list[str]:
    o = e3["oracle"]
    md = ["![E3](E3/rouge_vs_layers.png)", "",
           f"The oracle chooses, for each of {e3['n']} sequences, among K = {e3['k']} configs "
           f"({', '.join(e3['configs'])}), after the fact: an in-sample upper bound, not a method "
           "(details: [E3/report.md](E3/report.md)).", "",
           "| | layers | % of the depth |", "|---|---|---|"]
    L = e3["full"]["avg_layers"]

    def row(label, x):
        return f"| {label} | {'never' if x is None else f'{x:.2f}'} | {'–' if x is None else f'{100 * x / L:.1f}%'} |"
    md += [row("oracle matches full depth", o["match_avg_layers"]),
           row("... with the null gain subtracted", o["match_avg_layers_null_adjusted"])]
    ci = o["match_fraction_null_adjusted_ci95"]
    md += [f"| ... its 95% CI ({o['bootstrap']['resamples']} resamples of the sequences) | | "
           + ("–" if ci is None else f"{100 * ci[0]:.1f}% to {100 * ci[1]:.1f}%") + " |",
           f"| the paper (OPT-IML-1.3B, Alpaca) | | {100 * e3['paper_fraction']:.1f}% |",
           "| off the shelf (the base model) | | "
           + ("–" if not e3["off_the_shelf_fraction"] else f"{100 * e3['off_the_shelf_fraction']:.1f}%")
           + ("" if e3["off_the_shelf_fraction_null_adjusted"] is None
              else f"; {100 * e3['off_the_shelf_fraction_null_adjusted']:.1f}% with its null gain subtracted")
           + (f" ({e3['off_the_shelf_source']})" if e3["off_the_shelf_source"] else "") + " |",
           f"| the goal | | at most {100 * e3['goal_fraction']:.0f}% |", ""]
    if o["null_control"]:
        md += [f"With every layer allowed the oracle scores {o['score_with_every_layer']:.3f}, "
               f"{o['gain_at_full_depth']:+.3f} over the full model's {o['full_score']:.3f}; choosing each sequence's "
               f"best of {o['null_control']['k']} full-depth runs ({FULL_SAMPLE_NOTE}) gains {o['null_gain']:+.3f} "
               "by selection alone (the null control).", ""]
    if e3["random_routes"]:
        md += ["Random routes (mean ± SD over routes): " + "; ".join(
            f"{r['budget']} layers {r['mean']:.3f} ± {r['sd']:.3f} ({r['n_routes']} routes)"
            for r in e3["random_routes"]) + ".", ""]
    md += ["What differs from the paper:", ""] + [f"- {d}" for d in e3["differences"]]
    md += ["", f"- {e3['decided_by'][0]}", "", f"Verdict: **{e3['verdict']}**: {e3['reason']}.", ""]
    return md


def _e4_section(e4: dict) -> list[str]:
    md = ["![E4](e4.png)", "",
           f"Cross-fitted over {e4['folds']} folds (every sequence routed by a router fit on the other folds) among "
           f"{', '.join(e4['candidates'])}.", "",
           "| target | router: avg layers | ROUGE-L [95% CI] | minus uniform skipping | minus best fixed mix "
           "(hindsight) | oracle there (upper bound) | without the prompt |", "|---|---|---|---|---|---|---|"]
    for t in e4["targets"]:
        r = t["router"]
        md.append(f"| {t['target']:g} | {r['avg_layers']:.2f} | {_ci_text(r)} | {_diff_text(t['minus_uniform_skip'])} "
                  f"| {_diff_text(t['minus_best_fixed_mix'])} | "
                  f"{'–' if t['oracle_at_depth'] is None else format(t['oracle_at_depth'], '.3f')} | "
                  f"{'–' if t['input_blind'] is None else format(t['input_blind'], '.3f')} |")
    md += [""] + [f"- {x}" for t in e4["targets"] for x in t["sentences"]]
    sp = e4["speed"]
    if sp:
        md += ["", f"Real decode speed (a router fit once, aiming at {sp['target_avg_layers']:g} layers; {sp['n']} "
               f"held-out sequences, batch {sp['batch_size']}, {sp['max_new_tokens']} new tokens, rows sharing a route "
               f"decoded together): {sp['router_tokens_per_s']:.1f} tokens/s against {sp['full_tokens_per_s']:.1f} at "
               f"full depth ({sp['speedup_tokens_per_s']:.2f}x; {sp['avg_layers']:.2f} layers per token)."]
    md += ["", f"Verdict: **{e4['verdict']}**: {e4['reason']}.", ""]
    return md


# report.md's sections: title, and the body of an experiment that ran
SECTIONS = {"E1": ("## E1: layer skipping against early exit, after adaptation", _e1_section),
            "E2": ("## E2: does the controller's input matter?", _e2_section),
            "E3": ("## E3: the per-sequence oracle on the layer-dropout model", _e3_section),
            "E4": ("## E4: the learned per-sequence router", _e4_section)}
