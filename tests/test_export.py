"""`adalas export`: a static route as a plain transformers checkpoint, on tiny random OPT (both
layouts), Llama and GPT-2 models. The round trip: export, load with AutoModelForCausalLM alone,
compare with adalas (skip_prompt=True)."""
from __future__ import annotations

import json
import os
import stat
import subprocess
import sys

import pytest
import torch
from conftest import LAYERS, batch, positions, tiny_gpt2, tiny_llama
from transformers import AutoModelForCausalLM

from adalas import AdalasForCausalLM, DepthConfig
from adalas.cli import main as cli_main
from adalas.commands.export import main as export_main
from adalas.export import EXPORT_FILE, export_checkpoint

ATOL = 1e-5

DEPTHS = {
    "skip": dict(mode="static_skip", skip_layers=[0, 2]),
    "route": dict(mode="route", route=[True, False, False, True]),
    "early_exit": dict(mode="early_exit", exit_after=3),
}


@pytest.mark.parametrize("name", sorted(DEPTHS))
@torch.no_grad()
def test_round_trip_logits(hf_model, tmp_path, name):
    ids, mask = batch()
    depth = DepthConfig(**DEPTHS[name])
    summary = export_checkpoint(hf_model, depth, tmp_path / "out")
    assert hf_model.config.num_hidden_layers == LAYERS and AdalasForCausalLM.from_hf(hf_model).num_layers == LAYERS
    exported = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    keep = [i for i, r in enumerate(depth.static_route(LAYERS)) if r]
    assert summary["kept_layers"] == keep and "warning" not in summary  # an explicit depth: nothing to warn of
    assert exported.config.num_hidden_layers == len(keep)
    assert sorted(p.name for p in (tmp_path / "out").glob("*.safetensors")) == ["model.safetensors"]
    m = AdalasForCausalLM.from_hf(hf_model, DepthConfig(skip_prompt=True, **DEPTHS[name]))
    ours = m(input_ids=ids, attention_mask=mask).logits
    theirs = exported(input_ids=ids, attention_mask=mask, position_ids=positions(mask)).logits
    keep_tokens = mask.bool()
    torch.testing.assert_close(theirs[keep_tokens], ours[keep_tokens], atol=ATOL, rtol=0)
    # cached decoding in transformers works on the renumbered layers and agrees with adalas
    gen_theirs = exported.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, do_sample=False,
                                   pad_token_id=0)
    gen_ours = m.generate(input_ids=ids, attention_mask=mask, max_new_tokens=4, pad_token_id=0)
    assert torch.equal(gen_theirs, gen_ours)  # skip_prompt: the prefill follows the route too


def test_layer_types_narrowed(tmp_path):
    from transformers import Qwen2Config, Qwen2ForCausalLM
    cfg = Qwen2Config(vocab_size=96, hidden_size=32, num_hidden_layers=4, intermediate_size=64, num_attention_heads=4,
                      num_key_value_heads=2, use_sliding_window=True, sliding_window=4, max_window_layers=2)
    torch.manual_seed(0)
    hf = Qwen2ForCausalLM(cfg).eval()
    assert hf.config.layer_types == ["full_attention"] * 2 + ["sliding_attention"] * 2
    export_checkpoint(hf, dict(mode="static_skip", skip_layers=[0, 3]), tmp_path / "q")
    saved = json.loads((tmp_path / "q" / "config.json").read_text())
    assert saved["num_hidden_layers"] == 2 and saved["layer_types"] == ["full_attention", "sliding_attention"]
    AutoModelForCausalLM.from_pretrained(tmp_path / "q")


def _tiny_dir(tmp_path, with_tokenizer=True):
    from test_generation_options import tiny_tokenizer
    src = tmp_path / "src"
    tiny_llama().save_pretrained(src)
    if with_tokenizer:
        tiny_tokenizer().save_pretrained(src)
    return src


