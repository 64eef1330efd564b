"""Per-sequence routes (mode "sequence"): labels, split, calibration, per-row routes in a batch,
grouped generation, save/load, and `adalas train-router` on a hand-made sweep (tiny Llama)."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from conftest import LAYERS, tiny_llama

from adalas import AdalasForCausalLM, DepthConfig
from adalas.config import route_from_str
from adalas.routers import SequenceController, pool_features
from adalas.sequence import (SweepTable, calibrate, calibration_table, compare_curves, evaluate_router,
                             generate_grouped, load_sweep, predict_routes, prompt_features, route_labels, split_ids,
                             train_router)

ROUTES = ["1111", "1010", "1101"]  # full, uniform to 2, uniform to 3: all keep layer 0


# -- labels, split, calibration (no model) ------------------------------------------------------
def test_doctests():
    import doctest

    from adalas.sequence import crossfit, router, table, training
    assert all(doctest.testmod(mod).failed == 0 for mod in (crossfit, router, table, training))


def test_labels_follow_the_tolerance_rule():
    scores = np.array([[0.50, 0.48, 0.30],   # 1 is within 0.05 of the best, 2 is not
                       [0.20, 0.40, 0.39],   # the best is not full depth; 2 is within 0.05 of it
                       [0.10, 0.10, 0.10],   # all equal: the cheapest
                       [0.30, 0.10, 0.00]])  # only full depth
    costs = [4, 3, 2]
    assert route_labels(scores, costs, 0.05).tolist() == [1, 2, 2, 0]
    assert route_labels(scores, costs, 0.0).tolist() == [0, 1, 2, 0]
    # relative to full depth: row 1's full score is 0.20, so everything (>= 0.15) qualifies
    assert route_labels(scores, costs, 0.05, reference="full", full_index=0).tolist() == [1, 2, 2, 0]
    assert route_labels(scores, costs, 1.0).tolist() == [2, 2, 2, 2]
    # equal costs: the higher score wins
    assert route_labels([[0.5, 0.2, 0.45]], [4, 2, 2], 0.5).tolist() == [2]
    with pytest.raises(ValueError, match="tolerance"):
        route_labels(scores, costs, -0.1)
    with pytest.raises(ValueError, match="full_index"):
        route_labels(scores, costs, 0.1, reference="full")


def test_split_is_deterministic_disjoint_and_stable():
    ids = [f"s{i:03d}" for i in range(100)]
    a, b = split_ids(ids, seed=3), split_ids(list(reversed(ids)), seed=3)
    assert {k: sorted(v) for k, v in a.items()} == {k: sorted(v) for k, v in b.items()}
    assert (len(a["train"]), len(a["val"]), len(a["test"])) == (50, 20, 30)
    assert set(a["train"]) | set(a["val"]) | set(a["test"]) == set(ids)
    assert not set(a["train"]) & set(a["test"]) and not set(a["val"]) & set(a["test"])
    assert split_ids(ids, seed=4)["test"] != a["test"]
    grown = split_ids(ids + [f"t{i}" for i in range(100)], seed=3)  # same hash order: old test ids lead
    assert set(a["test"]) <= set(grown["test"]) | set(grown["val"])
    with pytest.raises(ValueError, match="val_fraction"):
        split_ids(ids, val_fraction=1.5)


def _synthetic_controller(n_features: int = 6, seed: int = 0) -> SequenceController:
    costs = [20, 22, 24, 26, 30]
    routes = [[i < c for i in range(30)] for c in costs]
    ctrl = SequenceController(n_features, routes, feature_layer=3)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        ctrl.linear.weight.copy_(torch.randn(len(costs), n_features, generator=g) * 0.1)
        ctrl.linear.bias.copy_(torch.tensor([0.0, 0.05, 0.1, 0.15, 0.25]))
    return ctrl


@pytest.mark.parametrize("target", [20.0, 21.3, 23.0, 24.5, 26.0, 28.75, 30.0])
def test_calibration_meets_the_target_on_validation_within_one_layer(target):
    ctrl = _synthetic_controller()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(1))
    lam = calibrate(ctrl.utilities(x), ctrl.costs, target)
    avg = float(ctrl.costs[ctrl.choose(x, lam)].mean())
    assert avg <= target + 1e-9 and avg >= target - 1.0, (target, avg)
    with pytest.raises(ValueError, match="target_avg_layers"):
        calibrate(ctrl.utilities(x), ctrl.costs, 19.0)


def test_calibration_table_and_lam_lookup():
    ctrl = _synthetic_controller()
    x = torch.randn(40, 6, generator=torch.Generator().manual_seed(2))
    scores = np.random.default_rng(0).random((40, 5))
    ctrl.calibration = calibration_table(ctrl, x, scores)
    targets = [c["target_avg_layers"] for c in ctrl.calibration]
    assert targets[0] == 20.0 and targets[-1] == 30.0 and np.allclose(np.diff(targets), 0.25)
    for c in ctrl.calibration:
        assert c["target_avg_layers"] - 1.0 <= c["val_avg_layers"] <= c["target_avg_layers"] + 1e-9
    assert ctrl.lam_for(24.1) == next(c["lam"] for c in ctrl.calibration if c["target_avg_layers"] == 24.0)
    with pytest.raises(ValueError, match="target_avg_layers"):
        ctrl.lam_for(10.0)


def test_train_router_learns_an_informative_feature():
    """Sequences with feature > 0 keep full quality at 2 layers, the others need 4: the controller
    must route by the feature, and beat every input-blind choice at the same depth on test data."""
    rng = np.random.default_rng(0)
    n = 120
    f = rng.normal(size=n)
    easy = f > 0
    scores = np.stack([np.full(n, 0.5), np.where(easy, 0.5, 0.1), np.where(easy, 0.5, 0.3)], 1)
    scores = scores + rng.normal(scale=0.01, size=scores.shape)
    routes = [route_from_str(r) for r in ROUTES]
    table = SweepTable(ids=[f"s{i}" for i in range(n)], config_ids=["full", "u2", "u3"],
                       strategies=["full", "uniform_skip", "uniform_skip"], routes=routes, scores=scores,
                       layers=np.tile([4.0, 2.0, 3.0], (n, 1)), prompts={}, num_layers=4)
    x = torch.from_numpy(np.stack([f, rng.normal(size=n), rng.normal(size=n)], 1)).float()
    ctrl, info = train_router(table, {1: x, 2: x[:, 1:]}, tolerance=0.05, seed=0)
    assert ctrl.feature_layer == 1 and info["cv_loss"] < info["cv_loss_without_features"]
    test = table.rows(info and ctrl.meta["split"]["test"])
    choice = ctrl.choose(x[test], ctrl.lam_for()).numpy()
    assert ctrl.default_target < 3.5  # full quality on validation well below full depth
    assert (choice[easy[test]] == 1).mean() > 0.9 and (choice[~easy[test]] == 0).mean() > 0.9
    for objective in ("label",):
        ctrl2, _ = train_router(table, {1: x}, tolerance=0.05, objective=objective, seed=0)
        c2 = ctrl2.choose(x[test], ctrl2.lam_for(3.0)).numpy()
        assert (c2[easy[test]] == 1).mean() > 0.8


def _table(scores, layers, predictions=None):
    scores = np.asarray(scores, dtype=float)
    routes = [route_from_str(r) for r in ROUTES]
    return SweepTable(ids=[f"s{i}" for i in range(len(scores))], config_ids=["full", "u2", "u3"],
                      strategies=["full", "uniform_skip", "uniform_skip"], routes=routes, scores=scores,
                      layers=np.tile(np.asarray(layers, dtype=float), (len(scores), 1)), prompts={}, num_layers=4,
                      predictions=predictions)


def test_agreement_target_and_paired_comparison():
    from adalas.sequence.training import paired_vs_fixed_mix

    preds = [["a b c d", "a b c d", "x y"], ["a b", "c d", "a b"]]
    t = _table([[0.5, 0.5, 0.1], [0.2, 0.0, 0.2]], [4, 2, 3], preds)
    assert t.target("agreement").tolist() == [[1.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    assert t.target("score") is t.scores
    with pytest.raises(ValueError, match="target"):
        t.target("bleu")
    with pytest.raises(ValueError, match="prediction"):
        _table([[0.5, 0.5, 0.1]], [4, 2, 3]).target("agreement")
    # mean scores: full 0.35 at 4, u2 0.25 at 2, u3 0.15 at 3 (below the chord: not in the mix)
    rows = np.arange(2)
    res = paired_vs_fixed_mix(t, rows, np.array([1, 0]))  # depth 3: half u2, half full
    assert res["mix"] == ["u2", "full", 0.5] and res["avg_layers"] == 3.0
    assert math.isclose(res["diff"], np.mean([0.5 - 0.5, 0.2 - 0.1]))


# -- the router on a tiny model ---------------------------------------------------------------
def length_controller(feature_layer: int = 1, routes=ROUTES) -> SequenceController:
    """Routes by prompt length alone (the log-length feature): 3 tokens -> 1, 6 -> 0, 9 -> 2."""
    ctrl = SequenceController(2 * 32 + 1, [route_from_str(r) for r in routes], feature_layer)
    with torch.no_grad():
        ctrl.linear.weight[1, -1], ctrl.linear.bias[1] = -10.0, 15.0  # 10 (1.5 - log n)
        ctrl.linear.weight[2, -1], ctrl.linear.bias[2] = 10.0, -20.0  # 10 (log n - 2)
    return ctrl


def prompts_of_lengths(*lengths, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(3, 96, (n,), generator=g).tolist() for n in lengths]


def _left_pad(prompts):
    T = max(map(len, prompts))
    ids = torch.zeros(len(prompts), T, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, p in enumerate(prompts):
        ids[r, T - len(p):] = torch.tensor(p)
        mask[r, T - len(p):] = 1
    return ids, mask


def sequence_model(ctrl=None, **depth) -> AdalasForCausalLM:
    m = AdalasForCausalLM.from_hf(tiny_llama())
    m.sequence_controller = ctrl or length_controller()
    m.set_depth(DepthConfig(mode="sequence", **depth))
    return m.eval()


def _generate_with_logits(m, ids, mask, n_new):
    steps = []
    orig = m.logits_from_state
    m.logits_from_state = lambda h: steps.append(orig(h)) or steps[-1]
    try:
        out = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    finally:
        m.logits_from_state = orig
    return out, torch.stack(steps, 1)  # (B, n_new, V)


@torch.no_grad()
def test_each_row_runs_its_own_route_as_it_would_alone():
    m = sequence_model()
    prompts = prompts_of_lengths(3, 6, 9)
    ids, mask = _left_pad(prompts)
    n_new = 6
    out, logits = _generate_with_logits(m, ids, mask, n_new)
    assert m.router.last_state.choice.tolist() == [1, 0, 2]
    assert predict_routes(m, prompts).tolist() == [1, 0, 2]
    for r, (p, k) in enumerate(zip(prompts, [1, 0, 2])):
        alone = AdalasForCausalLM.from_hf(m.model, DepthConfig(mode="route", route=route_from_str(ROUTES[k])))
        out1, logits1 = _generate_with_logits(alone, torch.tensor([p]), torch.ones(1, len(p), dtype=torch.long), n_new)
        assert out[r, ids.shape[1]:].tolist() == out1[0, len(p):].tolist()
        torch.testing.assert_close(logits[r], logits1[0], atol=1e-5, rtol=0)
    # usage: decode steps pooled over rows, each row at its route's depth
    m.reset_usage()
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n_new, min_new_tokens=n_new)
    assert math.isclose(m.avg_layers(), (2 + 4 + 3) / 3, rel_tol=1e-9)


@pytest.mark.parametrize("batch_size", [2, 3])  # 3: the leftovers of three routes share one mixed batch
@torch.no_grad()
def test_grouped_generation_matches_mixed_batch(batch_size):
    m = sequence_model()
    prompts = prompts_of_lengths(3, 6, 9, 3, 9, seed=1)
    ids, mask = _left_pad(prompts)
    mixed = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5, min_new_tokens=5)[:, ids.shape[1]:]
    m.reset_usage()
    grouped = generate_grouped(m, prompts, batch_size=batch_size, max_new_tokens=5, min_new_tokens=5)
    assert grouped.choices == [1, 0, 2, 1, 2]
    assert grouped.sequences == mixed.tolist()
    assert math.isclose(m.avg_layers(), grouped.avg_layers) and m.depth.mode == "sequence"
    assert generate_grouped(m, {"input_ids": ids, "attention_mask": mask}, max_new_tokens=5,
                            min_new_tokens=5).sequences == mixed.tolist()


@pytest.mark.parametrize("kv_fill", ["propagate", "mask"])
@torch.no_grad()
def test_cached_generation_equals_recomputation(kv_fill):
    m = sequence_model(kv_fill=kv_fill)
    prompts = prompts_of_lengths(3, 6, 9, seed=2)
    ids, mask = _left_pad(prompts)
    n_new = 4
    out, logits = _generate_with_logits(m, ids, mask, n_new)
    T = ids.shape[1]
    labels = out.clone()
    labels[:, :T] = -100
    full_mask = torch.cat([mask, torch.ones(3, n_new, dtype=mask.dtype)], 1)
    ref = m(input_ids=out, attention_mask=full_mask, labels=labels)
    torch.testing.assert_close(logits, ref.logits[:, T - 1:T - 1 + n_new], atol=1e-5, rtol=0)
    assert ref.layer_gates[:, T:].mean(-1).mul(LAYERS).tolist() == [[2.0] * n_new, [4.0] * n_new, [3.0] * n_new]


def test_forward_with_labels_needs_routes_that_agree_below_the_feature_layer():
    m = sequence_model(length_controller(feature_layer=2))  # routes differ at layer 1
    ids, mask = _left_pad(prompts_of_lengths(3, 6))
    labels = ids.clone()
    labels[:, :-1] = -100
    with pytest.raises(ValueError, match="layer 1 needs a route"):
        m(input_ids=ids, attention_mask=mask, labels=labels)
    m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=3)  # generation has no such limit


def test_features_pass_equals_prefill_features():
    m = sequence_model()
    prompts = prompts_of_lengths(3, 6, 9, seed=3)
    feats = prompt_features(m, prompts, [0, 1, 2])
    ids, mask = _left_pad(prompts)
    full = AdalasForCausalLM.from_hf(m.model)
    hidden = full(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    for k in (0, 1, 2):
        torch.testing.assert_close(feats[k], pool_features(hidden[k], mask.bool()), atol=1e-5, rtol=0)


# -- config, save/load --------------------------------------------------------------------------
def test_sequence_config_validation(tmp_path):
    with pytest.raises(ValueError, match="skip_prompt"):
        DepthConfig(mode="sequence", skip_prompt=True)
    with pytest.raises(ValueError, match="target_avg_layers"):
        DepthConfig(mode="sequence", target_avg_layers=-1)
    with pytest.raises(ValueError, match="router_path"):
        DepthConfig(mode="sequence", router_path=3)
    m = AdalasForCausalLM.from_hf(tiny_llama())
    with pytest.raises(ValueError, match="router_path: required"):
        m.set_depth(DepthConfig(mode="sequence"))
    with pytest.raises(ValueError, match="router_path: .* has no sequence router"):
        m.set_depth(DepthConfig(mode="sequence", router_path=str(tmp_path)))
    with pytest.raises(ValueError, match="target_avg_layers"):
        m.set_depth(DepthConfig(mode="sequence", router_path=str(tmp_path), target_avg_layers=5))
    ctrl = SequenceController(3, [[True] * 6], 1)
    ctrl.save(tmp_path / "six")
    with pytest.raises(ValueError, match="6 layers; the model has 4"):
        m.set_depth(DepthConfig(mode="sequence", router_path=str(tmp_path / "six")))
    assert m.depth.mode == "full"
    cfg = DepthConfig(mode="sequence", router_path="r", target_avg_layers=3.5)
    assert DepthConfig.from_json(cfg.to_json()) == cfg


@torch.no_grad()
def test_save_load_round_trip(tmp_path):
    ctrl = length_controller()
    ctrl.calibration = [{"target_avg_layers": 2.0, "lam": 100.0}, {"target_avg_layers": 4.0, "lam": 0.0}]
    ctrl.default_target = 4.0
    ctrl.save(tmp_path / "router")
    m = AdalasForCausalLM.from_hf(tiny_llama(), DepthConfig(mode="sequence", router_path=str(tmp_path / "router")))
    ids, mask = _left_pad(prompts_of_lengths(3, 6, 9, seed=4))
    before = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5)
    m.save_pretrained(tmp_path / "model")
    saved = json.loads((tmp_path / "model" / "adalas_depth.json").read_text())
    assert saved == {"mode": "sequence"}  # the router lives in the model directory now
    loaded = AdalasForCausalLM.from_pretrained(tmp_path / "model")
    assert loaded.depth.mode == "sequence" and loaded.depth.router_path == str(tmp_path / "model")
    for k, v in m.sequence_controller.state_dict().items():
        assert torch.equal(v, loaded.sequence_controller.state_dict()[k]), k
    assert loaded.sequence_controller.calibration == ctrl.calibration
    assert torch.equal(loaded.generate(input_ids=ids, attention_mask=mask, max_new_tokens=5), before)
    # a depth override keeps the saved router; the target picks the calibrated cost weight
    shallow = AdalasForCausalLM.from_pretrained(tmp_path / "model", depth={"mode": "sequence", "target_avg_layers": 2})
    assert shallow.router.lam == 100.0
    assert predict_routes(shallow, prompts_of_lengths(3, 6, 9)).tolist() == [1, 1, 1]  # cheapest route


# -- adalas train-router on a hand-made sweep ---------------------------------------------------
def _tiny_model_dir(path):
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ["[PAD]", "[UNK]", "</s>"] + [f"w{i}" for i in range(93)]
    tk = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    tk.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, pad_token="[PAD]", unk_token="[UNK]", eos_token="</s>")
    tiny_llama().save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _hand_made_sweep(path, n=80):
    """Two topics (word sets): "easy" prompts keep their score at 2 layers, the others need 4."""
    rng = np.random.default_rng(0)
    configs = [("full", "full", 4, "1111"), ("uniform_2", "uniform_skip", 2, "1010"),
               ("uniform_3", "uniform_skip", 3, "1101"), ("random_2_0", "random_route", 2, "1100")]
    seq_rows, means = [], {c[0]: [] for c in configs}
    for i in range(n):
        easy = bool(rng.random() < 0.5)
        words = rng.integers(3, 45, size=int(rng.integers(3, 12))) + (0 if easy else 45)
        prompt = " ".join(f"w{int(w)}" for w in words)
        for cid, strategy, budget, route in configs:
            score = {"full": 0.5, "uniform_2": 0.5 if easy else 0.1, "uniform_3": 0.5 if easy else 0.3,
                     "random_2_0": 0.2}[cid] + float(rng.normal(scale=0.01))
            means[cid].append(score)
            seq_rows.append({"config_id": cid, "id": f"q{i:02d}", "prompt": prompt, "reference": "w5 w6",
                             "prediction": "w5", "rougeL": score, "layers_used": float(budget)})
    path.mkdir()
    (path / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in seq_rows))
    (path / "sweep.jsonl").write_text("".join(json.dumps(
        {"config_id": cid, "strategy": s, "budget": b, "route": r, "rougeL": float(np.mean(means[cid])),
         "avg_layers": float(b), "num_layers": 4, "generation": {"max_new_tokens": 4}}) + "\n"
        for cid, s, b, r in configs))
    return path


def test_train_router_command_and_evaluate(tmp_path):
    from adalas.cli import main

    sweep = _hand_made_sweep(tmp_path / "sweep")
    model_dir = _tiny_model_dir(tmp_path / "tiny")
    out = tmp_path / "router"
    rc = main(["train-router", "--sweep", str(sweep), "--model", str(model_dir), "--out", str(out),
               "--feature-layers", "0,1", "--tolerance", "0.05", "--speed-check", "4", "--speed-repeats", "1",
               "--save-model",
               str(tmp_path / "saved")])
    assert rc == 0
    doc = json.loads((out / "router_eval.json").read_text())
    ctrl = SequenceController.load(out)
    test_ids = ctrl.meta["split"]["test"]
    assert doc["heldout_ids"] == test_ids and len(test_ids) == 24
    assert set(doc["curves"]) == {"sequence", "uniform_skip", "random_route", "best_fixed_mix", "oracle"}
    assert doc["speed"]["n"] == 4 and doc["speed"]["sequence"]["tokens"] > 0
    assert set(doc["speed"]["sequence"]) >= {"tokens_per_s", "rougeL", "rougeL_sweep", "groups", "avg_layers"}
    # the curve is a lookup: each point's score is the mean of the chosen routes' sweep scores
    curve = evaluate_router(sweep, out)
    assert curve == doc["curves"]["sequence"]
    assert [p["avg_layers"] for p in curve] == sorted(p["avg_layers"] for p in curve)
    table = load_sweep(sweep)
    assert len(table.ids) == 80 and table.config_ids == ["full", "uniform_2", "uniform_3", "random_2_0"]
    assert any(math.isclose(p["score"], float(table.scores[table.rows(test_ids), 0].mean())) for p in curve)
    # the learned controller beats uniform skipping at matched depth on this table
    mid = [row for row in doc["matched"] if 2.2 < row["avg_layers"] < 3.8]
    assert mid and all(row["sequence"] > row["uniform_skip"] for row in mid)
    with pytest.raises(ValueError, match="used to train or calibrate"):
        evaluate_router(sweep, out, heldout_ids=ctrl.meta["split"]["train"][:3])
    assert compare_curves(sweep, out)["n"] == 24
    crossfit = doc["crossfit"]  # every sequence held out once
    assert crossfit["n"] == 80 and crossfit["folds"] == 5 and len(crossfit["paired"]) == len(crossfit["matched"])
    mid = [row for row in crossfit["matched"] if 2.2 < row["avg_layers"] < 3.8]
    assert mid and all(row["sequence"] > max(row["uniform_skip"], row["best_fixed_mix"], row["input_blind"]) + 0.03
                       for row in mid)  # reading the prompt pays here: the topic decides the depth
    loaded = AdalasForCausalLM.from_pretrained(tmp_path / "saved")
    assert loaded.depth.mode == "sequence" and loaded.sequence_controller.feature_layer == ctrl.feature_layer
