"""Bench: reward-filtered group selection (top-K per group) plus the gather of the selected rows.

Compared on the same inputs in one run: (a) what people do today, a Python loop over groups with
torch.topk and indexing, then torch.cat; (b) pgraft's torch reference (one stable sort, one
index_select); (c) torch.compile of that reference; (d) the C++ row gather of the extension after
the same sort (CPU); (e) the Triton kernels (GPU only). pgraft's paths fill a preallocated
output (as a buffer's arena is filled); the loop allocates its torch.cat result, as users' code does. Effective
bandwidth counts reading and writing the selected rows; the copy it is compared with moves the
same number of bytes, interleaved with the implementations.

    python benches/bench_select.py [--quick] [--busy]

``--busy`` times everything with one other process spinning on a core; every implementation is
also timed on one thread (``speedup_vs_own_1t``).
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (  # noqa: E402
    add_busy_flag,
    busy_core,
    median_of_trials,
    plot,
    report,
    split_single_thread,
    steady_allocator,
    time_with_single_thread,
)

from pgraft.kernels import _backend  # noqa: E402
from pgraft.kernels.select import gather_rows, group_topk, group_topk_reference  # noqa: E402

ROW = (4, 64, 64)
ACCEPTANCE = {"groups": 64, "m": 32, "k": 4}


def python_loop(rewards, rows, k):
    """What people do today: per group, topk on its rewards and index its rows; then torch.cat.

    It allocates its result, as users' code does (on warm pages: common.steady_allocator).
    """
    m = rewards.shape[1]
    picked = []
    for gi in range(rewards.shape[0]):
        top = torch.topk(rewards[gi], k).indices
        picked.append(rows[gi * m + top])
    return torch.cat(picked)


def fused(rewards, rows, k, out, backend):
    idx, _ = group_topk(rewards, k, backend=backend)
    flat = (idx + torch.arange(rewards.shape[0], device=idx.device)[:, None] * rewards.shape[1]).flatten()
    return gather_rows(flat, rows, out=[out], backend=backend)[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the acceptance shape (G=64, M=32, K=4)")
    ap.add_argument("--trials", type=int, default=3, help="fresh allocations per shape (median reported)")
    add_busy_flag(ap)
    args = ap.parse_args()
    steady_allocator()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if args.quick:
        grid = [(64, 32, 4)]
    else:  # at most 4096 rows of 64 KiB (256 MiB) per configuration
        grid = [(64, 4, 4), (64, 16, 4), (64, 32, 4), (64, 32, 8), (32, 128, 4), (16, 256, 4), (16, 256, 32)]
    dispatched = _backend.resolve("auto", device)
    compiled = torch.compile(
        lambda r, rows, k, out: torch.index_select(
            rows,
            0,
            (
                group_topk_reference(r, torch.isfinite(r), k)[0]
                + torch.arange(r.shape[0], device=r.device)[:, None] * r.shape[1]
            ).flatten(),
            out=out,
        ),
        dynamic=True,
    )
    rows_out = []
    for g, m, k in grid:
        traffic = 2 * g * k * torch.Size(ROW).numel() * 4 + g * m * 4

        def measure(trial: int) -> dict[str, float]:
            gen = torch.Generator(device=device).manual_seed(trial)
            rewards = torch.rand(g, m, generator=gen, device=device)
            rows = torch.randn((g * m, *ROW), generator=gen, device=device)
            out = torch.empty((g * k, *ROW), device=device)  # every implementation fills one preallocated output
            impls = {
                "python_loop": lambda: python_loop(rewards, rows, k),
                "torch": lambda: fused(rewards, rows, k, out, "torch"),
                "torch.compile": lambda: compiled(rewards, rows, k, out),
            }
            if device.type == "cpu" and _backend.HAVE_CPP:
                impls["cpp"] = lambda: fused(rewards, rows, k, out, "cpp")
            if device.type == "cuda":
                impls["triton"] = lambda: fused(rewards, rows, k, out, "triton")
            expect = impls["python_loop"]().clone()
            for name, fn in impls.items():
                out.fill_(float("nan"))
                assert torch.equal(fn(), expect), f"{name} selects different rows"
            return time_with_single_thread(impls, device, traffic)

        with busy_core(args.busy):
            timed = median_of_trials(measure, args.trials)
        copy_bw = traffic / (timed.pop("copy") * 1e-3) / 1e9
        timed, own_1t = split_single_thread(timed)
        for name, ms in timed.items():
            gbps = traffic / (ms * 1e-3) / 1e9
            rows_out.append({
                "impl": name, "dispatched": name == dispatched, "batch": g * m, "groups": g, "m": m, "k": k,
                "shape": "x".join(map(str, ROW)), "cfg": False, "time_ms": ms, "gbps": gbps,
                "frac_copy_bw": gbps / copy_bw, "copy_gbps": copy_bw,
                "speedup_vs_python_loop": timed["python_loop"] / ms,
                "speedup_vs_own_1t": own_1t[name] / ms if name in own_1t else float("nan"),
            })  # fmt: skip
    cols = [
        "impl",
        "groups",
        "m",
        "k",
        "time_ms",
        "gbps",
        "frac_copy_bw",
        "speedup_vs_python_loop",
        "speedup_vs_own_1t",
    ]
    meta = {"quick": args.quick, "busy": args.busy, "dispatched": dispatched, "trials": args.trials}
    out = report("select", device, rows_out, cols, meta)
    if not args.quick and not args.busy:
        sel = [r for r in rows_out if r["k"] == 4 and r["groups"] == 64]
        plot(sel, "m", "time_ms", "impl", "top-4 per group + gather, 64 groups, 4x64x64 rows", out / "select.png")
    acc = [r for r in rows_out if r["dispatched"] and all(r[key] == v for key, v in ACCEPTANCE.items())]
    if acc:
        print(f"speedup vs python loop: {acc[0]['speedup_vs_python_loop']:.2f}x")


if __name__ == "__main__":
    main()
