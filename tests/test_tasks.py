"""The real-task protocol's machinery: logged looks, rows committed without the data's text, the
report that joins references back by id (refusing another file), and its statistics."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from adalas import stats, task_report, tasks
from adalas.cli import main
from adalas.data import file_sha256
from adalas.evaluate import rouge

REFS = ["the cat sat on the mat", "a dog ran in the park today", "rain is expected all week",
        "she bought bread and milk", "the meeting moved to friday"]


def _data_dir(tmp_path: Path) -> Path:
    d = tmp_path / "shared"
    d.mkdir()
    for name, t in tasks.REAL_TASKS.items():
        rows = [{"id": f"{name}-{i}", "instruction": "Summarize.", "input": "text " * 5, "output": r}
                for i, r in enumerate(REFS)]
        (d / t.file).write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d


def _row(cid: str, task: str, i: int, prediction: str, layers: float, tokens: int, stopped: bool) -> dict:
    return {"config_id": cid, "id": f"{task}-{i}", "prompt": "secret prompt", "reference": REFS[i],
            "prediction": prediction, **rouge(prediction, REFS[i]), "layers_used": layers, "prompt_tokens": 9,
            "output_tokens": tokens, "stopped": stopped}


def _results(tmp_path: Path, data_dir: Path, drop_words: int = 2) -> Path:
    """A committed-looking results folder: full depth, and a 20-layer config that loses words."""
    out = tmp_path / "results"
    for name, t in tasks.REAL_TASKS.items():
        run = tmp_path / "runs" / name
        run.mkdir(parents=True)
        rows = []
        for i, ref in enumerate(REFS):
            rows.append(_row("full", name, i, ref, 30.0, 8, True))
            rows.append(_row("adapted:smollm2-135m-adapted-20", name, i, " ".join(ref.split()[:-drop_words]), 20.0, 7,
                             True))
            rows.append(_row("route:smollm2-135m-adapted-20", name, i, ref.split()[0], 20.0, 8, i % 2 == 0))
        (run / "per_sequence.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
        sha = file_sha256(data_dir / t.file)
        (run / "settings.json").write_text(json.dumps({"settings": {"data_sha256": sha}, "configs": {}}))
        (run / "sweep.jsonl").write_text("")
        tasks.publish(run, out / name)
    return out


def test_a_look_is_logged_once_per_config_and_weights(tmp_path):
    looks = tmp_path / "LOOKS.jsonl"
    first = tasks.log_looks(looks, "samsum", "abc", [("full", "w0"), ("adapted:x", "w1")], "first look", "c1")
    assert [c["config_id"] for c in first["configs"]] == ["full", "adapted:x"]
    assert tasks.log_looks(looks, "samsum", "abc", [("full", "w0"), ("adapted:x", "w1")], "resumed", "c2") is None
    again = tasks.log_looks(looks, "samsum", "abc", [("full", "w0"), ("adapted:x", "w2")], "retrained", "c3")
    assert again["configs"] == [{"config_id": "adapted:x", "model_sha256": "w2"}]  # new weights: a new look
    other = tasks.log_looks(looks, "cnn_dailymail", "def", [("full", "w0")], "another task", "c3")
    assert other is not None
    lines = [json.loads(x) for x in looks.read_text().splitlines()]
    assert len(lines) == 3 and all({"date", "commit", "task", "data_sha256", "configs", "why"} <= set(x) for x in lines)
    with pytest.raises(ValueError, match="why"):
        tasks.log_looks(looks, "samsum", "abc", [("new", "w9")], "  ", "c4")


def test_a_new_route_under_an_old_config_id_is_a_new_look(tmp_path):
    """Lines logged before routes were match any route, unless the sweep's rows were made with another
    definition (`changed`): a shipped route that changed, borrowed by `route:` or `dropout@` configs."""
    looks = tmp_path / "LOOKS.jsonl"
    tasks.log_looks(looks, "samsum", "abc", [("full", "w0"), ("route:a", "w0")], "first look", "c1")  # no routes
    assert tasks.log_looks(looks, "samsum", "abc", [("full", "w0", None), ("route:a", "w0", "110")], "same",
                           "c2") is None
    line = tasks.log_looks(looks, "samsum", "abc", [("full", "w0", None), ("route:a", "w0", "101")], "new route",
                           "c3", changed=["route:a"])
    assert line["configs"] == [{"config_id": "route:a", "model_sha256": "w0", "route": "101"}]
    assert tasks.log_looks(looks, "samsum", "abc", [("route:a", "w0", "101")], "resumed", "c4",
                           changed=["route:a"]) is None  # logged with its route: the same look
    assert tasks.log_looks(looks, "samsum", "abc", [("route:a", "w0", "011")], "another", "c5",
                           changed=["route:a"]) is not None


def test_look_identities_name_each_configs_weights_and_its_route_unless_every_layer_runs():
    from adalas.config import DepthConfig
    from adalas.sweep import SweepConfig

    configs = [SweepConfig("full", "full", 4, DepthConfig()),
               SweepConfig("route", "route", 3, DepthConfig(mode="static_skip", skip_layers=[2])),
               SweepConfig("adapted", "adapted", 3, DepthConfig(mode="static_skip", skip_layers=[2]), weights="w1"),
               SweepConfig("early_exit@2", "early_exit", 2, DepthConfig(mode="early_exit", exit_after=2))]
    assert tasks.look_identities(configs, 4, "w0") == [("full", "w0", None), ("route", "w0", "1101"),
                                                       ("adapted", "w1", "1101"), ("early_exit@2", "w0", "1100")]


def test_a_rerun_over_rows_of_another_definition_logs_a_new_look_and_makes_them_again(tiny_files, tmp_path,
                                                                                        monkeypatch):
    """`adalas tasks run` after a config's definition changed (here the rows and the look of
    uniform_skip@2 were made on another route, as when a shipped route that configs borrow is replaced,
    and logged before looks recorded routes): one new LOOKS line for that config alone, with its route,
    and its rows made again; the other configs' rows are kept."""
    import argparse
    import dataclasses

    from adalas import hub
    from adalas.commands import tasks as command

    model, _ = tiny_files
    monkeypatch.setattr(command, "MODEL", str(model))
    monkeypatch.setattr(hub, "embedded_model_dir", lambda alias="": model)
    monkeypatch.setitem(tasks.REAL_TASKS, "samsum", dataclasses.replace(tasks.REAL_TASKS["samsum"], max_new_tokens=4))
    data_dir = _data_dir(tmp_path)
    args = argparse.Namespace(out=str(tmp_path / "results"), runs=str(tmp_path / "runs"), why="first", batch_size=2,
                              no_progress=True)
    phase = {"strategies": "full,uniform_skip", "budgets": "2"}
    data = data_dir / tasks.REAL_TASKS["samsum"].file
    command.run_phase(phase, "samsum", data, args)
    looks = tmp_path / "results" / "LOOKS.jsonl"
    settings = tmp_path / "runs" / "samsum" / "settings.json"
    doc = json.loads(settings.read_text())
    skipped = doc["configs"]["uniform_skip@2"]["depth"]["skip_layers"]
    doc["configs"]["uniform_skip@2"]["depth"]["skip_layers"] = [s - 1 for s in skipped]  # rows of another route
    settings.write_text(json.dumps(doc))
    first = json.loads(looks.read_text())
    first["configs"] = [{k: v for k, v in c.items() if k != "route"} for c in first["configs"]]
    looks.write_text(json.dumps(first) + "\n")  # as lines were logged before routes were
    rows = tmp_path / "runs" / "samsum" / "per_sequence.jsonl"
    full_rows = [r for r in rows.read_text().splitlines() if '"config_id": "full"' in r]
    command.run_phase(phase, "samsum", data, argparse.Namespace(**{**vars(args), "why": "the route changed"}))
    lines = [json.loads(x) for x in looks.read_text().splitlines()]
    assert len(lines) == 2 and [c["config_id"] for c in lines[1]["configs"]] == ["uniform_skip@2"]
    layers = json.loads((model / "config.json").read_text())["num_hidden_layers"]
    assert lines[1]["configs"][0]["route"] == "".join("0" if i in skipped else "1" for i in range(layers))
    assert json.loads(settings.read_text())["configs"]["uniform_skip@2"]["depth"]["skip_layers"] == skipped
    assert [r for r in rows.read_text().splitlines() if '"config_id": "full"' in r] == full_rows
    command.run_phase(phase, "samsum", data, args)  # resumed: the same look, nothing new
    assert len(looks.read_text().splitlines()) == 2


