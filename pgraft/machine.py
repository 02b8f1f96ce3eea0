"""What this machine computes with: the facts that decide a run's arithmetic, for bug reports and CI logs.

Two CPUs that both "support bf16" round differently: an Intel Xeon with AMX and an AMD EPYC with
AVX-512 BF16 run different oneDNN and MKL kernels, so float results (and any single-seed number
built on them) differ in their last bits, and ``method.speed.sample_precision: auto`` picks bf16
rollouts on both. ``pgraft info`` prints these facts; the test suite prints them in its header.
"""

from __future__ import annotations

import os
import platform

import torch

# Environment variables that change which kernels the math libraries pick (docs/development.md
# uses the first three to reproduce another CPU's arithmetic on this one).
ARITHMETIC_ENV = (
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "ATEN_CPU_CAPABILITY",
    "MKL_CBWR",
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
)
CPU_FLAGS = ("avx2", "avx512_f", "avx512_bf16", "amx_bf16", "avx512_fp16")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def report() -> dict:
    """This machine's arithmetic: CPU, the ISA flags that choose kernels, threads, GPUs, and what
    ``sample_precision: auto`` resolves to for a learner that only scores samples (GRAFT/P-GRAFT)
    and for one that recomputes log-probabilities (DDPO/GRPO)."""
    from .config import SpeedConfig
    from .engine.speed import sample_dtype

    caps = torch._C._cpu._get_cpu_capability()
    cpu = torch.device("cpu")
    auto = SpeedConfig()
    out = {
        "cpu": cpu_model(),
        "cpu_flags": {flag: bool(caps.get(flag)) for flag in CPU_FLAGS},
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "env": {name: os.environ[name] for name in ARITHMETIC_ENV if name in os.environ},
        "auto_sample_precision_cpu": {
            "graft": str(sample_dtype(auto, cpu, scores_only=True)).removeprefix("torch."),
            "policy_gradient": str(sample_dtype(auto, cpu, scores_only=False)).removeprefix("torch."),
        },
        "cuda": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
    }
    if out["cuda"]:
        gpu = torch.device("cuda", torch.cuda.current_device())
        out["auto_sample_precision_cuda"] = str(sample_dtype(auto, gpu, scores_only=True)).removeprefix("torch.")
    return out


def report_lines() -> list[str]:
    r = report()
    flags = " ".join(f"{k}={'yes' if v else 'no'}" for k, v in r["cpu_flags"].items())
    env = " ".join(f"{k}={v}" for k, v in r["env"].items()) or "(none set)"
    auto = r["auto_sample_precision_cpu"]
    lines = [
        f"cpu: {r['cpu']} ({platform.machine()}); aten kernels: {r['aten_capability']}",
        f"cpu flags: {flags}",
        f"torch {r['torch']}, {r['torch_threads']} intra-op threads; arithmetic env: {env}",
        f"sample_precision auto on the cpu: {auto['graft']} for GRAFT/P-GRAFT, {auto['policy_gradient']} for DDPO/GRPO",
    ]
    if r["cuda"]:
        lines.append(f"cuda: {', '.join(r['cuda'])}; auto on cuda: {r['auto_sample_precision_cuda']}")
    else:
        lines.append("cuda: none")
    return lines
