"""Training speed (forward + backward), side by side in one process: prints one JSON object.

    adalas bench train [--batch 4] [--tokens 128] [--labels 96] [--repeats 3] [--model smollm2-135m]
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/train.py --repeats 3

One step is a teacher-forced forward with labels plus `loss.backward()` (no optimizer), in train
mode, on `--batch` rows of `--tokens` token ids with labels on the last `--labels` tokens (so the first
tokens are the prompt, which runs every layer unless the config says `skip_prompt`). Every repeat
runs every config once, in the same order (interleaved, so load on a shared machine hits them alike);
the report gives each config's median time and its ratio to transformers at full depth and to adalas
at full depth, in wall time and in this process's CPU time (`cpu_*`). On a machine that other jobs
load, the CPU-time ratios at `--threads 1` are the steadier ones: waiting for a core does not count,
though sharing caches and memory bandwidth still does.

Configs (L layers; "half" = every other layer, 1, 3, 5, ...):
- hf_full: transformers, full depth; hf_half_deleted: transformers with the half deleted (the limit:
  every token of the sequence skips them).
- adalas_full: full depth through the depth loop.
- adalas_half_skip / adalas_half_skip_kv_mask: the half skipped, prompt at full depth (the paper's
  setting), kv_fill "propagate" / "mask" (a route fixed per sequence: one computation).
- adalas_half_skip_deleted_equiv: the same with `skip_prompt=True` (equals hf_half_deleted).
- adalas_stochastic: each token skips each layer but the first with probability 1/2 (layer dropout),
  prompt at full depth.
- adalas_learned: learned controllers on every layer but the first, straight-through Gumbel-softmax
  (runs every layer for every token: the estimator needs it).
- *_masked: the same config with `gather_tokens = False`, i.e. each layer run for every token and the
  runners' outputs kept (the computation before runner gathering), for the gain in the same run.
- *_response: the same config with `response_logits=True`, what `adalas train` runs: the head and the
  loss only at the positions a label follows (the prompt's positions need no logits).
"""
from __future__ import annotations

import argparse
import copy
import json
import platform
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch


