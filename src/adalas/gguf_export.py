"""GGUF files for llama.cpp, written from a plain transformers checkpoint (what `adalas export` and
`adalas adapt` write).

Notable:
- Only models that llama.cpp runs as its `llama` architecture (`Family.gguf_tensors`: Llama proper,
  no biases, the default rotary embedding); `check_gguf` refuses the others in one line, from the
  config and tokenizer files alone, before any work.
- Key/value metadata comes from a source GGUF where the base model was read from one (the embedded
  model: its tokenizer, chat template, rope and norm settings as llama.cpp's converter wrote them),
  with `llama.block_count` set to the layers kept. Otherwise it is built from the config and the
  Hugging Face tokenizer, which must be a byte-level BPE with GPT-2's pre-tokenizer (the one whose
  llama.cpp name is certain): tokens, token types, merges, special ids, BOS rule and chat template.
  Any other tokenizer is refused (llama.cpp's own converter knows more of them).
- Tensors under llama.cpp's names, F16 (norms F32, as llama.cpp's converter writes them) or F32. The
  query and key rows are permuted from transformers' rotate-half layout to llama.cpp's interleaved
  rotation (`permute_qk`; `unpermute_qk` is its inverse, as transformers' GGUF loader applies it).
- Written to a temporary file beside the target, then renamed.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .families import family_for

GGUF_DTYPES = ("f16", "f32")
ARCH = "llama"
# llama.cpp's token types (gguf.TokenType): normal, control (special added tokens), user defined, unused
NORMAL, CONTROL, USER_DEFINED, UNUSED = 1, 3, 4, 5
SET_HERE = ("general.architecture", "general.file_type", "general.name", f"{ARCH}.block_count")


def permute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """Rows of a query or key projection (heads * Dh, D) from transformers' rotate-half layout (each
    head's first half, then its second) to llama.cpp's interleaved pairs.

    >>> permute_qk(np.arange(8)[:, None], 2)[:, 0].tolist()
    [0, 2, 1, 3, 4, 6, 5, 7]
    """
    rows = w.shape[0]
    return w.reshape(heads, 2, rows // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def unpermute_qk(w: np.ndarray, heads: int) -> np.ndarray:
    """The inverse of `permute_qk`.

    >>> unpermute_qk(permute_qk(np.arange(12)[:, None], 3), 3)[:, 0].tolist() == list(range(12))
    True
    """
    rows = w.shape[0]
    return w.reshape(heads, rows // heads // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


# ---------------------------------------------------------------------------------------------
# What can be written (checked before any work)

def _rope_type(config) -> str:
    params = getattr(config, "rope_parameters", None) or getattr(config, "rope_scaling", None) or {}
    return str(params.get("rope_type", params.get("type", "default"))) if isinstance(params, dict) else "default"


def _rope_theta(config) -> float:
    params = getattr(config, "rope_parameters", None) or {}
    theta = params.get("rope_theta") if isinstance(params, dict) else None
    return float(theta if theta is not None else getattr(config, "rope_theta", None) or 10000.0)


def check_gguf(config, tokenizer, source_gguf: str | os.PathLike | None = None) -> None:
    """ValueError (one line) unless a GGUF for llama.cpp can be written for this model: a Llama config
    (no biases, the default rotary embedding) and either a source GGUF or a byte-level BPE tokenizer
    (a Hugging Face tokenizer object; None: none)."""
    kind = getattr(config, "model_type", None)
    if kind != ARCH:
        raise ValueError(f"--format gguf: llama.cpp's {ARCH} layout is written for Llama models only; this model is "
                         f"{kind!r} (use --format hf, or llama.cpp's own convert_hf_to_gguf.py on the export)")
    if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
        raise ValueError("--format gguf: the model has attention or MLP biases, which llama.cpp's llama layout has "
                         "not; use --format hf")
    if _rope_type(config) != "default":
        raise ValueError(f"--format gguf: rotary scaling {_rope_type(config)!r} is not written here; use --format hf "
                         f"(and llama.cpp's convert_hf_to_gguf.py)")
    if source_gguf is None:
        _bpe_spec(tokenizer)


def _bpe_spec(tokenizer) -> dict:
    """The tokenizer's tokenizer.json document, when it is a byte-level BPE with GPT-2's pre-tokenizer
    (else ValueError)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError("--format gguf: no fast (tokenizer.json) tokenizer to build llama.cpp's tokenizer metadata "
                         "from; use --format hf")
    spec = json.loads(backend.to_str())
    model, pre = spec.get("model") or {}, spec.get("pre_tokenizer") or {}
    if model.get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise ValueError(f"--format gguf: the tokenizer is a {model.get('type')} model with a "
                         f"{pre.get('type')} pre-tokenizer; only byte-level BPE with GPT-2's pre-tokenizer is written "
                         f"here (use --format hf, and llama.cpp's convert_hf_to_gguf.py on the export)")
    return spec


