"""Fine-tuning with a dynamic depth, and controller warm-up, on the Hugging Face Trainer.

Notable:
- The command line is `HfArgumentParser((AdalasArguments, TrainingArguments))`: every Trainer flag
  plus ours, with defaults from a recipe (`recipes.py`). `run(argv, warmup=...)` is both commands.
- `AdalasTrainer` overrides four narrow methods and nothing else: `compute_loss` (the cost-aware
  loss, and per-layer gate sums over label tokens), `log` (those sums as `skip_rate/layer_07` and
  `avg_layers`, train and eval apart, reduced across ranks), `_save` (our checkpoint format:
  `AdalasForCausalLM.save_pretrained`, loadable by `AdalasForCausalLM.from_pretrained(dir)`), and
  `_load_from_checkpoint` / `_load_best_model` (read that format back when resuming).
- LoRA (peft) checkpoints hold the merged weights, computed without touching the live model
  (base + delta per adapted module), so a checkpoint loads like any other; for resuming they also
  hold the trainable tensors themselves (`adalas_trainable.safetensors`).
- Distribution is the Trainer's (torchrun, accelerate, DeepSpeed ZeRO-2): no process groups here.
  Under DDP a layer that every token skips gets no gradient; freezing it (`--freeze_skipped`) or
  `ddp_find_unused_parameters=True` (set here automatically otherwise) keeps DDP happy.
- `--resume_from_checkpoint true` takes the latest *complete* checkpoint in `--output_dir` (its
  trainer_state.json parses and its weights are there); a directory a killed run left half-written
  is skipped.
"""
from __future__ import annotations

import importlib.util
import json
import re
import shlex
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from transformers import HfArgumentParser, Trainer, TrainerCallback, TrainingArguments

from .callbacks import RouteKeyCallback
from .config import DEPTH_FILE, DepthConfig
from .data import TRAINING_FILE, data_sha256
from .distill import INDEX_COLUMN, Distiller
from .flags import OneLineErrors
from .io import atomic_save_tensors, atomic_write_json, atomic_write_text, check_output_dir
from .model import CONTROLLERS_FILE, AdalasForCausalLM
from .recipes import check_fields, load_recipe, packaged_file, split_recipe_flag, to_argv

TRAINABLE_FILE = "adalas_trainable.safetensors"  # LoRA runs: the trainable tensors, for resuming
CHECKPOINT_RE = re.compile(r"^checkpoint-(\d+)$")
ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj")
COMMAND_DEFAULTS = {"report_to": "tensorboard"}  # below the recipe and the command line


# ---------------------------------------------------------------------------------------------
# Our flags

