"""report and analysis: the report renders from a hand-made sweep directory; the README table;
hidden-state similarity on the tiny model (states before the first skipped layer are the full model's)."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from adalas import AdalasForCausalLM
from adalas import report as R
from adalas.analysis import hidden_similarity
from adalas.oracle import run_oracle
from adalas.sweep import build_configs

from conftest import LAYERS, make_tiny

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


def _write(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture
def sweep_dir(tmp_path):
    sweep, per_seq = [], []
    for cid, strategy, budget, route, scores in CONFIGS:
        usage = [float(c) for c in route]
        sweep.append({"config_id": cid, "strategy": strategy, "budget": budget, "route": route, "model": "hand",
                      "num_layers": 4, "n": 3, "rouge1": sum(scores) / 3 + 0.1, "rouge2": sum(scores) / 6,
                      "rougeL": sum(scores) / 3, "avg_layers": float(budget), "layer_usage": usage,
                      "reference": "data"})
        per_seq += [{"config_id": cid, "id": f"s{i}", "rougeL": s, "layers_used": float(budget), "output_tokens": 5}
                    for i, s in enumerate(scores)]
    sweep.append({"config_id": "learned:ctl", "strategy": "learned", "budget": None, "route": None, "model": "hand",
                  "num_layers": 4, "n": 3, "rouge1": 0.5, "rouge2": 0.2, "rougeL": 0.45, "avg_layers": 2.5,
                  "layer_usage": [1.0, 0.25, 0.5, 0.75], "reference": "data", "checkpoint": "ctl"})
    per_seq += [{"config_id": "learned:ctl", "id": f"s{i}", "rougeL": s, "layers_used": u, "output_tokens": 5}
                for i, (s, u) in enumerate([(0.5, 2.0), (0.4, 3.0), (0.45, 2.5)])]
    _write(tmp_path / "sweep.jsonl", sweep)
    _write(tmp_path / "per_sequence.jsonl", per_seq)
    run_oracle(tmp_path)
    run_oracle(tmp_path, out=tmp_path / "oracle_uniform_skip.json", strategies=["uniform_skip"])
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
    assert table[0] == "| layers kept | early exit | uniform skipping | random routes: mean (best) | per-sequence oracle |"
    assert table[2] == f"| 4 (full model) | 0.500 | 0.500 | 0.500 | {R.oracle_score_at(oracle, 4):.3f} |"
    assert table[3] == f"| 3 | 0.200 | 0.467 | 0.183 (0.267) | {R.oracle_score_at(oracle, 3):.3f} |"
    assert table[4].startswith("| 2 | 0.033 | 0.267 | – |")
    # per sequence the oracle takes the best config within the average budget: at 3 layers at least 0.6, 0.5, 0.5
    assert R.oracle_score_at(oracle, 3) >= (0.6 + 0.5 + 0.5) / 3 - 1e-12
    assert oracle["match_avg_layers"] <= 3.0
    text = R.readme_results(sweep_dir)
    assert text.startswith("## Results") and "\n".join(table) in text
    assert "matches the full model's ROUGE-L (0.500)" in text and "wall time 5 min 21 s" in text


def test_report_renders_from_a_hand_made_sweep_dir(sweep_dir):
    path = R.write_report(sweep_dir)
    md = path.read_text()
    for png in ("rouge_vs_layers.png", "skip_rates.png", "hidden_similarity.png"):
        assert (sweep_dir / png).read_bytes().startswith(PNG)
        assert f"({png})" in md
    assert "| uniform_skip@3 | uniform_skip | 3.00 | 0.567 | 0.233 | 0.467 | `1101` |" in md
    assert "| learned:ctl | learned | 2.50 |" in md and "per token" in md
    assert "oracle over the uniform skip only" in md
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
