"""Bench: the C++ trajectory buffer's append, minibatch gather, save and load, in GB/s.

Rows of realistic sizes (4x64x64 bf16, 4x96x96 bf16, 77x1024 fp16) in a buffer larger than the
last-level cache. Compared in the same run against (a) single-thread memcpy of blocks of the same
total size (torch's copy_ with one thread), interleaved with the buffer's own operations, and
(b) what people do today: a Python list of tensors, torch.stack for a minibatch, random indexing.

    python benches/bench_buffer.py [--quick]
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import report, time_interleaved  # noqa: E402

from pgraft.buffer import TrajectoryBuffer  # noqa: E402

ROWS = {"4x64x64-bf16": ((4, 64, 64), torch.bfloat16), "4x96x96-bf16": ((4, 96, 96), torch.bfloat16),
        "77x1024-fp16": ((77, 1024), torch.float16)}  # fmt: skip
BUFFER_BYTES = 256 * 2**20  # larger than the last-level cache
BATCH = 256


def single_thread(fn):
    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only 4x64x64 bf16 rows")
    args = ap.parse_args()
    cpu = torch.device("cpu")
    rows_out = []
    for name, (shape, dtype) in ROWS.items():
        if args.quick and name != "4x64x64-bf16":
            continue
        row_bytes = torch.empty(shape, dtype=dtype).nbytes
        capacity = BUFFER_BYTES // row_bytes
        batch_bytes = BATCH * row_bytes
        g = torch.Generator().manual_seed(0)
        data = torch.randn((capacity, *shape), generator=g).to(dtype)
        group, reward = torch.arange(capacity) % 64, torch.rand(capacity, generator=g)
        buf = TrajectoryBuffer({"x": (shape, dtype)}, capacity, "refuse")
        chunk = 1024
        t0 = time.perf_counter()
        for s in range(0, capacity, chunk):  # fill once (also measures a large append)
            buf.append(group=group[s : s + chunk], reward=reward[s : s + chunk], round=0, x=data[s : s + chunk])
        fill_gbps = capacity * row_bytes / (time.perf_counter() - t0) / 1e9
        py_list = list(data.unbind(0))  # what people do today: a list of per-row tensors
        idx = torch.randperm(capacity, generator=g)[:BATCH]
        out = {"x": torch.empty((BATCH, *shape), dtype=dtype)}
        start = (capacity - BATCH) // 2  # memcpy baseline: a block of the batch's size, from the buffer's memory
        block_dst = torch.empty((BATCH, *shape), dtype=dtype)
        small = TrajectoryBuffer({"x": (shape, dtype)}, BATCH, "refuse")
        append_src = data[capacity - BATCH :].contiguous()

        def append_once():
            small.compact(torch.zeros(len(small), dtype=torch.bool))
            small.append(group=group[:BATCH], reward=reward[:BATCH], round=0, x=append_src)

        big_src = data[: capacity // 4]
        big_dst = torch.empty_like(big_src)
        timed = time_interleaved(
            {
                "gather_buffer": lambda: buf.gather(idx, out=out, threads=2),
                "gather_python": lambda: torch.stack([py_list[i] for i in idx.tolist()]),
                "memcpy_batch": single_thread(lambda: block_dst.copy_(data[start : start + BATCH])),
                "append_buffer": append_once,
                "memcpy_big": single_thread(lambda: big_dst.copy_(big_src)),
            },
            cpu,
        )
        with tempfile.TemporaryDirectory() as d:
            path = os.path.join(d, "b.pgb")
            t0 = time.perf_counter()
            buf.save(path)
            save_gbps = os.path.getsize(path) / (time.perf_counter() - t0) / 1e9
            t0 = time.perf_counter()
            TrajectoryBuffer.load(path)
            load_gbps = os.path.getsize(path) / (time.perf_counter() - t0) / 1e9
        gb = lambda nbytes, ms: nbytes / (ms * 1e-3) / 1e9  # noqa: E731
        memcpy = gb(batch_bytes, timed["memcpy_batch"])
        rows_out.append({
            "rows": name, "buffer_mib": capacity * row_bytes / 2**20, "batch": BATCH,
            "gather_gbps": gb(batch_bytes, timed["gather_buffer"]),
            "gather_python_gbps": gb(batch_bytes, timed["gather_python"]),
            "memcpy_gbps": memcpy,
            "append_gbps": gb(batch_bytes, timed["append_buffer"]),
            "fill_gbps": fill_gbps, "memcpy_big_gbps": gb(big_src.nbytes, timed["memcpy_big"]),
            "save_gbps": save_gbps, "load_gbps": load_gbps,
            "gather_speedup_vs_python": timed["gather_python"] / timed["gather_buffer"],
            "gather_frac_memcpy": gb(batch_bytes, timed["gather_buffer"]) / memcpy,
            "append_frac_memcpy": gb(batch_bytes, timed["append_buffer"]) / memcpy,
        })  # fmt: skip
    cols = ["rows", "gather_gbps", "gather_python_gbps", "memcpy_gbps", "append_gbps", "save_gbps", "load_gbps",
            "gather_speedup_vs_python", "gather_frac_memcpy", "append_frac_memcpy"]  # fmt: skip
    report("buffer", cpu, rows_out, cols, {"quick": args.quick, "batch": BATCH, "buffer_bytes": BUFFER_BYTES})
    r = rows_out[0]
    print(
        f"gather speedup vs python: {r['gather_speedup_vs_python']:.2f}x, gather {r['gather_frac_memcpy']:.0%} of "
        f"memcpy, append {r['append_frac_memcpy']:.0%} of memcpy"
    )


if __name__ == "__main__":
    main()
