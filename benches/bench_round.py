"""Bench: one whole round of P-GRAFT, the engine against the naive loop, at equal work.

A user waits for rounds, not kernels: rollout (network forwards and sampler arithmetic), reward,
selection, buffer and training. This bench runs one round on digits and on animals (the shipped
bases and judges; ``--tasks sd_tiny``: a tiny random-initialised Stable Diffusion, the GPU plan's
task; ``--tasks scenes``: the trained mini Stable Diffusion of the scenes task and its VQAScore-like
reward, at the task's own round shape) twice in one process, on identical work:

- ``pgraft``: the engine as a user runs it, ``PGraftLoop(...).run()`` with the default
  ``method.speed`` (its DeepSpeed engine is built before the clock starts, as it is once per run);
- ``naive``: the common pattern, written plainly (RAFT-diffusion's and ddpo-pytorch's shape): per
  condition, its M samples through diffusers' ``DDIMScheduler.step``, classifier-free guidance as
  two forward passes when it is on; rewards computed after sampling; top-K per condition in a
  Python loop; a Python list of accepted tensors stacked into minibatches; a plain PyTorch loop
  (AdamW, the same loss and gradient clipping). With ``--naive pipeline`` (Stable Diffusion tasks
  whose folder the task names) the sampling is diffusers' own ``StableDiffusionPipeline``, called per
  prompt with ``num_images_per_prompt=M`` and its classifier-free guidance, decoding included, the
  x_{N_I} latents taken by its step callback: what text-to-image users run today.

Equal work: the naive loop consumes the very noise the engine draws (per rollout chunk, x_T then
one tensor per step, from the same seeded generators), so both produce the same samples up to
float rounding, accept the same rows (the bench reports the agreement) and run the same number of
optimizer steps at the same batch size. The pipeline draws its per-step noise itself, so with
``--naive pipeline`` both sides sample with deterministic DDIM (η = 0) from the engine's x_T.
Each round is split into phases (pgraft/engine/phases.py:
sampling forward, step arithmetic, reward, selection, buffer, training forward, backward,
optimizer) by the engine's own phase marks, which the naive loop uses too.

``--ablate`` also runs the engine with each speed option (``method.speed``) one step away from
the defaults (VARIANTS): what each option wins or costs, in the same run. A variant the engine
refuses (say, torch.compile of a network whose compiled gradients are wrong) is reported with the
reason. Options that change the precision change the samples slightly, so rows are matched to
0.02 RMS (bf16 sampling moves a sample by ~0.002; distinct samples lie ~0.5 apart).

    python benches/bench_round.py [--quick] [--ablate | --variants cuda_graphs ...]
        [--tasks digits animals sd_tiny scenes] [--sd-latent 16] [--guidance 1] [--reps 3] [--profile]
        [--naive loop|pipeline]

On a GPU the engine and the naive loop both run there, and each round records the GPU's mean
utilisation and peak memory (nvidia-ml-py, sampled every 50 ms).

Writes benches/results/<device>/round[_ablate][_<tasks>][_quick].{csv,json,png} (the PNG: stacked
phases; ``_<tasks>`` when the task set is not the default digits and animals);
``--profile`` also runs one more round of each implementation under torch.profiler and writes the
trace summary (the phases and the ops with the most self CPU time) to round_profile_<task>.txt.
"""

from __future__ import annotations

import argparse
import copy
import inspect
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import GpuSampler, report, sync  # noqa: E402

from pgraft.config import PGraftConfig, TaskConfig, registry  # noqa: E402
from pgraft.config.schema import deep_merge  # noqa: E402
from pgraft.engine.phases import PHASES, PhaseTimer, phase  # noqa: E402
from pgraft.engine.rounds import PGraftLoop  # noqa: E402
from pgraft.engine.speed import native_bf16  # noqa: E402
from pgraft.engine.train import draw_dsm_noise, dsm_loss_at  # noqa: E402
from pgraft.errors import ConfigError  # noqa: E402
from pgraft.seeding import generator  # noqa: E402
from pgraft.tasks import Task, prepare_task  # noqa: E402

N_I = 6  # the demos' P-GRAFT level (of 25 DDIM steps)

