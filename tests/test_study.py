"""`adalas study`: the whole pipeline on the tiny model `--quick` builds (train, held-out choices, sweeps
of the built-in stand-in and three stand-in task sets with every look logged first, E3's pre-registered
test, E4's router, study.json, report.md, plots), a second run that trains and generates nothing, a
study run in parts that reuses the stores, and the plans' checks."""
from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

from adalas.cli import main
from adalas.study import VERDICTS, load_plan, plan_names, readme_study, tiny_rows

EXPERIMENTS = ("E1", "E2", "E3", "E4")
TASKS = ("samsum", "cnn_dailymail", "user_oriented")


def _study(out: Path, runs: Path, *extra: str) -> float:
    t0 = time.perf_counter()
    assert main(["study", "--quick", "--out", str(out), "--runs", str(runs), "--no-progress", *extra]) == 0
    return time.perf_counter() - t0


def _looked(looks: Path) -> set[tuple[str, str]]:
    if not looks.is_file():
        return set()
    return {(line["task"], c["config_id"]) for line in map(json.loads, looks.read_text().splitlines())
            for c in line["configs"]}


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `adalas study --quick` into a fresh directory: (out, runs, wall seconds, the sweeps it ran).
    Every sweep of a stand-in task set must find its configs in LOOKS.jsonl when it starts."""
    import adalas.sweep

    root = tmp_path_factory.mktemp("study")
    out, runs, sweeps = root / "out", root / "runs", []
    real_sweep = adalas.sweep.run_sweep

    def checked(model, tokenizer, items, configs, out_dir, **kw):
        task = next((t for t in TASKS if f"/{t}-cap" in str(out_dir)), None)
        if task:
            missing = {c.config_id for c in configs} - {cid for t, cid in _looked(out / "LOOKS.jsonl") if t == task}
            assert not missing, f"{task}: swept before its look was logged: {missing}"
        sweeps.append((task, [c.config_id for c in configs]))
        return real_sweep(model, tokenizer, items, configs, out_dir, **kw)

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADALAS_CACHE", str(root / "cache"))
        mp.setattr(adalas.sweep, "run_sweep", checked)
        wall = _study(out, runs)
    print(f"adalas study --quick: {wall:.0f} s")
    return out, runs, wall, sweeps


def test_quick_study_writes_every_experiment_on_the_real_task_stand_ins(quick):
    out, runs, _, sweeps = quick
    doc = json.loads((out / "study.json").read_text())
    assert set(doc["tasks"]) == {"builtin", *TASKS} and all(len(t["sha256"]) == 64 for t in doc["tasks"].values())
    assert [t["test_set"] for t in doc["tasks"].values()] == [False, True, True, True]
    for name in EXPERIMENTS:
        e = doc[name]
        assert e["verdict"] in VERDICTS[:3], (name, e["verdict"], e["reason"])
        assert e["reason"] and e["decided_by"] and all(isinstance(s, str) for s in e["decided_by"])
        assert e["n"] == 19 and "avg_layers" in e["depth_unit"] and e["tasks"] == doc["tasks"]
        r = e["rests_on"]
        assert r["place"] == "pooled" and set(r["tasks"]) == set(TASKS) and r["rows"] == 19 and r["test"]
        assert len(r["model_sha256"]) == 64
        assert e["runs"] and all(x["command"].startswith("adalas ") and x["wall_s"] >= 0 for x in e["runs"])
    assert all(len(x["data_sha256"]) == 64 for x in doc["E1"]["runs"])

    e1 = doc["E1"]
    assert e1["seeds"] == {"6": [0, 1], "5": [0]}
    six = e1["comparisons"][0]
    assert six["candidates"] == {"skip": ["skip6-u", "skip6-b"], "exit": ["exit6-lora", "exit6-head"]}
    assert len(six["chosen"]["skip"]) == len(six["chosen"]["exit"]) == 2  # one choice per seed and arm
    choice = json.loads((out / "E1" / "choice.json").read_text())
    for c in choice["chosen"]:  # the lowest held-out KD of the arm's candidates for that seed
        assert c["run"] == min(c["candidates"], key=c["candidates"].get)
    pooled = six["places"]["pooled"]
    for key in ("skip_minus_exit", "recall_skip_minus_exit", "off_the_shelf_skip_minus_exit"):
        assert pooled[key]["ci95"][0] <= pooled[key]["diff"] + 1e-12 <= pooled[key]["ci95"][1] + 2e-12
    assert set(six["places"]) == {"builtin", *TASKS, "pooled"} and len(pooled["per_seed"]) == 2
    assert all({"recall", "tokens", "stop_share", "vs_full"} <= set(s) for s in pooled["configs"].values())

    e2 = doc["E2"]
    assert e2["lr_grid"] == [0.03, 0.3] and set(e2["lr_chosen"]) == {"hidden_states", "fixed"}
    assert all(lr in e2["lr_grid"] for lr in e2["lr_chosen"].values())
    assert e2["seeds"] == {"hidden_states": [0, 1], "fixed": [0, 1]}
    assert len(e2["places"]["pooled"]["points"]) == 2 * 2 * 2  # arms x cost weights x seeds
    usage = e2["layer_usage"]["hidden-a2-s0"]
    assert len(usage["training_gumbel"]) == len(usage["evaluation_argmax"]) == 8
    c = e2["places"]["pooled"]["compare"]
    if c["common_range"]:
        assert {"no_better", "worse", "upper_one_sided_95", "per_seed"} <= set(c)

    e3 = doc["E3"]
    assert e3["k"] == 6 and e3["candidates"][0] == "full" and "route:skip-3-5" in e3["candidates"]
    assert e3["null_control"]["configs"] == ["full", *(f"full_sample#{s}" for s in range(1, 6))]
    assert len(e3["model_sha256"]) == 64  # the run's adapter_model.safetensors
    assert [t["budget_layers"] for t in e3["preregistered"]] == [3.0, 5.0] and e3["preregistered"][0]["role"] == "primary"
    assert all(t["resamples"] == 200 and len(t["ci95"]) == 2 for t in e3["preregistered"])
    assert e3["verdict"] == e3["preregistered"][0]["verdict"] and doc["preregistered"] == e3["preregistered"]
    cands = e3["places"]["pooled"]["candidates"]
    assert [c["config_id"] for c in cands] == e3["candidates"]
    assert all(c["never_made_for"] == (c["f_ratio"]["ratio"] < 0.5) for c in cands)
    assert e3["crossing"]["censored"] + 0 >= 0 and "censored" in e3["crossing"]["note"]
    prereg = json.loads((out / "E3" / "preregistered.json").read_text())
    assert prereg["sha256"] == doc["study"]["preregistered_sha256"]

    e4 = doc["E4"]
    for t in e4["places"]["pooled"]["targets"]:
        x = t["minus_best_fixed_mix"]
        assert x["resamples"] == 200 and sum(x["mixes"].values()) == 200
    assert e4["speed"]["full"]["tokens_per_s"] > 0

    # every stand-in task set was swept only after its look was logged (the fixture checks it at each
    # sweep), once per config and model, and its rows are published without the data's text
    looks = [json.loads(line) for line in (out / "LOOKS.jsonl").read_text().splitlines()]
    assert {x["task"] for x in looks} == set(TASKS) and all(x["why"] and x["data_sha256"] for x in looks)
    pairs = [(x["task"], c["config_id"], c["model_sha256"]) for x in looks for c in x["configs"]]
    assert len(pairs) == len(set(pairs))
    assert any(t == "samsum" for t, _ in sweeps)
    published = list((out / "rows").rglob("per_sequence.jsonl"))
    assert published and not any('"prompt"' in p.read_text() or '"reference"' in p.read_text() for p in published)

    report = (out / "report.md").read_text()
    for name in EXPERIMENTS:
        assert f"## {name}" in report and f"**{doc[name]['verdict']}**" in report
    assert "What each verdict rests on" in report and "Pre-registered" in report
    for png in ("e1.png", "e2.png", "e4.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    assert not any(p.name.endswith(".safetensors") and "router" not in str(p) for p in out.rglob("*"))


def test_a_second_run_trains_and_generates_nothing(quick, tmp_path, monkeypatch):
    out, runs, first, _ = quick
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))
    records = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    stages = json.loads((out / "stages.json").read_text())
    rows = {p: p.read_bytes() for p in (runs / "rows").rglob("per_sequence.jsonl")}
    looks = (out / "LOOKS.jsonl").read_bytes()
    again = _study(out, runs)
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == records
    assert json.loads((out / "stages.json").read_text()) == stages  # no stage did any work
    assert {p: p.read_bytes() for p in (runs / "rows").rglob("per_sequence.jsonl")} == rows
    assert (out / "LOOKS.jsonl").read_bytes() == looks and again < first


def test_a_study_in_parts_reuses_the_stores_and_reports_what_it_has(quick, tmp_path, monkeypatch):
    """A new results directory over the same runs: E3 alone adopts its run and finds its rows in the
    stores (nothing trained or generated, no new look); E1, E2 and E4 are `not run`, saying why."""
    _, runs, _, _ = quick
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "out"
    _study(out, runs, "--experiments", "E3")
    doc = json.loads((out / "study.json").read_text())
    assert doc["E3"]["verdict"] in VERDICTS[:3]
    for name in ("E1", "E2", "E4"):
        assert doc[name]["verdict"] == "not run" and doc[name]["reason"]
    assert not (out / "stages.json").exists()  # no stage did any work: nothing trained, no row made
    assert not (out / "LOOKS.jsonl").exists()  # every config it needed was already in the stores
    assert "Not run yet" in (out / "report.md").read_text() and "| E3 |" in readme_study(doc)
    assert main(["study", "--quick", "--out", str(out), "--runs", str(runs), "--experiments", "E5"]) == 2


def test_a_fresh_checkout_resumes_from_the_committed_results_and_retrains_only_what_must_run(quick, tmp_path,
                                                                                            monkeypatch):
    """The results directory is committed, the runs directory (weights, stores) is not. A new checkout
    over the same results: the stores start from the published rows, and only what must run again
    trains again: here one chosen E1 run whose built-in rows are gone. Its second training gives the
    recorded weights, and its rows come out as before; nothing else trains, generates or is looked at."""
    import shutil

    out, runs, _, _ = quick
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))  # the teacher caches are gone too
    fresh = tmp_path / "out"
    shutil.copytree(out, fresh)
    chosen = json.loads((out / "E1" / "choice.json").read_text())["chosen"][0]["run"]
    dropped = {}
    for published in fresh.joinpath("rows").glob("*/builtin-*/per_sequence.jsonl"):
        lines = published.read_text().splitlines()
        mine = [x for x in lines if json.loads(x)["config_id"] == f"learned:{chosen}"]
        if mine:
            dropped[published] = mine
            published.write_text("".join(x + "\n" for x in lines if x not in mine))
    assert len(dropped) == 1
    stages = json.loads((fresh / "stages.json").read_text())
    looks = (fresh / "LOOKS.jsonl").read_bytes()
    runs.rename(tmp_path / "runs-elsewhere")
    try:
        _study(fresh, runs)
        new = json.loads((fresh / "stages.json").read_text())
        same = lambda d: {k: v for k, v in d.items() if k in stages and k != "sweep:E1:builtin"}  # noqa: E731
        assert same(new) == same(stages)
        assert set(new) - set(stages) == {"retrain:base", f"retrain:{chosen}"}
        assert new["sweep:E1:builtin"] > stages["sweep:E1:builtin"]  # the dropped rows, made again
        published, mine = next(iter(dropped.items()))
        again = [x for x in published.read_text().splitlines() if json.loads(x)["config_id"] == f"learned:{chosen}"]
        strip = lambda rows: [{k: v for k, v in json.loads(x).items() if k not in ("time_s", "tokens_per_s")}  # noqa: E731
                              for x in rows]
        assert strip(again) == strip(mine)
        assert (fresh / "LOOKS.jsonl").read_bytes() == looks
        assert {k: json.loads((fresh / "study.json").read_text())[k]["verdict"] for k in EXPERIMENTS} == \
            {k: json.loads((out / "study.json").read_text())[k]["verdict"] for k in EXPERIMENTS}
        trained = {p.name for p in runs.iterdir() if (p / "adalas_training.json").is_file()}
        assert trained == {"base", chosen}
    finally:
        shutil.rmtree(runs, ignore_errors=True)
        (tmp_path / "runs-elsewhere").rename(runs)


def test_a_run_is_not_trained_again_under_other_cpu_kernels(tmp_path, monkeypatch):
    """fp32 training gives other weights under other vector kernels (AVX2 against AVX512): a run recorded under
    one is refused before training again under another, naming the variable that pins them."""
    from adalas.study import runs
    from adalas.study.plan import e1_runs

    plan = load_plan("quick", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    run = e1_runs(plan)[0]
    runs.record_path(plan, run.name).parent.mkdir(parents=True)
    runs.record_path(plan, run.name).write_text(json.dumps({"name": run.name, "cpu_capability": "AVX2"}))
    monkeypatch.setattr(runs, "cpu_capability", lambda: "AVX512")
    monkeypatch.setattr(runs, "run", lambda argv: pytest.fail("trained again"))
    with pytest.raises(ValueError, match="ATEN_CPU_CAPABILITY=avx2"):
        runs.ensure_weights(plan, runs.Stages(plan.out), [run])


def test_a_run_that_only_saved_or_logged_more_often_trains_alike(tiny_files):
    from adalas.study import same_training

    model, data = tiny_files
    base = ["--model", str(model), "--data", str(data), "--max_steps", "4", "--seed", "0"]
    argv = [*base, "--output_dir", "runs/study2/x", "--save_steps", "40", "--report_to", "none"]
    made = "adalas train " + " ".join([*base, "--output_dir", "runs/v3/x", "--save_steps", "20", "--logging_steps",
                                       "5", "--resume_from_checkpoint", "true"])
    assert same_training(made, argv)
    assert not same_training(made.replace("--seed 0", "--seed 1"), argv)
    assert not same_training(made.replace("--max_steps 4", "--max_steps 5"), argv)


def test_packaged_plans_parse_every_run_as_training_would(tmp_path):
    from adalas.study.plan import e1_runs, e2_pilots, e3_runs

    assert {"quick", "smollm2-135m"} <= set(plan_names())
    real = load_plan("smollm2-135m", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    assert real.model == "smollm2-135m" and real.layers == 30 and real.tasks.caps is None
    assert real.eval["batch_size"] == real.tasks.batch_size == 16 and real.looks.name == "LOOKS.jsonl"
    e3 = real.e3
    assert e3.k == 10 and e3.candidates[:8] == ("full", *(f"uniform@{b}" for b in (5, 7, 10, 15, 20, 24, 27)))
    assert {c for c in e3.candidates[8:]} == {"shipped:smollm2-135m-adapted-24", "shipped:smollm2-135m-adapted-20"}
    pre = real.prereg
    assert [(t.budget_layers, t.role) for t in pre.tests] == [(7.0, "primary"), (18.0, "secondary")]
    assert pre.resamples == 1000 and pre.margin_share == 0.05
    assert len(real.e2.lr_grid) == 4 and len(real.e2.seeds) >= 2 and real.e2.pilot_steps == 24
    assert [(d.depth, len(d.seeds), len(d.skip), len(d.exit)) for d in real.e1.depths] == [(20, 2, 3, 3), (24, 1, 3, 3)]
    assert len(e1_runs(real)) == 18 and len(e2_pilots(real)) == 8
    assert real.e3.model == "smollm2-135m-dropout-pool" and not e3_runs(real)  # shipped: outlives a checkout
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # checking writes nothing


def test_e3_on_a_shipped_alias_needs_its_recipes_pool_and_the_adapter(tmp_path, monkeypatch):
    """E3's model may be a shipped alias: the plan is refused when a candidate is not in the route pool of
    the alias's recipe, and E3 does not start, naming how to make it, before the adapter ships."""
    import yaml

    from adalas import hub
    from adalas.study import e3, plan_path

    doc = yaml.safe_load(plan_path("smollm2-135m").read_text())
    doc["experiments"]["E3"]["candidates"].append("uniform@8")
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=r"'uniform@8' .* not in the route pool of 'smollm2-135m-dropout-pool'"):
        load_plan(bad, out=tmp_path / "out", runs_dir=tmp_path / "runs")
    real = load_plan("smollm2-135m", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    monkeypatch.setattr(hub, "adapter_dir", lambda name: None)
    assert "adalas train --recipe smollm2-135m-dropout-pool" in e3.model_not_shipped(real)
    monkeypatch.setattr(hub, "adapter_dir", lambda name: tmp_path)
    assert e3.model_not_shipped(real) is None


def _edit_quick(tmp_path, edit) -> Path:
    import yaml

    from adalas.study import plan_path

    doc = yaml.safe_load(plan_path("quick").read_text())
    edit(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    return bad


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(bogus=1), r"unknown field\(s\) bogus"),
    (lambda d: d["experiments"]["E1"]["depths"][0]["skip"].append("exit6-lora"), r"the same number of candidates"),
    (lambda d: d["experiments"]["E1"]["depths"][0].update(skip=["nope", "skip6-b"]), r"no run named 'nope'"),
    (lambda d: d["runs"][1]["overrides"].update(output_dir="x"), r"run skip6-u: output_dir is the study's"),
    (lambda d: d["experiments"]["E2"].update(seeds=[0]), r"E2.seeds: expected a list of 2 or more"),
    (lambda d: d["experiments"]["E3"]["candidates"].append("uniform@5"), r"not in the route pool of 'dropout'"),
    (lambda d: d["preregistered"]["tests"][1].update(role="primary"), r"exactly one primary test"),
    (lambda d: d.pop("tiny"), r"tasks.caps: the real tasks' caps are the protocol's"),
])
def test_a_bad_plan_is_refused_naming_what_is_wrong(tmp_path, edit, message):
    with pytest.raises(ValueError, match=message):
        load_plan(_edit_quick(tmp_path, edit), out=tmp_path / "out", runs_dir=tmp_path / "runs")


def test_a_changed_preregistered_test_is_refused_once_e3_has_started(tmp_path):
    from adalas.study.e3 import record_preregistration

    plan = load_plan("quick", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    first = record_preregistration(plan)
    assert record_preregistration(plan) == first
    changed = load_plan(_edit_quick(tmp_path, lambda d: d["preregistered"].update(resamples=500)),
                        out=tmp_path / "out", runs_dir=tmp_path / "runs")
    with pytest.raises(ValueError, match="pre-registered test changed"):
        record_preregistration(changed)


def test_tiny_rows_keep_training_choice_evaluation_and_task_rows_apart():
    rows = tiny_rows()
    pairs = {k: {(r["instruction"], r["input"]) for r in v} for k, v in rows.items()}
    names = list(pairs)
    assert all(not pairs[a] & pairs[b] for i, a in enumerate(names) for b in names[i + 1:])
    assert len(rows["eval"]) == len(rows["heldout"]) == len(rows["tasks"]) == 19
