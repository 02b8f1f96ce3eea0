"""Shared bench plumbing: device naming, timing, copy bandwidth, GPU telemetry, CSV/JSON/plot output.

Performance is quoted as ratios measured side by side in one run; absolute numbers on shared
machines are noisy. Each bench writes benches/results/<device>/<name>.{csv,json,png}.
"""

from __future__ import annotations

import contextlib
import csv
import ctypes
import ctypes.util
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import torch

from pgraft.machine import cpu_model

ROOT = Path(__file__).resolve().parent


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        raw = torch.cuda.get_device_name(device)
    else:
        raw = cpu_model() + f"-{os.cpu_count()}cpu"
    return re.sub(r"[^a-z0-9]+", "-", raw.lower()).strip("-")


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def steady_allocator() -> None:
    """Pins glibc's allocator in the state a long-running process settles into.

    By default glibc serves allocations above a moving threshold with fresh mmap'd pages and hands
    freed heap memory back to the kernel, so whether a baseline that allocates its result (a
    torch.cat of 16 MiB, say) pays thousands of page faults depends on the process's allocation
    history: the same run measured 2.3 ms or 12.7 ms. With the threshold fixed at glibc's maximum
    (32 MiB on 64-bit) and no trimming, freed memory is reused and every implementation is timed
    on warm pages. This favours the allocating baselines; pgraft's paths fill preallocated outputs.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c"))
        libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GiB of freed memory
        libc.mallopt(-3, 2**25)  # M_MMAP_THRESHOLD (fixing it also turns off its dynamic adjustment)
    except (OSError, AttributeError):  # not glibc: nothing to pin
        pass


def cache_flusher(device: torch.device) -> Callable[[], object]:
    """Evicts the caches (untimed, before each timed call) by streaming through twice the last-level cache.

    Without it each implementation starts from whatever the one timed before it left: rows it
    pulled in (flattering the next reader of the same rows) or dirty lines still to be written back
    (taxing it). A read evicts dirty lines on the CPU; on a GPU the L2 is flushed by a write, as
    triton.testing.do_bench does.
    """
    if device.type == "cuda":
        scratch = torch.empty(256 * 2**20, dtype=torch.int8, device=device)
        return scratch.zero_
    scratch = torch.ones(2 * _llc_bytes() // 4)
    return scratch.sum


def _llc_bytes() -> int:
    sizes = [32 * 2**20]
    for p in Path("/sys/devices/system/cpu/cpu0/cache").glob("index*/size"):
        text = p.read_text().strip()
        mult = {"K": 2**10, "M": 2**20}.get(text[-1:], 1)
        sizes.append(int(text.rstrip("KM")) * mult)
    return max(sizes)


def time_interleaved(
    fns: dict[str, Callable[[], object]], device: torch.device, *, min_reps: int = 7, budget_s: float = 2.0
) -> dict[str, float]:
    """Median wall time (ms) of each function, calling them in turn round after round.

    Interleaving gives every implementation (and the copy it is compared with) the same machine-load
    conditions, and the caches are flushed before every timed call, so each starts cold and clean
    (as after a model's forward pass); back-to-back repetitions would let a small copy run from a
    hot cache.
    """
    flush = cache_flusher(device)
    for fn in fns.values():  # warm-up (and first-call compilation)
        fn()
    sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    while min(map(len, times.values())) < min_reps or (
        time.perf_counter() - start < budget_s and len(times[next(iter(times))]) < 200
    ):
        for name, fn in fns.items():
            flush()
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            times[name].append((time.perf_counter() - t0) * 1e3)
    return {k: statistics.median(v) for k, v in times.items()}


def median_of_trials(measure: Callable[[int], dict[str, float]], trials: int) -> dict[str, float]:
    """Per-key median of ``measure(trial)`` over trials, each on freshly allocated inputs.

    Where the inputs land in physical memory changes memory-bound timings by up to 1.5x from one
    allocation to the next on a virtual machine; a single allocation would quote one draw.
    """
    runs = [measure(t) for t in range(trials)]
    return {k: statistics.median(r[k] for r in runs) for k in runs[0]}


def copy_fn(traffic_bytes: int, device: torch.device) -> Callable[[], object]:
    """A plain copy whose read + write traffic equals ``traffic_bytes`` (float32 elements)."""
    n = max(1, traffic_bytes // 8)
    src = torch.randn(n, device=device)
    dst = torch.empty_like(src)
    return lambda: dst.copy_(src)


def telemetry() -> dict:
    """GPU memory and utilisation from nvidia-ml-py, or why there is none."""
    try:
        import pynvml

        pynvml.nvmlInit()
    except Exception as exc:  # NVMLError_LibraryNotFound where there is no GPU
        return {"telemetry": "no GPU telemetry", "reason": type(exc).__name__}
    try:
        handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device() if torch.cuda.is_available() else 0)
        mem = pynvml.nvmlDeviceGetMemoryInfo(handle)
        util = pynvml.nvmlDeviceGetUtilizationRates(handle)
        return {
            "telemetry": "nvml",
            "gpu_name": pynvml.nvmlDeviceGetName(handle),
            "memory_used_mib": mem.used / 2**20,
            "memory_total_mib": mem.total / 2**20,
            "gpu_util_percent": util.gpu,
            "memory_util_percent": util.memory,
        }
    finally:
        pynvml.nvmlShutdown()


class GpuSampler:
    """GPU utilisation and memory sampled by nvidia-ml-py every ``every_s`` seconds on a thread,
    for the duration of a ``with`` block (a snapshot misses a round's peaks); on a machine
    without a GPU it records why there is no telemetry and costs nothing."""

    def __init__(self, every_s: float = 0.05):
        self.every_s, self.util, self.mem_mib, self.reason = every_s, [], [], None

    def __enter__(self) -> "GpuSampler":
        import threading

        try:
            import pynvml

            pynvml.nvmlInit()
            self._nvml = pynvml
            self._handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        except Exception as exc:  # NVMLError_LibraryNotFound without a GPU
            self.reason = f"no GPU telemetry ({type(exc).__name__})"
            return self
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.util.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            self.mem_mib.append(self._nvml.nvmlDeviceGetMemoryInfo(self._handle).used / 2**20)

    def __exit__(self, *exc) -> None:
        if self.reason is None:
            self._stop.set()
            self._thread.join()
            self._nvml.nvmlShutdown()

    def summary(self) -> dict:
        if self.reason is not None or not self.util:
            return {"gpu_util_mean_percent": float("nan"), "gpu_memory_max_mib": float("nan")}
        return {"gpu_util_mean_percent": statistics.fmean(self.util), "gpu_memory_max_mib": max(self.mem_mib)}


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.3f}" if isinstance(v, float) else str(v)

    widths = [max(len(c), *(len(fmt(r.get(c, ""))) for r in rows)) for c in columns]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for r in rows:
        print("  ".join(fmt(r.get(c, "")).rjust(w) for c, w in zip(columns, widths)))


def write_results(name: str, device: torch.device, rows: list[dict], meta: dict, folder: str | None = None) -> Path:
    """``<name>.csv`` and ``.json`` under benches/results/<folder> (default: the device's name)."""
    # PGRAFT_BENCH_RESULTS: another root (the GPU check's CPU rehearsal leaves the committed results alone)
    out = Path(os.environ.get("PGRAFT_BENCH_RESULTS", ROOT / "results")) / (folder or device_name(device))
    out.mkdir(parents=True, exist_ok=True)
    columns = list(rows[0].keys())
    with open(out / f"{name}.csv", "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=columns)
        w.writeheader()
        w.writerows(rows)
    info = {
        "device": device_name(device),
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        **telemetry(),
        **meta,
    }
    (out / f"{name}.json").write_text(json.dumps({"meta": info, "rows": rows}, indent=2) + "\n")
    return out


def plot(rows: list[dict], x: str, y: str, series: str, title: str, path: Path, logy: bool = True) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for name in dict.fromkeys(r[series] for r in rows):
        pts = sorted((r[x], r[y]) for r in rows if r[series] == name)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax.set_xlabel(x)
    ax.set_ylabel(y)
    ax.set_title(title)
    if logy:
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    plt.close(fig)


def report(name: str, device: torch.device, rows: list[dict], columns: list[str], meta: dict) -> Path:
    """Print the device line and the table, then write the CSV/JSON; returns the results folder.

    A ``--quick`` run writes ``<name>_quick.*`` and a ``--busy`` run ``<name>[_quick]_busy.*``, so
    neither replaces a full quiet run's results.
    """
    extra = f"  dispatched: {meta['dispatched']}" if "dispatched" in meta else ""
    busy = "  one core busy (a spinning process)" if meta.get("busy") else ""
    print(f"device: {device_name(device)}  ({telemetry()['telemetry']}){extra}{busy}")
    print_table(rows, columns)
    name = f"{name}_quick" if meta.get("quick") else name
    return write_results(f"{name}_busy" if meta.get("busy") else name, device, rows, meta)


def add_busy_flag(ap) -> None:
    ap.add_argument(
        "--busy",
        action="store_true",
        help="time with one competing process spinning on a core (a shared node: reward workers, loaders)",
    )


@contextlib.contextmanager
def busy_core(enabled: bool = True):
    """With ``enabled``, one process spinning (``while True: pass``) for the duration; it is
    killed on the way out, whatever happens inside."""
    if not enabled:
        yield None
        return
    proc = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        time.sleep(0.5)  # running before the first timed call
        yield proc
    finally:
        proc.kill()
        proc.wait()


def single_thread(fn: Callable[[], object]) -> Callable[[], object]:
    """``fn`` run with torch (and the extension's loops) on one thread: each implementation's own
    single-thread reference, timed in the same interleaving."""

    def run():
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(threads)

    return run


def with_single_thread(impls: dict[str, Callable[[], object]], device: torch.device) -> dict:
    """``impls`` plus ``<name>@1t``, each on one thread (CPU only)."""
    if device.type != "cpu":
        return dict(impls)
    return {**impls, **{f"{k}@1t": single_thread(fn) for k, fn in impls.items()}}


def split_single_thread(timed: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
    """(the implementations' times, their single-thread times by implementation name)."""
    own = {k[: -len("@1t")]: v for k, v in timed.items() if k.endswith("@1t")}
    return {k: v for k, v in timed.items() if not k.endswith("@1t")}, own


def time_with_single_thread(
    impls: dict[str, Callable[[], object]], device: torch.device, copy_bytes: int
) -> dict[str, float]:
    """:func:`time_interleaved` of ``impls``, each also on one thread (``<name>@1t``), and a plain
    copy of ``copy_bytes`` (``copy``), all in one interleaving."""
    return time_interleaved({**with_single_thread(impls, device), "copy": copy_fn(copy_bytes, device)}, device)
