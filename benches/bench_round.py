"""Bench: one whole round of P-GRAFT, the engine against the naive loop, at equal work.

A user waits for rounds, not kernels: rollout (network forwards and sampler arithmetic), reward,
selection, buffer and training. This bench runs one round on digits and on animals (the shipped
bases and judges) twice in one process, on identical work:

- ``pgraft``: the engine as a user runs it, ``PGraftLoop(...).run()`` (its DeepSpeed engine is
  built before the clock starts, as it is once per run);
- ``naive``: the common pattern, written plainly (RAFT-diffusion's and ddpo-pytorch's shape): per
  condition, its M samples through diffusers' ``DDIMScheduler.step``, classifier-free guidance as
  two forward passes when it is on; rewards computed after sampling; top-K per condition in a
  Python loop; a Python list of accepted tensors stacked into minibatches; a plain PyTorch loop
  (AdamW, the same loss and gradient clipping).

Equal work: the naive loop consumes the very noise the engine draws (per rollout chunk, x_T then
one tensor per step, from the same seeded generators), so both produce the same samples up to
float rounding, accept the same rows (the bench reports the agreement) and run the same number of
optimizer steps at the same batch size. Each round is split into phases (pgraft/engine/phases.py:
sampling forward, step arithmetic, reward, selection, buffer, training forward, backward,
optimizer) by the engine's own phase marks, which the naive loop uses too.

    python benches/bench_round.py [--quick] [--tasks digits animals] [--reps 3] [--profile]

Writes benches/results/<device>/round[_quick].{csv,json} and round[_quick].png (stacked phases);
``--profile`` also runs one more round of each implementation under torch.profiler and writes the
trace summary (the phases and the ops with the most self CPU time) to round_profile_<task>.txt.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import report  # noqa: E402

from pgraft.config import PGraftConfig, TaskConfig  # noqa: E402
from pgraft.engine.phases import PHASES, PhaseTimer, phase  # noqa: E402
from pgraft.engine.rounds import PGraftLoop  # noqa: E402
from pgraft.engine.train import dsm_loss  # noqa: E402
from pgraft.seeding import generator  # noqa: E402
from pgraft.tasks import Task, prepare_task  # noqa: E402

N_I = 6  # the demos' P-GRAFT level (of 25 DDIM steps)


def work(quick: bool, guidance: float) -> PGraftConfig:
    """One round at the demo's shape (quick: fewer samples and steps)."""
    m, k, steps = (16, 2, 30) if quick else (64, 8, 100)
    return PGraftConfig.model_validate(
        {
            "n_i": N_I,
            "samples_per_condition": m,
            "rounds": 1,
            "select": {"rule": "top_k", "k": k},
            "train": {"batch_size": 64, "steps_per_round": steps, "lr": 1e-4},
            "sampler": {"steps": 25, "guidance_scale": guidance},
        }
    )


def pgraft_round(task: Task, cfg: PGraftConfig) -> dict:
    loop = PGraftLoop(task.base, task.reward, task.decode, task.num_classes, task.sample_shape, cfg,
                      null_label=task.base.null_label, progress=False)  # fmt: skip
    with PhaseTimer() as timer:
        t0 = time.perf_counter()
        loop.run()
        wall = time.perf_counter() - t0
    x_ni = loop.buffer.field("x_ni")
    return {"wall_s": wall, "phases": dict(timer.seconds), "accepted": x_ni}


def engine_noise(n: int, shape: tuple[int, ...], seed: tuple, chunk: int, steps: int):
    """The engine's draws for n trajectories (pgraft/engine/rollout.py): per chunk of ``chunk``
    rows a generator seeded by (seed, "chunk", c), x_T first, then one tensor per step."""
    xs, zs = [], []
    for c, lo in enumerate(range(0, n, chunk)):
        gen = generator(*seed, "chunk", c)
        rows = (min(chunk, n - lo), *shape)
        xs.append(torch.randn(rows, generator=gen))
        zs.append(torch.stack([torch.randn(rows, generator=gen) for _ in range(steps)], dim=1))
    return torch.cat(xs), torch.cat(zs)


