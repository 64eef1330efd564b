"""Does llama.cpp run the exported GGUF as transformers runs the export? (issue 26; outside CI)

Why: `adalas adapt --format gguf` (and `adalas.gguf_export.write_gguf`) writes llama.cpp's tensor names,
its interleaved rotary layout for the query and key rows, and metadata copied from the embedded model's
GGUF with the block count changed. The tests pin that layout on tiny models without llama.cpp; this
script checks the real thing once, with llama.cpp itself: the shipped adapted alias, exported exactly as
`adalas export` exports it (`export.export_checkpoint` on the alias: the base model at fp32 with the LoRA
adapter merged, the skipped layers deleted, `skip_prompt=true`, tokenizer saved; the same weights, byte for
byte, as `adalas adapt`'s export stage writes), then `gguf_export.write_gguf` with the embedded model's
GGUF as the metadata source, compared with
transformers running that same checkpoint (`AutoModelForCausalLM.from_pretrained`, no adalas in it).

What it measures, on the first `--prompts` rows of a held-out file, each formatted as adalas formats
prompts (`adalas.data.tokenize_prompt`: the chat template around instruction and input):
- transformers (fp32) greedily generates exactly `--new-tokens` tokens per prompt, batch 1, going on
  past EOS: this is a check of the runtime, not of the answers, and the 20-layer export (whose adapter
  was trained with the prompt at full depth) ends most of these prompts with EOS at once, which would
  leave one position per row. `eos_at` per row says where EOS first came, and the agreement up to and
  including it is reported beside the one over all positions;
- teacher-forced: llama.cpp evaluates prompt + that continuation once (`logits_all=True`) and its top-1
  token at every generated position is compared with transformers' token (the pass bar, DESIGN.md
  "The GGUF check": at least 0.99 for an F32 or F16 GGUF). Where they part, the top-1/top-2 logit
  margins of both are reported (near-ties are expected to be the only partings);
- greedy: llama.cpp generates from the same prompt ids (temperature 0, top_k 1, no repeat penalty) and
  the number of the runs equal to transformers' tokens is reported (greedy runs may part at a
  near-tie and then go their own ways, so this number has no bar);
- tokenizer: both runtimes are fed transformers' token ids; whether llama.cpp's own tokenizer gives the
  same ids for the prompt text (special tokens parsed, its default BOS rule) is reported beside them.
No speed numbers: this is a correctness check.

Install llama-cpp-python (0.3.36 was used) into its own directory, not the project's virtual
environment, with the CPU code paths that do not crash here (its default build segfaults on this CPU
at the first evaluation, in AMX/AVX-512 code):

    CMAKE_BUILD_PARALLEL_LEVEL=1 CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF \\
        -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" .venv/bin/pip install --no-deps --target /work/llamacpp-lib \\
        llama-cpp-python==0.3.36 diskcache

Run (the export and GGUF are built once and cached under --work; later runs reuse them while the
adapter is the same):

    PYTHONPATH=/work/llamacpp-lib OMP_NUM_THREADS=1 .venv/bin/python benchmarks/gguf_llamacpp_check.py \\
        [--alias smollm2-135m-adapted-20] [--gguf-dtype f32|f16] [--work /tmp/adalas-gguf-check] \\
        [--out results/benchmarks/gguf_llamacpp_check.json]

Prints one JSON object and writes it to --out. Exit 0 whether or not the bar is met (`passed` says).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = "data/synth/shapes/choice.heldout.jsonl"  # self-written held-out rows
PASS_BAR = 0.99  # teacher-forced top-1 agreement for an F32 or F16 GGUF (DESIGN.md, issue 26)
INSTALL = ('install llama-cpp-python into its own directory and put it on PYTHONPATH: CMAKE_ARGS="-DGGML_NATIVE=OFF '
           '-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF" .venv/bin/pip install '
           '--no-deps --target /work/llamacpp-lib llama-cpp-python==0.3.36 diskcache; then run with '
           'PYTHONPATH=/work/llamacpp-lib')


def import_llama_cpp():
    try:
        import llama_cpp
    except ImportError as e:
        raise SystemExit(f"gguf_llamacpp_check: cannot import llama_cpp ({e}); {INSTALL}") from None
    return llama_cpp


def log(msg: str) -> None:
    print(f"[gguf-check] {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# The export and its GGUF, built once under --work

def build(alias: str, gguf_dtype: str, work: Path) -> dict:
    """The plain checkpoint of `alias` (adapter merged, skipped layers deleted, skip_prompt=true) and its
    GGUF, as `adalas adapt`'s export stage writes them; reused while the adapter and route are the same."""
    from adalas.adapt.export_stage import source_gguf
    from adalas.config import DepthConfig
    from adalas.hub import adapter_base, adapter_dir, model_sha256
    from adalas.io import atomic_write_json, file_sha256

    adir = adapter_dir(alias)
    if adir is None:
        raise SystemExit(f"gguf_llamacpp_check: --alias {alias!r} is not a shipped adapted alias")
    base = adapter_base(adir)
    shipped = DepthConfig.from_dir(adir)
    if shipped is None or shipped.mode != "static_skip":
        raise SystemExit(f"gguf_llamacpp_check: {alias!r} has no static_skip depth config")
    # The export stage's depth (Run.depth): the route, with the prompt following it (skip_prompt=true),
    # which is what a checkpoint with those layers deleted runs.
    depth = DepthConfig(mode="static_skip", skip_layers=sorted(shipped.skip_layers), skip_prompt=True)
    key = {"alias": alias, "base_model": base, "base_sha256": model_sha256(base),
           "adapter_sha256": file_sha256(adir / "adapter_model.safetensors"), "depth": depth.to_dict()}
    here = work / alias
    export, record_file = here / "export", here / "build.json"
    record = json.loads(record_file.read_text()) if record_file.is_file() else {}
    if record.get("key") != key or not (export / "model.safetensors").is_file():
        from adalas.export import export_checkpoint

        log(f"exporting {alias} (base {base}, skip {depth.skip_layers}) to {export}")
        # `adalas export`'s path: the alias loads as its base with the adapter merged (as the export stage's
        # adapted_hf), and the explicit depth deletes the skipped layers
        summary = export_checkpoint(alias, depth, export, overwrite=True)
        record = {"key": key, "kept_layers": summary["kept_layers"],
                  "weights_sha256": file_sha256(export / "model.safetensors"), "gguf": {}}
        atomic_write_json(record_file, record)
    gguf_path = here / f"model.{gguf_dtype}.gguf"
    known = record.get("gguf", {}).get(gguf_dtype)
    if not (gguf_path.is_file() and known and known.get("export_sha256") == record["weights_sha256"]
            and known.get("sha256") == file_sha256(gguf_path)):
        from adalas.gguf_export import write_gguf

        log(f"writing {gguf_path} ({gguf_dtype})")
        info = write_gguf(export, gguf_path, dtype=gguf_dtype, source_gguf=source_gguf(base),
                          name=f"adalas {len(record['kept_layers'])} layers ({alias})")
        record.setdefault("gguf", {})[gguf_dtype] = {"sha256": file_sha256(gguf_path),
                                                     "export_sha256": record["weights_sha256"],
                                                     "tensors": info["tensors"], "block_count": info["block_count"],
                                                     "metadata": info["metadata"]}
        atomic_write_json(record_file, record)
    return {**record, "export": export, "gguf_path": gguf_path, "adapter_dir": adir}


