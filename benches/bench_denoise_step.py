"""Bench: one DDIM step (η = 1) with classifier-free guidance over SD-like latents.

Compared on the same inputs in one run: (a) what users run today, diffusers' DDIMScheduler.step
with the CFG arithmetic around it; (b) pgraft's torch reference; (c) torch.compile of that
reference; (d) the fused C++ loop (CPU); (e) the Triton kernel (GPU only). pgraft's paths write
into a preallocated output (as the sampler loop does, in place); diffusers allocates its own. Effective bandwidth
counts the minimal traffic (read x, cond, [uncond], noise; write x_prev), and is also given as a
fraction of a plain copy of the same total size measured in the same run.

    python benches/bench_denoise_step.py [--quick] [--busy] [--dtype float32|float16|bfloat16]

``--busy`` times everything with one other process spinning on a core; every implementation is
also timed on one thread (``speedup_vs_own_1t``).
"""

from __future__ import annotations

import argparse
import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import torch  # noqa: E402
from common import add_busy_flag, busy_core, plot, report, split_single_thread, steady_allocator  # noqa: E402
from common import time_with_single_thread as timed_all  # noqa: E402
from diffusers import DDIMScheduler  # noqa: E402

from pgraft.kernels import _backend  # noqa: E402
from pgraft.kernels.denoise_step import denoise_step, denoise_step_reference  # noqa: E402
from pgraft.models.schedule import Schedule  # noqa: E402

# Stable Diffusion 2's (base) scheduler config.
SD_SCHEDULER = {
    "num_train_timesteps": 1000, "beta_schedule": "scaled_linear", "beta_start": 0.00085, "beta_end": 0.012,
    "clip_sample": False, "set_alpha_to_one": False, "steps_offset": 1, "prediction_type": "epsilon",
}  # fmt: skip
GUIDANCE, STEP = 7.5, 10
ACCEPTANCE = {"batch": 64, "shape": "4x64x64", "cfg": True}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="only the acceptance shape (batch 64, 4x64x64, CFG)")
    ap.add_argument("--dtype", default="float32", choices=["float32", "float16", "bfloat16"])
    add_busy_flag(ap)
    args = ap.parse_args()
    steady_allocator()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dtype = getattr(torch, args.dtype)
    ours = Schedule.from_scheduler_config(SD_SCHEDULER, 50, "ddim", eta=1.0)
    ref = DDIMScheduler(**SD_SCHEDULER)
    ref.set_timesteps(50)
    t = ref.timesteps[STEP]
    table = ours.table(device)
    if args.quick:
        grid = [((4, 64, 64), 64, True)]
    else:
        grid = [(s, b, c) for s in ((4, 64, 64), (4, 96, 96)) for b in (8, 32, 64, 128, 256) for c in (True, False)]
    dispatched = _backend.resolve("auto", device)
    compiled = {}
    rows = []
    for shape, batch, cfg in grid:
        g = torch.Generator(device=device).manual_seed(0)
        x, c, u, z = (torch.randn((batch, *shape), generator=g, device=device).to(dtype) for _ in range(4))
        steps = torch.full((batch,), STEP, dtype=torch.int64, device=device)
        unc = u if cfg else None
        traffic = (5 if cfg else 4) * x.numel() * x.element_size()

        prev = torch.empty_like(x)  # every pgraft path writes into one preallocated output, as a sampler loop would

        def ours_fn(backend):
            return lambda: denoise_step(
                x, c, steps, ours, z, uncond_output=unc, guidance_scale=GUIDANCE, return_x0=False, out=prev,
                backend=backend,
            )  # fmt: skip

        if cfg not in compiled:
            compiled[cfg] = torch.compile(
                lambda x, c, u, z, steps, prev: denoise_step_reference(
                    x, c, u, z, steps, table, GUIDANCE, None, prev, None, False
                )[0],
                dynamic=True,
            )
        impls = {
            "diffusers": lambda: ref.step(u + GUIDANCE * (c - u) if cfg else c, t, x, eta=1.0, variance_noise=z),
            "torch": ours_fn("torch"),
            "torch.compile": lambda: compiled[cfg](x, c, unc, z, steps, prev),
        }
        if device.type == "cpu" and _backend.HAVE_CPP:
            impls["cpp"] = ours_fn("cpp")
        if device.type == "cuda":
            impls["triton"] = ours_fn("triton")
        # Every implementation computes the same step: diffusers in float32 on the same (rounded)
        # inputs is the reference. In 16-bit storage ours computes in float32 and rounds once, so it
        # sits within a few ulps of it; diffusers' own 16-bit path rounds at every op (the baseline
        # is timed, not checked, there).
        xf, cf, uf, zf = (v.float() for v in (x, c, u, z))
        expect = ref.step(uf + GUIDANCE * (cf - uf) if cfg else cf, t, xf, eta=1.0, variance_noise=zf).prev_sample
        for name, fn in impls.items():
            if name == "diffusers" and dtype != torch.float32:
                continue
            prev.fill_(float("nan"))
            got = fn()
            got = (got.prev_sample if hasattr(got, "prev_sample") else got).float()
            tol = 1e-4 if dtype == torch.float32 else 8 * torch.finfo(dtype).eps
            torch.testing.assert_close(got, expect, atol=tol, rtol=tol, msg=f"{name} disagrees with diffusers")
        with busy_core(args.busy):
            timed = timed_all(impls, device, traffic)
        copy_bw = traffic / (timed.pop("copy") * 1e-3) / 1e9
        timed, own_1t = split_single_thread(timed)
        base_ms = timed["diffusers"]
        for name, ms in timed.items():
            gbps = traffic / (ms * 1e-3) / 1e9
            rows.append({
                "impl": name, "dispatched": name == dispatched, "batch": batch, "shape": "x".join(map(str, shape)),
                "cfg": cfg, "dtype": args.dtype, "time_ms": ms, "gbps": gbps, "frac_copy_bw": gbps / copy_bw,
                "copy_gbps": copy_bw, "speedup_vs_diffusers": base_ms / ms,
                "speedup_vs_own_1t": own_1t[name] / ms if name in own_1t else float("nan"),
            })  # fmt: skip
    cols = [
        "impl",
        "batch",
        "shape",
        "cfg",
        "time_ms",
        "gbps",
        "frac_copy_bw",
        "speedup_vs_diffusers",
        "speedup_vs_own_1t",
    ]
    name = "denoise_step" if args.dtype == "float32" else f"denoise_step_{args.dtype}"
    out = report(name, device, rows, cols, {"quick": args.quick, "busy": args.busy, "dispatched": dispatched})
    if not args.quick and not args.busy:
        for cfg in (True, False):
            sel = [r for r in rows if r["cfg"] == cfg and r["shape"] == "4x64x64"]
            plot(sel, "batch", "time_ms", "impl", f"DDIM step, 4x64x64, CFG={cfg}", out / f"denoise_step_cfg{cfg}.png")
    acc = [r for r in rows if r["dispatched"] and all(r[k] == v for k, v in ACCEPTANCE.items())]
    if acc:
        r = acc[0]
        print(f"dispatched ({dispatched}) at batch 64, 4x64x64, CFG, eta=1: {r['frac_copy_bw']:.0%} of copy bandwidth")
        print(f"speedup vs diffusers step + CFG: {r['speedup_vs_diffusers']:.2f}x")


if __name__ == "__main__":
    main()
