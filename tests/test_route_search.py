"""adalas.route_search and `adalas route`: which N layers to keep, teacher-forced against full depth.

Tiny random OPT, Llama and GPT-2 models (4 layers, conftest.py) on a few rows of random token ids:
the score of a route equals a direct computation (unpadded forwards, KL and top-1 by hand), the
search keeps exactly N layers, stays within its budget and never ends worse than its start (the
route of least block influence). The command runs on `make_tiny`'s model directory and data file.
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from conftest import BUILDERS, LAYERS, VOCAB

from adalas import AdalasForCausalLM, DepthConfig
from adalas.cli import main
from adalas.route_search import RouteScorer, choice_data, default_greedy_width, healed_head_input, search_route


def _rows(n: int = 5, seed: int = 3) -> list[dict]:
    """Rows of random ids: a prompt of 3-6 tokens (labels -100), a response of 2-5 tokens."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        p, r = int(torch.randint(3, 7, (1,), generator=g)), int(torch.randint(2, 6, (1,), generator=g))
        ids = torch.randint(3, VOCAB, (p + r,), generator=g).tolist()
        rows.append({"input_ids": ids, "labels": [-100] * p + ids[p:]})
    return rows


@pytest.fixture(params=["opt", "llama", "gpt2"])
def model(request):
    return AdalasForCausalLM.from_hf(BUILDERS[request.param]())


@torch.no_grad()
def _by_hand(model, rows, skip, skip_prompt=True) -> tuple[float, float]:
    """Mean over rows of the mean over response positions of KL(full || route) and top-1 agreement,
    one unpadded forward per row and depth."""
    kls, agrees = [], []
    for r in rows:
        ids = torch.tensor([r["input_ids"]])
        labels = torch.tensor([r["labels"]])
        start = sum(1 for x in r["labels"] if x == -100)
        model.set_depth(DepthConfig())
        full = F.log_softmax(model(input_ids=ids).logits[0, start - 1:-1], -1)
        model.set_depth(DepthConfig(mode="static_skip", skip_layers=list(skip), skip_prompt=skip_prompt))
        route = F.log_softmax(model(input_ids=ids, labels=labels).logits[0, start - 1:-1], -1)
        kls.append(F.kl_div(route, full, log_target=True, reduction="none").sum(-1).mean().item())
        agrees.append((route.argmax(-1) == full.argmax(-1)).float().mean().item())
    model.set_depth(DepthConfig())
    return sum(kls) / len(kls), sum(agrees) / len(agrees)


@pytest.mark.parametrize("skip_prompt", [True, False])
def test_a_candidate_score_equals_a_direct_computation(model, skip_prompt):
    rows = _rows()
    scorer = RouteScorer(model, rows, pad_token_id=0, batch_size=2, skip_prompt=skip_prompt)
    got = scorer([2, 1])
    kl, agree = _by_hand(model, rows, [1, 2], skip_prompt)
    assert got.skip == (1, 2)
    assert got.kl == pytest.approx(kl, rel=1e-4, abs=1e-7) and got.top1_agreement == pytest.approx(agree)
    assert got.kl > 0
    full = scorer([])
    assert full.kl == pytest.approx(0.0, abs=1e-6) and full.top1_agreement == 1.0
    assert model.depth.mode == "full"  # the model's own depth is restored
    assert len(scorer.block_influence) == LAYERS and all(0 <= b <= 2 for b in scorer.block_influence)


def test_the_healed_score_is_zero_at_full_depth_and_does_not_depend_on_batching(model):
    """`healed_kl`: KL after the cross-fitted linear correction of the head inputs. At full depth there is
    nothing to heal; a route's value is a KL (finite, >= 0) that the batch size does not change (the folds
    are groups of rows, not of batches); the model's depth is restored."""
    rows = _rows(n=40, seed=5)
    scorer = RouteScorer(model, rows, pad_token_id=0, batch_size=4)
    assert scorer.healed_kl([]) == pytest.approx(0.0, abs=1e-6)
    healed = scorer.healed_kl([1, 2])
    assert 0 <= healed < float("inf")
    again = RouteScorer(model, rows, pad_token_id=0, batch_size=7).healed_kl([1, 2])
    assert again == pytest.approx(healed, rel=1e-4, abs=1e-6)
    assert model.depth.mode == "full"


