"""The depth loop computes, bit for bit, what it computed when `depth_fingerprint.json` was recorded
(before the two loops, routed and planned, became one): logits, gates, hidden states, losses,
gradients, generated tokens, every step's logits and the layer counts, over every family and depth
mode of the tests (`tests/depth_fingerprint.py`). Bytes depend on the kernels, so the comparison runs
where the recorded environment matches and is skipped elsewhere. After a change that is meant to
change numbers, record the file again on the commit before it and say so in the commit message:

    git worktree add /tmp/before <commit> && PYTHONPATH=/tmp/before/src .venv/bin/python \\
        tests/depth_fingerprint.py --out tests/depth_fingerprint.json
"""
from __future__ import annotations

import json

import pytest
from depth_fingerprint import DEPTHS, FAMILIES, FILE, cases, differences, environment, run_case

RECORDED = json.loads(FILE.read_text())
SAME_MACHINE = RECORDED["environment"] == environment()
pytestmark = pytest.mark.skipif(not SAME_MACHINE, reason=f"fingerprint recorded on {RECORDED['environment']}, "
                                                         f"this is {environment()}")


def _check(selected: list[tuple[str, str, object]]) -> None:
    got = {"cases": {name: run_case(family, cfg) for name, family, cfg in selected}}
    want = {"cases": {name: RECORDED["cases"][name] for name, _, _ in selected}}
    assert differences(want, got, exact=True) == []


def _one_per_depth() -> list:
    """Every depth mode once, the family, kv_fill and skip_prompt turning with it."""
    every = list(cases())
    families = list(FAMILIES)
    out = []
    for j, depth in enumerate(DEPTHS):
        mine = [c for c in every if c[0].split("/")[1] == depth and c[1] == families[j % len(families)]]
        out.append(mine[j % len(mine)])
    return out


def test_recorded_file_covers_every_case():
    assert sorted(RECORDED["cases"]) == sorted(name for name, _, _ in cases())


def test_fingerprint_unchanged_one_case_per_mode():
    _check(_one_per_depth())


@pytest.mark.slow
@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_fingerprint_unchanged_everywhere(family):
    _check(list(cases(families=[family])))
