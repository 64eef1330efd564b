"""sweep: configs, sharding across ranks (same rows as one rank), resume, the full-model reference,
learned checkpoints, the oracle over a sweep directory, and the commands. Tiny model of test_evaluate."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from adalas import AdalasForCausalLM, DepthConfig
from adalas import evaluate as E
from adalas import sweep as S
from adalas.cli import main as cli_main
from adalas.oracle import random_routes, run_oracle, uniform_skip_route
from adalas.run_settings import check_settings

from conftest import LAYERS, ROWS, make_tiny

pytestmark = pytest.mark.filterwarnings("error::adalas.evaluate.LayerCountWarning")


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from adalas.hub import load_tokenizer

    d, data = make_tiny(tmp_path_factory.mktemp("tiny"))
    tok = load_tokenizer(str(d))
    return {"dir": d, "data": data, "model": AdalasForCausalLM.from_pretrained(str(d)), "tok": tok,
            "items": E.load_items(str(data), tok)}


def _sweep(tiny, out, configs=None, **kw):
    configs = configs or S.build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=0)
    kw.setdefault("max_new_tokens", 5)
    kw.setdefault("batch_size", 2)
    return S.run_sweep(tiny["model"], tiny["tok"], kw.pop("items", tiny["items"]), configs, out, model_id="tiny", **kw)


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_configs_and_budgets():
    import doctest
    assert doctest.testmod(S).failed == 0
    assert S.parse_budgets("20-24:2,27,30", 30) == [20, 22, 24, 27, 30]
    assert S.parse_budgets("24,20-21", 30) == [20, 21, 24]
    assert S.parse_budgets(None, 30) == [20, 24, 27]
    for bad in ("0", "31", "a", "24-20"):
        with pytest.raises(ValueError, match="budgets"):
            S.parse_budgets(bad, 30)
    with pytest.raises(ValueError, match="strategies"):
        S.parse_strategies("early_exit,skip")
    cfgs = S.build_configs(30, budgets=[24, 30], routes_per_budget=3, seed=5, keep_first=True, routes=["1" * 29 + "0"])
    ids = [c.config_id for c in cfgs]
    assert ids == ["full", "early_exit@24", "uniform_skip@24", "random_route@24#0", "random_route@24#1",
                   "random_route@24#2", "route#0"]  # budget 30 is the full model
    by = {c.config_id: c for c in cfgs}
    assert by["uniform_skip@24"].depth.static_route(30) == uniform_skip_route(30, 24)
    assert by["early_exit@24"].depth.static_route(30) == [i < 24 for i in range(30)]
    drawn = [by[f"random_route@24#{k}"].depth.route for k in range(3)]
    assert drawn == random_routes(30, 24, 3, 5, keep_first=True) and all(r[0] and sum(r) == 24 for r in drawn)
    assert by["route#0"].strategy == "route" and by["route#0"].budget == 29
    with pytest.raises(ValueError, match="routes"):
        S.build_configs(30, budgets=[24], routes=["1101"])


def test_sweep_rows_and_oracle(tiny, tmp_path):
    rows = _sweep(tiny, tmp_path)
    ids = [r["config_id"] for r in rows]
    assert ids == ["full", "early_exit@3", "uniform_skip@3", "random_route@3#0", "early_exit@2", "uniform_skip@2",
                   "random_route@2#0"]
    assert _lines(tmp_path / "sweep.jsonl") == rows
    per_seq = _lines(tmp_path / "per_sequence.jsonl")
    assert len(per_seq) == len(rows) * len(ROWS)
    assert len({(r["config_id"], r["id"]) for r in per_seq}) == len(per_seq)
    for r in rows:
        mine = [p for p in per_seq if p["config_id"] == r["config_id"]]
        assert r["n"] == len(ROWS) and r["rougeL"] == pytest.approx(sum(p["rougeL"] for p in mine) / len(mine))
        assert r["avg_layers"] == r["budget"] == r["route"].count("1") and r["model"] == "tiny"
        assert {p["layers_used"] for p in mine} == {float(r["budget"])}
    assert rows[0]["route"] == "1111" and rows[0]["num_layers"] == LAYERS
    doc = run_oracle(tmp_path)
    assert doc["n_sequences"] == len(ROWS) and doc["full_score"] == pytest.approx(rows[0]["rougeL"])
    assert (tmp_path / "oracle.json").is_file()
    # the same command again: nothing to do, identical bytes
    before = {f: (tmp_path / f).read_bytes() for f in ("sweep.jsonl", "per_sequence.jsonl")}
    _sweep(tiny, tmp_path)
    assert before == {f: (tmp_path / f).read_bytes() for f in before}


def test_a_sweep_prefills_each_prompt_once_per_model_and_makes_the_rows_of_configs_run_alone(tiny, tmp_path,
                                                                                               monkeypatch):
    """The configs whose prompt runs at full depth share each batch's prefill (`adalas.prompt_reuse`): the
    rows are those of a sweep that prefills for every config, byte for byte."""
    configs = [*S.build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=0, null_k=3),
               S.SweepConfig("skip_prompt", "route", 2, DepthConfig(mode="route", route=[True, False, True, False],
                                                                      skip_prompt=True))]
    served = []

    class Counted(S.PromptReuse):
        def prefill(self, *a, **kw):
            before = self.served
            h = super().prefill(*a, **kw)
            served.append(self.served - before)
            return h

    monkeypatch.setattr(S, "PromptReuse", Counted)
    _sweep(tiny, tmp_path / "shared", configs)
    batches = -(-len(ROWS) // 2)
    assert len(served) == batches * (len(configs) - 1) and sum(served) == batches * (len(configs) - 2)

    _sweep(tiny, tmp_path / "alone", configs, reuse_prompts=False)
    for f in ("sweep.jsonl", "per_sequence.jsonl"):
        assert (tmp_path / "shared" / f).read_bytes() == (tmp_path / "alone" / f).read_bytes()


def test_two_ranks_give_the_same_rows_as_one(tiny, tmp_path):
    one = tmp_path / "one"
    _sweep(tiny, one)
    two = tmp_path / "two"
    assert _sweep(tiny, two, rank=1, world_size=2) is None  # rank 1 first: waits for rank 0
    assert not (two / "sweep.jsonl").exists()
    assert _sweep(tiny, two, rank=0, world_size=2) is not None  # the last to finish merges
    for f in ("sweep.jsonl", "per_sequence.jsonl"):
        assert (two / f).read_bytes() == (one / f).read_bytes()
    assert not list((two / "parts").glob("*.jsonl"))


@pytest.mark.slow  # two fresh interpreters importing torch: ~15 s on an idle machine
def test_two_rank_processes_in_parallel_via_env(tiny, tmp_path):
    """`adalas sweep` under RANK / WORLD_SIZE, two processes at once: the merged rows equal one rank's."""
    base = [sys.executable, "-m", "adalas", "sweep", "--model", str(tiny["dir"]), "--data", str(tiny["data"]),
            "--budgets", "2", "--routes-per-budget", "1", "--max-new-tokens", "4", "--batch-size", "2",
            "--no-progress", "--out"]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(base + [str(tmp_path / "two")], env={**env, "RANK": str(r), "WORLD_SIZE": "2"},
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for r in range(2)]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    assert sum("done; the last rank" in o for o in outs) == 1  # exactly one merged
    assert subprocess.run(base + [str(tmp_path / "one")], env=env, capture_output=True).returncode == 0
    for f in ("sweep.jsonl", "per_sequence.jsonl"):
        assert (tmp_path / "two" / f).read_bytes() == (tmp_path / "one" / f).read_bytes()


