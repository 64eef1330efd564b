"""Self-distillation: the model under its depth config learns to match itself at full depth.

loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE, the mean over response tokens.

The teacher is the same weights at full depth with no adapters. Two ways to get it:
- **cached top-k** (`top_k > 0`, the default): one no-grad full-depth pass over the training set
  before training stores, per response token, the teacher's k most likely tokens and their
  log-probabilities at temperature T, in a safetensors file under the cache directory, keyed by a
  hash of every weight (and the dtype), the tokenized data, T, k and a format version. Every later
  run on the same data (other routes, other seeds, resumed runs) reuses it, and no step pays a
  teacher forward. The KL is taken over k + 1 buckets:
  the k tokens and "everything else" (the teacher's tail mass, and the student's mass outside the
  k). It is 0 exactly when the two agree on those buckets, and never exceeds the full KL.
- **online** (`top_k = 0`): the full-vocabulary KL against a teacher forward each step (adapters
  disabled under LoRA; a frozen copy of the weights otherwise).
"""
from __future__ import annotations

import hashlib
import json
from contextlib import nullcontext
from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F

from .config import DepthConfig
from .io import atomic_save_tensors
from .paths import cache_dir

INDEX_COLUMN = "example_index"  # the dataset row, so a batch finds its cached teacher rows
TEACHER_FORMAT = 2  # the cached teacher's file layout and key recipe: bump when either changes


# ---------------------------------------------------------------------------------------------
# The losses (pure functions)

def response_positions(labels: torch.Tensor) -> torch.Tensor:
    """(B, T-1) bool: logits positions that predict a response token (labels shifted by one)."""
    return labels[:, 1:].ne(-100)