def test_without_a_strength_to_choose_the_healed_score_is_the_plain_kl(model):
    """No correction is always a candidate: with no ridge strengths offered, the healed KL is the route's
    plain KL, and with them it is chosen inside the fitting rows, so it cannot run far above the plain KL
    (the first version, fitted freely, scored a searched route 3.6x its plain KL)."""
    rows = _rows(n=24, seed=7)
    scorer = RouteScorer(model, rows, pad_token_id=0, batch_size=4)
    plain = scorer([1, 2]).kl
    assert scorer.healed_kl([1, 2], strengths=()) == pytest.approx(plain, rel=1e-6)
    assert scorer.healed_kl([1, 2]) <= 1.5 * plain


def test_the_healing_map_shrinks_to_the_identity_and_recovers_a_linear_distortion():
    """`healed_head_input`: infinite strength is the identity; a weak ridge on plenty of positions
    recovers y = x A + b; on positions fewer than coefficients a strong ridge stays near the identity
    where a weak one chases noise."""
    g = torch.Generator().manual_seed(0)
    d = 8
    a = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn(d, d, generator=g, dtype=torch.float64)
    b = torch.randn(d, generator=g, dtype=torch.float64)
    x = torch.randn(400, d, generator=g, dtype=torch.float64)
    y = x @ a + b
    x_new = torch.randn(50, d, generator=g, dtype=torch.float64)
    assert torch.equal(healed_head_input(x, y, x_new, float("inf")), x_new)
    assert torch.allclose(healed_head_input(x, y, x_new, 1e-9), x_new @ a + b, atol=1e-5)
    few, noise = x[:6], torch.randn(6, d, generator=g, dtype=torch.float64)  # y = x + noise: nothing to learn
    weak = healed_head_input(few, few + noise, x_new, 1e-6) - x_new
    strong = healed_head_input(few, few + noise, x_new, 100.0) - x_new
    assert strong.norm() < 0.1 * weak.norm()


def test_the_search_keeps_n_layers_within_its_budget_and_never_ends_worse_than_its_start(model):
    scorer = RouteScorer(model, _rows(), pad_token_id=0, batch_size=4)
    doc = search_route(scorer, 2, max_candidates=7, greedy_width=2)
    phases = [c["phase"] for c in doc["candidates"]]
    assert phases[0] == "block_influence" and "greedy" in phases  # uniform may be the same route
    assert {"keep", "skip", "score", "score_name", "searched", "baseline"} <= doc.keys()
    assert doc["keep"] == 2 and len(doc["skip"]) == LAYERS - 2 and doc["skip"] == sorted(set(doc["skip"]))
    assert doc["score_name"] == "kl" and doc["score"] == doc["kl"]
    assert 2 <= doc["searched"] <= 7 and len(doc["candidates"]) == doc["searched"]
    start = doc["baseline"]["block_influence"]
    assert doc["score"] <= start["score"]
    assert {"uniform", "block_influence"} == doc["baseline"].keys()
    assert doc["baseline"]["uniform"]["skip"] == [1, 3]  # oracle.uniform_skip_route(4, 2)
    bi = scorer.block_influence
    assert sorted(start["skip"], key=lambda i: (bi[i], i)) == sorted(range(LAYERS), key=lambda i: (bi[i], i))[:2]
    best = min((c for c in doc["candidates"] if len(c["skip"]) == LAYERS - 2), key=lambda c: c["kl"])
    assert doc["score"] == best["kl"]  # the best route of N layers that it scored
    assert DepthConfig.from_dict(doc["depth"]).skip_layers == doc["skip"]


def test_the_search_is_deterministic_and_stops_at_a_local_optimum():
    rows = _rows(4, seed=5)
    docs = [search_route(RouteScorer(AdalasForCausalLM.from_hf(BUILDERS["llama"]()), rows, pad_token_id=0),
                         3, max_candidates=50) for _ in range(2)]
    docs[0].pop("search_wall_s"), docs[1].pop("search_wall_s")
    assert docs[0] == docs[1]
    # 4 layers, keep 3: 4 routes in all; the greedy step scores them all, no swap is left, it stops
    assert sorted(tuple(c["skip"]) for c in docs[0]["candidates"]) == [(0,), (1,), (2,), (3,)]
    assert docs[0]["score"] == min(c["kl"] for c in docs[0]["candidates"] if len(c["skip"]) == 1)


def test_greedy_width_and_bad_arguments():
    assert default_greedy_width(30, 20, 100) == 3 and default_greedy_width(30, 29, 10) == 2
    assert default_greedy_width(30, 20, 40) == 0  # one candidate a step is no search
    scorer = RouteScorer(AdalasForCausalLM.from_hf(BUILDERS["gpt2"]()), _rows(2), pad_token_id=0)
    for keep in (0, LAYERS):
        with pytest.raises(ValueError, match=r"--layers: must be in 1\.\.3"):
            search_route(scorer, keep)
    with pytest.raises(ValueError, match="--max-candidates"):
        search_route(scorer, 2, max_candidates=1)
    with pytest.raises(ValueError, match="no response token"):
        RouteScorer(scorer.model, [{"input_ids": [5, 6], "labels": [-100, -100]}], pad_token_id=0)