def naive_round(task: Task, cfg: PGraftConfig) -> dict:
    """The plain loop (module docstring). Timed from the first noise draw to the last optimizer step."""
    from diffusers import DDIMScheduler

    base, m, s = task.base, cfg.samples_per_condition, cfg.sampler
    known = set(inspect.signature(DDIMScheduler.__init__).parameters)
    sched = DDIMScheduler(**{k: v for k, v in base.scheduler_config.items() if k in known})
    sched.set_timesteps(s.steps)
    guided = s.guidance_scale != 1.0
    with PhaseTimer() as timer:
        t0 = time.perf_counter()
        with phase("sample.step"):
            x_t, noise = engine_noise(task.num_classes * m, task.sample_shape, (cfg.seed, "rollout", 0),
                                      cfg.rollout_batch, s.steps)  # fmt: skip
        finals, states = [], []
        for c in range(task.num_classes):
            rows = slice(c * m, (c + 1) * m)
            x, cond = x_t[rows], torch.full((m,), c)
            with torch.no_grad():
                for i, t in enumerate(sched.timesteps):
                    tt = t.expand(m)
                    with phase("sample.forward"):
                        out = base(x, tt, cond)
                        if guided:
                            uncond = base(x, tt, torch.full_like(cond, base.null_label))
                    with phase("sample.step"):
                        if guided:
                            out = uncond + s.guidance_scale * (out - uncond)
                        x = sched.step(out, t, x, eta=s.eta, variance_noise=noise[rows, i]).prev_sample
                    if s.steps - i - 1 == cfg.n_i:
                        states.append(x)
            finals.append(x)
        labels = torch.arange(task.num_classes).repeat_interleave(m)
        with phase("reward"):
            rewards = task.reward(task.decode(torch.cat(finals)), labels)
        with phase("select"):
            accepted = []
            for c in range(task.num_classes):
                best = rewards[c * m : (c + 1) * m].topk(cfg.select.k).indices.sort().values
                accepted += [(states[c][j], c) for j in best.tolist()]
        model = copy.deepcopy(base).train().requires_grad_(True)
        opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
        level = task.schedule(s.steps).state_timestep(cfg.n_i)
        alphas = task.schedule(s.steps).alphas_cumprod
        gen, order = torch.Generator().manual_seed(cfg.seed), []
        for _ in range(cfg.train.steps_per_round):
            with phase("buffer"):
                if len(order) < cfg.train.batch_size:
                    order = torch.randperm(len(accepted), generator=gen).tolist()
                batch, order = order[: cfg.train.batch_size], order[cfg.train.batch_size :]
                x_s = torch.stack([accepted[j][0] for j in batch])
                cond = torch.tensor([accepted[j][1] for j in batch])
            with phase("train.forward"):
                loss = dsm_loss(model, x_s, cond, level, alphas, gen, t_min=level + 1,
                                prediction_type=base.prediction_type)  # fmt: skip
            with phase("train.backward"):
                opt.zero_grad(set_to_none=True)
                loss.backward()
            with phase("train.optimizer"):
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
                opt.step()
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "phases": dict(timer.seconds), "accepted": torch.stack([a for a, _ in accepted])}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of one implementation's accepted rows that the other accepted too (to 1e-4)."""
    d = torch.cdist(a.flatten(1).double(), b.flatten(1).double()) / a[0].numel() ** 0.5
    return float((d.min(dim=1).values < 1e-4).double().mean())