# method.speed overrides, each one option away from the defaults ("pgraft"); "plain" turns every
# speed option off (what remains is the engine's batching across conditions and its kernels)
VARIANTS: dict[str, dict] = {
    "pgraft": {},
    "plain": {"sample_precision": "fp32", "inference_mode": False},
    "sample_fp32": {"sample_precision": "fp32"},
    "no_inference_mode": {"inference_mode": False},
    "train_bf16": {"train_precision": "bf16"},
    "channels_last": {"channels_last": True},
    "compile_sampling": {"compile_sampling": True},
    "compile_training": {"compile_training": True},
    "threads_1": {"threads": 1},
    "cuda_graphs": {"cuda_graphs": True},  # refused on the CPU
}


SD_PROMPTS = ["a red apple", "a blue car", "a green tree", "a yellow bird", "a black cat", "a white horse",
              "a brown dog", "an orange fish", "a purple flower", "a grey house", "a pink cake"]  # fmt: skip


def sd_tiny_task(latent: int, folder: Path) -> Task:
    """A tiny random-initialised Stable Diffusion (the real SD architecture: UNet2DConditionModel,
    CLIP text encoder, VAE; tests/sd_tiny.py) at ``latent``×``latent`` latents, ten training
    prompts, scored by JPEG compressibility (ddpo-pytorch's first reward: no model needed)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from pgraft.config import TrainRunConfig
    from pgraft.tasks.stable_diffusion import prepare_sd_task
    from tests.sd_tiny import build_tiny_sd

    build_tiny_sd(folder / "sd", latent_size=latent)
    (folder / "prompts.txt").write_text("\n".join(SD_PROMPTS) + "\n")
    cfg = TrainRunConfig.model_validate(
        {
            "stable_diffusion": {"path": folder / "sd", "prompts": folder / "prompts.txt", "eval_fraction": 0.09},
            "reward": [{"name": "jpeg_compressibility"}],
        }
    )
    task = prepare_sd_task(cfg)
    task.name = f"sd_tiny_{latent}"
    return task


def work(quick: bool, guidance: float | None, task: str, eta: float | None = None) -> PGraftConfig:
    """One round at the demo's shape (quick: fewer samples and steps), under the task's own preset
    (its experiment defaults: M, K, sampler), which a given ``guidance`` or ``eta`` overrides."""
    m, k, steps = (16, 2, 30) if quick else (64, 8, 100)
    shape = {
        "n_i": N_I,
        "samples_per_condition": m,
        "rounds": 1,
        "select": {"rule": "top_k", "k": k},
        "train": {"batch_size": 64, "steps_per_round": steps, "lr": 1e-4},
        "sampler": {"steps": 25},
    }
    preset = registry.get(task).defaults.get("method", {}) if registry.is_known(task) else {}
    sampler = {"guidance_scale": guidance} if guidance is not None else {}
    sampler |= {"eta": eta} if eta is not None else {}
    return PGraftConfig.model_validate(deep_merge(deep_merge(shape, preset), {"sampler": sampler}))


def with_speed(cfg: PGraftConfig, speed: dict) -> PGraftConfig:
    return PGraftConfig.model_validate({**cfg.model_dump(), "speed": {**cfg.speed.model_dump(), **speed}})


def pgraft_round(task: Task, cfg: PGraftConfig) -> dict:
    threads = torch.get_num_threads()  # speed.threads sets it process-wide: restored for the next run
    try:
        return _pgraft_round(task, cfg)
    finally:
        torch.set_num_threads(threads)


def _pgraft_round(task: Task, cfg: PGraftConfig) -> dict:
    loop = PGraftLoop(task, cfg, progress=False)
    with PhaseTimer(sync=loop.device) as timer, GpuSampler() as gpu:  # sync: a GPU phase owns its kernels
        t0 = time.perf_counter()
        loop.run()
        sync(loop.device)
        wall = time.perf_counter() - t0
    x_ni = loop.buffer.field("x_ni")
    return {"wall_s": wall, "phases": dict(timer.seconds), "accepted": x_ni, "gpu": gpu.summary()}


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
    dev = next(base.parameters()).device
    known = set(inspect.signature(DDIMScheduler.__init__).parameters)
    sched = DDIMScheduler(**{k: v for k, v in base.scheduler_config.items() if k in known})
    sched.set_timesteps(s.steps)
    guided = s.guidance_scale != 1.0
    with PhaseTimer(sync=dev) as timer, GpuSampler() as gpu:
        t0 = time.perf_counter()
        with phase("sample.step"):
            x_t, noise = engine_noise(task.num_classes * m, task.sample_shape, (cfg.seed, "rollout", 0),
                                      cfg.rollout_batch, s.steps)  # fmt: skip
            x_t, noise = x_t.to(dev), noise.to(dev)
        finals, states = [], []
        for c in range(task.num_classes):
            rows = slice(c * m, (c + 1) * m)
            x, cond = x_t[rows], torch.full((m,), c, device=dev)
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
        labels = torch.arange(task.num_classes, device=dev).repeat_interleave(m)
        with phase("reward"):
            rewards = task.reward(task.decode(torch.cat(finals)), labels)
        accepted = select_and_train(task, cfg, rewards, states, dev)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "phases": dict(timer.seconds), "accepted": accepted, "gpu": gpu.summary()}


def select_and_train(task: Task, cfg: PGraftConfig, rewards, states: list, dev) -> torch.Tensor:
    """The naive loop's top-K per condition (a Python loop), its list of accepted tensors and its
    plain training loop; returns the accepted x_{N_I} rows. ``states[c]``: condition c's M rows."""
    m, s, base = cfg.samples_per_condition, cfg.sampler, task.base
    with phase("select"):
        accepted = []
        for c in range(task.num_classes):
            best = rewards[c * m : (c + 1) * m].topk(cfg.select.k).indices.sort().values
            accepted += [(states[c][j], c) for j in best.tolist()]
    model = copy.deepcopy(base).train().requires_grad_(True)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr, weight_decay=0.0)
    level = task.schedule(s.steps).state_timestep(cfg.n_i)
    alphas = task.schedule(s.steps).alphas_cumprod.to(dev)
    gen, order = torch.Generator().manual_seed(cfg.seed), []
    for _ in range(cfg.train.steps_per_round):
        with phase("buffer"):
            if len(order) < cfg.train.batch_size:
                order = torch.randperm(len(accepted), generator=gen).tolist()
            batch, order = order[: cfg.train.batch_size], order[cfg.train.batch_size :]
            x_s = torch.stack([accepted[j][0] for j in batch])
            cond = torch.tensor([accepted[j][1] for j in batch], device=dev)
        with phase("train.forward"):
            t, eps = draw_dsm_noise(len(batch), tuple(x_s.shape[1:]), level, alphas.numel(), gen, level + 1)
            loss = dsm_loss_at(model, x_s, cond, level, alphas, t.to(dev), eps.to(dev),
                               prediction_type=base.prediction_type)  # fmt: skip
        with phase("train.backward"):
            opt.zero_grad(set_to_none=True)
            loss.backward()
        with phase("train.optimizer"):
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
            opt.step()
    sync(dev)
    return torch.stack([a for a, _ in accepted])


