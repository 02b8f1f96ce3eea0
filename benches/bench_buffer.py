"""Bench: the C++ trajectory buffer's append, minibatch gather, save and load, in GB/s.

Rows of realistic sizes (4x64x64 bf16, 4x96x96 bf16, 77x1024 fp16) in a 256 MiB buffer, larger
than the last-level cache. Gathers walk one epoch the way training does: each call takes the next
minibatch of one shuffled permutation, so no call re-reads rows that an earlier call left in the
cache; every implementation walks the same index sequence, each at its own lag. Compared in the same run, interleaved:

- ``memcpy``: single-thread copy of the next contiguous block of the batch's size from the same
  memory (the issue's reference bandwidth);
- ``python``: what people do today with a replay buffer: a Python list of per-row tensors,
  ``torch.stack`` of the minibatch's rows (the acceptance baseline), into a reused batch as every
  implementation here;
- ``ddpo``: ddpo-pytorch's storage: a list of per-batch tensors, ``torch.cat`` once per epoch,
  ``v[torch.randperm(n)]``, minibatches sliced from the result (its per-epoch cost per minibatch);
- ``index_select``: one contiguous tensor and ``torch.index_select`` (what a careful user writes;
  a calibration point, not a product);
- ``stream``: the two-thread copy of a contiguous block into a reused batch, the ceiling that a
  gather of scattered rows can approach on this machine;
- on a GPU, ``h2d_pinned`` / ``h2d_pageable``: a minibatch gathered and copied to the GPU from a
  pinned staging batch (the buffer's iterator; arenas themselves are pageable) or a pageable one.

    python benches/bench_buffer.py [--quick] [--busy]

``--busy`` times everything with one other process spinning on a core. The buffer's gather and
the Python baseline are also timed on one thread (``*_speedup_vs_own_1t``).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import (  # noqa: E402
    add_busy_flag,
    busy_core,
    median_of_trials,
    report,
    single_thread,
    steady_allocator,
    time_interleaved,
)

from pgraft.buffer import TrajectoryBuffer  # noqa: E402

ROWS = {"4x64x64-bf16": ((4, 64, 64), torch.bfloat16), "4x96x96-bf16": ((4, 96, 96), torch.bfloat16),
        "77x1024-fp16": ((77, 1024), torch.float16)}  # fmt: skip
BUFFER_BYTES = 256 * 2**20  # larger than the last-level cache
BATCH = 256
THREADS = 2


class Walk:
    """Start offsets of successive minibatches through ``n`` rows (wrapping), one per implementation.

    Each walk starts ``lag`` batches further on, so that no implementation reads rows that the one
    timed just before it pulled into the cache.
    """

    def __init__(self, n: int, lag: int):
        self.n, self.at = n, (lag * BATCH) % n - BATCH

    def next(self) -> int:
        self.at = self.at + BATCH if self.at + 2 * BATCH <= self.n else 0
        return self.at


def ddpo_epoch(batches: list[torch.Tensor], g: torch.Generator) -> None:
    """ddpo-pytorch's train step data handling: concatenate the sampled batches, permute, slice."""
    samples = torch.cat(batches)
    samples = samples[torch.randperm(len(samples), generator=g)]
    for s in range(0, len(samples), BATCH):
        samples[s : s + BATCH]


