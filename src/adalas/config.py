"""DepthConfig: which layers each token (or sequence) runs.

One dataclass holds every depth mode; `validate()` checks what needs no model (at construction),
`check_layers(L)` what needs the layer count (in `from_hf`, `from_pretrained`, `set_depth`).
Both raise ValueError naming the field. JSON round trip: `to_json()` / `from_json()`.

Notable:
- Each mode takes its own fields (`MODE_FIELDS`) beside the common ones (`COMMON_FIELDS`); a field of
  another mode set to anything but its default is refused, naming the field and the mode, so
  `mode="static_skip", exit_after=15` fails instead of silently meaning something else. Saved
  configs hold only non-default fields (`to_dict`), so they load as they are.
- Encodings (docs/design.md, "Depth config fields and their encodings"): a list of layers names
  0-based layer indices (`skip_layers`, each skip list of `route_pool`: skipped; `controller_layers`:
  with a controller); a route is one bool per layer, True = run (`route`); a depth is a count of
  layers run from the bottom (`exit_after`, each of `exit_layers`: "exit after k layers", 1..L).
  A new field follows one of these.
"""
from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Sequence, get_args

Mode = Literal["full", "static_skip", "stochastic", "early_exit", "random_budget", "route", "learned",
               "confidence_exit", "sequence"]
KVFill = Literal["propagate", "mask"]
Measure = Literal["softmax", "margin"]
ControllerInput = Literal["hidden_states", "fixed", "position", "token", "initial"]

MODES: tuple[str, ...] = get_args(Mode)
KV_FILLS: tuple[str, ...] = get_args(KVFill)
CONTROLLER_INPUTS: tuple[str, ...] = get_args(ControllerInput)
MEASURES: tuple[str, ...] = get_args(Measure)
DEPTH_FILE = "adalas_depth.json"  # a saved model's (or adapter's) depth config, beside its weights


