"""The compute plan: thread-hours per experiment, estimated from the plan and measured figures.

Why: the whole study must fit a 2-core machine as background work, so its cost is stated (and
committed beside the plan) before it starts, and compared with what ran afterwards (`stages.json`).
The figures are measurements on this machine; each says where it comes from. A sweep config's cost
scales with the layers it runs (the LM head is 21% of a token's work at full depth) and a route of
half the layers or fewer is charged 1.3x (such routes often run to the cap instead of stopping).
"""
from __future__ import annotations

from dataclasses import dataclass

from . import routes
from .plan import Plan, e1_runs, e2_finals, e2_pilots, e3_runs, prerequisites


@dataclass(frozen=True)
class Figures:
    """Seconds on one thread of this machine (2 cores, shared with another job)."""

    # a LoRA + cached-teacher training step of the shipped recipes (version 3: batch 8 x <= 512 tokens, shaped
    # rows) beside another lane, since training computes the head only where a label follows (response_logits):
    # the dropout recipe's version 6, 400 steps in 5,431 and 5,543 s (13.6-13.9 s); before it, 20.1 s (version
    # 5's 320 steps) and 23.8 s (adapted-24's 160 steps)
    train_step: float = 14.0
    # learned mode computes every layer in training: 23 s in the first study's E2 runs, before response_logits;
    # scaled by the ratio measured on the LoRA step (0.69), not measured itself
    learned_step: float = 16.0
    # one full-depth config over each real task at its cap, batch 16 (`adalas tasks run`, sweep_meta.json):
    # cnn_dailymail 980 s, user_oriented 704 s; samsum 372 s (the dropout model at full depth)
    real_full: float = 980.0 + 704.0 + 372.0
    builtin_full: float = 170.0  # one full-depth config over the 168 built-in rows, 32 tokens (first study)
    heldout_full: float = 100.0  # one full-depth config over the 96 held-out rows, 32 tokens (pro rata)
    heldout_score: float = 90.0  # teacher-forced loss of one run over the 96 held-out rows (12 forwards)
    e4_router: float = 900.0  # prompt features of every set, the fit, and the speed check
    head_share: float = 0.21  # the LM head's share of a token's work at full depth (DESIGN.md)
    # the prefill's share of a full-depth config's time on the real tasks, which the configs of one model after
    # the first no longer pay (`adalas.prompt_reuse`): 16 news articles of 523 tokens, 50 of 72 s; self-written
    # articles of 275 tokens, 8 configs, 301 s prefilling each against 155 s reusing (0.55);
    # the dialogues' and instructions' shorter prompts put it near 0.35 and 0.1: weighted by real_full, 0.4
    prefill_share: float = 0.4


def depth_factor(layers: float, total: int, f: Figures) -> float:
    shallow = 1.3 if layers <= total / 2 else 1.0
    return shallow * (f.head_share + (1 - f.head_share) * layers / total)


def _steps(plan: Plan, run) -> int:
    from ..train_args import parse_args

    return parse_args(run.argv(plan.overrides, plan.runs_dir))[1].max_steps


def estimate(plan: Plan, f: Figures = Figures()) -> dict[str, list[tuple[str, float]]]:
    """{experiment: [(item, thread-hours)]}."""
    L, h = plan.layers, 3600.0
    sweep = f.real_full + f.builtin_full  # one full-depth config on the real tasks and the built-in set
    out: dict[str, list[tuple[str, float]]] = {}
    pre = prerequisites(plan)
    if pre:
        out["prerequisites"] = [(f"train {len(pre)} runs", sum(_steps(plan, r) for r in pre) * f.train_step / h)]
    e1 = e1_runs(plan)
    chosen = sum(2 * len(d.seeds) for d in plan.e1.depths)
    e1_eval = sum(2 * len(d.seeds) * depth_factor(d.depth, L, f) for d in plan.e1.depths)
    out["E1"] = [(f"train {len(e1)} runs ({', '.join(str(_steps(plan, r)) for r in e1[:1])} steps each)",
                  sum(_steps(plan, r) for r in e1) * f.train_step / h),
                 (f"held-out choice ({len(e1)} runs)", len(e1) * f.heldout_score / h),
                 (f"evaluate the {chosen} chosen runs (4 sets)", e1_eval * sweep / h),
                 (f"their {2 * len(plan.e1.depths)} routes off the shelf, where the real-task rows lack them",
                  sum(2 * depth_factor(d.depth, L, f) for d in plan.e1.depths) * sweep / h)]
    pilots, finals = e2_pilots(plan), e2_finals(plan, {a: plan.e2.lr_grid[0] for a, _ in plan.e2.arms})
    out["E2"] = [(f"train {len(pilots)} pilots ({plan.e2.pilot_steps} steps)",
                  len(pilots) * plan.e2.pilot_steps * f.learned_step / h),
                 (f"held-out scores of the pilots", len(pilots) * f.heldout_score / h),
                 (f"train {len(finals)} runs ({_steps(plan, finals[0])} steps)",
                  sum(_steps(plan, r) for r in finals) * f.learned_step / h),
                 ("held-out loss and usage, training and evaluation gates", 3 * len(finals) * f.heldout_score / h),
                 (f"evaluate {len(finals)} runs (4 sets, per-token depth charged as full)", len(finals) * sweep / h)]
    cands = [depth_factor(sum(routes.resolve(c, L)), L, f) for c in plan.e3.candidates]
    e3 = [(f"train {r.name} ({_steps(plan, r)} steps)", _steps(plan, r) * f.train_step / h) for r in e3_runs(plan)]
    decode = (1 - f.prefill_share) * f.real_full  # on the real tasks, a config whose prompt was prefilled already
    out["E3"] = e3 + [(f"{plan.e3.k} candidates (4 sets; the real tasks' prompts prefilled once for all)",
                       (f.prefill_share * f.real_full + sum(cands) * (decode + f.builtin_full)) / h),
                      (f"null control: {plan.e3.k - 1} sampled full-depth runs (4 sets)",
                       (plan.e3.k - 1) * (decode + f.builtin_full) / h),
                      ("candidates on the held-out rows (for E4)", sum(cands) * f.heldout_full / h),
                      ("the pre-registered tests and the crossing depth (bootstrap)", 0.05)]
    out["E4"] = [("features, router fit, speed check", f.e4_router / h)]
    return out


def render(plan: Plan, f: Figures = Figures()) -> str:
    """The compute plan as markdown (what `adalas study --estimate` prints)."""
    est = estimate(plan, f)
    total = {k: sum(x for _, x in v) for k, v in est.items()}
    md = [f"# Compute plan: `adalas study --plan {plan.name}`", "",
          "Thread-hours (one process at one torch thread) per experiment, estimated by `adalas study --estimate` "
          f"(`adalas.study.compute`) from plan sha256 `{plan.sha256[:12]}` and these figures measured on this "
          "machine (2 cores, shared):", ""]
    md += [f"- `{k}` = {v:g}{'' if k.endswith('_share') else ' s'}" for k, v in vars(f).items()]
    md += ["", "| experiment | item | thread-hours |", "|---|---|---|"]
    for k, items in est.items():
        md += [f"| {k} | {item} | {x:.1f} |" for item, x in items]
        md.append(f"| **{k}** | total | **{total[k]:.1f}** |")
    md += ["", f"Whole study: **{sum(total.values()):.0f} thread-hours**."]
    return "\n".join(md) + "\n"