def add_arguments(p: argparse.ArgumentParser) -> argparse.ArgumentParser:
    p.add_argument("--model", default="smollm2-135m", help="hub id, local directory, or smollm2-135m")
    p.add_argument("--batch", type=int, default=4, help="rows per step")
    p.add_argument("--tokens", type=int, default=128, help="tokens per row")
    p.add_argument("--labels", type=int, default=96,
                   help="labelled tokens at the end of each row (the rest is the prompt)")
    p.add_argument("--repeats", type=int, default=3, help="timed steps per config (the median is reported)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    p.add_argument("--no-masked", action="store_true", help="leave out the *_masked configs")
    p.add_argument("--cases", default=None,
                   help="comma-separated config names to run (default: all; hf_full and adalas_full always run)")
    p.add_argument("--out", default=None, help="also write the JSON document here")
    return p


@dataclass
class Case:
    name: str
    step: Callable[[], torch.Tensor]  # one forward + backward; returns the loss
    seconds: list[float] = field(default_factory=list)  # wall time
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time (every thread)
    loss: float | None = None


def hf_case(name: str, hf, batch: dict) -> Case:
    def step() -> torch.Tensor:
        hf.zero_grad(set_to_none=True)
        loss = hf(**batch).loss
        loss.backward()
        return loss
    return Case(name, step)


def adalas_case(name: str, model, batch: dict, depth, gather: bool | None = None, response: bool = False) -> Case:
    def step() -> torch.Tensor:
        model.set_depth(depth)
        model.gather_tokens = gather
        model.zero_grad(set_to_none=True)
        loss = model(**batch, response_logits=response).loss
        loss.backward()
        return loss
    return Case(name, step)


def deleted(hf, keep: list[int]):
    """A copy of the transformers model with only the layers in `keep`."""
    from adalas.families import family_for
    m = copy.deepcopy(hf)
    family_for(m).set_layers(keep)
    return m


def make_batch(vocab: int, batch: int, tokens: int, labels: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, vocab, (batch, tokens), generator=g)
    lab = ids.clone()
    lab[:, :tokens - labels] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": lab.to(device)}


def time_cases(cases: list[Case], repeats: int) -> None:
    for c in cases:  # warm-up: first-call allocations, kernels, the controllers' creation
        c.step()
    for r in range(repeats):
        for c in cases:
            t, cpu = time.perf_counter(), time.process_time()
            loss = c.step()
            c.seconds.append(time.perf_counter() - t)
            c.cpu_seconds.append(time.process_time() - cpu)
            c.loss = float(loss.detach())
        print(f"[bench train] repeat {r + 1}/{repeats} done", file=sys.stderr, flush=True)


def run(args: argparse.Namespace) -> int:
    import transformers

    from adalas import AdalasForCausalLM, DepthConfig
    from adalas.io import atomic_write_text

    transformers.logging.set_verbosity_error()
    if args.threads:
        torch.set_num_threads(args.threads)
    if min(args.batch, args.tokens, args.labels, args.repeats) < 1 or args.labels >= args.tokens:
        raise ValueError("--batch, --tokens, --labels, --repeats: must be >= 1, with --labels < --tokens")
    model = AdalasForCausalLM.from_pretrained(args.model).train()
    hf = model.model
    L = model.num_layers
    half = list(range(1, L, 2))
    hf_half = deleted(hf, [i for i in range(L) if i not in half]).train()
    batch = make_batch(hf.config.vocab_size, args.batch, args.tokens, args.labels, model.device)
    depths = {
        "full": DepthConfig(),
        "half_skip": DepthConfig(mode="static_skip", skip_layers=half),
        "half_skip_kv_mask": DepthConfig(mode="static_skip", skip_layers=half, kv_fill="mask"),
        "half_skip_deleted_equiv": DepthConfig(mode="static_skip", skip_layers=half, skip_prompt=True),
        "stochastic": DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.5] * (L - 1), seed=0),
        "learned": DepthConfig(mode="learned", controller_layers=list(range(1, L))),
    }
    cases = [hf_case("hf_full", hf, batch), hf_case("hf_half_deleted", hf_half, batch)]
    cases += [adalas_case(f"adalas_{name}", model, batch, d) for name, d in depths.items()]
    if not args.no_masked:
        cases += [adalas_case(f"adalas_{name}_masked", model, batch, depths[name], gather=False)
                  for name in ("half_skip", "stochastic")]
    cases += [adalas_case(f"adalas_{name}_response", model, batch, depths[name], response=True)
              for name in ("full", "half_skip", "stochastic")]
    if args.cases:
        keep = {"hf_full", "adalas_full", *args.cases.split(",")}
        unknown = keep - {c.name for c in cases}
        if unknown:
            raise ValueError(f"--cases: unknown config(s) {', '.join(sorted(unknown))}")
        cases = [c for c in cases if c.name in keep]
    time_cases(cases, args.repeats)
    median = {c.name: statistics.median(c.seconds) for c in cases}
    cpu = {c.name: statistics.median(c.cpu_seconds) for c in cases}
    doc: dict[str, Any] = {
        "model": args.model, "layers": L, "batch": args.batch, "tokens": args.tokens, "labels": args.labels,
        "repeats": args.repeats, "device": str(model.device), "threads": torch.get_num_threads(),
        "versions": {"torch": torch.__version__, "transformers": transformers.__version__,
                     "python": platform.python_version()},
        "median_s": {k: round(v, 3) for k, v in median.items()},
        "seconds": {c.name: [round(s, 3) for s in c.seconds] for c in cases},
        "vs_hf_full": {k: round(v / median["hf_full"], 3) for k, v in median.items()},
        "vs_adalas_full": {k: round(v / median["adalas_full"], 3) for k, v in median.items()},
        "cpu_median_s": {k: round(v, 3) for k, v in cpu.items()},
        "cpu_seconds": {c.name: [round(s, 3) for s in c.cpu_seconds] for c in cases},
        "cpu_vs_hf_full": {k: round(v / cpu["hf_full"], 3) for k, v in cpu.items()},
        "cpu_vs_adalas_full": {k: round(v / cpu["adalas_full"], 3) for k, v in cpu.items()},
        "loss": {c.name: round(c.loss, 5) for c in cases},
    }
    text = json.dumps(doc, indent=2)
    print(text)
    if args.out:
        atomic_write_text(args.out, text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run(add_arguments(argparse.ArgumentParser(description=__doc__.splitlines()[0])).parse_args()))
