"""`adalas study`: the whole pipeline on the tiny model `--quick` builds (train, sweeps, oracle, router,
study.json, report.md, plots), a second run that trains and generates nothing, a run and some rows
made again after they were lost, and the plan's checks and the analysis' arithmetic on small cases."""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest

from adalas.cli import main
from adalas.study import VERDICTS, load_plan, plan_names, readme_study, tiny_rows
from adalas.study.common import curve_scores

EXPERIMENTS = ("E1", "E2", "E3", "E4")


def _study(out: Path, runs: Path) -> float:
    t0 = time.perf_counter()
    assert main(["study", "--quick", "--out", str(out), "--runs", str(runs), "--no-progress"]) == 0
    return time.perf_counter() - t0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `adalas study --quick` into a fresh directory: (out, runs, wall seconds)."""
    root = tmp_path_factory.mktemp("study")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("ADALAS_CACHE", str(root / "cache"))
        wall = _study(root / "out", root / "runs")
    print(f"adalas study --quick: {wall:.0f} s")
    return root / "out", root / "runs", wall


def _rows(path: Path) -> dict[tuple, str]:
    """per_sequence.jsonl lines by (config_id, id)."""
    out = {}
    for line in path.read_text().splitlines():
        r = json.loads(line)
        out[r["config_id"], r["id"]] = line
    return out


def test_quick_study_writes_every_experiment_with_intervals_runs_and_a_verdict(quick):
    out, runs, _ = quick
    doc = json.loads((out / "study.json").read_text())
    plan = load_plan("quick", out=out, runs_dir=runs)
    for name in EXPERIMENTS:
        e = doc[name]
        assert e["verdict"] in VERDICTS, (name, e["verdict"])
        assert e["reason"] and e["decided_by"] and all(isinstance(s, str) for s in e["decided_by"])
        assert e["n"] == 19 and "avg_layers" in e["depth_unit"]
        assert e["runs"], name
        for r in e["runs"]:
            assert r["name"] and r["command"].startswith("adalas ") and r["wall_s"] >= 0
            assert len(r["data_sha256"]) == 64
    assert [r["name"] for r in doc["runs"]] == [r.name for r in plan.runs]
    assert all(r["command"].startswith("adalas train ") and r["steps"] for r in doc["runs"])

    def interval(d):  # a paired difference with its 95% interval
        lo, hi = d["ci95"]
        assert lo <= d["diff"] + 1e-12 and d["diff"] <= hi + 1e-12 and d["n"] == 19

    for c in doc["E1"]["comparisons"]:
        assert c["equal_depth"] and c["skip"]["avg_layers"] == c["depth"] and len(c["skip"]["ci95"]) == 2
        interval(c["skip_minus_exit"])
        interval(c["off_the_shelf"]["skip_minus_exit"])
    e2 = doc["E2"]
    assert len(e2["curves"]["hidden_states"]) == len(e2["curves"]["fixed"]) == 3
    assert {p["cost_alpha"] for p in e2["curves"]["fixed"]} == {0.5, 4.0, 16.0}
    assert [p["avg_layers"] for p in e2["curves"]["dropout_uniform_skip"]] == [2, 3, 4, 5, 6, 7, 8]
    if e2["overall"] is not None:
        interval(e2["overall"])
        for a in e2["at_common_depths"]:
            interval(a["hidden_minus_fixed"])
    e3 = doc["E3"]
    assert e3["k"] == 10 and len(e3["configs"]) == 10
    null = e3["oracle"]["null_control"]
    assert null["k"] == 10 and null["configs"] == ["full", *(f"full_sample#{s}" for s in range(1, 10))]
    assert e3["oracle"]["bootstrap"]["resamples"] == 40 and len(e3["oracle"]["match_fraction_null_adjusted_ci95"]) == 2
    assert e3["paper_fraction"] == 0.233 and e3["differences"]
    e4 = doc["E4"]
    assert [t["target"] for t in e4["targets"]] == [5.0, 6.0, 7.0]
    for t in e4["targets"]:
        interval({**t["minus_best_fixed_mix"], "n": 19})
        assert len(t["router"]["ci95"]) == 2
    assert e4["speed"]["full_tokens_per_s"] > 0 and e4["speed"]["router_tokens_per_s"] > 0

    report = (out / "report.md").read_text()
    for name in EXPERIMENTS:
        assert f"## {name}" in report and f"**{doc[name]['verdict']}**" in report
    assert "95% CI" in report
    for png in ("e1.png", "e2.png", "e4.png", "E3/rouge_vs_layers.png"):
        assert (out / png).read_bytes()[:4] == b"\x89PNG"
    # what the training runs wrote stays out of the results directory
    assert not any(p.name.endswith(".safetensors") and "router" not in str(p) for p in out.rglob("*"))


def test_a_second_run_trains_and_generates_nothing_and_lost_work_is_redone(quick, tmp_path, monkeypatch):
    out, runs, first = quick
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))
    records = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    checkpoints = {p: p.stat().st_mtime_ns for p in runs.rglob("model.safetensors")}
    stages = json.loads((out / "stages.json").read_text())
    rows = {d: (out / d / "per_sequence.jsonl").read_bytes() for d in ("adapted", "E3")}

    again = _study(out, runs)
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == records
    assert {p: p.stat().st_mtime_ns for p in runs.rglob("model.safetensors")} == checkpoints
    assert json.loads((out / "stages.json").read_text()) == stages  # no stage did any work
    assert {d: (out / d / "per_sequence.jsonl").read_bytes() for d in rows} == rows
    assert again < first

    # a lost record of a finished run: adopted from the run directory, not trained again
    (out / "train" / "exit-6.json").unlink()
    # a run killed after its first checkpoint, and a config's lost rows
    import shutil

    (out / "train" / "exit-5.json").unlink()
    (runs / "exit-5" / "adalas_training.json").unlink()
    shutil.rmtree(runs / "exit-5" / "checkpoint-6")
    path = out / "E3" / "per_sequence.jsonl"
    before = _rows(path)
    path.write_text("".join(line + "\n" for key, line in before.items() if key[0] != "full_sample#9"))
    _study(out, runs)
    assert (out / "train" / "exit-6.json").read_bytes() == records["exit-6.json"]
    record = json.loads((out / "train" / "exit-5.json").read_text())
    assert record["resumed_from"] == "checkpoint-3" and record["steps"] == 6
    assert _rows(path) == before  # the same rows, generated again with the same seed and batch companions
    doc = json.loads((out / "study.json").read_text())
    assert doc["E3"]["oracle"]["null_control"]["k"] == 10
    assert set(json.loads((out / "stages.json").read_text())) - set(stages) == set()  # the same stages, more time


def test_packaged_plans_parse_every_run_as_training_would(tmp_path):
    assert {"quick", "smollm2-135m"} <= set(plan_names())
    real = load_plan("smollm2-135m", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    assert real.model == "smollm2-135m" and real.eval["data"] == "builtin" and real.eval["limit"] is None
    assert all(r.recipe and r.recipe.startswith("smollm2-135m-") for r in real.runs)
    e3 = real.experiments["E3"]
    assert len(e3["uniform_skip"]) >= 6 and len(e3["early_exit"]) == 3  # K = 10: 9 full_sample runs
    assert len(real.experiments["E2"]["hidden_states"]) >= 3 and len(real.experiments["E2"]["fixed"]) >= 3
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()  # checking writes nothing


@pytest.mark.parametrize("edit, message", [
    (lambda d: d.update(bogus=1), r"unknown field\(s\) bogus"),
    (lambda d: d["experiments"]["E1"]["pairs"][0].update(skip="nope"), r"E1.pairs.skip: no run named 'nope'"),
    (lambda d: d["runs"][1]["overrides"].update(output_dir="x"), r"run skip-6: output_dir is the study's"),
    (lambda d: d["runs"][1]["overrides"].update(depth="{bad"), r"run skip-6: .*depth"),
    (lambda d: d["experiments"]["E2"].update(fixed=["fixed-a4"]), r"E2.fixed: needs 2 or more runs"),
])
def test_a_bad_plan_is_refused_naming_what_is_wrong(tmp_path, edit, message):
    import yaml

    from adalas.study import plan_path

    doc = yaml.safe_load(plan_path("quick").read_text())
    edit(doc)
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(doc))
    with pytest.raises(ValueError, match=message):
        load_plan(bad, out=tmp_path / "out", runs_dir=tmp_path / "runs")


def test_a_curve_is_interpolated_per_sequence_between_its_two_neighbours():
    curve = [(2.0, np.array([0.0, 1.0])), (4.0, np.array([1.0, 0.0])), (8.0, np.array([1.0, 1.0]))]
    np.testing.assert_allclose(curve_scores(curve, 3.0), [0.5, 0.5])  # half of each config
    np.testing.assert_allclose(curve_scores(curve, 4.0), [1.0, 0.0])
    np.testing.assert_allclose(curve_scores(curve, 7.0), [1.0, 0.75])
    assert curve_scores(curve, 1.9) is None and curve_scores(curve, 8.1) is None


def test_tiny_rows_hold_out_evaluation_pairs():
    train, held = tiny_rows()
    pairs = lambda rows: {(r["instruction"], r["input"]) for r in rows}  # noqa: E731
    assert not pairs(train) & pairs(held) and len(held) == 19 and len({r["id"] for r in held}) == 19


def test_a_study_run_in_parts_reports_what_it_has_and_adopts_runs_trained_alike(quick, tmp_path, monkeypatch):
    """--experiments E1 on trained runs (one of them trained elsewhere by an equivalent command) evaluates
    only E1 and marks the rest `not run`; E3,E4 then adds theirs, and E1 stays as it was."""
    import shlex
    import shutil

    from adalas.study import same_training

    _, runs, _ = quick
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path / "cache"))
    plan = load_plan("quick", out=tmp_path / "out", runs_dir=tmp_path / "runs")
    for name in ("base", "skip-6", "exit-6", "skip-5", "exit-5", "dropout"):  # as if trained here
        shutil.copytree(runs / name, tmp_path / "runs" / name)
        argv = plan.by_name[name].argv(plan.overrides, plan.runs_dir)
        made_path = tmp_path / "runs" / name / "adalas_training.json"
        made = {**json.loads(made_path.read_text()), "command": "adalas train " + shlex.join(argv)}
        if name == "skip-6":  # ... but by its recipe into another directory, logging to tensorboard
            made["command"] += " " + shlex.join(["--output_dir", "runs/elsewhere", "--report_to", "tensorboard"])
        made_path.write_text(json.dumps(made))
    argv = plan.by_name["skip-6"].argv(plan.overrides, plan.runs_dir)
    made = json.loads((tmp_path / "runs" / "skip-6" / "adalas_training.json").read_text())
    assert same_training(made["command"], argv)
    assert not same_training("adalas train " + shlex.join([*argv, "--learning_rate", "0.5"]), argv)
    assert not same_training("adalas warmup " + shlex.join(argv), argv)

    base = ["study", "--quick", "--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--no-progress"]
    assert main([*base, "--experiments", "E1"]) == 0
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["E1"]["verdict"] in VERDICTS[:3] and doc["E1"]["n"] == 19
    for name in ("E2", "E3", "E4"):
        assert doc[name]["verdict"] == "not run" and doc[name]["reason"]
    assert doc["E2"]["reason"].startswith("runs not trained yet:") and "hidden-a0.05" in doc["E2"]["reason"]
    assert doc["E3"]["reason"] == doc["E4"]["reason"] == "runs not trained yet: dropout"
    assert not (tmp_path / "out" / "E3").exists()  # nothing of E3 was evaluated
    record = json.loads((tmp_path / "out" / "train" / "skip-6.json").read_text())
    assert record["adopted_from"] == made["command"] and record["wall_s"] == made["wall_s"]
    stages = json.loads((tmp_path / "out" / "stages.json").read_text())
    assert not [s for s in stages if s.startswith("train:")]  # nothing trained again
    report = (tmp_path / "out" / "report.md").read_text()
    assert "**not run**" in report and "Not run yet" in report and "which trains alike" in report
    e1 = doc["E1"]
    readme = readme_study(doc)
    assert "| E2 |" in readme and "**not run**" in readme and "| 6 | " in readme and "| 5 | " in readme
    assert "- E3:" not in readme

    assert main([*base, "--experiments", "E3,E4"]) == 0
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["E1"] == e1 and doc["E2"]["verdict"] == "not run"
    assert doc["E3"]["verdict"] in VERDICTS[:3] and doc["E4"]["verdict"] in VERDICTS[:3]
    assert "- E3: " in readme_study(doc) and "- E4: " in readme_study(doc)
    e3 = doc["E3"]

    for name in [*plan.experiments["E2"]["hidden_states"], *plan.experiments["E2"]["fixed"]]:
        shutil.copytree(runs / name, tmp_path / "runs" / name)  # trained with the plan's own command
    assert main([*base, "--experiments", "E2"]) == 0  # evaluated into the sweep that holds E1's rows
    doc = json.loads((tmp_path / "out" / "study.json").read_text())
    assert doc["E3"] == e3 and doc["E2"]["verdict"] in VERDICTS[:3]
    # E1 as it was, but for the shared sweep's wall time, which now includes E2's configs
    assert {k: v for k, v in doc["E1"].items() if k != "runs"} == {k: v for k, v in e1.items() if k != "runs"}
    before, after = ({r["name"]: r for r in d["runs"]} for d in (e1, doc["E1"]))
    assert before.keys() == after.keys() and after["sweep:adapted"]["wall_s"] > before["sweep:adapted"]["wall_s"]
    assert all(after[name] == run for name, run in before.items() if name != "sweep:adapted")
    summarized = {json.loads(line)["config_id"] for line in (tmp_path / "out" / "adapted" / "sweep.jsonl").open()}
    assert {"learned:skip-6", "base@exit-5", "learned:hidden-a0.05"} <= summarized
    assert main([*base, "--experiments", "E5"]) == 2
