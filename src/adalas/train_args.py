"""The flags of `adalas train` and `adalas warmup`: `HfArgumentParser((AdalasArguments,
TrainingArguments))`, every Trainer flag plus ours, with defaults from a recipe (`recipes.py`).

Its own module because the study plans and runs (`adalas.study`) and the recipe tests parse these
flags without training: the order is command defaults < recipe < command line, each of our flags
is checked in `__post_init__` (a one-line ValueError naming the flag), and `--deepspeed` may name a
packaged config (ZeRO-2 only: our checkpoint writer does not gather ZeRO-3's partitions).
"""
from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass, field
from pathlib import Path

from transformers import HfArgumentParser, TrainingArguments

from .config import DepthConfig
from .flags import OneLineErrors
from .io import check_output_dir
from .recipes import check_fields, load_recipe, packaged_file, split_recipe_flag, to_argv

COMMAND_DEFAULTS = {"report_to": "tensorboard"}  # below the recipe and the command line


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
