"""Stage 1, `data`: rows to adapt on, the model's own (`adalas synth`: plain requests and requests shaped
like real tasks, each file written once per model and settings and reused) or `--data`; rows sharing a
word 8-gram with a `--test` file dropped; the first rows of each kind held out, interleaved.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict
from pathlib import Path

from ..io import atomic_write_text, file_sha256
from .run import Run
from .settings import (SELF_WRITTEN_ROWS, SELF_WRITTEN_SHAPES, SHAPE_BATCH, SHAPE_CHUNK, SHAPE_SOURCE_TOKENS,
                       AdaptSettings, say, sha256_json)

# what a synth file's reuse need not match: which evaluation files its writer excluded (the data stage
# drops every row that shares text with this run's --test files itself)
REUSE_IGNORES = ("exclude", "exclude_sha256")


def synth_settings(s: AdaptSettings):
    """The settings of the plain rows the model writes itself (those the committed embedded rows were made with)."""
    from ..synth import SynthSettings
    return SynthSettings(model=s.model, n=s.synth_rows, seed=0, batch_size=32, max_new_tokens=96, max_prompt_tokens=64)


def shape_settings(s: AdaptSettings, tests_sha256: tuple[str, ...] = ()) -> list:
    """One SynthSettings per chunk of shaped rows (`settings.SHAPE_CHUNK` rows each, seeds 10 k + i),
    the --test files excluded as they are written."""
    from ..synth import SynthSettings

    out = []
    for i, shape in enumerate(SHAPE_SOURCE_TOKENS, 1):
        if shape not in s.shapes:
            continue
        for k in range(-(-s.shape_rows // SHAPE_CHUNK)):
            out.append(SynthSettings(model=s.model, n=min(SHAPE_CHUNK, s.shape_rows - k * SHAPE_CHUNK),
                                     seed=10 * (k + 1) + i, batch_size=SHAPE_BATCH, shape=shape,
                                     max_source_tokens=SHAPE_SOURCE_TOKENS[shape], exclude=tuple(s.tests),
                                     exclude_sha256=tuple(tests_sha256)))
    return out


def synth_location(s: AdaptSettings, settings=None):
    """(where a synth file is or will be, its settings; default: the plain rows'): the repository's committed
    rows for the model when they were made with these settings, else a file in the cache directory keyed
    on the model's weights and the settings (every later run with the same model and settings reuses it)."""
    from ..hub import model_sha256
    from ..paths import cache_dir

    settings = settings or synth_settings(s)
    if settings.shape == "plain":
        known = SELF_WRITTEN_ROWS.get(s.model)
    else:
        known = SELF_WRITTEN_SHAPES.get(s.model, "").format(shape=settings.shape, seed=settings.seed) or None
    if known is not None and synth_finished(Path(known), settings):
        return Path(known), settings
    key = sha256_json({"model": s.model, "model_sha256": model_sha256(s.model), "settings": asdict(settings)})[:16]
    slug = re.sub(r"[^A-Za-z0-9._-]+", "_", Path(s.model).name or s.model)[:48]
    kind = "" if settings.shape == "plain" else f"{settings.shape}-"
    return cache_dir() / "synth" / f"{slug}-{kind}{key}.jsonl", settings


def synth_finished(path: Path, settings) -> bool:
    """The synth file is complete and was made with `settings` (a setting its meta file predates counts
    at its default, as `adalas synth` resumes; which files it excluded does not count, REUSE_IGNORES),
    and its bytes are those its meta file records."""
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
    if not state.get("done") or any(was.get(k, default[k]) != v for k, v in now.items() if k not in REUSE_IGNORES):
        return False
    return state.get("data_sha256") in (None, file_sha256(path))


def _records(path: Path) -> list[dict]:
    """A data file's rows as written (JSON array or JSON Lines), in file order."""
    from ..data_sources import read_records
    return read_records(path.read_text(encoding="utf-8"), str(path))[0]


def data_inputs(run: Run) -> dict:
    s = run.s
    if s.data is not None:
        source = {"file": s.data, "sha256": run.checked.data_sha256}
    else:
        shapes = [{k: v for k, v in asdict(c).items() if k not in REUSE_IGNORES} for c in shape_settings(s)]
        source = {"synth": json.loads(json.dumps(asdict(synth_settings(s)))), "shapes": json.loads(json.dumps(shapes))}
    return {**run.identity(), "source": source, "heldout": s.heldout,
            "tests": [{"file": f, "sha256": h} for f, h in zip(s.tests, run.checked.tests_sha256)]}


def _self_written(run: Run, settings) -> dict:
    """A synth file for these settings: reused when one is finished, else written (resumable)."""
    from ..synth import meta_path, synthesize

    source, settings = synth_location(run.s, settings)
    reused = synth_finished(source, settings)
    what = "rows" if settings.shape == "plain" else f"{settings.shape} rows"
    if not reused:
        say(f"writing {settings.n} {what} with {run.s.model} itself (adalas synth, resumable) into {source}")
        source.parent.mkdir(parents=True, exist_ok=True)
        synthesize(run.model(), run.tokenizer(), settings, source, progress=run.s.progress)
    else:
        say(f"reusing the self-written {what} {source}")
    return {"file": str(source), "meta": str(meta_path(source)), "sha256": file_sha256(source), "reused": reused,
            "shape": settings.shape}


def stage_data(run: Run, inputs: dict, resume: bool) -> dict:
    """Rows to adapt on: the model's own (plain and shaped, each file reused when written before) or
    --data; rows sharing a word 8-gram with a --test file dropped. Held out: the first rows of each kind
    (plain, then each shape), interleaved so that any first rows cover every kind; the rest train."""
    from ..data import load_examples
    from ..io import dumps_row
    from ..synth import test_filter

    s = run.s
    if s.data is not None:
        files, synth = [Path(s.data).expanduser()], None
    else:
        synth = [_self_written(run, c) for c in [synth_settings(s), *shape_settings(s, run.checked.tests_sha256)]]
        files = [Path(f["file"]) for f in synth]
    leaks = test_filter(s.tests) if s.tests else None
    kinds: dict[str, list[dict]] = {}  # plain, then each shape: its rows in file order
    read = 0
    for i, path in enumerate(files):
        records, examples = _records(path), load_examples(str(path))
        read += len(records)
        kind = synth[i]["shape"] if synth else "plain"
        kinds.setdefault(kind, []).extend(
            r for r, ex in zip(records, examples)
            if leaks is None or not any(t and leaks.seen(t) for t in (ex.instruction, ex.context, ex.response)))
    kept = sum(len(rows) for rows in kinds.values())
    if kept < 2:
        raise ValueError(f"data: {kept} row(s) left of {read} after dropping those that share text with "
                         f"the --test files; training and held-out rows both need some")
    share = max(1, s.heldout // len(kinds))  # per kind, at most half of its rows
    held = {kind: rows[:min(share, len(rows) // 2)] for kind, rows in kinds.items()}
    heldout = [held[kind][j] for j in range(max(map(len, held.values()))) for kind in held if j < len(held[kind])]
    train = [r for kind, rows in kinds.items() for r in rows[len(held[kind]):]]
    (run.out / "data").mkdir(parents=True, exist_ok=True)
    outputs = {"source": str(files[0]), "source_sha256": file_sha256(files[0]), "rows": read,
               "dropped_test": read - kept, "synth": synth,
               "kinds": {kind: {"rows": len(rows), "heldout": len(held[kind])} for kind, rows in kinds.items()}}
    for name, rows in (("heldout", heldout), ("train", train)):
        path = run.path(f"data/{name}.jsonl")
        atomic_write_text(path, "".join(dumps_row(r) + "\n" for r in rows))
        outputs.update({name: f"data/{name}.jsonl", f"{name}_sha256": file_sha256(path), f"{name}_rows": len(rows)})
    return outputs
