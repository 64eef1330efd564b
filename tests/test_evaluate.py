"""evaluate: ROUGE as rouge-score computes it, per-sequence layer counts (a mismatch with the model's
counters is an error here), random draws that belong to the sequence, intervals, resume after a
kill, torn JSONL lines, the full-model reference, the training-data warning, and `adalas eval`.

A tiny random Llama (4 layers) with a word-level tokenizer over the test data's words is saved to a
directory once per module, so the command line runs on it too; its EOS is made likely so rows end at
different lengths (`make_tiny`, in conftest.py).
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from adalas import AdalasForCausalLM, DepthConfig
from adalas import evaluate as E
from adalas import io as adalas_io
from adalas.cli import main as cli_main

from conftest import LAYERS, ROWS, make_tiny

pytestmark = pytest.mark.filterwarnings("error::adalas.evaluate.LayerCountWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from adalas.hub import load_tokenizer

    d, data = make_tiny(tmp_path_factory.mktemp("tiny"))
    model = AdalasForCausalLM.from_pretrained(str(d))
    tok = load_tokenizer(str(d))
    return {"dir": d, "data": data, "model": model, "tok": tok, "items": E.load_items(str(data), tok)}


def _eval(tiny, out, depth=None, **kw):
    m = tiny["model"]
    m.set_depth(depth or DepthConfig())
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("batch_size", 3)
    return E.run_eval(m, tiny["tok"], kw.pop("items", tiny["items"]), out, identity={"model": "tiny"}, **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_rouge_matches_rouge_score_called_directly(tiny, tmp_path):
    from rouge_score import rouge_scorer

    scorer = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], use_stemmer=False)
    pairs = [("The cats are running fast.", "the cat is running"), ("", "anything"), ("a b c d", "a c b d"),
             ("Parks, parking and parked!", "park parks parking")]
    for pred, ref in pairs:
        direct = scorer.score(ref, pred)
        ours = E.rouge(pred, ref)
        assert ours == {**{k: direct[k].fmeasure for k in ("rouge1", "rouge2", "rougeL")},
                        "rougeL_precision": direct["rougeL"].precision, "rougeL_recall": direct["rougeL"].recall}
    assert E.rouge("running", "run")["rouge1"] == 0.0  # no stemmer

    metrics = _eval(tiny, tmp_path)
    rows = _lines(tmp_path / "per_sequence.jsonl")
    assert metrics["n"] == len(rows) == len(ROWS)
    for key in ("rouge1", "rouge2", "rougeL"):
        direct = [scorer.score(r["reference"], r["prediction"])[key].fmeasure for r in rows]
        assert [r[key] for r in rows] == direct
        assert metrics[key] == pytest.approx(sum(direct) / len(direct), abs=1e-12)
    assert any(r["rougeL"] > 0 for r in rows)  # the word-level model shares words with the references
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("rouge1", "rouge2", "rougeL", "avg_layers", "layer_usage", "n", "depth", "model", "generation",
                "versions"):
        assert key in saved
    assert set(rows[0]) >= {"id", "prompt", "reference", "prediction", "rougeL", "layers_used", "prompt_tokens",
                            "output_tokens", "stopped", "rougeL_precision", "rougeL_recall"}


def test_precision_recall_length_and_stop_share_separate_content_from_length(tiny, tmp_path):
    metrics = _eval(tiny, tmp_path)
    rows = _lines(tmp_path / "per_sequence.jsonl")
    for r in rows:
        direct = E.rouge(r["prediction"], r["reference"])
        assert (r["rougeL_precision"], r["rougeL_recall"]) == (direct["rougeL_precision"], direct["rougeL_recall"])
        if r["output_tokens"] < 6:  # below the cap (6 new tokens): it ended on EOS
            assert r["stopped"]
    stops = [r["stopped"] for r in rows]
    assert 0 < sum(stops) < len(stops)  # the tiny model stops on some rows and runs to the cap on others
    assert metrics["stop_share"] == pytest.approx(sum(stops) / len(stops))
    for key in ("rougeL_precision", "rougeL_recall"):
        assert metrics[key] == pytest.approx(sum(r[key] for r in rows) / len(rows))
    # rows written before these columns existed: P/R come from the text, the stop share is unknown
    old = [{k: v for k, v in r.items() if k not in ("stopped", "rougeL_precision", "rougeL_recall")} for r in rows]
    again = E.summarize(old, tiny["model"].num_layers, [True] * tiny["model"].num_layers)
    assert again["rougeL_recall"] == pytest.approx(metrics["rougeL_recall"]) and again["stop_share"] is None


@pytest.mark.parametrize("depth,expected", [
    (DepthConfig(mode="early_exit", exit_after=3), 3.0),
    (DepthConfig(mode="static_skip", skip_layers=[1, 2]), 2.0),
    (DepthConfig(mode="random_budget", budget=2, seed=3), 2.0),
])
def test_layers_used_of_fixed_depth_routes(tiny, tmp_path, depth, expected):
    metrics = _eval(tiny, tmp_path, depth)
    rows = _lines(tmp_path / "per_sequence.jsonl")
    assert {r["layers_used"] for r in rows} == {expected}
    assert metrics["avg_layers"] == pytest.approx(expected)
    assert len({r["output_tokens"] for r in rows}) > 1  # rows ended at different lengths


@pytest.mark.parametrize("depth", [
    DepthConfig(mode="stochastic", skip_probs=[0.0, 0.5, 0.3, 0.6], seed=1),
    DepthConfig(mode="learned", controller_input="hidden_states"),
])
def test_per_row_counts_of_input_dependent_routes_match_the_counters(tiny, tmp_path, depth):
    """One batch: the pooled per-row counts equal the model's counters; for the deterministic learned
    mode each row's count also equals what the counters say when that row runs alone."""
    m = tiny["model"]
    if depth.mode == "learned":
        m.set_depth(depth)
        torch.manual_seed(1)
        for c in m.controllers.values():  # random controllers that skip some layers for some tokens
            torch.nn.init.normal_(c.net[-1].weight, std=3.0)
    metrics = _eval(tiny, tmp_path, depth, batch_size=len(ROWS))
    assert metrics["layer_usage"] == pytest.approx(m.layer_usage(), abs=1e-12)
    rows = _lines(tmp_path / "per_sequence.jsonl")
    assert all(len(r["layer_runs"]) == LAYERS for r in rows)
    assert len({round(r["layers_used"], 6) for r in rows}) > 1  # rows differ
    if depth.mode == "learned":
        by_id = {it.id: it for it in tiny["items"]}
        for r in rows:
            if r["output_tokens"] > 1:
                E.generate_batch(m, tiny["tok"], [by_id[r["id"]]], 6)
                assert m.avg_layers() == pytest.approx(r["layers_used"], abs=1e-9)


