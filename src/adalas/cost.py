"""FLOPs per generated token for a depth config, counted from the model's shapes.

What is counted (2 FLOPs per multiply-accumulate, the usual convention; matrix products only:
norms, activations, softmax, rotary, biases and embedding lookups are left out, well under 1%):
- a layer a token runs: its projections, q and o `2*D*(H*Dh)` each, k and v `2*D*(Hkv*Dh)` each;
  attention over `context_length` keys, `2*2*H*Dh*C` (scores, then the weighted sum of values);
  the MLP, `2*m*D*I` (m = 2 weight matrices, 3 for a gated MLP such as Llama's);
- a layer it skips: its key/value projections, `2*2*D*(Hkv*Dh)`, under `kv_fill="propagate"` in the
  modes that decide per token (stochastic, learned, confidence_exit); nothing under `"mask"`, nor in
  the modes with one route per sequence, where no later token reads them (`DepthConfig.stores_skipped_kv`),
  nor for a layer deleted from the checkpoint (see `adalas export`);
- the head (final projection + vocabulary, `2*V*D` for a plain head) once per token, and once more
  per confidence check (`confidence_exit`: `model.head_evaluations()` per token).

`context_length` is an assumption the caller states: the number of keys a generated token attends to
(for a whole generation, about prompt length + half the new tokens). It applies to every layer run;
under `kv_fill="mask"` a layer holds fewer keys, so the attention term is then an upper bound.

Example (SmolLM2-135M, every other layer skipped, 128 keys): `relative_to_full` 0.60 under either
kv_fill (= the checkpoint with those layers deleted: a 1.66x bound; the head is 20% of the full
model's work); with each layer skipped per token with probability 1/2 under propagate, 0.63.

    config_flops(model, DepthConfig(mode="static_skip", skip_layers=list(range(1, 30, 2))), 128)

`CostModel` is the decode-time counterpart: relative time rather than FLOPs, for the choices made
while decoding (a self-speculative draft and its length; gathering the rows that run a layer) and
in teacher-forced passes (gathering the tokens that run a layer: `train_gather_pays`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Sequence

from torch import nn

from .config import DepthConfig
from .families import Family, family_for


@dataclass(frozen=True)
class Shapes:
    """What the count needs from a model: D, H, Hkv, Dh, I, MLP matrices, head multiply-accumulates."""

    num_layers: int
    hidden_size: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    mlp_matrices: int
    head_macs: int

    @classmethod
    def of(cls, model_or_family: Any) -> "Shapes":
        """From an AdalasForCausalLM, a Hugging Face causal LM, a Family, or Shapes itself."""
        if isinstance(model_or_family, Shapes):
            return model_or_family
        fam = model_or_family if isinstance(model_or_family, Family) else getattr(model_or_family, "family", None)
        if fam is None:
            if not isinstance(model_or_family, nn.Module):
                raise ValueError(f"cost: expected a model or a family, got {type(model_or_family).__name__}")
            fam = family_for(model_or_family)
        return cls(fam.num_layers, fam.hidden_size, fam.num_heads, fam.num_kv_heads, fam.head_dim,
                   fam.intermediate_size, fam.mlp_matrices, fam.head_macs())

    def kv_flops(self) -> int:
        """One token's key/value projections in one layer (all a skipped layer costs under propagate)."""
        return 2 * 2 * self.hidden_size * self.num_kv_heads * self.head_dim

    def layer_flops(self, context_length: float) -> float:
        """One token through one whole layer, attending to `context_length` keys."""
        D, qdim = self.hidden_size, self.num_heads * self.head_dim
        projections = 2 * D * qdim * 2 + self.kv_flops()  # q, o; k, v
        attention = 2 * 2 * qdim * context_length  # q.k over the keys, then weights @ values
        mlp = 2 * self.mlp_matrices * D * self.intermediate_size
        return projections + attention + mlp

    def head_flops(self) -> int:
        """One evaluation of the final projection and the head."""
        return 2 * self.head_macs


# Time of one pass over `rows` (batch x tokens) relative to one row, by device type: (rows, time)
# points, linear in between and beyond. CPU: measured on the 2-core dev machine (SmolLM2-135M, fp32,
# one thread, full depth + head): reading the weights dominates small passes, so 9 rows cost 1.8x one
# row and 72 rows 4.1x. Other devices (GPUs at these sizes): nearly flat.
ROW_COST = {"cpu": ((1, 1.0), (3, 1.27), (5, 1.45), (9, 1.82), (24, 2.4), (40, 3.26), (72, 4.1)),
            "default": ((1, 1.0), (64, 1.3))}
