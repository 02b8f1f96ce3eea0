"""Typed, validated configs (pydantic), loaded from YAML and overridable from the command line.

Every field carries its allowed range; a bad value raises :class:`ConfigError` whose message
names the field (dotted path) and what is allowed. Defaults marked *(ours)* are our choices where
the paper is silent (docs/method_choices.md). The schemas are split by concern: ``schema`` (the
machinery), ``models`` (networks), ``engine`` (the round loop), ``tasks`` (the task section and
the registry's presets), ``experiments`` (one config per command); every name is importable
from ``pgraft.config``. A task's own section and presets live in its module (registry.py).
"""

from __future__ import annotations

import warnings

from ..errors import ConfigError
from . import registry
from .engine import (
    Algorithm,
    CheckpointConfig,
    DistributedConfig,
    EvalConfig,
    PGraftConfig,
    PolicyGradientConfig,
    SamplerConfig,
    SelectConfig,
    SelectRule,
    SpeedConfig,
    TrainConfig,
)
from .experiments import (
    BasesConfig,
    CompareConfig,
    CompareMethod,
    DemoConfig,
    DemoRun,
    IncConfig,
    IncEvalConfig,
    InversionConfig,
    RewardName,
    RewardTerm,
    StableDiffusionConfig,
    SweepConfig,
    TrainRunConfig,
    TuneConfig,
)
from .models import FlowModelConfig, GraphModelConfig, JudgeConfig, LayoutFidConfig, UNetConfig
from .registry import TaskDefinition, register_task
from .schema import build, deep_merge, load, to_yaml
from .tasks import BASE_VARIANTS, BaseVariant, TaskConfig

__all__ = [
    "Algorithm", "BASE_VARIANTS", "ConfigError", "BaseVariant", "BasesConfig", "CheckpointConfig", "CompareConfig",
    "CompareMethod", "DemoConfig", "DemoRun", "DistributedConfig", "EvalConfig", "FlowModelConfig",
    "GraphModelConfig", "IncConfig", "IncEvalConfig", "InversionConfig", "JudgeConfig", "LayoutFidConfig",
    "PGraftConfig", "PolicyGradientConfig", "RewardName", "RewardTerm", "SamplerConfig", "SelectConfig",
    "SelectRule", "SpeedConfig", "StableDiffusionConfig", "SweepConfig", "TaskConfig", "TaskDefinition",
    "TrainConfig", "TrainRunConfig", "TuneConfig", "UNetConfig", "build", "deep_merge", "load", "register_task",
    "registry", "to_yaml",
]  # fmt: skip

# Names of the single-module config of earlier versions, now read from each task's definition:
# name -> (what replaces it, how to compute it).
_MOVED = {
    "TASK_DEFAULTS": ("TaskDefinition.defaults", lambda: {n: d.defaults for n, d in _defined() if d.defaults}),
    "DEMO_RUNS": ("TaskDefinition.demo_runs", lambda: {n: list(d.demo_runs) for n, d in _defined()}),
    "DEMO_N_I": ("TaskDefinition.demo_n_i", lambda: {n: d.demo_n_i for n, d in _defined()}),
    "TUNED_BASELINES": ("TaskDefinition.tuned_baselines", lambda: {n: d.tuned_baselines for n, d in _defined()}),
    "MoleculesConfig": ("pgraft.tasks.molecules.MoleculesConfig", lambda: registry.get("molecules").section),
    "LayoutsConfig": ("pgraft.tasks.layouts.LayoutsConfig", lambda: registry.get("layouts").section),
}


def _defined():
    return [(name, registry.get(name)) for name in registry.names()]


def __getattr__(name: str):
    if name not in _MOVED:
        raise AttributeError(f"module 'pgraft.config' has no attribute {name!r}")
    replacement, value = _MOVED[name]
    warnings.warn(f"pgraft.config.{name} is deprecated: use {replacement}", DeprecationWarning, stacklevel=2)
    return value()
