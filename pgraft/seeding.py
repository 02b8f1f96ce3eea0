"""Seeds derived from named parts, so every random stream of a run is reproducible and distinct."""

from __future__ import annotations

import hashlib

import torch


def derive_seed(*parts: object) -> int:
    """A 63-bit seed from (seed, purpose, round, ...): stable across runs and platforms."""
    digest = hashlib.sha256(repr(parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


def generator(*parts: object, device: torch.device | str | None = None) -> torch.Generator:
    """A generator seeded by ``parts`` on ``device`` (default the CPU). Draws on a CUDA generator
    stay on the GPU; its stream differs from the CPU's for the same seed."""
    return torch.Generator(device=device or "cpu").manual_seed(derive_seed(*parts))