@dataclass
class AdalasArguments:
    """adalas' own flags (the Trainer's come from TrainingArguments)."""

    recipe: str | None = field(default=None, metadata={
        "help": "a packaged recipe name or a YAML path; its fields are defaults that flags override"})
    model: str = field(default="smollm2-135m", metadata={
        "help": "hub id, local directory (a saved adalas model keeps its depth and controllers), or smollm2-135m"})
    data: str = field(default="builtin", metadata={
        "help": "hub dataset id, local JSON/JSONL file, or builtin"})
    depth: str | None = field(default=None, metadata={
        "help": "depth config as inline JSON or a JSON file (default: the model's saved depth, else full)"})
    eval_data: str | None = field(default=None, metadata={
        "help": "evaluation data (default: --data's validation split, or --validation_fraction of a local file)"})
    eval_split: str = field(default="validation", metadata={"help": "hub split used for evaluation"})
    validation_fraction: float | None = field(default=None, metadata={
        "help": "local files: hold out this fraction of rows for evaluation (fixed split)"})
    prompt_format: str = field(default="auto", metadata={"help": "alpaca, native, chat or auto"})
    max_seq_length: int = field(default=512, metadata={"help": "tokens per example, prompt + response"})
    prompt_fraction: float = field(default=0.5, metadata={
        "help": "at most this fraction of max_seq_length goes to the prompt (its content is cut to fit)"})
    limit: int | None = field(default=None, metadata={"help": "train on the first K rows only"})
    eval_limit: int | None = field(default=None, metadata={"help": "evaluate on the first K rows only"})
    columns: str | None = field(default=None, metadata={
        "help": 'JSON column overrides, e.g. {"instruction": "question", "response": "answer"}'})
    task: str | None = field(default=None, metadata={"help": "alpaca, samsum, cnn or dolly (default: guessed)"})
    hub_config: str | None = field(default=None, metadata={"help": "the hub dataset's config name"})
    dtype: str = field(default="float32", metadata={
        "help": "weights dtype: float32, bfloat16, float16 (for mixed precision keep float32 and pass --bf16)"})
    allow_pickle: bool = field(default=False, metadata={"help": "allow .bin/.pt weights (weights_only=True)"})
    trust_remote_code: bool = field(default=False, metadata={"help": "run a hub model's own code"})
    freeze_skipped: bool = field(default=False, metadata={
        "help": "freeze the layers the depth skips (static_skip, route; early_exit: the layers above the exit)"})
    cost_alpha: float = field(default=0.0, metadata={
        "help": "cost-aware loss: lm_loss + alpha * mean executed-layer fraction of label tokens (paper: 2, 4, 6, 10)"})
    controller_learning_rate: float | None = field(default=None, metadata={
        "help": "learned: the controllers' own learning rate (default: --learning_rate, which LoRA's may need far "
                "smaller than controllers that start from a constant)"})
    controller_init_bias: float | None = field(default=None, metadata={
        "help": "learned: start every controller at zero weights and this run-minus-skip logit (3: each layer "
                "runs with probability 0.95), instead of at random; the cost loss then lowers the depth"})
    lora_r: int = field(default=0, metadata={
        "help": "LoRA rank on the attention q/k/v projections (0: full fine-tune)"})
    lora_head_r: int = field(default=0, metadata={"help": "LoRA rank on the LM head (0: head not adapted)"})
    lora_alpha: float = field(default=16.0, metadata={"help": "LoRA scaling numerator (peft's lora_alpha)"})
    lora_dropout: float = field(default=0.05, metadata={"help": "LoRA dropout"})
    lora_target_modules: list[str] | None = field(default=None, metadata={
        "help": "module names LoRA adapts instead of q_proj k_proj v_proj"})
    train_head: bool = field(default=False, metadata={
        "help": "warmup, or train with LoRA: also train the LM head in full (untied from the embeddings)"})
    distill: bool = field(default=False, metadata={
        "help": "self-distillation: match the same model at full depth (no adapters, no gradient) on response tokens"})
    distill_alpha: float = field(default=1.0, metadata={
        "help": "weight of the KL term; 1 - alpha goes to cross-entropy on the data's responses"})
    distill_temperature: float = field(default=1.0, metadata={"help": "temperature T of both distributions"})
    distill_top_k: int = field(default=32, metadata={
        "help": "cache the teacher's top-k log-probs once per example (0: a teacher forward every step, full KL)"})

    def __post_init__(self) -> None:
        from .data import PROMPT_FORMATS
        from .hub import DTYPES

        if self.depth is not None:
            DepthConfig.parse(self.depth)
        if self.columns is not None:
            self.column_map()
        checks = [
            ("max_seq_length", self.max_seq_length >= 2, "must be >= 2"),
            ("prompt_fraction", 0 < self.prompt_fraction < 1, "must be in (0, 1)"),
            ("validation_fraction", self.validation_fraction is None or 0 < self.validation_fraction < 1,
             "must be in (0, 1)"),
            ("limit", self.limit is None or self.limit >= 1, "must be >= 1"),
            ("eval_limit", self.eval_limit is None or self.eval_limit >= 1, "must be >= 1"),
            ("prompt_format", self.prompt_format in PROMPT_FORMATS, f"must be one of {', '.join(PROMPT_FORMATS)}"),
            ("dtype", self.dtype in DTYPES, f"must be one of {', '.join(DTYPES)}"),
            ("cost_alpha", self.cost_alpha >= 0, "must be >= 0"),
            ("controller_learning_rate", self.controller_learning_rate is None or self.controller_learning_rate > 0,
             "must be > 0"),
            ("lora_r", self.lora_r >= 0, "must be >= 0"),
            ("lora_head_r", self.lora_head_r >= 0, "must be >= 0"),
            ("lora_dropout", 0 <= self.lora_dropout < 1, "must be in [0, 1)"),
            ("distill_alpha", 0 <= self.distill_alpha <= 1, "must be in [0, 1]"),
            ("distill_temperature", self.distill_temperature > 0, "must be > 0"),
            ("distill_top_k", self.distill_top_k >= 0, "must be >= 0"),
        ]
        for name, ok, why in checks:
            if not ok:
                raise ValueError(f"--{name}: {why}, got {getattr(self, name)!r}")

    @property
    def uses_lora(self) -> bool:
        return self.lora_r > 0 or self.lora_head_r > 0

    def column_map(self) -> dict[str, str] | None:
        if self.columns is None:
            return None
        try:
            value = json.loads(self.columns)
        except json.JSONDecodeError as e:
            raise ValueError(f"--columns: malformed JSON ({e.msg})") from None
        if not isinstance(value, dict):
            raise ValueError(f"--columns: expected a JSON object, got {self.columns!r}")
        return value


class _Parser(OneLineErrors, HfArgumentParser):
    """HfArgumentParser whose errors are one line, as the other commands' are."""


def build_parser(command: str = "train") -> HfArgumentParser:
    return _Parser((AdalasArguments, TrainingArguments), prog=f"adalas {command}",
                   description="Fine-tune with a dynamic depth on the Hugging Face Trainer; flags "
                               "override the recipe's fields (dash and underscore spellings alike).")