def test_killed_and_grown_sweeps_resume_without_duplicates(tiny, tmp_path, monkeypatch):
    fresh = tmp_path / "fresh"
    _sweep(tiny, fresh)
    out = tmp_path / "resumed"
    real, calls = E.generate_batch, []

    def flaky(*a, **kw):
        calls.append(1)
        if len(calls) == 9:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(E, "generate_batch", flaky)
    with pytest.raises(KeyboardInterrupt):
        _sweep(tiny, out)
    # the configs of one model go batch by batch (each prompt prefilled once): none has finished yet
    assert not (out / "sweep.jsonl").exists() and len(_lines(out / "per_sequence.jsonl")) == 8 * 2
    monkeypatch.setattr(E, "generate_batch", real)
    with open(out / "per_sequence.jsonl", "ab") as f:
        f.write(b'{"config_id": "uniform_skip@3", "id": "r')  # torn last line
    _sweep(tiny, out)
    for f in ("sweep.jsonl", "per_sequence.jsonl"):
        assert (out / f).read_bytes() == (fresh / f).read_bytes()

    # more budgets and more sequences later: only the new (config, sequence) pairs run
    grown = tmp_path / "grown"
    _sweep(tiny, grown, S.build_configs(LAYERS, budgets=[3], routes_per_budget=1), items=tiny["items"][:4],
           batch_size=1)
    seen = []
    monkeypatch.setattr(E, "generate_batch", lambda m, t, items, *a: seen.extend(i.id for i in items) or real(m, t, items, *a))
    rows = _sweep(tiny, grown, batch_size=1)
    assert len(seen) == 4 * 3 + 3 * 7  # 4 old configs x 3 new sequences + 3 new configs x 7
    per_seq = _lines(grown / "per_sequence.jsonl")
    assert len(per_seq) == len({(r["config_id"], r["id"]) for r in per_seq}) == 7 * len(ROWS)
    assert all(r["n"] == len(ROWS) for r in rows)
    configs = S.build_configs(LAYERS, budgets=[3], routes_per_budget=1)
    other = next(r for r in ([True, True, True, False], [False, True, True, True]) if r != configs[-1].depth.route)
    configs[-1] = S.SweepConfig(configs[-1].config_id, "random_route", 3, DepthConfig(mode="route", route=other))
    with pytest.raises(ValueError, match="random_route@3#0"):  # e.g. another seed: the same id, another route
        _sweep(tiny, grown, configs, batch_size=1)


