"""`adalas train` and `adalas warmup` on tiny random models saved to disk with a word-level tokenizer
built in the test, on a small Alpaca-format file written by the test.

Every run goes through the real command line (`adalas.train.run(argv)`); callbacks observe the live
model (they never steer training). Slow: the two-process torchrun run and the killed-and-resumed run.
"""
from __future__ import annotations

import importlib.util
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from conftest import BUILDERS, VOCAB
from safetensors.torch import load_file
from transformers import PreTrainedTokenizerFast, TrainerCallback

from adalas import AdalasForCausalLM, DepthConfig
from adalas import data as D
from adalas.checkpoints import TRAINABLE_FILE, is_complete_checkpoint, latest_checkpoint
from adalas.cli import main as cli_main
from adalas.train import gate_cost, run
from adalas.train_args import AdalasArguments

WORDS = ["apple", "river", "stone", "cloud", "green", "music", "paper", "tiger"]
LAYERS = 4


def _rows() -> list[dict]:
    """16 Alpaca rows: 'Repeat the word w .' -> 'w w w , then v .' (learnable from the instruction)."""
    return [{"instruction": f"Repeat the word {w} .", "input": "" if i % 2 == 0 else WORDS[(i + 3) % 8],
             "output": f"{w} {w} {w} , then {WORDS[(i + 1) % 8]} ."} for i, w in enumerate(WORDS * 2)]


def _tokenizer() -> PreTrainedTokenizerFast:
    """Word-level: the Alpaca template's words and ours, under the tiny models' vocabulary size."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    text = " ".join([D.ALPACA_INTRO, D.ALPACA_INTRO_WITH_INPUT, "### Instruction:\n### Input:\n### Response:\n",
                     "Repeat the word , then .", *WORDS])
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    assert len(vocab) <= VOCAB
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    """tiny llama / opt / gpt2 model directories with the tokenizer, and data.jsonl."""
    root = tmp_path_factory.mktemp("train")
    tok = _tokenizer()
    for name in ("llama", "opt", "gpt2"):
        BUILDERS[name]().save_pretrained(root / name)
        tok.save_pretrained(root / name)
    (root / "data.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _rows()))
    return root


@pytest.fixture(scope="module", autouse=True)
def _one_thread():
    """Tiny models: one thread is several times faster than a thread pool on a shared machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(autouse=True)
def _cache(monkeypatch, tmp_path_factory):
    monkeypatch.setenv("ADALAS_CACHE", str(tmp_path_factory.getbasetemp() / "adalas-cache"))


def base_args(work: Path, out: Path, family: str = "llama", steps: int = 8) -> list[str]:
    return ["--model", str(work / family), "--data", str(work / "data.jsonl"), "--output_dir", str(out),
            "--prompt_format", "alpaca", "--max_seq_length", "96", "--prompt_fraction", "0.75",
            "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--max_steps", str(steps),
            "--logging_steps", "1", "--save_strategy", "no", "--report_to", "none", "--disable_tqdm", "true",
            "--use_cpu", "true", "--seed", "0", "--dataloader_pin_memory", "false"]


class Snapshot(TrainerCallback):
    """Observes the live model: every tensor (and whether it trains) at the start and at the end."""

    def on_train_begin(self, args, state, control, model=None, **kw):
        self.model = model
        self.trainable = {n: p.requires_grad for n, p in model.named_parameters()}
        self.before = {n: p.detach().clone() for n, p in model.named_parameters()}

    def on_train_end(self, args, state, control, model=None, **kw):
        self.after = {n: p.detach().clone() for n, p in model.named_parameters()}


def losses(out: Path, key: str = "loss") -> list[float]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [h[key] for h in history if key in h]


def history(out: Path) -> list[dict]:
    return json.loads((out / "trainer_state.json").read_text())["log_history"]


def train(argv: list[str], warmup: bool = False, callbacks=()) -> None:
    assert run(argv, warmup=warmup, callbacks=callbacks) == 0


# ---------------------------------------------------------------------------------------------
# Fine-tuning with each depth mode

