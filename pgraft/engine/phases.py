"""Where a round's time goes: named phases of rollout → reward → select → buffer → train.

The engine marks each phase with :func:`phase`. Outside a :class:`PhaseTimer` a mark only opens a
``torch.profiler.record_function`` range (``pgraft.<name>``: visible in a torch.profiler trace,
and near free without one). Inside ``with PhaseTimer() as timer:`` every mark also adds its wall
time to ``timer.seconds[name]`` (from any thread: the reward is scored on a worker), which is how
benches/bench_round.py splits a round into phases.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import defaultdict

import torch

PHASES = (
    "sample.forward",  # the denoiser's forwards while sampling (both CFG branches)
    "sample.step",  # the sampler's arithmetic: the denoising step and its noise draw
    "reward",  # decoding and scoring the samples
    "select",  # the acceptance rule
    "buffer",  # storing accepted rows and drawing minibatches from them
    "train.forward",  # the loss (the trained network's forward)
    "train.backward",
    "train.optimizer",  # clipping and the optimizer step
)

_active: "PhaseTimer | None" = None


class PhaseTimer:
    """Sums wall time per phase while active. ``sync``: synchronise a CUDA device at each mark's
    ends, so a phase is charged for its own kernels (on the CPU it is not needed)."""

    def __init__(self, sync: torch.device | None = None):
        self.seconds: dict[str, float] = defaultdict(float)
        self.sync = sync if sync is not None and sync.type == "cuda" else None
        self._lock = threading.Lock()

    def add(self, name: str, seconds: float) -> None:
        with self._lock:
            self.seconds[name] += seconds

    def __enter__(self) -> "PhaseTimer":
        global _active
        if _active is not None:
            raise RuntimeError("a PhaseTimer is already active")
        _active = self
        return self

    def __exit__(self, *exc) -> None:
        global _active
        _active = None


@contextlib.contextmanager
def phase(name: str):
    timer = _active
    with torch.profiler.record_function(f"pgraft.{name}"):
        if timer is None:
            yield
            return
        if timer.sync is not None:
            torch.cuda.synchronize(timer.sync)
        t0 = time.perf_counter()
        try:
            yield
        finally:
            if timer.sync is not None:
                torch.cuda.synchronize(timer.sync)
            timer.add(name, time.perf_counter() - t0)
