"""A fingerprint of everything the depth loop computes, so a change to the loop can prove it changed
nothing: over the tiny random models of every family the tests use and every depth mode (both
kv_fill values, skip_prompt false and true where the mode allows it), the sha256 of the exact bytes
of each output:

- `forward`: eval forward without labels (logits, layer gates, hidden states);
- `labels`: eval forward with labels, right and left padding (logits, gates, loss);
- `train`: train-mode forward + backward (loss, logits, every trainable parameter's gradient), with
  runner gathering as the cost model chooses, off, and under activation checkpointing;
- `generate`: cached greedy generation (tokens, every step's logits, per-layer usage, head
  evaluations), through the fast path and without it, at batch 3 (left padding, rows finishing at
  different steps) and batch 1, and sampled;
- `speculative`: self-speculative decoding for static routes (a fixed draft and "auto");
- `grouped`: mode `sequence` batched by route (`generate_grouped`: one-route and mixed batches).

Run it before and after a change to the engine and compare; `tests/test_depth_fingerprint.py` pins
the committed file (`depth_fingerprint.json`):

    .venv/bin/python tests/depth_fingerprint.py --out /tmp/new.json [--compare tests/depth_fingerprint.json]
    PYTHONPATH=/tmp/old/src .venv/bin/python tests/depth_fingerprint.py --out /tmp/old.json   # another tree

Bytes depend on the machine's kernels (torch version, CPU), so the file records its environment and
exact hashes are compared only where it matches; `ints` (token ids, layer counts) and `sum` / `abs`
(float checksums, compared with a tolerance) hold everywhere. One torch thread, as the tests use.
"""
from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import platform
import sys
import time
from pathlib import Path
from typing import Any, Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # conftest, test_families: the tests' tiny models

from conftest import BUILDERS, LAYERS, VOCAB, batch  # noqa: E402
from test_families import NEWER  # noqa: E402

from adalas import AdalasForCausalLM, DepthConfig  # noqa: E402
from adalas.config import route_from_str  # noqa: E402
from adalas.routers import SequenceController, confidence  # noqa: E402
from adalas.sequence.router import generate_grouped  # noqa: E402

FILE = Path(__file__).resolve().parent / "depth_fingerprint.json"
FAMILIES: dict[str, Callable] = {**BUILDERS, **NEWER}
SEQUENCE_ROUTES = ["1111", "1010", "1101"]  # tests/test_sequence.py's: full, uniform to 2, to 3
SUM_RTOL = 1e-4  # for the float checksums, across machines

DEPTHS: dict[str, dict] = {
    "full": dict(mode="full"),
    "static_skip": dict(mode="static_skip", skip_layers=[1, 2]),
    "static_skip_first": dict(mode="static_skip", skip_layers=[0, 3]),
    "early_exit": dict(mode="early_exit", exit_after=2),
    "route": dict(mode="route", route=[True, False, True, False]),
    "stochastic": dict(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5], seed=3),
    "stochastic_all": dict(mode="stochastic", skip_probs=[0.3] * LAYERS, seed=1),
    "stochastic_pool": dict(mode="stochastic", skip_probs=[0.0] + [0.5] * (LAYERS - 1), seed=3,
                            full_depth_share=0.3, route_pool=[[1], [2, 3]], route_pool_share=0.4),
    "random_budget": dict(mode="random_budget", budget=2, keep_first=True, seed=5),
    "random_budget_free": dict(mode="random_budget", budget=3, seed=2),
    "learned": dict(mode="learned", controller_layers=[1, 2, 3]),
    "learned_fixed": dict(mode="learned", controller_input="fixed"),
    "learned_position": dict(mode="learned", controller_input="position", hidden_layers=1),
    "learned_token": dict(mode="learned", controller_input="token"),
    "learned_initial": dict(mode="learned", controller_input="initial"),
    # thresholds: the median confidence at the first exit, per family (`median_confidence`)
    "confidence_exit": dict(mode="confidence_exit", exit_layers=[1, 2], threshold=0.0),
    "confidence_exit_margin": dict(mode="confidence_exit", exit_layers=[1, 3], threshold=0.0, measure="margin"),
    "sequence": dict(mode="sequence"),
}


