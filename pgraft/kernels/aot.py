"""The kernels' compile gate: every Triton kernel compiled for real GPUs, on a machine without one.

Triton compiles for a target named explicitly (``GPUTarget("cuda", 90, 32)``) with no GPU or driver
present, and its wheel ships ``ptxas``, whose ``-v`` prints registers, spills and stack. What gets
compiled is taken from the real dispatchers: each dispatcher is called on CPU tensors with its
Triton path forced, and the launch is recorded instead of run (:func:`capture`). The recorded
arguments are then specialised the way the runtime would specialise them on a GPU (16-byte-aligned
pointers and integers divisible by 16 get ``tt.divisibility=16``; torch's allocations on either
device are aligned), so a change in a dispatcher changes what is compiled here.

For each variant the gate records the PTX and cubin sizes, registers, spill bytes, stack, the widest
global load and store (bits), and the atomics, and checks them (:func:`problems`):
- it compiles, to PTX and a non-empty cubin;
- no spills, and registers within :data:`REGISTER_BUDGET`;
- rows whose length is divisible by 16 move through 128-bit global loads and stores;
- exactly one atomic in a step that sums log-probabilities, none anywhere else.

Run ``python -m pgraft.kernels.aot --arch sm_90a`` for the table; ``benches/bench_compile.py``
writes it under ``benches/results/<arch>-aot/``; ``tests/test_compile_gate.py`` runs the checks.
Under ``TRITON_INTERPRET=1`` a ``@triton.jit`` function cannot be compiled, so the gate must run in
a process where it is unset before the kernels are imported.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import re
import subprocess
import tempfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from itertools import product
from pathlib import Path

import torch

ARCHS = {"sm_80": 80, "sm_90a": 90}  # Ampere (A100) and Hopper (H100/H200)
REGISTER_BUDGET = 64  # per thread: 50% occupancy at 4 warps per block on sm_80/sm_90
VECTOR_BITS = 128
STEP, SELECT = "pgraft.kernels.denoise_step", "pgraft.kernels.select"
KERNELS = {"_denoise_step_kernel": STEP, "_topk_kernel": SELECT, "_gather_kernel": SELECT}
FLOATS = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}  # sample and reward storage
FIELDS = {**FLOATS, "i64": torch.int64}  # what a buffer field can hold


@dataclass
class Launch:
    kernel: str  # the @triton.jit function's name in ``module``
    module: str
    variant: str  # the dtype and flags this launch specialises
    row_divisible_by_16: bool
    sums_log_prob: bool
    args: tuple
    kwargs: dict


@dataclass
class Compiled:
    kernel: str
    variant: str
    arch: str
    row_divisible_by_16: bool
    sums_log_prob: bool
    registers: int
    spill_bytes: int
    stack_bytes: int
    load_bits: int  # the widest global load
    store_bits: int  # the widest global store
    atomics: int
    ptx_bytes: int
    cubin_bytes: int
    error: str = ""


@contextlib.contextmanager
def _recording(launches: list, meta: dict):
    """Within: the dispatchers take their Triton path on CPU tensors, and each launch is appended
    to ``launches`` (with ``meta``'s current labels) instead of compiled and run."""
    backend = importlib.import_module("pgraft.kernels._backend")
    saved_resolve = backend.resolve
    saved_run = {}
    backend.resolve = lambda requested, device: "triton"
    try:
        for name, module in KERNELS.items():
            fn = getattr(importlib.import_module(module), name)
            saved_run[name] = fn.run

            def run(*args, grid, warmup, _name=name, _module=module, **kwargs):
                launches.append(Launch(_name, _module, args=args, kwargs=kwargs, **meta))

            fn.run = run
        yield
    finally:
        backend.resolve = saved_resolve
        for name, module in KERNELS.items():
            getattr(importlib.import_module(module), name).run = saved_run[name]


def capture() -> list[Launch]:
    """Every dtype and flag combination the dispatchers can reach, as recorded launches."""
    from ..models.schedule import Schedule
    from .denoise_step import denoise_step
    from .select import gather_rows, group_topk

    launches: list[Launch] = []
    meta = {"variant": "", "row_divisible_by_16": True, "sums_log_prob": False}
    config = {"num_train_timesteps": 1000}
    schedules = {  # (clip, stochastic): DDIM with eta 1, or eta 0 for the noise-free step
        (clip, eta > 0): Schedule.from_scheduler_config({**config, "clip_sample": clip}, 10, "ddim", eta)
        for clip, eta in product((False, True), (0.0, 1.0))
    }
    g = torch.Generator().manual_seed(0)
    with _recording(launches, meta):
        # the fused step: storage dtype x CFG x noise (none / noise / noise and log p) x clip x x̂_0,
        # on rows of 256 (divisible by 16); on rows of 189 once per dtype (the unaligned path)
        noises = ("none", "noise", "noise+logp")
        for (name, dtype), cfg, noise, clip, x0, row in product(
            FLOATS.items(), (False, True), noises, (False, True), (False, True), (256, 189)
        ):
            if row == 189 and not (cfg and noise == "noise+logp" and clip and x0):
                continue
            x, o, u, z = (torch.randn(4, row, generator=g).to(dtype) for _ in range(4))
            meta.update(variant=f"{name} cfg={cfg:d} {noise} clip={clip:d} x0={x0:d} row={row}",
                        row_divisible_by_16=row % 16 == 0, sums_log_prob=noise == "noise+logp")  # fmt: skip
            denoise_step(
                x, o, 3, schedules[clip, noise != "none"], z if noise != "none" else None,
                uncond_output=u if cfg else None, guidance_scale=3.0 if cfg else 1.0,
                return_x0=x0, return_log_prob=noise == "noise+logp",
            )  # fmt: skip
        # selection: reward dtype x group size (a float64 table goes in as float32)
        for (name, dtype), m in product(FLOATS.items(), (16, 1000)):
            meta.update(variant=f"{name} M={m}", row_divisible_by_16=m % 16 == 0, sums_log_prob=False)
            group_topk(torch.randn(8, m, generator=g).to(dtype), 4)
        # the row gather: every buffer field dtype x row length (aligned, unaligned, several blocks)
        for (name, dtype), row in product(FIELDS.items(), (256, 189, 9008)):
            meta.update(variant=f"{name} row={row}", row_divisible_by_16=row % 16 == 0, sums_log_prob=False)
            gather_rows(torch.tensor([2, 0]), (torch.randn(3, row, generator=g) * 10).to(dtype))
    return launches


_PTXAS = re.compile(
    r"(?P<stack>\d+) bytes stack frame, (?P<stores>\d+) bytes spill stores, (?P<loads>\d+) bytes spill loads"
    r".*?Used (?P<regs>\d+) registers",
    re.S,
)
_MEMORY = re.compile(r"\b(ld|st)\.global(?:\.[\w:]+?)*?(?:\.v(\d))?\.(?:b|f|u|s)(\d+)\b")
_ATOMIC = re.compile(r"(?<![\w.])(?:atom|red)\.")


def ptxas() -> Path:
    import triton

    return Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas"


def ptxas_usage(ptx: str, arch: str) -> dict:
    """Registers, spill and stack bytes of the PTX's one entry function, from ``ptxas -v``."""
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "k.ptx"
        src.write_text(ptx)
        run = subprocess.run([str(ptxas()), "-v", "--gpu-name", arch, str(src), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True)  # fmt: skip
    if run.returncode != 0:
        raise RuntimeError(f"ptxas failed: {run.stderr.strip()[-500:]}")
    return parse_ptxas(run.stderr)


def parse_ptxas(report: str) -> dict:
    m = _PTXAS.search(report)
    if m is None:
        raise RuntimeError(f"no register report in ptxas -v output: {report[-300:]}")
    spills = int(m["stores"]) + int(m["loads"])
    return {"registers": int(m["regs"]), "spill_bytes": spills, "stack_bytes": int(m["stack"])}


def memory_widths(ptx: str) -> tuple[int, int, int]:
    """(widest global load, widest global store in bits, atomic instructions) of a PTX listing."""
    widest = {"ld": 0, "st": 0}
    for op, lanes, bits in _MEMORY.findall(ptx):
        widest[op] = max(widest[op], int(lanes or 1) * int(bits))
    return widest["ld"], widest["st"], len(_ATOMIC.findall(ptx))


def compile_launch(launch: Launch, arch: str) -> Compiled:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.backends.nvidia.compiler import CUDABackend
    from triton.compiler import ASTSource
    from triton.runtime.jit import create_function_from_signature

    fn = getattr(importlib.import_module(launch.module), launch.kernel)
    target = GPUTarget("cuda", ARCHS[arch], 32)
    backend = CUDABackend(target)
    head = {k: getattr(launch, k) for k in ("kernel", "variant", "row_divisible_by_16", "sums_log_prob")}
    try:
        # the runtime's own binding and specialisation of these arguments (JITFunction.run)
        bound, specialization, options = create_function_from_signature(fn.signature, fn.params, backend)(
            *launch.args, **launch.kwargs
        )
        options, signature, constexprs, attrs = fn._pack_args(backend, launch.kwargs, bound, specialization, options)
        kernel = triton.compile(ASTSource(fn, signature, constexprs, attrs), target=target, options=options.__dict__)
        ptx, cubin = kernel.asm["ptx"], kernel.asm.get("cubin", b"")
        usage = ptxas_usage(ptx, arch)
    except Exception as exc:  # reported, and failed by the gate, never swallowed
        return Compiled(**head, arch=arch, registers=-1, spill_bytes=-1, stack_bytes=-1, load_bits=0, store_bits=0,
                        atomics=-1, ptx_bytes=0, cubin_bytes=0, error=f"{type(exc).__name__}: {exc}"[:500])  # fmt: skip
    load, store, atomics = memory_widths(ptx)
    return Compiled(**head, arch=arch, **usage, load_bits=load, store_bits=store, atomics=atomics,
                    ptx_bytes=len(ptx), cubin_bytes=len(cubin))  # fmt: skip


def problems(c: Compiled) -> list[str]:
    """What the gate refuses in one compiled variant (empty when it passes)."""
    if c.error:
        return [f"does not compile: {c.error}"]
    found = []
    if c.ptx_bytes == 0 or c.cubin_bytes == 0:
        found.append("no PTX or an empty cubin")
    if c.spill_bytes:
        found.append(f"spills {c.spill_bytes} bytes")
    if c.registers > REGISTER_BUDGET:
        found.append(f"{c.registers} registers > budget {REGISTER_BUDGET}")
    vectorised = c.kernel != "_topk_kernel"  # selection reads one group's row; its loads are scalar
    if vectorised and c.row_divisible_by_16 and min(c.load_bits, c.store_bits) < VECTOR_BITS:
        found.append(f"loads {c.load_bits}-bit / stores {c.store_bits}-bit on aligned rows (want {VECTOR_BITS})")
    if c.atomics != (1 if c.sums_log_prob else 0):
        found.append(f"{c.atomics} atomics (want {1 if c.sums_log_prob else 0})")
    return found


def _compile_one(job: tuple[Launch, str]) -> Compiled:
    return compile_launch(*job)


def compile_all(archs: list[str], workers: int = 2) -> list[Compiled]:
    """Capture, then compile every launch for every arch (``workers`` processes; a fresh cache)."""
    if os.environ.get("TRITON_INTERPRET") == "1":
        raise RuntimeError("unset TRITON_INTERPRET: interpreted kernels cannot be compiled for a GPU")
    launches = capture()
    jobs = [(launch, arch) for arch in archs for launch in launches]
    saved = os.environ.get("TRITON_CACHE_DIR")
    with tempfile.TemporaryDirectory() as cache:
        os.environ["TRITON_CACHE_DIR"] = cache  # measure and check cold compiles, not a stale cache
        try:
            if workers <= 1:
                return [_compile_one(job) for job in jobs]
            with ProcessPoolExecutor(workers) as pool:
                return list(pool.map(_compile_one, jobs, chunksize=4))
        finally:
            if saved is None:
                os.environ.pop("TRITON_CACHE_DIR")
            else:
                os.environ["TRITON_CACHE_DIR"] = saved


COLUMNS = ["kernel", "variant", "arch", "registers", "spill_bytes", "stack_bytes", "load_bits", "store_bits",
           "atomics", "ptx_bytes", "cubin_bytes", "error"]  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(ARCHS), help="target(s) (default: all)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args(argv)
    results = compile_all(args.arch or sorted(ARCHS), args.workers)
    bad = 0
    for c in results:
        issues = problems(c)
        bad += bool(issues)
        row = asdict(c)
        print("  ".join(str(row[k]) for k in COLUMNS[:-1]), "  FAIL: " + "; ".join(issues) if issues else "")
    print(f"{len(results)} variants, {bad} failing the gate")
    return 1 if bad else 0


if __name__ == "__main__":
    raise SystemExit(main())
