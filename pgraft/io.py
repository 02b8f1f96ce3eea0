"""Atomic file writes and checksummed safetensors: nothing on disk is ever half-written.

Every writer goes to a temporary name in the destination folder and renames it into place
(rename is atomic on POSIX), so a kill leaves either the old file or the new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from .errors import CheckpointError


def atomic_write(path: str | Path, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temporary file onto ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        write(tmp_path)
        with open(tmp_path, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp_path, path)
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise
    return path


def write_text(path: str | Path, text: str) -> Path:
    return atomic_write(path, lambda p: p.write_text(text))


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def append_jsonl(path: str | Path, row: dict) -> None:
    """Append one JSON line; a line is written whole with one write call."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")


def sha256_file(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_state(path: str | Path, state: dict[str, torch.Tensor], meta: dict | None = None) -> Path:
    """Save a state dict as safetensors plus ``<path>.json`` holding its sha256 and metadata.

    The checksum file is written last, so its presence marks a complete save.
    """
    path = Path(path)
    tensors = {k: v.detach().cpu().contiguous() for k, v in state.items()}
    atomic_write(path, lambda p: save_file(tensors, str(p)))
    write_json(_manifest(path), {"sha256": sha256_file(path), "meta": meta or {}})
    return path


def load_state(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Load what :func:`save_state` wrote, verifying the checksum (no pickle on this path)."""
    path = Path(path)
    manifest = _manifest(path)
    if not path.exists() or not manifest.exists():
        raise CheckpointError(f"{path}: missing or incomplete (no {manifest.name} beside it)")
    try:
        info = json.loads(manifest.read_text())
        expected = info["sha256"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise CheckpointError(f"{manifest}: unreadable manifest ({exc})") from exc
    if sha256_file(path) != expected:
        raise CheckpointError(f"{path}: checksum mismatch, the file is corrupt; delete it (or pass --force) to rebuild")
    try:
        return load_file(str(path)), info.get("meta", {})
    except Exception as exc:  # safetensors raises its own error types
        raise CheckpointError(f"{path}: not a valid safetensors file ({exc})") from exc


def _manifest(path: Path) -> Path:
    return path.with_name(path.name + ".json")
