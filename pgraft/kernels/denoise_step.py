"""One fused denoising step for the whole batch: kernel + reference + dispatcher.

Every row may sit at its own sampler step. The update is the affine form documented in
pgraft/models/schedule.py, with one row of coefficients per step (the schedule's table):

    o      = u + w·(o − u)                        classifier-free guidance, when u is given
    x̂_0    = clamp(a0·x + b0·o)                   clamp only when the scheduler config clips
    x_prev = c0·x̂_0 + cx·x + co·o + sigma·z
    log p(x_prev | x_t) = −Σz²/2 − D·log(sigma) − (D/2)·log(2π)      (0 where sigma = 0)

which covers DDIM with any η, DDPM's posterior, flow-matching Euler (ODE and diffusers'
stochastic variant) and Flow-GRPO's SDE step, for ε-, v- and velocity-predicting networks.
Three implementations share this signature: the Triton kernel (CUDA, one pass over memory), the
fused C++ loop of pgraft._C (CPU, one pass), and the plain-torch reference (in-place ops on
pre-combined coefficients). Storage float32/bfloat16/float16, arithmetic float32.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from ..errors import ShapeError
from ..models.schedule import COEFFICIENTS, HALF_LOG_2PI, Schedule
from . import _backend

NCOEF = len(COEFFICIENTS)
STORAGE = (torch.float32, torch.float16, torch.bfloat16)


class StepOutput(NamedTuple):
    prev_sample: torch.Tensor
    pred_x0: torch.Tensor | None
    log_prob: torch.Tensor | None  # float32 [B]


def denoise_step(
    sample: torch.Tensor,
    model_output: torch.Tensor,
    step: int | torch.Tensor,
    schedule: Schedule,
    noise: torch.Tensor | None = None,
    *,
    uncond_output: torch.Tensor | None = None,
    guidance_scale: float = 1.0,
    return_x0: bool = True,
    return_log_prob: bool = False,
    inplace: bool = False,
    out: torch.Tensor | None = None,
    backend: str = "auto",
) -> StepOutput:
    """Advance ``sample`` (x at sampler step ``step``, an int or a LongTensor [B]) by one step.

    ``noise`` is required when the schedule is stochastic. ``inplace`` writes x_prev into
    ``sample``; ``out`` (contiguous, like ``sample``) receives it instead of a new tensor.
    ``backend``: see pgraft.kernels._backend.
    """
    _check(sample, model_output, uncond_output, noise, out)
    if out is not None and (inplace or not out.is_contiguous()):
        raise ShapeError("out must be contiguous, and cannot be combined with inplace=True")
    if noise is None and schedule.stochastic:
        raise ShapeError(f"the {schedule.kind} schedule is stochastic: pass a noise tensor")
    if return_log_prob and noise is None:
        raise ShapeError("return_log_prob needs the noise tensor that produced x_prev")
    b = sample.shape[0]
    steps = _step_tensor(step, b, schedule.steps, sample.device)
    table = schedule.table(sample.device)
    clip = schedule.clip_sample_range
    impl = _backend.resolve(backend, sample.device)
    x = sample.contiguous()
    prev = x if inplace else (out if out is not None else torch.empty_like(x))
    x0 = torch.empty_like(x) if return_x0 else None
    args = (x, model_output.contiguous(), _contig(uncond_output), _contig(noise), steps, table, guidance_scale, clip)
    if impl == "triton":
        sumsq = _step_triton(*args, prev, x0, return_log_prob)
    elif impl == "cpp":
        sumsq = torch.zeros(b, dtype=torch.float64) if return_log_prob else None
        _backend._C.denoise_step(*args[:7], math.inf if clip is None else clip, prev, x0, sumsq)
    else:
        prev, x0, sumsq = denoise_step_reference(*args, prev, x0, return_log_prob)
    if inplace and prev.data_ptr() != sample.data_ptr():
        sample.copy_(prev)
        prev = sample
    log_prob = _log_prob(sumsq, table, steps, x[0].numel()) if return_log_prob else None
    return StepOutput(prev, x0, log_prob)


def denoise_step_reference(x, o, u, z, steps, table, guidance, clip, prev, x0, want_sumsq):
    """Plain torch, same semantics: in-place ops on pre-combined per-row coefficients.

    float32 storage is written directly (``prev`` may alias ``x``: x is last read by the op that
    first writes ``prev``); 16-bit storage goes through one float32 buffer.
    """
    shape = (x.shape[0],) + (1,) * (x.ndim - 1)
    a0, b0, c0, cx, co, sigma, _ = (c.view(shape) for c in table[steps].unbind(1))
    xf, of = x.float(), o.float()
    if u is not None:
        of = torch.lerp(u.float(), of, guidance)
    out = prev if prev.dtype == torch.float32 else torch.empty(x.shape, dtype=torch.float32, device=x.device)
    if clip is None and x0 is None:  # fully affine: x_prev = (c0·a0 + cx)·x + (c0·b0 + co)·o
        torch.mul(xf, c0 * a0 + cx, out=out).addcmul_(of, c0 * b0 + co)
    else:
        xhat = torch.mul(xf, a0).addcmul_(of, b0)
        if clip is not None:
            xhat.clamp_(-clip, clip)
        if x0 is not None:
            x0.copy_(xhat)
        torch.mul(xf, cx, out=out).addcmul_(xhat, c0).addcmul_(of, co)
    sumsq = None
    if z is not None:
        zf = z.float()
        out.addcmul_(zf, sigma)
        if want_sumsq:
            sumsq = zf.flatten(1).square().sum(1, dtype=torch.float64)
    if out is not prev:
        prev.copy_(out)
    return prev, x0, sumsq


@triton.jit
def _denoise_step_kernel(
    x_ptr, o_ptr, u_ptr, z_ptr, step_ptr, table_ptr, prev_ptr, x0_ptr, sumsq_ptr,
    row_len, guidance, clip,
    HAS_U: tl.constexpr, HAS_Z: tl.constexpr, CLIP: tl.constexpr, WRITE_X0: tl.constexpr,
    WRITE_SUMSQ: tl.constexpr, NCOEF: tl.constexpr, BLOCK: tl.constexpr,
):  # fmt: skip
    row = tl.program_id(0)
    offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < row_len
    base = row.to(tl.int64) * row_len
    coef = table_ptr + tl.load(step_ptr + row) * NCOEF
    a0 = tl.load(coef + 0)
    b0 = tl.load(coef + 1)
    c0 = tl.load(coef + 2)
    cx = tl.load(coef + 3)
    co = tl.load(coef + 4)
    x = tl.load(x_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    o = tl.load(o_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
    if HAS_U:
        u = tl.load(u_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        o = u + guidance * (o - u)
    xhat = a0 * x + b0 * o
    if CLIP:
        xhat = tl.minimum(tl.maximum(xhat, -clip), clip)
    prev = c0 * xhat + cx * x + co * o
    if HAS_Z:
        z = tl.load(z_ptr + base + offs, mask=mask, other=0.0).to(tl.float32)
        prev = prev + tl.load(coef + 5) * z
        if WRITE_SUMSQ:
            tl.atomic_add(sumsq_ptr + row, tl.sum(z * z, axis=0))
    tl.store(prev_ptr + base + offs, prev.to(prev_ptr.dtype.element_ty), mask=mask)
    if WRITE_X0:
        tl.store(x0_ptr + base + offs, xhat.to(x0_ptr.dtype.element_ty), mask=mask)


def _step_triton(x, o, u, z, steps, table, guidance, clip, prev, x0, want_sumsq):
    b = x.shape[0]
    row_len = x[0].numel() if b else 0
    block = 1024 if not _backend.interpreting() else max(16, min(1024, triton.next_power_of_2(row_len)))
    sumsq = torch.zeros(b, dtype=torch.float32, device=x.device) if want_sumsq else None
    if b == 0 or row_len == 0:
        return sumsq
    grid = (b, triton.cdiv(row_len, block))
    with _backend.launch_device(x):
        _launch_step(grid, x, o, u, z, steps, table, guidance, clip, prev, x0, sumsq, row_len, block)
    return sumsq


def _launch_step(grid, x, o, u, z, steps, table, guidance, clip, prev, x0, sumsq, row_len, block):
    _denoise_step_kernel[grid](
        x, o, u if u is not None else x, z if z is not None else x, steps, table, prev,
        x0 if x0 is not None else prev, sumsq if sumsq is not None else table,
        row_len, float(guidance), float(clip if clip is not None else 0.0),
        HAS_U=u is not None, HAS_Z=z is not None, CLIP=clip is not None, WRITE_X0=x0 is not None,
        WRITE_SUMSQ=sumsq is not None, NCOEF=NCOEF, BLOCK=block,
    )  # fmt: skip


def _log_prob(sumsq, table, steps, row_len):
    log_sigma = table[steps, COEFFICIENTS.index("log_sigma")].double()
    sigma = table[steps, COEFFICIENTS.index("sigma")]
    lp = -0.5 * sumsq.to(log_sigma) - row_len * (log_sigma + HALF_LOG_2PI)
    return torch.where(sigma > 0, lp, torch.zeros_like(lp)).float()


def _step_tensor(step, b: int, num_steps: int, device) -> torch.Tensor:
    if isinstance(step, int) and not 0 <= step < num_steps:  # checked on the host, whatever the device
        raise ShapeError(f"step indices must lie in [0, {num_steps}), got {step}")
    idx = torch.as_tensor(step, dtype=torch.int64, device=device).reshape(-1)
    if idx.numel() == 1:
        idx = idx.expand(b)
    if idx.numel() != b:
        raise ShapeError(f"step has {idx.numel()} entries for a batch of {b}")
    if device.type == "cpu" and b and (int(idx.min()) < 0 or int(idx.max()) >= num_steps):
        raise ShapeError(f"step indices must lie in [0, {num_steps}), got {idx.min().item()}..{idx.max().item()}")
    return idx.contiguous()


def _check(sample, *others):
    if sample.dtype not in STORAGE:
        raise ShapeError(f"sample dtype {sample.dtype} is not one of {STORAGE}")
    if sample.ndim < 2:
        raise ShapeError(f"sample must be [B, ...], got shape {tuple(sample.shape)}")
    names = ("model_output", "uncond_output", "noise", "out")
    for name, t in zip(names, others):
        if t is None:
            continue
        if t.shape != sample.shape:
            raise ShapeError(f"{name} shape {tuple(t.shape)} != sample {tuple(sample.shape)}")
        if t.dtype != sample.dtype:
            raise ShapeError(f"{name} dtype {t.dtype} != sample dtype {sample.dtype}")
        if t.device != sample.device:
            raise ShapeError(f"{name} is on {t.device}, sample on {sample.device}")


def _contig(t):
    return None if t is None else t.contiguous()
