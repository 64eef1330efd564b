"""`adalas demo`: a readable side-by-side table (depth, layers per token, tokens/s, the output
wrapped to the terminal's width), or JSON lines with --json; on the tiny model directory."""
from __future__ import annotations

import json

from adalas.commands import demo


def test_render_wraps_outputs_to_the_width():
    rows = [{"depth": "full", "avg_layers": 30.0, "tokens_per_s": 17.25, "outputs": ["word " * 40, "ok"]},
            {"depth": "skip 7, 15, 22", "avg_layers": 27.0, "tokens_per_s": 19.0, "outputs": ["", "line one\nline two"]}]
    text = demo.render(["first prompt", "second"], rows, width=60)
    lines = text.splitlines()
    assert all(len(x) <= 60 for x in lines)
    assert lines[0] == "Prompt 1/2: first prompt"
    assert lines[1].split() == ["depth", "layers/token", "tokens/s", "output"]
    full = next(x for x in lines if x.startswith("full "))
    assert full.split()[:4] == ["full", "30.00", "17.2", "word"]  # numbers in their columns, then the text
    start = full.index("word")
    continued = lines[lines.index(full) + 1]
    assert continued[:start].strip() == "" and continued[start:].startswith("word")  # wrapped under its column
    assert "(empty)" in text  # an empty output is shown as such
    assert "  line one" in text and "  line two" in text  # the model's own line breaks are kept
    narrow = demo.render(["p", "q"], rows, width=10)  # the output column keeps a usable width
    assert any("word word word" in x for x in narrow.splitlines())


def test_demo_prints_a_table_and_json_lines(tiny_files, capsys, monkeypatch):
    model_dir = str(tiny_files[0])
    monkeypatch.setenv("COLUMNS", "72")
    assert demo.main(["--model", model_dir, "--max-new-tokens", "6"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    assert all(len(x) <= 72 for x in lines)
    assert out.count("layers/token") == len(demo.PROMPTS)
    for name in ("full", "early exit after 1", "skip 1, 2, 3"):
        assert sum(x.startswith(name + " ") for x in lines) == len(demo.PROMPTS)
    assert demo.main(["--model", model_dir, "--max-new-tokens", "6", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["depth"] for r in rows] == ["full", "early exit after 1", "skip 1, 2, 3"]
    assert rows[0]["avg_layers"] == 4.0 and rows[1]["avg_layers"] in (0.0, 1.0)
    assert all(len(r["outputs"]) == len(demo.PROMPTS) and r["tokens_per_s"] > 0 for r in rows)


def test_demo_shows_shipped_adapters_beside_their_route_off_the_shelf(tiny_files, tmp_path, capsys, monkeypatch):
    """A shipped adapted model of --model runs its route twice: off the shelf, then with its adapter."""
    from peft import LoraConfig, get_peft_model

    from adalas import AdalasForCausalLM, DepthConfig, hub
    from adalas.checkpoints import save_adapter

    model_dir = str(tiny_files[0])
    depth = DepthConfig(mode="static_skip", skip_layers=[1, 2])
    peft = get_peft_model(AdalasForCausalLM.from_pretrained(model_dir, depth=depth),
                          LoraConfig(r=2, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    root = tmp_path / "adapters"
    save_adapter(peft, root / "tiny-adapted-2", {"base_model": model_dir, "command": "test", "recipe": None,
                                                  "data_sha256": None, "steps": 0, "wall_s": 0.0})
    save_adapter(peft, root / "other-base", {"base_model": "somewhere-else", "command": "test", "recipe": None,
                                              "data_sha256": None, "steps": 0, "wall_s": 0.0})
    monkeypatch.setattr(hub, "adapters_root", lambda: root)
    assert demo.shipped_adapters(model_dir, 4) == [("tiny-adapted-2", depth)]
    assert demo.main(["--model", model_dir, "--max-new-tokens", "6", "--json"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["depth"] for r in rows] == ["full", "early exit after 1", "skip 1, 2, 3", "tiny-adapted-2 route, untrained",
                                          "tiny-adapted-2, adapted"]
    assert [r["model"] for r in rows[-2:]] == [model_dir, "tiny-adapted-2"]
    assert rows[-2]["avg_layers"] == rows[-1]["avg_layers"] == 2.0 and rows[-1]["config"] == depth.to_dict()
    assert demo.main(["--model", model_dir, "--max-new-tokens", "6", "--json", "--no-adapters"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