def test_a_fresh_checkout_resumes_a_look_from_the_committed_rows(tiny_files, tmp_path, monkeypatch):
    """The run directory is ignored, so a new checkout lacks it: `adalas tasks run` starts it from the
    committed rows and makes only the configs they lack (restored rows keep no text; made rows do),
    and the committed rows of the old configs come out the same."""
    import argparse
    import dataclasses
    import shutil

    from adalas import hub
    from adalas.commands import tasks as command

    model, _ = tiny_files
    monkeypatch.setattr(command, "MODEL", str(model))
    monkeypatch.setattr(hub, "embedded_model_dir", lambda alias="": model)
    monkeypatch.setitem(tasks.REAL_TASKS, "samsum", dataclasses.replace(tasks.REAL_TASKS["samsum"], max_new_tokens=4))
    data = _data_dir(tmp_path) / tasks.REAL_TASKS["samsum"].file
    args = argparse.Namespace(out=str(tmp_path / "results"), runs=str(tmp_path / "runs"), why="first", batch_size=2,
                              no_progress=True)
    command.run_phase({"strategies": "full,uniform_skip", "budgets": "2"}, "samsum", data, args)
    published = tmp_path / "results" / "samsum" / "per_sequence.jsonl"
    before = published.read_text()
    shutil.rmtree(tmp_path / "runs")  # a fresh checkout
    command.run_phase({"strategies": "full,uniform_skip", "budgets": "2,3"}, "samsum", data,
                      argparse.Namespace(**{**vars(args), "why": "one more budget"}))
    made = [json.loads(x) for x in (tmp_path / "runs" / "samsum" / "per_sequence.jsonl").read_text().splitlines()]
    assert {r["config_id"] for r in made if "prompt" not in r} == {"full", "uniform_skip@2"}
    assert {r["config_id"] for r in made if "prompt" in r} == {"uniform_skip@3"}
    after = [x for x in published.read_text().splitlines() if '"uniform_skip@3"' not in x]
    assert after == before.splitlines()
    lines = [json.loads(x) for x in (tmp_path / "results" / "LOOKS.jsonl").read_text().splitlines()]
    assert [c["config_id"] for c in lines[-1]["configs"]] == ["uniform_skip@3"]
    assert not tasks.restore(tmp_path / "results" / "samsum", tmp_path / "runs" / "samsum")  # rows there: left alone