def parse_args(argv: list[str], command: str = "train") -> tuple[AdalasArguments, TrainingArguments]:
    """Command defaults < recipe < command line (argparse keeps the last occurrence of a flag)."""
    recipe, rest = split_recipe_flag(list(argv))
    parser = build_parser(command)
    fields = load_recipe(recipe) if recipe else {}
    check_fields(fields, {a.dest for a in parser._actions} - {"help", "recipe"}, where=f"recipe {recipe}")
    full = to_argv(COMMAND_DEFAULTS) + to_argv(fields) + rest
    _check_deepspeed(full)
    cfg, args = parser.parse_args_into_dataclasses(args=full)
    cfg.recipe = recipe
    if not args.output_dir:
        raise ValueError("--output_dir: required (or set output_dir in the recipe)")
    check_output_dir(args.output_dir, "--output_dir")
    for name in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if getattr(args, name) < 1:
            raise ValueError(f"--{name}: must be >= 1, got {getattr(args, name)}")
    if args.max_steps == 0 or args.max_steps < -1:
        raise ValueError(f"--max_steps: must be >= 1, or -1 (train --num_train_epochs), got {args.max_steps}")
    if args.max_steps == -1 and not args.num_train_epochs > 0:
        raise ValueError(f"--num_train_epochs: must be > 0, got {args.num_train_epochs}")
    return cfg, args


def _check_deepspeed(argv: list[str]) -> None:
    """`--deepspeed` may name a packaged config (ds_zero2.json); DeepSpeed must be installed; no ZeRO-3."""
    for i, a in enumerate(argv):
        if a == "--deepspeed" and i + 1 < len(argv):
            argv[i + 1] = path = packaged_file(argv[i + 1])
        elif a.startswith("--deepspeed="):
            path = packaged_file(a.split("=", 1)[1])
            argv[i] = f"--deepspeed={path}"
        else:
            continue
        if importlib.util.find_spec("deepspeed") is None:
            raise ValueError("--deepspeed: DeepSpeed is not installed; `pip install 'adalas[deepspeed]'`")
        try:
            stage = json.loads(Path(path).read_text()).get("zero_optimization", {}).get("stage")
        except (OSError, ValueError):
            raise ValueError(f"--deepspeed: cannot read the JSON config {path!r}") from None
        if stage == 3:
            raise ValueError("--deepspeed: ZeRO-3 partitions the weights, which our checkpoint writer does not "
                             "gather; use ZeRO-2 (recipes/ds_zero2.json)")


# ---------------------------------------------------------------------------------------------
# The cost-aware loss and the per-layer gate statistics

def gate_cost(label_gates: torch.Tensor, num_items_in_batch: Any = None) -> torch.Tensor:
    """The mean executed-layer fraction of label tokens; `label_gates` is (N, L).

    With `num_items_in_batch` (label tokens in the whole accumulated, all-rank batch, as the Trainer
    passes it) the sum is divided by that count instead, so that micro-batches add up to the mean.
    """
    if num_items_in_batch is not None:
        return label_gates.sum() / (num_items_in_batch * label_gates.shape[-1])
    if label_gates.numel() == 0:
        return label_gates.sum()
    return label_gates.mean()


class GateMeter:
    """Per-layer sums of gates over label tokens since the last flush (one meter for train, one for eval)."""

    def __init__(self, num_layers: int):
        self.num_layers = num_layers
        self.stats: torch.Tensor | None = None  # (L + 1,): per-layer runs, then the token count

    def add(self, label_gates: torch.Tensor) -> None:
        g = label_gates.detach().float()  # (N, L)
        row = torch.cat([g.sum(0), g.new_tensor([g.shape[0]])])
        self.stats = row if self.stats is None else self.stats + row

    def flush(self, prefix: str, reduce, device: torch.device) -> dict[str, float]:
        """`{prefix}skip_rate/layer_07` per layer and `{prefix}avg_layers`; `reduce` sums over ranks.

        Every rank must call this at the same time (it is a collective under DDP).
        """
        stats = self.stats if self.stats is not None else torch.zeros(self.num_layers + 1)
        self.stats = None
        stats = reduce(stats.to(device))
        tokens = float(stats[-1])
        if tokens == 0:
            return {}
        ran = (stats[:-1] / tokens).tolist()
        width = max(2, len(str(self.num_layers - 1)))
        out = {f"{prefix}skip_rate/layer_{i:0{width}d}": round(1.0 - r, 4) for i, r in enumerate(ran)}
        out[f"{prefix}avg_layers"] = round(sum(ran), 4)
        return out


# ---------------------------------------------------------------------------------------------
# Which parameters train

def unwrap(model: nn.Module) -> AdalasForCausalLM:
    """The AdalasForCausalLM inside a peft wrapper (or the model itself)."""
    while not isinstance(model, AdalasForCausalLM):
        if hasattr(model, "get_base_model"):
            model = model.get_base_model()
        elif hasattr(model, "module"):
            model = model.module
        else:
            raise TypeError(f"not an adalas model: {type(model).__name__}")
    return model


