"""Self-distillation: the KD losses on hand-computed cases, the teacher left alone by the adapters, the
top-k teacher cache, and `adalas train --distill true` lowering the KD loss on a tiny model."""
from __future__ import annotations

import json
import math

import pytest
import torch
from conftest import tiny_llama
from test_train import Snapshot, base_args, history, train, work  # noqa: F401  (work is a fixture)

from adalas import AdalasForCausalLM, DepthConfig
from adalas.data import file_sha256
from adalas.distill import (Distiller, TeacherCache, kl_full, kl_topk, mix, response_positions, teacher_topk)


def test_kl_is_zero_for_the_same_distribution_and_matches_a_hand_computation():
    logits = torch.tensor([[2.0, 0.5, -1.0]])
    assert kl_full(logits, logits, 1.0).abs().max() < 1e-7
    t, s = torch.tensor([[0.0, math.log(3.0), 0.0]]), torch.tensor([[0.0, 0.0, 0.0]])
    p = [1 / 5, 3 / 5, 1 / 5]  # teacher softmax; student uniform
    by_hand = sum(pi * math.log(pi / (1 / 3)) for pi in p)
    assert kl_full(s, t, 1.0).item() == pytest.approx(by_hand, rel=1e-5)
    # temperature 2 flattens both: teacher logits / 2
    p2 = torch.softmax(t / 2, -1)[0].tolist()
    assert kl_full(s, t, 2.0).item() == pytest.approx(sum(pi * math.log(pi * 3) for pi in p2), rel=1e-5)


def test_topk_kl_uses_k_plus_one_buckets():
    torch.manual_seed(0)
    logits = torch.randn(5, 11)
    logp = torch.log_softmax(logits, -1)
    top = logp.topk(3, -1)
    assert kl_topk(logits, top.indices, top.values, 1.0).abs().max() < 1e-5  # same model: 0
    student = torch.randn(5, 11)
    got = kl_topk(student, top.indices, top.values, 1.0)
    s = torch.log_softmax(student, -1)
    for row in range(5):
        idx = top.indices[row].tolist()
        pt = [math.exp(v) for v in top.values[row].tolist()]
        qs = [math.exp(s[row, i].item()) for i in idx]
        pt.append(1 - sum(pt))
        qs.append(1 - sum(qs))
        by_hand = sum(a * math.log(a / b) for a, b in zip(pt, qs))
        assert got[row].item() == pytest.approx(by_hand, rel=1e-4)
    assert (got <= kl_full(student, logits, 1.0) + 1e-6).all()  # bucketing never exceeds the full KL


def test_mix_weights_kl_and_cross_entropy():
    assert mix(torch.tensor(6.0), torch.tensor(5.0), 1.0, 2.0, 3).item() == pytest.approx(8.0)
    assert mix(torch.tensor(6.0), torch.tensor(5.0), 0.5, 1.0, 3).item() == pytest.approx(3.5)


def _batch():
    ids = torch.randint(4, 90, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    labels[1, 8:] = -100
    return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels}


def test_teacher_is_the_full_depth_model_whatever_the_adapters_do():
    from peft import LoraConfig, get_peft_model

    torch.manual_seed(0)
    batch = _batch()
    with torch.no_grad():
        reference = AdalasForCausalLM.from_hf(tiny_llama())(input_ids=batch["input_ids"]).logits  # full depth
    base = AdalasForCausalLM.from_hf(tiny_llama(), depth=DepthConfig(mode="static_skip", skip_layers=[1, 2]))
    peft = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], lora_dropout=0.0))
    d = Distiller(1.0, 1.0, adalas=base)
    for step in range(2):
        for name, p in peft.named_parameters():
            if "lora_B" in name:
                torch.nn.init.normal_(p, std=0.5)  # the adapters change (and change the student)
        teacher = d.teacher_logits(peft, batch)
        assert base.depth.mode == "static_skip"  # restored after the teacher's full-depth pass
        torch.testing.assert_close(teacher, reference[:, :-1][response_positions(batch["labels"])],
                                   atol=1e-5, rtol=1e-5)
        with torch.no_grad():
            student = peft(**batch, response_logits=True).logits
        assert not torch.allclose(student, teacher, atol=1e-3)
        assert d.loss(peft, batch, student, torch.tensor(0.0), None, None).item() > 0


