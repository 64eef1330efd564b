"""`adalas bench decode` end to end on the tiny model directory (seconds, not the slow embedded run):
one JSON document whose half-skip pair under propagate and under mask run the same computation."""
from __future__ import annotations

import json

from adalas.commands import bench


def test_bench_decode_on_a_tiny_model(tiny_files, tmp_path, capsys):
    out = tmp_path / "decode.json"
    assert bench.main(["decode", "--model", str(tiny_files[0]), "--batch-sizes", "2", "--new-tokens", "3",
                       "--repeats", "1", "--no-redundant", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert json.loads(capsys.readouterr().out) == doc
    sec = doc["batches"]["2"]
    assert "half_skip_propagate_vs_mask" in sec["ratios"] and all(sec["greedy_identical"].values())
    assert sec["greedy_identical"]["half_skip_propagate=half_skip_kv_mask"]
    kv = doc["memory"]["kv_cache_bytes"]["batch 2"]  # the same compact cache under either kv_fill
    assert kv["adalas_half_skip"] == kv["adalas_half_skip_kv_mask"] < kv["adalas_full"]