# ---------------------------------------------------------------------------------------------
# The two runtimes

def hf_greedy(hf, ids: list[int], new_tokens: int) -> list[int]:
    """Greedy continuation of exactly `new_tokens` tokens (EOS does not stop it), batch 1, with the
    key/value cache (no generation config involved)."""
    import torch

    out = hf(input_ids=torch.tensor([ids]), use_cache=True)
    gen: list[int] = []
    while True:
        token = int(out.logits[0, -1].argmax())
        gen.append(token)
        if len(gen) == new_tokens:
            return gen
        out = hf(input_ids=torch.tensor([[token]]), past_key_values=out.past_key_values, use_cache=True)


def hf_logits(hf, ids: list[int], gen: list[int]):
    """transformers' logits (numpy, fp32) at the positions that predict each generated token, one
    uncached forward over prompt + continuation."""
    import torch

    logits = hf(input_ids=torch.tensor([ids + gen])).logits[0]
    return logits[len(ids) - 1: len(ids) - 1 + len(gen)].float().numpy()


def llama_logits(llm, ids: list[int], gen: list[int]):
    """llama.cpp's logits at the same positions: prompt + continuation evaluated once."""
    import numpy as np

    llm.reset()
    llm.eval(ids + gen)
    return np.array(llm.scores[len(ids) - 1: len(ids) - 1 + len(gen)], dtype=np.float32)