def is_peft(model: nn.Module) -> bool:
    try:
        from peft import PeftModel
    except ImportError:  # pragma: no cover
        return False
    return isinstance(model, PeftModel)


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total), each shared tensor counted once."""
    seen: dict[int, nn.Parameter] = {}
    for p in model.parameters():
        seen.setdefault(id(p), p)
    total = sum(p.numel() for p in seen.values())
    return sum(p.numel() for p in seen.values() if p.requires_grad), total


def untie_head(model: AdalasForCausalLM) -> None:
    """Give the LM head its own weight when it shares the input embedding's (so training or adapting
    the head leaves the embeddings alone), and record that in the config so it saves and loads untied."""
    hf = model.model
    head, emb = hf.get_output_embeddings(), hf.get_input_embeddings()
    if head is None or emb is None or head.weight is not emb.weight:
        return
    head.weight = nn.Parameter(head.weight.detach().clone(), requires_grad=head.weight.requires_grad)
    for cfg in {id(c): c for c in (hf.config, hf.config.get_text_config())}.values():
        cfg.tie_word_embeddings = False


def head_module_name(model: AdalasForCausalLM) -> str:
    head = model.model.get_output_embeddings()
    for name, module in model.model.named_modules():
        if module is head:
            return name.rsplit(".", 1)[-1]
    raise ValueError("the model has no output embedding (LM head) to adapt")


def apply_lora(model: AdalasForCausalLM, cfg: AdalasArguments) -> nn.Module:
    """peft LoRA on the attention projections (rank lora_r) and/or the head (rank lora_head_r)."""
    from peft import LoraConfig, get_peft_model

    targets: list[str] = []
    if cfg.lora_r:
        targets = list(cfg.lora_target_modules or ATTENTION_PROJECTIONS)
        names = {n.rsplit(".", 1)[-1] for n, _ in model.family.layers()[0].named_modules()}
        found = [t for t in targets if t in names]
        if not found:
            raise ValueError(f"--lora_target_modules: none of {', '.join(targets)} is a module of this model's "
                             f"layers; pass the names of its attention projections")
        targets = found
    rank_pattern: dict[str, int] = {}
    if cfg.lora_head_r:
        untie_head(model)
        head = head_module_name(model)
        targets.append(head)
        rank_pattern[rf"^model\.{re.escape(head)}$"] = cfg.lora_head_r
    lora = LoraConfig(r=cfg.lora_r or cfg.lora_head_r, lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                      target_modules=targets, rank_pattern=rank_pattern, bias="none")
    peft_model = get_peft_model(model, lora)
    for p in model.controllers.parameters():  # peft froze everything but the adapters
        p.requires_grad_(True)
    return peft_model


def freeze_skipped_layers(model: AdalasForCausalLM) -> list[int]:
    """Freeze every layer the (fixed) route skips; returns their indices."""
    route = model.depth.static_route(model.num_layers)
    if route is None:
        raise ValueError(f"--freeze_skipped: needs a fixed route (static_skip, early_exit, route); "
                         f"the depth mode is {model.depth.mode!r}")
    skipped = [i for i, run in enumerate(route) if not run]
    for i in skipped:
        for p in model.family.layers()[i].parameters():
            p.requires_grad_(False)
    return skipped


def freeze_for_warmup(model: AdalasForCausalLM, train_head: bool) -> None:
    """Only the controllers (and the head, with train_head) train."""
    if model.depth.mode != "learned" or not len(model.controllers):
        raise ValueError(f"warmup trains the skip controllers of a learned depth, and the depth mode is "
                         f"{model.depth.mode!r}: nothing to train; pass --depth '{{\"mode\": \"learned\"}}' "
                         f"(or a model saved with one)")
    model.requires_grad_(False)
    model.controllers.requires_grad_(True)
    if train_head:
        untie_head(model)
        model.model.get_output_embeddings().requires_grad_(True)


def prepare_model(model: AdalasForCausalLM, cfg: AdalasArguments, warmup: bool) -> nn.Module:
    """Set what trains; returns the model to train (a peft wrapper with LoRA)."""
    if model.depth.mode != "learned":
        model.controllers.requires_grad_(False)  # left over from a saved learned model; unused
    if warmup:
        if cfg.uses_lora:
            raise ValueError("--lora_r/--lora_head_r: warmup trains the controllers only; use `adalas train`")
        freeze_for_warmup(model, cfg.train_head)  # (freeze_skipped has nothing left to freeze)
        out: nn.Module = model
    else:
        out = apply_lora(model, cfg) if cfg.uses_lora else model
        if cfg.uses_lora and cfg.train_head:
            untie_head(model)
            model.model.get_output_embeddings().requires_grad_(True)
        if cfg.freeze_skipped:
            freeze_skipped_layers(model)
    trainable, _ = count_parameters(out)
    if trainable == 0:
        raise ValueError("no parameter is trainable with these options")
    return out


# ---------------------------------------------------------------------------------------------
# Checkpoints in our format

def export_state_dict(model: nn.Module) -> dict[str, torch.Tensor] | None:
    """For a peft model, the wrapped Hugging Face model's state dict with every adapter merged in
    (base weight + delta, computed aside: the live model is not touched); None otherwise."""
    if not is_peft(model):
        return None
    hf = unwrap(model).model
    modules = dict(hf.named_modules())
    out: dict[str, torch.Tensor] = {}
    for key, value in hf.state_dict().items():
        if ".lora_" in key:
            continue
        if ".base_layer." in key:
            owner, param = key.split(".base_layer.", 1)
            key = f"{owner}.{param}"
            if param == "weight":
                lora = modules[owner]
                for name in lora.active_adapters:
                    if name in lora.lora_A:
                        value = value + lora.get_delta_weight(name).to(value.dtype)
        out[key] = value.detach()
    return out


def save_model_dir(model: nn.Module, output_dir: str | Path) -> None:
    """`AdalasForCausalLM.save_pretrained` (safetensors, depth, controllers); LoRA merged."""
    output_dir = Path(output_dir)
    adalas = unwrap(model)
    merged = export_state_dict(model)
    if merged is None:
        adalas.save_pretrained(output_dir)
        return
    adalas.save_pretrained(output_dir, state_dict=merged)
    trainable = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    atomic_save_tensors(output_dir / TRAINABLE_FILE, trainable)


def _weight_files(directory: Path) -> list[Path]:
    single = directory / "model.safetensors"
    if single.is_file():
        return [single]
    index = directory / "model.safetensors.index.json"
    if index.is_file():
        try:
            shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
        except (ValueError, KeyError):
            return []
        files = [directory / s for s in shards]
        return files if all(f.is_file() for f in files) else []
    return []


def load_checkpoint_weights(model: nn.Module, directory: str | Path) -> None:
    """Load a checkpoint written by `save_model_dir` into the model being trained, in place."""
    from safetensors.torch import load_file

    directory = Path(directory)
    adalas = unwrap(model)
    if is_peft(model):
        f = directory / TRAINABLE_FILE
        if not f.is_file():
            raise ValueError(f"checkpoint {directory}: no {TRAINABLE_FILE}; it was not written by a LoRA run")
        result = model.load_state_dict(load_file(str(f)), strict=False)
        if result.unexpected_keys:
            raise ValueError(f"checkpoint {directory}: tensors this model does not have: {result.unexpected_keys[:3]}")
        return
    files = _weight_files(directory)
    if not files:
        raise ValueError(f"checkpoint {directory}: no safetensors weights")
    state: dict[str, torch.Tensor] = {}
    for f in files:
        state.update(load_file(str(f)))
    result = adalas.model.load_state_dict(state, strict=False)
    if result.unexpected_keys:
        raise ValueError(f"checkpoint {directory}: tensors this model does not have: {result.unexpected_keys[:3]}")
    current = adalas.model.state_dict()
    loaded = {current[k].data_ptr() for k in state if k in current}
    missing = [k for k in result.missing_keys if current[k].data_ptr() not in loaded]  # tied ones are loaded
    if missing:
        raise ValueError(f"checkpoint {directory}: missing tensors: {missing[:3]}")
    controllers = directory / CONTROLLERS_FILE
    if controllers.is_file():
        saved = load_file(str(controllers))
        adalas.controllers.load_state_dict({k.removeprefix("controllers."): v for k, v in saved.items()})


def is_complete_checkpoint(directory: Path) -> bool:
    """Trainer state written (it is written last) and parseable, depth config and weights present."""
    try:
        json.loads((directory / "trainer_state.json").read_text())
    except (OSError, ValueError):
        return False
    if not (directory / DEPTH_FILE).is_file():
        return False
    return bool(_weight_files(directory)) or (directory / TRAINABLE_FILE).is_file()


def latest_checkpoint(output_dir: str | Path) -> Path | None:
    """The complete `checkpoint-N` with the largest N (incomplete ones skipped)."""
    root = Path(output_dir)
    if not root.is_dir():
        return None
    found = [(int(m.group(1)), p) for p in root.iterdir() if p.is_dir() and (m := CHECKPOINT_RE.match(p.name))]
    for _, path in sorted(found, reverse=True):
        if is_complete_checkpoint(path):
            return path
    return None


def checkpoint_step(directory: str | Path) -> int:
    """The optimizer step a complete checkpoint was written at."""
    return int(json.loads((Path(directory) / "trainer_state.json").read_text())["global_step"])


def resolve_resume(value: str | None, output_dir: str) -> str | None:
    """`true`/`latest`: the latest complete checkpoint (None, and a note, when there is none yet);
    `false`/None: start fresh; else a checkpoint directory, which must be complete."""
    if value is None or value.strip().lower() in ("", "false", "no", "0"):
        return None
    if value.strip().lower() in ("true", "yes", "1", "latest"):
        found = latest_checkpoint(output_dir)
        if found is None:
            print(f"adalas: no complete checkpoint in {output_dir}; starting from the beginning", file=sys.stderr)
            return None
        return str(found)
    path = Path(value)
    if not is_complete_checkpoint(path):
        raise ValueError(f"--resume_from_checkpoint: {value!r} is not a complete checkpoint directory")
    return str(path)


# ---------------------------------------------------------------------------------------------
# The Trainer

class AdalasTrainer(Trainer):
    """The Hugging Face Trainer with the cost-aware loss, skip-rate logging and our checkpoints."""

    def __init__(self, *args, cost_alpha: float = 0.0, distiller: Distiller | None = None,
                 controller_learning_rate: float | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.cost_alpha = cost_alpha
        self.distiller = distiller
        self.controller_learning_rate = controller_learning_rate
        num_layers = unwrap(self.model).num_layers
        self.meters = {"train": GateMeter(num_layers), "eval": GateMeter(num_layers)}

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the controllers in a group of their own at their own learning
        rate (no weight decay) when one is given; the scheduler then scales each group alike."""
        optimizer = super().create_optimizer(model)
        if self.controller_learning_rate is None or getattr(optimizer, "_adalas_controller_group", False):
            return optimizer
        controllers = [p for p in unwrap(self.model).controllers.parameters() if p.requires_grad]
        ids = {id(p) for p in controllers}
        for group in optimizer.param_groups:
            group["params"] = [p for p in group["params"] if id(p) not in ids]
        optimizer.param_groups[:] = [g for g in optimizer.param_groups if g["params"]]
        optimizer.add_param_group({"params": controllers, "lr": self.controller_learning_rate, "weight_decay": 0.0})
        optimizer._adalas_controller_group = True
        return optimizer

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        scaled = self.model_accepts_loss_kwargs and num_items_in_batch is not None
        example_index = inputs.pop(INDEX_COLUMN, None)
        outputs = model(**inputs, **({"num_items_in_batch": num_items_in_batch} if scaled else {}))
        label_gates = outputs.layer_gates[inputs["labels"].ne(-100)]  # (N, L)
        self.meters["train" if model.training else "eval"].add(label_gates)
        loss = outputs.loss
        if self.distiller is not None and model.training:
            loss = self.distiller.loss(model, inputs, outputs.logits, outputs.loss, example_index,
                                       num_items_in_batch if scaled else None)
        if model.training and self.cost_alpha:
            loss = loss + self.cost_alpha * gate_cost(label_gates, num_items_in_batch if scaled else None)
        if scaled and self.args.average_tokens_across_devices:
            # num_items_in_batch counts every rank's tokens; DDP averages gradients (as Trainer.compute_loss)
            loss = loss * (self.accelerator.num_processes if self.args.n_gpu <= 1 else self.args.n_gpu)
        return (loss, outputs) if return_outputs else loss

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        eval_loss = next((k for k in logs if k.startswith("eval") and k.endswith("_loss")), None)
        if "loss" in logs:
            logs.update(self._flush("train", ""))
        elif eval_loss is not None:
            logs.update(self._flush("eval", eval_loss[:-len("loss")]))
        super().log(logs, start_time)

    def _flush(self, which: str, prefix: str) -> dict[str, float]:
        return self.meters[which].flush(prefix, lambda t: self.accelerator.reduce(t, reduction="sum"),
                                        self.args.device)

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        # state_dict (DeepSpeed's gathered copy) is not needed: under ZeRO-2 every rank holds the weights.
        output_dir = output_dir if output_dir is not None else self.args.output_dir
        if not self.args.should_save:
            return
        save_model_dir(self.model, output_dir)
        if self.processing_class is not None:
            self.processing_class.save_pretrained(output_dir)
        atomic_write_text(Path(output_dir) / "training_args.json", self.args.to_json_string())

    def _load_from_checkpoint(self, resume_from_checkpoint: str, model: nn.Module | None = None) -> None:
        load_checkpoint_weights(model if model is not None else self.model, resume_from_checkpoint)

    def _load_best_model(self) -> None:
        if self.is_deepspeed_enabled:
            return super()._load_best_model()
        load_checkpoint_weights(self.model, self.state.best_model_checkpoint)