def test_teacher_cache_rows_follow_the_batch_order():
    model = AdalasForCausalLM.from_hf(tiny_llama())
    batch = _batch()
    idx, lp = teacher_topk(model, batch, 4, 1.0)
    counts = response_positions(batch["labels"]).sum(-1).tolist()
    offsets = torch.tensor([0, counts[0], counts[0] + counts[1]])
    cache = TeacherCache(idx, lp.half(), offsets)
    i2, l2 = cache.rows([1, 0])
    assert torch.equal(i2, torch.cat([idx[counts[0]:], idx[:counts[0]]]))
    # the model against its own cached teacher: KD 0 (up to the fp16 storage)
    logits = model(**batch, response_logits=True).logits
    d = Distiller(1.0, 1.0, cache=cache)
    assert d.loss(model, batch, logits, torch.tensor(0.0), torch.tensor([0, 1]), None).item() < 1e-3


def test_teacher_cache_key_reads_every_weight_the_dtype_k_and_temperature():
    """The cached teacher's key changes with any weight (here one value deep in the last layer), the
    dtype, k and T, and not with anything else (a copy of the same weights gets the same key)."""
    from adalas.distill import cache_key, model_identity

    rows = [{"input_ids": [5, 6, 7], "labels": [-100, 6, 7]}]
    model = AdalasForCausalLM.from_hf(tiny_llama())
    key = cache_key(model_identity(model), rows, 8, 2.0)
    assert cache_key(model_identity(AdalasForCausalLM.from_hf(tiny_llama())), rows, 8, 2.0) == key
    assert cache_key(model_identity(model), rows, 4, 2.0) != key != cache_key(model_identity(model), rows, 8, 1.0)
    with torch.no_grad():
        model.model.model.layers[-1].mlp.down_proj.weight[20, 40] += 1e-3
    changed = cache_key(model_identity(model), rows, 8, 2.0)
    assert changed != key
    assert cache_key(model_identity(model.to(torch.bfloat16)), rows, 8, 2.0) != changed


@pytest.fixture(scope="module")
def strong(work):  # noqa: F811
    """A tiny Llama whose layers matter (large random weights): skipping two of them moves the logits a lot."""
    from transformers import LlamaForCausalLM

    model = tiny_llama()
    cfg = model.config
    cfg.initializer_range = 0.3
    torch.manual_seed(1)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(work / "strong")
    for f in (work / "llama").iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            (work / "strong" / f.name).write_bytes(f.read_bytes())
    return work


@pytest.mark.parametrize("top_k", [8, 0])
def test_distill_steps_lower_the_kd_loss(strong, tmp_path, top_k):
    depth = {"mode": "static_skip", "skip_layers": [1, 2]}
    snap = Snapshot()
    train(base_args(strong, tmp_path, "strong", steps=8) + ["--depth", json.dumps(depth), "--distill", "true",
                                                "--distill_top_k", str(top_k), "--lora_r", "8",
                                                "--lora_dropout", "0", "--learning_rate", "3e-2"],
          callbacks=[snap])
    loss = [h["loss"] for h in history(tmp_path) if "loss" in h]
    assert loss[-1] < 0.7 * loss[0], loss
    for n, trains in snap.trainable.items():
        assert trains == ("lora_" in n), n
    adapter = tmp_path / "adapter"
    assert {p.name for p in adapter.iterdir()} >= {"adapter_model.safetensors", "adapter_config.json",
                                                  "adalas_depth.json", "provenance.json"}
    record = json.loads((tmp_path / "adalas_training.json").read_text())
    assert record["steps"] == 8 and record["data_sha256"] and "--distill" in record["command"]


