"""The few collectives the engine needs, and how a world of ranks splits its work.

Every helper works in a world of one (no process group: identities) and with ranks that hold no
rows: a rank whose share of a round is empty still takes part in every collective
(tests/test_empty_shards.py). The buffer, the engine and the experiments use these; the process
group itself is set up by :mod:`pgraft.engine.distributed`.
"""

from __future__ import annotations

import math
from typing import Any

import torch
import torch.distributed as dist


def is_initialized() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    return dist.get_world_size() if is_initialized() else 1


def comm_device() -> torch.device:
    """Where collective tensors live: the current GPU under NCCL, the CPU under gloo."""
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """``obj`` of rank ``src`` on every rank (small Python objects: paths, decisions)."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=comm_device())
    return box[0]


def all_gather_rows(t: torch.Tensor) -> torch.Tensor:
    """Concatenate every rank's ``t`` ([n_r, ...], n_r may differ) along dim 0, in rank order.

    Any dtype: rows travel as bytes, padded to the longest rank's count.
    """
    if world_size() == 1:
        return t
    device = comm_device()
    row_shape, dtype = t.shape[1:], t.dtype
    row_bytes = math.prod(row_shape) * t.element_size()  # explicit: a rank may hold 0 rows
    raw = t.detach().contiguous().view(torch.uint8).reshape(t.shape[0], row_bytes).to(device)
    n = torch.tensor([raw.shape[0]], device=device)
    sizes = [torch.zeros_like(n) for _ in range(world_size())]
    dist.all_gather(sizes, n)
    sizes = [int(s) for s in sizes]
    padded = torch.zeros((max(sizes), raw.shape[1]), dtype=torch.uint8, device=device)
    padded[: raw.shape[0]] = raw
    parts = [torch.empty_like(padded) for _ in sizes]
    dist.all_gather(parts, padded)
    rows = torch.cat([p[:s] for p, s in zip(parts, sizes)]).to(t.device)
    return rows.view(dtype).reshape(sum(sizes), *row_shape)


def shard_slice(n: int, r: int | None = None, w: int | None = None) -> tuple[int, int]:
    """Rank ``r``'s rows [lo, hi) of a global batch of ``n`` rows split as evenly as possible."""
    r = rank() if r is None else r
    w = world_size() if w is None else w
    return n * r // w, n * (r + 1) // w


def shard_range(total: int, chunk: int) -> tuple[int, int]:
    """This rank's contiguous share [start, stop) of ``total`` items cut into ``chunk``-sized pieces.

    Whole chunks go to ranks in order, so the concatenation over ranks is the global order and a
    chunk's content does not depend on the world size (ours: results equal a 1-rank run's).
    """
    chunks = -(-total // chunk)
    w, r = world_size(), rank()
    first, last = r * chunks // w, (r + 1) * chunks // w
    return min(first * chunk, total), min(last * chunk, total)