# ---------------------------------------------------------------------------------------------
# The two commands

def _datasets(cfg: AdalasArguments, args: TrainingArguments, tokenizer):
    from .data import prepare_dataset

    common = dict(prompt_format=cfg.prompt_format, max_seq_length=cfg.max_seq_length,
                  prompt_fraction=cfg.prompt_fraction, columns=cfg.column_map(), task=cfg.task,
                  hub_config=cfg.hub_config)
    train = prepare_dataset(cfg.data, tokenizer, split="train", limit=cfg.limit,
                            validation_fraction=cfg.validation_fraction, **common)
    wants_eval = args.eval_strategy != "no" or args.do_eval
    if not wants_eval:
        return train, None
    if cfg.eval_data is not None:
        ev = prepare_dataset(cfg.eval_data, tokenizer, split=cfg.eval_split, limit=cfg.eval_limit, **common)
    else:
        local = cfg.data == "builtin" or Path(cfg.data).expanduser().is_file()
        if local and cfg.validation_fraction is None:
            raise ValueError("evaluation needs --eval_data or --validation_fraction (a local --data file is "
                             "used whole for training)")
        ev = prepare_dataset(cfg.data, tokenizer, split=cfg.eval_split if cfg.validation_fraction is None
                             else "validation", limit=cfg.eval_limit,
                             validation_fraction=cfg.validation_fraction, **common)
    return train, ev


