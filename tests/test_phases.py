"""The engine's phase marks (pgraft/engine/phases.py): what benches/bench_round.py splits a round by."""

from __future__ import annotations

import threading
import time

import pytest
import torch

from pgraft.engine.phases import PHASES, PhaseTimer, phase


def test_a_timer_sums_each_phase_from_every_thread_and_marks_cost_nothing_outside_one():
    with phase("select"):  # no timer: only a profiler range
        pass
    with PhaseTimer() as timer:
        with phase("select"):
            time.sleep(0.02)

        def score_on_a_worker():
            with phase("reward"):
                time.sleep(0.01)

        worker = threading.Thread(target=score_on_a_worker)
        with phase("reward"):
            time.sleep(0.01)
        worker.start()
        worker.join()
        with pytest.raises(RuntimeError, match="already active"):
            PhaseTimer().__enter__()
    assert 0.02 <= timer.seconds["select"] < 0.5 and timer.seconds["reward"] >= 0.02  # both threads
    with phase("select"):
        time.sleep(0.01)
    assert timer.seconds["select"] < 0.5  # the finished timer no longer counts
    assert set(timer.seconds) <= set(PHASES)


def test_marks_show_in_a_torch_profiler_trace():
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        with phase("train.forward"):
            torch.ones(8).sum()
    assert "pgraft.train.forward" in {e.key for e in prof.key_averages()}