@pytest.fixture(scope="module")
def tiny8(tmp_path_factory):
    """The tiny model with 8 layers (70 routes of 4 layers: room for distinct draws)."""
    from adalas.hub import load_tokenizer

    d, data = make_tiny(tmp_path_factory.mktemp("tiny8"), layers=8)
    tok = load_tokenizer(str(d))
    return {"dir": d, "data": data, "model": AdalasForCausalLM.from_pretrained(str(d)), "tok": tok,
            "items": E.load_items(str(data), tok)}


@pytest.mark.parametrize("depth", [DepthConfig(mode="random_budget", budget=4, seed=3),
                                   DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.4] * 7, seed=3),
                                   DepthConfig(mode="stochastic", skip_probs=[0.0] + [0.4] * 7, seed=3,
                                               full_depth_share=0.2, route_pool=[[1, 2], [5, 6, 7]],
                                               route_pool_share=0.4)])
def test_random_draws_belong_to_the_sequence(tiny8, tmp_path, depth):
    """The same sequence draws the same route (random_budget: the `route` column) or the same per-token
    skips (stochastic: `layer_runs`) at batch sizes 1, 3 and 7 and in reverse order, and generates the
    same text; distinct prompts draw independently (more distinct routes than rows in a batch)."""
    runs = {}
    for name, bs, items in (("b1", 1, tiny8["items"]), ("b3", 3, tiny8["items"]), ("b7", 7, tiny8["items"]),
                            ("rev", 2, tiny8["items"][::-1])):
        _eval(tiny8, tmp_path / name, depth, batch_size=bs, items=items)
        runs[name] = {r["id"]: r for r in _lines(tmp_path / name / "per_sequence.jsonl")}
    key = "route" if depth.mode == "random_budget" else "layer_runs"
    for name, rows in runs.items():
        assert {i: (r[key], r["prediction"]) for i, r in rows.items()} == \
            {i: (r[key], r["prediction"]) for i, r in runs["b1"].items()}, name
    if depth.mode == "random_budget":
        routes = [r["route"] for r in runs["b3"].values()]
        assert all(len(x) == 8 and x.count("1") == 4 for x in routes)
        assert len(set(routes)) >= 5  # 7 prompts; keyed on the row's place, batch 3 gave at most 3
    else:
        assert "route" not in next(iter(runs["b1"].values()))  # decided per token: no one route