def test_choice_data_refuses_evaluation_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ValueError, match="--data: required for model 'm'"):
        choice_data("m", None)
    with pytest.raises(ValueError, match="held-out rows data/synth/smollm2-135m.heldout.jsonl are not here"):
        choice_data("smollm2-135m", None)
    held = tmp_path / "data" / "synth" / "smollm2-135m.heldout.jsonl"
    held.parent.mkdir(parents=True)
    held.write_text('{"instruction": "a", "output": "b"}\n')
    assert choice_data("smollm2-135m", None) == "data/synth/smollm2-135m.heldout.jsonl"
    for data in ("builtin", "samsum.test.jsonl", str(tmp_path / "test.json")):
        with pytest.raises(ValueError, match="never on evaluation data"):
            choice_data("m", data)
    with pytest.raises(ValueError, match="--split: test"):
        choice_data("m", "some/hub-dataset", split="test")
    assert choice_data("m", "contest.jsonl") == "contest.jsonl"


# -- the command line ---------------------------------------------------------------------------

@pytest.fixture(scope="module", autouse=True)
def _no_progress_bars():
    """transformers' loading bars are not error output (test_cli_errors.py does the same)."""
    from transformers.utils import logging as hf_logging

    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    yield
    if bars:
        hf_logging.enable_progress_bar()


def _argv(model: Path, data: Path, *extra: str) -> list[str]:
    return ["route", "--model", str(model), "--data", str(data), "--layers", "2", "--max-candidates", "6",
            "--rows", "4", "--no-progress", *extra]


def test_cli_writes_the_json_it_prints(tiny_files, tmp_path, capsys):
    model, data = tiny_files
    out = tmp_path / "sub" / "route.json"
    assert main(_argv(model, data, "--out", str(out), "--prompt_depth", "full", "--batch_size", "3")) == 0
    printed = json.loads(capsys.readouterr().out)
    doc = json.loads(out.read_text())
    assert printed == doc
    assert doc["keep"] == 2 and len(doc["skip"]) == 2 and doc["searched"] <= 6 and doc["rows"] == 4
    assert doc["score"] <= doc["baseline"]["block_influence"]["score"]
    assert doc["prompt_depth"] == "full" and doc["skip_prompt"] is False and doc["data_sha256"]
    assert list(tmp_path.rglob("*.tmp")) == []


@pytest.mark.parametrize("extra, expect", [
    (("--layers", "4"), r"--layers: must be in 1\.\.3 \(the model has 4 layers\), got 4"),
    (("--layers", "0"), r"--layers: must be >= 1, got 0"),
    (("--model", "@missing"), r"model '.*no-such-dir': "),
    (("--out", "@dir"), r"--out: '.*' is a directory; pass a file path, e\.g\. '.*route\.json'"),
    (("--out", "@inside_file"), r"--out: '.*' is inside '.*taken', which is a file"),
    (("--data", "builtin"), r"--data: builtin is the built-in evaluation set; route choices are made on held-out"),
])
def test_cli_bad_input_is_one_line_exit_2_and_writes_nothing(tiny_files, tmp_path, capsys, extra, expect):
    import re

    model, data = tiny_files
    (tmp_path / "adir").mkdir()
    (tmp_path / "taken").write_text("a file\n")
    subs = {"@missing": str(tmp_path / "no-such-dir"), "@dir": str(tmp_path / "adir"),
            "@inside_file": str(tmp_path / "taken" / "route.json")}
    before = sorted(p.name for p in tmp_path.rglob("*"))
    rc = main(_argv(model, data, *[subs.get(x, x) for x in extra]))
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1, err
    assert err[0].startswith("adalas route: error: ") and re.search(expect, err[0]), err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before


@pytest.mark.slow
def test_embedded_model_smoke(tmp_path):
    """A small search on the embedded model's held-out rows (run from the repository root)."""
    root = Path(__file__).resolve().parents[1]
    data = root / "data" / "synth" / "smollm2-135m.heldout.jsonl"
    out = tmp_path / "route.json"
    assert main(["route", "--model", "smollm2-135m", "--data", str(data), "--layers", "27", "--rows", "4",
                 "--response-tokens", "8", "--max-candidates", "4", "--no-progress", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert len(doc["skip"]) == 3 and doc["searched"] <= 4
    assert doc["score"] <= doc["baseline"]["block_influence"]["score"]
