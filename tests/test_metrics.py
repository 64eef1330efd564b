"""adalas.metrics: teacher-forced NLL and top-1 agreement with full depth, FLOPs per generated token
per row and per config; and their columns in `adalas eval --metric nll,agreement` and `adalas sweep`."""
from __future__ import annotations

import json
from types import SimpleNamespace

import pytest
import torch
import torch.nn.functional as F
from conftest import tiny_llama

from adalas import AdalasForCausalLM, DepthConfig
from adalas.cost import config_flops
from adalas.metrics import parse_metrics, row_flops, summarize_columns, teacher_forced


class Tok:
    """What teacher_forced needs of a tokenizer: one token per character code, EOS 2, pad 0."""
    eos_token_id, pad_token_id = 2, 0

    def encode(self, text, add_special_tokens=False):
        return [3 + (ord(c) % 90) for c in text]


ITEMS = [SimpleNamespace(id="a", input_ids=(5, 6, 7, 8), reference="hello"),
         SimpleNamespace(id="b", input_ids=(9, 10), reference="a longer answer here")]


def _by_hand(m, item, n):
    """Per-token NLL of reference + EOS (cut to n) and the argmax at each scored position, from one
    unpadded forward with labels -100 on the prompt."""
    resp = (Tok().encode(item.reference)[:n - 1] + [2])[:n]
    ids = torch.tensor([list(item.input_ids) + resp])
    labels = ids.clone()
    labels[:, :len(item.input_ids)] = -100
    logits = m(input_ids=ids, labels=labels).logits[0, len(item.input_ids) - 1:-1].float()
    return F.cross_entropy(logits, torch.tensor(resp), reduction="none"), logits.argmax(-1)


@torch.no_grad()
def test_nll_and_agreement_by_hand():
    m = AdalasForCausalLM.from_hf(tiny_llama())
    full = teacher_forced(m, Tok(), ITEMS, ["nll", "agreement"], max_response_tokens=8)
    refs = [_by_hand(m, it, 8) for it in ITEMS]
    for got, (nll, _) in zip(full, refs):
        assert got["nll"] == pytest.approx(float(nll.mean()), abs=1e-5) and got["top1_agreement"] == 1.0
    m.set_depth(DepthConfig(mode="static_skip", skip_layers=[1, 2, 3]))
    skip = teacher_forced(m, Tok(), ITEMS, ["nll", "agreement"], max_response_tokens=8)
    for got, it, (_, full_top) in zip(skip, ITEMS, refs):
        nll, top = _by_hand(m, it, 8)
        assert got["nll"] == pytest.approx(float(nll.mean()), abs=1e-5)
        assert got["top1_agreement"] == pytest.approx(float((top == full_top).float().mean()))
    assert any(g["top1_agreement"] < 1 for g in skip) and any(a["nll"] != b["nll"] for a, b in zip(skip, full))
    assert m.depth.mode == "static_skip"  # the full-depth pass restores the depth
    assert teacher_forced(m, Tok(), ITEMS, ["nll"], 8)[0].keys() == {"nll"}


def test_parse_metrics():
    assert parse_metrics("nll,agreement") == ["nll", "agreement"]
    assert parse_metrics("agreement, rouge") == ["agreement"] and parse_metrics(None) == []
    with pytest.raises(ValueError, match=r"^--metric: unknown metric\(s\) 'ppl'; allowed: rouge, nll, agreement"):
        parse_metrics("nll,ppl")


def test_row_flops_and_pooling():
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="static_skip", skip_layers=[1, 3]))
    # prompt 6, 8 new tokens (7 decode steps): context 6 + 8 / 2 = 10
    f = row_flops(m, [7, 0, 7, 0], 7, prompt_tokens=6, output_tokens=8)
    assert f == config_flops(m, None, 10)["flops_per_token"]
    assert row_flops(m, [0] * 4, 0, 6, 1) == config_flops(m, None, 6.5)["flops_per_token"]  # no step: the route
    rows = [{"output_tokens": 5, "flops_per_token": 100.0, "nll": 1.0, "top1_agreement": 1.0},
            {"output_tokens": 1, "flops_per_token": 900.0, "nll": 3.0, "top1_agreement": 0.5},
            {"output_tokens": 3, "flops_per_token": 400.0, "nll": 2.0, "top1_agreement": 0.0}]
    out = summarize_columns(rows)
    assert out["flops_per_token"] == pytest.approx((4 * 100 + 0 * 900 + 2 * 400) / 6)  # pooled over decode steps
    assert out["nll"] == 2.0 and out["top1_agreement"] == 0.5
    assert summarize_columns([{"output_tokens": 2}]) == {}


def _run(cmd, argv, tmp_path, name):
    from adalas.cli import main
    out = tmp_path / name
    assert main([cmd, *argv, "--out", str(out), "--no-progress"]) == 0
    return out


def test_eval_and_sweep_columns(tiny_files, tmp_path, capsys):
    model, data = map(str, tiny_files)
    common = ["--model", model, "--data", data, "--max-new-tokens", "4", "--batch-size", "4"]
    out = _run("eval", [*common, "--depth", '{"mode": "static_skip", "skip_layers": [1]}', "--metric",
                        "nll,agreement"], tmp_path, "eval")
    metrics = json.loads((out / "metrics.json").read_text())
    rows = [json.loads(x) for x in (out / "per_sequence.jsonl").read_text().splitlines()]
    assert {"nll", "top1_agreement", "flops_per_token"} <= metrics.keys() and len(rows) == 7
    assert all({"nll", "top1_agreement", "flops_per_token"} <= r.keys() for r in rows)
    assert 0 <= metrics["top1_agreement"] <= 1 and metrics["nll"] > 0
    assert metrics["nll"] == pytest.approx(sum(r["nll"] for r in rows) / 7)
    assert '"top1_agreement"' in capsys.readouterr().out  # the one-line summary names them
    plain = _run("eval", common, tmp_path, "plain")  # without --metric: no teacher-forced columns
    assert "nll" not in json.loads((plain / "metrics.json").read_text())
    sweep = _run("sweep", [*common, "--budgets", "3", "--strategies", "early_exit", "--metric", "nll"], tmp_path,
                 "sweep")
    srows = [json.loads(x) for x in (sweep / "sweep.jsonl").read_text().splitlines()]
    assert [r["config_id"] for r in srows][0] == "full" and len(srows) >= 2
    assert all(r["flops_per_token"] > 0 and "nll" in r and "top1_agreement" not in r for r in srows)
    full, ee = srows[0], next(r for r in srows if r["strategy"] == "early_exit")
    assert ee["flops_per_token"] < full["flops_per_token"]
