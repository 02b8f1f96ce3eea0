"""The compile gate (pgraft/kernels/aot.py): every Triton kernel, for every dtype and flag its
dispatcher reaches, compiles for sm_80 and sm_90a with no spills, registers within budget,
128-bit global accesses on rows divisible by 16 and one atomic exactly where log-probabilities are
summed. And the gate refuses kernels that break those rules (deliberately broken ones below).

Compiling needs a process without TRITON_INTERPRET (conftest sets it for this one before any
kernel is imported), so each check runs in a subprocess.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from pgraft.kernels.aot import Compiled, memory_widths, parse_ptxas, problems


def _run(code: str, tmp_path) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = tmp_path / "compiled.json"
    script = textwrap.dedent(code) + f"\nopen({str(out)!r}, 'w').write(json.dumps([asdict(c) for c in results]))\n"
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(out.read_text())


@pytest.fixture(scope="module")
def compiled(tmp_path_factory):
    """Every kernel variant the dispatchers reach, compiled for both targets (about 15 s on 2 cores)."""
    code = """
        import json
        from dataclasses import asdict
        from pgraft.kernels.aot import compile_all
        results = compile_all(["sm_80", "sm_90a"], workers=2)
    """
    return [Compiled(**c) for c in _run(code, tmp_path_factory.mktemp("gate"))]


def test_every_kernel_variant_passes_the_gate(compiled):
    failing = {f"{c.kernel} {c.variant} {c.arch}": problems(c) for c in compiled if problems(c)}
    assert not failing, failing
    kernels = {c.kernel for c in compiled}
    assert kernels == {"_denoise_step_kernel", "_topk_kernel", "_gather_kernel"}
    assert {c.arch for c in compiled} == {"sm_80", "sm_90a"}
    # the grid the dispatchers reach: 3 storage dtypes x CFG x 3 noise modes x clip x x̂_0 on aligned
    # rows plus 3 unaligned; 3 x 2 selections; 4 field dtypes x 3 row lengths; per target
    assert len(compiled) == 2 * (3 * 2 * 3 * 2 * 2 + 3 + 6 + 12)
    step = [c for c in compiled if c.kernel == "_denoise_step_kernel"]
    assert sum(c.sums_log_prob for c in step) == 2 * (3 * 2 * 2 * 2 + 3)


def test_unaligned_rows_compile_to_narrower_accesses(compiled):
    """The specialisation is what vectorises: the same kernels on rows of 189 elements (not
    divisible by 16) fall back to element-wide accesses, and the gate does not demand 128 bits there."""
    unaligned = [c for c in compiled if not c.row_divisible_by_16 and c.kernel != "_topk_kernel"]
    assert len(unaligned) == 2 * (3 + 4)
    for c in unaligned:
        assert c.load_bits < 128 and c.store_bits < 128, (c.kernel, c.variant, c.load_bits, c.store_bits)


BROKEN = """
import triton
import triton.language as tl


@triton.jit
def copy_unspecialised(src, dst, n, BLOCK: tl.constexpr):  # n never specialised: no divisibility known
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs, mask=offs < n), mask=offs < n)


@triton.jit
def copy_with_atomic(src, dst, acc, n, BLOCK: tl.constexpr):  # an atomic where none belongs
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(src + offs, mask=offs < n)
    tl.store(dst + offs, x, mask=offs < n)
    tl.atomic_add(acc, tl.sum(x, axis=0))


@triton.jit
def register_hungry(src, dst, n, BLOCK: tl.constexpr):  # 64 floats live per thread
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    x = tl.load(src + offs, mask=offs < n)
    y = tl.sort(x)
    tl.store(dst + offs, y * tl.cumsum(x, axis=0), mask=offs < n)


@triton.jit
def does_not_compile(src, dst, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    tl.store(dst + offs, tl.load(src + offs) @ tl.load(src + offs))  # a 1-D tl.dot: refused
"""


def test_the_gate_refuses_broken_kernels(tmp_path):
    (tmp_path / "broken_kernels.py").write_text(BROKEN)
    code = """
        import json, sys, torch
        from dataclasses import asdict
        sys.path.insert(0, ".")
        import broken_kernels
        from triton.runtime.jit import JITFunction
        from pgraft.kernels.aot import Launch, compile_launch
        broken_kernels.copy_unspecialised = JITFunction(broken_kernels.copy_unspecialised.fn, do_not_specialize=["n"])
        src, dst, acc = torch.zeros(4096), torch.zeros(4096), torch.zeros(1)
        launches = [
            Launch("copy_unspecialised", "broken_kernels", "", True, False, (src, dst, 4096), {"BLOCK": 1024}),
            Launch("copy_with_atomic", "broken_kernels", "", True, False, (src, dst, acc, 4096), {"BLOCK": 1024}),
            Launch("register_hungry", "broken_kernels", "", True, False, (src, dst, 4096), {"BLOCK": 8192}),
            Launch("does_not_compile", "broken_kernels", "", True, False, (src, dst, 4096), {"BLOCK": 1024}),
        ]
        results = [compile_launch(launch, "sm_90a") for launch in launches]
    """
    found = {c["kernel"]: problems(Compiled(**c)) for c in _run(code, tmp_path)}
    assert any("on aligned rows (want 128)" in p for p in found["copy_unspecialised"]), found
    assert any("1 atomics (want 0)" in p for p in found["copy_with_atomic"]), found
    assert any("registers > budget" in p or "spills" in p for p in found["register_hungry"]), found
    assert any("does not compile" in p for p in found["does_not_compile"]), found


def test_the_parsers_read_ptxas_and_ptx_as_written():
    report = """ptxas info    : Function properties for k
    8 bytes stack frame, 12 bytes spill stores, 12 bytes spill loads
ptxas info    : Used 255 registers, used 1 barriers"""
    assert parse_ptxas(report) == {"registers": 255, "spill_bytes": 24, "stack_bytes": 8}
    ptx = """
	@%p1 ld.global.v4.b32 { %r1, %r2, %r3, %r4 }, [ %rd1 + 0 ];
	ld.global.L1::evict_last.b64 %rd4, [ %rd3 + 0 ];
	@%p2 st.global.v2.b16 [ %rd5 + 0 ], { %rs1, %rs2 };
	@%p3 atom.global.gpu.acq_rel.add.f32 %f1, [ %rd6 + 0 ], %f2;
	red.global.add.f32 [ %rd7 ], %f3;"""
    assert memory_widths(ptx) == (128, 32, 2)
