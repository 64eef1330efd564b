"""Stage 4, `evaluate`: full depth, the route off the shelf and the adapted route on the held-out rows
the search did not use and on each `--test` file (one resumable sweep per set), paired comparisons
with their intervals, and greedy tokens/s of the export against full depth in transformers.
"""
from __future__ import annotations

import copy
import re
import statistics
import time
from pathlib import Path
from typing import Any, Sequence

import torch

from ..config import DepthConfig
from ..io import atomic_write_json, file_sha256
from .run import Run
from .settings import say


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
    from ..hub import merge_adapter
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

    from ..stats import equivalence, paired_bootstrap, paired_ratio

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
    from ..data import load_examples

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


def _log_look(run: Run, es: dict, configs) -> None:
    """A line in the --looks file before a --test file is evaluated (the real-task protocol's log): the
    file's sha256, each config with the sha256 of its weights and its route; none when a resumed run
    logged it already."""
    from ..tasks import git_commit, log_looks, look_identities

    line = log_looks(run.s.looks, es["name"], es["sha256"], look_identities(configs, run.num_layers, run.model_sha256),
                     f"adalas adapt: {run.s.command or run.s.out}", git_commit())
    if line is not None:
        say(f"look logged in {run.s.looks} for {es['name']}")


def stage_evaluate(run: Run, inputs: dict, resume: bool) -> dict:
    """Full depth, the route off the shelf and the adapted route (adalas, greedy) on each evaluation set,
    as one sweep per set (resumable rows); paired comparisons; then tokens/s in transformers."""
    from ..evaluate import context_length, make_items
    from ..export import prune
    from ..io import read_jsonl
    from ..model import AdalasForCausalLM
    from ..sweep import SweepConfig, run_sweep

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
        if s.looks and es["name"] != "heldout":
            _log_look(run, es, configs)
        say(f"evaluating on {es['name']} ({len(items)} rows): full depth, the route off the shelf, the adapted route")
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
    say("timing greedy generation in transformers: full depth against the export, side by side")
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
