"""Bench: the engine's own overlap. Reward scoring on a worker thread while the next rollout
chunk samples (pgraft/engine/scoring.py), against sampling everything and scoring afterwards.

One round's rollout of the digits task (shipped base and judge, 10 classes × M, DDIM 25 steps,
chunks of ``--chunk``), timed three ways in one run, alternating, median of ``--reps``:

- ``sample``: the rollout alone (network forwards + fused steps);
- ``sequential``: the rollout, then the reward on every chunk (what the loop would do without the
  worker thread);
- ``overlapped``: the loop's way, each finished chunk scored on the worker while the next samples.

The overlap loses nothing to contention when ``overlapped`` ≤ ``sequential``, and hides the
reward entirely when it equals ``sample``. ``--busy`` adds a process spinning on a core.

    python benches/bench_overlap.py [--quick] [--busy]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_busy_flag, busy_core, report  # noqa: E402

from pgraft.config import TaskConfig  # noqa: E402
from pgraft.engine.compose import Single  # noqa: E402
from pgraft.engine.rollout import rollout  # noqa: E402
from pgraft.engine.scoring import OverlappedScorer  # noqa: E402
from pgraft.rewards.base import score  # noqa: E402
from pgraft.tasks import prepare_task  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="M = 16 and 3 repetitions")
    ap.add_argument("--chunk", type=int, default=64, help="rollout chunk (default 64)")
    ap.add_argument("--reps", type=int, default=5)
    add_busy_flag(ap)
    args = ap.parse_args()
    task = prepare_task(TaskConfig(), progress=False)
    schedule = task.schedule(25)
    m, reps = (16, 3) if args.quick else (32, args.reps)
    cond = torch.arange(task.num_classes).repeat_interleave(m)
    policy = Single(task.base)

    def sample(on_chunk=None):
        return rollout(policy, schedule, cond, task.sample_shape, (0,), batch_size=args.chunk, on_chunk=on_chunk)

    def sequential():
        traj = sample()
        for lo in range(0, cond.numel(), args.chunk):
            score(task.reward, task.decode(traj.x0[lo : lo + args.chunk]), cond[lo : lo + args.chunk])

    def overlapped():
        scorer = OverlappedScorer(task.reward, task.decode)
        sample(scorer.submit)
        scorer.results(task.sample_shape)

    impls = {"sample": sample, "sequential": sequential, "overlapped": overlapped}
    times: dict[str, list[float]] = {k: [] for k in impls}
    with busy_core(args.busy):
        for fn in impls.values():
            fn()  # warm-up
        for _ in range(reps):
            for name, fn in impls.items():
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    ms = {k: statistics.median(v) for k, v in times.items()}
    reward_ms = ms["sequential"] - ms["sample"]
    rows = [
        {
            "impl": k,
            "time_ms": v,
            "vs_sequential": ms["sequential"] / v,
            "reward_hidden": (ms["sequential"] - v) / reward_ms,
        }
        for k, v in ms.items()
    ]
    meta = {"quick": args.quick, "busy": args.busy, "samples": cond.numel(), "chunk": args.chunk, "reps": reps,
            "threads": torch.get_num_threads()}  # fmt: skip
    report("overlap", torch.device("cpu"), rows, ["impl", "time_ms", "vs_sequential", "reward_hidden"], meta)
    print(
        f"overlap: {ms['overlapped']:.0f} ms against {ms['sequential']:.0f} ms sequential "
        f"(sampling alone {ms['sample']:.0f} ms; {rows[2]['reward_hidden']:.0%} of the reward's time hidden)"
    )


if __name__ == "__main__":
    main()
