"""`adalas tasks`: the protocol's sweeps on the real test sets, each look logged before it is taken.

    adalas tasks run --why "the shipped adapters as of today" --data-dir ../shared/data
    adalas tasks report --readme README.md

`run` takes, for each phase of the protocol (`results/tasks/PROTOCOL.md`; targets first, then the
baselines) and each task, a line in `results/tasks/LOOKS.jsonl` naming the configs that are new to
it, then `adalas sweep` into the ignored `runs/tasks/<task>/` (resumable: a killed run resumes and
logs nothing new; an empty one starts from the committed rows, so only new configs are made), then copies the finished sweep without the data's text into
`results/tasks/<task>/`. `report` writes `results/tasks/report.md` and `summary.json`, per task and
pooled, joining the references back by id after checking each file's sha256. `--also-adapted`
sweeps more adapters with phase 1: the protocol reports both training seeds' test scores, and the
seed that did not ship lives only under an ignored `_` alias.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from ..cli import make_parser

MODEL = "smollm2-135m"  # the protocol's model


def build_parser() -> argparse.ArgumentParser:
    p = make_parser("tasks", __doc__.splitlines()[0])
    p.add_argument("action", choices=["run", "report"])
    p.add_argument("--data-dir", default="../shared/data", help="the folder with the shared test sets")
    p.add_argument("--tasks", default=None, help="comma list (default: all three)")
    p.add_argument("--phases", default=None, help="comma list of the protocol's phases to run (default: all)")
    p.add_argument("--why", default="", help="run: why this look is taken (logged in LOOKS.jsonl)")
    p.add_argument("--also-adapted", "--also_adapted", nargs="+", default=[], metavar="ALIAS",
                   help="run: adapters the protocol reports beside the shipped ones (the training seed that did "
                        "not ship), swept with phase 1, each a look")
    p.add_argument("--runs", default="runs/tasks", help="full rows, with the data's text (ignored by git)")
    p.add_argument("--out", default="results/tasks", help="committed rows and the report")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--readme", default=None, help="report: also put the tables into this README, between its "
                                                  "real-task markers")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from ..tasks import PHASES, PROTOCOL_VERSION, REAL_TASKS, task_file

    args = build_parser().parse_args(argv)
    tasks = [t.strip() for t in (args.tasks or ",".join(REAL_TASKS)).split(",") if t.strip()]
    files = {t: task_file(args.data_dir, t) for t in tasks}  # an unknown task or a missing file: one line
    if args.action == "report":
        from ..task_report import write_task_report
        print(f"report: {write_task_report(args.out, args.data_dir, args.readme)}")
        return 0
    if not args.why.strip():
        raise ValueError("--why: say why this look is taken (it is logged in LOOKS.jsonl)")
    # an unknown alias is refused by the sweep's own check (`sweep.adapted_configs`) before anything is written
    phases = [dict(p) for p in PHASES[PROTOCOL_VERSION]]
    phases[0]["adapted"] = [*phases[0].get("adapted", []), *args.also_adapted]
    chosen = range(1, len(phases) + 1) if args.phases is None else [int(x) for x in args.phases.split(",")]
    for k in chosen:
        if not 1 <= k <= len(phases):
            raise ValueError(f"--phases: {k} is not a phase of protocol {PROTOCOL_VERSION} (1..{len(phases)})")
    for k in chosen:
        for task in tasks:
            run_phase(phases[k - 1], task, files[task], args)
    return 0


def run_phase(phase: dict, task: str, data_file: Path, args: argparse.Namespace) -> None:
    """Log the look, run the sweep (resumable), publish the rows without the data's text."""
    from ..data import file_sha256
    from ..hub import embedded_model_dir, model_sha256
    from ..run_settings import changed_definitions
    from ..sweep import build_configs, checkpoint_num_layers, parse_budgets, parse_strategies
    from ..tasks import REAL_TASKS, git_commit, log_looks, look_identities, publish, restore
    from . import sweep

    L = checkpoint_num_layers(embedded_model_dir(MODEL))
    configs = build_configs(L, parse_strategies(phase["strategies"]), parse_budgets(phase.get("budgets"), L),
                            adapted=phase.get("adapted", []))
    base = model_sha256(MODEL)  # its GGUF file's sha256, recorded when it was converted
    data_sha = file_sha256(data_file)
    run_dir = Path(args.runs) / task
    if restore(Path(args.out) / task, run_dir):  # a fresh checkout: resume from the committed rows
        print(f"{task}: {run_dir} started from the committed rows in {Path(args.out) / task}", flush=True)
    # a shipped adapter retrained, or a route borrowed from one that changed, is a new candidate under
    # an old config id: a new look, and its old rows are made again
    changed = changed_definitions(run_dir, {c.config_id: c.definition() for c in configs})
    line = log_looks(Path(args.out) / "LOOKS.jsonl", task, data_sha, look_identities(configs, L, base), args.why,
                     git_commit(), changed)
    if line is not None:
        print(f"{task}: look logged for {', '.join(c['config_id'] for c in line['configs'])}", flush=True)
    argv = ["--model", MODEL, "--data", str(data_file), "--max-new-tokens", str(REAL_TASKS[task].max_new_tokens),
            "--batch-size", str(args.batch_size), "--strategies", phase["strategies"], "--out", str(run_dir)]
    if phase.get("budgets"):
        argv += ["--budgets", phase["budgets"]]
    if phase.get("adapted"):
        argv += ["--adapted", *phase["adapted"]]
    if changed:
        print(f"{task}: made again (another definition than the rows'): {', '.join(changed)}", flush=True)
        argv += ["--redo", *changed]
    if args.no_progress:
        argv.append("--no-progress")
    sweep.main(argv)
    print(f"{task}: rows without the data's text in {publish(run_dir, Path(args.out) / task)}", flush=True)
