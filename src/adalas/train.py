"""Fine-tuning with a dynamic depth, and controller warm-up, on the Hugging Face Trainer.

Notable:
- The command line is `HfArgumentParser((AdalasArguments, TrainingArguments))` (`adalas.train_args`):
  every Trainer flag plus ours, with defaults from a recipe. `run(argv, warmup=...)` is both commands.
- `AdalasTrainer` overrides four narrow methods and nothing else: `compute_loss` (the cost-aware
  loss, and per-layer gate sums over label tokens), `log` (those sums as `skip_rate/layer_07` and
  `avg_layers`, train and eval apart, reduced across ranks), `_save` (our checkpoint format:
  `AdalasForCausalLM.save_pretrained`, LoRA merged; see `adalas.checkpoints`) and
  `_load_from_checkpoint` / `_load_best_model` (read that format back when resuming).
- Distribution is the Trainer's (torchrun, accelerate, DeepSpeed ZeRO-2): no process groups here.
  Under DDP a layer that every token skips gets no gradient; freezing it (`--freeze_skipped`) or
  `ddp_find_unused_parameters=True` (set here automatically otherwise) keeps DDP happy.
- `--resume_from_checkpoint true` takes the latest *complete* checkpoint in `--output_dir`
  (`checkpoints.resolve_resume`); a LoRA run also saves its adapter alone (`checkpoints.save_adapter`).
"""
from __future__ import annotations

import re
import shlex
import time
import warnings
from pathlib import Path
from typing import Any, Iterable

import torch
from torch import nn
from transformers import Trainer, TrainerCallback, TrainingArguments

from .callbacks import RouteKeyCallback
from .checkpoints import (checkpoint_step, is_peft, load_checkpoint_weights, resolve_resume, save_adapter,
                          save_model_dir, unwrap)
from .data import TRAINING_FILE, data_sha256
from .distill import INDEX_COLUMN, Distiller
from .io import atomic_write_json, atomic_write_text
from .model import AdalasForCausalLM
from .train_args import AdalasArguments, parse_args

ATTENTION_PROJECTIONS = ("q_proj", "k_proj", "v_proj")


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
        outputs = model(**inputs, response_logits=True, **({"num_items_in_batch": num_items_in_batch} if scaled else {}))
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