def test_changed_definitions_names_the_config_ids_recorded_otherwise(tmp_path):
    from adalas.run_settings import changed_definitions

    assert changed_definitions(tmp_path, {"full": {"strategy": "full"}}) == []  # nothing recorded yet
    recorded = {"full": {"strategy": "full"}, "adapted:a": {"strategy": "adapted", "weights": "w1"},
                "route:a": {"strategy": "route", "depth": {"route": [1, 0]}}, "old": {"strategy": "adapted"}}
    (tmp_path / "settings.json").write_text(json.dumps({"settings": {}, "configs": recorded}))
    now = {"full": {"strategy": "full"}, "adapted:a": {"strategy": "adapted", "weights": "w2"},
           "route:a": {"strategy": "route", "depth": {"route": [0, 1]}},
           "old": {"strategy": "adapted", "weights": "w3"},  # weights recorded since: not a change
           "new": {"strategy": "full"}}
    assert changed_definitions(tmp_path, now) == ["adapted:a", "route:a"]


def test_committed_rows_keep_no_data_text_and_references_come_back_by_id(tmp_path):
    data_dir = _data_dir(tmp_path)
    out = _results(tmp_path, data_dir)
    rows = [json.loads(x) for x in (out / "samsum" / "per_sequence.jsonl").read_text().splitlines()]
    assert rows and not any(k in r for r in rows for k in ("prompt", "reference"))
    assert "secret prompt" not in (out / "samsum" / "per_sequence.jsonl").read_text()
    joined = tasks.join_references(rows, data_dir / "samsum.test.jsonl", file_sha256(data_dir / "samsum.test.jsonl"))
    assert [r["reference"] for r in joined if r["config_id"] == "full"] == REFS
    with pytest.raises(ValueError, match="sha256"):
        tasks.join_references(rows, data_dir / "samsum.test.jsonl", "0" * 64)