@dataclass
class DepthConfig:
    """A depth mode and its parameters. Layers are 0-based."""

    mode: Mode = field(default="full", metadata={"help": f"one of {', '.join(MODES)}"})
    skip_layers: list[int] | None = field(default=None, metadata={"help": "static_skip: layers to skip"})
    skip_probs: list[float] | None = field(
        default=None, metadata={"help": "stochastic: per layer, the probability that a token skips it"})
    full_depth_share: float = field(
        default=0.0, metadata={"help": "stochastic: the share of sequences that skip nothing (drawn per sequence "
                                       "from its key), so layer-dropout training keeps seeing the full model"})
    route_pool: list[list[int]] | None = field(
        default=None, metadata={"help": "stochastic: fixed routes, each a list of layers to skip; a share of the "
                                        "sequences (route_pool_share) runs one of them, drawn per sequence"})
    route_pool_share: float = field(
        default=0.0, metadata={"help": "stochastic: the share of sequences that run a route from route_pool (after "
                                       "full_depth_share's), so one set of weights also trains the routes it serves"})
    exit_after: int | None = field(default=None, metadata={"help": "early_exit: run layers 0..exit_after-1"})
    budget: int | None = field(default=None, metadata={"help": "random_budget: layers per sequence"})
    keep_first: bool = field(default=False, metadata={"help": "random_budget: always run layer 0"})
    route: list[bool] | None = field(default=None, metadata={"help": "route: one bool per layer (True = run)"})
    controller_layers: list[int] | None = field(
        default=None, metadata={"help": "learned: layers with a controller (default: all)"})
    controller_input: ControllerInput = field(
        default="hidden_states", metadata={"help": f"learned: one of {', '.join(CONTROLLER_INPUTS)}"})
    tau: float = field(default=1.0, metadata={"help": "learned: Gumbel-softmax temperature"})
    hidden_layers: int = field(default=0, metadata={"help": "learned: hidden layers per controller MLP"})
    skip_prompt: bool = field(default=False, metadata={"help": "prompt tokens follow the route too"})
    kv_fill: KVFill = field(default="propagate", metadata={"help": "what a skipped layer stores: propagate|mask"})
    seed: int = field(default=0, metadata={"help": "seed for stochastic skips and random routes"})
    threshold: float | None = field(
        default=None, metadata={"help": "confidence_exit: a token exits once the head's confidence reaches this "
                                        "(> 1 never exits, 0 exits at the first candidate)"})
    exit_layers: list[int] | None = field(
        default=None, metadata={"help": "confidence_exit: candidate exits, 'exit after k layers' (1..L-1)"})
    measure: Measure = field(
        default="softmax",
        metadata={"help": "confidence_exit: softmax (max probability) or margin (top-1 minus top-2 probability)"})

    router_path: str | None = field(
        default=None, metadata={"help": "sequence: directory of a per-sequence router (`adalas train-router`); "
                                        "none when the model was saved with its router"})
    target_avg_layers: float | None = field(
        default=None, metadata={"help": "sequence: average depth to meet (cost weight calibrated on validation "
                                        "data); none = the router's default"})

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ---------------------------------------------------------------------------
    def validate(self) -> None:
        """Checks that need no model."""
        if self.mode not in MODES:
            raise ValueError(f"mode: unknown mode {self.mode!r}; allowed: {', '.join(MODES)}")
        for f in dataclasses.fields(self):
            owner = _MODE_OF_FIELD.get(f.name)
            if owner is not None and owner != self.mode and getattr(self, f.name) != f.default:
                raise ValueError(f"{f.name}: only mode {owner!r} takes it; got mode {self.mode!r} (leave it out or "
                                 f"at its default, {f.default!r})")
        if self.kv_fill not in KV_FILLS:
            raise ValueError(f"kv_fill: unknown value {self.kv_fill!r}; allowed: {', '.join(KV_FILLS)}")
        if self.controller_input not in CONTROLLER_INPUTS:
            raise ValueError(f"controller_input: unknown value {self.controller_input!r}; "
                             f"allowed: {', '.join(CONTROLLER_INPUTS)}")
        for name in ("skip_prompt", "keep_first"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name}: must be true or false, got {getattr(self, name)!r}")
        if not _is_int(self.seed):
            raise ValueError(f"seed: must be an integer, got {self.seed!r}")
        required = _REQUIRED.get(self.mode, ())
        for name in required:
            if getattr(self, name) is None:
                raise ValueError(f"{name}: required for mode {self.mode!r}")
        if self.skip_layers is not None:
            _check_indices("skip_layers", self.skip_layers)
        if self.controller_layers is not None:
            _check_indices("controller_layers", self.controller_layers)
        if self.skip_probs is not None:
            if not isinstance(self.skip_probs, (list, tuple)):
                raise ValueError(f"skip_probs: must be a list of probabilities, got {self.skip_probs!r}")
            for i, p in enumerate(self.skip_probs):
                if isinstance(p, bool) or not isinstance(p, (int, float)) or not (0.0 <= p <= 1.0) or math.isnan(p):
                    raise ValueError(f"skip_probs[{i}]: {p!r} is not a probability in [0, 1]")
            if self.skip_probs and all(p == 1.0 for p in self.skip_probs):
                raise ValueError(f"skip_probs: every layer is skipped with probability 1, so {_RUNS_NO_LAYER}")
        if (isinstance(self.full_depth_share, bool) or not isinstance(self.full_depth_share, (int, float))
                or not 0.0 <= self.full_depth_share <= 1.0):
            raise ValueError(f"full_depth_share: must be a share in [0, 1], got {self.full_depth_share!r}")
        if (isinstance(self.route_pool_share, bool) or not isinstance(self.route_pool_share, (int, float))
                or not 0.0 <= self.route_pool_share <= 1.0):
            raise ValueError(f"route_pool_share: must be a share in [0, 1], got {self.route_pool_share!r}")
        if self.route_pool is not None:
            if not isinstance(self.route_pool, (list, tuple)) or not self.route_pool:
                raise ValueError(f"route_pool: must be a non-empty list of skip lists, got {self.route_pool!r}")
            for k, skips in enumerate(self.route_pool):
                _check_indices(f"route_pool[{k}]", skips)
        if bool(self.route_pool_share) != (self.route_pool is not None):
            raise ValueError("route_pool_share: set it and route_pool together (the share of sequences that run "
                             "a pooled route, and the routes)")
        if self.full_depth_share + self.route_pool_share > 1.0 + 1e-9:
            raise ValueError(f"route_pool_share: full_depth_share + route_pool_share is "
                             f"{self.full_depth_share + self.route_pool_share:g}, more than every sequence")
        if self.route is not None:
            _check_route("route", self.route)
        if self.exit_after is not None and (not _is_int(self.exit_after) or self.exit_after < 1):
            raise ValueError(f"exit_after: must be an integer >= 1, got {self.exit_after!r}")
        if self.measure not in MEASURES:
            raise ValueError(f"measure: unknown value {self.measure!r}; allowed: {', '.join(MEASURES)}")
        if self.threshold is not None and (isinstance(self.threshold, bool)
                                           or not isinstance(self.threshold, (int, float))
                                           or math.isnan(self.threshold) or self.threshold < 0):
            raise ValueError(f"threshold: must be a number >= 0, got {self.threshold!r}")
        if self.exit_layers is not None:
            _check_indices("exit_layers", self.exit_layers, minimum=1)
            if not self.exit_layers:
                raise ValueError("exit_layers: must name at least one candidate exit")
        if self.budget is not None and (not _is_int(self.budget) or self.budget < 1):
            raise ValueError(f"budget: must be an integer >= 1, got {self.budget!r}")
        if self.router_path is not None and (not isinstance(self.router_path, str) or not self.router_path):
            raise ValueError(f"router_path: must be a directory path, got {self.router_path!r}")
        if self.target_avg_layers is not None and (
                isinstance(self.target_avg_layers, bool) or not isinstance(self.target_avg_layers, (int, float))
                or not self.target_avg_layers > 0 or math.isinf(self.target_avg_layers)):
            raise ValueError(f"target_avg_layers: must be a positive number, got {self.target_avg_layers!r}")
        if self.mode == "sequence" and self.skip_prompt:
            raise ValueError("skip_prompt: mode 'sequence' reads its features from the full-depth prefill; "
                             "skip_prompt must be false")
        if not isinstance(self.tau, (int, float)) or isinstance(self.tau, bool) or not self.tau > 0:
            raise ValueError(f"tau: must be a positive number, got {self.tau!r}")
        if not _is_int(self.hidden_layers) or self.hidden_layers < 0:
            raise ValueError(f"hidden_layers: must be an integer >= 0, got {self.hidden_layers!r}")

    def check_layers(self, num_layers: int) -> None:
        """Checks against the model's layer count L."""
        L = num_layers
        pooled = [(f"route_pool[{k}]", skips) for k, skips in enumerate(self.route_pool or [])]
        for name, layers in [("skip_layers", self.skip_layers), ("controller_layers", self.controller_layers), *pooled]:
            for i in layers or []:
                if i >= L:
                    raise ValueError(f"{name}: layer {i} is out of range for a model with {L} layers (0..{L - 1})")
        skip_lists = [("skip_layers", self.skip_layers)] if self.mode == "static_skip" else []
        for name, skips in skip_lists + pooled:
            if len(set(skips)) >= L:
                raise ValueError(f"{name}: skips all {L} layers of the model, so {_RUNS_NO_LAYER}")
        if self.skip_probs is not None and len(self.skip_probs) != L:
            raise ValueError(f"skip_probs: has {len(self.skip_probs)} entries; the model has {L} layers")
        if self.route is not None and len(self.route) != L:
            raise ValueError(f"route: has {len(self.route)} entries; the model has {L} layers")
        if self.exit_after is not None and self.exit_after > L:
            raise ValueError(f"exit_after: {self.exit_after} is out of range for a model with {L} layers (1..{L})")
        for k in self.exit_layers or []:
            if k >= L:
                raise ValueError(f"exit_layers: exit after {k} layers is out of range for a model with {L} layers "
                                 f"(1..{L - 1})")
        if self.budget is not None and self.budget > L:
            raise ValueError(f"budget: {self.budget} is out of range for a model with {L} layers (1..{L})")
        if self.target_avg_layers is not None and self.target_avg_layers > L:
            raise ValueError(f"target_avg_layers: {self.target_avg_layers} is more than the model's {L} layers")

    # -- serialization ------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """Only the fields that differ from their defaults, plus the mode (compact and stable)."""
        out: dict[str, Any] = {"mode": self.mode}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name != "mode" and value != f.default:
                out[f.name] = value
        return out

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "DepthConfig":
        if not isinstance(data, dict):
            raise ValueError(f"depth: expected a JSON object, got {type(data).__name__}")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"depth: unknown field(s) {', '.join(unknown)}; allowed: {', '.join(sorted(known))}")
        return cls(**data)

    @classmethod
    def from_json(cls, text: str) -> "DepthConfig":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"depth: malformed JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
        return cls.from_dict(data)

    @classmethod
    def from_dir(cls, directory: "str | Path") -> "DepthConfig | None":
        """The depth config saved in a model (or adapter) directory, None when it has none."""
        f = Path(directory) / DEPTH_FILE
        if not f.is_file():
            return None
        try:
            return cls.from_json(f.read_text())
        except ValueError as e:
            raise ValueError(f"{f}: invalid depth config: {e}") from None

    @classmethod
    def parse(cls, value: "str | dict | DepthConfig | None") -> "DepthConfig":
        """Inline JSON, a path to a JSON file, a dict, or a DepthConfig (None -> full depth)."""
        if value is None:
            return cls()
        if isinstance(value, DepthConfig):
            return value
        if isinstance(value, dict):
            return cls.from_dict(value)
        text = str(value).strip()
        if not text.startswith("{"):
            path = Path(text)
            if not path.is_file():
                raise ValueError(f"depth: {text!r} is neither inline JSON nor an existing JSON file")
            text = path.read_text()
        return cls.from_json(text)

    # -- derived --------------------------------------------------------------------------------
    def static_route(self, num_layers: int) -> list[bool] | None:
        """The fixed route of a deterministic, input-independent mode; None for the others."""
        L = num_layers
        if self.mode == "full":
            return [True] * L
        if self.mode == "static_skip":
            skipped = set(self.skip_layers or [])
            return [i not in skipped for i in range(L)]
        if self.mode == "early_exit":
            return [i < self.exit_after for i in range(L)]
        if self.mode == "route":
            return [bool(r) for r in self.route]
        return None

    @property
    def one_route_per_sequence(self) -> bool:
        """Every generated token of a sequence follows the same route (static modes, random_budget,
        sequence). Then no later token ever queries a layer that the sequence's tokens skip, so the
        keys/values a skipped layer would store are never read: `kv_fill` "propagate" and "mask" give
        the same output, and neither computes them (see `stores_skipped_kv`)."""
        return self.mode in _ONE_ROUTE_PER_SEQUENCE

    @property
    def masks_skipped_kv(self) -> bool:
        """Whether attention must hide the keys of tokens that skipped a layer: only under
        `kv_fill="mask"` in modes that decide per token. With one route per sequence every token that
        attends at a layer sees only tokens that ran it (or prompt tokens, which all ran it), so
        "mask" then runs exactly what "propagate" runs."""
        return self.kv_fill == "mask" and not self.one_route_per_sequence

    @property
    def stores_skipped_kv(self) -> bool:
        """Whether a skipped (token, layer) computes and stores its keys/values: only under
        `kv_fill="propagate"` in modes that decide per token, where a later token may run that layer."""
        return self.kv_fill == "propagate" and not self.one_route_per_sequence