def naive_pipeline_round(task: Task, cfg: PGraftConfig) -> dict:
    """The plain loop with diffusers' StableDiffusionPipeline as the sampler: per training prompt
    one call with ``num_images_per_prompt=M``, its own classifier-free guidance and decoding, the
    x_{N_I} latents taken by ``callback_on_step_end``; rewards after sampling, then the same
    selection and training as :func:`naive_round`. Timed from the first noise draw to the last step."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    if "pipeline" not in task.paths:
        raise SystemExit(f"--naive pipeline needs a Stable Diffusion task that names its folder; {task.name} does not")
    m, s = cfg.samples_per_condition, cfg.sampler
    dev = next(task.base.parameters()).device
    # loaded before the clock, as the engine's loop and DeepSpeed engine are built before theirs
    pipe = StableDiffusionPipeline.from_pretrained(task.paths["pipeline"], local_files_only=True)
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe = pipe.to(dev)
    pipe.set_progress_bar_config(disable=True)
    with PhaseTimer(sync=dev) as timer, GpuSampler() as gpu:
        t0 = time.perf_counter()
        with phase("sample.step"):
            x_t, _ = engine_noise(task.num_classes * m, task.sample_shape, (cfg.seed, "rollout", 0),
                                  cfg.rollout_batch, s.steps)  # fmt: skip
        states, images = [], []

        def keep_state(pipe, i, t, kwargs):
            if s.steps - i - 1 == cfg.n_i:
                states.append(kwargs["latents"].clone())
            return kwargs

        with phase("sample.forward"):  # the pipeline's forwards, steps and decoding, undivided
            for c in range(task.num_classes):
                out = pipe(
                    task.class_names[c], num_images_per_prompt=m, num_inference_steps=s.steps,
                    guidance_scale=s.guidance_scale, eta=s.eta, latents=x_t[c * m : (c + 1) * m].to(dev),
                    output_type="pt", callback_on_step_end=keep_state,
                )  # fmt: skip
                images.append(out.images)
        labels = torch.arange(task.num_classes, device=dev).repeat_interleave(m)
        with phase("reward"):
            rewards = task.reward(torch.cat(images), labels)
        accepted = select_and_train(task, cfg, rewards, states, dev)
        wall = time.perf_counter() - t0
    return {"wall_s": wall, "phases": dict(timer.seconds), "accepted": accepted, "gpu": gpu.summary()}


def agreement(a: torch.Tensor, b: torch.Tensor) -> float:
    """The share of one implementation's accepted rows that the other accepted too (to 0.02 RMS)."""
    d = torch.cdist(a.flatten(1).double().cpu(), b.flatten(1).double().cpu()) / a[0].numel() ** 0.5
    return float((d.min(dim=1).values < 2e-2).double().mean())