# Running a layer on some rows only costs gathering their states and cache rows and scattering the
# result back: gathering must beat running every row (outputs selected) by this factor. Measured on
# the CPU (SmolLM2-135M, decode steps, n of B rows running each layer, time gathered / every row):
# 1 of 8: 0.55; 2-4 of 8: 1.0-1.1; 4-8 of 32: 0.75-0.83; 16 of 32: 0.91; 24 of 32: 1.09. End to end,
# one random half-depth route per row at batch 8 ran at 0.87x full depth gathered, 1.02x not.
GATHER_MARGIN = 0.7
# The same choice in an uncached teacher-forced pass (training: forward + backward over B x T tokens):
# the runners' queries, attention output and MLP run on their rows, the keys/values on `kv_rows`
# rows; packing the runners and scattering the result back is memory traffic, small beside the
# matrix products at training sizes. Measured on the CPU (SmolLM2-135M, batch 4 x 128, forward +
# backward, CPU time at one thread, a loaded machine: +-5%), `stochastic` on every layer but the first
# with the prompt (1/4) at full depth, gathered / every row, whole model: 0.89 with 5/8 of the tokens
# running a layer, 0.92 with 3/4, 0.96 with 7/8, 0.97 with 24/25 (no loss anywhere).
TRAIN_GATHER_MARGIN = 0.95


@dataclass(frozen=True)
class CostModel:
    """Relative time of a decode pass, in units of one layer for one row (token), for the choices
    made while decoding (self-speculative drafts, gathering rows): (layers + kv * kv_layers + head)
    * row_cost(rows), rows = batch x tokens of the pass. Shapes and a per-device table only (no
    timing), so decisions are reproducible."""

    head: float  # the final norm + head, in layers
    kv: float  # a skipped layer's key/value projection, in layers
    points: tuple[tuple[int, float], ...]  # ROW_COST

    @classmethod
    def of(cls, model: Any) -> "CostModel":
        """For an AdalasForCausalLM (its shapes and its device's table)."""
        s = Shapes.of(model)
        layer = s.layer_flops(0)
        points = ROW_COST.get(model.device.type, ROW_COST["default"])
        return cls(head=s.head_flops() / layer, kv=s.kv_flops() / layer, points=points)

    def row_cost(self, rows: int) -> float:
        """Piecewise-linear in the table, extended with the last segment's slope."""
        pts = self.points
        for (r0, c0), (r1, c1) in zip(pts, pts[1:]):
            if rows <= r1 or (r1, c1) == pts[-1]:
                return c0 + (c1 - c0) * (rows - r0) / (r1 - r0)
        return pts[0][1]

    def pass_cost(self, layers: int, kv_layers: int, rows: int, head: bool) -> float:
        return (layers + self.kv * kv_layers + (self.head if head else 0.0)) * self.row_cost(rows)

    def gather_pays(self, run: int, rows: int, kv_for_the_rest: bool) -> bool:
        """Whether a layer that `run` of `rows` rows run is cheaper on those rows alone (the others
        computing keys/values only when `kv_for_the_rest`) than on every row, outputs selected."""
        rest = self.kv * self.row_cost(rows - run) if kv_for_the_rest and run < rows else 0.0
        return self.row_cost(run) + rest < GATHER_MARGIN * self.row_cost(rows)

    def train_gather_pays(self, run: int, kv_rows: int, rows: int) -> bool:
        """Whether a layer that `run` of the `rows` tokens of a teacher-forced pass run is cheaper on
        their rows alone (keys/values on `kv_rows` rows) than on every row, outputs selected."""
        gathered = (1.0 - self.kv) * self.row_cost(run) + self.kv * self.row_cost(kv_rows)
        return gathered < TRAIN_GATHER_MARGIN * self.row_cost(rows)


