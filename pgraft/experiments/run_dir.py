"""A run folder (DESIGN.md): config.yaml, metrics.jsonl, results.json, PNGs, TensorBoard events,
model weights (safetensors). Every file is written atomically."""

from __future__ import annotations

import math
from pathlib import Path

from pydantic import BaseModel

from ..config import to_yaml
from ..io import append_jsonl, save_state, write_json, write_text


class RunDir:
    def __init__(self, path: str | Path, cfg: BaseModel):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", to_yaml(cfg))
        (self.path / "metrics.jsonl").unlink(missing_ok=True)
        self._tb = None

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"))
        return self._tb

    def log(self, scope: str, step: int, values: dict) -> None:
        append_jsonl(self.path / "metrics.jsonl", {"scope": scope, "step": step, **values})
        tb = self.tensorboard()
        for k, v in values.items():
            if isinstance(v, (int, float)) and math.isfinite(v):
                tb.add_scalar(f"{scope}/{k}", v, step)

    def save_model(self, name: str, model, meta: dict) -> Path:
        return save_state(self.path / "models" / f"{name}.safetensors", model.state_dict(), meta)

    def results(self, obj: dict) -> Path:
        return write_json(self.path / "results.json", obj)

    def close(self) -> None:
        if self._tb is not None:
            self._tb.close()
