"""Stage 2, `route`: the N layers to keep, `adalas.route_search` on the first held-out rows, scored
teacher-forced against full depth.
"""
from __future__ import annotations

from ..io import atomic_write_json, file_sha256
from .run import Run


def route_inputs(run: Run) -> dict:
    s, data = run.s, run.outputs("data")
    return {**run.identity(), "heldout_sha256": data["heldout_sha256"], "layers": s.layers,
            "skip_prompt": s.skip_prompt, "rows": s.route_rows, "response_tokens": s.response_tokens,
            "max_candidates": s.max_candidates}


def stage_route(run: Run, inputs: dict, resume: bool) -> dict:
    """`adalas route` on the first held-out rows: the N layers to keep, scored teacher-forced against full depth."""
    from ..data import load_examples
    from ..route_search import RouteScorer, prepare_rows, search_route

    s = run.s
    model, tok = run.model(), run.tokenizer()
    examples = load_examples(str(run.path(run.outputs("data")["heldout"])), limit=s.route_rows)
    context = model.family.max_positions
    rows = prepare_rows(examples, tok, response_tokens=s.response_tokens,
                        max_seq_length=512 if context is None else min(512, context))
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    scorer = RouteScorer(model, rows, pad_token_id=pad, batch_size=s.batch_size, skip_prompt=s.skip_prompt)
    doc = search_route(scorer, s.layers, max_candidates=s.max_candidates, progress=s.progress)
    doc.update(model=s.model, data=run.outputs("data")["heldout"], data_sha256=inputs["heldout_sha256"],
               prompt_depth=s.prompt_depth, response_tokens=s.response_tokens)
    atomic_write_json(run.path("route.json"), doc)
    base = doc["baseline"]
    return {"route": "route.json", "route_sha256": file_sha256(run.path("route.json")), "skip": doc["skip"],
            "keep": doc["keep"], "kl": doc["kl"], "top1_agreement": doc["top1_agreement"], "searched": doc["searched"],
            "rows": doc["rows"], "uniform_kl": base["uniform"]["kl"], "uniform_skip": base["uniform"]["skip"],
            "block_influence_kl": base["block_influence"]["kl"]}