def test_rouge_interval_in_metrics(tiny, tmp_path):
    from adalas.stats import bootstrap_ci

    metrics = _eval(tiny, tmp_path, DepthConfig(mode="early_exit", exit_after=3))
    rows = _lines(tmp_path / "per_sequence.jsonl")
    assert metrics["rougeL_ci95"] == bootstrap_ci([r["rougeL"] for r in rows])
    lo, hi = json.loads((tmp_path / "metrics.json").read_text())["rougeL_ci95"]
    assert lo <= metrics["rougeL"] <= hi
    assert {r["route"] for r in rows} == {"1110"}  # a static route is the route column too


def test_sequence_mode_counts_the_routes_generate_chose(tiny, tmp_path):
    """Per-row counts come from the routes generate() chose: they equal the model's counters (an error
    otherwise) and each row's route when it runs alone. The candidate routes differ below the feature
    layer, where a teacher-forced forward could not even decide; the controller reads the last prompt
    token's state, which a forward that counts the last generated token as prompt would change."""
    from adalas.routers import SequenceController
    from adalas.sequence import prompt_features

    m = tiny["model"]
    routes = [[True, True, True, True], [True, False, True, True], [True, True, False, False]]
    ctrl = SequenceController(2 * 32 + 1, routes, feature_layer=2)
    feats = prompt_features(m, [it.input_ids for it in tiny["items"]], [2])[2]  # (N, F)
    with torch.no_grad():  # standardized features, random weights: the rows' routes differ
        ctrl.feature_mean.copy_(feats.mean(0))
        ctrl.feature_scale.copy_(feats.std(0).clamp(min=1e-6))
        torch.manual_seed(0)
        ctrl.linear.weight.normal_(std=1.0)
    m.sequence_controller = ctrl
    depth = DepthConfig(mode="sequence")
    try:
        metrics = _eval(tiny, tmp_path, depth, batch_size=len(ROWS))
        rows = _lines(tmp_path / "per_sequence.jsonl")
        assert len({r["route"] for r in rows}) > 1  # rows took different routes
        assert metrics["layer_usage"] == pytest.approx(m.layer_usage(), abs=1e-12)
        by_id = {it.id: it for it in tiny["items"]}
        for r in rows:
            steps = r["output_tokens"] - 1
            assert r["layer_runs"] == [steps * int(c) for c in r["route"]]
            E.generate_batch(m, tiny["tok"], [by_id[r["id"]]], 6)  # alone
            assert "".join("1" if x else "0" for x in m.router.last_state.routes[0].tolist()) == r["route"]
    finally:
        m.set_depth(DepthConfig())
        m.sequence_controller = None


def test_a_count_mismatch_is_an_error_in_tests(tiny):
    m = tiny["model"]
    m.set_depth(DepthConfig(mode="early_exit", exit_after=3))
    E.generate_batch(m, tiny["tok"], tiny["items"][:2], 4)
    with pytest.raises(E.LayerCountWarning):
        E._check_against_counters(m, torch.tensor([[1, 1, 1, 1], [1, 1, 1, 1]]), torch.tensor([1, 1]))
    m.set_depth(DepthConfig())


