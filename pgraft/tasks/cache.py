"""Pretrained task models, keyed by a hash of the config that produced them.

Two places hold them: the user's cache (``$PGRAFT_CACHE``, default ``~/.cache/pgraft``), where
``pgraft pretrain`` trains them, and the package itself (``pgraft/tasks/pretrained/``), which ships
the default bases and judges so that a newcomer trains nothing. Both use the same layout,
``<task>/<kind>-<config hash>/weights.safetensors`` beside a manifest that records the sha256 and
the config, and both are read through the same verified loader.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from typing import Any

from ..errors import CheckpointError
from ..io import atomic_write, load_state

# The weights shipped inside the package (written by `pgraft pretrain --ship`).
SHIPPED_ROOT = Path(__file__).with_name("pretrained")


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


def find_entry(root: Path, task: str, kind: str, payload: dict[str, Any], force: bool = False) -> tuple[Path, bool]:
    """(path, present): the cache's entry if it exists, else the shipped one, else the cache's
    path to train into. ``force``: always the cache's path, marked absent (retrain into the cache).
    """
    cached = entry_path(root, task, kind, payload)
    if force or cached.exists():
        return cached, not force
    shipped = entry_path(SHIPPED_ROOT, task, kind, payload)
    if shipped.exists():
        return shipped, True
    return cached, False


def ship_entry(path: Path, task: str, kind: str, payload: dict[str, Any]) -> Path:
    """Copy a verified cache entry (weights + manifest) into the package's shipped folder."""
    load_entry(path)  # verify before shipping
    dest = entry_path(SHIPPED_ROOT, task, kind, payload)
    if dest.resolve() == path.resolve():
        return dest  # already the shipped copy
    for src in (path, path.with_name(path.name + ".json")):  # the manifest last: it marks a whole copy
        atomic_write(dest.with_name(src.name), lambda tmp, src=src: shutil.copyfile(src, tmp))
    return dest


def load_entry(path: Path):
    """Load an entry; a corrupt one raises CheckpointError naming the file and the fix."""
    try:
        return load_state(path)
    except CheckpointError as exc:
        fix = "Rebuild it with `pgraft pretrain --force`."
        raise CheckpointError(f"pretrained model is unusable: {exc}. {fix}") from None