def flops_per_token(model_or_family: Any, layer_usage: Sequence[float], kv_fill: str, context_length: float,
                    head_evals_per_token: float = 0.0) -> float:
    """FLOPs per generated token: each layer counted in proportion to its usage (the fraction of
    tokens that ran it, as `model.layer_usage()` gives), skipped shares at their key/value cost under
    `kv_fill="propagate"`, plus the head once per token and once per confidence check."""
    s = Shapes.of(model_or_family)
    if len(layer_usage) != s.num_layers:
        raise ValueError(f"layer_usage: has {len(layer_usage)} entries; the model has {s.num_layers} layers")
    if any(not 0.0 <= u <= 1.0 for u in layer_usage):
        raise ValueError(f"layer_usage: fractions must lie in [0, 1], got {list(layer_usage)}")
    if kv_fill not in ("propagate", "mask"):
        raise ValueError(f"kv_fill: unknown value {kv_fill!r}; allowed: propagate, mask")
    if context_length < 0 or head_evals_per_token < 0:
        raise ValueError("context_length, head_evals_per_token: must be >= 0")
    run = sum(layer_usage)
    skipped = s.num_layers - run
    total = run * s.layer_flops(context_length) + (1 + head_evals_per_token) * s.head_flops()
    if kv_fill == "propagate":
        total += skipped * s.kv_flops()
    return float(total)


def config_flops(model_or_family: Any, depth: "DepthConfig | dict | str | None", context_length: float,
                 layer_usage: Sequence[float] | None = None,
                 head_evals_per_token: float | None = None) -> dict[str, Any]:
    """The cost of a depth config per generated token, and relative to the full model.

    Static modes (full, static_skip, early_exit, route) need nothing measured. The others decide per
    token or per sequence: pass the measured `layer_usage` (and for confidence_exit
    `head_evals_per_token`), e.g. `model.layer_usage()` and `model.head_evaluations()` after a
    generation. `depth` None: the model's current config. Returns `flops_per_token`,
    `full_flops_per_token`, `relative_to_full`, `speedup_bound` (its inverse: the most a perfect
    implementation could gain), `avg_layers`, `head_evals_per_token`, `context_length`, `kv_fill`,
    `shapes`.
    """
    s = Shapes.of(model_or_family)
    if depth is None:
        depth = getattr(model_or_family, "depth", None)
        if depth is None:
            raise ValueError("depth: required (the model or family given has no depth config)")
    depth = DepthConfig.parse(depth)
    depth.check_layers(s.num_layers)
    route = depth.static_route(s.num_layers)
    if layer_usage is None:
        if route is None:
            raise ValueError(f"layer_usage: required for mode {depth.mode!r} (it decides per token or per "
                             f"sequence); measure it, e.g. model.layer_usage() after generate")
        layer_usage = [1.0 if r else 0.0 for r in route]
    if head_evals_per_token is None:
        if depth.mode == "confidence_exit":
            raise ValueError("head_evals_per_token: required for confidence_exit; measure it, e.g. "
                             "model.head_evaluations() after generate")
        head_evals_per_token = 0.0
    fill = depth.kv_fill if depth.stores_skipped_kv else "mask"  # what the engine computes
    flops = flops_per_token(s, layer_usage, fill, context_length, head_evals_per_token)
    full = flops_per_token(s, [1.0] * s.num_layers, fill, context_length)
    return {"flops_per_token": flops, "full_flops_per_token": full, "relative_to_full": flops / full,
            "speedup_bound": full / flops, "avg_layers": float(sum(layer_usage)),
            "head_evals_per_token": float(head_evals_per_token), "context_length": context_length,
            "kv_fill": depth.kv_fill, "skipped_kv_computed": depth.stores_skipped_kv, "shapes": asdict(s)}


def generation_flops(model: Any, depth: "DepthConfig | dict | str | None", layer_usage: Sequence[float],
                     prompt_tokens: float, output_tokens: float, head_evals_per_token: float = 0.0) -> float:
    """FLOPs per generated token of a finished generation (a sweep row's `flops_per_token`): the
    measured `layer_usage` (`model.layer_usage()`) and head evaluations, attending on average to the
    mean prompt length plus half the mean number of new tokens (`context_length` of `config_flops`)."""
    if prompt_tokens < 0 or output_tokens < 0:
        raise ValueError("prompt_tokens, output_tokens: must be >= 0")
    context = prompt_tokens + output_tokens / 2.0
    return config_flops(model, depth, context, layer_usage=list(layer_usage),
                        head_evals_per_token=head_evals_per_token)["flops_per_token"]
