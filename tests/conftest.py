"""Seeded tiny random models built in memory (no network): OPT (pre-LN and the 350m post-LN layout
with embedding projections), Llama (grouped KV heads), GPT-2."""
from __future__ import annotations

import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

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