NAIVE = {"loop": naive_round, "pipeline": naive_pipeline_round}


def measure(task: Task, cfg: PGraftConfig, reps: int, variants: list[str], naive: str = "loop") -> list[dict]:
    """The naive loop and each engine variant, alternating, ``reps`` times each; the median round
    of each. A variant the engine refuses is one row with the reason."""
    runs = {"naive": [], **{v: [] for v in variants}}
    refused = {}
    for _ in range(reps):
        runs["naive"].append(NAIVE[naive](task, cfg))
        for v in variants:
            if v in refused:
                continue
            try:
                runs[v].append(pgraft_round(task, with_speed(cfg, VARIANTS[v])))
            except ConfigError as err:
                refused[v] = str(err)
    rows = []
    samples = task.num_classes * cfg.samples_per_condition
    for impl, rs in runs.items():
        if not rs:
            continue
        same = agreement(rs[0]["accepted"], runs["naive"][0]["accepted"])
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
                **best["gpu"],
                "refused": "",
            }
        )
    blank = dict.fromkeys(rows[0], float("nan"))
    return rows + [{**blank, "task": task.name, "impl": v, "refused": why} for v, why in refused.items()]


def profile(task: Task, cfg: PGraftConfig, path, naive: str = "loop") -> None:
    """One round of each implementation under torch.profiler: phase ranges and top ops, as text."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    parts = []
    for impl, run in (("pgraft", pgraft_round), ("naive", NAIVE[naive])):
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
    """Stacked horizontal bars of each round's phases, labelled with its speed-up over the naive
    loop; rounds far longer than the naive one (compilation) run off the axis, their time written."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 1.8 + 0.32 * len(rows)))
    labels = [f"{r['task']} · {r['impl']}" for r in rows][::-1]
    rows = rows[::-1]
    left = [0.0] * len(rows)
    for p in PHASES + ("other",):
        v = [r[f"{p}_s"] for r in rows]
        ax.barh(labels, v, left=left, label=p)
        left = [a + b for a, b in zip(left, v)]
    limit = 1.3 * max(r["round_s"] for r in rows if r["impl"] == "naive")
    ax.set_xlim(0, limit)
    for y, r in enumerate(rows):
        ratio = r.get("speedup_vs_naive", float("nan"))
        note = f"{r['round_s']:.1f} s" + ("" if ratio != ratio else f", {ratio:.2f}× naive")
        ax.text(min(r["round_s"], limit * 0.78) + limit * 0.01, y, note + (" →" if r["round_s"] > limit else ""),
                va="center", fontsize=7)  # fmt: skip
    ax.set_xlabel("seconds (one round)")
    ax.set_title("one P-GRAFT round: where the time goes (the reward overlaps sampling in pgraft)", fontsize=9)
    ax.tick_params(axis="y", labelsize=7)
    ax.legend(fontsize=6, ncol=5, loc="upper center", bbox_to_anchor=(0.5, -0.5 / (1 + 0.3 * len(rows))))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="M = 16, K = 2, 30 optimizer steps, 1 repetition")
    tasks = ["digits", "animals", "sd_tiny", "scenes"]
    ap.add_argument("--tasks", nargs="+", default=["digits", "animals"], choices=tasks)
    ap.add_argument("--sd-latent", type=int, default=16, help="sd_tiny: the latent side (64: SD 1.x at 512 px)")
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--guidance", type=float, help="guidance scale (1: off; unset: the task's preset, else 1)")
    naive_help = "the naive side: a loop over DDIMScheduler.step, or diffusers' StableDiffusionPipeline"
    ap.add_argument("--naive", choices=list(NAIVE), default="loop", help=naive_help)
    ap.add_argument("--profile", action="store_true", help="also write a torch.profiler summary per task")
    ap.add_argument("--ablate", action="store_true", help="also run each speed option one step from the defaults")
    ap.add_argument("--variants", nargs="+", choices=list(VARIANTS)[1:], help="also run only these options")
    args = ap.parse_args()
    eta = 0.0 if args.naive == "pipeline" else None  # the pipeline draws its own step noise
    configs = {name: work(args.quick, args.guidance, name, eta) for name in args.tasks}
    reps = 1 if args.quick else args.reps
    variants = list(VARIANTS) if args.ablate else ["pgraft", *(args.variants or [])]
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")  # where DeepSpeed trains
    rows, tasks, scratch = [], {}, tempfile.TemporaryDirectory()
    for name in args.tasks:
        if name == "sd_tiny":
            task = sd_tiny_task(args.sd_latent, Path(scratch.name))
        else:
            task = prepare_task(TaskConfig(name=name), progress=False)
        task.base.to(device)  # the naive loop samples and trains where the engine does
        tasks[task.name] = (task, configs[name])
        rows += measure(task, configs[name], reps, variants, args.naive)
    for name in tasks:
        naive = next(r for r in rows if r["task"] == name and r["impl"] == "naive")
        for r in rows:
            if r["task"] == name:
                r["speedup_vs_naive"] = naive["round_s"] / r["round_s"] if r["impl"] != "naive" else float("nan")
    ratios = [(r["task"], r["speedup_vs_naive"]) for r in rows if r["impl"] == "pgraft"]
    columns = ["task", "impl", "round_s", "rollout_samples_per_s", "optimizer_steps_per_s",
               *[f"{p}_s" for p in PHASES], "other_s", "accepted_rows_agree", "speedup_vs_naive",
               *(["gpu_util_mean_percent", "gpu_memory_max_mib"] if device.type == "cuda" else [])]  # fmt: skip
    meta = {
        "quick": args.quick,
        "configs": {task.name: cfg.model_dump(mode="json") for task, cfg in tasks.values()},
        "naive": args.naive,
        "variants": {v: VARIANTS[v] for v in variants},
        "native_bf16": native_bf16(device),
        "reps": reps,
        "threads": torch.get_num_threads(),
    }
    name = "round_ablate" if args.ablate else "_".join(["round", *(args.variants or [])])
    if args.tasks != ["digits", "animals"]:  # another task set: its own files beside the default ones
        name += "_" + "_".join(args.tasks)
    if args.naive != "loop":
        name += f"_naive_{args.naive}"
    folder = report(name, device, rows, columns, meta)
    for r in rows:
        if r["refused"]:
            print(f"{r['task']} {r['impl']}: refused: {r['refused']}")
    measured = [r for r in rows if not r["refused"]]
    plot(measured, folder / f"{name}{'_quick' if args.quick else ''}.png")
    if args.profile:
        for name, (task, cfg) in tasks.items():
            profile(task, cfg, folder / f"round_profile_{name}{'_quick' if args.quick else ''}.txt", args.naive)
    for name, ratio in ratios:
        print(f"round speedup vs naive ({name}): {ratio:.2f}x")


if __name__ == "__main__":
    main()
