"""Checkpoints of a whole run, written atomically, verified before use (docs/distributed.md).

A checkpoint is a folder ``<root>/ckpt-r<round>-s<step>/`` holding
  ds/               the DeepSpeed engine's own state (model, optimizer, LR scheduler; per rank)
  rng.rank<r>.safetensors   every random state of rank r (the trainer's stream, torch's global RNG)
  buffer.pgb        the trajectory buffer (replicated on every rank, so written once)
  state.json        the loop's counters, its metrics so far, the batch stream's position
  config.yaml       the resolved config of the run
  MANIFEST.json     the sha256 of every file above, written last
Every rank writes into ``.tmp-<name>/``; once all are done rank 0 writes the manifest, renames the
folder into place (atomic) and then points ``latest`` at it. A folder that fails verification
(missing file, checksum mismatch, no manifest) is skipped in favour of the previous one. DeepSpeed
reads its files with torch.load (pickle): they are only read after their checksums match, so we
never unpickle a file we did not write.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from ..buffer import TrajectoryBuffer
from ..errors import CheckpointError
from ..io import sha256_file, write_json, write_text
from .distributed import barrier, broadcast_object, rank, world_size

log = logging.getLogger("pgraft")

MANIFEST = "MANIFEST.json"
PREFIX = "ckpt-"


def checkpoint_name(round_: int, step: int) -> str:
    """Names sort in run order: round, then optimizer steps done in that round."""
    return f"{PREFIX}r{round_:05d}-s{step:08d}"


def rng_state(trainer_generator: torch.Generator) -> dict[str, torch.Tensor]:
    state = {"trainer": trainer_generator.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def restore_rng(state: dict[str, torch.Tensor], trainer_generator: torch.Generator) -> None:
    trainer_generator.set_state(state["trainer"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def verify(path: Path) -> str | None:
    """None when ``path`` is a complete, intact checkpoint; otherwise what is wrong with it."""
    manifest = path / MANIFEST
    if not manifest.is_file():
        return "no manifest (incomplete)"
    try:
        files = json.loads(manifest.read_text())["files"]
    except (json.JSONDecodeError, KeyError, TypeError) as exc:
        return f"unreadable manifest ({exc})"
    for rel, digest in files.items():
        f = path / rel
        if not f.is_file():
            return f"missing {rel}"
        if sha256_file(f) != digest:
            return f"checksum mismatch in {rel}"
    return None


class Checkpointer:
    """Saves and finds the checkpoints of one run under ``root`` (a folder every rank can reach)."""

    def __init__(self, root: str | Path, keep_last: int = 2):
        self.root = Path(root)
        self.keep_last = keep_last

    def save(
        self,
        name: str,
        *,
        engine,
        state: dict[str, Any],
        buffer: TrajectoryBuffer,
        rng: dict[str, torch.Tensor],
        config_yaml: str,
    ) -> Path:
        """Collective: every rank calls it with its own engine and random states."""
        tmp, final = self.root / f".tmp-{name}", self.root / name
        if rank() == 0:
            shutil.rmtree(tmp, ignore_errors=True)  # left by a run killed while saving
            tmp.mkdir(parents=True)
        barrier()
        engine.save_checkpoint(str(tmp / "ds"), tag="state")
        save_file({k: v.contiguous() for k, v in rng.items()}, str(tmp / f"rng.rank{rank()}.safetensors"))
        if rank() == 0:
            buffer.save(tmp / "buffer.pgb")
            write_json(tmp / "state.json", {**state, "world_size": world_size()})
            write_text(tmp / "config.yaml", config_yaml)
        barrier()
        if rank() == 0:
            files = {str(f.relative_to(tmp)): sha256_file(f) for f in sorted(tmp.rglob("*")) if f.is_file()}
            write_json(tmp / MANIFEST, {"files": files})
            shutil.rmtree(final, ignore_errors=True)  # an unverifiable leftover of the same name
            tmp.rename(final)
            write_text(self.root / "latest", name + "\n")
            self._prune()
        barrier()
        return final

    def find(self) -> Path | None:
        """The newest checkpoint that verifies (rank 0 decides, every rank gets the answer)."""
        chosen = None
        if rank() == 0 and self.root.is_dir():
            latest = self._latest_name()
            for path in sorted(self.root.glob(f"{PREFIX}*"), reverse=True):
                problem = verify(path)
                if problem is None:
                    chosen = str(path)
                    if path.name != latest:
                        log.warning("checkpoint pointer 'latest' names %s; resuming from %s", latest, path.name)
                    break
                log.warning("skipping checkpoint %s: %s", path.name, problem)
        chosen = broadcast_object(chosen)
        return None if chosen is None else Path(chosen)

    def load(self, path: Path, engine) -> tuple[dict[str, Any], dict[str, torch.Tensor], TrajectoryBuffer]:
        """Collective: restore the engine; return the loop state, this rank's RNG states, the buffer."""
        state = json.loads((path / "state.json").read_text())
        if state.get("world_size") != world_size():
            raise CheckpointError(
                f"{path} was written by {state.get('world_size')} ranks; this run has {world_size()}. "
                "Resume with the same number of ranks"
            )
        rng_file = path / f"rng.rank{rank()}.safetensors"
        load_path, _ = engine.load_checkpoint(
            str(path / "ds"), tag="state", load_optimizer_states=True, load_lr_scheduler_states=True
        )
        if load_path is None:
            raise CheckpointError(f"DeepSpeed could not load the engine state in {path / 'ds'}")
        return state, load_file(str(rng_file)), TrajectoryBuffer.load(path / "buffer.pgb")

    def _latest_name(self) -> str | None:
        pointer = self.root / "latest"
        return pointer.read_text().strip() if pointer.is_file() else None

    def _prune(self) -> None:
        complete = sorted(p for p in self.root.glob(f"{PREFIX}*") if (p / MANIFEST).is_file())
        for old in complete[: -self.keep_last]:
            shutil.rmtree(old, ignore_errors=True)