def test_a_grown_sweep_keeps_the_batches_its_rows_were_made_in(tiny, tmp_path, monkeypatch):
    """Growing the set must not re-cut the batches: a row's prediction depends on its companions, so
    the old rows' batches are kept as recorded and only the new sequences form new batches."""
    configs = S.build_configs(LAYERS, budgets=[3], routes_per_budget=0, strategies=["uniform_skip"])
    first = [it for k, it in enumerate(tiny["items"]) if k % 2 == 0]  # every other sequence, then all of them
    out = tmp_path / "grown"
    batches: list[tuple[str, ...]] = []
    real = E.generate_batch
    monkeypatch.setattr(E, "generate_batch", lambda m, t, items, *a: batches.append(tuple(i.id for i in items))
                        or real(m, t, items, *a))
    _sweep(tiny, out, configs, items=first, batch_size=2)
    made = set(batches)
    batches.clear()
    _sweep(tiny, out, configs, batch_size=2)
    old = {it.id for it in first}
    assert batches and all(not (set(b) & old) for b in batches)  # new sequences batched among themselves only
    recorded = [tuple(b) for b in json.loads((out / "batches.json").read_text())["batches"]]
    assert set(recorded) == made | set(batches) and recorded[:len(made)] == [b for b in recorded if b in made]
    rows = {(r["config_id"], r["id"]): r["prediction"] for r in _lines(out / "per_sequence.jsonl")}
    assert len(rows) == len(configs) * len(tiny["items"])
    batches.clear()
    _sweep(tiny, out, configs, batch_size=2)  # the same command again: nothing to do, the plan unchanged
    assert batches == [] and [tuple(b) for b in json.loads((out / "batches.json").read_text())["batches"]] == recorded


