"""Launching `pgraft train` runs as real processes for the multi-process and resume tests."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
TINY_TRAIN = ROOT / "configs" / "tiny_train.yaml"
DEEPSPEED = Path(sys.executable).with_name("deepspeed")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DIST_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def env(cache: Path) -> dict:
    """The test process's environment, minus its own process-group variables (a world of one)."""
    e = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    return {**e, "PGRAFT_CACHE": str(cache), "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}


def train_args(out: Path, sets: list[str], resume: bool = False) -> list[str]:
    args = ["train", "--out", str(out)]
    args += ["--resume", str(out)] if resume else ["--config", str(TINY_TRAIN)]
    for s in sets:
        args += ["--set", s]
    return args


def one_rank(out: Path, cache: Path, sets: list[str], resume: bool = False) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "pgraft.cli", *train_args(out, sets, resume)]
    return subprocess.Popen(cmd, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def two_ranks(out: Path, cache: Path, sets: list[str], resume: bool = False) -> subprocess.Popen:
    """The README's command: the deepspeed launcher, 2 CPU ranks on loopback."""
    port = free_port()
    cmd = [str(DEEPSPEED), "--num_accelerators", "2", "--master_addr", "127.0.0.1"]
    cmd += ["--master_port", str(port), "--module", "pgraft.cli", *train_args(out, sets, resume)]
    proc = subprocess.Popen(
        cmd, env=env(cache), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True
    )
    proc.master_port = port
    return proc


def shm_segments(port: int) -> list[Path]:
    """DeepSpeed's CPU all-reduce segments left in /dev/shm by the run on ``port``."""
    return sorted(Path("/dev/shm").glob(f"deepspeed_allreduce_buffer_*_127.0.0.1_{port}_*"))


def raw_ranks(out: Path, cache: Path, sets: list[str]) -> list[subprocess.Popen]:
    """Two rank processes without a launcher (a launcher would kill the survivor itself)."""
    port = free_port()
    procs = []
    for r in range(2):
        e = {**env(cache), "RANK": str(r), "LOCAL_RANK": str(r), "WORLD_SIZE": "2"}
        e.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
        cmd = [sys.executable, "-m", "pgraft.cli", *train_args(out, sets)]
        procs.append(subprocess.Popen(cmd, env=e, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True))
        procs[-1].master_port = port
    return procs


def finish(proc: subprocess.Popen, timeout: float = 240) -> str:
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


def wait_for(predicate, timeout: float = 120, proc: subprocess.Popen | None = None) -> None:
    end = time.time() + timeout
    while not predicate():
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"the run ended (rc {proc.returncode}) before the awaited moment")
        if time.time() > end:
            raise AssertionError("timed out waiting")
        time.sleep(0.02)


def results(out: Path) -> dict:
    return json.loads((out / "results.json").read_text())


def weights(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "models" / "pgraft.safetensors"))


def without_timings(obj):
    """A result with every wall-clock field removed (the only thing a resumed run may change)."""
    if isinstance(obj, dict):
        return {k: without_timings(v) for k, v in obj.items() if "wall" not in k}
    if isinstance(obj, list):
        return [without_timings(v) for v in obj]
    return obj


def metrics(out: Path) -> list[dict]:
    return [without_timings(json.loads(line)) for line in (out / "metrics.jsonl").read_text().splitlines()]


def tiny_train_task(cache: Path):
    """configs/tiny_train.yaml's task (judge and base model) in the cache ``cache``."""
    from pgraft.config import TrainRunConfig, load
    from pgraft.tasks import prepare_task

    return prepare_task(load(TrainRunConfig, TINY_TRAIN).task.model_copy(update={"cache_dir": cache}), progress=False)