@torch.no_grad()
def test_cli_round_trip_without_adalas(tmp_path, capsys):
    """The CLI writes a checkpoint (tokenizer included) that a Python without adalas loads and runs."""
    src = _tiny_dir(tmp_path)
    out = tmp_path / "exported"
    depth = '{"mode": "static_skip", "skip_layers": [1, 2]}'
    assert cli_main(["export", "--model", str(src), "--depth", depth, "--out", str(out)]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["kept_layers"] == [0, 3] and summary["tokenizer"] is True
    assert {"config.json", "model.safetensors", "tokenizer.json", EXPORT_FILE} <= {p.name for p in out.iterdir()}
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no temp dir left behind
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE((out / "model.safetensors").stat().st_mode) == 0o666 & ~umask  # shareable as any file
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    ids, mask = batch(pad=False)
    script = ("import sys; sys.modules['adalas'] = None\n"
              "import torch; from transformers import AutoModelForCausalLM, AutoTokenizer\n"
              f"m = AutoModelForCausalLM.from_pretrained({str(out)!r}); AutoTokenizer.from_pretrained({str(out)!r})\n"
              f"torch.save(m(input_ids=torch.tensor({ids.tolist()})).logits, {str(tmp_path / 'l.pt')!r})\n")
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True)
    theirs = torch.load(tmp_path / "l.pt")
    m = AdalasForCausalLM.from_pretrained(src, depth=dict(mode="static_skip", skip_layers=[1, 2], skip_prompt=True))
    torch.testing.assert_close(theirs, m(input_ids=ids).logits, atol=ATOL, rtol=0)


def test_cli_refusals_and_overwrite(tmp_path, capsys):
    src = _tiny_dir(tmp_path, with_tokenizer=False)
    skip = '{"mode": "static_skip", "skip_layers": [1]}'
    for depth in ('{"mode": "stochastic", "skip_probs": [0, 0.5, 0.5, 0]}',
                  '{"mode": "confidence_exit", "threshold": 0.9, "exit_layers": [2]}',
                  '{"mode": "learned"}'):
        with pytest.raises(ValueError, match="static route"):
            export_main(["--model", str(src), "--depth", depth, "--out", str(tmp_path / "x")])
    with pytest.raises(ValueError, match="skip_layers: layer 7 is out of range"):
        export_main(["--model", str(src), "--depth", '{"mode": "static_skip", "skip_layers": [7]}',
                     "--out", str(tmp_path / "x")])
    assert not (tmp_path / "x").exists()
    a_file = tmp_path / "file.txt"
    a_file.write_text("keep me")
    with pytest.raises(ValueError, match="--out: .* exists and is not a directory"):
        export_main(["--model", str(src), "--depth", skip, "--out", str(a_file)])
    assert a_file.read_text() == "keep me"
    full_dir = tmp_path / "full"
    full_dir.mkdir()
    (full_dir / "x").write_text("")
    assert cli_main(["export", "--model", str(src), "--depth", skip, "--out", str(full_dir)]) == 2
    assert "directory is not empty; pass --overwrite" in capsys.readouterr().err
    assert export_main(["--model", str(src), "--depth", skip, "--out", str(full_dir), "--overwrite"]) == 0
    assert not (full_dir / "x").exists() and json.loads((full_dir / EXPORT_FILE).read_text())["tokenizer"] is False
    empty = tmp_path / "empty"
    empty.mkdir()
    assert export_main(["--model", str(src), "--depth", skip, "--out", str(empty)]) == 0
    assert AutoModelForCausalLM.from_pretrained(empty).config.num_hidden_layers == LAYERS - 1


def test_saved_depth_is_the_default(tmp_path, capsys):
    """An adalas directory's saved depth config applies when --depth is not given."""
    m = AdalasForCausalLM.from_hf(tiny_gpt2(), DepthConfig(mode="early_exit", exit_after=2))
    m.save_pretrained(tmp_path / "ada")
    assert export_main(["--model", str(tmp_path / "ada"), "--out", str(tmp_path / "o")]) == 0
    assert json.loads(capsys.readouterr().out)["kept_layers"] == [0, 1]
    assert AutoModelForCausalLM.from_pretrained(tmp_path / "o").config.n_layer == 2


def test_gpt2_inverse_layer_scaling_refused(tmp_path):
    hf = tiny_gpt2()
    hf.config.scale_attn_by_inverse_layer_idx = True
    with pytest.raises(ValueError, match="scale_attn_by_inverse_layer_idx"):
        export_checkpoint(hf, dict(mode="static_skip", skip_layers=[1]), tmp_path / "g")
    export_checkpoint(hf, dict(mode="early_exit", exit_after=2), tmp_path / "g")  # trailing layers only: exact
