"""One `adalas adapt` run: its settings, its directory, the record (`adapt.json`) and the base model,
loaded once; what every stage is handed. `Checked` is what the checks before the run learned.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

from ..config import DepthConfig
from ..io import atomic_write_json
from .settings import RECORD_FILE, AdaptSettings


@dataclass
class Checked:
    """What the checks learned: the model's config and layer count, the file hashes."""

    config: Any
    num_layers: int
    data_sha256: str | None
    tests_sha256: tuple[str, ...]


def read_record(out: Path) -> dict | None:
    path = out / RECORD_FILE
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise ValueError(f"--out: {str(path)!r} is not valid JSON; pass another directory or remove it") from None
    if not isinstance(record, dict) or not isinstance(record.get("stages"), dict):
        raise ValueError(f"--out: {str(path)!r} is not an adalas adapt record; pass another directory")
    return record


class Run:
    """One `adalas adapt` run: its settings, its directory, the record, and the base model (loaded once,
    on first use, at full depth)."""

    def __init__(self, s: AdaptSettings, checked: Checked):
        from ..hub import model_sha256

        self.s = s
        self.checked = checked
        self.out = Path(s.out)
        self.num_layers = checked.num_layers
        self.model_sha256 = model_sha256(s.model)
        self.record: dict = {}
        self._model = None
        self._tokenizer = None

    def path(self, relative: str) -> Path:
        return self.out / relative

    def model(self):
        if self._model is None:
            from ..model import AdalasForCausalLM
            self._model = AdalasForCausalLM.from_pretrained(self.s.model, dtype=self.s.dtype, device=self.s.device,
                                                            allow_pickle=self.s.allow_pickle,
                                                            trust_remote_code=self.s.trust_remote_code)
        return self._model

    def tokenizer(self):
        if self._tokenizer is None:
            from ..hub import load_tokenizer
            self._tokenizer = load_tokenizer(self.s.model, trust_remote_code=self.s.trust_remote_code)
        return self._tokenizer

    def outputs(self, stage: str) -> dict:
        return self.record["stages"][stage]["outputs"]

    def identity(self) -> dict:
        """What every stage's results depend on: the model's name and weights, the dtype and device type."""
        return {"model": self.s.model, "model_sha256": self.model_sha256, "dtype": self.s.dtype,
                "device": self.s.device.split(":")[0]}

    def depth(self, skip: Sequence[int]) -> DepthConfig:
        return DepthConfig(mode="static_skip", skip_layers=sorted(skip), skip_prompt=self.s.skip_prompt)

    def save(self) -> None:
        atomic_write_json(self.out / RECORD_FILE, self.record)
