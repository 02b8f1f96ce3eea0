"""Reward evaluation that overlaps sampling: each finished rollout chunk is decoded and scored on a
worker thread while the sampler draws the next chunk (torch kernels release the GIL, so the two
run concurrently; on a GPU the reward model's kernels queue beside the sampler's)."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor
from typing import Callable

import torch

from ..rewards.base import RewardFn, score
from .phases import phase


def _worker_init(gpu: int | None) -> None:
    torch.set_num_threads(1)
    if gpu is not None:
        torch.cuda.set_device(gpu)


class OverlappedScorer:
    """``submit`` chunks in order, then ``results()``: (images, rewards) of every chunk, concatenated."""

    def __init__(self, reward_fn: RewardFn, decode: Callable[[torch.Tensor], torch.Tensor]):
        self.reward_fn, self.decode = reward_fn, decode
        # One intra-op thread for the scorer (torch's thread count is per calling thread): with
        # torch's default it would start a second team of busy-waiting threads beside the
        # sampler's, and on 2 cores the rollout took 1.39x as long as sampling and then scoring
        # (benches/bench_overlap.py, docs/kernels.md "A busy core").
        # The worker also makes the caller's GPU its current device: CUDA's current device is per
        # thread, so a reward model that allocates on "cuda" would land on GPU 0 from every rank.
        gpu = torch.cuda.current_device() if torch.cuda.is_available() else None
        self._pool = ThreadPoolExecutor(
            max_workers=1, thread_name_prefix="pgraft-reward", initializer=_worker_init, initargs=(gpu,)
        )
        self._futures: list[Future] = []

    def _score(self, x0: torch.Tensor, cond: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with phase("reward"):
            images = self.decode(x0)
            return images, score(self.reward_fn, images, cond)

    def submit(self, x0: torch.Tensor, cond: torch.Tensor) -> None:
        self._futures.append(self._pool.submit(self._score, x0, cond))

    def results(self, sample_shape: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Wait for every chunk; a reward that raised re-raises here."""
        try:
            parts = [f.result() for f in self._futures]
        finally:
            self._pool.shutdown(wait=True, cancel_futures=True)
        if not parts:
            return torch.empty((0, *sample_shape)), torch.empty(0)
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
