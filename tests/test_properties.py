"""Property tests (hypothesis): random valid depth configs always run with consistent layer usage;
random invalid ones always raise ValueError; a malformed row in a JSONL data file is rejected with
its line number, and valid rows of any Unicode text load intact."""
from __future__ import annotations

import json

import pytest
import torch
from conftest import LAYERS, batch, tiny_llama, tiny_opt
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from adalas import AdalasForCausalLM, DepthConfig

L = LAYERS
common = dict(skip_prompt=st.booleans(), kv_fill=st.sampled_from(["propagate", "mask"]),
              seed=st.integers(0, 2**31 - 1))

valid_configs = st.one_of(
    st.builds(DepthConfig, mode=st.just("full"), **common),
    st.builds(DepthConfig, mode=st.just("static_skip"),
              skip_layers=st.lists(st.integers(0, L - 1), max_size=L - 1, unique=True), **common),  # keeps one
    st.builds(DepthConfig, mode=st.just("stochastic"),
              skip_probs=st.lists(st.floats(0, 1), min_size=L, max_size=L).filter(lambda p: min(p) < 1),
              **common),  # some layer may run
    st.builds(DepthConfig, mode=st.just("early_exit"), exit_after=st.integers(1, L), **common),
    st.builds(DepthConfig, mode=st.just("random_budget"), budget=st.integers(1, L), keep_first=st.booleans(),
              **common),
    st.builds(DepthConfig, mode=st.just("route"),
              route=st.lists(st.booleans(), min_size=L, max_size=L).filter(any), **common),
    st.builds(DepthConfig, mode=st.just("learned"),
              controller_layers=st.none() | st.lists(st.integers(0, L - 1), min_size=1, max_size=L, unique=True),
              controller_input=st.sampled_from(["hidden_states", "fixed", "position", "token", "initial"]),
              tau=st.floats(0.1, 5), hidden_layers=st.integers(0, 2), **common),
)

_MODELS = {}


def _model(name):
    if name not in _MODELS:
        _MODELS[name] = AdalasForCausalLM.from_hf(tiny_llama() if name == "llama" else tiny_opt())
    return _MODELS[name]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=valid_configs, family=st.sampled_from(["llama", "opt"]), n_new=st.integers(1, 4))
@torch.no_grad()
def test_valid_configs_run_with_consistent_usage(cfg, family, n_new):
    m = _model(family)
    m.set_depth(cfg)
    m.eval()
    ids, mask = batch(B=2, T=5)
    out = m(input_ids=ids, attention_mask=mask)
    assert out.logits.shape == (2, 5, 96) and torch.isfinite(out.logits[mask.bool()]).all()
    m.reset_usage()
    gen = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    assert gen.shape == (2, 5 + n_new)
    usage = m.layer_usage()
    assert len(usage) == L and all(0.0 <= u <= 1.0 for u in usage)
    route = cfg.static_route(L)
    if route is not None and n_new > 1:
        assert usage == [1.0 if r else 0.0 for r in route]
    if cfg.mode == "random_budget" and n_new > 1:
        assert abs(sum(usage) - cfg.budget) < 1e-9


invalid_kwargs = st.one_of(
    st.fixed_dictionaries({"mode": st.text(min_size=1).filter(lambda s: s not in (
        "full", "static_skip", "stochastic", "early_exit", "random_budget", "route", "learned"))}),
    st.fixed_dictionaries({"mode": st.just("static_skip"),
                           "skip_layers": st.lists(st.integers(-100, -1), min_size=1)}),
    st.fixed_dictionaries({"mode": st.just("stochastic"), "skip_probs": st.lists(
        st.floats(allow_nan=True).filter(lambda p: not 0 <= p <= 1), min_size=1)}),
    st.fixed_dictionaries({"mode": st.just("early_exit"), "exit_after": st.integers(-100, 0)}),
    st.fixed_dictionaries({"mode": st.just("random_budget"), "budget": st.integers(-100, 0)}),
    st.fixed_dictionaries({"mode": st.just("route"), "route": st.lists(st.just(False), max_size=6)}),
    st.fixed_dictionaries({"mode": st.just("learned"), "tau": st.floats(max_value=0)}),
    st.fixed_dictionaries({"mode": st.just("full"), "kv_fill": st.text().filter(lambda s: s not in ("propagate", "mask"))}),
)