def measure(task: Task, cfg: PGraftConfig, reps: int) -> list[dict]:
    """Both implementations, alternating, ``reps`` times each; the median round per implementation."""
    runs = {"pgraft": [], "naive": []}
    for _ in range(reps):
        runs["naive"].append(naive_round(task, cfg))
        runs["pgraft"].append(pgraft_round(task, cfg))
    same = agreement(runs["pgraft"][0]["accepted"], runs["naive"][0]["accepted"])
    rows = []
    samples = task.num_classes * cfg.samples_per_condition
    for impl, rs in runs.items():
        best = sorted(rs, key=lambda r: r["wall_s"])[len(rs) // 2]
        ph = best["phases"]
        sampling = ph.get("sample.forward", 0) + ph.get("sample.step", 0)
        training = sum(ph.get(p, 0) for p in ("train.forward", "train.backward", "train.optimizer"))
        rows.append(
            {
                "task": task.name,
                "impl": impl,
                "round_s": best["wall_s"],
                "round_s_all": [r["wall_s"] for r in rs],
                "rollout_samples_per_s": samples / sampling if sampling else float("nan"),
                "optimizer_steps_per_s": cfg.train.steps_per_round / training if training else float("nan"),
                **{f"{p}_s": ph.get(p, 0.0) for p in PHASES},
                "other_s": best["wall_s"] - sum(ph.get(p, 0.0) for p in PHASES if p != "reward"),
                "accepted_rows_agree": same,
            }
        )
    return rows


def profile(task: Task, cfg: PGraftConfig, path) -> None:
    """One round of each implementation under torch.profiler: phase ranges and top ops, as text."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    parts = []
    for impl, run in (("pgraft", pgraft_round), ("naive", naive_round)):
        with torch_profile(activities=[ProfilerActivity.CPU]) as prof:
            run(task, cfg)
        events = prof.key_averages()
        phases = [e for e in events if e.key.startswith("pgraft.")]
        parts.append(f"== {impl}: phases (wall per range, summed over calls) ==")
        parts += [f"{e.key:28s} calls {e.count:7d}  total {e.cpu_time_total / 1e6:8.3f} s" for e in phases]
        parts.append(f"== {impl}: top 20 ops by self CPU time ==")
        parts.append(events.table(sort_by="self_cpu_time_total", row_limit=20, max_name_column_width=48))
    path.write_text("\n".join(parts) + "\n")


def plot(rows: list[dict], path) -> None:
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    labels = [f"{r['task']}\n{r['impl']}" for r in rows]
    bottom = [0.0] * len(rows)
    for p in PHASES + ("other",):
        v = [r[f"{p}_s"] for r in rows]
        ax.bar(labels, v, bottom=bottom, label=p)
        bottom = [b + x for b, x in zip(bottom, v)]
    ax.set_ylabel("seconds (one round)")
    ax.set_title("one P-GRAFT round: where the time goes (reward overlaps sampling in pgraft)")
    ax.legend(fontsize=7, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="M = 16, K = 2, 30 optimizer steps, 1 repetition")
    ap.add_argument("--tasks", nargs="+", default=["digits", "animals"], choices=["digits", "animals"])
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--guidance", type=float, default=1.0, help="classifier-free guidance scale (1: off)")
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler summary per task")
    args = ap.parse_args()
    cfg = work(args.quick, args.guidance)
    reps = 1 if args.quick else args.reps
    rows, tasks = [], {}
    for name in args.tasks:
        tasks[name] = prepare_task(TaskConfig(name=name), progress=False)
        rows += measure(tasks[name], cfg, reps)
    ratios = []
    for name in args.tasks:
        naive, fast = (next(r for r in rows if r["task"] == name and r["impl"] == i) for i in ("naive", "pgraft"))
        fast["speedup_vs_naive"] = naive["round_s"] / fast["round_s"]
        ratios.append((name, fast["speedup_vs_naive"]))
    columns = ["task", "impl", "round_s", "rollout_samples_per_s", "optimizer_steps_per_s",
               *[f"{p}_s" for p in PHASES], "other_s", "accepted_rows_agree", "speedup_vs_naive"]  # fmt: skip
    meta = {
        "quick": args.quick,
        "config": cfg.model_dump(mode="json"),
        "reps": reps,
        "threads": torch.get_num_threads(),
    }
    folder = report("round", torch.device("cpu"), rows, columns, meta)
    plot(rows, folder / ("round_quick.png" if args.quick else "round.png"))
    if args.profile:
        for name, task in tasks.items():
            profile(task, cfg, folder / f"round_profile_{name}{'_quick' if args.quick else ''}.txt")
    for name, ratio in ratios:
        print(f"round speedup vs naive ({name}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