def test_report_states_ratios_targets_and_refuses_rows_of_another_file(tmp_path):
    data_dir = _data_dir(tmp_path)
    out = _results(tmp_path, data_dir)
    readme = tmp_path / "README.md"
    readme.write_text(f"# x\n\n{task_report.README_START}\nold words\n{task_report.README_END}\n\n## After\n")
    path = task_report.write_task_report(out, data_dir, readme)
    once = readme.read_text()
    assert "old words" not in once and "#### Pooled" in once and once.endswith(f"{task_report.README_END}\n\n## After\n")
    task_report.write_task_report(out, data_dir, readme)
    assert readme.read_text() == once  # a second report replaces the tables, it does not add them again
    summary = json.loads((out / "summary.json").read_text())
    pooled = summary["pooled"]["configs"]
    assert summary["pooled"]["n"] == 3 * len(REFS)
    assert pooled["full"]["f_ratio"]["ratio"] == 1.0 and pooled["full"]["f_ratio"]["ci95"] == [1.0, 1.0]
    full_f = np.mean([rouge(r, r)["rougeL"] for r in REFS])
    ad = [rouge(" ".join(r.split()[:-2]), r) for r in REFS]
    assert pooled["adapted:smollm2-135m-adapted-20"]["f_ratio"]["ratio"] == pytest.approx(
        np.mean([s["rougeL"] for s in ad]) / full_f)
    assert pooled["adapted:smollm2-135m-adapted-20"]["precision"] == pytest.approx(1.0)  # content kept, length lost
    assert pooled["adapted:smollm2-135m-adapted-20"]["recall"] < 0.8
    assert pooled["route:smollm2-135m-adapted-20"]["stop_share"] == pytest.approx(3 / 5)
    names = {t["target"]: t for t in summary["targets"]}
    assert not names["adapted:smollm2-135m-adapted-20 pooled recall_ratio >= 0.900"]["met"]
    gap = summary["gaps"]["adapted:smollm2-135m-adapted-20"]
    assert 0 < gap["share"] < 1 and gap["ci95"][0] <= gap["share"] <= gap["ci95"][1]
    text = path.read_text()
    assert "## Pooled" in text and "## samsum" in text and "**no**" in text
    assert (out / "rouge_vs_layers.png").stat().st_size > 0
    # a data file that changed since the rows were made is refused
    f = data_dir / "samsum.test.jsonl"
    f.write_text(f.read_text().replace("cat", "bat"))
    with pytest.raises(ValueError, match="sha256"):
        task_report.build_summary(out, data_dir)


def test_stratified_resamples_keep_each_stratum_and_its_size():
    strata = ["a"] * 3 + ["b"] * 5
    idx = stats.resample_indices(8, strata, resamples=50, seed=1)
    assert idx.shape == (50, 8)
    assert ((idx[:, :3] < 3).all() and (idx[:, 3:] >= 3).all())


