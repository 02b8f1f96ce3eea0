"""Global selection across 2 ranks (gloo, two processes) equals single-process selection."""

import json
import os
import subprocess
import sys
import textwrap

import pytest
import torch

from pgraft.buffer import TrajectoryBuffer, _top_k_keep

WORKER = textwrap.dedent(
    """
    import json, sys, torch, torch.distributed as dist
    from pgraft.buffer import TrajectoryBuffer, global_select
    rank, world, init, out, rule, k = int(sys.argv[1]), 2, sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    data = json.load(open(out + ".in"))[rank]
    buf = TrajectoryBuffer({"c": ((), torch.int64)}, 64)
    buf.append(group=torch.tensor(data["group"]), reward=torch.tensor(data["reward"], dtype=torch.float32),
               round=0, rank=rank, c=torch.tensor(data["c"]))
    global_select(buf, rule, k=k)
    json.dump(buf.field("c").tolist(), open(f"{out}.{rank}", "w"))
    dist.destroy_process_group()
    """
)


def _data(seed):
    g = torch.Generator().manual_seed(seed)
    per_rank = []
    for rank in range(2):
        n = 10 + 3 * rank
        reward = torch.randint(0, 4, (n,), generator=g).float() / 4  # many ties, across ranks too
        reward[torch.randint(0, n, (2,), generator=g)] = float("nan")
        per_rank.append({
            "group": torch.randint(0, 3, (n,), generator=g).tolist(),
            "reward": reward.tolist(),
            "c": (torch.arange(n) + 100 * rank).tolist(),
        })  # fmt: skip
    return per_rank


@pytest.mark.parametrize("rule,k,seed", [("top_k", 2, 0), ("best_of_n", 1, 1), ("top_k", 3, 2)])
def test_two_rank_global_selection_equals_single_process(tmp_path, rule, k, seed):
    data = _data(seed)
    out = str(tmp_path / "sel")
    json.dump(data, open(out + ".in", "w"))
    init = f"file://{tmp_path / 'rendezvous'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [
        subprocess.Popen([sys.executable, "-c", WORKER, str(r), init, out, rule, str(k)], env=env) for r in range(2)
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0]
    kept = json.load(open(out + ".0")) + json.load(open(out + ".1"))

    single = TrajectoryBuffer({"c": ((), torch.int64)}, 64)
    for rank, d in enumerate(data):  # the same rows, in rank order, in one buffer
        single.append(group=torch.tensor(d["group"]), reward=torch.tensor(d["reward"], dtype=torch.float32),
                      round=0, rank=rank, c=torch.tensor(d["c"]))  # fmt: skip
    single.select(rule, k=k)
    assert kept == single.field("c").tolist()


def test_global_rule_matches_the_cpp_rule_on_random_tables():
    for seed in range(20):
        g = torch.Generator().manual_seed(seed)
        n = 40
        groups = torch.randint(0, 5, (n,), generator=g)
        rewards = (torch.randint(0, 5, (n,), generator=g).float() / 5).masked_fill(
            torch.rand(n, generator=g) < 0.1, float("nan")
        )
        buf = TrajectoryBuffer({"c": ((), torch.int64)}, n)
        buf.append(group=groups, reward=rewards, round=0, c=torch.arange(n))
        buf.select("top_k", k=2)
        keep = _top_k_keep(groups.double(), rewards.double(), 2)
        assert torch.nonzero(keep).flatten().tolist() == buf.field("c").tolist()