def test_eval_warns_when_the_model_was_trained_on_the_data(tiny, tmp_path, capsys):
    import shutil

    model = tmp_path / "trained"
    shutil.copytree(tiny["dir"], model)
    data = str(tiny["data"])
    assert E.training_data_warning(str(model), data) is None  # no record: nothing to say
    record = model / E.TRAINING_FILE
    record.write_text(json.dumps({"data": "elsewhere.jsonl", "data_sha256": E.data_sha256(data)}))
    assert "trained on" in E.training_data_warning(str(model), data)  # the same bytes under another name
    record.write_text(json.dumps({"data": "builtin", "data_sha256": E.data_sha256("builtin")}))
    assert E.training_data_warning(str(model), data) is None
    assert "evaluated on ('builtin')" in E.training_data_warning(str(model), "builtin")
    record.write_text(json.dumps({"data": "tatsu-lab/alpaca", "data_sha256": None, "split": "train"}))
    assert E.training_data_warning(str(model), "tatsu-lab/alpaca", "test") is None  # held-out split
    assert E.training_data_warning(str(model), "tatsu-lab/alpaca", "train") is not None
    record.write_text(json.dumps({"data": data, "data_sha256": E.data_sha256(data)}))
    assert cli_main(["eval", "--model", str(model), "--data", data, "--limit", "2", "--max-new-tokens", "2",
                     "--out", str(tmp_path / "out"), "--no-progress"]) == 0
    assert "its scores are not held-out numbers" in capsys.readouterr().err


def test_same_command_twice_gives_identical_rows(tiny, tmp_path):
    _eval(tiny, tmp_path / "a")
    _eval(tiny, tmp_path / "b")
    _eval(tiny, tmp_path / "a")  # a rerun over finished work changes nothing
    assert (tmp_path / "a/per_sequence.jsonl").read_bytes() == (tmp_path / "b/per_sequence.jsonl").read_bytes()
    assert json.loads((tmp_path / "a/metrics.json").read_text())["rougeL"] == \
        json.loads((tmp_path / "b/metrics.json").read_text())["rougeL"]


def test_resume_after_a_kill_writes_each_row_once(tiny, tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    _eval(tiny, fresh, batch_size=2)
    expected = (fresh / "per_sequence.jsonl").read_bytes()

    killed = tmp_path / "killed"
    real, calls = E.generate_batch, []

    def dies_on_third_batch(*a, **kw):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(E, "generate_batch", dies_on_third_batch)
    with pytest.raises(KeyboardInterrupt):
        _eval(tiny, killed, batch_size=2)
    assert len(_lines(killed / "per_sequence.jsonl")) == 4 and not (killed / "metrics.json").exists()
    monkeypatch.setattr(E, "generate_batch", real)
    _eval(tiny, killed, batch_size=2)
    assert (killed / "per_sequence.jsonl").read_bytes() == expected  # same batches, same rows, same order

    # a torn last line (killed during a write) is cut and its row generated again
    path = killed / "per_sequence.jsonl"
    data = path.read_bytes()
    path.write_bytes(data[: len(data) - 40])
    _eval(tiny, killed, batch_size=2)
    rows = _lines(path)
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for r in ROWS)
    assert sorted(map(json.dumps, rows)) == sorted(map(json.dumps, _lines(fresh / "per_sequence.jsonl")))


def test_a_grown_run_only_adds_the_new_sequences(tiny, tmp_path, monkeypatch):
    """Run on the first half, then on all: no duplicates; with batch size 1 the rows equal a fresh run's."""
    _eval(tiny, tmp_path / "all", batch_size=1)
    _eval(tiny, tmp_path / "grown", batch_size=1, items=tiny["items"][:3])
    seen = []
    real = E.generate_batch
    monkeypatch.setattr(E, "generate_batch", lambda m, t, items, *a: seen.extend(i.id for i in items) or real(m, t, items, *a))
    metrics = _eval(tiny, tmp_path / "grown", batch_size=1)
    assert sorted(seen) == sorted(it.id for it in tiny["items"][3:])
    rows = _lines(tmp_path / "grown/per_sequence.jsonl")
    assert metrics["n"] == len(rows) == len({r["id"] for r in rows}) == len(ROWS)
    fresh = {r["id"]: r for r in _lines(tmp_path / "all/per_sequence.jsonl")}
    assert all(r == fresh[r["id"]] for r in rows)


