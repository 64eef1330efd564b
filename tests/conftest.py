"""Seeded tiny random models built in memory (no network): OPT (pre-LN and the 350m post-LN layout
with embedding projections), Llama (grouped KV heads), GPT-2; and `make_tiny`, a tiny Llama saved to a
directory with a word-level tokenizer and a 7-row JSONL data set, for tests that run the command line."""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

# Tiny models run several times faster on one thread than on a pool, and a pool spin-waits against
# any other process on a 2-core machine; a test that needs more sets it itself.
torch.set_num_threads(int(os.environ.get("ADALAS_TEST_THREADS", "1")))

VOCAB = 96
LAYERS = 4


def tiny_opt(post_ln: bool = False):
    from transformers import OPTConfig, OPTForCausalLM
    cfg = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, ffn_dim=64, num_attention_heads=4,
                    max_position_embeddings=128, do_layer_norm_before=not post_ln,
                    word_embed_proj_dim=16 if post_ln else 32, pad_token_id=1, bos_token_id=2, eos_token_id=2,
                    dropout=0.0)
    torch.manual_seed(0)
    return OPTForCausalLM(cfg).eval()


def tiny_llama():
    from transformers import LlamaConfig, LlamaForCausalLM
    cfg = LlamaConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=LAYERS, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    return LlamaForCausalLM(cfg).eval()


def tiny_gpt2():
    from transformers import GPT2Config, GPT2LMHeadModel
    cfg = GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=LAYERS, n_head=4, n_positions=128, bos_token_id=1,
                     eos_token_id=2, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg).eval()


BUILDERS = {"opt": tiny_opt, "opt350": lambda: tiny_opt(post_ln=True), "llama": tiny_llama, "gpt2": tiny_gpt2}


@pytest.fixture(params=sorted(BUILDERS))
def family_name(request):
    return request.param


@pytest.fixture
def hf_model(family_name):
    return BUILDERS[family_name]()


def batch(B: int = 2, T: int = 7, pad: bool = True, seed: int = 1):
    """Token ids in [3, VOCAB) and a left-padding mask (row 0 padded by 2 when pad)."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(3, VOCAB, (B, T), generator=g)
    mask = torch.ones(B, T, dtype=torch.long)
    if pad and B > 1:
        mask[0, :2] = 0
        ids[0, :2] = 0
    return ids, mask


def positions(mask):
    return (mask.cumsum(-1) - 1).clamp(min=0)


# --- a tiny model directory and data file, for the command line ----------------------------------

ROWS = [{"id": f"r{i}", "instruction": ins, "input": inp, "output": out} for i, (ins, inp, out) in enumerate([
    ("Name a color.", "", "Red is a color."),
    ("Summarize the text.", "The cat sat on the mat all day long and did not move.", "A cat sat on a mat."),
    ("What is two plus two?", "", "Two plus two is four."),
    ("Rewrite politely.", "Give me the report now.", "Could you please send me the report?"),
    ("List three fruits.", "", "Apple, banana, cherry."),
    ("Classify the sentiment.", "I love this movie so much!", "The sentiment is positive."),
    ("Extract the city.", "She moved to Paris in 2010.", "Paris."),
])]
TEMPLATE_WORDS = ("Below is an instruction that describes a task, paired with an input that provides further "
                  "context. Write a response that appropriately completes the request. ### Instruction: Input: "
                  "Response:")


def make_tiny(directory: Path, max_positions: int = 256, layers: int = LAYERS) -> tuple[Path, Path]:
    """(model directory, data file): a tiny Llama (`layers` layers, context `max_positions`) with a
    word-level tokenizer over ROWS' words, and ROWS as JSONL. EOS is made likely so rows end at
    different lengths."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    text = " ".join([TEMPLATE_WORDS] + [" ".join(r.values()) for r in ROWS])
    words = sorted(set(re.findall(r"\w+|[^\w\s]", text)))
    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.decoder = decoders.WordPiece()
    t = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>")
    cfg = LlamaConfig(vocab_size=len(t), hidden_size=32, num_hidden_layers=layers, intermediate_size=64,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      pad_token_id=0, bos_token_id=1, eos_token_id=2)
    torch.manual_seed(0)
    hf = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():
        hf.lm_head.weight[2] *= 2.0  # EOS often enough that rows end at different lengths
    directory.mkdir(parents=True, exist_ok=True)
    hf.save_pretrained(directory)
    t.save_pretrained(directory)
    data = directory / "data.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in ROWS))
    return directory, data


@pytest.fixture(scope="session")
def tiny_files(tmp_path_factory) -> tuple[Path, Path]:
    """`make_tiny` once per session: (model directory, data file). Read-only: copy before changing."""
    return make_tiny(tmp_path_factory.mktemp("tiny"))