def test_reference_full_and_learned_checkpoints(tiny, tmp_path):
    m = tiny["model"]
    m.set_depth(DepthConfig(mode="learned", controller_input="fixed"))
    for i, c in m.controllers.items():  # fixed input: layer 1 always skipped, layer 3 never, others by bias sign
        c.net[-1].bias.data = __import__("torch").tensor([1.0, -1.0] if i == "1" else [-1.0, 1.0])
    ckpt = tmp_path / "ckpt-a"
    m.save_pretrained(ckpt)
    m.set_depth(DepthConfig())
    configs = S.build_configs(LAYERS, ["early_exit"], [2], checkpoints=[str(ckpt)])
    rows = _sweep(tiny, tmp_path / "s", configs, reference="full")
    per_seq = _lines(tmp_path / "s/per_sequence.jsonl")
    full = {r["id"]: r["prediction"] for r in per_seq if r["config_id"] == "full"}
    assert all(r["reference"] == full[r["id"]] for r in per_seq)
    learned = rows[-1]
    assert learned["config_id"] == "learned:ckpt-a" and learned["strategy"] == "learned"
    assert learned["checkpoint"] == str(ckpt) and learned["depth"]["mode"] == "learned"
    assert learned["avg_layers"] == pytest.approx(3.0) and learned["layer_usage"][1] == 0.0
    assert all(len(r["layer_runs"]) == LAYERS for r in per_seq if r["config_id"] == learned["config_id"])


def test_sweep_and_oracle_commands(tiny, tmp_path, capsys):
    out = tmp_path / "cli"
    argv = ["sweep", "--model", str(tiny["dir"]), "--data", str(tiny["data"]), "--strategies", "uniform_skip",
            "--budgets", "2-3", "--max-new-tokens", "4", "--batch_size", "3", "--out", str(out), "--no-progress"]
    assert cli_main(argv) == 0
    assert [r["config_id"] for r in _lines(out / "sweep.jsonl")] == ["full", "uniform_skip@3", "uniform_skip@2"]
    assert cli_main(["oracle", "--sweep", str(out), "--out", str(tmp_path / "o.json")]) == 0
    text = capsys.readouterr().out
    assert "oracle over 3 configs x 7 sequences" in text
    assert json.loads((tmp_path / "o.json").read_text())["n_configs"] == 3
    assert cli_main(["oracle", "--sweep", str(tmp_path / "missing")]) == 2
    assert cli_main(argv[:-3] + ["--budgets", "9", "--out", str(tmp_path / "x")]) == 2
    assert "budgets: 9 is out of range" in capsys.readouterr().err
    assert cli_main(argv[:-3] + ["--null_k", "1", "--out", str(tmp_path / "y")]) == 2 and not (tmp_path / "y").exists()
    assert "--null-k: must be 0 (no null control) or >= 2" in capsys.readouterr().err


