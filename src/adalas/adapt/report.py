"""`report.md` and the export's model card: the route, how it was made, quality with paired intervals and
the equivalence test's wording, speed, the stages' wall time.
"""
from __future__ import annotations

import json

from ..io import atomic_write_text
from .run import Run
from .settings import RECIPE, STAGE_NAMES


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
    from ..stats import describe_difference

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


def _kinds_text(kinds: dict | None) -> str:
    """", of which plain 1,500 (24 held out), dialogue 190 (24 held out), ..." where rows are of several kinds."""
    if not kinds or list(kinds) == ["plain"]:
        return ""
    return ", of which " + ", ".join(f"{k} {v['rows']:,} ({v['heldout']} held out)" for k, v in kinds.items())


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
              + _kinds_text(data.get("kinds"))
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
    from ..hub import resolve

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