def test_a_shipped_adapter_loads_by_alias_and_equals_the_trained_model(strong, tmp_path, monkeypatch, capsys):
    """The adapter alone (fp16) plus its depth: loading the alias gives the trained model's logits (up to
    fp16 rounding of the adapter), at the trained depth, and `resolve` gives the base's tokenizer."""
    import shutil

    from adalas import hub

    run_dir = tmp_path / "run"
    depth = {"mode": "static_skip", "skip_layers": [1, 2]}
    train(base_args(strong, run_dir, "strong", steps=4) + ["--depth", json.dumps(depth), "--distill", "true",
                                                         "--lora_r", "4", "--lora_dropout", "0",
                                                         "--lora_target_modules", "q_proj", "v_proj", "down_proj"])
    root = tmp_path / "adapters"
    shutil.copytree(run_dir / "adapter", root / "tiny-adapted-2")
    provenance = json.loads((root / "tiny-adapted-2" / "provenance.json").read_text())
    assert provenance["base_model"] == str(strong / "strong")
    monkeypatch.setattr(hub, "adapters_root", lambda: root)
    assert hub.adapter_aliases() == ["tiny-adapted-2"]
    alias = AdalasForCausalLM.from_pretrained("tiny-adapted-2")
    trained = AdalasForCausalLM.from_pretrained(run_dir)  # the merged checkpoint
    assert alias.depth == trained.depth == DepthConfig.parse(depth)
    ids = torch.randint(4, 40, (2, 12))
    with torch.no_grad():
        a, t = alias(input_ids=ids).logits, trained(input_ids=ids).logits
        base = AdalasForCausalLM.from_pretrained(strong / "strong")(input_ids=ids).logits
    torch.testing.assert_close(a, t, atol=2e-3, rtol=2e-3)
    assert not torch.allclose(a, base, atol=1e-3)  # the adapter did something
    assert hub.resolve("tiny-adapted-2") == hub.resolve(str(strong / "strong"))
    size = (root / "tiny-adapted-2" / "adapter_model.safetensors").stat().st_size
    from safetensors import safe_open
    with safe_open(str(root / "tiny-adapted-2" / "adapter_model.safetensors"), "pt") as f:
        assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys()) and size < 100_000

    # export of the alias: the plain model with the route's layers deleted, equal to the alias with skip_prompt
    from transformers import AutoModelForCausalLM

    from adalas.export import export_checkpoint

    summary = export_checkpoint("tiny-adapted-2", None, tmp_path / "exported")
    assert summary["kept_layers"] == [0, 3] and "skip_prompt=true" in summary["equals"]
    assert "a different model" in summary["warning"]  # the alias was trained with its prompt at full depth
    plain = AutoModelForCausalLM.from_pretrained(tmp_path / "exported").eval()
    alias.set_depth(DepthConfig(mode="static_skip", skip_layers=[1, 2], skip_prompt=True))
    with torch.no_grad():
        torch.testing.assert_close(plain(input_ids=ids).logits, alias(input_ids=ids).logits, atol=1e-4, rtol=1e-4)

    # a sweep puts the adapted alias beside its route off the shelf, on the same sequences
    from adalas.cli import main as cli_main

    out = tmp_path / "sweep"
    assert cli_main(["sweep", "--model", str(strong / "strong"), "--data", str(strong / "data.jsonl"), "--limit", "4",
                     "--max-new-tokens", "3", "--strategies", "early_exit", "--budgets", "3", "--adapted",
                     "tiny-adapted-2", "--no-progress", "--out", str(out)]) == 0
    rows = {r["config_id"]: r for r in map(json.loads, (out / "sweep.jsonl").read_text().splitlines())}
    assert set(rows) == {"full", "early_exit@3", "route:tiny-adapted-2", "adapted:tiny-adapted-2"}
    adapted, off_shelf = rows["adapted:tiny-adapted-2"], rows["route:tiny-adapted-2"]
    assert adapted["strategy"] == "adapted" and adapted["model"] == "tiny-adapted-2"
    assert adapted["avg_layers"] == off_shelf["avg_layers"] == 2 and adapted["route"] == off_shelf["route"] == "1001"
    assert adapted["rougeL_ci95"] and off_shelf["model"] == str(strong / "strong")

    # ALIAS@B and ALIAS@OTHER: a full-depth alias (here the same adapter, as a layer-dropout model would
    # ship) with uniform skipping, and on another alias's route, where it must equal that alias
    shutil.copytree(root / "tiny-adapted-2", root / "tiny-dropout")
    (root / "tiny-dropout" / "adalas_depth.json").write_text(json.dumps({"mode": "full"}))
    more = ["tiny-dropout", "tiny-dropout@3", "tiny-dropout@tiny-adapted-2"]
    sweep2 = ["sweep", "--model", str(strong / "strong"), "--data", str(strong / "data.jsonl"), "--limit", "4",
              "--max-new-tokens", "3", "--strategies", "uniform_skip", "--budgets", "3", "--adapted",
              "tiny-adapted-2", *more, "--no-progress", "--out", str(tmp_path / "sweep2")]
    assert cli_main(sweep2) == 0
    rows = {r["config_id"]: r for r in map(json.loads, (tmp_path / "sweep2" / "sweep.jsonl").read_text().splitlines())}
    assert rows["adapted:tiny-dropout"]["avg_layers"] == 4 and rows["adapted:tiny-dropout"]["model"] == "tiny-dropout"
    assert rows["adapted:tiny-dropout@3"]["route"] == rows["uniform_skip@3"]["route"]
    assert rows["adapted:tiny-dropout@3"]["avg_layers"] == 3
    assert rows["adapted:tiny-dropout@tiny-adapted-2"]["route"] == "1001"
    per_seq = [json.loads(line) for line in (tmp_path / "sweep2" / "per_sequence.jsonl").read_text().splitlines()]
    preds = {(r["config_id"], r["id"]): r["prediction"] for r in per_seq}
    ids = {r["id"] for r in per_seq}
    assert all(preds["adapted:tiny-dropout@tiny-adapted-2", i] == preds["adapted:tiny-adapted-2", i] for i in ids)

    # a replaced adapter is another model: the directory refuses to resume over the old adapter's rows
    from safetensors.torch import load_file, save_file
    weights = root / "tiny-dropout" / "adapter_model.safetensors"
    settings = json.loads((tmp_path / "sweep2" / "settings.json").read_text())
    assert {settings["configs"][f"adapted:{a}"]["weights"] for a in more} == {file_sha256(weights)}
    save_file({k: v * 2 for k, v in load_file(str(weights)).items()}, str(weights))
    before = (tmp_path / "sweep2" / "per_sequence.jsonl").read_bytes()
    assert cli_main(sweep2) == 2
    assert "made with other weights" in capsys.readouterr().err
    assert (tmp_path / "sweep2" / "per_sequence.jsonl").read_bytes() == before
    # --redo drops just that adapter's rows, which run again under the new weights; the rest are kept as they were
    assert cli_main([*sweep2, "--redo", "adapted:tiny-dropout*"]) == 0
    settings = json.loads((tmp_path / "sweep2" / "settings.json").read_text())
    assert {settings["configs"][f"adapted:{a}"]["weights"] for a in more} == {file_sha256(weights)}
    after = [json.loads(line) for line in (tmp_path / "sweep2" / "per_sequence.jsonl").read_text().splitlines()]
    assert sorted((r["config_id"], r["id"]) for r in after) == sorted((r["config_id"], r["id"]) for r in per_seq)
    assert [r for r in after if "tiny-dropout" not in r["config_id"]] == \
        [r for r in per_seq if "tiny-dropout" not in r["config_id"]]

    from adalas.report import adapted_table, read_scores, read_sweep
    table = adapted_table(read_sweep(tmp_path / "sweep2"), read_scores(tmp_path / "sweep2"))
    assert "| `tiny-dropout` | uniform skipping to 3 |" in table and "| `tiny-dropout` | tiny-adapted-2's |" in table
    # the full-depth alias is set beside the base model at full depth (budget 4 in the sweep's row)
    line = next(x for x in table.splitlines() if x.startswith("| `tiny-dropout` | full depth |"))
    from adalas.report import _ci
    full = next(r for r in read_sweep(tmp_path / "sweep2") if r["config_id"] == "full")
    assert line.split(" | ")[5] == _ci(full)
    assert line.split(" | ")[6] != "–"  # the paired gain over it
    from adalas.sweep import adapted_configs
    for bad, says in [("tiny-dropout@9", "out of range"), ("nope@3", "not a shipped adapted model"),
                      ("tiny-dropout@nope", "not a shipped adapted model")]:
        with pytest.raises(ValueError, match=says):
            adapted_configs(bad, 4)