def test_null_control_rows_are_sampled_full_depth_runs(tiny, tmp_path):
    """--null-k K: K - 1 `full_sample` configs (temperature 0.7, top-p 0.9, seeds 1..K-1) beside the greedy
    full model; every sweep row has its ROUGE-L interval; the oracle's null control uses them."""
    from adalas.stats import bootstrap_ci

    with pytest.raises(ValueError, match="null_k"):
        S.build_configs(LAYERS, ["uniform_skip"], [2, 3], null_k=1)
    configs = S.build_configs(LAYERS, ["uniform_skip"], [2, 3], null_k=3)
    assert [c.config_id for c in configs] == ["full", "uniform_skip@3", "uniform_skip@2", "full_sample#1",
                                              "full_sample#2"]
    rows = _sweep(tiny, tmp_path, configs, max_new_tokens=6)
    per_seq = _lines(tmp_path / "per_sequence.jsonl")
    by = {cid: {p["id"]: p for p in per_seq if p["config_id"] == cid} for cid in [c.config_id for c in configs]}
    samples = [r for r in rows if r["strategy"] == "full_sample"]
    assert [r["sampling"] for r in samples] == [{"seed": s, "temperature": 0.7, "top_p": 0.9} for s in (1, 2)]
    assert all(r["route"] == "1111" and r["avg_layers"] == LAYERS for r in samples)
    greedy = {i: p["prediction"] for i, p in by["full"].items()}
    assert any(p["prediction"] != greedy[i] for i, p in by["full_sample#1"].items())  # sampled, not greedy
    assert any(by["full_sample#1"][i]["prediction"] != by["full_sample#2"][i]["prediction"] for i in greedy)
    for r in rows:
        assert r["rougeL_ci95"] == bootstrap_ci([p["rougeL"] for p in by[r["config_id"]].values()])
    doc = run_oracle(tmp_path, strategies=["uniform_skip"])
    null = doc["null_control"]
    assert null["k"] == doc["n_configs"] == 3 and null["configs"] == ["full", "full_sample#1", "full_sample#2"]
    best = [max(by[c][i]["rougeL"] for c in null["configs"]) for i in greedy]
    assert null["score"] == pytest.approx(sum(best) / len(best))
    before = (tmp_path / "per_sequence.jsonl").read_bytes()
    _sweep(tiny, tmp_path / "again", configs, max_new_tokens=6)  # sampling is seeded: the same bytes
    assert (tmp_path / "again/per_sequence.jsonl").read_bytes() == before


def test_redo_drops_only_the_chosen_configs_and_a_rerun_makes_them_again(tiny, tmp_path):
    configs = S.build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=0)
    fresh, out = tmp_path / "fresh", tmp_path / "out"
    _sweep(tiny, fresh, configs)
    _sweep(tiny, out, configs)
    assert S.forget_configs(out, ["uniform_skip@*", "early_exit@3"], configs) == \
        ["uniform_skip@3", "uniform_skip@2", "early_exit@3"]
    left = {r["config_id"] for r in _lines(out / "per_sequence.jsonl")}
    assert left == {c.config_id for c in configs} - {"uniform_skip@3", "uniform_skip@2", "early_exit@3"}
    assert {r["config_id"] for r in _lines(out / "sweep.jsonl")} == left
    assert "uniform_skip@2" not in json.loads((out / "settings.json").read_text())["configs"]
    _sweep(tiny, out, configs)
    assert (out / "sweep.jsonl").read_bytes() == (fresh / "sweep.jsonl").read_bytes()
    key = lambda r: (r["config_id"], r["id"])  # noqa: E731  (the redone rows come last in the file)
    assert sorted(_lines(out / "per_sequence.jsonl"), key=key) == sorted(_lines(fresh / "per_sequence.jsonl"), key=key)
    for patterns, says in [(["nope*"], "matches none of this sweep's configs"), (["full"], "not 'full'")]:
        with pytest.raises(ValueError, match=says):
            S.forget_configs(out, patterns, configs)
    assert (out / "sweep.jsonl").read_bytes() == (fresh / "sweep.jsonl").read_bytes()


