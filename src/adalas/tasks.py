"""The real test sets: which files and caps, the looks taken at them, and rows fit to commit.

Notable (the rules are `results/tasks/PROTOCOL.md`'s):
- `REAL_TASKS` (defined in `adalas.real_tasks`): the three human-written test sets that
  `../shared/data/` holds, each with the new-token cap fixed once for every config. They are read by
  path and never copied.
- A look is logged before it is taken (`log_looks`): one `LOOKS.jsonl` line per run that adds
  configs, naming each config with the sha256 of the weights it runs (the base model's GGUF file, or
  the adapter's safetensors). A resumed run of the same configs and weights is the same look and
  adds no line, so every candidate appears there once.
- Committed rows (`publish`) keep `id`, the prediction and the scores; the prompt and the reference
  text stay in the ignored run directory. `join_references` puts the references back by `id`
  after checking the file's sha256, so a report can recompute every score.
- A fresh checkout has no run directory: `restore` starts it from the committed copy, so a resumed
  look makes only the rows it lacks (a sweep reads a row's scores, never its text, once it exists).
"""
from __future__ import annotations

import datetime as _dt
import subprocess
from pathlib import Path
from typing import Iterable

from .data import file_sha256, load_examples
from .io import atomic_write_text, dumps_row, read_jsonl
from .real_tasks import REAL_TASKS, RealTask  # noqa: F401  (re-exported: the names callers import)

PROTOCOL_VERSION = 1
TEXT_COLUMNS = ("prompt", "reference")  # the data's own text: never committed
COPIED_FILES = ("sweep.jsonl", "settings.json", "sweep_meta.json", "batches.json")


# the configs of each protocol version, as `adalas sweep` flags: targets first, then the baselines
ADAPTERS = ("smollm2-135m-adapted-24", "smollm2-135m-adapted-20", "smollm2-135m-dropout",
            "smollm2-135m-dropout@smollm2-135m-adapted-24", "smollm2-135m-dropout@smollm2-135m-adapted-20")
PHASES: dict[int, list[dict]] = {1: [
    {"strategies": "full", "adapted": list(ADAPTERS)},
    {"strategies": "early_exit,uniform_skip", "budgets": "20,24,27", "adapted": list(ADAPTERS)},
]}


def task_file(data_dir: str | Path, task: str) -> Path:
    if task not in REAL_TASKS:
        raise ValueError(f"task: unknown {task!r}; the real tasks are {', '.join(REAL_TASKS)}")
    path = Path(data_dir) / REAL_TASKS[task].file
    if not path.is_file():
        raise ValueError(f"task {task!r}: {path} is not a file; pass --data-dir (the folder with the shared test sets)")
    return path


def git_commit(repo: str | Path = ".") -> str:
    """HEAD, with "+dirty" when tracked files differ from it ("unknown" outside a git checkout)."""
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+dirty" if dirty else "")


def looked_at(looks_path: Path) -> set[tuple]:
    """(task, config_id, model_sha256, route) of every config already logged (route None in lines
    logged before routes were)."""
    seen = set()
    for line in read_jsonl(looks_path) if looks_path.is_file() else []:
        for c in line.get("configs", []):
            seen.add((line["task"], c["config_id"], c["model_sha256"], c.get("route")))
    return seen


def look_identities(configs: Iterable, num_layers: int, base_sha256: str) -> list[tuple]:
    """(config id, the sha256 of its weights, its route or None) for each sweep config, as a look records
    them: an adapter by its file's sha256, the base model by `base_sha256`; a route unless every layer runs."""
    from .config import route_to_str

    out = []
    for c in configs:
        route = c.depth.static_route(num_layers)
        out.append((c.config_id, c.weights or base_sha256, route_to_str(route) if route and not all(route) else None))
    return out


def log_looks(looks_path: str | Path, task: str, data_sha256: str, configs: Iterable[tuple],
              why: str, commit: str, changed: Iterable[str] = ()) -> dict | None:
    """Append one line for the configs, (config_id, model_sha256) or (config_id, model_sha256, route),
    not yet logged for this task; returns it (None when every config was logged before: a resumed
    look). A line logged before routes were matches any route, unless the config id is in `changed`
    (its rows were made with another definition: a new candidate under an old name)."""
    if not why.strip():
        raise ValueError("why: say why this look is taken (it is logged in LOOKS.jsonl)")
    looks_path = Path(looks_path)
    seen = looked_at(looks_path)
    changed = set(changed)
    new = []
    for cid, sha, *rest in configs:
        route = rest[0] if rest else None
        exact, before_routes = (task, cid, sha, route) in seen, (task, cid, sha, None) in seen
        if not exact and (cid in changed or not before_routes):
            new.append({"config_id": cid, "model_sha256": sha, **({"route": route} if route else {})})
    if not new:
        return None
    line = {"date": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"), "commit": commit,
            "protocol": PROTOCOL_VERSION, "task": task, "data_sha256": data_sha256, "configs": new, "why": why}
    looks_path.parent.mkdir(parents=True, exist_ok=True)
    with open(looks_path, "a", encoding="utf-8") as f:  # append-only: a look cannot be taken back
        f.write(dumps_row(line) + "\n")
        f.flush()
    return line


def publish(run_dir: str | Path, out_dir: str | Path) -> Path:
    """Copy a finished task sweep into `out_dir` without the data's text (TEXT_COLUMNS)."""
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = read_jsonl(run_dir / "per_sequence.jsonl")
    atomic_write_text(out_dir / "per_sequence.jsonl",
                      "".join(dumps_row({k: v for k, v in r.items() if k not in TEXT_COLUMNS}) + "\n" for r in rows))
    for name in COPIED_FILES:
        if (run_dir / name).is_file():
            atomic_write_text(out_dir / name, (run_dir / name).read_text())
    return out_dir


def restore(published_dir: str | Path, run_dir: str | Path) -> bool:
    """Start an empty run directory from its committed copy (`publish`'s output): the rows without
    the data's text and the files the sweep resumes from (its settings are checked as on any resume).
    Returns whether it restored anything; a run directory that has rows is left alone."""
    published_dir, run_dir = Path(published_dir), Path(run_dir)
    if (run_dir / "per_sequence.jsonl").is_file() or not (published_dir / "per_sequence.jsonl").is_file():
        return False
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in COPIED_FILES:
        if (published_dir / name).is_file():
            atomic_write_text(run_dir / name, (published_dir / name).read_text())
    atomic_write_text(run_dir / "per_sequence.jsonl", (published_dir / "per_sequence.jsonl").read_text())
    return True


def join_references(rows: list[dict], data_file: str | Path, expected_sha256: str | None) -> list[dict]:
    """The rows with each `reference` put back by `id`, after checking that the file is the one the
    rows were made from (its sha256)."""
    sha = file_sha256(data_file)
    if expected_sha256 is not None and sha != expected_sha256:
        raise ValueError(f"{data_file}: sha256 {sha[:12]} is not the {expected_sha256[:12]} the rows were made from")
    refs = {ex.id: ex.response for ex in load_examples(str(data_file))}
    missing = sorted({str(r["id"]) for r in rows} - set(refs))
    if missing:
        raise ValueError(f"{data_file}: no row with id {missing[0]!r} ({len(missing)} missing)")
    return [{**r, "reference": refs[str(r["id"])]} for r in rows]