MODES = {
    "full": ({"mode": "full"}, []),
    "static_skip+frozen": ({"mode": "static_skip", "skip_layers": [1, 2]}, ["--freeze_skipped", "true"]),
    "stochastic": ({"mode": "stochastic", "skip_probs": [0.0, 0.5, 0.5, 0.0]}, []),
    "early_exit+frozen": ({"mode": "early_exit", "exit_after": 2}, ["--freeze-skipped"]),
    "random_budget": ({"mode": "random_budget", "budget": 2, "keep_first": True}, []),
    "route": ({"mode": "route", "route": [True, False, True, True]}, []),
    "learned+checkpointing": ({"mode": "learned"}, ["--gradient_checkpointing", "true"]),
}


@pytest.mark.parametrize("mode", sorted(MODES))
def test_each_depth_mode_lowers_the_loss(work, tmp_path, mode):
    depth, extra = MODES[mode]
    snap = Snapshot()
    train(base_args(work, tmp_path) + ["--depth", json.dumps(depth)] + extra, callbacks=[snap])
    loss = losses(tmp_path)
    assert len(loss) == 8 and sum(loss[-2:]) / 2 < 0.8 * sum(loss[:2]) / 2, loss
    frozen = {n for n, t in snap.trainable.items() if not t}
    if "frozen" in mode:
        skipped = [i for i, r in enumerate(DepthConfig.parse(depth).static_route(LAYERS)) if not r]
        assert frozen == {n for n in snap.trainable if any(f".layers.{i}." in n for i in skipped)}
    else:
        assert not frozen
    for n in frozen:
        assert torch.equal(snap.before[n], snap.after[n]), n
    changed = [n for n in snap.trainable if n not in frozen and not torch.equal(snap.before[n], snap.after[n])]
    assert len(changed) >= 0.5 * (len(snap.trainable) - len(frozen))
    # the final model is our format: safetensors only, loadable with its depth (and controllers)
    assert not list(tmp_path.rglob("*.bin"))
    m = AdalasForCausalLM.from_pretrained(tmp_path)
    assert m.depth == DepthConfig.parse(depth)
    live = snap.model
    for name, p in m.named_parameters():
        assert torch.equal(p, dict(live.named_parameters())[name]), name
    assert (tmp_path / "tokenizer.json").is_file()


@pytest.mark.parametrize("family", ["opt", "gpt2"])
def test_other_families_train_and_save(work, tmp_path, family):
    train(base_args(work, tmp_path, family, steps=4) + ["--depth", '{"mode": "learned", "controller_layers": [1, 2]}'])
    m = AdalasForCausalLM.from_pretrained(tmp_path)
    assert m.depth.mode == "learned" and set(m.controllers) == {"1", "2"}
    assert losses(tmp_path)[-1] < losses(tmp_path)[0]


def test_checkpoints_are_our_format_and_skip_rates_are_logged(work, tmp_path):
    args = base_args(work, tmp_path) + [
        "--depth", '{"mode": "static_skip", "skip_layers": [1]}', "--save_strategy", "steps", "--save_steps", "4",
        "--logging_steps", "2", "--eval_strategy", "steps", "--eval_steps", "4", "--validation_fraction", "0.25",
        "--report_to", "tensorboard"]
    train(args)
    ckpt = tmp_path / "checkpoint-4"
    assert is_complete_checkpoint(ckpt) and latest_checkpoint(tmp_path) == tmp_path / "checkpoint-8"
    assert {p.name for p in ckpt.iterdir()} >= {"model.safetensors", "adalas_depth.json", "trainer_state.json",
                                                "optimizer.pt", "tokenizer.json", "config.json"}
    assert not list(tmp_path.rglob("*.bin")) and not list(tmp_path.rglob("pytorch_model*"))
    loaded = AdalasForCausalLM.from_pretrained(ckpt)
    assert loaded.depth == DepthConfig(mode="static_skip", skip_layers=[1])
    # label tokens skip layer 1 and run the others: exact rates, train and eval apart
    logs = history(tmp_path)
    train_logs = [h for h in logs if "loss" in h]
    eval_logs = [h for h in logs if "eval_loss" in h]
    assert train_logs and eval_logs
    for h, p in [(train_logs[-1], ""), (eval_logs[-1], "eval_")]:
        assert [h[f"{p}skip_rate/layer_{i:02d}"] for i in range(LAYERS)] == [0.0, 1.0, 0.0, 0.0]
        assert h[f"{p}avg_layers"] == 3.0
    # ... and reach TensorBoard under train/ and eval/
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    events = [EventAccumulator(str(p.parent)).Reload() for p in tmp_path.rglob("events.out.tfevents.*")]
    tags = {t for e in events for t in e.Tags()["scalars"]}
    assert {"train/skip_rate/layer_01", "train/avg_layers", "eval/skip_rate/layer_01", "eval/avg_layers"} <= tags