def test_read_jsonl_keeps_a_complete_last_line_and_refuses_a_bad_middle_line(tmp_path):
    p = tmp_path / "x.jsonl"
    p.write_text('{"a": 1}\n{"a": 2}')  # complete, no final newline
    assert adalas_io.read_jsonl(p, repair=True) == [{"a": 1}, {"a": 2}]
    assert p.read_text().endswith("}\n")
    p.write_text('{"a": 1}\n{"a": 2')  # torn
    assert adalas_io.read_jsonl(p) == [{"a": 1}] and p.read_text().endswith("2")  # reading alone changes nothing
    assert adalas_io.read_jsonl(p, repair=True) == [{"a": 1}] and p.read_text() == '{"a": 1}\n'
    p.write_text('{"a": 1}\nnot json\n{"a": 3}\n')
    with pytest.raises(ValueError, match=r"x.jsonl:2"):
        adalas_io.read_jsonl(p)


def test_rows_holding_unicode_line_breaks_read_back_whole(tmp_path):
    """dumps_row leaves U+2028, U+0085, ... unescaped (a model may generate them): lines end at \\n only."""
    store = adalas_io.RowStore(tmp_path, "rows.jsonl", ("id",))
    rows = [{"id": "a", "prediction": "one\u2028two\x85three\x1cfour\u2029"}, {"id": "b", "prediction": "x"}]
    store.append(rows)
    assert adalas_io.read_jsonl(tmp_path / "rows.jsonl", repair=True) == rows
    assert adalas_io.RowStore(tmp_path, "rows.jsonl", ("id",)).rows() == {("a",): rows[0], ("b",): rows[1]}


def test_reference_full_scores_against_the_full_model_and_is_cached(tiny, tmp_path, monkeypatch):
    metrics = _eval(tiny, tmp_path, reference="full")
    refs = {r["id"]: r["prediction"] for r in _lines(tmp_path / "full_reference.jsonl")}
    rows = _lines(tmp_path / "per_sequence.jsonl")
    assert all(r["reference"] == refs[r["id"]] == r["prediction"] for r in rows)
    assert metrics["rouge1"] == pytest.approx(sum(1.0 if r["prediction"].strip() else 0.0 for r in rows) / len(rows))
    # another depth in another directory: the reference is generated there once; a rerun generates nothing
    ee = tmp_path / "ee"
    _eval(tiny, ee, DepthConfig(mode="early_exit", exit_after=2), reference="full")
    assert {r["id"]: r["prediction"] for r in _lines(ee / "full_reference.jsonl")} == refs
    monkeypatch.setattr(E, "generate_batch", lambda *a, **k: pytest.fail("regenerated a cached row"))
    _eval(tiny, ee, DepthConfig(mode="early_exit", exit_after=2), reference="full")


def test_per_row_layer_counts_of_stochastic_skips_with_skip_prompt(tiny, tmp_path):
    """With skip_prompt=True the teacher-forced forward that counts each row's layers draws the skips
    generation drew (both keyed on the prompt): the rows agree with the model's counters (a
    LayerCountWarning, an error here, otherwise) and with the usage pooled over rows."""
    depth = DepthConfig(mode="stochastic", skip_probs=[0.0, 0.5, 0.5, 0.5], seed=4, skip_prompt=True)
    metrics = _eval(tiny, tmp_path, depth)
    rows = _lines(tmp_path / "per_sequence.jsonl")
    steps = sum(r["output_tokens"] - 1 for r in rows)
    usage = [sum(r["layer_runs"][i] for r in rows) / steps for i in range(LAYERS)]
    assert usage == pytest.approx(metrics["layer_usage"]) and 0 < metrics["avg_layers"] < LAYERS


