"""The tiny model of `adalas study --quick`: a random Llama with a word-level tokenizer, and its rows."""
from __future__ import annotations

import json
from pathlib import Path

from ..io import atomic_write_text


TINY_WORDS = ("apple", "river", "stone", "cloud", "green", "music", "paper", "tiger", "lemon", "water", "north",
              "glass")


def tiny_rows() -> tuple[list[dict], list[dict]]:
    """(training rows, evaluation rows): "Repeat the word w ." with input v -> "w w w , then v ."; every
    7th (w, v) pair is held out for evaluation."""
    pairs = [(w, v) for w in TINY_WORDS for v in TINY_WORDS if w != v]
    train, held = [], []
    for k, (w, v) in enumerate(pairs):
        row = {"instruction": f"Repeat the word {w} .", "input": v, "output": f"{w} {w} {w} , then {v} ."}
        (held if k % 7 == 3 else train).append(row)
    return train, [{"id": f"e{i:02d}", **r} for i, r in enumerate(held)]


def build_tiny(directory: str | Path, layers: int = 8, seed: int = 0) -> Path:
    """A tiny random Llama with a word-level tokenizer over the Alpaca template and TINY_WORDS
    (`directory/model`), and its rows (`train.jsonl`, `eval.jsonl`). Built once (`done` marks it)."""
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from ..data import ALPACA_INTRO, ALPACA_INTRO_WITH_INPUT

    d = Path(directory)
    if (d / "done").is_file():
        return d
    train, held = tiny_rows()
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
    atomic_write_text(d / "train.jsonl", "".join(json.dumps(r) + "\n" for r in train))
    atomic_write_text(d / "eval.jsonl", "".join(json.dumps(r) + "\n" for r in held))
    atomic_write_text(d / "done", "")
    return d