def test_lora_on_attention_and_head_saves_merged_weights(work, tmp_path):
    """OPT ties its head to the embeddings: head LoRA unties it, and the merged checkpoint reproduces
    the live peft model exactly while the base weights stay untouched."""
    snap = Snapshot()
    train(base_args(work, tmp_path, "opt", steps=6) + ["--lora_r", "4", "--lora_head_r", "2", "--lora_dropout", "0",
                                                     "--depth", '{"mode": "static_skip", "skip_layers": [2]}'],
          callbacks=[snap])
    assert losses(tmp_path)[-1] < losses(tmp_path)[0]
    trainable = [n for n, t in snap.trainable.items() if t]
    assert trainable and all("lora_" in n for n in trainable)
    assert any("lm_head.lora_A" in n for n in trainable)
    head_a = next(snap.after[n] for n in trainable if "lm_head.lora_A" in n)
    assert head_a.shape[0] == 2  # the head's own rank
    for n, t in snap.trainable.items():
        assert t or torch.equal(snap.before[n], snap.after[n]), n
    merged = AdalasForCausalLM.from_pretrained(tmp_path).eval()
    assert (tmp_path / TRAINABLE_FILE).is_file()
    live = snap.model.eval()
    ids = torch.randint(4, 40, (2, 12))
    labels = ids.clone()
    labels[:, :5] = -100
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, labels=labels).logits,
                                   live(input_ids=ids, labels=labels).logits, atol=1e-5, rtol=1e-5)
    original = AdalasForCausalLM.from_pretrained(work / "opt")
    emb = original.model.get_input_embeddings().weight
    assert torch.equal(merged.model.get_input_embeddings().weight, emb)  # head LoRA did not touch the embeddings
    assert not torch.equal(merged.model.get_output_embeddings().weight, emb)