def test_equivalence_and_the_detectable_difference():
    rng = np.random.default_rng(0)
    a = rng.normal(0.3, 0.1, 400)
    same = stats.equivalence(a, a + rng.normal(0, 0.01, 400), margin=0.015)
    assert same["equivalent"] and same["detectable"] < 0.015
    far = stats.equivalence(a, a - 0.05, margin=0.015)
    assert not far["equivalent"] and far["ci95"][0] > 0.015
    noisy = stats.equivalence(a[:10], rng.normal(0.3, 0.1, 10), margin=0.015)  # 10 rows cannot show it
    assert not noisy["equivalent"] and noisy["detectable"] > 0.015
    with pytest.raises(ValueError, match="margin"):
        stats.equivalence(a, a, margin=0)


def test_ratio_and_gap_closed_are_paired_point_estimates_with_intervals():
    full = np.array([0.4, 0.5, 0.3, 0.6])
    r = stats.paired_ratio(full * 0.9, full)
    assert r["ratio"] == pytest.approx(0.9) and r["ci95"] == pytest.approx([0.9, 0.9])
    g = stats.gap_closed(full * 0.8, full * 0.5, full)
    assert g["share"] == pytest.approx(0.6) and g["ci95"] == pytest.approx([0.6, 0.6])


@pytest.mark.parametrize("argv,needle", [
    (["tasks", "run", "--data-dir", "{d}"], "--why"),
    (["tasks", "run", "--why", "x", "--data-dir", "{d}", "--tasks", "alpaca"], "unknown 'alpaca'"),
    (["tasks", "run", "--why", "x", "--data-dir", "{d}", "--phases", "9"], "--phases"),
    (["tasks", "report", "--data-dir", "{missing}"], "is not a file"),
    (["tasks", "run", "--why", "x", "--data-dir", "{d}", "--also-adapted", "no-such-adapter"], "not a shipped adapted model"),
])
def test_tasks_command_refuses_bad_input_in_one_line(tmp_path, capsys, argv, needle):
    data_dir = _data_dir(tmp_path)
    argv = [a.format(d=data_dir, missing=tmp_path / "nowhere") for a in argv]
    before = sorted(p.name for p in tmp_path.rglob("*"))
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]
    assert sorted(p.name for p in tmp_path.rglob("*")) == before  # nothing written


def test_each_input_shape_stands_in_for_one_real_task_with_its_cap():
    # held-out shaped rows are written and scored at their real task's cap, from one definition
    from adalas import synth_shapes
    from adalas.commands import synth as synth_command
    shaped = [s for s in synth_shapes.SHAPES if s != "plain"]
    assert sorted(t.shape for t in tasks.REAL_TASKS.values()) == sorted(shaped)
    for t in tasks.REAL_TASKS.values():
        assert synth_shapes.SHAPE_ANSWER_TOKENS[t.shape] == t.max_new_tokens
        assert synth_command.SHAPE_ANSWER_TOKENS[t.shape] == t.max_new_tokens


def test_also_adapted_joins_phase_one_and_leaves_the_protocols_phases_alone(tmp_path, monkeypatch):
    """The seed that did not ship is swept with phase 1 (and so logged as a look); PHASES stays as committed."""
    from adalas import hub
    from adalas.commands import tasks as command

    ran = []
    monkeypatch.setattr(command, "run_phase", lambda phase, task, data, args: ran.append((phase, task)))
    before = json.dumps(tasks.PHASES)
    assert main(["tasks", "run", "--why", "x", "--data-dir", str(_data_dir(tmp_path)), "--tasks", "samsum",
                 "--also-adapted", "_other-seed", "_other-seed@smollm2-135m-adapted-20"]) == 0
    assert [p["adapted"][-2:] for p, _ in ran] == [["_other-seed", "_other-seed@smollm2-135m-adapted-20"],
                                                   tasks.PHASES[1][1]["adapted"][-2:]]
    assert json.dumps(tasks.PHASES) == before