def bench_rows(name: str, shape: tuple, dtype: torch.dtype, trial: int) -> dict:
    row_bytes = torch.empty(shape, dtype=dtype).nbytes
    capacity = BUFFER_BYTES // row_bytes // BATCH * BATCH
    batch_bytes = BATCH * row_bytes
    g = torch.Generator().manual_seed(trial)
    data = torch.randn((capacity, *shape), generator=g).to(dtype)
    group, reward = torch.arange(capacity) % 64, torch.rand(capacity, generator=g)
    buf = TrajectoryBuffer({"x": (shape, dtype)}, capacity, "refuse")
    t0 = time.perf_counter()
    for s in range(0, capacity, 1024):  # fill once (also measures a large append)
        buf.append(group=group[s : s + 1024], reward=reward[s : s + 1024], round=0, x=data[s : s + 1024])
    fill_gbps = capacity * row_bytes / (time.perf_counter() - t0) / 1e9
    per_row = [row.clone() for row in data.unbind(0)]  # a replay buffer's list of separately stored rows
    per_batch = [b.clone() for b in data.split(BATCH)]  # ddpo-pytorch's list of sampled batches
    perm = torch.randperm(capacity, generator=g)
    perm_list = perm.tolist()
    names = ("buffer", "python", "index_select", "memcpy", "stream", "buffer@1t", "python@1t", "h2d_pinned",
             "h2d_pageable")  # fmt: skip
    walks = {k: Walk(capacity, lag=4 * i) for i, k in enumerate(names)}

    def rows_of(walk: str) -> torch.Tensor:
        s = walks[walk].next()
        return perm[s : s + BATCH]

    def python_gather(walk: str = "python"):
        s = walks[walk].next()
        return torch.stack([per_row[i] for i in perm_list[s : s + BATCH]], out=batch)

    def block(walk: str) -> torch.Tensor:  # the next contiguous block: as cold as the gathers' rows
        s = walks[walk].next()
        return data[s : s + BATCH]

    # Every implementation fills a reused batch: a fresh 8 MiB tensor per call would time the
    # allocator (page faults until glibc raises its mmap threshold), not the gather.
    out = {"x": torch.empty((BATCH, *shape), dtype=dtype)}
    batch, block_dst = torch.empty_like(out["x"]), torch.empty_like(out["x"])
    small = TrajectoryBuffer({"x": (shape, dtype)}, BATCH, "refuse")
    append_src = data[capacity - BATCH :].contiguous()

    def append_once():
        small.compact(torch.zeros(len(small), dtype=torch.bool))
        small.append(group=group[:BATCH], reward=reward[:BATCH], round=0, x=append_src)

    timed = time_interleaved(
        {
            "gather_buffer": lambda: buf.gather(rows_of("buffer"), out=out, threads=THREADS),
            "gather_buffer@1t": lambda: buf.gather(rows_of("buffer@1t"), out=out, threads=1),
            "gather_python": python_gather,
            "gather_python@1t": single_thread(lambda: python_gather("python@1t")),
            "gather_index_select": lambda: torch.index_select(data, 0, rows_of("index_select"), out=batch),
            "memcpy": single_thread(lambda: block_dst.copy_(block("memcpy"))),
            "stream": lambda: block_dst.copy_(block("stream")),
            "append_buffer": append_once,
        },
        torch.device("cpu"),
    )
    h2d = host_to_device(buf, rows_of, shape, dtype) if torch.cuda.is_available() else {}
    epochs = [time.perf_counter()]
    for _ in range(3):
        ddpo_epoch(per_batch, g)
        epochs.append(time.perf_counter())
    ddpo_ms = min(b - a for a, b in zip(epochs, epochs[1:])) * 1e3 / (capacity // BATCH)
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "b.pgb")
        t0 = time.perf_counter()
        buf.save(path)
        save_gbps = os.path.getsize(path) / (time.perf_counter() - t0) / 1e9
        t0 = time.perf_counter()
        TrajectoryBuffer.load(path)
        load_gbps = os.path.getsize(path) / (time.perf_counter() - t0) / 1e9
    gb = lambda ms: batch_bytes / (ms * 1e-3) / 1e9  # noqa: E731
    memcpy = gb(timed["memcpy"])
    return {
        "buffer_mib": capacity * row_bytes / 2**20, "batch": BATCH,
        "gather_gbps": gb(timed["gather_buffer"]), "python_gbps": gb(timed["gather_python"]),
        "ddpo_gbps": gb(ddpo_ms), "index_select_gbps": gb(timed["gather_index_select"]),
        "memcpy_gbps": memcpy, "stream_gbps": gb(timed["stream"]), "append_gbps": gb(timed["append_buffer"]),
        "fill_gbps": fill_gbps, "save_gbps": save_gbps, "load_gbps": load_gbps,
        "gather_speedup_vs_python": timed["gather_python"] / timed["gather_buffer"],
        "gather_speedup_vs_own_1t": timed["gather_buffer@1t"] / timed["gather_buffer"],
        "python_speedup_vs_own_1t": timed["gather_python@1t"] / timed["gather_python"],
        "gather_speedup_vs_ddpo": ddpo_ms / timed["gather_buffer"],
        "index_select_speedup_vs_python": timed["gather_python"] / timed["gather_index_select"],
        "stream_speedup_vs_python": timed["gather_python"] / timed["stream"],
        "gather_frac_memcpy": gb(timed["gather_buffer"]) / memcpy,
        "gather_frac_stream": timed["stream"] / timed["gather_buffer"],
        "append_frac_memcpy": gb(timed["append_buffer"]) / memcpy,
        **{f"{k}_gbps": gb(v) for k, v in h2d.items()},
        **({"h2d_pinned_speedup_vs_pageable": h2d["h2d_pageable"] / h2d["h2d_pinned"]} if h2d else {}),
    }  # fmt: skip