def test_eval_resume_keys_hold_the_batch_size_and_the_weights(tiny, tmp_path):
    """An eval directory made at batch size 3 refuses rows at 2 (other batch companions); one made from
    a model directory refuses the same path with other weights; settings recorded before these keys
    resume, then record them."""
    import shutil

    import torch

    items = tiny["items"][:4]
    _eval(tiny, tmp_path / "b", items=items, batch_size=3)
    with pytest.raises(ValueError, match=r"holds results made with batch_size=3, not 2"):
        _eval(tiny, tmp_path / "b", items=items, batch_size=2)

    model_dir = tmp_path / "model"
    shutil.copytree(tiny["dir"], model_dir)
    model = AdalasForCausalLM.from_pretrained(str(model_dir))
    out = tmp_path / "w"

    def run():
        return E.run_eval(model, tiny["tok"], items, out, max_new_tokens=3, batch_size=2,
                          identity={"model": str(model_dir)})

    run()
    doc = json.loads((out / "settings.json").read_text())
    assert doc["settings"]["model_sha256"] and doc["settings"]["dtype"] == "float32"
    old = {**doc, "settings": {k: v for k, v in doc["settings"].items()
                               if k not in ("batch_size", "device", "dtype", "model_sha256")}}
    (out / "settings.json").write_text(json.dumps(old))  # as recorded before these keys
    run()
    assert json.loads((out / "settings.json").read_text()) == doc
    with torch.no_grad():
        model.model.lm_head.weight.mul_(1.5)
    model.save_pretrained(model_dir)  # retrained into the same directory
    with pytest.raises(ValueError, match=r"holds results made with model_sha256="):
        run()


def test_eval_command_line(tiny, tmp_path, capsys):
    d, data = str(tiny["dir"]), str(tiny["data"])
    out = tmp_path / "cli"
    argv = ["eval", "--model", d, "--data", data, "--depth", '{"mode": "early_exit", "exit_after": 2}',
            "--max_new_tokens", "5", "--limit", "4", "--batch-size", "2", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["n"] == 4 and metrics["avg_layers"] == 2.0 and metrics["depth"]["exit_after"] == 2
    assert metrics["generation"]["max_new_tokens"] == 5
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["n"] == 4
    recipe = tmp_path / "r.yaml"
    recipe.write_text(f"model: {d}\ndepth: {{mode: static_skip, skip_layers: [1]}}\nmax_new_tokens: 3\n"
                      "batch_size: 1\nlearning_rate: 1.0e-4\n")  # a training field: not eval's, not used
    assert cli_main(["eval", "--data", data, "--recipe", str(recipe), "--limit", "2", "--batch-size", "2",
                     "--out", str(tmp_path / "rec"), "--no-progress"]) == 0
    rec = json.loads((tmp_path / "rec/metrics.json").read_text())
    assert (rec["n"], rec["avg_layers"], rec["generation"]["max_new_tokens"]) == (2, 3.0, 3)
    assert rec["generation"]["batch_size"] == 2 and rec["recipe"] == str(recipe)  # the command line wins
    # bad input: one line and exit code 2
    assert cli_main([*argv[:9], "--batch-size", "0", "--out", str(tmp_path / "bad")]) == 2
    assert cli_main(["eval", "--model", d, "--data", data, "--depth", "{bad json", "--out", str(tmp_path / "b")]) == 2
    assert cli_main([*argv[:7], "--batch-size", "2", "--max-new-tokens", "6", "--out", str(out)]) == 2  # other settings
    err = capsys.readouterr().err
    assert "adalas eval: error: --batch-size" in err and "malformed JSON" in err and "max_new_tokens=5" in err


@pytest.mark.slow
def test_embedded_model_eval(tmp_path):
    from adalas.hub import load_tokenizer

    m = AdalasForCausalLM.from_pretrained("smollm2-135m", depth=DepthConfig(mode="early_exit", exit_after=24))
    tok = load_tokenizer("smollm2-135m")
    items = E.load_items("builtin", tok, limit=4)
    assert items[0].prompt.startswith("<|im_start|>")  # auto: the chat template
    metrics = E.run_eval(m, tok, items, tmp_path, max_new_tokens=8, batch_size=4)
    assert metrics["avg_layers"] == 24.0 and metrics["n"] == 4
    assert 0.0 <= metrics["rougeL"] <= 1.0