# ---------------------------------------------------------------------------------------------
# Key/value metadata

def _copy_source_kv(writer, source: Path, config, name: str) -> None:
    """Every key of the source GGUF but those this writer sets, after checking that it describes the
    same model (widths, heads, vocabulary) as the checkpoint."""
    import gguf

    reader = gguf.GGUFReader(str(source))
    kv = {k: f for k, f in reader.fields.items() if not k.startswith("GGUF.")}
    expect = {f"{ARCH}.embedding_length": config.hidden_size,
              f"{ARCH}.attention.head_count": config.num_attention_heads,
              f"{ARCH}.attention.head_count_kv": config.num_key_value_heads,
              f"{ARCH}.feed_forward_length": config.intermediate_size}
    arch = kv.get("general.architecture")
    if arch is None or arch.contents() != ARCH:
        raise ValueError(f"gguf: the source {source.name} is not a {ARCH} GGUF")
    for key, value in expect.items():
        if key in kv and kv[key].contents() != value:
            raise ValueError(f"gguf: the source {source.name} has {key}={kv[key].contents()}, the checkpoint "
                             f"{value}: it is another model")
    for key, field in kv.items():
        if key in SET_HERE:
            continue
        main = field.types[0]
        if main == gguf.GGUFValueType.ARRAY:
            if len(field.types) != 2:
                raise ValueError(f"gguf: {key} in {source.name} is a nested array, which is not copied")
            writer.add_key_value(key, field.contents(), main, sub_type=field.types[1])
        else:
            writer.add_key_value(key, field.contents(), main)
    base = kv["general.name"].contents() if "general.name" in kv else source.stem
    writer.add_name(f"{base} ({name})")


def _config_kv(writer, config, name: str) -> None:
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    writer.add_name(name)
    writer.add_context_length(int(config.max_position_embeddings))
    writer.add_embedding_length(int(config.hidden_size))
    writer.add_feed_forward_length(int(config.intermediate_size))
    writer.add_head_count(int(heads))
    writer.add_head_count_kv(int(config.num_key_value_heads or heads))
    writer.add_layer_norm_rms_eps(float(config.rms_norm_eps))
    writer.add_rope_freq_base(_rope_theta(config))
    writer.add_rope_dimension_count(int(head_dim))
    if head_dim * heads != config.hidden_size:
        writer.add_key_length(int(head_dim))
        writer.add_value_length(int(head_dim))
    writer.add_vocab_size(int(config.vocab_size))


