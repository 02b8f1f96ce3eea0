"""Process-group set-up, the local device, and the watchdog; the collectives are in :mod:`pgraft.collectives`.

Every run is a DeepSpeed run, a single process included (gloo on the CPU, NCCL on GPUs). Under a
launcher (``deepspeed`` / ``torchrun``) the environment names rank and world size; a plain
``python`` or ``pgraft`` call becomes a world of one on a free loopback port.

Faults: every collective carries the configured timeout (a rank whose main thread hangs makes the
others fail there), and :class:`Watchdog` turns a dead or stopped peer into a clear message and an
exit within the same timeout, wherever the survivors are waiting.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import socket
import sys
import threading
import time
from pathlib import Path

import torch
import torch.distributed as dist

from ..collectives import (  # noqa: F401  (the collectives are part of this module's API)
    all_gather_rows,
    barrier,
    broadcast_object,
    comm_device,
    is_initialized,
    rank,
    shard_range,
    shard_slice,
    world_size,
)
from ..errors import DistributedError

log = logging.getLogger("pgraft")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def ensure_distributed(timeout_s: float | None = None) -> None:
    """Initialise torch.distributed through DeepSpeed once per process (idempotent)."""
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if is_initialized():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(_free_port()))
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ["LOCAL_RANK"]))
    kwargs = {} if timeout_s is None else {"timeout": datetime.timedelta(seconds=timeout_s)}
    deepspeed.init_distributed(dist_backend=backend, verbose=False, **kwargs)
    _unlink_shm_segment()


def shm_segment() -> Path:
    """The /dev/shm file of DeepSpeed's CPU all-reduce workspace for this rank (about 66 MB)."""
    addr, port = os.environ.get("MASTER_ADDR"), os.environ.get("MASTER_PORT")
    return Path("/dev/shm") / f"deepspeed_allreduce_buffer_{os.getuid()}_{addr}_{port}_{rank()}"


def _unlink_shm_segment() -> None:
    """Removes this rank's shared-memory name as soon as every rank has mapped every segment.

    DeepSpeed's CPU backend creates one segment per rank and never unlinks it, so each multi-rank
    run left 66 MB per rank in /dev/shm (RAM) for good: a day of test runs held 13 GB. The mappings
    stay valid after the unlink, and unlinking right after set-up frees the memory even when a rank
    is killed later. Every rank has a segment or none (DeepSpeed uses them only when all ranks
    are local), so either all ranks enter the barrier or none does.
    """
    mine = shm_segment()
    if not mine.exists():
        return
    dist.barrier()  # every rank has opened its peers' segments inside init_distributed
    with contextlib.suppress(FileNotFoundError):
        mine.unlink()


def local_device() -> torch.device:
    """This process's compute device, with its index: its local rank's GPU, or the CPU.

    A bare ``"cuda"`` means whichever GPU is current in the calling thread, which is GPU 0 in any
    thread that never set one (the reward worker's, for example); the engine passes this instead.
    """
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", torch.cuda.current_device())))
    return torch.device("cpu")


class Watchdog:
    """Exit with a clear message when a peer rank stops making progress for ``timeout_s``.

    Each rank's daemon thread bumps a counter in the process group's key-value store every
    ``timeout_s / 10`` seconds and watches the others' counters; a counter that has not moved for
    ``timeout_s`` (the rank died or was stopped), or a store that cannot be reached (rank 0 died),
    ends this process with exit code 3. A rank whose main thread hangs while its process lives is
    caught by the collectives' own timeout instead.
    """

    EXIT_CODE = 3
    DONE = "done"

    def __init__(self, timeout_s: float):
        self.timeout_s = timeout_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "Watchdog":
        if world_size() > 1:
            self._store = dist.distributed_c10d._get_default_store()
            self._rank, self._world = rank(), world_size()
            self._thread = threading.Thread(target=self._run, name="pgraft-watchdog", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        """Say this rank finished (peers stop watching it), then end the thread."""
        self._stop.set()
        if self._thread is not None:
            try:
                self._store.set(f"pgraft/heartbeat/{self._rank}", self.DONE)
            except Exception:  # rank 0 already gone after the final barrier: nothing to tell
                pass
            self._thread.join(timeout=self.timeout_s)

    def __enter__(self) -> "Watchdog":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def _run(self) -> None:
        period = max(self.timeout_s / 10, 0.05)
        last_value = {r: None for r in range(self._world) if r != self._rank}
        last_change = {r: time.monotonic() for r in last_value}
        beat = 0
        while not self._stop.wait(period):
            beat += 1
            try:
                self._store.set(f"pgraft/heartbeat/{self._rank}", str(beat))
                for r in last_value:
                    key = f"pgraft/heartbeat/{r}"
                    value = self._store.get(key) if self._store.check([key]) else None
                    if value == self.DONE.encode():
                        continue
                    if value != last_value[r]:
                        last_value[r], last_change[r] = value, time.monotonic()
                    elif time.monotonic() - last_change[r] > self.timeout_s:
                        self._abort(f"rank {r} made no progress for {self.timeout_s:.0f} s (it died or hung)")
            except Exception as exc:  # the store lives in rank 0: it is gone
                if self._stop.wait(1.0):  # ... or rank 0 finished just before this rank did
                    return
                self._abort(f"lost contact with rank 0's store ({type(exc).__name__}: {exc})")

    def _abort(self, why: str) -> None:
        msg = f"pgraft: error: rank {self._rank}: {why}; exiting (distributed.timeout_s={self.timeout_s:g})"
        print(msg, file=sys.stderr, flush=True)
        os._exit(self.EXIT_CODE)


def describe_collective_failure(exc: BaseException) -> DistributedError:
    """A collective that raised: name the likely cause instead of gloo's/NCCL's internals."""
    return DistributedError(
        f"rank {rank()}: a collective operation failed ({type(exc).__name__}: {str(exc).splitlines()[0]}); "
        "another rank died or hung (see distributed.timeout_s)"
    )
