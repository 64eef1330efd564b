"""Routes as a plan names them, resolved against the model's layer count.

A plan names a route as `full`, `uniform@B` (adalas' uniform spread keeping B layers), `exit@B`
(early exit after B layers), `shipped:ALIAS` (the route a shipped adapter runs today, read from its
`adalas_depth.json`) or an explicit list of skipped layers. Why: E3's candidates and its model's
route pool must name the same routes, and the shipped routes may still change before the study runs;
a resolved route enters the training command, so a changed adapter makes a changed run (refused, not
mixed). Each route also gets the config id the real-task sweeps give it (`uniform_skip@B`,
`early_exit@B`, `route:ALIAS`), so that rows of the same config on the same model are shared.
"""
from __future__ import annotations

from typing import Any

from ..config import DepthConfig
from ..oracle import route_to_skip_layers, uniform_skip_route


def resolve(spec: Any, num_layers: int) -> list[bool]:
    """The route (one bool per layer, True = run) that `spec` names."""
    L = num_layers
    if isinstance(spec, list):
        bad = [i for i in spec if not isinstance(i, int) or isinstance(i, bool) or not 0 <= i < L]
        if bad or len(set(spec)) != len(spec):
            raise ValueError(f"route {spec!r}: expected distinct layer indices in 0..{L - 1}")
        return [i not in spec for i in range(L)]
    text = str(spec)
    if text == "full":
        return [True] * L
    kind, _, arg = text.partition("@") if "@" in text else text.partition(":")
    if kind in ("uniform", "exit"):
        if not arg.isdigit() or not 1 <= int(arg) <= L:
            raise ValueError(f"route {text!r}: expected {kind}@B with B in 1..{L}")
        b = int(arg)
        return uniform_skip_route(L, b) if kind == "uniform" else [i < b for i in range(L)]
    if kind == "shipped":
        from ..hub import adapter_aliases, adapter_dir

        directory = adapter_dir(arg)
        depth = None if directory is None else DepthConfig.from_dir(directory) or DepthConfig()
        fits = depth is not None and max(depth.skip_layers or [0]) < L and len(depth.route or [0] * L) == L
        route = depth.static_route(L) if fits else None
        if route is None:
            raise ValueError(f"route {text!r}: not a shipped adapter with a static route of {L} layers; shipped: "
                             f"{', '.join(adapter_aliases()) or 'none'}")
        return route
    raise ValueError(f"route {text!r}: expected full, uniform@B, exit@B, shipped:ALIAS or a list of skipped layers")


def skip_layers(spec: Any, num_layers: int) -> list[int]:
    return route_to_skip_layers(resolve(spec, num_layers))


def config_id(spec: Any, num_layers: int) -> str:
    """The id a sweep gives this route's config (shared with the real-task sweeps where they have it)."""
    if isinstance(spec, list):
        return "route:skip-" + "-".join(map(str, sorted(spec))) if spec else "full"
    text = str(spec)
    kind, _, arg = text.partition("@") if "@" in text else text.partition(":")
    if text == "full" or (kind in ("uniform", "exit") and int(arg) == num_layers):
        return "full"
    return {"uniform": f"uniform_skip@{arg}", "exit": f"early_exit@{arg}", "shipped": f"route:{arg}"}[kind]


def depth_config(spec: Any, num_layers: int) -> DepthConfig:
    """The depth config of that id, defined as the real-task sweeps define it (so definitions agree)."""
    cid = config_id(spec, num_layers)
    route = resolve(spec, num_layers)
    if cid == "full":
        return DepthConfig()
    if cid.startswith("uniform_skip@"):
        return DepthConfig(mode="static_skip", skip_layers=route_to_skip_layers(route))
    if cid.startswith("early_exit@"):
        return DepthConfig(mode="early_exit", exit_after=sum(route))
    return DepthConfig(mode="route", route=route)


def spec_of(route: list[bool], num_layers: int) -> Any:
    """The plainest name of a route: full, exit@B, uniform@B, shipped:ALIAS, else its skip list."""
    from ..hub import adapter_aliases

    b = sum(route)
    if all(route):
        return "full"
    if route == [i < b for i in range(num_layers)]:
        return f"exit@{b}"
    if route == uniform_skip_route(num_layers, b):
        return f"uniform@{b}"
    for alias in adapter_aliases():
        try:
            if resolve(f"shipped:{alias}", num_layers) == route:
                return f"shipped:{alias}"
        except ValueError:
            continue
    return route_to_skip_layers(route)


def sweep_config(spec: Any, num_layers: int):
    """A `SweepConfig` of the route on the sweep's own model."""
    from ..sweep import SweepConfig

    cid, depth = config_id(spec, num_layers), depth_config(spec, num_layers)
    strategy = "full" if cid == "full" else cid.split("@")[0] if "@" in cid else "route"
    return SweepConfig(cid, strategy, sum(resolve(spec, num_layers)), depth)


def resolve_depth(depth: Any, num_layers: int) -> Any:
    """A run's `depth` override with route names replaced by skip lists (`skip_layers` and each entry
    of `route_pool`); anything else unchanged."""
    if not isinstance(depth, dict):
        return depth
    out = dict(depth)
    if isinstance(out.get("skip_layers"), str):
        out["skip_layers"] = skip_layers(out["skip_layers"], num_layers)
    if isinstance(out.get("route_pool"), list):
        out["route_pool"] = [skip_layers(s, num_layers) if isinstance(s, str) else s for s in out["route_pool"]]
    return out
