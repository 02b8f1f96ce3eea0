"""Reward-filtered group selection: per-group top-K, Best-of-N, threshold, and a fused row gather.

Rewards come as [G, M] (G condition groups of M samples, 1 ≤ K ≤ M ≤ 1024) with a validity mask
(default: finite rewards). Semantics, shared by every implementation and by the engine's GRS rules
(pgraft/engine/select.py): invalid rewards are never selected; among valid ones the K highest are
taken in descending order, ties broken toward the lowest index; a group with fewer than K valid
rewards returns what it has, padded with -1.

Triad: the Triton kernels (one program per group: K rounds of max / lowest-index arg-max; one
program per row block for the gather), the torch reference (a stable sort, index_select), one
dispatcher; on the CPU the gather runs in the compiled extension (one memcpy per row, all tensors
in one parallel region).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..errors import ShapeError
from . import _backend

MAX_GROUP = 1024


def group_topk(
    rewards: torch.Tensor, k: int, valid: torch.Tensor | None = None, *, backend: str = "auto"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-group top-``k``: (indices [G, k] int64, -1 where a group ran out; counts [G] int64)."""
    _check(rewards, valid)
    g, m = rewards.shape
    if not 1 <= k <= m:
        raise ShapeError(f"k={k} must lie in [1, M={m}]")
    impl = _backend.resolve(backend, rewards.device)
    if impl == "cpp":  # finiteness is tested inside the loop: no mask tensor to build
        idx, counts = torch.empty((g, k), dtype=torch.int64), torch.empty(g, dtype=torch.int64)
        r = rewards.detach().float().contiguous()
        _backend._C.group_topk(r, None if valid is None else valid.contiguous(), k, idx, counts)
        return idx, counts
    valid = _valid_and_finite(rewards, valid)
    if impl == "triton":
        return _topk_triton(rewards, valid, k)
    return group_topk_reference(rewards, valid, k)


def best_of_n(rewards: torch.Tensor, valid: torch.Tensor | None = None, *, backend: str = "auto") -> torch.Tensor:
    """Index of each group's best valid reward, -1 for a group with none: [G] int64."""
    return group_topk(rewards, 1, valid, backend=backend)[0][:, 0]


def threshold_mask(rewards: torch.Tensor, tau: float, valid: torch.Tensor | None = None) -> torch.Tensor:
    """Valid rewards at or above ``tau``: [G, M] bool (one elementwise pass on any device)."""
    _check(rewards, valid)
    return _valid_and_finite(rewards, valid) & (rewards >= tau)


def gather_rows(
    indices: torch.Tensor, *tensors: torch.Tensor, out: list[torch.Tensor] | None = None, backend: str = "auto"
) -> list[torch.Tensor]:
    """Rows ``indices`` (flat, into G·M) of each tensor, as contiguous tensors.

    ``out`` gives one preallocated contiguous destination per tensor (a buffer's arena, say).
    On the CPU the compiled extension copies the rows of all tensors in one parallel region.
    """
    if out is not None:
        if len(out) != len(tensors):
            raise ShapeError(f"out has {len(out)} tensors for {len(tensors)} sources")
        for o, t in zip(out, tensors):
            want = (indices.numel(), *t.shape[1:])
            if tuple(o.shape) != want or o.dtype != t.dtype or o.device != t.device or not o.is_contiguous():
                raise ShapeError(f"out tensor {tuple(o.shape)} {o.dtype} must be contiguous {want} {t.dtype}")
    if indices.dtype != torch.int64 or indices.ndim != 1:
        raise ShapeError(f"indices must be a 1-D int64 tensor, got {indices.dtype} of shape {tuple(indices.shape)}")
    for t in tensors:
        if t.device != indices.device:
            raise ShapeError(f"a tensor is on {t.device}, the indices on {indices.device}")
        if t.ndim == 0:
            raise ShapeError("gather_rows needs tensors with a leading row dimension")
    impl = _backend.resolve(backend, indices.device)
    if impl != "cpp" and indices.numel() and indices.device.type == "cpu":  # the extension checks its own
        lo, hi = int(indices.min()), int(indices.max())
        for t in tensors:
            if lo < 0 or hi >= t.shape[0]:
                raise ShapeError(f"gather indices must lie in [0, {t.shape[0]})")
    srcs = [t.contiguous() for t in tensors]
    outs = (
        out
        if out is not None
        else [torch.empty((indices.numel(), *t.shape[1:]), dtype=t.dtype, device=t.device) for t in srcs]
    )
    if impl == "cpp":
        try:
            _backend._C.gather_rows(indices.contiguous(), srcs, outs)
        except IndexError as e:
            raise ShapeError(str(e)) from None
    elif impl == "triton":
        for t, o in zip(srcs, outs):
            _gather_triton(t, indices, o)
    else:
        for t, o in zip(srcs, outs):
            torch.index_select(t, 0, indices, out=o)
    return outs