def test_a_redo_under_other_settings_is_refused_before_any_row_is_dropped(tiny, tmp_path):
    configs = S.build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=0)
    _sweep(tiny, tmp_path, configs)
    files = {n: (tmp_path / n).read_bytes() for n in ("per_sequence.jsonl", "sweep.jsonl", "settings.json")}
    other_length = S.sweep_settings("tiny", None, 6, "data", batch_size=2, model=tiny["model"])  # made with 5
    with pytest.raises(ValueError, match=r"holds results made with max_new_tokens=5, not 6"):
        S.forget_configs(tmp_path, ["uniform_skip@2"], configs, settings=other_length)
    reseeded = S.build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=1)  # other random routes
    same = S.sweep_settings("tiny", None, 5, "data", batch_size=2, model=tiny["model"])
    with pytest.raises(ValueError, match=r"config 'random_route@3#0' was defined as"):
        S.forget_configs(tmp_path, ["uniform_skip@2"], reseeded, settings=same)
    assert {n: (tmp_path / n).read_bytes() for n in files} == files  # nothing dropped, nothing recorded
    assert S.forget_configs(tmp_path, ["random_route@*"], reseeded, settings=same) == \
        ["random_route@3#0", "random_route@2#0"]  # the redone configs may change


# --- resume keys: the batch plan, the weights, and directories recorded before those keys ----------

def test_a_resume_with_another_batch_size_is_refused(tiny, tmp_path):
    """Rows depend on their batch companions: a directory made at batch size 2 does not take rows
    made at 3 (it would mix two batch plans)."""
    configs = S.build_configs(LAYERS, ["uniform_skip"], [3])
    _sweep(tiny, tmp_path, configs, batch_size=2)
    with pytest.raises(ValueError, match=r"holds results made with batch_size=2, not 3"):
        _sweep(tiny, tmp_path, configs, batch_size=3)
    recorded = json.loads((tmp_path / "settings.json").read_text())["settings"]
    assert recorded["batch_size"] == 2 and recorded["device"] == "cpu" and recorded["dtype"] == "float32"


def test_a_model_or_checkpoint_retrained_in_place_is_refused(tiny, tmp_path):
    """--model and --checkpoints directories are recorded by what their weights are, not by path: the
    same directory with new weights does not resume over the old rows."""
    import shutil

    import torch

    model_dir = tmp_path / "model"
    shutil.copytree(tiny["dir"], model_dir)
    ckpt = tmp_path / "ckpt-a"
    tiny["model"].save_pretrained(ckpt)
    configs = S.build_configs(LAYERS, ["early_exit"], [2], checkpoints=[str(ckpt)])
    items = tiny["items"][:2]

    def sweep(model, configs):
        return S.run_sweep(model, tiny["tok"], items, configs, tmp_path / "out", max_new_tokens=3, batch_size=2,
                           model_id=str(model_dir))

    model = AdalasForCausalLM.from_pretrained(str(model_dir))
    sweep(model, configs)
    sweep(model, configs)  # unchanged: resumes
    retrained = AdalasForCausalLM.from_pretrained(str(ckpt))
    with torch.no_grad():
        retrained.model.lm_head.weight.mul_(1.5)
    retrained.save_pretrained(ckpt)
    again = S.build_configs(LAYERS, ["early_exit"], [2], checkpoints=[str(ckpt)])
    with pytest.raises(ValueError, match=r"config 'learned:ckpt-a' were made with other weights.*--redo"):
        sweep(model, again)
    model.save_pretrained(model_dir)  # other bytes in --model's directory (the same path)
    with torch.no_grad():
        model.model.lm_head.weight.mul_(1.5)
    model.save_pretrained(model_dir)
    with pytest.raises(ValueError, match=r"holds results made with model_sha256="):
        sweep(model, configs)


