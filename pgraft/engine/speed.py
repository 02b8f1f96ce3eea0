"""How a round runs fast (``method.speed``, :class:`~pgraft.config.SpeedConfig`): options that change
how the network is executed, never what the round computes beyond rounding (at bf16's precision
under bf16 autocast).

The round bench (benches/bench_round.py) found that more than 98% of a round is the network's
forward and backward passes (docs/kernels.md, "A whole round"), so every option here acts on the
network: reduced-precision autocast, inference mode, memory format, ``torch.compile`` (CUDA graphs
on GPUs) and the intra-op thread count. Each is tested against the plain path (tests/test_speed.py).
The rollout sees its denoisers through :class:`FastDenoiser`; the trainer reads the training half.
"""

from __future__ import annotations

import contextlib
import os
from typing import Any

import torch
from torch import nn

from ..config import SpeedConfig
from ..errors import ConfigError
from .compose import Composed, Policy, Single


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes bfloat16 matrix products natively: a CUDA GPU of compute
    capability 8.0 or later (Ampere on; torch.cuda.is_bf16_supported() also says yes where it is
    only emulated, on Volta and Turing), or a CPU with AMX or AVX512-BF16 (without them oneDNN
    emulates bf16, slower than fp32)."""
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return torch.cuda.get_device_capability(index) >= (8, 0)
    if device.type != "cpu":
        return False
    caps = torch._C._cpu._get_cpu_capability()
    return bool(caps.get("amx_bf16") or caps.get("avx512_bf16"))


def sample_dtype(speed: SpeedConfig, device: torch.device, scores_only: bool) -> torch.dtype:
    """The rollout's autocast dtype. ``scores_only``: the learner only scores the samples (GRS);
    learners that recompute the rollout's log-probabilities in training need float32 ("auto")."""
    if speed.sample_precision == "bf16":  # asked for: it runs anywhere, emulated where not native
        return torch.bfloat16
    if speed.sample_precision == "auto" and scores_only and native_bf16(device):
        return torch.bfloat16
    return torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    """torch.autocast to ``dtype`` on ``device``; a no-op context for float32."""
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def check_device(speed: SpeedConfig, device: torch.device) -> None:
    """Options that need hardware the run does not have are refused up front."""
    if speed.cuda_graphs and device.type != "cuda":
        raise ConfigError(f"speed.cuda_graphs needs a CUDA device; this run samples on {device}")


def apply_threads(speed: SpeedConfig) -> None:
    """Set torch's intra-op thread count (process-wide, as torch.set_num_threads is)."""
    if speed.threads is not None:
        torch.set_num_threads(speed.threads)


def apply_float32_math(speed: SpeedConfig) -> None:
    """What float32 means on CUDA (process-wide flags; no effect on the CPU).

    torch runs cuDNN's float32 convolutions in TF32 (10-bit mantissa) unless told otherwise, so an
    "fp32" rollout and PPO's recomputation of its log-probabilities would differ by TF32 rounding,
    which the ratio exp(log p_new - log p_old) amplifies to about the clip range. ``speed.tf32``
    off (the default) makes fp32 IEEE fp32 for convolutions and matrix products. ``speed.
    deterministic`` asks for deterministic CUDA algorithms (and cuBLAS's fixed workspace), without
    which cuDNN/cuBLAS reductions may change between runs and a resumed run is equal only to
    rounding; it errs on an op that has no deterministic implementation.
    """
    torch.backends.cudnn.allow_tf32 = speed.tf32
    torch.backends.cuda.matmul.allow_tf32 = speed.tf32
    # set both ways, like the TF32 flags: a later run in the same process gets what its config says
    torch.use_deterministic_algorithms(speed.deterministic)
    if speed.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read when cuBLAS first starts
        torch.backends.cudnn.benchmark = False


def low_precision(module: nn.Module, device: torch.device) -> bool:
    """Whether ``module`` computes in 16 bits on ``device``: 16-bit weights, or autocast on."""
    return torch.is_autocast_enabled(device.type) or any(
        p.dtype in (torch.bfloat16, torch.float16) for p in module.parameters()
    )


def channels_last_inputs(module: nn.Module, args: tuple) -> tuple:
    """A forward pre-hook: 4-D tensor arguments in channels-last layout (values unchanged), so
    every convolution runs NHWC. The weights keep their layout: DeepSpeed broadcasts and
    partitions parameters as flat contiguous storage."""
    return tuple(a.contiguous(memory_format=torch.channels_last) if torch.is_tensor(a) and a.dim() == 4 else a
                 for a in args)  # fmt: skip


def prepare_network(module: nn.Module, speed: SpeedConfig) -> nn.Module:
    """Make ``module`` take channels-last inputs when ``speed.channels_last`` (a forward pre-hook)."""
    if speed.channels_last:
        module.register_forward_pre_hook(channels_last_inputs)
    return module


