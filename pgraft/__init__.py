"""pgraft: fine-tune diffusion models toward a reward by generalized rejection sampling (GRAFT)
and intermediate distribution shaping (P-GRAFT), arXiv 2510.02692.

The public Python API (docs/api.md) follows the data flow
rollout → reward → select → buffer → train → compose → evaluate. Names are imported lazily, so
``import pgraft`` stays cheap and environment set-up (e.g. HF_HUB_OFFLINE) can come first.
"""

from importlib import import_module

__version__ = "0.1.0"

_EXPORTS = {
    # configs
    "PGraftConfig": "config",
    "SelectConfig": "config",
    "TrainConfig": "config",
    "SamplerConfig": "config",
    "TaskConfig": "config",
    "EvalConfig": "config",
    "DemoConfig": "config",
    "SweepConfig": "config",
    "UNetConfig": "config",
    "JudgeConfig": "config",
    # errors
    "PgraftError": "errors",
    "ConfigError": "errors",
    "RewardError": "errors",
    "CheckpointError": "errors",
    "ShapeError": "errors",
    # data flow
    "Schedule": "models.schedule",
    "ClassConditionalUNet": "models.unet",
    "rollout": "engine.rollout",
    "run_chain": "engine.rollout",
    "Rollout": "engine.rollout",
    "OverlappedScorer": "engine.scoring",
    "Selection": "engine.select",
    "score": "rewards.base",
    "JudgeReward": "rewards.judge",
    "select": "engine.select",
    "TrajectoryBuffer": "buffer",
    "global_select": "buffer",
    "DenoisingTrainer": "engine.train",
    "TrainingData": "engine.train",
    "dsm_loss": "engine.train",
    "make_trainable": "engine.train",
    "Composed": "engine.compose",
    "Single": "engine.compose",
    "AdapterOff": "engine.compose",
    "evaluate": "engine.evaluate",
    "Evaluation": "engine.evaluate",
    "Problem": "engine.problem",
    "SampleMetrics": "engine.problem",
    "Learner": "engine.learner",
    "TaskDefinition": "config.registry",
    "register_task": "config.registry",
    "Denoiser": "models.denoiser",
    "run_pgraft": "engine.rounds",
    "PGraftLoop": "engine.rounds",
    "PGraftRun": "engine.rounds",
    "RoundLog": "engine.rounds",
    "ensure_distributed": "engine.distributed",
    "local_device": "engine.distributed",
    "Watchdog": "engine.distributed",
    "all_gather_rows": "collectives",
    "shard_range": "collectives",
    "shard_slice": "collectives",
    "broadcast_object": "collectives",
    "Checkpointer": "engine.checkpoint",
    "mean_ci95": "stats",
    "pool": "stats",
    "paired_difference": "stats",
    "frechet_distance": "stats",
    "prepare_task": "tasks",
    "Task": "tasks",
    "denoise_step": "kernels.denoise_step",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name not in _EXPORTS:
        raise AttributeError(f"module 'pgraft' has no attribute {name!r}")
    return getattr(import_module(f".{_EXPORTS[name]}", __name__), name)