def test_directories_recorded_before_the_new_keys_still_resume(tiny, tmp_path):
    """A settings.json from before batch_size, device, dtype, the model's sha256 and checkpoints'
    weights were recorded resumes (nothing runs again), then records them; another value is refused."""
    ckpt = tmp_path / "ckpt-a"
    tiny["model"].save_pretrained(ckpt)
    configs = S.build_configs(LAYERS, ["early_exit"], [2], checkpoints=[str(ckpt)])
    out = tmp_path / "out"
    _sweep(tiny, out, configs)
    doc = json.loads((out / "settings.json").read_text())
    new_keys = {"batch_size", "device", "dtype"}
    assert new_keys <= set(doc["settings"]) and doc["configs"]["learned:ckpt-a"]["weights"]
    old = {"settings": {k: v for k, v in doc["settings"].items() if k not in new_keys},
           "configs": {cid: {k: v for k, v in d.items() if k != "weights"} for cid, d in doc["configs"].items()}}
    (out / "settings.json").write_text(json.dumps(old))
    before = (out / "per_sequence.jsonl").read_bytes()
    _sweep(tiny, out, configs)
    assert (out / "per_sequence.jsonl").read_bytes() == before
    assert json.loads((out / "settings.json").read_text()) == doc  # the keys are recorded now
    with pytest.raises(ValueError, match="batch_size=2, not 3"):
        _sweep(tiny, out, configs, batch_size=3)


@pytest.mark.parametrize("name", ["adapters", "study/adapted", "study/E3"])
def test_committed_sweep_directories_accept_the_new_keys(tmp_path, name):
    """The committed sweep directories (recorded before batch_size, device, dtype, model_sha256 and
    checkpoints' weights) accept a run that records them, and refuse one that changes what they say."""
    import shutil

    src = Path(__file__).resolve().parents[1] / "results" / name / "settings.json"
    if not src.is_file():
        pytest.skip(f"{src} is not in this checkout")
    shutil.copy(src, tmp_path / "settings.json")
    doc = json.loads(src.read_text())
    settings = {**doc["settings"], "batch_size": doc["settings"].get("batch_size", 8), "device": "cpu",
                "dtype": doc["settings"].get("dtype", "float32"),
                "model_sha256": doc["settings"].get("model_sha256", "0" * 64)}  # a rerun may have recorded them
    configs = {cid: {**d, "weights": d.get("weights") or "1" * 64} for cid, d in doc["configs"].items()}
    check_settings(tmp_path, settings, configs, record=False)
    with pytest.raises(ValueError, match="max_new_tokens"):
        check_settings(tmp_path, {**settings, "max_new_tokens": doc["settings"]["max_new_tokens"] + 1}, configs)


def test_two_adapters_on_one_route_share_its_off_the_shelf_config(tmp_path, monkeypatch):
    """Two training seeds of one route: one `route:` config (the first alias's), an `adapted:` config each."""
    from adalas import hub

    for name, skip in (("seed1", [1]), ("seed0", [1]), ("other", [2])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "adalas_depth.json").write_text(json.dumps({"mode": "static_skip", "skip_layers": skip}))
        (tmp_path / name / "adapter_model.safetensors").write_bytes(name.encode())
    monkeypatch.setattr(hub, "adapter_dir", lambda alias: tmp_path / alias if (tmp_path / alias).is_dir() else None)
    ids = [c.config_id for c in S.build_configs(4, budgets=[], adapted=["seed1", "seed0", "other"])]
    assert ids == ["full", "route:seed1", "adapted:seed1", "adapted:seed0", "route:other", "adapted:other"]

    # a later sweep into a directory that finished route:seed1: seed0 adds its adapted rows, not the route again
    out = tmp_path / "sweep"
    out.mkdir()
    first = {c.config_id: c.definition() for c in S.build_configs(4, budgets=[], adapted=["seed1"])}
    (out / "settings.json").write_text(json.dumps({"settings": {}, "configs": first}))
    later = S.build_configs(4, budgets=[], adapted=["seed0", "other"])
    assert [c.config_id for c in S.drop_routes_made(later, out)] == [c.config_id for c in later]  # not finished
    rows = [{"config_id": c, "id": str(i)} for c in ("full", "route:seed1") for i in range(3)]
    (out / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows[:-1]))
    assert [c.config_id for c in S.drop_routes_made(later, out)] == [c.config_id for c in later]  # 2 of 3 rows
    (out / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = [c.config_id for c in S.drop_routes_made(later, out)]
    assert ids == ["full", "adapted:seed0", "route:other", "adapted:other"]
