"""Bench: every Triton kernel variant compiled ahead of time for sm_80 and sm_90a (no GPU needed).

The table of the compile gate (pgraft/kernels/aot.py): registers, spills, stack, the widest global
load and store, atomics, PTX and cubin sizes, per kernel × dtype × flags × target. Written to
benches/results/<arch>-aot/compile.{csv,json}; exits 1 if any variant fails the gate.

    python benches/bench_compile.py [--arch sm_90a] [--workers 2]
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from dataclasses import asdict

os.environ.pop("TRITON_INTERPRET", None)  # before the kernels are imported: they must be compilable
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import print_table, write_results  # noqa: E402

from pgraft.kernels.aot import ARCHS, COLUMNS, REGISTER_BUDGET, compile_all, problems  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--arch", action="append", choices=sorted(ARCHS))
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    archs = args.arch or sorted(ARCHS)
    t0 = time.time()
    results = compile_all(archs, args.workers)
    wall = time.time() - t0
    rows = [{**{k: v for k, v in asdict(c).items() if k in COLUMNS}, "gate": "; ".join(problems(c)) or "ok"}
            for c in results]  # fmt: skip
    import triton

    for arch in archs:
        mine = [r for r in rows if r["arch"] == arch]
        print_table(mine, [c for c in COLUMNS if c != "error"] + ["gate"])
        meta = {"target": arch, "triton": triton.__version__, "register_budget": REGISTER_BUDGET,
                "variants": len(mine), "compile_wall_s_all_targets": wall}  # fmt: skip
        write_results("compile", torch.device("cpu"), mine, meta, folder=f"{arch}-aot")
    failing = sum(r["gate"] != "ok" for r in rows)
    print(f"{len(rows)} variants for {', '.join(archs)} in {wall:.1f} s; {failing} failing the gate")
    return 1 if failing else 0


if __name__ == "__main__":
    raise SystemExit(main())