class VerifiedCompile:
    """``torch.compile(forward)``, checked against eager ``forward`` before it is trusted.

    The first call in each autograd mode runs the compiled and the eager forward on that call's
    inputs: their outputs must agree, and in a call that records gradients (training; with
    ``gradients``) so must the gradients of the output's mean square with respect to every
    trainable parameter of ``module``, to 1e-3 relative (5e-2 for a module with 16-bit weights or
    under bf16/fp16 autocast: eager and compiled kernels round 16-bit values differently).
    Otherwise the call raises ConfigError with the measured difference. Why: with torch 2.13's
    inductor on the CPU, a compiled diffusers UNet2DModel gives the eager outputs but zero
    gradients for every weight upstream of its first UpBlock2D (docs/kernels.md, "A whole round"):
    training would go on silently wrong. Sampling and training compile separate graphs, so each
    is checked on its own first call.
    """

    def __init__(self, forward, module: nn.Module, *, option: str, gradients: bool, mode: str | None = None):
        self.eager, self.compiled = forward, torch.compile(forward, mode=mode)
        self.module, self.option, self.gradients = module, option, gradients
        self.checked: set[bool] = set()  # the autograd modes (grad recorded or not) already checked

    def __call__(self, *args, **kwargs):
        records = torch.is_grad_enabled() and not torch.is_inference_mode_enabled()
        if records not in self.checked:
            self.check(args, kwargs, gradients=self.gradients and records)
            self.checked.add(records)
        return self.compiled(*args, **kwargs)

    def check(self, args: tuple, kwargs: dict, gradients: bool) -> None:
        tol = 5e-2 if low_precision(self.module, args[0].device) else 1e-3
        params = [p for p in self.module.parameters() if p.requires_grad] if gradients else []
        out_eager, out_compiled = self.eager(*args, **kwargs), self.compiled(*args, **kwargs)
        diffs = {"outputs": relative_difference(out_compiled, out_eager)}
        if params:
            grads = [flat_grad(out, params) for out in (out_compiled, out_eager)]
            diffs["gradients"] = relative_difference(*grads)
        bad = {k: v for k, v in diffs.items() if not v <= tol}
        if bad:
            found = ", ".join(f"{k} differ by {v:.3g}" for k, v in bad.items())
            raise ConfigError(
                f"torch.compile gives this {type(self.module).__name__} wrong results ({found}, relative; "
                f"tolerance {tol:g}): turn {self.option} off"
            )


def relative_difference(value: torch.Tensor, reference: torch.Tensor) -> float:
    """‖value − reference‖ / ‖reference‖ (‖value‖ when the reference is zero)."""
    value, reference = value.detach().float(), reference.detach().float()
    scale = float(reference.norm())
    diff = float((value - reference).norm())
    return diff / scale if scale > 0 else diff


def flat_grad(out: torch.Tensor, params: list[torch.Tensor]) -> torch.Tensor:
    """The gradient of mean(out²) with respect to ``params``, flattened (zeros where unused)."""
    grads = torch.autograd.grad(out.float().square().mean(), params, allow_unused=True)
    return torch.cat([(g if g is not None else torch.zeros_like(p)).flatten().float() for g, p in zip(grads, params)])


class FastDenoiser(nn.Module):
    """A denoiser as the rollout runs it: under autocast to ``dtype``, inference mode, channels-
    last inputs and ``torch.compile`` as ``speed`` asks. Takes and returns float32 like the
    denoiser it wraps, and declares the same parameterisation."""

    def __init__(self, denoiser: nn.Module, speed: SpeedConfig, device: torch.device, dtype: torch.dtype):
        super().__init__()
        self.denoiser = denoiser
        self.prediction_type = denoiser.prediction_type
        self.speed, self.device, self.dtype = speed, device, dtype
        self.compiled: VerifiedCompile | None = None
        if speed.compile_sampling or speed.cuda_graphs:
            # "reduce-overhead" is inductor with CUDA graphs: one graph replay per fixed-shape step
            option = "speed.cuda_graphs" if speed.cuda_graphs else "speed.compile_sampling"
            mode = "reduce-overhead" if speed.cuda_graphs else None
            self.compiled = VerifiedCompile(denoiser.forward, denoiser, option=option, gradients=False, mode=mode)

    def forward(self, x: torch.Tensor, t: torch.Tensor, cond: Any) -> torch.Tensor:
        grad_mode = torch.inference_mode() if self.speed.inference_mode else torch.no_grad()
        if self.speed.channels_last:
            x, t, cond = channels_last_inputs(self, (x, t, cond))
        with grad_mode, autocast(self.device, self.dtype):
            out = (self.compiled or self.denoiser)(x, t, cond)
        # float32 in the sampler's layout; under inference mode an inference tensor, which the
        # sampler step only reads (its results, the states the buffer keeps, are plain tensors)
        return out.float().contiguous()


class FastPolicies:
    """The rollout's view of a loop's policies: each distinct denoiser wrapped once and reused
    across rounds (so a compiled graph is compiled once per network, not once per round)."""

    def __init__(self, speed: SpeedConfig, device: torch.device, scores_only: bool):
        check_device(speed, device)
        self.speed, self.device = speed, device
        self.dtype = sample_dtype(speed, device, scores_only)
        self._wrapped: dict[int, FastDenoiser] = {}

    def denoiser(self, model: nn.Module) -> FastDenoiser:
        key = id(model)
        if key not in self._wrapped:
            self._wrapped[key] = FastDenoiser(model, self.speed, self.device, self.dtype)
        return self._wrapped[key]

    def policy(self, policy: Policy) -> Policy:
        if isinstance(policy, Composed):
            return Composed(self.denoiser(policy.finetuned), self.denoiser(policy.base), policy.n_i)
        if isinstance(policy, Single):
            return Single(self.denoiser(policy.model))
        raise TypeError(f"no fast view of a {type(policy).__name__} policy")
