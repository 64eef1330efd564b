"""`adalas bench decode` and `adalas bench train`, old code against new, side by side: prints one JSON object.

    .venv/bin/python benchmarks/depth_loop_compare.py [--old 7ce7c95~1] [--new 7ce7c95] [--repeats 3] [--out FILE]
    .venv/bin/python benchmarks/depth_loop_compare.py --smoke --repeats 1   # seconds: checks the script

Each side is a git worktree under /tmp (made once, detached at its commit) run with this checkout's
virtual environment and `PYTHONPATH=<worktree>/src`, so each runs its own engine and its own
benchmark files. Runs are interleaved (old, new; then new, old; ...), one process per benchmark run,
`--repeats` rounds; each number is the median over the rounds. Reported per benchmark:
- `speed_new_over_old`: per config, new tokens/s over old (decode) or old step time over new (train,
  wall and CPU time); 1.0 = unchanged, above = faster;
- `ratio_delta`: per ratio the benchmark itself reports (`ratios` of decode; `vs_adalas_full`,
  `vs_hf_full` and their CPU-time forms of train), new minus old;
- `within`: every ratio_delta within `--tolerance` (0.10: issue 27's bar) and every speed ratio within
  1 +- tolerance; `greedy_identical`: decode's equality checks, on both sides.
The transformers configs (`hf_*`) run the same code on both sides: their speed ratios are the noise
floor of the run. On a loaded machine every number is noise (a smoke run here, with other jobs on both
cores, gave ratios from 0.15 to 8): run it on idle cores.
Extra arguments after `--` go to both benchmarks' commands (e.g. `-- --threads 2`). The default old
and new commits differ by that change alone (issue 27, item 7: the one depth loop). The full run takes
about 6 x (decode + train) benchmark runs: roughly 60-90 minutes on 2 idle cores.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PYTHON = ROOT / ".venv" / "bin" / "python"
NEW = "7ce7c95"  # the one depth loop (issue 27, item 7)
OLD = NEW + "~1"  # the commit before it: the engine's two loops, routed and planned
SMOKE = {"decode": ["--batch-sizes", "1", "--new-tokens", "3", "--repeats", "1", "--no-redundant"],
         "train": ["--batch", "1", "--tokens", "16", "--labels", "8", "--repeats", "1"]}


def worktree(commit: str) -> Path:
    """A detached worktree of `commit` under /tmp (reused while it is at that commit)."""
    sha = subprocess.run(["git", "rev-parse", commit], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout.strip()
    path = Path("/tmp") / f"adalas-bench-{sha[:12]}"
    if not (path / "src" / "adalas").is_dir():
        subprocess.run(["git", "worktree", "add", "--detach", str(path), sha], cwd=ROOT, check=True,
                       capture_output=True)
    return path


def bench(tree: Path, what: str, args: list[str], out: Path) -> dict:
    env = {**os.environ, "PYTHONPATH": str(tree / "src"), "HF_HUB_OFFLINE": "1"}
    cmd = [str(PYTHON), "-m", "adalas", "bench", what, *args, "--out", str(out)]
    print(f"[compare] {tree.name} {what}: {' '.join(cmd[1:])}", file=sys.stderr, flush=True)
    subprocess.run(cmd, cwd=tree, env=env, check=True, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def tiny_model(directory: Path) -> Path:
    """The tests' tiny Llama with a tokenizer (`tests/conftest.py`'s make_tiny), made once."""
    if not (directory / "config.json").is_file():
        sys.path.insert(0, str(ROOT / "tests"))
        from conftest import make_tiny
        make_tiny(directory)
    return directory


def _median(values: list[float | None]) -> float | None:
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def _medians(runs: list[dict], pick) -> dict[str, float]:
    """Per key of `pick(run)` (a flat dict of numbers), the median over runs."""
    keys = sorted({k for r in runs for k in pick(r)})
    return {k: _median([pick(r).get(k) for r in runs]) for k in keys}


def decode_numbers(doc: dict) -> tuple[dict, dict]:
    """(tokens/s per `config@batch`, ratio per `name@batch`), the redundant section prefixed."""
    speed, ratios = {}, {}
    for part, prefix in (("batches", ""), ("redundant", "redundant_")):
        for B, sec in doc.get(part, {}).items():
            speed.update({f"{prefix}{k}@{B}": v for k, v in sec["tokens_per_s"].items()})
            ratios.update({f"{prefix}{k}@{B}": v for k, v in sec["ratios"].items()})
    return speed, ratios


def train_numbers(doc: dict) -> tuple[dict, dict]:
    """(seconds per config, wall and CPU; ratios vs hf_full and adalas_full, wall and CPU)."""
    seconds = {**doc["median_s"], **{f"cpu:{k}": v for k, v in doc["cpu_median_s"].items()}}
    ratios = {f"{part}:{k}": v for part in ("vs_hf_full", "vs_adalas_full", "cpu_vs_hf_full", "cpu_vs_adalas_full")
              for k, v in doc[part].items()}
    return seconds, ratios


def compare(what: str, old: list[dict], new: list[dict], tolerance: float) -> dict:
    numbers = decode_numbers if what == "decode" else train_numbers
    o_speed, n_speed = _medians(old, lambda d: numbers(d)[0]), _medians(new, lambda d: numbers(d)[0])
    o_ratio, n_ratio = _medians(old, lambda d: numbers(d)[1]), _medians(new, lambda d: numbers(d)[1])
    if what == "decode":  # tokens/s: higher is faster
        speed = {k: round(n_speed[k] / o_speed[k], 3) for k in o_speed if n_speed.get(k) and o_speed[k]}
    else:  # seconds: lower is faster
        speed = {k: round(o_speed[k] / n_speed[k], 3) for k in o_speed if n_speed.get(k) and o_speed[k]}
    delta = {k: round(n_ratio[k] - o_ratio[k], 3) for k in o_ratio
             if n_ratio.get(k) is not None and o_ratio[k] is not None}
    out = {"speed_new_over_old": speed, "ratio_delta": delta,
           "old_ratio": {k: round(v, 3) for k, v in o_ratio.items()},
           "new_ratio": {k: round(v, 3) for k, v in n_ratio.items()},
           "within": all(abs(v) <= tolerance for v in delta.values())
           and all(abs(v - 1.0) <= tolerance for v in speed.values()),
           "worst_ratio_delta": max(delta.items(), key=lambda kv: abs(kv[1]), default=None),
           "slowest_config": min(speed.items(), key=lambda kv: kv[1], default=None)}
    if what == "decode":
        out["greedy_identical"] = {side: all(all(sec["greedy_identical"].values()) for r in runs
                                             for part in ("batches", "redundant") for sec in r.get(part, {}).values())
                                   for side, runs in (("old", old), ("new", new))}
    return out


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    extra = argv[argv.index("--") + 1:] if "--" in argv else []
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--old", default=OLD, help="the old commit (default: before the one depth loop)")
    p.add_argument("--new", default=NEW, help="the new commit (default: the one depth loop; HEAD: today's)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved rounds (medians over them)")
    p.add_argument("--benchmarks", nargs="+", default=["decode", "train"], choices=["decode", "train"])
    p.add_argument("--tolerance", type=float, default=0.10)
    p.add_argument("--smoke", action="store_true",
                   help="the tests' tiny model and tiny settings: checks the script, times nothing")
    p.add_argument("--work", default="/tmp/adalas-depth-loop-compare", help="where the runs' JSON files go")
    p.add_argument("--out", default=None, help="also write the JSON document here")
    args = p.parse_args(argv[:argv.index("--")] if "--" in argv else argv)
    trees = {"old": worktree(args.old), "new": worktree(args.new)}
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    if args.smoke:
        extra = ["--model", str(tiny_model(work / "tiny")), *extra]
    runs: dict[str, dict[str, list[dict]]] = {w: {"old": [], "new": []} for w in args.benchmarks}
    for r in range(args.repeats):
        order = ("old", "new") if r % 2 == 0 else ("new", "old")
        for what in args.benchmarks:
            for side in order:
                flags = (SMOKE[what] if args.smoke else []) + extra
                runs[what][side].append(bench(trees[side], what, flags, work / f"{what}_{side}_{r}.json"))
    doc = {"old": {"commit": args.old, "tree": str(trees["old"])},
           "new": {"commit": args.new, "tree": str(trees["new"])}, "repeats": args.repeats, "smoke": args.smoke, "extra_args": extra, "tolerance": args.tolerance}
    for what in args.benchmarks:
        doc[what] = compare(what, runs[what]["old"], runs[what]["new"], args.tolerance)
    doc["within"] = all(doc[w]["within"] for w in args.benchmarks)
    text = json.dumps(doc, indent=1)
    if args.out:
        Path(args.out).write_text(text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
