"""A run SIGKILLed mid-round and resumed ends exactly where an uninterrupted run ends.

One process: bit-identical weights, metrics and results (wall-clock fields aside). Two ranks
(deepspeed launcher, the whole process group killed): equal within float tolerance. A corrupt or
incomplete newest checkpoint is detected and skipped in favour of the previous one.
"""

import json
import os
import re
import signal

import pytest
import torch
from launch import finish, metrics, one_rank, results, two_ranks, wait_for, weights, without_timings

# Rounds long enough (40 steps, a checkpoint every 5) that a kill lands inside one.
SETS = ["method.train.steps_per_round=40", "checkpoint.every_steps=5", "checkpoint.keep_last=2"]
MID_ROUND = re.compile(r"ckpt-r(\d+)-s0*[1-9]\d*$")  # a checkpoint taken inside a round


def _mid_round_checkpoints(out, round_=None):
    root = out / "checkpoints"
    names = [p.name for p in root.glob("ckpt-*")] if root.is_dir() else []
    return [n for n in names if (m := MID_ROUND.match(n)) and (round_ is None or int(m.group(1)) == round_)]


def _latest_is_mid_round(out, round_):
    """The `latest` pointer (written after the checkpoint folder's rename) names a checkpoint taken
    inside ``round_``: waiting for the folder alone races the pointer under load."""
    try:
        latest = (out / "checkpoints" / "latest").read_text().strip()
    except FileNotFoundError:
        return False
    return (m := MID_ROUND.match(latest)) is not None and int(m.group(1)) == round_


def _kill_inside_round(proc, out, round_, group=False):
    wait_for(lambda: _latest_is_mid_round(out, round_), proc=proc)
    if group:
        os.killpg(proc.pid, signal.SIGKILL)
    else:
        proc.send_signal(signal.SIGKILL)
    proc.wait()
    latest = (out / "checkpoints" / "latest").read_text().strip()
    state = json.loads((out / "checkpoints" / latest / "state.json").read_text())
    return state


def _same_run(a, b):
    assert metrics(a) == metrics(b)
    ra, rb = results(a), results(b)
    assert ra["resumed_from"] is None and rb["resumed_from"] is not None
    for key in ("models", "history", "param_digests"):
        assert without_timings(ra[key]) == without_timings(rb[key]), key
    assert (a / "models" / "pgraft.safetensors").read_bytes() == (b / "models" / "pgraft.safetensors").read_bytes()


@pytest.fixture(scope="module")
def uninterrupted(train_cache, tmp_path_factory):
    out = tmp_path_factory.mktemp("uninterrupted")
    finish(one_rank(out, train_cache, SETS))
    return out


def test_sigkill_mid_round_twice_then_resume_is_bit_identical(train_cache, uninterrupted, tmp_path):
    out = tmp_path / "run"
    state = _kill_inside_round(one_rank(out, train_cache, SETS), out, round_=0)
    assert state["in_round"] and state["round"] == 0 and 0 < state["step"] < 40  # killed inside round 0
    state = _kill_inside_round(one_rank(out, train_cache, [], resume=True), out, round_=1)
    assert state["in_round"] and state["round"] == 1
    log = finish(one_rank(out, train_cache, [], resume=True))
    assert "resumed from ckpt-r00001" in log
    _same_run(uninterrupted, out)


def test_corrupt_and_incomplete_newest_checkpoints_are_skipped(train_cache, uninterrupted, tmp_path):
    out = tmp_path / "run"
    proc = one_rank(out, train_cache, SETS)
    wait_for(lambda: len(_mid_round_checkpoints(out, 1)) >= 2, proc=proc)  # two complete ones to choose from
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    root = out / "checkpoints"
    newest, previous = sorted(root.glob("ckpt-*"))[-2:][::-1]
    victim = next(p for p in sorted((newest / "ds").rglob("*.pt")))
    blob = bytearray(victim.read_bytes())
    blob[len(blob) // 2] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(blob))
    (root / "ckpt-r99999-s00000001").mkdir()  # an incomplete folder (no manifest) that sorts newest
    (root / ".tmp-ckpt-r99999-s00000002").mkdir()  # a save interrupted before its rename
    log = finish(one_rank(out, train_cache, [], resume=True))
    assert "skipping checkpoint ckpt-r99999-s00000001: no manifest" in log
    assert f"skipping checkpoint {newest.name}: checksum mismatch" in log
    assert f"resumed from {previous.name}" in log
    _same_run(uninterrupted, out)


def test_two_ranks_killed_and_resumed_match_an_uninterrupted_two_rank_run(train_cache, tmp_path):
    sets = SETS + ["method.train.batch_size=2", "method.train.zero_stage=2"]
    ref, out = tmp_path / "ref", tmp_path / "run"
    finish(two_ranks(ref, train_cache, sets))
    state = _kill_inside_round(two_ranks(out, train_cache, sets), out, round_=0, group=True)
    assert state["in_round"] and state["world_size"] == 2
    finish(two_ranks(out, train_cache, [], resume=True))
    for h2, h1 in zip(results(out)["history"], results(ref)["history"], strict=True):
        assert h2["accepted"] == h1["accepted"]
        assert h2["train_loss"] == pytest.approx(h1["train_loss"], rel=1e-6)
        assert h2["rollout_reward_mean"] == pytest.approx(h1["rollout_reward_mean"], rel=1e-6)
    w_ref, w_out = weights(ref), weights(out)
    for k, v in w_ref.items():
        torch.testing.assert_close(w_out[k], v, rtol=1e-5, atol=1e-6)


# DDPO: 40 trajectories a round in minibatches of 2, two inner epochs = 40 steps a round; from
# round 1 on the per-condition windows (4 rewards suffice) shape the advantages, so a resume that
# lost them would differ.
DDPO = [
    "method.algorithm=ddpo", "method.n_i=0", "method.train.batch_size=2", "method.pg.inner_epochs=2",
    "method.pg.stat_min_count=4", "method.pg.clip_range=0.1", "checkpoint.every_steps=5", "checkpoint.keep_last=2",
]  # fmt: skip


def test_a_killed_ddpo_run_resumes_bit_identically(train_cache, tmp_path):
    ref, out = tmp_path / "ref", tmp_path / "run"
    finish(one_rank(ref, train_cache, DDPO))
    state = _kill_inside_round(one_rank(out, train_cache, DDPO), out, round_=0)
    assert state["in_round"] and 0 < state["step"] < 40 and len(state["learner"]["tracker"]) == 10
    state = _kill_inside_round(one_rank(out, train_cache, [], resume=True), out, round_=1)
    assert state["in_round"] and state["round"] == 1
    assert "resumed from ckpt-r00001" in finish(one_rank(out, train_cache, [], resume=True))
    _same_run(ref, out)
