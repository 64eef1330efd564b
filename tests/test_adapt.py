"""`adalas adapt` on tiny random Llama, OPT and GPT-2 models saved with a small byte-level BPE tokenizer
(trained in the test) and a few rows of data: the whole pipeline through the command line in seconds.

The export loads with plain transformers and its logits equal the adapted model's (adalas, adapter
merged, its route with skip_prompt=true); the Llama one also writes a GGUF, read back tensor by tensor
(names, shapes, block count, Q/K rows un-permuted) and loaded by transformers' GGUF reader. A run killed
in each stage in turn resumes there (no finished stage runs again: counted) and ends with the outputs of
an unbroken run; a changed input redoes its stage and every one after it; bad input is one line, exit
code 2, nothing written. Stages are counted and killed through `adalas.adapt.STAGES`.
"""
from __future__ import annotations

import json
import os
import shutil
from collections import Counter
from pathlib import Path

import pytest
import torch
from conftest import ROWS, TEMPLATE_WORDS, make_tiny

from adalas import AdalasForCausalLM, DepthConfig
from adalas import adapt as A
from adalas.cli import main

FAST = ["--steps", "2", "--heldout", "4", "--route-rows", "2", "--response-tokens", "8", "--max-candidates", "3",
        "--max-new-tokens", "4", "--batch-size", "4", "--speed-tokens", "2", "--speed-rounds", "1", "--no-progress"]
FAMILIES = ("llama", "opt", "gpt2")
USER_CACHE = os.environ.get("ADALAS_CACHE")  # before the fixture below points it at a temporary one


def _bpe_tokenizer():
    """A byte-level BPE (GPT-2's pre-tokenizer) over the rows' and the Alpaca template's words."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=1000, special_tokens=["<pad>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([TEMPLATE_WORDS] + [" ".join(r.values()) for r in ROWS], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>")


def _tiny(family: str, vocab: int):
    from transformers import (GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM, OPTConfig,
                              OPTForCausalLM)

    ids = dict(pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    if family == "llama":
        return LlamaForCausalLM(LlamaConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, intermediate_size=64,
                                            num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                                            tie_word_embeddings=False, **ids))
    if family == "opt":
        return OPTForCausalLM(OPTConfig(vocab_size=vocab, hidden_size=32, num_hidden_layers=4, ffn_dim=64,
                                        num_attention_heads=4, max_position_embeddings=256, word_embed_proj_dim=32,
                                        dropout=0.0, **ids))
    return GPT2LMHeadModel(GPT2Config(vocab_size=vocab, n_embd=32, n_layer=4, n_head=4, n_positions=256, resid_pdrop=0.0,
                                      embd_pdrop=0.0, attn_pdrop=0.0, **ids))


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """Model directories per family (one BPE tokenizer), rows.jsonl (14 rows: ROWS twice) and eval.jsonl
    (ROWS[1], which shares an 8-gram with two data rows, and two short rows of its own)."""
    root = tmp_path_factory.mktemp("adapt")
    tok = _bpe_tokenizer()
    for family in FAMILIES:
        _tiny(family, len(tok)).eval().save_pretrained(root / family)
        tok.save_pretrained(root / family)
    rows = [dict(r, id=f"{r['id']}-{k}") for k in range(2) for r in ROWS]
    (root / "rows.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    evaluation = [ROWS[1], {"id": "e1", "instruction": "Name a fruit.", "input": "", "output": "An apple."},
                  {"id": "e2", "instruction": "What is one plus one?", "input": "", "output": "Two."}]
    (root / "eval.jsonl").write_text("".join(json.dumps(r) + "\n" for r in evaluation))
    return root


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path_factory.getbasetemp() / "adalas-cache"))


def _argv(world: Path, family: str, out: Path, *extra: str) -> list[str]:
    gguf = ["--format", "gguf", "--gguf-dtype", "f32"] if family == "llama" else []
    return ["adapt", "--model", str(world / family), "--layers", "2", "--out", str(out), "--data",
            str(world / "rows.jsonl"), "--test", str(world / "eval.jsonl"), *gguf, *FAST, *extra]


@pytest.fixture(scope="module")
def finished(world):
    """family -> an unbroken run's directory (each made once, on first use)."""
    done: dict[str, Path] = {}

    def get(family: str) -> Path:
        if family not in done:
            out = world / f"out-{family}"
            assert main(_argv(world, family, out)) == 0
            done[family] = out
        return done[family]
    return get