def _tokenizer_kv(writer, tok, vocab_size: int) -> None:
    """llama.cpp's `gpt2` tokenizer metadata from a byte-level BPE Hugging Face tokenizer."""
    spec = _bpe_spec(tok)
    by_id = {i: t for t, i in tok.get_vocab().items()}
    added = {a["id"]: a for a in spec.get("added_tokens", [])}
    n = max(vocab_size, max(by_id) + 1)
    tokens, types = [], []
    for i in range(n):
        if i not in by_id:
            tokens.append(f"[PAD{i}]")
            types.append(UNUSED)
            continue
        tokens.append(by_id[i])
        types.append(NORMAL if i not in added else CONTROL if added[i].get("special") else USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in spec["model"].get("merges", [])]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    for key, token_id in (("bos", tok.bos_token_id), ("eos", tok.eos_token_id), ("unknown", tok.unk_token_id),
                          ("padding", tok.pad_token_id)):
        if token_id is not None:
            writer.add_uint32(f"tokenizer.ggml.{key}_token_id", int(token_id))
    probe = tok("a").input_ids
    writer.add_add_bos_token(bool(probe) and tok.bos_token_id is not None and probe[0] == tok.bos_token_id)
    writer.add_add_eos_token(bool(probe) and tok.eos_token_id is not None and probe[-1] == tok.eos_token_id)
    if isinstance(getattr(tok, "chat_template", None), str):
        writer.add_chat_template(tok.chat_template)


# ---------------------------------------------------------------------------------------------
# The file

def gguf_arrays(hf, dtype: str = "f16") -> list[tuple[str, np.ndarray]]:
    """(llama.cpp name, array) per tensor of a Hugging Face Llama, Q/K rows permuted; 2-d weights in
    `dtype`, norms (1-d) in F32."""
    if dtype not in GGUF_DTYPES:
        raise ValueError(f"gguf dtype: must be one of {', '.join(GGUF_DTYPES)}, got {dtype!r}")
    tensors = family_for(hf).gguf_tensors()
    if tensors is None:
        raise ValueError(f"gguf: a {hf.config.model_type!r} model has no llama.cpp {ARCH} layout")
    out = []
    for name, weight, heads in tensors:
        a = weight.detach().to(torch.float32).cpu().numpy()
        if heads is not None:
            a = permute_qk(a, heads)
        if a.ndim > 1 and dtype == "f16":
            a = a.astype(np.float16)
        out.append((name, np.ascontiguousarray(a)))
    return out


def write_gguf(checkpoint: str | os.PathLike, out: str | os.PathLike, *, dtype: str = "f16",
               source_gguf: str | os.PathLike | None = None, name: str | None = None,
               progress: bool = False) -> dict[str, Any]:
    """Write the plain checkpoint directory `checkpoint` (config, weights, tokenizer) to `out` as a GGUF
    file for llama.cpp; returns a summary (`tensors`, `block_count`, `dtype`, `metadata` source)."""
    import gguf
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    checkpoint, out = Path(checkpoint), Path(out)
    config = AutoConfig.from_pretrained(str(checkpoint))
    tokenizer = None
    if source_gguf is None:
        try:
            tokenizer = AutoTokenizer.from_pretrained(str(checkpoint))
        except (OSError, ValueError):
            tokenizer = None
    check_gguf(config, tokenizer, source_gguf)
    hf = AutoModelForCausalLM.from_pretrained(str(checkpoint), dtype=torch.float32).eval()
    arrays = gguf_arrays(hf, dtype)
    name = name or checkpoint.name
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(dir=out.parent, prefix=f".{out.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        writer = gguf.GGUFWriter(str(tmp), ARCH)
        if source_gguf is not None:
            _copy_source_kv(writer, Path(source_gguf), config, name)
        else:
            _config_kv(writer, config, name)
            _tokenizer_kv(writer, tokenizer, int(config.vocab_size))
        writer.add_block_count(int(config.num_hidden_layers))
        writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)
        for tensor_name, array in arrays:
            writer.add_tensor(tensor_name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file(progress=progress)
        writer.close()
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return {"path": str(out), "tensors": len(arrays), "block_count": int(config.num_hidden_layers), "dtype": dtype,
            "metadata": "source GGUF " + Path(source_gguf).name if source_gguf is not None else "config and tokenizer"}


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
