"""A sweep with each batch's prompt prefilled once (`adalas.prompt_reuse`) against one that prefills for
every config, side by side on the same rows: prints one JSON object.

    .venv/bin/python benchmarks/prompt_reuse.py [--shape article] [--rows 32] [--threads 1] [--out FILE]

The configs are E3's kind (the prompt at full depth, the route only while decoding): full depth, uniform
skipping to 7, 20 and 24 layers, the two shipped routes, and two sampled full-depth runs (the null
control), on the embedded model. The rows are the self-written choice set's (`--shape`: one of its four
shapes; `article` has the longest prompts, as CNN/DailyMail's), 64 new tokens, batch 16. The two sweeps
alternate (prefilling every config, then reusing; then the other way round) for `--repeats` rounds, each
into a fresh directory; reported: the median wall time of each, their ratio, and whether the rows of the
two are identical (they must be: the reuse is exact). Run it on idle cores.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from adalas import AdalasForCausalLM
from adalas import sweep as S
from adalas.evaluate import load_items
from adalas.hub import load_tokenizer
from adalas.io import atomic_write_json, read_jsonl

ROOT = Path(__file__).resolve().parents[1]
CHOICE_SET = ROOT / "data" / "synth" / "shapes" / "choice.heldout.jsonl"
CANDIDATES = ["uniform@7", "uniform@20", "uniform@24", "shipped:smollm2-135m-adapted-24",
              "shipped:smollm2-135m-adapted-20"]


def configs(num_layers: int) -> list:
    from adalas.study.routes import sweep_config

    full, *samples = S.build_configs(num_layers, [], [], null_k=3)
    return [full, *(sweep_config(c, num_layers) for c in CANDIDATES), *samples]


def one(model, tok, items, cfgs, reuse: bool) -> tuple[float, list[dict]]:
    with tempfile.TemporaryDirectory() as d:
        t0 = time.perf_counter()
        S.run_sweep(model, tok, items, cfgs, d, max_new_tokens=64, batch_size=16, reference="full", model_id="bench",
                    reuse_prompts=reuse)
        wall = time.perf_counter() - t0
        rows = sorted(read_jsonl(Path(d) / "per_sequence.jsonl"), key=lambda r: (r["config_id"], r["id"]))
    return wall, rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", default="article", choices=["plain", "dialogue", "article", "input"])
    ap.add_argument("--rows", type=int, default=32)
    ap.add_argument("--repeats", type=int, default=1)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    tok = load_tokenizer("smollm2-135m")
    model = AdalasForCausalLM.from_pretrained("smollm2-135m")
    examples = [e for e in read_jsonl(CHOICE_SET, strict=True) if e["shape"] == a.shape][:a.rows]
    with tempfile.NamedTemporaryFile("w", suffix=".jsonl") as f:
        f.write("".join(json.dumps(e) + "\n" for e in examples))
        f.flush()
        items = load_items(f.name, tok)
    cfgs = configs(model.num_layers)
    walls: dict[str, list[float]] = {"prefill_every_config": [], "prompt_reuse": []}
    identical = True
    for r in range(a.repeats):
        order = [False, True] if r % 2 == 0 else [True, False]
        got = {}
        for reuse in order:
            wall, rows = one(model, tok, items, cfgs, reuse)
            walls["prompt_reuse" if reuse else "prefill_every_config"].append(wall)
            got[reuse] = rows
            print(f"[prompt_reuse] round {r}: reuse={reuse} {wall:.1f} s", file=sys.stderr, flush=True)
        identical = identical and got[True] == got[False]
    med = {k: statistics.median(v) for k, v in walls.items()}
    doc = {"benchmark": "prompt_reuse", "shape": a.shape, "rows": len(items), "configs": [c.config_id for c in cfgs],
           "max_new_tokens": 64, "batch_size": 16, "threads": a.threads, "repeats": a.repeats,
           "mean_prompt_tokens": sum(len(it.input_ids) for it in items) / len(items),
           "wall_s": {k: round(v, 2) for k, v in med.items()},
           "speedup": round(med["prefill_every_config"] / med["prompt_reuse"], 3), "rows_identical": identical}
    print(json.dumps(doc, indent=1))
    if a.out:
        atomic_write_json(a.out, doc)


if __name__ == "__main__":
    main()
