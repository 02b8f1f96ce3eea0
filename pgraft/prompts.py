"""Prompt sets: a text file (one prompt a line; blank lines and lines starting with # skipped) or
JSON lines ({"prompt": "...", any metadata}). Each prompt is one selection group; a seeded
fraction (or a second file) is held out for evaluation."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import ConfigError


@dataclass(frozen=True)
class Prompt:
    text: str
    meta: dict = field(default_factory=dict)


def load_prompts(path: str | Path) -> list[Prompt]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"prompt file {path} does not exist")
    prompts = []
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.strip()
        if not line or (path.suffix != ".jsonl" and line.startswith("#")):
            continue
        if path.suffix == ".jsonl":
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise ConfigError(f"{path}:{n}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict) or not isinstance(row.get("prompt"), str) or not row["prompt"].strip():
                raise ConfigError(f'{path}:{n}: each line must be an object with a non-empty "prompt" string')
            prompts.append(Prompt(row["prompt"].strip(), {k: v for k, v in row.items() if k != "prompt"}))
        else:
            prompts.append(Prompt(line))
    if not prompts:
        raise ConfigError(f"prompt file {path} holds no prompt")
    return prompts


def split_prompts(prompts: list[Prompt], held_out_fraction: float, seed: int) -> tuple[list[Prompt], list[Prompt]]:
    """A seeded split into (train, held-out); at least one prompt on each side."""
    if len(prompts) < 2:
        raise ConfigError("holding prompts out for evaluation needs at least 2 prompts (or give eval_prompts)")
    order = torch.randperm(len(prompts), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = min(max(1, round(held_out_fraction * len(prompts))), len(prompts) - 1)
    held = sorted(order[:n_eval])
    return [p for i, p in enumerate(prompts) if i not in set(held)], [prompts[i] for i in held]
