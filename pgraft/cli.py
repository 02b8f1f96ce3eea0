"""The `pgraft` command: pretrain, bases, demo, sweep, compare, train, inc, sample, results, info.

`train` also runs under the DeepSpeed launcher, one process per rank:
    deepspeed --num_gpus 8 -m pgraft.cli train --config configs/digits_train.yaml --out runs/train
"""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # no model hub here: fail fast instead of retrying

import argparse  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402

from . import config as C  # noqa: E402
from .errors import PgraftError  # noqa: E402


def _common(p: argparse.ArgumentParser, default_out: str | None) -> None:
    p.add_argument("--config", type=Path, help="YAML config (defaults: the embedded digits task)")
    p.add_argument("--task", choices=C.registry.names(), help="a registered task (overrides task.name)")
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="override a config field, e.g. --set method.rounds=3 (repeatable)",
    )
    p.add_argument("--force", action="store_true", help="retrain cached task models even if present")
    if default_out is not None:
        p.add_argument("--out", type=Path, default=Path(default_out), help=f"run folder (default {default_out})")


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="pgraft", description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--local_rank", type=int, help=argparse.SUPPRESS)  # passed by the deepspeed launcher
    sub = ap.add_subparsers(dest="command", required=True)
    p = sub.add_parser("pretrain", help="train (or verify the cache of) the task's base model and judge")
    _common(p, None)
    p.add_argument(
        "--model",
        choices=["ddpm", "flow"],
        default="ddpm",
        help="ddpm: the engine's base model (config: a task section); flow: the rectified-flow base of "
        "`pgraft inc` (config: an inc config)",
    )
    p.add_argument(
        "--ship",
        action="store_true",
        help="ddpm: also copy the base and judge into the package (pgraft/tasks/pretrained/), the weights "
        "a fresh install starts from (maintainers)",
    )
    p = sub.add_parser("bases", help="each task's base variants beside the real images: quality, FID, reward")
    _common(p, "runs/bases")
    p = sub.add_parser("demo", help="base vs GRAFT vs P-GRAFT at one sample budget")
    _common(p, "runs/demo")
    p = sub.add_parser("sweep", help="P-GRAFT at several N_I plus the Var[r | x_{N_I}] diagnostic")
    _common(p, "runs/sweep")
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="instead of running: merge finished sweeps of one config that ran different seeds into --out",
    )
    p = sub.add_parser("compare", help="base, DDPO, GRPO, GRAFT and P-GRAFT at equal samples; curves and costs")
    _common(p, "runs/compare")
    p.add_argument("--seeds", type=int, metavar="N", help="run seeds 0..N-1 (default: the config's seeds, 0 1 2)")
    p.add_argument(
        "--tune",
        action="store_true",
        help="instead: the baselines' lr × clip-range search on one seed (its own held-out seeds)",
    )
    p.add_argument(
        "--merge",
        nargs="+",
        type=Path,
        metavar="RUN_DIR",
        help="instead of running: merge finished comparisons of one config that ran different seeds into --out",
    )
    p = sub.add_parser("train", help="one P-GRAFT run on one or many ranks, checkpointed and resumable")
    _common(p, None)
    p.add_argument("--out", type=Path, help="run folder (default: the --resume folder, else runs/train)")
    p.add_argument(
        "--resume",
        type=Path,
        metavar="RUN_DIR",
        help="continue from RUN_DIR's newest complete checkpoint (config: RUN_DIR/config.yaml unless --config)",
    )
    p = sub.add_parser("inc", help="inverse noise correction of a flow model: FID against FLOPs")
    _common(p, "runs/inc")
    p = sub.add_parser("sample", help="images from a Stable Diffusion run with its composed (P-GRAFT) sampler")
    p.add_argument("--run", type=Path, required=True, metavar="RUN_DIR", help="a finished `pgraft train` run folder")
    p.add_argument("--prompt", required=True)
    p.add_argument("--num", type=int, default=4, help="images to draw (default 4)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, help="output folder (default RUN_DIR/samples)")
    sub.add_parser("info", help="this machine's arithmetic: CPU flags, threads, GPUs, what 'auto' precision picks")
    p = sub.add_parser("results", help="write docs/results.md and the README's results table from docs/results/*.json")
    p.add_argument("--root", type=Path, default=Path("."), help="the project folder (default: here)")
    p.add_argument("--check", action="store_true", help="only check that the committed pages are current")
    return ap


def _overrides(args, prefix: str) -> list[str]:
    extra = [f"{prefix}name={args.task}"] if args.task else []
    return extra + args.overrides


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        if args.command == "pretrain" and args.model == "flow":
            from .experiments.inc import flow_base
            from .tasks import prepare_task

            cfg = C.load(C.IncConfig, args.config, _overrides(args, "task."))
            model = flow_base(cfg, prepare_task(cfg.task), force=args.force)
            print(f"flow base model: {sum(p.numel() for p in model.parameters())} parameters, cached")
        elif args.command == "pretrain":
            from .tasks import prepare_task

            cfg = C.load(C.TaskConfig, args.config, _overrides(args, ""))
            task = prepare_task(cfg, force=args.force)
            print(
                f"task {task.name}: judge held-out accuracy {task.judge_accuracy:.4f}, "
                f"real test reward {task.real_reward_mean:.4f}"
            )
            for kind, path in task.paths.items():
                print(f"{kind}: {path}")
            if args.ship:
                from .tasks import ship_models

                for path in ship_models(cfg, task):
                    print(f"shipped: {path}")
        elif args.command == "bases":
            from .experiments.bases import run_bases

            extra = [f"tasks=[{args.task}]"] if args.task else []
            run_bases(C.load(C.BasesConfig, args.config, extra + args.overrides), args.out, force=args.force)
        elif args.command == "demo":
            from .experiments.demo import run_demo

            run_demo(C.load(C.DemoConfig, args.config, _overrides(args, "task.")), args.out, force=args.force)
        elif args.command == "sweep":
            from .experiments.sweep import merge_sweeps, run_sweep

            if args.merge:
                merge_sweeps(args.merge, args.out)
                return 0
            run_sweep(C.load(C.SweepConfig, args.config, _overrides(args, "task.")), args.out, force=args.force)
        elif args.command == "compare":
            from .experiments.compare import merge_compares, run_compare, run_tune

            if args.merge:
                merge_compares(args.merge, args.out)
                return 0
            extra = [f"seeds={list(range(args.seeds))}"] if args.seeds is not None else []
            cfg = C.load(C.CompareConfig, args.config, _overrides(args, "task.") + extra)
            (run_tune if args.tune else run_compare)(cfg, args.out, force=args.force)
        elif args.command == "train":
            return _train(args)
        elif args.command == "inc":
            from .experiments.inc import run_inc

            run_inc(C.load(C.IncConfig, args.config, _overrides(args, "task.")), args.out, force=args.force)
        elif args.command == "results":
            from .experiments.results_page import run_results

            return run_results(args.root, args.check)
        elif args.command == "info":
            from .machine import report_lines

            print("\n".join(report_lines()))
        elif args.command == "sample":
            from .experiments.sample import run_sample

            if args.num < 1:
                raise C.ConfigError(f"--num must be >= 1, got {args.num}")
            for path in run_sample(args.run, args.prompt, args.num, args.seed, args.out):
                print(path)
    except PgraftError as exc:
        print(f"pgraft: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _train(args) -> int:
    from .engine.distributed import describe_collective_failure, world_size
    from .experiments.train import run_train

    config = args.config
    if config is None and args.resume is not None:
        config = args.resume / "config.yaml"
    out = args.out or args.resume or Path("runs/train")
    cfg = C.load(C.TrainRunConfig, config, _overrides(args, "task."))
    try:
        run_train(cfg, out, resume=args.resume, force=args.force)
    except RuntimeError as exc:  # gloo / NCCL errors: a peer died or a collective timed out
        if world_size() == 1:
            raise
        print(f"pgraft: error: {describe_collective_failure(exc)}", file=sys.stderr, flush=True)
        # run_train's own cleanup has run; skip the interpreter's teardown, where the broken
        # process group's C++ threads can abort the process ("terminate called without an active
        # exception", SIGABRT) instead of exiting with the watchdog's code
        sys.stdout.flush()
        os._exit(3)
    return 0


if __name__ == "__main__":
    sys.exit(main())
