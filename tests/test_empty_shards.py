"""Ranks that get no rows: every collective helper with an empty shard, on 3 gloo processes.

A rank holds no rows whenever a round has fewer rollout chunks than there are ranks (2 chunks on 8
GPUs, say): it samples nothing, scores nothing and still takes part in every collective. Each
helper must then give every rank exactly what one process gives. The workers compare against
single-process references computed in the same worker, so a failure names the helper.
"""

import json
import math
import os
import subprocess
import sys
import textwrap

from launch import DEEPSPEED, env, finish, free_port, results, train_args

WORKER = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    rank, world, init, out = int(sys.argv[1]), 3, sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    from pgraft.buffer import TrajectoryBuffer, global_select
    from pgraft.config import EvalConfig, UNetConfig
    from pgraft.engine.compose import Single
    from pgraft.engine.distributed import all_gather_rows, barrier, broadcast_object, shard_range, shard_slice
    from pgraft.engine.evaluate import evaluate
    from pgraft.engine.problem import Problem
    from pgraft.engine.policy_gradient import _global_max
    from pgraft.engine.rollout import rollout
    from pgraft.engine.train import _mean_over_ranks
    from pgraft.models.schedule import Schedule
    from pgraft.models.unet import ClassConditionalUNet
    from pgraft.engine.scoring import OverlappedScorer
    from pgraft.tasks.digits import decode

    report = {}
    mine = 0 if rank == 2 else rank + 1  # rank 2 holds nothing
    for dtype in (torch.float32, torch.bfloat16, torch.int64, torch.uint8, torch.bool):
        t = torch.full((mine, 3, 2), rank + 1).to(dtype)
        got = all_gather_rows(t)
        report[f"gather {dtype}"] = [list(got.shape), str(got.dtype), got.float().flatten().tolist()]
    report["gather 1-d"] = all_gather_rows(torch.arange(mine, dtype=torch.int64)).tolist()
    report["gather all empty"] = list(all_gather_rows(torch.empty((0, 5))).shape)
    report["broadcast"] = broadcast_object({"from": rank} if rank == 0 else None)
    barrier()
    report["mean"] = _mean_over_ranks(float(rank))
    report["max"] = _global_max(float(rank))
    report["shard_range"] = shard_range(4, 2)  # 2 chunks for 3 ranks
    report["shard_slice"] = shard_slice(2)  # a global batch of 2 rows for 3 ranks

    # the buffer's global selection with an empty rank
    buf = TrajectoryBuffer({"c": ((), torch.int64)}, 8)
    if mine:
        g = torch.Generator().manual_seed(rank)
        buf.append(group=torch.arange(mine) % 2, reward=torch.rand(mine, generator=g), round=0, rank=rank,
                   c=torch.arange(mine) + 10 * rank)
    global_select(buf, "top_k", k=1)
    report["global_select"] = buf.field("c").tolist()

    # a rollout and an evaluation with one chunk for 3 ranks: ranks 1 and 2 sample nothing
    torch.manual_seed(0)
    cfg = UNetConfig(block_out_channels=(8, 16), layers_per_block=1, attention=False, num_train_timesteps=100)
    model = ClassConditionalUNet.from_config(cfg, image_size=8, num_classes=2).eval().requires_grad_(False)
    sched = Schedule.from_scheduler_config(model.scheduler_config, 4, "ddim", 1.0)
    conds = torch.arange(2).repeat_interleave(3)
    part = rollout(Single(model), sched, conds, (1, 8, 8), (0, "t"), batch_size=8, shard=True)
    scorer = OverlappedScorer(lambda x, c: x.mean(dim=(1, 2, 3)), decode)
    for lo in range(0, part.x0.shape[0], 8):
        scorer.submit(part.x0[lo : lo + 8], part.cond[lo : lo + 8])
    images, rewards = scorer.results((1, 8, 8))
    report["rollout rows"] = [part.x0.shape[0], images.shape[0], rewards.shape[0]]
    whole = part.gathered()
    alone = rollout(Single(model), sched, conds, (1, 8, 8), (0, "t"), batch_size=8)
    report["rollout equal"] = bool(torch.equal(whole.x0, alone.x0) and torch.equal(whole.cond, alone.cond))
    brightness = lambda x, c: x.mean(dim=(1, 2, 3))
    held_out = EvalConfig(samples_per_class=3, batch_size=8)
    problem = Problem(base=model, reward=brightness, decode=decode, num_conditions=2, sample_shape=(1, 8, 8))
    ev = evaluate(Single(model), sched, problem, held_out)
    report["eval rewards"] = ev.rewards.tolist()
    json.dump(report, open(f"{out}.{rank}", "w"))
    dist.destroy_process_group()
    """
)


PER_RANK = {  # what differs by rank: 2 chunks (or a 2-row batch, or 1 chunk) shared by 3 ranks
    "shard_range": [[0, 0], [0, 2], [2, 4]],
    "shard_slice": [[0, 0], [0, 1], [1, 2]],
    "rollout rows": [[0, 0, 0], [0, 0, 0], [6, 6, 6]],
}


def test_every_collective_helper_survives_an_empty_rank(tmp_path):
    out = str(tmp_path / "report")
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(r), init, out], env=env) for r in range(3)]
    assert [p.wait(timeout=240) for p in procs] == [0, 0, 0]
    reports = [json.load(open(f"{out}.{r}")) for r in range(3)]
    kept = [rep.pop("global_select") for rep in reports]  # each rank keeps its own accepted rows
    assert sum(len(k) for k in kept) == 2 and 11 in kept[1] and kept[2] == []  # top-1 of each of 2 groups
    for key, expect in PER_RANK.items():
        assert [rep.pop(key) for rep in reports] == expect, key
    assert reports[0] == reports[1] == reports[2]  # every other result is the same on every rank
    rep = reports[0]
    # rank 0 gave 1 row of 1s, rank 1 two rows of 2s, rank 2 none
    for dtype in ("torch.float32", "torch.bfloat16", "torch.int64", "torch.uint8", "torch.bool"):
        shape, name, values = rep[f"gather {dtype}"]
        assert shape == [3, 3, 2] and name == dtype
        assert values == ([1.0] * 6 + [2.0] * 12 if dtype != "torch.bool" else [1.0] * 18), dtype
    assert rep["gather 1-d"] == [0, 0, 1] and rep["gather all empty"] == [0, 5]
    assert rep["broadcast"] == {"from": 0}
    assert rep["mean"] == 1.0 and rep["max"] == 2.0
    assert rep["rollout equal"] is True  # the gathered shards are the 1-process rollout
    assert len(rep["eval rewards"]) == 6 and all(math.isfinite(r) for r in rep["eval rewards"])


def test_three_rank_training_with_fewer_chunks_than_ranks(train_cache, tmp_path):
    """`pgraft train` on 3 ranks where every round has 2 rollout chunks and the evaluation 2: one
    rank samples nothing in each, still trains on its slice of every global batch, and the three
    end with identical weights."""
    out = tmp_path / "run"
    sets = ["method.rollout_batch=20", "eval.batch_size=20", "method.speed.sample_precision=fp32"]
    cmd = [str(DEEPSPEED), "--num_accelerators", "3", "--master_addr", "127.0.0.1", "--master_port", str(free_port())]
    cmd += ["--module", "pgraft.cli", *train_args(out, sets)]
    proc = subprocess.Popen(cmd, env=env(train_cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert "3 rank(s); weights identical across ranks: True" in finish(proc, timeout=400)
    r = results(out)
    assert r["world_size"] == 3 and len(set(r["param_digests"])) == 1
    assert all(h["samples_drawn"] == 40 and h["accepted"] == 20 for h in r["history"])
    assert math.isfinite(r["models"]["pgraft"]["reward_mean"])
