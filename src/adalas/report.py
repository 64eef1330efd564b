"""The markdown report of a sweep directory, and its figures (drawn by `adalas.plots`).

Notable:
- Everything renders from files (sweep.jsonl, per_sequence.jsonl, oracle*.json, router_crossfit.json,
  hidden_similarity.json, reproduce.json), so a report can be redrawn from a copied directory, or
  from a hand-made one in tests.
- PNGs go through `adalas.plots` (the Agg backend into memory, then an atomic write: never half a file).
- `results_table` is the table the README's "Results" section quotes: ROUGE-L per budget with 95%
  bootstrap intervals for early exit, uniform skipping, random routes (mean ± SD over routes), the
  cross-fitted per-sequence router, the best fixed mix (chosen with hindsight) and the oracle (an
  in-sample upper bound, not a method).
- Every comparison the text states is a paired bootstrap over the same sequences
  (`adalas.stats`), worded by its interval; the oracle's gain stands beside its null control's.
"""
from __future__ import annotations

import json
import math
from collections import defaultdict
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from .io import atomic_write_text, read_jsonl
from .oracle import best_fixed_mix, interpolate, mix_at
from .paper import PAPER
from .plots import plot_rouge_vs_layers, plot_similarity, plot_skip_rates
from .stats import describe_difference, difference_text, paired_bootstrap

FIXED = ("full", "uniform_skip", "early_exit")  # the headline oracle's candidates (docs/design.md, "Honest numbers")


# ---------------------------------------------------------------------------------------------
# Reading

def read_json(path: Path) -> dict | None:
    return json.loads(path.read_text()) if path.is_file() else None


def read_sweep(sweep_dir: str | Path) -> list[dict]:
    rows = read_jsonl(Path(sweep_dir) / "sweep.jsonl")
    if not rows:
        raise ValueError(f"{sweep_dir}: no sweep.jsonl rows (run `adalas sweep` first)")
    return rows


def read_scores(sweep_dir: str | Path, metric: str = "rougeL") -> dict[Any, dict[str, float]]:
    """{config_id: {sequence id: score}} from per_sequence.jsonl ({} when it is absent)."""
    out: dict[Any, dict[str, float]] = defaultdict(dict)
    for r in read_jsonl(Path(sweep_dir) / "per_sequence.jsonl"):
        if r.get(metric) is not None:
            out[r["config_id"]].setdefault(str(r["id"]), float(r[metric]))
    return dict(out)


def oracle_score_at(oracle: dict | None, layers: float) -> float | None:
    """The oracle's best mean score with at most `layers` layers on average (None: out of range)."""
    if not oracle:
        return None
    pts = [p["score"] for p in oracle["curve"] if p["avg_layers"] <= layers + 1e-9]
    return max(pts) if pts else None


# ---------------------------------------------------------------------------------------------
# Tables

def _f(x: Any, digits: int = 3) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{digits}f}"


def _ci(row: dict | None, metric: str = "rougeL") -> str:
    """"0.321 [0.27, 0.37]": the mean and its 95% bootstrap interval (the interval when the row has one)."""
    if row is None:
        return "–"
    ci = row.get(f"{metric}_ci95")
    return _f(row[metric]) + (f" [{ci[0]:.2f}, {ci[1]:.2f}]" if ci else "")


def _full_row(rows: Sequence[dict]) -> dict | None:
    return next((r for r in rows if r["strategy"] == "full"), None)


def _by_budget(rows: Sequence[dict], strategy: str) -> dict[int, list[dict]]:
    out: dict[int, list[dict]] = defaultdict(list)
    for r in rows:
        if r["strategy"] == strategy and r.get("budget") is not None:
            out[int(r["budget"])].append(r)
    return out


def _routers(rows: Sequence[dict]) -> dict[float, dict]:
    """The per-sequence router's rows by target depth."""
    return {float(r["depth"]["target_avg_layers"]): r for r in rows
            if r["strategy"] == "sequence" and (r.get("depth") or {}).get("target_avg_layers") is not None}