def group_topk_reference(rewards, valid, k):
    """Plain torch: a stable descending sort keeps the lowest index first among ties."""
    key = torch.where(valid, rewards.float(), torch.full_like(rewards, -torch.inf, dtype=torch.float32))
    order = torch.sort(key, dim=1, descending=True, stable=True).indices[:, :k]
    counts = valid.sum(1).clamp(max=k)
    keep = torch.arange(k, device=rewards.device)[None, :] < counts[:, None]
    return torch.where(keep, order, torch.full_like(order, -1)), counts


@triton.jit
def _topk_kernel(r_ptr, v_ptr, idx_ptr, count_ptr, M, K, BLOCK_M: tl.constexpr):
    g = tl.program_id(0)
    cols = tl.arange(0, BLOCK_M)
    inside = cols < M
    r = tl.load(r_ptr + g * M + cols, mask=inside, other=0.0).to(tl.float32)
    ok = (tl.load(v_ptr + g * M + cols, mask=inside, other=0) != 0) & inside
    n_valid = tl.sum(ok.to(tl.int32), axis=0)
    for j in range(0, K):
        best = tl.max(tl.where(ok, r, float("-inf")), axis=0)
        pick = tl.min(tl.where(ok & (r == best), cols, BLOCK_M), axis=0)  # lowest index among ties
        has = j < n_valid
        tl.store(idx_ptr + g * K + j, tl.where(has, pick, -1).to(tl.int64))
        ok = ok & (cols != pick)
    tl.store(count_ptr + g, tl.minimum(n_valid, K).to(tl.int64))


def _topk_triton(rewards, valid, k):
    g, m = rewards.shape
    idx = torch.empty((g, k), dtype=torch.int64, device=rewards.device)
    counts = torch.empty(g, dtype=torch.int64, device=rewards.device)
    if g:
        r = rewards.contiguous() if rewards.dtype != torch.float64 else rewards.float().contiguous()
        v = valid.to(torch.int8).contiguous()
        with _backend.launch_device(r):
            _topk_kernel[(g,)](r, v, idx, counts, m, k, BLOCK_M=triton.next_power_of_2(m))
    return idx, counts


@triton.jit
def _gather_kernel(src_ptr, idx_ptr, dst_ptr, row_len, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_len
    src_row = tl.load(idx_ptr + row)
    vals = tl.load(src_ptr + src_row * row_len + offs, mask=mask)
    tl.store(dst_ptr + row.to(tl.int64) * row_len + offs, vals, mask=mask)


# a block is at most 4,096 elements and 16 KiB: with 8 warps, at most 16 elements and 64 bytes
# (four 128-bit accesses) per thread, which keeps every dtype within the register budget
GATHER_BLOCK, GATHER_BLOCK_BYTES = 4096, 16384


def _gather_triton(t, indices, out):
    row_len = t[0].numel() if t.shape[0] else 0
    if indices.numel() and row_len:
        block = min(GATHER_BLOCK, GATHER_BLOCK_BYTES // t.element_size(), triton.next_power_of_2(row_len))
        # as many warps as give every thread whole 16-byte accesses (Triton's default of 4 warps
        # left 256-float rows on 64-bit accesses: the compile gate, pgraft/kernels/aot.py)
        warps = max(1, min(8, block * t.element_size() // (16 * 32)))
        grid = (indices.numel(), triton.cdiv(row_len, block))
        with _backend.launch_device(t):
            _gather_kernel[grid](t, indices, out, row_len, BLOCK=block, num_warps=warps)
    return out


def _check(rewards: torch.Tensor, valid: torch.Tensor | None) -> None:
    if rewards.ndim != 2:
        raise ShapeError(f"rewards must be [groups, samples_per_group], got shape {tuple(rewards.shape)}")
    if not rewards.is_floating_point():
        raise ShapeError(f"rewards must be floating point, got {rewards.dtype}")
    if rewards.shape[1] > MAX_GROUP:
        raise ShapeError(f"groups of M={rewards.shape[1]} exceed the supported M <= {MAX_GROUP}")
    if valid is not None and (valid.shape != rewards.shape or valid.dtype != torch.bool):
        raise ShapeError(f"valid must be a bool tensor of shape {tuple(rewards.shape)}")


def _valid_and_finite(rewards: torch.Tensor, valid: torch.Tensor | None) -> torch.Tensor:
    finite = torch.isfinite(rewards)
    return finite if valid is None else valid & finite
