"""The tiny model of `adalas study --quick`: a random Llama with a word-level tokenizer, and its rows:
training rows, held-out rows (the choices), an evaluation set and three small sets under the real
tasks' file names (`tasks/`), so that the real study's pipeline runs end to end in a minute."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text


TINY_WORDS = ("apple", "river", "stone", "cloud", "green", "music", "paper", "tiger", "lemon", "water", "north",
              "glass")


def tiny_rows() -> dict[str, list[dict]]:
    """{"train", "heldout", "eval", "tasks"}: "Repeat the word w ." with input v -> "w w w , then v .";
    of every 7 (w, v) pairs one goes to evaluation, one to the held-out rows and one to the task sets."""
    pairs = [(w, v) for w in TINY_WORDS for v in TINY_WORDS if w != v]
    parts: dict[str, list[dict]] = {"train": [], "heldout": [], "eval": [], "tasks": []}
    for k, (w, v) in enumerate(pairs):
        row = {"instruction": f"Repeat the word {w} .", "input": v, "output": f"{w} {w} {w} , then {v} ."}
        parts[{3: "eval", 5: "heldout", 1: "tasks"}.get(k % 7, "train")].append(row)
    for name, prefix in (("eval", "e"), ("heldout", "h"), ("tasks", "t")):
        parts[name] = [{"id": f"{prefix}{i:02d}", **r} for i, r in enumerate(parts[name])]
    return parts


def build_tiny(directory: str | Path, layers: int = 8, seed: int = 0) -> Path:
    """A tiny random Llama with a word-level tokenizer over the Alpaca template and TINY_WORDS
    (`directory/model`), and its rows (`train.jsonl`, `heldout.jsonl`, `eval.jsonl`, and
    `tasks/<real task file>`, the task rows dealt round robin). Built once (`done` marks it)."""
    from ..tasks import REAL_TASKS

    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ..data import ALPACA_INTRO, ALPACA_INTRO_WITH_INPUT

    d = Path(directory)
    if (d / "done").is_file():
        return d
    rows = tiny_rows()
    text = " ".join([ALPACA_INTRO, ALPACA_INTRO_WITH_INPUT, "### Instruction:\n### Input:\n### Response:\n",
                     "Repeat the word , then .", *TINY_WORDS])
    words = sorted({w for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(text)})
    vocab = {t: i for i, t in enumerate(["<pad>", "<s>", "</s>", "<unk>", *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                        unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(tokenizer), hidden_size=48, num_hidden_layers=layers, intermediate_size=96,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, pad_token_id=0,
                      bos_token_id=1, eos_token_id=2)
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    model.save_pretrained(d / "model")
    tokenizer.save_pretrained(d / "model")
    for name in ("train", "heldout", "eval"):
        atomic_write_text(d / f"{name}.jsonl", "".join(json.dumps(r) + "\n" for r in rows[name]))
    (d / "tasks").mkdir(exist_ok=True)
    for k, task in enumerate(REAL_TASKS.values()):
        atomic_write_text(d / "tasks" / task.file,
                          "".join(json.dumps(r) + "\n" for r in rows["tasks"][k::len(REAL_TASKS)]))
    atomic_write_text(d / "done", "")
    return d