def kl_full(student_logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """(N,) KL(teacher_T || student_T) per token, over the whole vocabulary."""
    t = F.log_softmax(teacher_logits.float() / temperature, dim=-1)
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    return (t.exp() * (t - s)).sum(-1)


def tail_log(logp_top: torch.Tensor) -> torch.Tensor:
    """log(1 - sum(exp(logp_top))) per row, kept finite: the log-mass outside the top k."""
    mass = logp_top.exp().sum(-1).clamp(max=1.0 - 1e-6)
    return torch.log1p(-mass)


def kl_topk(student_logits: torch.Tensor, teacher_index: torch.Tensor, teacher_logp: torch.Tensor,
            temperature: float) -> torch.Tensor:
    """(N,) KL over k + 1 buckets (the teacher's top k, and the rest); teacher_logp are log-probs at T."""
    s = F.log_softmax(student_logits.float() / temperature, dim=-1)
    s_top = s.gather(-1, teacher_index.long())                         # (N, k)
    t_top = teacher_logp.float()                                       # (N, k)
    t_all = torch.cat([t_top, tail_log(t_top).unsqueeze(-1)], dim=-1)  # (N, k + 1)
    s_all = torch.cat([s_top, tail_log(s_top).unsqueeze(-1)], dim=-1)
    return (t_all.exp() * (t_all - s_all)).sum(-1)


def mix(kl_sum: torch.Tensor, ce: torch.Tensor, alpha: float, temperature: float,
        denominator: torch.Tensor | float) -> torch.Tensor:
    """alpha * T^2 * (kl_sum / denominator) + (1 - alpha) * ce."""
    kd = kl_sum / denominator
    if alpha >= 1.0:
        return temperature ** 2 * kd
    return alpha * temperature ** 2 * kd + (1 - alpha) * ce


# ---------------------------------------------------------------------------------------------
# The teacher

@torch.no_grad()
def teacher_topk(model, batch: dict, k: int, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, k) token ids and log-probs at T for the response positions of `batch`, at full depth."""
    with model.temporary_depth(DepthConfig(mode="full")):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"],
                       response_logits=True).logits  # (N, V)
    logp = F.log_softmax(logits.float() / temperature, dim=-1)
    top = logp.topk(k, dim=-1)
    return top.indices.to(torch.int32), top.values


class TeacherCache:
    """Top-k teacher rows for every example of a dataset: one flat table plus per-example offsets."""

    def __init__(self, index: torch.Tensor, logp: torch.Tensor, offsets: torch.Tensor):
        self.index, self.logp, self.offsets = index, logp, offsets  # (N, k) int32, (N, k) fp16, (E + 1,)

    def rows(self, examples: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """The teacher rows of these examples, in order (the order of a batch's response tokens)."""
        parts = [torch.arange(int(self.offsets[e]), int(self.offsets[e + 1])) for e in examples]
        sel = torch.cat(parts) if parts else torch.zeros(0, dtype=torch.long)
        return self.index[sel], self.logp[sel].float()

    def save(self, path: Path) -> None:
        atomic_save_tensors(path, {"index": self.index.contiguous(), "logp": self.logp.contiguous(),
                                   "offsets": self.offsets.contiguous()})

    @classmethod
    def load(cls, path: Path) -> "TeacherCache":
        from safetensors.torch import load_file

        t = load_file(str(path))
        return cls(t["index"], t["logp"], t["offsets"])


def cache_key(model_identity: str, dataset, k: int, temperature: float) -> str:
    """A hash of what decides the teacher's rows: the model, every tokenized example, k, T and the
    cache's format version."""
    h = hashlib.sha256(json.dumps({"model": model_identity, "k": k, "T": temperature,
                                   "format": TEACHER_FORMAT}).encode())
    for row in dataset:
        h.update(json.dumps([row["input_ids"], row["labels"]]).encode())
    return h.hexdigest()[:24]


def model_identity(model) -> str:
    """What the teacher is: a hash of every weight and buffer of the wrapped model (name, dtype,
    shape and bytes) and of its config less its path. A model retrained into the same directory, or
    one weight changed anywhere, or another dtype, gets another key; the same weights loaded from
    elsewhere get the same one. (About a second per 500 MB, once per training run.)"""
    hf = model.model
    config = {k: v for k, v in hf.config.to_dict().items() if k not in ("_name_or_path", "transformers_version")}
    h = hashlib.sha256(json.dumps(config, sort_keys=True, default=str).encode())
    for name, t in [*hf.named_parameters(), *hf.named_buffers()]:
        t = t.detach()
        h.update(f"{name}:{t.dtype}:{tuple(t.shape)}".encode())
        h.update(t.cpu().contiguous().reshape(-1).view(torch.uint8).numpy())
    return h.hexdigest()


def build_teacher_cache(model, dataset, collate, k: int, temperature: float, batch_size: int = 8,
                        progress: bool = True) -> TeacherCache:
    """Run the teacher once over `dataset` (rows with input_ids, attention_mask, labels)."""
    from tqdm.auto import tqdm

    was_training = model.training
    model.eval()
    index, logp, offsets = [], [], [0]
    try:
        for start in tqdm(range(0, len(dataset), batch_size), desc="teacher top-k", disable=not progress):
            rows = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
            batch = collate([{c: r[c] for c in ("input_ids", "attention_mask", "labels")} for r in rows])
            batch = {name: t.to(model.device) for name, t in batch.items()}
            idx, lp = teacher_topk(model, batch, k, temperature)
            index.append(idx.cpu())
            logp.append(lp.to(torch.float16).cpu())
            for n in response_positions(batch["labels"]).sum(-1).tolist():
                offsets.append(offsets[-1] + n)
    finally:
        model.train(was_training)
    return TeacherCache(torch.cat(index), torch.cat(logp), torch.tensor(offsets, dtype=torch.long))


def teacher_cache(model, dataset, collate, k: int, temperature: float, progress: bool = True) -> TeacherCache:
    """The cached teacher for this model and dataset, computed on first use (shared across runs)."""
    path = cache_dir() / "teachers" / f"{cache_key(model_identity(model), dataset, k, temperature)}.safetensors"
    if path.is_file():
        return TeacherCache.load(path)
    cache = build_teacher_cache(model, dataset, collate, k, temperature, progress=progress)
    cache.save(path)
    return cache


# ---------------------------------------------------------------------------------------------
# The loss inside a training step

class Distiller:
    """Turns a student forward into the distillation loss, and holds the teacher: a `TeacherCache`,
    a frozen copy of the model (`teacher=` an AdalasForCausalLM), or, under LoRA, the trained model
    itself with its adapters disabled (`adalas=` the AdalasForCausalLM inside the peft wrapper)."""

    def __init__(self, alpha: float, temperature: float, *, cache: TeacherCache | None = None,
                 teacher=None, adalas=None):
        if sum(x is not None for x in (cache, teacher, adalas)) != 1:
            raise ValueError("Distiller: pass exactly one of cache=, teacher= (a frozen copy) or adalas= "
                             "(the model under LoRA, whose adapters are disabled for the teacher)")
        self.alpha, self.temperature = alpha, temperature
        self.cache, self.teacher, self.adalas = cache, teacher, adalas

    @torch.no_grad()
    def teacher_logits(self, model, inputs: dict) -> torch.Tensor:
        """(N, V) at the response positions (`response_positions`), at full depth, in eval mode (no dropout)."""
        runner = self.teacher if self.teacher is not None else model
        adalas = self.teacher if self.teacher is not None else self.adalas
        was_training = runner.training
        runner.eval()
        try:
            with adalas.temporary_depth(DepthConfig(mode="full")), (model.disable_adapter() if self.teacher is None else nullcontext()):
                return runner(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"],
                              labels=inputs["labels"], response_logits=True).logits
        finally:
            runner.train(was_training)

    def loss(self, model, inputs: dict, student: torch.Tensor, ce: torch.Tensor,
             example_index: torch.Tensor | None, denominator: torch.Tensor | float | None) -> torch.Tensor:
        """The mixed loss of `student` (N, V), the logits at the response positions (the model's forward
        with `response_logits=True`); `denominator` None: the mean over this batch's response tokens."""
        if self.cache is not None:
            if example_index is None:
                raise ValueError(f"distill: the batch has no {INDEX_COLUMN!r} column to find its cached teacher")
            index, logp = self.cache.rows(example_index.tolist())
            if index.shape[0] != student.shape[0]:
                raise ValueError(f"distill: the cached teacher has {index.shape[0]} response tokens for this batch, "
                                 f"the batch {student.shape[0]}; the data changed since it was cached")
            kl = kl_topk(student, index.to(student.device), logp.to(student.device), self.temperature)
        else:
            kl = kl_full(student, self.teacher_logits(model, inputs), self.temperature)
        if denominator is None:
            denominator = max(student.shape[0], 1)
        return mix(kl.sum(), ce, self.alpha, self.temperature, denominator)


class IndexedCollator:
    """A collator that also passes each row's dataset index (the teacher cache's key) as a tensor."""

    def __init__(self, base):
        self.base = base

    def __call__(self, features: list[dict]) -> dict[str, torch.Tensor]:
        index = [f[INDEX_COLUMN] for f in features] if INDEX_COLUMN in features[0] else None
        batch = self.base([{k: v for k, v in f.items() if k != INDEX_COLUMN} for f in features])
        if index is not None:
            batch[INDEX_COLUMN] = torch.tensor(index, dtype=torch.long)
        return batch