def _distillation(cfg: AdalasArguments, args: TrainingArguments, adalas: AdalasForCausalLM, train_ds, collator):
    """(the training set with its row index, the collator that passes it, the Distiller). Called before
    LoRA is applied, so a cached teacher (and a full fine-tune's frozen copy) is the base weights at
    full depth; under LoRA without a cache, the teacher is the same model with its adapters disabled."""
    from .distill import IndexedCollator, teacher_cache

    train_ds = train_ds.add_column(INDEX_COLUMN, list(range(len(train_ds))))
    collator = IndexedCollator(collator)
    if cfg.distill_top_k:
        with args.main_process_first(desc="the teacher's top-k"):
            adalas.to(args.device)
            teacher = {"cache": teacher_cache(adalas, train_ds, collator.base, cfg.distill_top_k,
                                              cfg.distill_temperature,
                                              progress=args.process_index == 0 and not args.disable_tqdm)}
    elif cfg.uses_lora:
        teacher = {"adalas": adalas}  # the trained model itself, its adapters disabled
    else:
        teacher = {"teacher": _frozen_copy(adalas)}
    return train_ds, collator, Distiller(cfg.distill_alpha, cfg.distill_temperature, **teacher)


def _frozen_copy(adalas: AdalasForCausalLM) -> AdalasForCausalLM:
    """The teacher of a full fine-tune: the weights as they are now, frozen, in eval mode."""
    import copy

    teacher = copy.deepcopy(adalas).eval()
    teacher.requires_grad_(False)
    return teacher