def test_lora_run_resumes_from_its_checkpoint(work, tmp_path):
    """LoRA on q/k/v only (OPT's tied head untouched): stop at step 3, resume to 6 (constant learning
    rate, so the schedule does not depend on max_steps): the same weights as 6 steps in one go."""
    lora = ["--lora_r", "4", "--lora_dropout", "0", "--lr_scheduler_type", "constant", "--save_strategy", "steps",
            "--save_steps", "3", "--depth", '{"mode": "learned", "controller_layers": [2]}']
    part, whole = tmp_path / "part", tmp_path / "whole"
    train(base_args(work, part, "opt", steps=3) + lora)
    snap = Snapshot()
    train(base_args(work, part, "opt", steps=6) + lora + ["--resume_from_checkpoint", "true"], callbacks=[snap])
    train(base_args(work, whole, "opt", steps=6) + lora)
    assert [h["step"] for h in history(part) if "loss" in h] == [1, 2, 3, 4, 5, 6]
    for name in ("model.safetensors", TRAINABLE_FILE, "adalas_controllers.safetensors"):
        a, b = load_file(str(part / name)), load_file(str(whole / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name
    merged = AdalasForCausalLM.from_pretrained(whole).eval()
    ids = torch.randint(4, 40, (2, 10))
    labels = ids.clone()
    labels[:, :4] = -100
    with torch.no_grad():
        torch.testing.assert_close(merged(input_ids=ids, labels=labels).logits,
                                   snap.model.eval()(input_ids=ids, labels=labels).logits, atol=1e-5, rtol=1e-5)


def test_resuming_a_finished_run_trains_no_further(work, tmp_path):
    """transformers would take one step past max_steps when resuming from a checkpoint at max_steps."""
    args = base_args(work, tmp_path, steps=3) + ["--save_strategy", "steps", "--save_steps", "3"]
    train(args)
    before = load_file(str(tmp_path / "model.safetensors"))
    train(args + ["--resume_from_checkpoint", "true"])
    after = load_file(str(tmp_path / "model.safetensors"))
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert json.loads((tmp_path / "adalas_training.json").read_text())["steps"] == 3


def test_resume_true_without_a_checkpoint_starts_fresh(tmp_path, capsys):
    from adalas.checkpoints import resolve_resume

    assert resolve_resume("true", str(tmp_path)) is None and "starting from the beginning" in capsys.readouterr().err
    assert resolve_resume(None, str(tmp_path)) is None and resolve_resume("false", str(tmp_path)) is None


# ---------------------------------------------------------------------------------------------
# Warm-up and the cost-aware loss

def test_warmup_changes_only_the_controllers(work, tmp_path, capsys):
    snap = Snapshot()
    train(base_args(work, tmp_path) + ["--depth", '{"mode": "learned", "hidden_layers": 1}'], warmup=True,
          callbacks=[snap])
    out = capsys.readouterr().out
    n_controllers = sum(p.numel() for n, p in snap.model.named_parameters() if "controller" in n)
    assert f"trainable parameters: {n_controllers:,} of" in out
    for name, trains in snap.trainable.items():
        assert trains == ("controller" in name), name
        same = torch.equal(snap.before[name], snap.after[name])
        assert same != trains, f"{name}: {'unchanged though trainable' if same else 'changed though frozen'}"
    saved = load_file(str(tmp_path / "adalas_controllers.safetensors"))
    live = {n.removeprefix("controllers."): p for n, p in snap.model.controllers.named_parameters()}
    assert saved.keys() == {f"controllers.{k}" for k in live}
    assert all(torch.equal(saved[f"controllers.{k}"], v) for k, v in live.items())


def test_warmup_with_a_trained_head(work, tmp_path):
    """OPT ties head and embeddings: --train_head unties them, so the embeddings stay frozen."""
    snap = Snapshot()
    train(base_args(work, tmp_path, "opt", steps=3) + ["--depth", '{"mode": "learned", "controller_input": "fixed"}',
                                                     "--train_head", "true"], warmup=True, callbacks=[snap])
    trainable = {n for n, t in snap.trainable.items() if t}
    assert any("lm_head" in n for n in trainable) and not any("embed_tokens" in n for n in trainable)
    assert all("controller" in n or "lm_head" in n for n in trainable)


def test_warmup_needs_something_to_train(work, tmp_path, capsys):
    code = cli_main(["warmup"] + base_args(work, tmp_path) + ["--depth", '{"mode": "static_skip", "skip_layers": [1]}'])
    assert code == 2
    err = capsys.readouterr().err
    assert "adalas warmup: error:" in err and "learned" in err and "nothing to train" in err


def test_gate_cost_is_the_mean_and_adds_up_over_micro_batches():
    g = torch.tensor([[1.0, 0.0, 1.0, 1.0], [0.0, 0.0, 1.0, 1.0], [1.0, 1.0, 1.0, 1.0]])
    assert gate_cost(g).item() == pytest.approx(9 / 12)
    assert (gate_cost(g[:1], 3) + gate_cost(g[1:], 3)).item() == pytest.approx(9 / 12)
    assert gate_cost(g[:0]).item() == 0.0


def test_cost_loss_pushes_skip_rates_up_as_alpha_grows(work, tmp_path):
    """Fixed-input controllers, backbone frozen: the larger alpha, the fewer layers label tokens run.
    Plain SGD, so the step grows with the gradient (Adam would take the same step for alpha 2 and 20);
    the same seed gives every run the same Gumbel noise, so the comparison is paired."""
    avg = {}
    for alpha in (0, 2, 20):
        out = tmp_path / f"a{alpha}"
        train(base_args(work, out, steps=12) + ["--depth", '{"mode": "learned", "controller_input": "fixed"}',
                                                "--cost_alpha", str(alpha), "--optim", "sgd", "--learning_rate", "0.5"],
              warmup=True)
        m = AdalasForCausalLM.from_pretrained(out).eval()
        runs = [bool(c(torch.ones(1)).argmax() == 1) for c in m.controllers.values()]  # eval: argmax per layer
        avg[alpha] = (sum(runs), sum(losses(out, "avg_layers")[-4:]) / 4)
    assert avg[0][1] > avg[2][1] > avg[20][1], avg
    assert avg[0][0] >= avg[2][0] >= avg[20][0] and avg[20][0] < LAYERS, avg


class Optimizer(TrainerCallback):
    """The optimizer's groups (learning rate, parameter names) at the first step."""

    def on_step_begin(self, args, state, control, model=None, optimizer=None, **kw):
        if state.global_step == 0:
            names = {id(p): n for n, p in model.named_parameters()}
            self.groups = [(g["lr"], g["weight_decay"], sorted(names[id(p)] for p in g["params"]))
                           for g in optimizer.param_groups]


def test_controllers_can_start_at_full_depth_and_learn_at_their_own_rate(work, tmp_path):
    """--controller_init_bias: every controller starts at zero weights, so the step-0 route is the full
    model whatever the input; --controller_learning_rate: the controllers are one group at their rate,
    LoRA another at --learning_rate (the constant schedule keeps both as given)."""
    snap, opt = Snapshot(), Optimizer()
    out = tmp_path / "out"
    train(base_args(work, out, steps=4) + ["--depth", '{"mode": "learned", "controller_input": "hidden_states"}',
                                           "--lora_r", "4", "--cost_alpha", "1", "--learning_rate", "1e-4",
                                           "--lr_scheduler_type", "constant", "--controller_learning_rate", "0.05",
                                           "--controller_init_bias", "3"], callbacks=[snap, opt])
    controllers = {n: t for n, t in snap.before.items() if ".controllers." in n}
    assert controllers and all(t.abs().sum() == 0 for n, t in controllers.items() if n.endswith("weight"))
    assert all(t.tolist() == [0.0, 3.0] for n, t in controllers.items() if n.endswith("bias"))
    (rate, decay, names), = [g for g in opt.groups if any(".controllers." in n for n in g[2])]
    assert rate == 0.05 and decay == 0.0 and all(".controllers." in n for n in names) and len(names) == 2 * LAYERS
    others = [g for g in opt.groups if not any(".controllers." in n for n in g[2])]
    assert others and all(g[0] == 1e-4 and all("lora_" in n for n in g[2]) for g in others)
    moved = max((snap.after[n] - t).abs().max().item() for n, t in controllers.items())
    lora = max((snap.after[n] - t).abs().max().item() for n, t in snap.before.items() if "lora_" in n)
    assert moved > 10 * lora  # the controllers' rate, not LoRA's


def test_controller_flags_need_a_learned_depth(work, tmp_path, capsys):
    assert cli_main(["train"] + base_args(work, tmp_path) + ["--controller_init_bias", "3"]) == 2
    assert "no learned controllers" in capsys.readouterr().err
    with pytest.raises(ValueError, match="controller_learning_rate"):
        AdalasArguments(controller_learning_rate=0.0)


# ---------------------------------------------------------------------------------------------
# Bad input

@pytest.mark.parametrize("extra,pattern", [
    (["--label_smoothing_factor", "0.1"], "label_smoothing_factor"),
    (["--depth", '{"mode": "stochastic", "skip_probs": [0.5, 0.5, 0.5, 0.5]}', "--freeze_skipped"], "fixed route"),
    (["--depth", '{"mode": "early_exit", "exit_after": 9}'], "exit_after"),
    (["--depth", '{"mode": "nope"}'], "mode"),
    (["--cost_alpha", "-1"], "cost_alpha"),
    (["--lora_r", "4", "--lora_target_modules", "nothing_here"], "lora_target_modules"),
    (["--eval_strategy", "steps"], "eval_data or --validation_fraction"),
    (["--deepspeed", "ds_zero2.json"], "DeepSpeed"),
    (["--resume_from_checkpoint", "/nonexistent/checkpoint-3"], "not a complete checkpoint"),
    (["--no_such_flag", "1"], "not used"),
])
def test_bad_input_is_one_line_and_exit_code_2(work, tmp_path, capsys, extra, pattern):
    if "--deepspeed" in extra and importlib.util.find_spec("deepspeed"):
        pytest.skip("DeepSpeed is installed")
    assert cli_main(["train"] + base_args(work, tmp_path) + extra) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("adalas")]  # not progress bars
    assert len(err) == 1 and err[0].startswith("adalas train: error: ") and pattern in err[0], err


def test_our_flags_validate_themselves():
    with pytest.raises(ValueError, match="prompt_fraction"):
        AdalasArguments(prompt_fraction=1.5)
    with pytest.raises(ValueError, match="columns"):
        AdalasArguments(columns="[1]")


# ---------------------------------------------------------------------------------------------
# Resuming a killed run; two processes

KILL_AFTER_FIRST_SAVE = textwrap.dedent("""
    import os, signal, sys
    from transformers import TrainerCallback
    from adalas.train import run

    class KillAfterSave(TrainerCallback):
        def on_save(self, args, state, control, **kw):
            os.kill(os.getpid(), signal.SIGKILL)  # as abrupt as a preemption: no cleanup at all

    sys.exit(run(sys.argv[1:], callbacks=[KillAfterSave()]))
""")


def _env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    src = str(Path(__file__).resolve().parents[1] / "src")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.mark.slow
def test_killed_run_resumes_to_the_same_weights(work, tmp_path):
    depth = ["--depth", '{"mode": "learned", "controller_layers": [1, 2]}']  # Gumbel noise: RNG state must resume
    common = ["--save_strategy", "steps", "--save_steps", "3", "--gradient_accumulation_steps", "2"]
    killed, whole = tmp_path / "killed", tmp_path / "whole"
    script = tmp_path / "kill_after_save.py"
    script.write_text(KILL_AFTER_FIRST_SAVE)
    proc = subprocess.run([sys.executable, str(script)] + base_args(work, killed, steps=6) + depth + common,
                          env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    assert is_complete_checkpoint(killed / "checkpoint-3") and not (killed / "model.safetensors").exists()
    half = killed / "checkpoint-5"  # what a kill in the middle of a save leaves: must be skipped
    half.mkdir()
    (half / "model.safetensors").write_bytes(b"\0" * 10)
    assert latest_checkpoint(killed) == killed / "checkpoint-3"

    train(base_args(work, killed, steps=6) + depth + common + ["--resume_from_checkpoint", "true"])
    train(base_args(work, whole, steps=6) + depth + common)
    assert json.loads((killed / "trainer_state.json").read_text())["global_step"] == 6
    for name in ("model.safetensors", "adalas_controllers.safetensors"):
        a, b = load_file(str(killed / name)), load_file(str(whole / name))
        assert a.keys() == b.keys()
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}:{k}"


@pytest.mark.slow
def test_torchrun_two_processes_on_cpu(work, tmp_path):
    """DDP on gloo; static_skip with skip_prompt leaves layer 1 without gradient (not frozen), so
    ddp_find_unused_parameters must have been turned on automatically."""
    torchrun = Path(sys.executable).parent / "torchrun"
    cmd = [str(torchrun), "--standalone", "--nproc_per_node", "2", "-m", "adalas", "train"] + base_args(
        work, tmp_path, steps=2) + ["--ddp_backend", "gloo", "--save_strategy", "steps", "--save_steps", "2",
                                    "--per_device_train_batch_size", "2", "--depth",
                                    '{"mode": "static_skip", "skip_layers": [1], "skip_prompt": true}']
    proc = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("trainable parameters") == 1  # printed by rank 0 only
    assert is_complete_checkpoint(tmp_path / "checkpoint-2")
    state = json.loads((tmp_path / "checkpoint-2" / "trainer_state.json").read_text())
    assert state["global_step"] == 2
    m = AdalasForCausalLM.from_pretrained(tmp_path / "checkpoint-2")
    assert m.depth == DepthConfig(mode="static_skip", skip_layers=[1], skip_prompt=True)
