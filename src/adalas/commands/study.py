"""`adalas study`: the paper's training experiments (E1-E4), trained, evaluated and reported from a plan.

    adalas study                  # the packaged plan smollm2-135m: hours on 2 CPU cores, resumable
    adalas study --quick          # the same pipeline on a tiny random Llama, about a minute
    adalas study --plan my.yaml --out results/my-study --runs runs/my-study
    adalas study --experiments E1         # only what E1 needs (another invocation can do E3,E4 beside it)
    adalas study --estimate               # the compute plan: thread-hours per experiment, nothing run

Trains every run the named experiments need (into --runs/<name>, resuming from its latest checkpoint),
makes each choice on the plan's held-out rows, evaluates on the built-in set and the three real test
sets (each look logged in LOOKS.jsonl before it runs; rows in one store per model, set, cap, batch and
dtype), and writes to --out: study.json (E1-E4: numbers per set and pooled, 95% intervals, the seeds,
the pre-registered test, the runs, a verdict each and what it rests on), report.md, e1.png, e2.png,
e4.png, and rows/ (the stores' rows without the data's text). A killed study resumes where it
stopped: rerun the same command.
"""
from __future__ import annotations

from ..cli import check_counts, make_parser


def build_parser():
    p = make_parser("study", __doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="the packaged plan `quick`: a tiny model, about a minute")
    p.add_argument("--plan", help="a packaged plan name (smollm2-135m, quick) or a YAML path (default: smollm2-135m; "
                                  "with --quick: quick)")
    p.add_argument("--out", help="results directory (default: the plan's `out`, results/study or results/study-quick)")
    p.add_argument("--runs", help="training runs directory (default: the plan's `runs_dir`, runs/study or "
                                  "runs/study-quick)")
    p.add_argument("--experiments", default="E1,E2,E3,E4",
                   help="comma-separated: train and evaluate only what these need (default: all); the report covers "
                        "every experiment whose files are complete")
    p.add_argument("--device", default="cpu", help="evaluation device: cpu, cuda, cuda:N (training: the recipes')")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's own; with --quick: 1, "
                                                "several times faster for a tiny model on a shared machine)")
    p.add_argument("--estimate", action="store_true", help="print the compute plan (thread-hours per experiment) "
                                                             "and exit; nothing is trained or evaluated")
    p.add_argument("--no-progress", action="store_true")
    return p


def main(argv: list[str]) -> int:
    from ..study import load_plan, readme_study, run_study

    args = build_parser().parse_args(argv)
    check_counts(("--threads", args.threads, 1))
    if args.threads or args.quick:
        import torch
        torch.set_num_threads(args.threads or 1)
    plan = load_plan(args.plan or ("quick" if args.quick else "smollm2-135m"), out=args.out, runs_dir=args.runs)
    if args.estimate:
        from ..study.compute import render
        print(render(plan), end="")
        return 0
    experiments = [e.strip() for e in args.experiments.split(",") if e.strip()]
    doc = run_study(plan, device=args.device, progress=not args.no_progress, experiments=experiments)
    print()
    for name in ("E1", "E2", "E3", "E4"):
        e = doc[name]
        print(f"{name}: {e['verdict']} - {e['reason'] if e['verdict'] == 'not run' else e['decided_by'][0]}")
    print(f"\n[study] done: {plan.out / 'study.json'}, {plan.out / 'report.md'}\n\nFor the README:\n")
    print(readme_study(doc))
    return 0
