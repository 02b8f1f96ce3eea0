"""The trajectory buffer: the Python face of pgraft._C's C++ store (csrc/trajectory_buffer.*).

Accepted rows — x_{N_I}, x_0, the condition, the reward, plus a group id, round and rank — live in
one contiguous arena per field, in ordinary (pageable) host memory: torch's pinned allocator
rounds every allocation up to a power of two and keeps it page-locked after it is freed, so
pinned arenas of a round's chains (5.3 GB of DDPO states) held 8 GB of locked RAM per rank for
good. What crosses to the GPU is each minibatch, gathered into one small pinned staging batch
(when CUDA is present) that the iterator reuses. The buffer appends
batches (thread-safe), selects per group over its stored rewards with the semantics of
pgraft/kernels/select.py and compacts, iterates seeded shuffled minibatches into one preallocated
batch, and saves/loads a checksummed file atomically (docs/buffer.md), or maps one
read-only. This module validates every argument before it reaches C++; C++ errors come back as
:class:`BufferError` or, for files, :class:`CheckpointError`.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Iterator, Mapping

import torch

from . import _C
from .collectives import all_gather_rows, shard_slice
from .errors import BufferError, CheckpointError

DTYPES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16", torch.int64: "int64"}
_FROM_NAME = {v: k for k, v in DTYPES.items()}
POLICIES = ("evict_oldest_round", "refuse")
RULES = ("top_k", "best_of_n", "threshold")


class TrajectoryBuffer:
    """A fixed-capacity store of rows with named fields of fixed shape and dtype.

    ``fields`` maps a name to ``(row_shape, dtype)``; ``full_policy`` says what a full buffer
    does on append: evict whole oldest rounds, or refuse with an error.
    """

    def __init__(
        self,
        fields: Mapping[str, tuple[tuple[int, ...], torch.dtype]],
        capacity: int,
        full_policy: str = "evict_oldest_round",
    ):
        if not fields:
            raise BufferError("a buffer needs at least one field")
        if not isinstance(capacity, int) or capacity < 1:
            raise BufferError(f"capacity must be a positive int, got {capacity!r}")
        if full_policy not in POLICIES:
            raise BufferError(f"full_policy must be one of {POLICIES}, got {full_policy!r}")
        names, dtypes, shapes = [], [], []
        for name, spec in fields.items():
            if not isinstance(name, str) or not name:
                raise BufferError(f"field names must be non-empty strings, got {name!r}")
            try:
                shape, dtype = spec
                shape = tuple(int(d) for d in shape)
            except (TypeError, ValueError):
                raise BufferError(f"field {name!r}: spec must be (row_shape, dtype), got {spec!r}") from None
            if dtype not in DTYPES:
                raise BufferError(f"field {name!r}: dtype {dtype} is not one of {list(DTYPES)}")
            if any(d < 1 for d in shape):
                raise BufferError(f"field {name!r}: row shape {shape} has a dimension < 1")
            names.append(name)
            dtypes.append(DTYPES[dtype])
            shapes.append(list(shape))
        self._c = _call(_C.TrajectoryBuffer.create, names, dtypes, shapes, capacity, full_policy)

    @classmethod
    def _wrap(cls, core) -> "TrajectoryBuffer":
        obj = cls.__new__(cls)
        obj._c = core
        return obj

    @classmethod
    def load(cls, path: str | Path) -> "TrajectoryBuffer":
        """Load a saved buffer into RAM, verifying every checksum."""
        return cls._wrap(_call(_C.TrajectoryBuffer.load, str(path), file=True))

    @classmethod
    def open_mmap(cls, path: str | Path, verify: bool = True) -> "TrajectoryBuffer":
        """Map a saved buffer read-only (for buffers larger than RAM); appends are refused."""
        return cls._wrap(_call(_C.TrajectoryBuffer.open_mmap, str(path), verify, file=True))

    # -- description -------------------------------------------------------------------------
    def __len__(self) -> int:
        return self._c.size

    @property
    def capacity(self) -> int:
        return self._c.capacity

    @property
    def read_only(self) -> bool:
        return self._c.read_only

    @property
    def full_policy(self) -> str:
        return self._c.policy

    @property
    def schema(self) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {name: (tuple(shape), _FROM_NAME[dt]) for name, dt, shape in self._c.schema()}

    def meta(self) -> dict[str, torch.Tensor]:
        """Copies of the row metadata: group (int64), reward (float32), round and rank (int32)."""
        group, reward, rnd, rank = self._c.meta()
        return {"group": group, "reward": reward, "round": rnd, "rank": rank}

    def field(self, name: str) -> torch.Tensor:
        """A zero-copy view [len(self), *row_shape] of a field (valid until the next change)."""
        self._require_field(name)
        return self._c.field(name)

    # -- changes -----------------------------------------------------------------------------
    def append(self, *, group: torch.Tensor, reward: torch.Tensor, round: int, rank: int = 0, **fields: torch.Tensor):
        """Append n rows: every field as a [n, *row_shape] tensor (CPU or CUDA), group/reward [n]."""
        if self.read_only:
            raise BufferError("cannot append: the buffer is a read-only memory map")
        schema = self.schema
        if set(fields) != set(schema):
            raise BufferError(f"append needs exactly the fields {sorted(schema)}, got {sorted(fields)}")
        if not isinstance(group, torch.Tensor) or group.ndim != 1:
            raise BufferError("group must be a 1-D tensor of group ids")
        n = group.shape[0]
        if not isinstance(reward, torch.Tensor) or tuple(reward.shape) != (n,):
            raise BufferError(f"reward must be a tensor of shape ({n},), got {getattr(reward, 'shape', reward)}")
        for value, what in ((round, "round"), (rank, "rank")):
            if not isinstance(value, int) or not -(2**31) <= value < 2**31:
                raise BufferError(f"{what} must be an int32, got {value!r}")
        data = []
        for name, (shape, dtype) in schema.items():
            t = fields[name]
            if not isinstance(t, torch.Tensor):
                raise BufferError(f"field {name!r}: expected a tensor, got {type(t).__name__}")
            if tuple(t.shape) != (n, *shape):
                raise BufferError(f"field {name!r}: shape {tuple(t.shape)}, expected {(n, *shape)}")
            if t.dtype != dtype:
                raise BufferError(f"field {name!r}: dtype {t.dtype}, expected {dtype}")
            if t.device.type not in ("cpu", "cuda"):
                raise BufferError(f"field {name!r}: device {t.device} is neither CPU nor CUDA")
            data.append(t)
        _call(self._c.append, data, group.to(torch.int64), reward.to(torch.float32), round, rank)

    def select(self, rule: str, *, k: int | None = None, threshold: float | None = None) -> int:
        """Keep, per group, what ``rule`` accepts among the stored rows; returns the rows kept."""
        if rule not in RULES:
            raise BufferError(f"rule must be one of {RULES}, got {rule!r}")
        if rule == "threshold":
            if threshold is None or not math.isfinite(threshold):
                raise BufferError("rule='threshold' needs a finite threshold")
            return _call(self._c.select_threshold, float(threshold))
        k = 1 if rule == "best_of_n" else k
        if not isinstance(k, int) or k < 1:
            raise BufferError(f"rule={rule!r} needs an int k >= 1, got {k!r}")
        return _call(self._c.select_top_k, k)

    def compact(self, keep: torch.Tensor) -> int:
        """Keep the rows where ``keep`` (bool [len]) is true, in their order."""
        if keep.dtype != torch.bool or tuple(keep.shape) != (len(self),):
            raise BufferError(f"keep must be a bool tensor of shape ({len(self)},)")
        return _call(self._c.compact, keep.cpu())

    def save(self, path: str | Path) -> Path:
        """Write the buffer to ``path`` atomically (a temporary file, then a rename)."""
        _call(self._c.save, str(path))
        return Path(path)

    # -- reading -----------------------------------------------------------------------------
    def gather(self, indices: torch.Tensor, out: dict[str, torch.Tensor] | None = None, threads: int = 2):
        """Rows ``indices`` of every field, into ``out`` (preallocated) or new tensors."""
        indices = torch.as_tensor(indices, dtype=torch.int64).contiguous().cpu()
        if indices.ndim != 1:
            raise BufferError("indices must be 1-D")
        schema = self.schema
        if out is None:
            out = {name: torch.empty((indices.numel(), *shape), dtype=dt) for name, (shape, dt) in schema.items()}
        elif set(out) != set(schema):
            raise BufferError(f"out needs exactly the fields {sorted(schema)}")
        _call(self._c.gather, indices, [out[name] for name in schema], max(1, int(threads)))
        return out

    def minibatches(
        self,
        batch_size: int,
        seed: int,
        *,
        drop_last: bool = False,
        shard: tuple[int, int] = (0, 1),
        start: int = 0,
        threads: int = 2,
    ) -> Iterator[dict[str, torch.Tensor]]:
        """One epoch of seeded, shuffled minibatches, gathered into one preallocated batch.

        With ``shard=(rank, world)`` each global batch of ``batch_size`` rows is split across the
        ranks (:func:`~pgraft.collectives.shard_slice`) and only this rank's rows are
        gathered: data-parallel training over one replicated buffer. ``start`` skips the epoch's
        first batches (resuming mid-epoch). The yielded tensors are views of the batch (pinned
        when CUDA is present): use or copy them before asking for the next one. A copy to the GPU
        with ``non_blocking=True`` is fine: before the batch is refilled, the iterator waits for
        the work queued on the current stream while it was out (an event, not a device sync).
        """
        if not isinstance(batch_size, int) or batch_size < 1:
            raise BufferError(f"batch_size must be a positive int, got {batch_size!r}")
        r, w = shard
        if not (isinstance(w, int) and isinstance(r, int) and 0 <= r < w):
            raise BufferError(f"shard must be (rank, world) with 0 <= rank < world, got {shard!r}")
        perm = self._c.permutation(int(seed) & (2**64 - 1))
        schema = self.schema
        pin = torch.cuda.is_available()
        rows = -(-batch_size // w)
        batch = {name: torch.empty((rows, *shape), dtype=dt, pin_memory=pin) for name, (shape, dt) in schema.items()}
        consumed = torch.cuda.Event() if pin else None  # the consumer's copies out of the last batch
        stop = len(perm) - (len(perm) % batch_size if drop_last else 0)
        for first in range(start * batch_size, stop, batch_size):
            idx = perm[first : first + batch_size]
            lo, hi = shard_slice(idx.numel(), r, w)
            if consumed is not None:
                consumed.synchronize()  # an unrecorded event returns at once
            _call(self._c.gather, idx[lo:hi], [batch[name] for name in schema], max(1, int(threads)))
            yield {name: t[: hi - lo] for name, t in batch.items()}
            if consumed is not None:
                consumed.record()

    def _require_field(self, name: str) -> None:
        if name not in self.schema:
            raise BufferError(f"unknown field {name!r}; fields are {sorted(self.schema)}")


def _call(fn, *args, file: bool = False):
    try:
        return fn(*args)
    except _C.BufferError as exc:
        raise (CheckpointError if file else BufferError)(str(exc)) from None
    except RuntimeError as exc:  # a TORCH_CHECK in the bindings (memory-safety guard)
        raise BufferError(str(exc).split("\n")[0]) from None


def global_select(buffer: TrajectoryBuffer, rule: str, *, k: int | None = None, threshold: float | None = None) -> int:
    """Apply ``rule`` per group across every rank's buffer, and keep this rank's accepted rows.

    Each rank contributes (group, reward) of its rows; all ranks compute the same global
    decision, with the semantics of pgraft/kernels/select.py over the rows of rank 0, then rank 1,
    ... (ties go to the lowest rank, then the lowest row). Gloo on the CPU, NCCL on GPUs. Without
    an initialised process group (or with one rank) this is ``buffer.select``.
    """
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return buffer.select(rule, k=k, threshold=threshold)
    if rule == "threshold":  # a per-row rule: no other rank's rows matter
        return buffer.select(rule, threshold=threshold)
    if rule not in RULES:
        raise BufferError(f"rule must be one of {RULES}, got {rule!r}")
    k = 1 if rule == "best_of_n" else k
    if not isinstance(k, int) or k < 1:
        raise BufferError(f"rule={rule!r} needs an int k >= 1, got {k!r}")
    meta = buffer.meta()
    groups = all_gather_rows(meta["group"])
    rewards = all_gather_rows(meta["reward"])
    owner = all_gather_rows(torch.full((len(buffer),), dist.get_rank(), dtype=torch.int64))
    keep = _top_k_keep(groups, rewards, k)
    return buffer.compact(keep[owner == dist.get_rank()])


def _top_k_keep(groups: torch.Tensor, rewards: torch.Tensor, k: int) -> torch.Tensor:
    """Per group, the k highest finite rewards (ties to the lowest index): a bool mask."""
    valid = torch.isfinite(rewards)
    idx = torch.nonzero(valid).flatten()
    by_reward = idx[torch.sort(rewards[idx], descending=True, stable=True).indices]
    ordered = by_reward[torch.sort(groups[by_reward], stable=True).indices]  # group, then reward, then index
    g = groups[ordered]
    first = torch.ones_like(g, dtype=torch.bool)
    first[1:] = g[1:] != g[:-1]
    starts = torch.cummax(torch.where(first, torch.arange(len(g)), torch.zeros_like(ordered)), 0).values
    rank_in_group = torch.arange(len(g)) - starts
    keep = torch.zeros_like(valid)
    keep[ordered[rank_in_group < k]] = True
    return keep