def llama_greedy(llm, ids: list[int], new_tokens: int) -> list[int]:
    """llama.cpp's greedy sampler, exactly `new_tokens` tokens (its generate() does not stop at EOS)."""
    llm.reset()
    gen: list[int] = []
    for token in llm.generate(ids, top_k=1, top_p=1.0, min_p=0.0, typical_p=1.0, temp=0.0, repeat_penalty=1.0,
                              frequency_penalty=0.0, presence_penalty=0.0, reset=True):
        gen.append(int(token))
        if len(gen) == new_tokens:
            break
    return gen


def margin(row) -> float:
    """Top-1 minus top-2 logit."""
    import numpy as np

    top2 = np.partition(row, -2)[-2:]
    return float(top2[1] - top2[0])


# ---------------------------------------------------------------------------------------------

def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--alias", default="smollm2-135m-adapted-20")
    p.add_argument("--gguf-dtype", default="f32", choices=("f32", "f16"))
    p.add_argument("--work", default="/tmp/adalas-gguf-check", help="where the export and GGUF are cached")
    p.add_argument("--out", default=str(ROOT / "results" / "benchmarks" / "gguf_llamacpp_check.json"))
    p.add_argument("--data", default=str(ROOT / DEFAULT_DATA), help="held-out rows (JSONL); the first --prompts")
    p.add_argument("--prompts", type=int, default=16)
    p.add_argument("--new-tokens", type=int, default=24)
    p.add_argument("--threads", type=int, default=1, help="torch and llama.cpp threads")
    a = p.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    llama_cpp = import_llama_cpp()  # before any work: a missing llama.cpp fails in a second
    import numpy as np
    import torch
    import transformers
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adalas.data import build_prompt, data_sha256, load_examples, tokenize_prompt
    from adalas.io import atomic_write_json, file_sha256

    torch.set_num_threads(a.threads)
    built = build(a.alias, a.gguf_dtype, Path(a.work))
    export, gguf_path = built["export"], built["gguf_path"]

    tok = AutoTokenizer.from_pretrained(str(export))
    hf = AutoModelForCausalLM.from_pretrained(str(export), dtype=torch.float32).eval()
    eos = tok.eos_token_id
    examples = load_examples(a.data, limit=a.prompts)
    with open(a.data, encoding="utf-8") as f:  # the rows' `shape` column, which Example does not keep
        shapes = [json.loads(line).get("shape") for line in f if line.strip()][:len(examples)]
    prompts = [tokenize_prompt(ex, tok)["input_ids"] for ex in examples]  # adalas' own prompt (chat template)
    texts = [build_prompt(ex, "auto", tok) for ex in examples]
    n_ctx = -(-(max(map(len, prompts)) + a.new_tokens + 8) // 64) * 64
    log(f"{len(prompts)} prompts ({min(map(len, prompts))}-{max(map(len, prompts))} tokens), n_ctx {n_ctx}")
    llm = llama_cpp.Llama(model_path=str(gguf_path), logits_all=True, n_ctx=n_ctx, n_batch=n_ctx, n_threads=a.threads,
                          n_threads_batch=a.threads, verbose=False)

    rows, partings, greedy_parts, tok_parts = [], [], [], []
    positions = agree = positions_eos = agree_eos = greedy_same = tok_same = hf_self = 0
    max_abs = 0.0
    with torch.no_grad():
        for i, (ex, ids, text) in enumerate(zip(examples, prompts, texts)):
            gen = hf_greedy(hf, ids, a.new_tokens)
            eos_at = gen.index(eos) if eos in gen else None
            upto = len(gen) if eos_at is None else eos_at + 1  # positions up to and including the first EOS
            ref = hf_logits(hf, ids, gen)
            got = llama_logits(llm, ids, gen)
            ll_top = got.argmax(-1).tolist()
            hf_self += sum(int(t == g) for t, g in zip(ref.argmax(-1).tolist(), gen))
            max_abs = max(max_abs, float(np.abs(got - ref).max()))
            for j, (g, t) in enumerate(zip(gen, ll_top)):
                if g != t:
                    partings.append({"row": i, "id": ex.id, "position": j, "transformers": g, "llama_cpp": t,
                                     "transformers_piece": tok.decode([g]), "llama_cpp_piece": tok.decode([t]),
                                     "transformers_margin": round(margin(ref[j]), 5),
                                     "llama_cpp_margin": round(margin(got[j]), 5),
                                     "logit_gap_in_transformers": round(float(ref[j][g] - ref[j][t]), 5)})
            n_agree = sum(int(g == t) for g, t in zip(gen, ll_top))
            positions += len(gen)
            agree += n_agree
            positions_eos += upto
            agree_eos += sum(int(g == t) for g, t in zip(gen[:upto], ll_top[:upto]))
            ll_gen = llama_greedy(llm, ids, a.new_tokens)
            same = ll_gen == gen
            greedy_same += same
            if not same:
                k = next((k for k, (x, y) in enumerate(zip(gen, ll_gen)) if x != y), min(len(gen), len(ll_gen)))
                greedy_parts.append({"row": i, "id": ex.id, "first_difference": k,
                                     "transformers": tok.decode(gen[k:]), "llama_cpp": tok.decode(ll_gen[k:])})
            ll_ids = llm.tokenize(text.encode("utf-8"), add_bos=True, special=True)
            tok_eq = list(ll_ids) == list(ids)
            tok_same += tok_eq
            if not tok_eq:
                k = next((k for k, (x, y) in enumerate(zip(ids, ll_ids)) if x != y), min(len(ids), len(ll_ids)))
                tok_parts.append({"row": i, "id": ex.id, "first_difference": k, "lengths": [len(ids), len(ll_ids)],
                                  "transformers": ids[k:k + 4], "llama_cpp": list(ll_ids[k:k + 4]),
                                  "text_there": tok.decode(ids[k:k + 4])})
            rows.append({"row": i, "id": ex.id, "shape": shapes[i],
                         "prompt_tokens": len(ids), "generated": len(gen), "eos_at": eos_at, "top1_agree": n_agree,
                         "greedy_identical": same, "tokenizer_ids_equal": tok_eq})
            log(f"row {i}: {n_agree}/{len(gen)} top-1, greedy {'same' if same else 'parts'}, "
                f"tokenizer {'same' if tok_eq else 'differs'}")

    share = agree / positions
    result = {
        "check": "llama.cpp top-1 on the exported GGUF vs transformers on the export (teacher-forced)",
        "alias": a.alias, "base_model": built["key"]["base_model"],
        "adapter_sha256": built["key"]["adapter_sha256"], "depth": built["key"]["depth"],
        "kept_layers": built["kept_layers"], "export_weights_sha256": built["weights_sha256"],
        "gguf": {"sha256": file_sha256(gguf_path), "dtype": a.gguf_dtype,
                 **{k: built["gguf"][a.gguf_dtype][k] for k in ("tensors", "block_count", "metadata")}},
        "llama_cpp_version": llama_cpp.__version__, "transformers_version": transformers.__version__,
        "torch_version": torch.__version__,
        "data": os.path.relpath(a.data, ROOT) if Path(a.data).is_absolute() else a.data,
        "data_sha256": data_sha256(a.data),
        "prompt_format": "adalas.data.tokenize_prompt (auto: the chat template)",
        "prompts": len(prompts), "new_tokens": a.new_tokens, "n_ctx": n_ctx, "threads": a.threads,
        "generation": "greedy, exactly new_tokens per prompt, not stopped at EOS (eos_at: where it first came)",
        "positions_compared": positions, "top1_agree": agree, "top1_agreement": round(share, 5),
        "up_to_first_eos": {"positions_compared": positions_eos, "top1_agree": agree_eos,
                            "top1_agreement": round(agree_eos / positions_eos, 5),
                            "rows_with_eos_first": sum(int(r["eos_at"] == 0) for r in rows)},
        "pass_bar": PASS_BAR, "passed": share >= PASS_BAR,
        "greedy_identical": greedy_same, "tokenizer_ids_equal": tok_same,
        "transformers_cached_vs_uncached_top1": f"{hf_self}/{positions}",
        "max_abs_logit_diff": round(max_abs, 5),
        "top1_partings": partings, "greedy_partings": greedy_parts, "tokenizer_partings": tok_parts,
        "rows": rows,
    }
    print(json.dumps(result, indent=2, sort_keys=True))
    atomic_write_json(a.out, result)
    return 0


if __name__ == "__main__":
    sys.exit(main())