# What each mode takes (docs/design.md's table). Any other field must keep its default in that mode.
COMMON_FIELDS: tuple[str, ...] = ("mode", "skip_prompt", "kv_fill", "seed")
MODE_FIELDS: dict[str, tuple[str, ...]] = {
    "full": (),
    "static_skip": ("skip_layers",),
    "stochastic": ("skip_probs", "full_depth_share", "route_pool", "route_pool_share"),
    "early_exit": ("exit_after",),
    "random_budget": ("budget", "keep_first"),
    "route": ("route",),
    "learned": ("controller_layers", "controller_input", "tau", "hidden_layers"),
    "confidence_exit": ("exit_layers", "threshold", "measure"),
    "sequence": ("router_path", "target_avg_layers"),
}
_MODE_OF_FIELD = {name: mode for mode, names in MODE_FIELDS.items() for name in names}

_ONE_ROUTE_PER_SEQUENCE = frozenset({"full", "static_skip", "early_exit", "route", "random_budget", "sequence"})
_RUNS_NO_LAYER = "generated tokens would run no layer; a depth config must keep at least one"

_REQUIRED: dict[str, tuple[str, ...]] = {
    "static_skip": ("skip_layers",),
    "stochastic": ("skip_probs",),
    "early_exit": ("exit_after",),
    "random_budget": ("budget",),
    "route": ("route",),
    "confidence_exit": ("threshold", "exit_layers"),
}


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_indices(name: str, values: Any, minimum: int = 0) -> None:
    if not isinstance(values, (list, tuple)):
        raise ValueError(f"{name}: must be a list of layer indices, got {values!r}")
    for i in values:
        if not _is_int(i) or i < minimum:
            raise ValueError(f"{name}: {i!r} is not a layer index (integer >= {minimum})")
    if len(set(values)) != len(values):
        raise ValueError(f"{name}: has duplicates: {list(values)}")


def _check_route(name: str, route: Any) -> None:
    if not isinstance(route, (list, tuple)) or not route:
        raise ValueError(f"{name}: must be a non-empty list of booleans (one per layer), got {route!r}")
    for i, r in enumerate(route):
        if not isinstance(r, bool) and r not in (0, 1):
            raise ValueError(f"{name}[{i}]: {r!r} is not a boolean")
    if not any(route):
        raise ValueError(f"{name}: runs no layer; a route must keep at least one")


def route_to_str(route: Sequence[bool]) -> str:
    """Compact form, one character per layer: "1" runs, "0" skips (e.g. "1010").

    >>> route_to_str([True, False, True, False])
    '1010'
    """
    return "".join("1" if keep else "0" for keep in route)


def route_from_str(text: str) -> list[bool]:
    """Inverse of `route_to_str`."""
    if not text or set(text) - {"0", "1"}:
        raise ValueError(f"route string must be a non-empty string of 0/1, got {text!r}")
    return [ch == "1" for ch in text]