out_of_range = st.one_of(
    st.fixed_dictionaries({"mode": st.just("static_skip"), "skip_layers": st.lists(st.integers(L, 99), min_size=1,
                                                                                   unique=True)}),
    st.fixed_dictionaries({"mode": st.just("early_exit"), "exit_after": st.integers(L + 1, 99)}),
    st.fixed_dictionaries({"mode": st.just("random_budget"), "budget": st.integers(L + 1, 99)}),
    st.fixed_dictionaries({"mode": st.just("route"), "route": st.lists(st.just(True), min_size=1).filter(
        lambda r: len(r) != L)}),
    st.fixed_dictionaries({"mode": st.just("stochastic"), "skip_probs": st.lists(st.floats(0, 1), min_size=0).filter(
        lambda r: len(r) != L)}),
)


@settings(max_examples=100, deadline=None)
@given(kw=invalid_kwargs)
def test_invalid_configs_raise(kw):
    with pytest.raises(ValueError):
        DepthConfig(**kw)


@settings(max_examples=60, deadline=None)
@given(kw=out_of_range)
def test_out_of_range_configs_raise_for_the_model(kw):
    m = _model("llama")
    with pytest.raises(ValueError):
        m.set_depth(DepthConfig(**kw))


# --- data rows --------------------------------------------------------------------------------

_text = st.text(max_size=12)  # any Unicode: U+2028, U+0085, NUL, ... inside JSON strings
_filled = _text.filter(str.strip)
valid_rows = st.fixed_dictionaries({"instruction": _filled, "output": _filled},
                                   optional={"input": _text, "note": _text | st.integers()})
_not_an_object = st.integers() | st.booleans() | st.floats(allow_nan=False) | st.lists(st.integers(), max_size=2)
_not_a_string = _not_an_object | st.dictionaries(st.sampled_from("ab"), st.integers(), max_size=1)
# (why the row is bad, its line in the file) from a valid row
malformed_lines = st.one_of(
    st.tuples(st.just("invalid JSON"), st.sampled_from(['{', '{"instruction": ', 'nope', '{"a": 1,}', "{'a': 1}",
                                                        '"unterminated', '[1, 2', '{"instruction": "a"} x'])),
    valid_rows.map(lambda r: ("invalid JSON", json.dumps(r, ensure_ascii=False)[:-1])),  # cut short
    st.tuples(st.just("expected a JSON object"), (_not_an_object | _text | st.none()).map(json.dumps)),
    st.tuples(valid_rows, st.sampled_from(["instruction", "output", "input"]), _not_a_string).map(
        lambda t: ("must be a string", json.dumps({**t[0], t[1]: t[2]}))),
    st.tuples(valid_rows, st.sampled_from(["instruction", "output"]), st.booleans()).map(
        lambda t: ("is missing", json.dumps({k: v for k, v in t[0].items() if k != t[1]} | ({t[1]: None} if t[2] else {})))),
    st.tuples(valid_rows, st.sampled_from(["instruction", "output"]), st.sampled_from(["", " ", "\t\u3000"])).map(
        lambda t: ("is empty", json.dumps({**t[0], t[1]: t[2]}))),
)


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=st.lists(valid_rows, min_size=1, max_size=5), blanks=st.lists(st.booleans(), min_size=6, max_size=6),
       bad=malformed_lines, at=st.integers(0, 5))
def test_malformed_data_rows_are_rejected_with_their_line(tmp_path, rows, blanks, bad, at):
    from adalas.data import load_examples
    from adalas.data_sources import DataError

    why, bad_line = bad
    lines = [json.dumps(r, ensure_ascii=False) for r in rows]
    for k in reversed(range(len(lines) + 1)):  # blank lines in between count in the numbering
        if blanks[k]:
            lines.insert(k, "")
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    loaded = load_examples(str(path))  # the valid rows alone: all of them, text intact, in order
    assert [(e.instruction, e.response, e.context) for e in loaded] == \
        [(r["instruction"], r["output"], r.get("input", "")) for r in rows]

    at = min(at, len(lines))
    lines.insert(at, bad_line)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    with pytest.raises(DataError) as err:
        load_examples(str(path))
    message = str(err.value)
    assert message.startswith(f"{path}: line {at + 1}: ") and why in message, (message, lines)
    assert "\n" not in message