def _mix_points(rows: Sequence[dict], oracle: dict | None, metric: str = "rougeL") -> list[dict]:
    """(avg_layers, score, config_id) of the fixed configs a mix chooses among: the oracle's candidates
    (or the full model, uniform skipping and early exit)."""
    chosen = set(oracle["configs"]) if oracle else None
    return [{"avg_layers": r["avg_layers"], "score": r[metric], "config_id": r["config_id"]} for r in rows
            if (r["config_id"] in chosen if chosen is not None else r["strategy"] in FIXED)]


def mix_score_at(envelope: Sequence[dict], layers: float) -> float | None:
    """The best fixed mix's score within `layers` layers on average (the envelope of `best_fixed_mix`;
    beyond its deepest point, that point's score: a mix may run fewer layers than allowed)."""
    if not envelope or layers < envelope[0]["avg_layers"] - 1e-9:
        return None
    if layers >= envelope[-1]["avg_layers"]:
        return envelope[-1]["score"]
    return interpolate(envelope, layers)


def results_table(rows: Sequence[dict], oracle: dict | None = None, metric: str = "rougeL") -> str:
    """Markdown: one line per budget (layers kept): ROUGE-L of early exit and uniform skipping with
    95% intervals, random routes as mean ± SD over routes, the cross-fitted router at that target
    (its measured depth after "at"), the best fixed mix there (hindsight) and the oracle's score
    within that average depth (an upper bound; not on the full model's line)."""
    full = _full_row(rows)
    L = full["num_layers"] if full else max(r.get("budget") or 0 for r in rows)
    ee, us, rnd = (_by_budget(rows, s) for s in ("early_exit", "uniform_skip", "random_route"))
    routers = _routers(rows)
    envelope = best_fixed_mix(_mix_points(rows, oracle, metric))
    budgets = sorted(set(ee) | set(us) | set(rnd) | {int(t) for t in routers if float(t).is_integer()}, reverse=True)
    n_routes = sorted({len(v) for v in rnd.values()})
    head = ["layers kept", "early exit", "uniform skipping",
            f"random routes (mean ± SD of {'/'.join(map(str, n_routes))})" if n_routes else "random routes",
            "per-sequence router (cross-fitted)", "best fixed mix (hindsight)", "oracle (in-sample upper bound)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    if full:
        lines.append(f"| {L} (full model) | {_ci(full, metric)} | {_ci(full, metric)} | {_f(full[metric])} | – | – | – |")
    for b in budgets:
        routes = [r[metric] for r in rnd.get(b, [])]
        rnd_s = (f"{_f(float(np.mean(routes)))} ± {_f(float(np.std(routes, ddof=1)) if len(routes) > 1 else 0.0)}"
                 if routes else "–")
        router = routers.get(float(b))
        router_s = f"{_ci(router, metric)} at {router['avg_layers']:.1f}" if router else "–"
        lines.append(f"| {b} | {_ci(ee[b][0] if b in ee else None, metric)} | {_ci(us[b][0] if b in us else None, metric)} "
                     f"| {rnd_s} | {router_s} | {_f(mix_score_at(envelope, b))} | {_f(oracle_score_at(oracle, b))} |")
    return "\n".join(lines)


def _adapted_parts(config_id: str) -> tuple[str, str]:
    """`adapted:ALIAS@WHERE` -> (ALIAS, WHERE); WHERE is "" on the alias's own depth."""
    alias, _, where = config_id.removeprefix("adapted:").partition("@")
    return alias, where


def _every_layer(row: dict) -> bool:
    """Whether a row ran the whole model (its static route keeps every layer, or its depth is full)."""
    route = row.get("route")
    return set(route) == {"1"} if route else (row.get("depth") or {}).get("mode") == "full"


def _base_on_same_route(row: dict, by_id: dict) -> dict | None:
    """The base model on the same route as an adapted row: `route:ALIAS` for its own route,
    `uniform_skip@B` for `ALIAS@B`, `route:OTHER` for `ALIAS@OTHER`, the full model at full depth."""
    alias, where = _adapted_parts(row["config_id"])
    if not where:
        return _full_row(list(by_id.values())) if _every_layer(row) else by_id.get(f"route:{alias}")
    return by_id.get(f"uniform_skip@{where}" if where.isdigit() else f"route:{where}")


def adapted_table(rows: Sequence[dict], scores: dict | None = None, metric: str = "rougeL") -> str:
    """Markdown: each adapted model (and each `ALIAS@...` depth of one) with its ROUGE-L and 95%
    interval, its share of the full model's score, the base model on the same route, the gain over
    it (paired 95% interval, given per-sequence `scores`) and the share of that route's gap to full
    depth that adaptation closes (only where the gap itself is measurable: its paired interval
    excludes 0); "" when no row is adapted."""
    adapted = [r for r in rows if r["strategy"] == "adapted"]
    full = _full_row(rows)
    if not adapted or full is None:
        return ""
    by_id = {r["config_id"]: r for r in rows}
    lines = ["| model | route | layers / token | ROUGE-L [95% CI] | of full | same route, off the shelf | "
             "gain [paired 95% CI] | gap closed |", "|---|---|---|---|---|---|---|---|"]
    for r in adapted:
        alias, where = _adapted_parts(r["config_id"])
        route = ("full depth" if _every_layer(r) else "its own") if not where else (
            f"uniform skipping to {where}" if where.isdigit() else f"{where}'s")
        base = _base_on_same_route(r, by_id)
        share = r[metric] / full[metric] if full[metric] else float("nan")
        gain = closed = "–"
        if base is not None and scores:
            x, y = _paired(scores, r["config_id"], base["config_id"])
            if x:
                gain = difference_text(paired_bootstrap(x, y))
            if base is not full:
                f_, b_ = _paired(scores, full["config_id"], base["config_id"])
                gap = paired_bootstrap(f_, b_) if f_ else None
                if gap is not None and gap["ci95"][0] > 0:
                    closed = f"{100 * (r[metric] - base[metric]) / (full[metric] - base[metric]):.0f}%"
                elif gap is not None:
                    closed = "no measurable gap"
        lines.append(f"| `{alias}` | {route} | {r['avg_layers']:.2f} | {_ci(r, metric)} | {share:.2f} | "
                     f"{_ci(base, metric)} | {gain} | {closed} |")
    return "\n".join(lines)


def configs_table(rows: Sequence[dict]) -> str:
    """Markdown: every config with its layers, ROUGE-1/2/L and ROUGE-L's 95% interval."""
    lines = ["| config | strategy | avg layers | ROUGE-1 | ROUGE-2 | ROUGE-L | 95% CI | route |",
             "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("route"):
            route = f"`{r['route']}`" + (f" (sampled, seed {r['sampling']['seed']})" if r.get("sampling") else "")
        else:
            route = "per sequence" if r["strategy"] == "sequence" else "per token"
        ci = r.get("rougeL_ci95")
        lines.append(f"| {r['config_id']} | {r['strategy']} | {r['avg_layers']:.2f} | {_f(r['rouge1'])} | "
                     f"{_f(r['rouge2'])} | {_f(r['rougeL'])} | {f'{ci[0]:.3f} to {ci[1]:.3f}' if ci else '–'} | {route} |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------
# Sentences: comparisons (paired bootstrap), the oracle beside its null control, the paper

def _paired(scores: dict, a: Any, b: Any) -> tuple[list[float], list[float]]:
    """Scores of configs a and b over the sequences both have; a and b may be lists (averaged per sequence)."""
    a_ids, b_ids = ([a] if not isinstance(a, list) else a), ([b] if not isinstance(b, list) else b)
    if not all(c in scores for c in a_ids + b_ids):
        return [], []
    ids = sorted(set.intersection(*(set(scores[c]) for c in a_ids + b_ids)))
    mean = lambda cs, i: float(np.mean([scores[c][i] for c in cs]))  # noqa: E731
    return [mean(a_ids, i) for i in ids], [mean(b_ids, i) for i in ids]


def comparisons(rows: Sequence[dict], scores: dict, oracle: dict | None = None, metric: str = "rougeL") -> list[str]:
    """The comparisons the report states, each a paired bootstrap over the same sequences: per budget,
    uniform skipping against early exit and against the full model, random routes (their mean per
    sequence) against uniform skipping; per target, the cross-fitted router against the best fixed
    mix at the router's own depth (each sequence scoring the mix's expectation; the mix chosen with
    hindsight)."""
    full = _full_row(rows)
    ee, us, rnd = (_by_budget(rows, s) for s in ("early_exit", "uniform_skip", "random_route"))
    out = []

    def say(a_name, b_name, a, b, where):
        x, y = _paired(scores, a, b)
        if x:
            out.append(describe_difference(a_name, b_name, paired_bootstrap(x, y), where))

    for b in sorted(set(ee) | set(us) | set(rnd), reverse=True):
        where = f"at {b} layers"
        if b in us and b in ee:
            say("uniform skipping", "early exit", us[b][0]["config_id"], ee[b][0]["config_id"], where)
        if b in us and full:
            say("uniform skipping", "the full model", us[b][0]["config_id"], full["config_id"], where)
        if b in rnd and b in us:
            say(f"random routes (mean of {len(rnd[b])} per sequence)", "uniform skipping",
                [r["config_id"] for r in rnd[b]], us[b][0]["config_id"], where)
    by_id = {r["config_id"]: r for r in rows}
    for r in rows:  # each adapted model against the same route off the shelf, a route's own adapter, the full model
        if r["strategy"] != "adapted":
            continue
        alias, other = _adapted_parts(r["config_id"])
        name = alias if not other else (f"{alias} with uniform skipping" if other.isdigit() else f"{alias} on {other}'s route")
        where = f"at {_f(r['avg_layers'], 2)} layers"
        base = _base_on_same_route(r, by_id)
        if base is not None and base is not full:
            say(name, "its route off the shelf", r["config_id"], base["config_id"], where)
        if other and not other.isdigit() and f"adapted:{other}" in by_id:
            say(name, other, r["config_id"], f"adapted:{other}", where)
        if full:
            say(name, "the full model", r["config_id"], full["config_id"], where)
    envelope = best_fixed_mix(_mix_points(rows, oracle, metric))
    for t, router in sorted(_routers(rows).items(), reverse=True):
        if not envelope or router["config_id"] not in scores:
            continue
        lo, hi, p = mix_at(envelope, router["avg_layers"])
        if not (lo["config_id"] in scores and hi["config_id"] in scores):
            continue
        ids = sorted(set(scores[router["config_id"]]) & set(scores[lo["config_id"]]) & set(scores[hi["config_id"]]))
        ours = [scores[router["config_id"]][i] for i in ids]
        mix_scores = [(1 - p) * scores[lo["config_id"]][i] + p * scores[hi["config_id"]][i] for i in ids]
        mix = (f"{lo['config_id']}" if hi is lo or p == 0 else
               f"{100 * (1 - p):.0f}% {lo['config_id']} and {100 * p:.0f}% {hi['config_id']}")
        out.append(describe_difference(f"the cross-fitted per-sequence router ({router['avg_layers']:.2f} layers)",
                                       "the best fixed mix at that depth, chosen with hindsight",
                                       paired_bootstrap(ours, mix_scores), f"aiming at {t:g} layers")
                   + f" The mix: {mix}.")
    return out


def oracle_paragraph(oracle: dict | None, scores: dict | None = None, label: str = "the per-sequence oracle") -> str:
    """The oracle as an in-sample upper bound, its gain over full depth beside its null control's gain,
    and its match before and after taking the null gain off its curve."""
    if not oracle:
        return ""
    name = label[0].upper() + label[1:]
    K, L, full = oracle["n_configs"], oracle["num_layers"], oracle["full_score"]
    top = oracle["curve"][-1]["score"] if oracle["curve"] else full
    text = (f"{name} is an in-sample upper bound, not a method: each of {oracle['n_sequences']} sequences takes the "
            f"best of {K} configs ({', '.join(map(str, oracle['configs']))}), chosen after the fact against its one "
            f"reference. With every layer allowed it scores {top:.3f}, {top - full:+.3f} over the full model's "
            f"{full:.3f}.")
    null = oracle.get("null_control")
    if null:
        gain = null["score"] - null["full_score"]
        text += (f" Choosing each sequence's best of {null['k']} full-depth runs (the greedy one and {null['k'] - 1} "
                 f"sampled at temperature 0.7, top-p 0.9) gains {gain:+.3f} by selection alone (null control).")
        if scores:
            best = _best_of(scores, oracle["configs"])
            nul = _best_of(scores, null["configs"])
            ids = sorted(set(best) & set(nul))
            if ids:
                res = paired_bootstrap([best[i] for i in ids], [nul[i] for i in ids])
                text += " " + describe_difference(f"the oracle's per-sequence best of {K}",
                                                  f"the null control's per-sequence best of {null['k']}", res)
    else:
        text += (" There is no null control for it (no `full_sample` rows: `adalas sweep --null-k K`), so how much of "
                 "that is selection on a noisy reference is not measured: read it as uncontrolled.")
    match = oracle.get("match_avg_layers")
    if match is None:
        text += " It never reaches the full model's ROUGE-L within these configs."
        return text
    text += (f" It matches the full model's ROUGE-L with {match:.2f} of {L} layers on average "
             f"({100 * match / L:.1f}%; depth pooled over decode steps, as `avg_layers`)")
    if null:
        adj = oracle.get("match_avg_layers_null_adjusted")
        if adj is None:
            text += "; with the null gain taken off its curve, it never does: none of its saving survives the control."
        else:
            kept = (L - adj) / (L - match) if L > match else 1.0
            text += (f"; with the null gain taken off its curve, with {adj:.2f} layers ({100 * adj / L:.1f}%): "
                     f"{100 * kept:.0f}% of its saving of layers survives the control.")
    else:
        text += "."
    return text


def _best_of(scores: dict, configs: Sequence[Any]) -> dict[str, float]:
    """Per sequence, the best score among `configs` (sequences scored under all of them)."""
    if not all(c in scores for c in configs):
        return {}
    ids = set.intersection(*(set(scores[c]) for c in configs))
    return {i: max(scores[c][i] for c in configs) for i in ids}


def oracle_sentence(oracle: dict | None, label: str = "the per-sequence oracle") -> str:
    """One line for an extra oracle: its match, and whether a null control stands beside it."""
    if not oracle:
        return ""
    name = label[0].upper() + label[1:]
    null = oracle.get("null_control")
    tag = (f"null gain {null['score'] - null['full_score']:+.3f} over {null['k']} full-depth runs"
           if null else "uncontrolled: no null control with as many full-depth runs")
    if oracle.get("match_avg_layers") is None:
        return (f"{name} ({oracle['n_configs']} configs; {tag}) never reaches the full model's ROUGE-L "
                f"({oracle['full_score']:.3f}).")
    adj = oracle.get("match_avg_layers_null_adjusted")
    after = "" if not null else (f"; {adj:.2f} with the null gain taken off" if adj is not None
                                 else "; never with the null gain taken off")
    return (f"{name} ({oracle['n_configs']} configs; {tag}) matches the full model's ROUGE-L "
            f"({oracle['full_score']:.3f}) with {oracle['match_avg_layers']:.2f} of {oracle['num_layers']} layers "
            f"on average ({100 * oracle['match_fraction']:.1f}%){after}.")


def paper_comparison(rows: Sequence[dict], meta: dict | None, oracle: dict | None) -> str:
    """Markdown: what differs between this run and the paper's headline (model, fine-tuning, budgets
    as a fraction of depth, data, sequences, tokens, the oracle's choices and result)."""
    full = _full_row(rows) or rows[0]
    meta = meta or {}
    L, model = full.get("num_layers"), full.get("model")
    budgets = sorted({int(r["budget"]) for r in rows if r["strategy"] in ("early_exit", "uniform_skip", "random_route")
                      and r.get("budget") is not None})
    ours_budgets = (f"{', '.join(map(str, budgets))} of {L} layers ({100 * budgets[0] / L:.0f}-{100 * budgets[-1] / L:.0f}% "
                    f"of the depth)") if budgets and L else "–"
    tuned = ("no: SmolLM2-135M-Instruct as released (4-bit weights dequantized)" if model == "smollm2-135m"
             else f"as given (`{model}`)")
    data = meta.get("data") or full.get("data")
    data = data.get("name", data) if isinstance(data, dict) else data
    match = "–"
    if oracle and oracle.get("match_fraction") is not None:
        match = f"{100 * oracle['match_fraction']:.1f}% of the layers"
        if oracle.get("null_control"):
            adj = oracle.get("match_avg_layers_null_adjusted")
            match += (f" ({100 * adj / oracle['num_layers']:.1f}% after the null control)" if adj is not None
                      else " (never, after the null control)")
    elif oracle:
        match = "never reached"
    choices = ", ".join(map(str, oracle["configs"])) + f" (K = {oracle['n_configs']})" if oracle else "–"
    tokens = f"{meta['max_new_tokens']}, greedy" if meta.get("max_new_tokens") else "–"
    lines = ["| | the paper | this run |", "|---|---|---|",
             f"| model | {PAPER['model']} | `{model}` ({L} layers) |",
             f"| fine-tuned on the task | {PAPER['fine_tuned']} | {tuned} |",
             f"| budgets | {PAPER['budgets']} | {ours_budgets} |",
             f"| data | {PAPER['data']} | `{data}`, {full.get('n')} sequences |",
             f"| new tokens | see the paper | {tokens} |",
             f"| oracle's choices | {PAPER['choices']} | {choices} |",
             f"| oracle matches full depth with | {PAPER['match']} | {match} |",
             f"| full-depth ROUGE-L | {PAPER['full']} | {_f(full.get('rougeL'))} |"]
    return "\n".join(lines)


def settings_line(rows: Sequence[dict], meta: dict | None) -> str:
    full = _full_row(rows) or rows[0]
    meta = meta or {}
    parts = [f"model `{full.get('model')}`", f"{full['n']} sequences"]
    if meta.get("data"):
        d = meta["data"]
        parts.append(f"data `{d.get('name', d) if isinstance(d, dict) else d}`")
    if meta.get("max_new_tokens"):
        parts.append(f"{meta['max_new_tokens']} new tokens (greedy)")
    if meta.get("batch_size"):
        parts.append(f"batch {meta['batch_size']}")
    if meta.get("budgets"):
        parts.append(f"budgets {', '.join(map(str, meta['budgets']))}")
    if meta.get("routes_per_budget"):
        parts.append(f"{meta['routes_per_budget']} random routes per budget")
    if meta.get("null_k"):
        parts.append(f"oracle and null control over K = {meta['null_k']}")
    if meta.get("folds"):
        parts.append(f"router cross-fitted over {meta['folds']} folds")
    parts.append(f"{len(rows)} configs")
    if meta.get("wall_s") is not None:
        runs = meta.get("runs_wall_s") or [meta["wall_s"]]
        minutes, seconds = divmod(int(round(sum(runs))), 60)
        parts.append(f"wall time {minutes} min {seconds:02d} s" + (f" over {len(runs)} runs" if len(runs) > 1 else ""))
    return "Settings: " + ", ".join(parts) + "."


LEGEND = ("Each cell: mean ROUGE-L over the sequences, with its 95% percentile-bootstrap interval (1,000 "
          "resamples). Random routes: mean ± SD over the routes drawn per budget (each a fixed route keeping "
          "layer 0), not a best pick. Per-sequence router: each sequence routed by a router fit on the other "
          "folds (cross-fitted), at its measured depth. Best fixed mix: the best mix of the fixed configs at that "
          "depth, chosen with hindsight on these sequences. Oracle: each sequence's best config after the fact, "
          "an in-sample upper bound, shown beside its null control below.")


def _extra_oracles(d: Path) -> dict[str, dict]:
    return {f"the oracle over {p.stem.removeprefix('oracle_').replace('_', ' ')}": read_json(p)
            for p in sorted(d.glob("oracle_*.json"))}


def results_text(d: Path, rows: Sequence[dict], oracle: dict | None, meta: dict | None, heading: str = "###") -> list[str]:
    """The results as markdown lines: table, legend, comparisons, oracle with its null control, the paper."""
    scores = read_scores(d)
    text = [results_table(rows, oracle), "", LEGEND, ""]
    adapted = adapted_table(rows, scores)
    if adapted:
        text += [f"{heading} Adapted models", "", adapted, "",
                 "Of full: the share of the base model's full-depth ROUGE-L. Gain: the adapted model against the base "
                 "model on the same route, paired over the same sequences. Gap closed: the share of the gap between "
                 "that route off the shelf and full depth that adaptation recovers (shown where the gap's own "
                 "paired interval excludes 0).", ""]
    said = comparisons(rows, scores, oracle)
    if said:
        text += [f"{heading} Comparisons (paired bootstrap over the same sequences)", ""]
        text += [f"- {s}" for s in said] + [""]
    if oracle:
        text += [f"{heading} The oracle and its null control", "", oracle_paragraph(oracle, scores), ""]
        text += [f"- {oracle_sentence(doc, label)}" for label, doc in _extra_oracles(d).items() if doc]
        text += [""]
    text += [f"{heading} Compared with the paper", "", paper_comparison(rows, meta, oracle), ""]
    return text


def readme_results(sweep_dir: str | Path) -> str:
    """The README "Results" section for a sweep directory (with its oracle.json and reproduce.json)."""
    d = Path(sweep_dir)
    text = ["## Results", "",
            "ROUGE-L on the built-in evaluation set against the number of layers run per generated token, "
            "from `make run` (`adalas reproduce`, " + str(d) + "/report.md):", ""]
    return "\n".join(text + _results_with_settings(d, "###") + [""])


def _results_with_settings(d: Path, heading: str) -> list[str]:
    """`results_text` of a sweep directory, with its settings line."""
    rows = read_sweep(d)
    meta = read_json(d / "reproduce.json") or read_json(d / "sweep_meta.json")
    return results_text(d, rows, read_json(d / "oracle.json"), meta, heading) + [settings_line(rows, meta)]


README_START, README_END = "<!-- built-in tables: adalas reproduce --readme README.md -->", "<!-- end of built-in tables -->"


def readme_builtin(sweep_dir: str | Path) -> str:
    """What the README shows of a `make run` (`adalas reproduce`) directory: the results without a title, the
    sections one level below the README's "Built-in set"."""
    d = Path(sweep_dir)
    made = f"_Made by `adalas reproduce --readme README.md` from `{d.as_posix()}/` (its `report.md`)._"
    return "\n".join([made, ""] + _results_with_settings(d, "####"))


# ---------------------------------------------------------------------------------------------
# The report

def write_report(sweep_dir: str | Path, analysis: dict | None = None, meta: dict | None = None) -> Path:
    """Render the PNGs and report.md of a sweep directory; returns the report's path.

    Reads sweep.jsonl, per_sequence.jsonl, oracle.json and oracle_*.json (other candidate sets) when
    present, hidden_similarity.json when `analysis` is not given, and reproduce.json / sweep_meta.json
    for the settings.
    """
    d = Path(sweep_dir)
    rows = read_sweep(d)
    oracle = read_json(d / "oracle.json")
    extra = {label.removeprefix("the "): doc for label, doc in _extra_oracles(d).items()}
    analysis = analysis if analysis is not None else read_json(d / "hidden_similarity.json")
    meta = meta or read_json(d / "reproduce.json") or read_json(d / "sweep_meta.json") or {}
    plot_rouge_vs_layers(rows, d / "rouge_vs_layers.png", oracle, extra)
    skip_png = plot_skip_rates(rows, d / "skip_rates.png")
    if analysis:
        plot_similarity(analysis, d / "hidden_similarity.png")
    full = next((r for r in rows if r["strategy"] == "full"), rows[0])
    md = ["# adalas report", "", settings_line(rows, meta), ""]
    md += _settings_block(full, meta)
    md += ["## ROUGE-L against depth", "", "![ROUGE-L against average layers](rouge_vs_layers.png)", ""]
    md += results_text(d, rows, oracle, meta)
    if oracle:
        md += [f"Oracle solver: {oracle['solver']} (gap {oracle['gap']:.2g}); sequences scored under every "
               f"config: {oracle['n_sequences']} (excluded: {oracle.get('n_excluded', 0)}); depth weights: "
               f"{oracle.get('depth_weights', 'one per sequence')}.", ""]
    md += ["## Every config", "", configs_table(rows), ""]
    if skip_png:
        md += ["## Learned controllers: per-layer skip rates", "", "![skip rates](skip_rates.png)", ""]
    if analysis:
        md += ["## Hidden-state similarity", "", "![hidden-state similarity](hidden_similarity.png)", "",
               f"Teacher-forced on prompt + reference ({analysis['n_sequences']} sequences, {analysis['n_tokens']} "
               "reference tokens); cosine similarity to the full model's state at the same depth, before the "
               "final norm.", "", "| config | final state | mean over depths |", "|---|---|---|"]
        md += [f"| {x['config_id']} | {x['final']:.3f} | {x['mean']:.3f} |" for x in analysis["configs"]]
        md += [""]
    path = d / "report.md"
    atomic_write_text(path, "\n".join(md))
    return path


def _wall(meta: dict) -> str | None:
    if meta.get("wall_s") is None:
        return None
    runs = meta.get("runs_wall_s") or []
    if len(runs) > 1:
        return f"{meta['wall_s']:.0f} s (this run; {sum(runs):.0f} s over {len(runs)} runs, resumed)"
    return f"{meta['wall_s']:.0f} s"


def _settings_block(full: dict, meta: dict) -> list[str]:
    keys = [("model", full.get("model")), ("layers", full.get("num_layers")), ("sequences", full.get("n")),
            ("data", meta.get("data")), ("max new tokens", meta.get("max_new_tokens")),
            ("batch size", meta.get("batch_size")), ("reference", full.get("reference")),
            ("configs", meta.get("n_configs")), ("seed", meta.get("seed")),
            ("wall time", _wall(meta)),
            ("stages", ", ".join(f"{k} {v:.0f} s" for k, v in meta.get("stages_s", {}).items()) or None),
            ("versions", ", ".join(f"{k} {v}" for k, v in meta.get("versions", {}).items()) or None)]
    lines = ["| setting | value |", "|---|---|"]
    lines += [f"| {k} | {json.dumps(v) if isinstance(v, (dict, list)) else v} |" for k, v in keys if v is not None]
    return lines + [""]