def host_to_device(buf: TrajectoryBuffer, rows_of, shape: tuple, dtype: torch.dtype) -> dict[str, float]:
    """A minibatch's trip to the GPU (ms): gathered into the buffer's pinned staging batch and
    copied with non_blocking=True (what training does), against the same copy from pageable memory."""
    gpu = torch.device("cuda")
    pinned = {"x": torch.empty((BATCH, *shape), dtype=dtype, pin_memory=True)}
    pageable = {"x": torch.empty((BATCH, *shape), dtype=dtype)}
    dst = torch.empty((BATCH, *shape), dtype=dtype, device=gpu)

    def trip(out: dict, walk: str):
        buf.gather(rows_of(walk), out=out, threads=THREADS)
        dst.copy_(out["x"], non_blocking=True)

    return time_interleaved(
        {"h2d_pinned": lambda: trip(pinned, "h2d_pinned"), "h2d_pageable": lambda: trip(pageable, "h2d_pageable")}, gpu
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only 4x64x64 bf16 rows")
    ap.add_argument("--trials", type=int, default=3, help="fresh allocations per row size (median reported)")
    add_busy_flag(ap)
    args = ap.parse_args()
    steady_allocator()
    with busy_core(args.busy):
        rows_out = [
            {"rows": name, **median_of_trials(lambda trial: bench_rows(name, *spec, trial), args.trials)}  # noqa: B023
            for name, spec in ROWS.items()
            if not args.quick or name == "4x64x64-bf16"
        ]
    cols = ["rows", "gather_gbps", "python_gbps", "ddpo_gbps", "index_select_gbps", "memcpy_gbps", "stream_gbps",
            "append_gbps", "save_gbps", "load_gbps", "gather_speedup_vs_python", "gather_speedup_vs_ddpo",
            "stream_speedup_vs_python", "gather_frac_memcpy", "append_frac_memcpy", "gather_speedup_vs_own_1t",
            "python_speedup_vs_own_1t"]  # fmt: skip
    if torch.cuda.is_available():
        cols += ["h2d_pinned_gbps", "h2d_pageable_gbps", "h2d_pinned_speedup_vs_pageable"]
    meta = {"quick": args.quick, "busy": args.busy, "batch": BATCH, "buffer_bytes": BUFFER_BYTES,
            "gather_threads": THREADS, "trials": args.trials}  # fmt: skip
    report("buffer", torch.device("cpu"), rows_out, cols, meta)
    r = rows_out[0]
    print(
        f"gather speedup vs python: {r['gather_speedup_vs_python']:.2f}x, gather {r['gather_frac_memcpy']:.0%} of "
        f"memcpy, append {r['append_frac_memcpy']:.0%} of memcpy"
    )


if __name__ == "__main__":
    main()