def training_record(cfg: AdalasArguments, argv: list[str], steps: int, wall_s: float) -> dict:
    """How a model directory was made: the command, recipe, data (name and hash), steps, wall time."""
    return {"command": "adalas train " + shlex.join(argv), "recipe": cfg.recipe, "data": cfg.data, "split": "train",
            "data_sha256": data_sha256(cfg.data), "steps": steps, "wall_s": round(wall_s, 1),
            "base_model": cfg.model}


def save_adapter(model: nn.Module, directory: Path, record: dict) -> None:
    """The LoRA adapter alone (fp16 safetensors, a few MB), its config, the depth config and how it
    was made: what `src/adalas/adapters/<alias>/` ships (see `adalas.adapters`). The four files are
    written into a temporary sibling directory that then takes the place of `directory`, so a save
    that fails part way never leaves an adapter without its depth config (which would load at full
    depth) or with another save's weights."""
    import shutil
    import tempfile

    from peft import get_peft_model_state_dict
    directory = Path(directory)
    directory.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=directory.parent, prefix=f".{directory.name}.new-"))
    try:
        # keys relative to the Hugging Face model (peft's own layout), not to our wrapper: the adapter then
        # also loads with plain peft onto the base checkpoint
        state = {k.replace("base_model.model.model.", "base_model.model.", 1):
                 v.detach().to(torch.float16).contiguous().cpu() for k, v in get_peft_model_state_dict(model).items()}
        atomic_save_tensors(tmp / "adapter_model.safetensors", state)
        config = model.peft_config["default"].to_dict()
        config["base_model_name_or_path"] = None
        atomic_write_json(tmp / "adapter_config.json", _jsonable(config))
        atomic_write_json(tmp / DEPTH_FILE, unwrap(model).depth.to_dict())
        atomic_write_json(tmp / "provenance.json", record)
        replace_dir(tmp, directory)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def replace_dir(new: Path, target: Path) -> None:
    """Put the directory `new` at `target` (a sibling), replacing what is there: renames only, so a
    reader sees the old directory or the new one, never a mix (for an instant, none)."""
    import shutil
    import tempfile

    if not target.exists():
        new.rename(target)
        return
    trash = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}.old-"))
    old = trash / target.name
    target.rename(old)
    try:
        new.rename(target)
    except BaseException:
        old.rename(target)
        raise
    finally:
        shutil.rmtree(trash, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, set)):
        return [_jsonable(v) for v in (sorted(value) if isinstance(value, set) else value)]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def _print_main(args: TrainingArguments, text: str) -> None:
    if args.process_index == 0:
        print(text, flush=True)


