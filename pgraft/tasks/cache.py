"""A cache of pretrained task models, keyed by a hash of the config that produced them."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io import load_state


def cache_root(configured: Path | None) -> Path:
    if configured is not None:
        return Path(configured)
    return Path(os.environ.get("PGRAFT_CACHE", Path.home() / ".cache" / "pgraft"))


# Bump when a code change alters what a cached model means (its schedule, architecture, data).
CACHE_VERSION = 1


def config_key(payload: dict[str, Any]) -> str:
    blob = json.dumps({"cache_version": CACHE_VERSION, **payload}, sort_keys=True, default=str).encode()
    return hashlib.sha256(blob).hexdigest()[:12]


def entry_path(root: Path, task: str, kind: str, payload: dict[str, Any]) -> Path:
    return root / task / f"{kind}-{config_key(payload)}" / "weights.safetensors"


def load_entry(path: Path):
    """Load a cache entry; a corrupt one raises CheckpointError naming the file and the fix."""
    try:
        return load_state(path)
    except CheckpointError as exc:
        raise CheckpointError(f"cached model is unusable: {exc}. Rebuild it with `pgraft pretrain --force`.") from None