DISTILL_MODES = {
    "route": ({"mode": "route", "route": [True, False, True, True]}, []),
    "stochastic (layer dropout)": ({"mode": "stochastic", "skip_probs": [0.0, 0.3, 0.5, 0.0]}, []),
    "early_exit": ({"mode": "early_exit", "exit_after": 3}, []),
    "learned + cost": ({"mode": "learned"}, ["--cost_alpha", "0.5"]),
}


@pytest.mark.parametrize("mode", sorted(DISTILL_MODES))
def test_distill_trains_every_depth_mode(strong, tmp_path, mode):
    depth, extra = DISTILL_MODES[mode]
    snap = Snapshot()
    train(base_args(strong, tmp_path, "strong", steps=8) + ["--depth", json.dumps(depth), "--distill", "true",
                                                          "--distill_alpha", "0.8", "--lora_r", "4",
                                                          "--lora_dropout", "0", "--learning_rate", "3e-2",
                                                          "--lora_target_modules", "q_proj", "v_proj", "o_proj",
                                                          "down_proj", *extra], callbacks=[snap])
    loss = [h["loss"] for h in history(tmp_path) if "loss" in h]
    assert sum(loss[4:]) < sum(loss[:4]), loss  # the second epoch (the same 16 rows) against the first
    changed = {n for n, t in snap.trainable.items() if t and not torch.equal(snap.before[n], snap.after[n])}
    assert any("lora_" in n for n in changed)
    if depth["mode"] == "learned":
        assert any("controller" in n for n in changed)
    assert AdalasForCausalLM.from_pretrained(tmp_path).depth == DepthConfig.parse(depth)


def test_training_on_the_builtin_set_warns_and_the_model_records_its_data(work, tmp_path):  # noqa: F811
    argv = base_args(work, tmp_path, steps=1)
    argv[argv.index("--data") + 1] = "builtin"
    with pytest.warns(UserWarning, match="the built-in set is evaluation data"):
        train(argv + ["--limit", "4"])
    record = json.loads((tmp_path / "adalas_training.json").read_text())
    assert record["data"] == "builtin" and len(record["data_sha256"]) == 64 and record["steps"] == 1

