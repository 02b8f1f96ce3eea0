"""The molecules base's validity against pretraining steps and against sampler steps
(docs/molecules.md "How good the base is").

Pretrains the task's base from scratch with the task's own code (pgraft.tasks.pretraining.pretrain,
the configured architecture and learning rate, the linear decay spread over --steps) and, every
--every steps, samples --samples molecules with the demo's sampler (DDIM, η = 1, --sampler-steps)
and scores them: strict validity (one fragment, full sanitisation: the task's own), validity
without correction by GDSS's rule (fragments allowed), uniqueness and novelty. At the end the
last model is also sampled at more sampler steps. Writes a JSON file and a plot; not part of CI.

    python tools/molecule_base_curve.py --steps 32000 --every 4000 --out docs/results/molecules_base_curve
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from pgraft.chem import codec
from pgraft.config import TaskConfig
from pgraft.engine.compose import Single
from pgraft.engine.rollout import rollout
from pgraft.io import save_state
from pgraft.models.schedule import Schedule
from pgraft.tasks import cache, molecules
from pgraft.tasks.pretraining import pretrain


@torch.no_grad()
def quality(model, data, samples: int, sampler_steps: int, seed: int) -> dict:
    """Strict and GDSS validity, uniqueness and novelty of ``samples`` draws of ``model``."""
    t0 = time.time()
    schedule = Schedule.from_scheduler_config(model.scheduler_config, sampler_steps, "ddim", 1.0)
    cond = torch.zeros(samples, dtype=torch.int64)
    x0 = rollout(Single(model), schedule, cond, (codec.SAMPLE_DIM,), (seed, "curve"), batch_size=1000).x0
    codes = codec.decode(x0)
    valid = [m for m in codec.molecules(codes) if m is not None]
    unique = {codec.canonical_smiles(m) for m in valid}
    return {
        "sampler_steps": sampler_steps,
        "validity": len(valid) / samples,
        "validity_gdss": codec.valency_validity(codes),
        "uniqueness": len(unique) / max(len(valid), 1),
        "novelty": len(unique - set(data.train_smiles)) / max(len(unique), 1),
        "eval_s": round(time.time() - t0, 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--steps", type=int, default=32000)
    ap.add_argument("--every", type=int, default=4000)
    ap.add_argument("--samples", type=int, default=2000)
    ap.add_argument("--sampler-steps", type=int, default=25)
    ap.add_argument("--final-sampler-steps", type=int, nargs="*", default=[50, 100, 250])
    ap.add_argument("--set", nargs="*", default=[], help="model config changes, key=value (task.molecules.model)")
    ap.add_argument("--cache", action="store_true", help="store the final model in the task cache ($PGRAFT_CACHE)")
    ap.add_argument("--out", required=True, help="path without extension: writes .json and .png")
    args = ap.parse_args()

    changes = {
        k: type(getattr(molecules.MoleculesConfig().model, k))(v) for k, v in (a.split("=", 1) for a in args.set)
    }
    cfg = TaskConfig(name="molecules")
    model_cfg = cfg.molecules.model.model_copy(update={"pretrain_steps": args.steps, **changes})
    cfg = cfg.model_copy(update={"molecules": cfg.molecules.model_copy(update={"model": model_cfg})})
    data = molecules.load_molecules_split(cfg)
    torch.manual_seed(model_cfg.seed)
    model = molecules.build_base(cfg)
    rows, t0 = [], time.time()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)

    def write(final: list) -> None:
        result = {
            "what": "the molecules base pretrained from scratch, scored as it trains (tools/molecule_base_curve.py)",
            "model": model_cfg.model_dump(mode="json"),
            "samples": args.samples,
            "curve": rows,
            "final_sampler_steps": final,
            "wall_s": round(time.time() - t0, 1),
        }
        out.with_suffix(".json").write_text(json.dumps(result, indent=2) + "\n")

    def on_step(step: int, loss: float) -> None:
        if step % args.every and step != args.steps:
            return
        model.eval()
        rows.append({"step": step, "loss": loss, "train_wall_s": round(time.time() - t0, 1),
                     **quality(model, data, args.samples, args.sampler_steps, seed=step)})  # fmt: skip
        model.train()
        print(json.dumps(rows[-1]), flush=True)
        write([])

    pretrain(model, data.train_x, data.train_y, model_cfg, "task.molecules.model", True, on_step=on_step)
    if args.cache:
        # the same bits `pgraft pretrain` would store for this config (same code, seed and RNG
        # stream: the scoring draws its noise from its own generators), so `pgraft pretrain
        # --set task.molecules.model.pretrain_steps=... --ship` ships them without training again
        payload = cfg.definition.payloads(cfg)["base"]
        path = cache.entry_path(cache.cache_root(cfg.cache_dir), "molecules", "base", payload)
        save_state(path, model.state_dict(), {"kind": "base", "config": payload})
        print(f"stored in the cache: {path}", flush=True)
    final = [quality(model, data, args.samples, s, seed=args.steps) for s in args.final_sampler_steps]
    for row in final:
        print(json.dumps(row), flush=True)
    write(final)
    plot(rows, out.with_suffix(".png"))


def plot(rows: list, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.6))
    steps = [r["step"] for r in rows]
    ax.plot(steps, [r["validity"] for r in rows], "o-", label="validity (one fragment, sanitised)")
    ax.plot(steps, [r["validity_gdss"] for r in rows], "s-", label="validity w/o correction (GDSS's rule)")
    ax.plot(steps, [r["uniqueness"] for r in rows], "^--", label="uniqueness")
    ax.set_xlabel("pretraining steps (batch 256)")
    ax.set_ylabel("share of 2,000 samples")
    ax.set_ylim(0, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("molecules base: quality against pretraining steps (DDIM 25, η = 1)", fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


if __name__ == "__main__":
    main()