def _counting(monkeypatch, kill: str | None = None) -> tuple[Counter, list]:
    """Count each stage's calls (and whether it resumed); `kill`: that stage is interrupted when it starts."""
    calls: Counter = Counter()
    resumed: list = []
    for name, (inputs, stage) in list(A.STAGES.items()):
        def wrapped(run, ins, resume, _name=name, _stage=stage):
            calls[_name] += 1
            resumed.append((_name, resume))
            if _name == kill:
                raise KeyboardInterrupt
            return _stage(run, ins, resume)
        monkeypatch.setitem(A.STAGES, name, (inputs, wrapped))
    return calls, resumed


def _outputs(out: Path) -> dict:
    """What an unbroken run and a resumed one must agree on (timings aside)."""
    from adalas.io import file_sha256

    rows = {}
    for f in sorted((out / "evaluate").glob("*/per_sequence.jsonl")):
        rows[f.parent.name] = [(r["config_id"], r["id"], r["prediction"]) for r in
                               map(json.loads, f.read_text().splitlines())]
    record = json.loads((out / "adapt.json").read_text())
    return {"adapter": file_sha256(out / "adapter" / "adapter_model.safetensors"),
            "export": file_sha256(out / "export" / "model.safetensors"),
            "gguf": file_sha256(out / "export" / "model.gguf") if (out / "export" / "model.gguf").exists() else None,
            "route": record["stages"]["route"]["outputs"]["skip"], "rows": rows,
            "data": {k: v for k, v in record["stages"]["data"]["outputs"].items() if k.endswith("sha256")}}


# ---------------------------------------------------------------------------------------------
# The whole pipeline, every family