# -- hashing --------------------------------------------------------------------------------------
class Record:
    """The outputs of one operation: exact bytes (`sha`), integers and rounded values (`ints`), and
    the sum and absolute sum of every float tensor (`sum`, `abs`: compared with a tolerance)."""

    def __init__(self):
        self.exact = hashlib.sha256()
        self.ints = hashlib.sha256()
        self.sum = self.abs = 0.0

    def tensor(self, name: str, t: torch.Tensor | None) -> None:
        if t is None:
            self.exact.update(f"{name}:None;".encode())
            return
        t = t.detach().cpu().contiguous()
        self.exact.update(f"{name}:{t.dtype}:{tuple(t.shape)};".encode())
        self.exact.update(t.view(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
        if t.dtype.is_floating_point:
            self.sum += float(t.double().sum())
            self.abs += float(t.double().abs().sum())
        else:
            self.ints.update(f"{name}:{tuple(t.shape)}:{t.long().tolist()};".encode())

    def value(self, name: str, v: Any) -> None:
        """A Python value (counts, usage fractions: ratios of counts, so exact up to the 9 digits kept)."""
        self.exact.update(f"{name}={json.dumps(v, sort_keys=True, default=str)};".encode())
        self.ints.update(f"{name}={json.dumps(_rounded(v), sort_keys=True, default=str)};".encode())

    def error(self, name: str, e: Exception) -> None:
        self.value(name + "!", f"{type(e).__name__}: {e}")

    def result(self) -> dict:
        return {"sha": self.exact.hexdigest()[:16], "ints": self.ints.hexdigest()[:16],
                "sum": float(f"{self.sum:.9g}"), "abs": float(f"{self.abs:.9g}")}


def _rounded(v: Any) -> Any:
    if isinstance(v, float):
        return float(f"{v:.9g}")
    if isinstance(v, (list, tuple)):
        return [_rounded(x) for x in v]
    if isinstance(v, dict):
        return {k: _rounded(x) for k, x in v.items()}
    return v


# -- the cases ------------------------------------------------------------------------------------
def sequence_controller(hidden: int, feature_layer: int = 1) -> SequenceController:
    """tests/test_sequence.py's length router: routes by prompt length alone."""
    ctrl = SequenceController(2 * hidden + 1, [route_from_str(r) for r in SEQUENCE_ROUTES], feature_layer)
    with torch.no_grad():
        ctrl.linear.weight[1, -1], ctrl.linear.bias[1] = -10.0, 15.0
        ctrl.linear.weight[2, -1], ctrl.linear.bias[2] = 10.0, -20.0
    return ctrl


def median_confidence(m: AdalasForCausalLM, cfg: DepthConfig) -> float:
    """The median head confidence after the first candidate exit at full depth, to 3 digits: a
    threshold where some tokens exit and some do not (tiny random models are all near 1 / vocab)."""
    ids, mask = batch(B=3, T=7)
    with torch.no_grad():
        h = m(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[min(cfg.exit_layers)]
        c = confidence(m.logits_from_state(h[mask.bool()]), cfg.measure)
    return float(f"{float(c.median()):.3g}")


def build(family: str, cfg: DepthConfig) -> AdalasForCausalLM:
    m = AdalasForCausalLM.from_hf(FAMILIES[family]())
    if cfg.mode == "confidence_exit":
        cfg = dataclasses.replace(cfg, threshold=median_confidence(m, cfg))
    if cfg.mode == "sequence":
        m.sequence_controller = sequence_controller(m.family.hidden_size)
    m.set_depth(cfg)
    if cfg.mode == "learned":  # decide differently per token (a random init may run everything)
        torch.manual_seed(0)
        for c in m.controllers.values():
            torch.nn.init.normal_(c.net[-1].weight, std=3.0)
            torch.nn.init.zeros_(c.net[-1].bias)
    return m.eval()


def teacher_forced(padding: str, B: int = 3, T: int = 12, prompt: int = 4, seed: int = 0):
    """tests/test_train_gather.py's batch: prompt + response rows of different lengths."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    lengths = [T, T - 3, T - 5]
    mask = torch.zeros(B, T, dtype=torch.long)
    labels = torch.full((B, T), -100)
    for b, n in enumerate(lengths[:B]):
        span = slice(0, n) if padding == "right" else slice(T - n, T)
        mask[b, span] = 1
        labels[b, span.start + prompt:span.start + n] = ids[b, span.start + prompt:span.start + n]
    return ids.masked_fill(mask == 0, 0), mask, labels


def op_forward(m, r: Record) -> None:
    ids, mask = batch(B=3, T=7)
    with torch.no_grad():
        out = m(input_ids=ids, attention_mask=mask, output_hidden_states=True)
    r.tensor("logits", out.logits)
    r.tensor("gates", out.layer_gates)
    for i, h in enumerate(out.hidden_states):
        r.tensor(f"hidden{i}", h)


def op_labels(m, r: Record) -> None:
    for padding in ("right", "left"):
        ids, mask, labels = teacher_forced(padding)
        with torch.no_grad():
            out = m(input_ids=ids, attention_mask=mask, labels=labels)
        r.tensor(f"{padding}.logits", out.logits)
        r.tensor(f"{padding}.gates", out.layer_gates)
        r.tensor(f"{padding}.loss", out.loss)


def _train_step(m, r: Record, tag: str, gather, checkpointing: bool = False) -> None:
    ids, mask, labels = teacher_forced("right")
    m.train()
    m.gather_tokens = gather
    if checkpointing:
        m.gradient_checkpointing_enable()
    try:
        m.zero_grad(set_to_none=True)
        torch.manual_seed(0)  # Gumbel noise of learned controllers
        out = m(input_ids=ids, attention_mask=mask, labels=labels)
        out.loss.backward()
        r.tensor(f"{tag}.loss", out.loss)
        r.tensor(f"{tag}.logits", out.logits)
        r.tensor(f"{tag}.gates", out.layer_gates)
        for name, p in sorted(m.named_parameters()):
            if p.requires_grad:
                r.tensor(f"{tag}.grad.{name}", p.grad)
    finally:
        m.gradient_checkpointing_disable()
        m.gather_tokens = None
        m.zero_grad(set_to_none=True)
        m.eval()


def op_train(m, r: Record) -> None:
    _train_step(m, r, "auto", None)
    _train_step(m, r, "masked", False)
    _train_step(m, r, "gathered", True)
    _train_step(m, r, "checkpointed", None, checkpointing=True)


def _generate(m, r: Record, tag: str, ids, mask, n: int, **kw) -> None:
    steps: list[torch.Tensor] = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    m.reset_usage()
    try:
        with torch.no_grad():
            out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, pad_token_id=0, **kw)
    finally:
        m.logits_from_state = orig
    r.tensor(f"{tag}.tokens", out)
    for s, logits in enumerate(steps):
        r.tensor(f"{tag}.step{s}", logits)
    r.value(f"{tag}.usage_tokens", int(m.usage.tokens))
    r.value(f"{tag}.layer_usage", [float(x) for x in m.layer_usage()])
    r.value(f"{tag}.head_evals", float(m.head_evaluations()))
    r.value(f"{tag}.cache_bytes", m.usage.last_cache_bytes)


def op_generate(m, r: Record) -> None:
    ids, mask = batch(B=3, T=6)
    for fast in (True, False):
        tag = "fast" if fast else "plain"
        _generate(m, r, f"{tag}.greedy", ids, mask, 6, min_new_tokens=6, do_sample=False, _fast_path=fast)
        # rows that finish at different steps: EOS = the first token row 0 generates
        first = int(m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=1, _fast_path=fast)[0, -1])
        _generate(m, r, f"{tag}.eos", ids, mask, 6, eos_token_id=first, do_sample=False, _fast_path=fast)
        one, one_mask = batch(B=1, T=5, seed=4)
        _generate(m, r, f"{tag}.batch1", one, one_mask, 5, min_new_tokens=5, do_sample=False, _fast_path=fast)
        _generate(m, r, f"{tag}.sampled", ids, mask, 5, min_new_tokens=5, do_sample=True, top_k=20, top_p=0.9,
                  temperature=0.8, seed=7, _fast_path=fast)


def op_speculative(m, r: Record) -> None:
    route = m.depth.static_route(m.num_layers)
    if route is None:
        return
    first = route.index(True)
    draft = DepthConfig(mode="route", route=[i == first for i in range(m.num_layers)])
    ids, mask = batch(B=3, T=6)
    for tag, d, k in (("fixed", draft, None), ("fixed_k2", draft, 2), ("auto", "auto", None)):
        try:
            _generate(m, r, f"spec.{tag}", ids, mask, 7, min_new_tokens=7, do_sample=False, draft_depth=d,
                      num_draft_tokens=k)
            stats = m.speculative_stats()
            r.value(f"spec.{tag}.stats", {k_: v for k_, v in stats.items() if k_ != "choices"})
            r.value(f"spec.{tag}.choices", stats.get("choices"))
        except ValueError as e:
            r.error(f"spec.{tag}", e)


def op_grouped(m, r: Record) -> None:
    """Mode `sequence` batched by route (`generate_grouped`): one-route batches and mixed leftovers."""
    if m.depth.mode != "sequence":
        return
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, VOCAB, (n,), generator=g).tolist() for n in (3, 6, 9, 3, 9)]
    for size in (2, 3):
        steps: list[torch.Tensor] = []
        orig = m.logits_from_state
        m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
        m.reset_usage()
        try:
            out = generate_grouped(m, prompts, batch_size=size, max_new_tokens=5, min_new_tokens=5, pad_token_id=0)
        finally:
            m.logits_from_state = orig
        for s, logits in enumerate(steps):
            r.tensor(f"grouped{size}.step{s}", logits)
        r.value(f"grouped{size}.sequences", out.sequences)
        r.value(f"grouped{size}.choices", out.choices)
        r.value(f"grouped{size}.layer_usage", [float(x) for x in m.layer_usage()])


OPS: dict[str, Callable[[AdalasForCausalLM, Record], None]] = {
    "forward": op_forward, "labels": op_labels, "train": op_train, "generate": op_generate,
    "speculative": op_speculative, "grouped": op_grouped}


def cases(families=None, depths=None):
    """(name, family, DepthConfig) for every valid combination."""
    for family in families or FAMILIES:
        for dname in depths or DEPTHS:
            for kv_fill in ("propagate", "mask"):
                for skip_prompt in (False, True):
                    try:
                        cfg = DepthConfig(kv_fill=kv_fill, skip_prompt=skip_prompt, **DEPTHS[dname])
                    except ValueError:
                        continue  # e.g. `sequence` with skip_prompt
                    yield f"{family}/{dname}/{kv_fill}/{'skip_prompt' if skip_prompt else 'prompt_full'}", family, cfg


def run_case(family: str, cfg: DepthConfig) -> dict:
    out = {}
    for op, fn in OPS.items():
        torch.manual_seed(0)
        r = Record()
        try:
            fn(build(family, cfg), r)
        except ValueError as e:  # a refusal is behaviour too (e.g. `sequence` with labels)
            r.error(op, e)
        out[op] = r.result()
    return out


def environment() -> dict:
    """What the exact bytes depend on besides the code: versions and the CPU's kernels."""
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__, "python": platform.python_version(),
            "machine": platform.machine(), "cpu": torch.backends.cpu.get_cpu_capability(), "cpu_model": _cpu_model()}


def _cpu_model() -> str:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor()
    return next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), "")


