"""report and analysis: the report renders from a hand-made sweep directory; the README table with
intervals, random routes as mean ± SD, the router, the best fixed mix and the oracle (not on the full
model's line); comparisons worded by their paired intervals; the oracle beside its null control; the
comparison with the paper; hidden-state similarity on the tiny model (states before the first skipped
layer are the full model's)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adalas import AdalasForCausalLM
from adalas import report as R
from adalas.analysis import hidden_similarity
from adalas.oracle import run_oracle
from adalas.stats import bootstrap_ci, paired_bootstrap
from adalas.sweep import build_configs

from conftest import LAYERS, make_tiny

pytestmark = pytest.mark.filterwarnings("error::adalas.evaluate.LayerCountWarning")

PNG = b"\x89PNG\r\n\x1a\n"
# (config_id, strategy, budget, route, per-sequence rougeL for s0, s1, s2)
CONFIGS = [
    ("full", "full", 4, "1111", [0.6, 0.4, 0.5]),
    ("early_exit@3", "early_exit", 3, "1110", [0.2, 0.1, 0.3]),
    ("uniform_skip@3", "uniform_skip", 3, "1101", [0.6, 0.3, 0.5]),
    ("random_route@3#0", "random_route", 3, "1011", [0.1, 0.5, 0.2]),
    ("random_route@3#1", "random_route", 3, "0111", [0.0, 0.2, 0.1]),
    ("early_exit@2", "early_exit", 2, "1100", [0.0, 0.1, 0.0]),
    ("uniform_skip@2", "uniform_skip", 2, "1010", [0.3, 0.0, 0.5]),
]
SAMPLES = [[0.7, 0.3, 0.5], [0.5, 0.5, 0.4], [0.6, 0.4, 0.2], [0.1, 0.2, 0.3]]  # full_sample#1..4


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep_dir(tmp_path):
    sweep, per_seq = [], []
    samples = [(f"full_sample#{k + 1}", "full_sample", 4, "1111", sc) for k, sc in enumerate(SAMPLES)]
    for cid, strategy, budget, route, scores in CONFIGS + samples:
        usage = [float(c) for c in route]
        sweep.append({"config_id": cid, "strategy": strategy, "budget": budget, "route": route, "model": "hand",
                      "num_layers": 4, "n": 3, "rouge1": sum(scores) / 3 + 0.1, "rouge2": sum(scores) / 6,
                      "rougeL": sum(scores) / 3, "rougeL_ci95": bootstrap_ci(scores), "avg_layers": float(budget),
                      "layer_usage": usage, "reference": "data",
                      **({"sampling": {"seed": int(cid[-1]), "temperature": 0.7, "top_p": 0.9}}
                         if strategy == "full_sample" else {})})
        per_seq += [{"config_id": cid, "id": f"s{i}", "rougeL": s, "layers_used": float(budget), "output_tokens": 5}
                    for i, s in enumerate(scores)]
    router = [("uniform_skip@2", 0.3), ("full", 0.4), ("uniform_skip@2", 0.5)]  # chosen config, score
    sweep.append({"config_id": "sequence@3", "strategy": "sequence", "budget": None, "route": None, "model": "hand",
                  "num_layers": 4, "n": 3, "rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.4,
                  "rougeL_ci95": bootstrap_ci([s for _, s in router]), "avg_layers": 8 / 3,
                  "layer_usage": [1.0, 2 / 3, 1.0, 1 / 3], "reference": "data",
                  "depth": {"mode": "sequence", "target_avg_layers": 3.0}})
    per_seq += [{"config_id": "sequence@3", "id": f"s{i}", "rougeL": s, "chosen_config": c, "output_tokens": 5,
                 "layers_used": 4.0 if c == "full" else 2.0} for i, (c, s) in enumerate(router)]
    sweep.append({"config_id": "learned:ctl", "strategy": "learned", "budget": None, "route": None, "model": "hand",
                  "num_layers": 4, "n": 3, "rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.45, "avg_layers": 2.5,
                  "layer_usage": [1.0, 0.25, 0.5, 0.75], "reference": "data", "checkpoint": "ctl"})
    per_seq += [{"config_id": "learned:ctl", "id": f"s{i}", "rougeL": s, "layers_used": u, "output_tokens": 5}
                for i, (s, u) in enumerate([(0.5, 2.0), (0.4, 3.0), (0.45, 2.5)])]
    _write(tmp_path / "sweep.jsonl", sweep)
    _write(tmp_path / "per_sequence.jsonl", per_seq)
    run_oracle(tmp_path, strategies=["uniform_skip", "early_exit"])  # K = 5: full_sample#1..4 are its null
    run_oracle(tmp_path, out=tmp_path / "oracle_uniform_skip.json", strategies=["uniform_skip"])
    run_oracle(tmp_path, out=tmp_path / "oracle_all_routes.json")  # K = 8: no null control
    (tmp_path / "hidden_similarity.json").write_text(json.dumps({
        "num_layers": 4, "n_sequences": 3, "n_tokens": 30, "layers": [0, 1, 2, 3, 4], "model": "hand",
        "full": {"consecutive": [0.5, 0.8, 0.9, 0.95], "to_final": [0.1, 0.4, 0.7, 0.9, 1.0]},
        "configs": [{"config_id": cid, "strategy": st, "budget": b, "route": r, "per_layer": [1.0, 1.0, 0.9, 0.8, 0.7],
                     "final": 0.7, "mean": 0.85} for cid, st, b, r, _ in CONFIGS[1:]]}))
    (tmp_path / "reproduce.json").write_text(json.dumps({"max_new_tokens": 32, "batch_size": 8, "n_configs": 8,
                                                         "data": {"name": "builtin"}, "wall_s": 321.0,
                                                         "stages_s": {"sweep": 300.0}, "seed": 0}))
    return tmp_path


def test_results_table_quotes_each_strategy_and_the_oracle(sweep_dir):
    rows = R.read_sweep(sweep_dir)
    oracle = json.loads((sweep_dir / "oracle.json").read_text())
    table = R.results_table(rows, oracle).splitlines()
    assert table[0] == ("| layers kept | early exit | uniform skipping | random routes (mean ± SD of 2) | per-sequence "
                        "router (cross-fitted) | best fixed mix (hindsight) | oracle (in-sample upper bound) |")
    ci = lambda xs: f"{sum(xs) / len(xs):.3f} [{bootstrap_ci(xs)[0]:.2f}, {bootstrap_ci(xs)[1]:.2f}]"  # noqa: E731
    full = ci([0.6, 0.4, 0.5])
    assert table[2] == f"| 4 (full model) | {full} | {full} | 0.500 | – | – | – |"  # the oracle is no full model
    # 3 layers: random routes 0.267 and 0.100 -> mean 0.183, SD 0.118; the router (target 3) at 2.7 layers;
    # the best mix of full, uniform and early exit at 3 layers: uniform_skip@3 itself (above the chord from
    # uniform_skip@2 to full); at 2 layers uniform_skip@2
    assert table[3] == (f"| 3 | {ci([0.2, 0.1, 0.3])} | {ci([0.6, 0.3, 0.5])} | 0.183 ± 0.118 | "
                        f"{ci([0.3, 0.4, 0.5])} at 2.7 | 0.467 | {R.oracle_score_at(oracle, 3):.3f} |")
    assert table[4].startswith(f"| 2 | {ci([0.0, 0.1, 0.0])} | {ci([0.3, 0.0, 0.5])} | – | – | 0.267 |")
    # per sequence the oracle takes the best of full, uniform skipping and early exit within the average
    # budget: at 3 layers s0 uniform_skip@3 (0.6), s1 full (0.4), s2 uniform_skip@2 (0.5)
    assert R.oracle_score_at(oracle, 3) == pytest.approx((0.6 + 0.4 + 0.5) / 3)
    assert oracle["match_avg_layers"] <= 3.0
    text = R.readme_results(sweep_dir)
    assert text.startswith("## Results") and "\n".join(table) in text
    assert "wall time 5 min 21 s" in text and "not a best pick" in text


def test_comparisons_are_paired_and_worded_by_their_interval(sweep_dir):
    rows = R.read_sweep(sweep_dir)
    oracle = json.loads((sweep_dir / "oracle.json").read_text())
    said = R.comparisons(rows, R.read_scores(sweep_dir), oracle)
    us_ee = paired_bootstrap([0.6, 0.3, 0.5], [0.2, 0.1, 0.3])  # s0, s1, s2
    assert said[0] == (f"At 3 layers, uniform skipping scores {us_ee['diff']:.3f} higher than early exit (95% CI "
                       f"{us_ee['ci95'][0]:.3f} to {us_ee['ci95'][1]:.3f}, paired over 3 sequences).")
    assert said[1].startswith("At 3 layers, no measurable difference between uniform skipping and the full model")
    assert said[2].startswith("At 3 layers, no measurable difference between random routes (mean of 2 per sequence)")
    router = [s for s in said if "router" in s]
    assert len(router) == 1 and router[0].startswith("Aiming at 3 layers") and "hindsight" in router[0]
    # the mix at the router's depth (8/3): 2/3 of the way from uniform_skip@2 to uniform_skip@3
    mix = [(1 / 3) * a + (2 / 3) * b for a, b in zip([0.3, 0.0, 0.5], [0.6, 0.3, 0.5])]
    res = paired_bootstrap([0.3, 0.4, 0.5], mix)
    assert f"difference {res['diff']:.3f}" in router[0] and "33% uniform_skip@2 and 67% uniform_skip@3" in router[0]


def test_the_oracle_stands_beside_its_null_control(sweep_dir):
    oracle = json.loads((sweep_dir / "oracle.json").read_text())
    null = oracle["null_control"]
    assert null["k"] == 5 and null["configs"] == ["full"] + [f"full_sample#{k}" for k in range(1, 5)]
    text = R.oracle_paragraph(oracle, R.read_scores(sweep_dir))
    assert "in-sample upper bound" in text and "best of 5 configs" in text
    gain = null["score"] - null["full_score"]  # best of full and samples: 0.7, 0.5, 0.5 -> 0.567 - 0.5
    assert gain == pytest.approx(0.0667, abs=1e-4) and f"gains {gain:+.3f} by selection alone" in text
    assert "the oracle's per-sequence best of 5" in text  # paired: oracle best against null best, per sequence
    assert "with the null gain taken off its curve" in text
    report = R.readme_results(sweep_dir)
    assert "uncontrolled" in report  # the oracle over all routes (K = 8) has no null control of 7 runs
    assert "The oracle over uniform skip (3 configs; null gain" in report


def test_the_comparison_with_the_paper_states_what_differs(sweep_dir):
    text = R.readme_results(sweep_dir)
    for line in ("| model | OPT-IML-1.3B (24 layers) | `hand` (4 layers) |",
                 "| budgets | 4, 8, 12 of 24 layers (17-50% of the depth) | 2, 3 of 4 layers (50-75% of the depth) |",
                 "| data | Alpaca, CNN/DailyMail, SAMSum test splits | `builtin`, 3 sequences |",
                 "| new tokens | see the paper | 32, greedy |",
                 "| fine-tuned on the task | yes, on each task | as given (`hand`) |"):
        assert line in text, line
    assert "oracle matches full depth with | 23.3% of the layers (Alpaca) |" in text


def test_report_renders_from_a_hand_made_sweep_dir(sweep_dir):
    path = R.write_report(sweep_dir)
    md = path.read_text()
    for png in ("rouge_vs_layers.png", "skip_rates.png", "hidden_similarity.png"):
        assert (sweep_dir / png).read_bytes().startswith(PNG)
        assert f"({png})" in md
    lo, hi = bootstrap_ci([0.6, 0.3, 0.5])
    assert f"| uniform_skip@3 | uniform_skip | 3.00 | 0.567 | 0.233 | 0.467 | {lo:.3f} to {hi:.3f} | `1101` |" in md
    assert "| full_sample#2 | full_sample | 4.00 |" in md and "(sampled, seed 2)" in md
    assert "| sequence@3 | sequence | 2.67 |" in md and "per sequence |" in md
    assert "| learned:ctl | learned | 2.50 |" in md and "per token" in md
    assert "oracle over uniform skip" in md and "Compared with the paper" in md
    assert "| max new tokens | 32 |" in md and "| wall time | 321 s |" in md
    assert not list(sweep_dir.glob(".*.tmp"))  # atomic writes leave no temporaries
    again = R.write_report(sweep_dir).read_text()
    assert again == md


def test_report_without_oracle_analysis_or_learned_rows(tmp_path):
    _write(tmp_path / "sweep.jsonl", [{"config_id": "full", "strategy": "full", "budget": 4, "route": "1111",
                                       "model": "m", "num_layers": 4, "n": 2, "rouge1": 0.5, "rouge2": 0.3,
                                       "rougeL": 0.4, "avg_layers": 4.0, "layer_usage": [1.0] * 4}])
    md = R.write_report(tmp_path).read_text()
    assert (tmp_path / "rouge_vs_layers.png").is_file() and not (tmp_path / "skip_rates.png").exists()
    assert "Hidden-state" not in md and "| full | full | 4.00 |" in md
    with pytest.raises(ValueError, match="sweep.jsonl"):
        R.write_report(tmp_path / "nothing")


def test_hidden_similarity_is_one_before_the_first_skipped_layer(tmp_path):
    from adalas.data import load_examples
    from adalas.hub import load_tokenizer

    d, data = make_tiny(tmp_path / "tiny")
    model = AdalasForCausalLM.from_pretrained(str(d))
    tok = load_tokenizer(str(d))
    configs = build_configs(LAYERS, budgets=[2, 3], routes_per_budget=1, seed=0)
    doc = hidden_similarity(model, tok, load_examples(str(data)), configs, batch_size=3)
    assert doc["n_sequences"] == 7 and doc["n_tokens"] > 0 and doc["layers"] == list(range(LAYERS + 1))
    assert [c["config_id"] for c in doc["configs"]] == [c.config_id for c in configs[1:]]
    for c in doc["configs"]:
        first_skip = c["route"].index("0")
        assert c["per_layer"][: first_skip + 1] == pytest.approx([1.0] * (first_skip + 1), abs=1e-6)
        assert c["per_layer"][-1] < 0.9999 and c["final"] == c["per_layer"][-1]
        assert c["mean"] == pytest.approx(sum(c["per_layer"][1:]) / LAYERS)
    assert doc["full"]["to_final"][-1] == pytest.approx(1.0)
    assert model.depth.mode == "full"  # restored
    R.plot_similarity(doc, tmp_path / "sim.png")
    assert (tmp_path / "sim.png").read_bytes().startswith(PNG)


def test_reproduce_end_to_end_on_the_tiny_model(tiny_files, tmp_path, capsys):
    """`adalas reproduce` on the tiny model: random routes per budget, the null control's sampled runs,
    the cross-fitted router's rows (a lookup of the routes it chose), the oracles and the report."""
    from adalas.cli import main

    d, data = tiny_files
    out = tmp_path / "rep"
    argv = ["reproduce", "--model", str(d), "--data", str(data), "--budgets", "3", "--routes-per-budget", "2",
            "--max-new-tokens", "4", "--batch-size", "4", "--analysis-limit", "2", "--folds", "2", "--no-progress",
            "--out", str(out)]
    assert main(argv) == 0
    rows = {r["config_id"]: r for r in R.read_sweep(out)}
    assert [r["strategy"] for r in rows.values()] == ["full", "early_exit", "uniform_skip", "random_route",
                                                      "random_route", "full_sample", "full_sample", "sequence"]
    assert all("rougeL_ci95" in r for r in rows.values())
    meta = json.loads((out / "reproduce.json").read_text())
    assert (meta["null_k"], meta["folds"], meta["n_sequences"], meta["routes_per_budget"]) == (3, 2, 7, 2)
    oracle = json.loads((out / "oracle.json").read_text())
    assert oracle["configs"] == ["full", "early_exit@3", "uniform_skip@3"] and oracle["null_control"]["k"] == 3
    crossfit = json.loads((out / "router_crossfit.json").read_text())
    assert crossfit["candidates"] == ["full", "early_exit@3", "uniform_skip@3"] and crossfit["folds"] == 2
    per_seq = [json.loads(x) for x in (out / "per_sequence.jsonl").read_text().splitlines()]
    by = {(r["config_id"], r["id"]): r for r in per_seq}
    routed = [r for r in per_seq if r["config_id"] == "sequence@3"]
    assert len(routed) == 7 and [r["chosen_config"] for r in routed] == crossfit["choices"]["3"]
    for r in routed:  # a lookup: the chosen config's row
        assert r["prediction"] == by[r["chosen_config"], r["id"]]["prediction"]
        assert r["route"] == by[r["chosen_config"], r["id"]]["route"]
    md = (out / "report.md").read_text()
    assert "in-sample upper bound" in md and "null control" in md and "Compared with the paper" in md
    printed = capsys.readouterr().out
    assert "## Results" in printed and "router cross-fitted over 2 folds" in printed
    before = {f: (out / f).read_bytes() for f in ("sweep.jsonl", "per_sequence.jsonl", "oracle.json")}
    assert main(argv) == 0  # a rerun: nothing new, the same bytes
    assert before == {f: (out / f).read_bytes() for f in before}
    # rows recorded under another definition (a shipped adapter replaced since): that config alone is made again
    settings = json.loads((out / "settings.json").read_text())
    settings["configs"]["uniform_skip@3"]["depth"]["skip_layers"] = [0]
    (out / "settings.json").write_text(json.dumps(settings))
    capsys.readouterr()
    assert main(argv) == 0
    said = capsys.readouterr().out
    assert "made again (its definition or weights changed since its rows were made): uniform_skip@3" in said
    assert (out / "sweep.jsonl").read_bytes() == before["sweep.jsonl"]
    again = [json.loads(x) for x in (out / "per_sequence.jsonl").read_text().splitlines()]
    assert sorted(map(json.dumps, again)) == sorted(map(json.dumps, per_seq))
    assert [r["config_id"] for r in again[-7:]] == ["uniform_skip@3"] * 7  # made again, appended
    readme = tmp_path / "README.md"
    readme.write_text("# m\n\n## Results\n")
    assert main(argv + ["--readme", str(readme)]) == 2  # no markers: refused before anything runs
    assert "add them" in capsys.readouterr().err
    readme.write_text(f"# m\n{R.README_START}\nstale table\n{R.README_END}\nafter\n")
    assert main(argv + ["--readme", str(readme)]) == 0
    text = readme.read_text()
    assert "stale table" not in text and text.endswith(f"{R.README_END}\nafter\n") and text.startswith(f"# m\n{R.README_START}\n")
    assert "| layers kept |" in text and "#### The oracle and its null control" in text and "## Results" not in text