def run(argv: list[str], warmup: bool = False, callbacks: Iterable[TrainerCallback] = ()) -> int:
    """`adalas train` (warmup=False) and `adalas warmup` (warmup=True)."""
    from transformers import set_seed

    from .data import make_collator
    from .hub import check_architecture, load_tokenizer

    cfg, args = parse_args(argv, "warmup" if warmup else "train")
    check_architecture(cfg.model, trust_remote_code=cfg.trust_remote_code)  # before tokenizing any data
    if args.label_smoothing_factor:
        raise ValueError("--label_smoothing_factor: not supported (the loss is the model's own causal LM loss)")
    args.remove_unused_columns = False  # our rows hold exactly input_ids, attention_mask, labels
    args.prediction_loss_only = True  # evaluation reports losses and skip rates; logits are not kept
    set_seed(args.seed)  # controllers and LoRA are initialised at load time

    if cfg.data == "builtin" or cfg.eval_data == "builtin":
        warnings.warn("--data builtin: the built-in set is evaluation data; a model trained on it scores "
                      "too well there (train on `adalas synth` output instead)", stacklevel=1)
    if cfg.distill and warmup:
        raise ValueError("--distill: warmup trains the controllers on the cost loss; use `adalas train --distill true`")
    start = time.monotonic()
    tokenizer = load_tokenizer(cfg.model, trust_remote_code=cfg.trust_remote_code)
    with args.main_process_first(desc="tokenizing the data"):
        train_ds, eval_ds = _datasets(cfg, args, tokenizer)

    adalas = AdalasForCausalLM.from_pretrained(cfg.model, depth=cfg.depth, dtype=cfg.dtype,
                                               allow_pickle=cfg.allow_pickle,
                                               trust_remote_code=cfg.trust_remote_code)
    if (cfg.controller_init_bias is not None or cfg.controller_learning_rate is not None) \
            and adalas.depth.mode != "learned":
        raise ValueError(f"--controller_init_bias/--controller_learning_rate: the depth mode is "
                         f"{adalas.depth.mode!r}, which has no learned controllers")
    if cfg.controller_init_bias is not None:
        for controller in adalas.controllers.values():
            controller.start_running(cfg.controller_init_bias)
    collator = make_collator(tokenizer)
    distiller = None
    if cfg.distill:
        train_ds, collator, distiller = _distillation(cfg, args, adalas, train_ds, collator)
    model = prepare_model(adalas, cfg, warmup)
    if args.ddp_find_unused_parameters is None:
        # a layer that every token skips gets no gradient, which DDP must be told about (or it is frozen)
        args.ddp_find_unused_parameters = adalas.depth.mode not in ("full", "learned") and not (
            cfg.freeze_skipped or warmup)
    if getattr(args, "activation_checkpointing", None) or args.gradient_checkpointing:
        # Our per-layer checkpointing, switched on here: recent Trainers call it with keywords
        # (every_n_layers, offload) that AdalasForCausalLM.gradient_checkpointing_enable does not take.
        adalas.gradient_checkpointing_enable()
        args.gradient_checkpointing = False
        if hasattr(args, "activation_checkpointing"):
            args.activation_checkpointing = False
    trainable, total = count_parameters(model)
    _print_main(args, f"adalas {'warmup' if warmup else 'train'}: depth {adalas.depth.to_json()}; trainable "
                      f"parameters: {trainable:,} of {total:,} ({100 * trainable / total:.4f}%)")

    trainer = AdalasTrainer(model=model, args=args, train_dataset=train_ds, eval_dataset=eval_ds,
                            data_collator=collator, processing_class=tokenizer,
                            callbacks=[RouteKeyCallback(), *callbacks], cost_alpha=cfg.cost_alpha, distiller=distiller,
                            controller_learning_rate=cfg.controller_learning_rate)
    resume = resolve_resume(args.resume_from_checkpoint, args.output_dir)
    if resume:
        _print_main(args, f"adalas: resuming from {resume}")
    if resume and args.max_steps > 0 and checkpoint_step(resume) >= args.max_steps:
        # transformers would train one step past max_steps when resuming a finished run: take it as it is
        from transformers import TrainerState

        _print_main(args, f"adalas: {resume} already reached max_steps={args.max_steps}; not training further")
        trainer._load_from_checkpoint(resume)
        trainer.state = TrainerState.load_from_json(str(Path(resume) / "trainer_state.json"))
        train_metrics: dict[str, float] = {}
    else:
        train_metrics = trainer.train(resume_from_checkpoint=resume).metrics
    trainer.save_model()
    if args.should_save:
        record = training_record(cfg, argv, trainer.state.global_step, time.monotonic() - start)
        atomic_write_json(Path(args.output_dir) / TRAINING_FILE, record)
        if is_peft(model):
            save_adapter(model, Path(args.output_dir) / "adapter", record)
    if train_metrics:
        trainer.log_metrics("train", train_metrics)
        trainer.save_metrics("train", train_metrics)
    trainer.save_state()
    if eval_ds is not None:
        metrics = trainer.evaluate()
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
    _print_main(args, f"adalas: saved to {args.output_dir}")
    return 0