@pytest.mark.parametrize("family", FAMILIES)
def test_the_pipeline_exports_the_adapted_model_on_every_family(world, finished, family):
    out = finished(family)
    record = json.loads((out / "adapt.json").read_text())
    assert set(record["stages"]) == set(A.STAGE_NAMES)
    for name, st in record["stages"].items():
        assert st["status"] == "done" and st["wall_s"] >= 0 and len(st["inputs_sha256"]) == 64, name
        assert st["inputs_sha256"] == A.sha256_json(st["inputs"])
    data = record["stages"]["data"]["outputs"]
    assert (data["rows"], data["dropped_test"], data["heldout_rows"], data["train_rows"]) == (14, 2, 4, 8)
    skip = record["stages"]["route"]["outputs"]["skip"]
    assert len(skip) == 2 and json.loads((out / "route.json").read_text())["skip"] == skip
    assert {p.name for p in (out / "adapter").iterdir()} == {"adapter_model.safetensors", "adapter_config.json",
                                                             "adalas_depth.json", "provenance.json"}
    provenance = json.loads((out / "adapter" / "provenance.json").read_text())
    assert provenance["command"].startswith("adalas adapt --model") and provenance["steps"] == 2
    assert provenance["data_sha256"] == data["train_sha256"] and provenance["base_model"] == str(world / family)
    depth = DepthConfig(mode="static_skip", skip_layers=skip, skip_prompt=True)
    assert DepthConfig.from_dir(out / "adapter") == depth
    assert not list((out / "train").glob("checkpoint-*")) and not list((out / "train").glob("*.safetensors"))

    evaluation = json.loads((out / "evaluation.json").read_text())
    assert [s["name"] for s in evaluation["sets"]] == ["heldout", "eval"]
    assert [s["n"] for s in evaluation["sets"]] == [2, 3]  # the held-out rows the search did not use; the test file
    for s in evaluation["sets"]:
        assert set(s["configs"]) == {"full", "route", "adapted"} and s["configs"]["adapted"]["avg_layers"] in (0, 2)
        assert {"adapted_minus_full", "adapted_minus_route", "adapted_ratio_to_full"} <= set(s["comparisons"])
    assert evaluation["speed"]["batch_1"]["full_tokens_per_s"] > 0 and evaluation["speed"]["batch_2"]["ratio"] > 0
    report = (out / "report.md").read_text()
    assert "| heldout | 2 |" in report and "| eval | 3 |" in report and "export / full" in report
    card = (out / "export" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers") and "exactly the model that was trained" in card
    assert "AutoModelForCausalLM.from_pretrained" in card

    _check_export(world, out, family, depth)


@torch.no_grad()
def _check_export(world: Path, out: Path, family: str, depth: DepthConfig) -> None:
    """The export, in plain transformers, is the adapted model on its route with skip_prompt=true."""
    from transformers import AutoModelForCausalLM

    from adalas.hub import merge_adapter

    exported = AutoModelForCausalLM.from_pretrained(out / "export").eval()
    assert exported.config.num_hidden_layers == 2
    base = AutoModelForCausalLM.from_pretrained(world / family).eval()
    adapted = AdalasForCausalLM.from_hf(merge_adapter(base, out / "adapter"), depth)
    ids = torch.randint(3, 200, (2, 9), generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(exported(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-5, rtol=0)
    untouched = AdalasForCausalLM.from_pretrained(world / family, depth=depth)
    assert not torch.allclose(untouched(input_ids=ids).logits, adapted(input_ids=ids).logits, atol=1e-6)  # it trained

    if family == "llama":
        _check_gguf(out, exported, ids)
    else:
        assert not (out / "export" / "model.gguf").exists()


def _check_gguf(out: Path, exported, ids) -> None:
    """The GGUF holds the export's tensors under llama.cpp's names (Q/K rows permuted), its block count
    and tokenizer; transformers' GGUF reader loads it back to the export's logits."""
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adalas.gguf_export import unpermute_qk

    reader = gguf.GGUFReader(str(out / "export" / "model.gguf"))
    assert reader.fields["llama.block_count"].contents() == 2
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    tensors = {t.name: t for t in reader.tensors}
    names = {"token_embd.weight", "output_norm.weight", "output.weight"} | {
        f"blk.{i}.{n}.weight" for i in range(2) for n in ("attn_norm", "attn_q", "attn_k", "attn_v", "attn_output",
                                                          "ffn_norm", "ffn_gate", "ffn_up", "ffn_down")}
    assert set(tensors) == names
    state = exported.state_dict()
    for i in range(2):
        for n, hf, heads in (("attn_q", "q_proj", 4), ("attn_k", "k_proj", 2), ("attn_v", "v_proj", None)):
            w = state[f"model.layers.{i}.self_attn.{hf}.weight"].numpy()
            got = tensors[f"blk.{i}.{n}.weight"].data
            assert got.shape == w.shape and list(tensors[f"blk.{i}.{n}.weight"].shape) == list(w.shape[::-1])
            torch.testing.assert_close(torch.from_numpy(unpermute_qk(got, heads) if heads else got.copy()),
                                       torch.from_numpy(w), atol=0, rtol=0)
    loaded = AutoModelForCausalLM.from_pretrained(str(out / "export"), gguf_file="model.gguf", dtype=torch.float32)
    torch.testing.assert_close(loaded.eval()(input_ids=ids).logits, exported(input_ids=ids).logits, atol=1e-5, rtol=0)
    text = "Name a color. Red is a color."
    assert AutoTokenizer.from_pretrained(str(out / "export"), gguf_file="model.gguf")(text).input_ids == \
        AutoTokenizer.from_pretrained(str(out / "export"))(text).input_ids


# ---------------------------------------------------------------------------------------------
# Resuming

def test_a_run_killed_in_each_stage_resumes_there_and_ends_as_an_unbroken_one(world, finished, tmp_path,
                                                                               monkeypatch, capsys):
    out = tmp_path / "out"
    calls = resumed = None
    for kill in A.STAGE_NAMES:
        with monkeypatch.context() as m:
            calls, resumed = _counting(m, kill)
            assert main(_argv(world, "llama", out)) == 130  # interrupted
        record = json.loads((out / "adapt.json").read_text())
        statuses = [record["stages"][n]["status"] for n in A.STAGE_NAMES]
        k = A.STAGE_NAMES.index(kill)
        assert statuses == ["done"] * k + ["running"] + ["pending"] * (4 - k), kill
        # this run called each stage once, from the one the last run was killed in: finished stages are not redone
        assert calls == Counter(A.STAGE_NAMES[max(k - 1, 0):k + 1]), kill
        assert resumed[0] == (A.STAGE_NAMES[max(k - 1, 0)], k > 0)
    with monkeypatch.context() as m:
        calls, resumed = _counting(m)
        assert main(_argv(world, "llama", out)) == 0
    assert calls == Counter(["export"]) and resumed == [("export", True)]
    assert "interrupted" in capsys.readouterr().err
    assert _outputs(out) == _outputs(finished("llama"))


def test_a_changed_input_redoes_the_stages_it_reaches(world, finished, tmp_path, monkeypatch):
    """Each stage's inputs hold the sha256 of what the stages before it made: a change redoes the stages
    it reaches, and only those."""
    out = tmp_path / "out"
    shutil.copytree(finished("opt"), out)
    before = _outputs(out)
    calls, resumed = _counting(monkeypatch)

    def rerun(*extra: str) -> Counter:
        calls.clear()
        resumed.clear()
        assert main(_argv(world, "opt", out, *extra)) == 0
        assert not any(r for _, r in resumed)  # redone from the start, not resumed
        return Counter(calls)

    assert rerun() == Counter()  # everything done, nothing changed
    assert rerun("--steps", "3") == Counter(["train", "evaluate", "export"])
    assert json.loads((out / "adapt.json").read_text())["stages"]["train"]["outputs"]["steps"] == 3
    assert _outputs(out)["adapter"] != before["adapter"]
    other_test = tmp_path / "more.jsonl"  # shares no text with the data: the same rows, route and adapter
    other_test.write_text(json.dumps({"id": "m1", "instruction": "Name a tree.", "input": "", "output": "Oak."}) + "\n")
    assert rerun("--steps", "3", "--test", str(world / "eval.jsonl"), str(other_test)) == \
        Counter(["data", "evaluate", "export"])
    assert [s["name"] for s in json.loads((out / "evaluation.json").read_text())["sets"]] == ["heldout", "eval", "more"]
    assert rerun("--steps", "3", "--prompt-depth", "full") == Counter(["data", "route", "train", "evaluate", "export"])
    card = (out / "export" / "README.md").read_text()
    assert "the exported checkpoint is a different model" in card
    assert DepthConfig.from_dir(out / "adapter").skip_prompt is False
    rows = tmp_path / "rows.jsonl"
    rows.write_text("".join((world / "rows.jsonl").read_text().splitlines(True)[::-1]))
    assert rerun("--steps", "3", "--data", str(rows)) == Counter(A.STAGE_NAMES)  # other data: every stage
    assert _outputs(out)["data"] != before["data"]


# ---------------------------------------------------------------------------------------------
# Bad input: one line, exit 2, nothing written

def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() if p.is_file() else None for p in sorted(root.rglob("*"))}


BAD = {
    "layers-zero": (["--layers", "0"], r"--layers: must be >= 1, got 0"),
    "layers-all": (["--layers", "4"], r"--layers: must be in 1\.\.3 \(the model has 4 layers\), got 4"),
    "layers-too-many": (["--layers", "99"], r"--layers: must be in 1\.\.3"),
    "model-not-found": (["--model", "no-such-org/no-such-model"], r"model 'no-such-org/no-such-model': cannot load"),
    "out-is-a-file": (["--out", "@file"], r"--out: .* exists and is a file"),
    "out-not-ours": (["--out", "@stranger"], r"--out: .* is not empty and holds no adapt\.json"),
    "data-missing": (["--data", "@nowhere.jsonl"], r"--data: .* is not a file"),
    "data-builtin": (["--data", "builtin"], r"--data: 'builtin' is not a file"),
    "data-is-test": (["--data", "@eval"], r"--data: .* is also a --test file"),
    "test-missing": (["--test", "@nowhere.jsonl"], r"--test: .* is not a file"),
    "gguf-gpt2": (["--model", "@gpt2", "--format", "gguf"], r"--format gguf: .* Llama models only; this model is 'gpt2'"),
    "gguf-wordlevel": (["--model", "@wordlevel", "--format", "gguf"], r"--format gguf: the tokenizer is a WordLevel model"),
    "no-chat-template": (["--data", "@none"], r"--data: required for .*: its tokenizer has no chat template"),
    "steps-zero": (["--steps", "0"], r"--steps: must be >= 1, got 0"),
    "shapes-unknown": (["--shapes", "dialogue,poem"], r"--shapes: a comma list of distinct shapes from dialogue, "
                                                      r"article, input, or none; got 'dialogue,poem'"),
}


@pytest.mark.parametrize("name", sorted(BAD))
def test_bad_input_is_one_line_exit_2_and_nothing_written(world, tmp_path, capsys, name):
    flags, message = BAD[name]
    (tmp_path / "file").write_text("a file")
    (tmp_path / "stranger").mkdir()
    (tmp_path / "stranger" / "notes.txt").write_text("mine")
    if "@wordlevel" in flags:
        make_tiny(tmp_path / "wordlevel")
    base = {"--model": str(world / "llama"), "--layers": "2", "--out": str(tmp_path / "out"),
            "--data": str(world / "rows.jsonl"), "--test": str(world / "eval.jsonl")}
    given = dict(zip(flags[::2], flags[1::2]))
    paths = {"@file": tmp_path / "file", "@stranger": tmp_path / "stranger", "@nowhere.jsonl": tmp_path / "nowhere.jsonl",
             "@eval": world / "eval.jsonl", "@gpt2": world / "gpt2", "@wordlevel": tmp_path / "wordlevel"}
    argv = ["adapt"]
    for flag, value in {**base, **given}.items():
        if value == "@none":
            continue
        argv += [flag, str(paths.get(value, value))]
    before = _snapshot(tmp_path), _snapshot(world)
    capsys.readouterr()
    assert main(argv + ["--no-progress"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("adalas adapt: error: "), err
    import re
    assert re.search(message, err), err
    assert (_snapshot(tmp_path), _snapshot(world)) == before  # nothing written


def test_with_looks_each_test_files_evaluation_is_logged_once_before_it_runs(world, tmp_path):
    """--looks: a line per --test file (not the held-out rows) naming full depth, the route off the shelf
    and the adapted route with their weights' sha256 and route; a rerun of a finished run logs nothing."""
    looks, out = tmp_path / "LOOKS.jsonl", tmp_path / "out"
    argv = _argv(world, "opt", out, "--looks", str(looks))
    assert main(argv) == 0
    lines = [json.loads(x) for x in looks.read_text().splitlines()]
    record = json.loads((out / "adapt.json").read_text())["stages"]
    skip = record["route"]["outputs"]["skip"]
    route = "".join("0" if i in skip else "1" for i in range(4))
    assert len(lines) == 1 and lines[0]["task"] == "eval" and "adalas adapt" in lines[0]["why"]
    assert [(c["config_id"], c.get("route")) for c in lines[0]["configs"]] == [("full", None), ("route", route),
                                                                               ("adapted", route)]
    assert lines[0]["configs"][2]["model_sha256"] == record["train"]["outputs"]["adapter_sha256"]
    assert main(argv) == 0 and len(looks.read_text().splitlines()) == 1


# ---------------------------------------------------------------------------------------------
# Data: self-written rows, written once per model and settings

@pytest.fixture
def chat_model(world, tmp_path, monkeypatch):
    """A tiny llama with a chat template, and adalas synth replaced by a writer of 8 rows per file
    (`written` lists the settings it was called with); the real one is tested in test_synth.py."""
    from adalas import synth
    from adalas.io import atomic_write_json, file_sha256

    model = tmp_path / "chat"
    shutil.copytree(world / "llama", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["chat_template"] = "{% for m in messages %}<s>{{ m['content'] }}</s>{% endfor %}"
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    written = []

    def fake_synthesize(m, tok, settings, out, progress=True):
        written.append(settings)
        rows = [{"id": f"{settings.shape}-{settings.seed}-{i}", "instruction": f"Say {w} ({settings.shape}).",
                 "input": "", "output": f"{w} ."} for i, w in enumerate("red green blue cat dog sun moon star".split())]
        Path(out).write_text("".join(json.dumps(r) + "\n" for r in rows))
        atomic_write_json(synth.meta_path(Path(out)), {"settings": json.loads(json.dumps(vars(settings))),
                                                       "done": True, "rows": len(rows), "data_sha256": file_sha256(out)})
        return {}

    monkeypatch.setattr(synth, "synthesize", fake_synthesize)
    return model, written


def _data_stage_twice(model, tmp_path, monkeypatch, *flags) -> list[dict]:
    records = []
    for out in (tmp_path / "a", tmp_path / "b"):
        with monkeypatch.context() as m:
            _counting(m, kill="route")  # stop after the data stage
            assert main(["adapt", "--model", str(model), "--layers", "2", "--out", str(out), "--synth-rows", "8",
                         "--no-progress", *flags]) == 130
        records.append(json.loads((out / "adapt.json").read_text())["stages"]["data"]["outputs"])
    assert records[0]["heldout_sha256"] == records[1]["heldout_sha256"]
    return records


def test_without_data_the_models_own_rows_are_written_once_and_reused(chat_model, tmp_path, monkeypatch):
    model, written = chat_model
    records = _data_stage_twice(model, tmp_path, monkeypatch, "--heldout", "2", "--shapes", "none")
    assert len(written) == 1 and written[0].n == 8 and written[0].model == str(model)
    assert [[f["reused"] for f in r["synth"]] for r in records] == [[False], [True]]
    assert records[0]["source"] == records[1]["source"] and Path(records[0]["source"]).parent.name == "synth"
    assert (records[0]["heldout_rows"], records[0]["train_rows"]) == (2, 6)


def test_shaped_rows_are_written_per_shape_and_held_out_in_turn(chat_model, tmp_path, monkeypatch):
    """Rows of each shape come from their own synth files (chunk k of the i-th shape has seed 10 k + i),
    each written once; held out: the first rows of each kind, interleaved (plain, dialogue, input, ...)."""
    model, written = chat_model
    records = _data_stage_twice(model, tmp_path, monkeypatch, "--heldout", "6", "--shapes", "dialogue,input",
                                "--shape-rows", "4")
    assert [(c.shape, c.seed, c.n) for c in written] == [("plain", 0, 8), ("dialogue", 11, 4), ("input", 13, 4)]
    assert [[f["reused"] for f in r["synth"]] for r in records] == [[False] * 3, [True] * 3]
    assert records[0]["kinds"] == {k: {"rows": 8, "heldout": 2} for k in ("plain", "dialogue", "input")}
    held = [json.loads(x)["id"] for x in (tmp_path / "a" / "data" / "heldout.jsonl").read_text().splitlines()]
    assert held == ["plain-0-0", "dialogue-11-0", "input-13-0", "plain-0-1", "dialogue-11-1", "input-13-1"]
    train = [json.loads(x)["id"] for x in (tmp_path / "a" / "data" / "train.jsonl").read_text().splitlines()]
    assert len(train) == 18 and not set(train) & set(held) and train[0] == "plain-0-2"


def test_the_embedded_model_reuses_its_committed_rows_of_every_shape():
    """`adalas adapt --model smollm2-135m` writes no rows: the committed plain rows and the six committed
    chunks of shaped rows (data/synth/shapes/) match its settings (their excluded files aside)."""
    from adalas.adapt import AdaptSettings, shape_settings, synth_location
    from adalas.adapt.data_stage import synth_finished

    s = AdaptSettings(model="smollm2-135m", layers=20, out="unused", tests=("../shared/data/samsum.test.jsonl",))
    chunks = shape_settings(s)
    assert [(c.shape, c.seed, c.n) for c in chunks] == [(shape, 10 * k + i, 96) for i, shape in
                                                        enumerate(("dialogue", "article", "input"), 1) for k in (1, 2)]
    for c in [None, *chunks]:
        path, settings = synth_location(s, c)
        assert path.parts[:2] == ("data", "synth") and synth_finished(path, settings), path


# ---------------------------------------------------------------------------------------------
# The embedded model's GGUF (slow: the 135M model, and transformers' GGUF reader)

@pytest.mark.slow
@torch.no_grad()
def test_the_embedded_models_gguf_keeps_its_source_metadata_and_loads_back(tmp_path, monkeypatch):
    import gguf
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from adalas.export import export_checkpoint
    from adalas.gguf_export import write_gguf
    from adalas.hub import embedded_gguf

    if USER_CACHE is None:  # the converted model where the user keeps it, not a fresh conversion
        monkeypatch.delenv("ADALAS_CACHE")
    else:
        monkeypatch.setenv("ADALAS_CACHE", USER_CACHE)
    export = tmp_path / "export"
    export_checkpoint("smollm2-135m", {"mode": "static_skip", "skip_layers": [3, 6, 12, 14, 17, 25]}, export)
    info = write_gguf(export, export / "model.gguf", dtype="f32", source_gguf=embedded_gguf())
    assert info["block_count"] == 24 and info["tensors"] == 2 + 24 * 9  # tied head: no output.weight
    ours, source = gguf.GGUFReader(str(export / "model.gguf")), gguf.GGUFReader(str(embedded_gguf()))
    assert ours.fields["llama.block_count"].contents() == 24
    for key in ("tokenizer.ggml.pre", "tokenizer.chat_template", "llama.rope.freq_base", "tokenizer.ggml.merges"):
        assert ours.fields[key].contents() == source.fields[key].contents(), key
    exported = AutoModelForCausalLM.from_pretrained(str(export)).eval()
    loaded = AutoModelForCausalLM.from_pretrained(str(export), gguf_file="model.gguf", dtype=torch.float32).eval()
    text = "Give three tips for staying healthy."
    ids = AutoTokenizer.from_pretrained(str(export))(text, return_tensors="pt").input_ids
    assert AutoTokenizer.from_pretrained(str(export), gguf_file="model.gguf")(text).input_ids == ids[0].tolist()
    torch.testing.assert_close(loaded(input_ids=ids).logits, exported(input_ids=ids).logits, atol=1e-5, rtol=0)
