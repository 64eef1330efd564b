"""Stage 5, `export`: a plain transformers checkpoint (adapter merged, skipped layers deleted, tokenizer)
with its model card, and a GGUF for llama.cpp with `--format gguf`.
"""
from __future__ import annotations

import os
from pathlib import Path

from ..io import atomic_write_text, file_sha256
from .evaluate_stage import adapted_hf
from .report import render_card, render_report
from .run import Run
from .settings import say


def source_gguf(model: str) -> Path | None:
    """The GGUF an embedded model was read from (its llama.cpp metadata is copied), else None."""
    from ..hub import EMBEDDED, embedded_gguf
    return embedded_gguf(model) if model in EMBEDDED else None


def export_inputs(run: Run) -> dict:
    s = run.s
    return {**run.identity(), "adapter_sha256": run.outputs("train")["adapter_sha256"],
            "skip": run.outputs("route")["skip"], "skip_prompt": s.skip_prompt,
            "evaluation_sha256": run.outputs("evaluate")["evaluation_sha256"], "format": s.format,
            "gguf_dtype": s.gguf_dtype if s.format == "gguf" else None}


def stage_export(run: Run, inputs: dict, resume: bool) -> dict:
    """The plain checkpoint (adapter merged, skipped layers deleted, tokenizer) with its card, and a GGUF."""
    from ..export import export_checkpoint

    s = run.s
    out = run.path("export")
    summary = export_checkpoint(adapted_hf(run), run.depth(inputs["skip"]), out, overwrite=True,
                                tokenizer=run.tokenizer())
    outputs = {"export": "export", "weights_sha256": file_sha256(out / "model.safetensors")
               if (out / "model.safetensors").is_file() else None, "kept_layers": summary["kept_layers"], "gguf": None}
    if s.format == "gguf":
        from ..gguf_export import write_gguf
        say(f"writing {out / 'model.gguf'} for llama.cpp ({s.gguf_dtype})")
        info = write_gguf(out, out / "model.gguf", dtype=s.gguf_dtype, source_gguf=source_gguf(s.model),
                          name=f"adalas {run.s.layers} of {run.num_layers} layers", progress=s.progress)
        outputs.update(gguf="export/model.gguf", gguf_sha256=file_sha256(out / "model.gguf"),
                       gguf_tensors=info["tensors"], gguf_metadata=info["metadata"])
    card = render_card(run, render_report(run, done_only=True))  # the stages finished so far
    atomic_write_text(out / "README.md", card)
    mask = os.umask(0)
    os.umask(mask)
    (out / "README.md").chmod(0o666 & ~mask)  # shareable like the rest of the export
    outputs["card"] = "export/README.md"
    return outputs