def fingerprint(families=None, depths=None, progress: bool = False) -> dict:
    torch.set_num_threads(1)
    results = {}
    t0 = time.perf_counter()
    for name, family, cfg in cases(families, depths):
        results[name] = run_case(family, cfg)
        if progress:
            print(f"[fingerprint] {len(results)} {name} {time.perf_counter() - t0:.0f}s", file=sys.stderr, flush=True)
    return {"environment": environment(), "cases": results}


def dumps(fp: dict) -> str:
    """One line per case (a diff of two fingerprints reads case by case)."""
    lines = [f'{{"environment": {json.dumps(fp["environment"], sort_keys=True)}, "cases": {{']
    items = sorted(fp["cases"].items())
    lines += [f"{json.dumps(k)}: {json.dumps(v, sort_keys=True)}{',' if i < len(items) - 1 else ''}"
              for i, (k, v) in enumerate(items)]
    return "\n".join(lines) + "\n}}\n"


def differences(a: dict, b: dict, exact: bool) -> list[str]:
    """Where fingerprint `b` differs from `a` (over a's cases): exact hashes when `exact`, else integers
    exactly and float sums within SUM_RTOL."""
    out = []
    for name, ops in a["cases"].items():
        other = b["cases"].get(name)
        if other is None:
            out.append(f"{name}: missing")
            continue
        for op, ra in ops.items():
            rb = other.get(op)
            if rb is None:
                out.append(f"{name} {op}: missing")
            elif exact and ra["sha"] != rb["sha"]:
                out.append(f"{name} {op}: bytes differ")
            elif ra["ints"] != rb["ints"]:
                out.append(f"{name} {op}: integers differ")
            elif not all(math.isclose(ra[k], rb[k], rel_tol=SUM_RTOL, abs_tol=SUM_RTOL) for k in ("sum", "abs")):
                out.append(f"{name} {op}: float sums differ")
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", help="write the fingerprint JSON here")
    p.add_argument("--compare", help="a fingerprint JSON to compare with (exit 1 if any case differs)")
    p.add_argument("--families", nargs="+", choices=sorted(FAMILIES))
    p.add_argument("--depths", nargs="+", choices=sorted(DEPTHS))
    args = p.parse_args(argv)
    fp = fingerprint(args.families, args.depths, progress=True)
    if args.out:
        Path(args.out).write_text(dumps(fp))
    n_cases = len(fp["cases"])
    n_ops = sum(1 for ops in fp["cases"].values() for r in ops.values())
    print(json.dumps({"cases": n_cases, "records": n_ops, "environment": fp["environment"]}))
    if args.compare:
        ref = json.loads(Path(args.compare).read_text())
        ref = {**ref, "cases": {k: v for k, v in ref["cases"].items() if k in fp["cases"]}}
        diff = differences(ref, fp, exact=ref["environment"] == fp["environment"])
        print(json.dumps({"compared": len(ref["cases"]), "exact": ref["environment"] == fp["environment"],
                          "identical": not diff, "differences": diff[:50]}, indent=1))
        return 1 if diff else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
