"""`pgraft inc`: inverse noise correction on the digits (docs/method.md §3), measured as FID against
FLOPs per image.

1. A rectified-flow base model on the training digits (cached by config).
2. For each K of ``pairs``: invert the training digits through the K-step Euler sampler (report the
   reconstruction error), train a ~4× smaller corrector flow from N(0, I) to the inverse noises
   (cached with K in its key).
3. FID in the judge network's feature space ("FID (judge features)": Inception weights cannot be
   downloaded here) of ``eval.samples`` generated samples against the held-out real digits, mean ±
   std over ``eval.seeds``, for the base at each of ``base_steps`` and for base + correction at each
   (K, corrector steps); FLOPs per image counted by FlopCounterMode on the actual networks.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..config import FlowModelConfig, IncConfig
from ..engine.inc import corrected_sample, euler, flops_per_forward, flow_schedule, invert, train_flow
from ..io import save_state
from ..models.flow import FlowUNet
from ..report import plot_fid_flops, save_grid, table
from ..seeding import generator
from ..tasks import Task, cache, prepare_task
from .common import judge_fid
from .run_dir import RunDir

COLUMNS = ["method", "base_steps", "corrector_steps", "fid", "fid_std", "flops_per_image"]


def _flow_model(
    root: Path, task: Task, cfg: FlowModelConfig, data: torch.Tensor, kind: str, key: dict, force: bool
) -> FlowUNet:
    """A trained flow model from the cache, or trained now and cached (key: config + ``key``)."""
    path = cache.entry_path(root, task.name, kind, {**key, **cfg.model_dump(mode="json")})
    torch.manual_seed(cfg.seed)
    model = FlowUNet.from_config(cfg.unet(), task.sample_shape[-1], task.sample_shape[0])
    if path.exists() and not force:
        model.load_state_dict(cache.load_entry(path)[0])
        return model.eval().requires_grad_(False)
    train_flow(model, data, cfg.train_steps, batch_size=cfg.batch, lr=cfg.lr, seed=cfg.seed, desc=f"train {kind}")
    save_state(path, model.state_dict(), {"kind": kind, **key})
    return model


def _base_key(cfg: IncConfig) -> dict:
    return {"task": cfg.task.name, "image_size": cfg.task.image_size, "split_seed": cfg.task.split_seed}


def flow_base(cfg: IncConfig, task: Task, force: bool = False) -> FlowUNet:
    """The rectified-flow base model of the task (`pgraft pretrain --model flow`), cached by config."""
    root = cache.cache_root(cfg.task.cache_dir)
    return _flow_model(root, task, cfg.base, task.data.train_x, "flow-base", _base_key(cfg), force)


def run_inc(cfg: IncConfig, out: str | Path, *, force: bool = False) -> dict:
    started = time.time()
    run = RunDir(out, cfg)
    task = prepare_task(cfg.task, force=force)
    data, shape = task.data, task.sample_shape
    root, base_key = cache.cache_root(cfg.task.cache_dir), _base_key(cfg)
    base = flow_base(cfg, task, force)
    with torch.no_grad():
        reference = task.reward.judge.features(task.decode(data.test_x))
    cost_base = flops_per_forward(base, shape)

    correctors, inversion = {}, {}
    for k in sorted({k for k, _ in cfg.pairs}):
        x = data.train_x
        if cfg.inversion.data_noise > 0:
            x = x + cfg.inversion.data_noise * torch.randn(x.shape, generator=generator(0, "inversion-noise", k))
        inv = cfg.inversion
        z, report = invert(base, flow_schedule(k), x, max_iters=inv.max_iters, tol=inv.tol, progress=True)
        inversion[k] = report.summary()
        run.log("inversion", k, {key: v for key, v in report.summary().items() if isinstance(v, (int, float))})
        base_cfg = cfg.base.model_dump(mode="json")
        key = {**base_key, "base": base_cfg, "K": k, "grid": "uniform", "inversion": inv.model_dump()}
        correctors[k] = _flow_model(root, task, cfg.corrector, z, f"corrector-K{k}", key, force)
    cost_corr = flops_per_forward(next(iter(correctors.values())), shape) if correctors else 0.0

    jobs = [("base", k, 0) for k in cfg.base_steps] + [("base+inc", k, c) for k, c in cfg.pairs]
    rows, grids = [], {}
    for method, k, c in tqdm(jobs, desc="FID"):
        fids = []
        for seed in cfg.eval.seeds:
            g = generator(seed, "inc-eval", method, k, c)
            if method == "base":
                x = euler(base, flow_schedule(k), torch.randn((cfg.eval.samples, *shape), generator=g))
            else:
                x = corrected_sample(
                    correctors[k], flow_schedule(c), base, flow_schedule(k), cfg.eval.samples, shape, g,
                    cfg.eval.batch_size,
                )  # fmt: skip
            images = task.decode(x)
            fids.append(judge_fid(task, images, reference))
        grids[(method, k, c)] = images[:100]
        t = torch.tensor(fids)
        row = {
            "method": method,
            "base_steps": k,
            "corrector_steps": c,
            "fid": float(t.mean()),
            "fid_std": float(t.std(unbiased=True)),
            "flops_per_image": k * cost_base + c * cost_corr,
            "fid_per_seed": fids,
        }
        rows.append(row)
        run.log("fid", len(rows), {key: v for key, v in row.items() if isinstance(v, (int, float))})

    worst = max(inversion.values(), key=lambda r: r["recon_err_max"]) if inversion else None
    results = {
        "task": cfg.task.name,
        "metric": "FID (judge features): Fréchet distance in the judge CNN's 128-d penultimate layer, "
        f"{cfg.eval.samples} samples vs the {len(data.test_x)} held-out real digits",
        "rows": rows,
        "inversion": {
            "recon_err_max": worst["recon_err_max"] if worst else None,
            "recon_err_mean": sum(r["recon_err_mean"] for r in inversion.values()) / len(inversion)
            if inversion
            else None,
            "per_K": {str(k): r for k, r in inversion.items()},
        },
        "flops_per_forward": {"base": cost_base, "corrector": cost_corr},
        "parameters": {
            "base": sum(p.numel() for p in base.parameters()),
            "corrector": sum(p.numel() for p in next(iter(correctors.values())).parameters()) if correctors else 0,
        },
        "config": cfg.model_dump(mode="json"),
        "total_wall_s": time.time() - started,
    }
    plot_fid_flops(rows, run.path / "fid_vs_flops.png")
    for (method, k, c), images in grids.items():
        name = f"grid_{method.replace('+', '_')}_K{k}" + (f"_c{c}" if c else "")
        save_grid(images, torch.arange(images.shape[0]) // 10, run.path / f"{name}.png")
    run.results(results)
    run.close()
    print(table(rows, COLUMNS))
    print(f"wrote {run.path / 'results.json'}")
    return results
