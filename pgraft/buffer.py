"""The trajectory buffer: accepted rows (x_{N_I}, x_0, condition, reward, round).

Rows are stored per field in contiguous tensors, grouped by round; ``keep_rounds`` bounds how many
recent rounds are kept (RAFT trains on the latest round only: keep_rounds=1).
"""

from __future__ import annotations

import torch

from .errors import ShapeError

FIELDS = ("x_ni", "x0", "cond", "reward")


class TrajectoryBuffer:
    def __init__(self, keep_rounds: int = 1):
        if keep_rounds < 1:
            raise ValueError(f"keep_rounds must be >= 1, got {keep_rounds}")
        self.keep_rounds = keep_rounds
        self._rounds: list[tuple[int, dict[str, torch.Tensor]]] = []

    def add(self, round_idx: int, **rows: torch.Tensor) -> None:
        if set(rows) != set(FIELDS):
            raise ShapeError(f"buffer rows need exactly the fields {FIELDS}, got {sorted(rows)}")
        n = rows["reward"].shape[0]
        for name, value in rows.items():
            if value.shape[0] != n:
                raise ShapeError(f"field {name} has {value.shape[0]} rows, reward has {n}")
        self._rounds.append((round_idx, {k: v.detach().cpu().contiguous() for k, v in rows.items()}))
        self._rounds = self._rounds[-self.keep_rounds :]

    def __len__(self) -> int:
        return sum(int(r["reward"].shape[0]) for _, r in self._rounds)

    def field(self, name: str) -> torch.Tensor:
        if name not in FIELDS:
            raise KeyError(f"unknown buffer field {name!r}; fields are {FIELDS}")
        if not self._rounds:
            raise ShapeError("the buffer is empty")
        return torch.cat([r[name] for _, r in self._rounds])