def test_an_adapted_model_is_compared_with_its_route_off_the_shelf_and_the_full_model():
    rows = [{"config_id": "full", "strategy": "full", "budget": 4, "avg_layers": 4.0, "rougeL": 0.6},
            {"config_id": "route:m-adapted-2", "strategy": "route", "budget": 2, "avg_layers": 2.0, "rougeL": 0.1},
            {"config_id": "adapted:m-adapted-2", "strategy": "adapted", "budget": 2, "avg_layers": 2.0, "rougeL": 0.5}]
    scores = {"full": {"a": 0.6, "b": 0.5, "c": 0.7}, "route:m-adapted-2": {"a": 0.1, "b": 0.0, "c": 0.2},
              "adapted:m-adapted-2": {"a": 0.5, "b": 0.4, "c": 0.6}}
    said = R.comparisons(rows, scores)
    gain = paired_bootstrap([0.5, 0.4, 0.6], [0.1, 0.0, 0.2])
    assert said[0] == (f"At 2.00 layers, m-adapted-2 scores {gain['diff']:.3f} higher than its route off the shelf "
                       f"(95% CI {gain['ci95'][0]:.3f} to {gain['ci95'][1]:.3f}, paired over 3 sequences).")
    assert said[1].startswith("At 2.00 layers, m-adapted-2 scores") and "the full model" in said[1]
