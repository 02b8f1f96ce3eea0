"""A run folder: config.yaml, metrics.jsonl, results.json, PNGs, TensorBoard events,
model weights (safetensors). Every file is written atomically."""

from __future__ import annotations

import json
import math
from pathlib import Path

from pydantic import BaseModel

from ..config import to_yaml
from ..io import append_jsonl, save_state, write_json, write_text


class RunDir:
    """A fresh run folder; or, with ``metrics`` (a resumed run), metrics.jsonl rewritten to exactly
    the rows of its checkpoint and TensorBoard events from ``purge_step`` on dropped."""

    def __init__(self, path: str | Path, cfg: BaseModel, *, metrics: list[dict] | None = None, purge_step=None):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        write_text(self.path / "config.yaml", to_yaml(cfg))
        write_text(self.path / "metrics.jsonl", "".join(json.dumps(row) + "\n" for row in metrics or []))
        self._tb = None
        self._purge_step = purge_step

    def tensorboard(self):
        if self._tb is None:
            from torch.utils.tensorboard import SummaryWriter

            self._tb = SummaryWriter(str(self.path / "tb"), purge_step=self._purge_step)
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
