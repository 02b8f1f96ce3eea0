"""The task section of every config: what all tasks share (name, split, cache, the image tasks'
UNet and judge), and each registered task's own section under ``task.<name>`` (registry.py).

A task's presets (defaults of the experiments' method and eval sections) live in its definition,
next to its code; :func:`with_task_defaults` merges them under a config.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal, Optional

from pydantic import ConfigDict, Field, ValidationError, field_validator, model_validator

from . import registry
from .models import JudgeConfig, UNetConfig
from .schema import _Strict, deep_merge

BaseVariant = Literal["noisy_captions", "undertrained"]

# What each base variant sets in ``task.unet`` unless the config sets it (docs/experiments.md, "The base models";
# the same for every task, so a config written out for one task means the same for another).
# noisy_captions (default, the paper's premise): trained to convergence (linear LR decay) on
# conditions of which a fraction rho = 0.5 is another class's, so samples are sharp members of
# *some* class but follow the prompt poorly. undertrained (the first bases, a record): clean
# conditions, 150 steps at a constant LR, so the base is poor at every noise level.
BASE_VARIANTS: dict[str, dict] = {
    "noisy_captions": {"pretrain_steps": 3000, "pretrain_lr_schedule": "linear_decay", "caption_noise": 0.5},
    "undertrained": {"pretrain_steps": 150, "pretrain_lr_schedule": "constant", "caption_noise": 0.0},
}


class TaskConfig(_Strict):
    """The chosen task (``name``, any registered task) and its fields. A registered task with its
    own section reads it from ``task.<name>`` (filled with its defaults when absent); sections of
    other registered tasks are accepted and validated too, so a written-out config reads back."""

    # extra keys are the registered tasks' sections, validated by _sections below
    model_config = ConfigDict(extra="allow", validate_assignment=True)

    name: str = "digits"
    base: BaseVariant = "noisy_captions"
    image_size: int = Field(16, ge=8, le=64)
    test_fraction: float = Field(0.2, gt=0, lt=1)
    split_seed: int = 0
    unet: UNetConfig = Field(default_factory=UNetConfig)
    judge: JudgeConfig = Field(default_factory=JudgeConfig)
    cache_dir: Optional[Path] = None  # default: $PGRAFT_CACHE or ~/.cache/pgraft

    @property
    def definition(self) -> registry.TaskDefinition:
        return registry.get(self.name)

    @property
    def label(self) -> str:
        """How plots and grids name the task ("digits, noisy_captions base"; "molecules (QM9)")."""
        return self.definition.label or f"{self.name}, {self.base} base"

    @property
    def diversity_label(self) -> str:
        return self.definition.diversity_label

    @model_validator(mode="before")
    @classmethod
    def _variant_defaults(cls, data: Any) -> Any:
        """Fill ``unet`` fields the config leaves unset from the base variant's preset."""
        if not isinstance(data, dict):
            return data
        preset = BASE_VARIANTS.get(data.get("base", "noisy_captions"))
        unet = data.get("unet", {})
        if preset is None or not isinstance(unet, dict):
            return data  # field validation reports the bad name / variant / section
        return {**data, "unet": {**preset, **unet}}

    @field_validator("name")
    @classmethod
    def _known_name(cls, name: str) -> str:
        if not registry.is_known(name):
            raise ValueError(f"unknown task {name!r}; the known tasks are {', '.join(registry.names())}")
        return name

    @model_validator(mode="before")
    @classmethod
    def _sections(cls, data: Any) -> Any:
        """Validate every task section the config holds, and add the chosen task's when absent."""
        if not isinstance(data, dict):
            return data
        name = data.get("name", "digits")
        if not isinstance(name, str) or not registry.is_known(name):
            return data  # _known_name reports it, naming the field
        out = dict(data)
        chosen = registry.get(name).section
        if chosen is not None and name not in out:
            out[name] = {}
        for key in set(out) - set(cls.model_fields):
            section = registry.get(key).section if registry.is_known(key) else None
            if section is None:
                raise ValueError(f"{key!r} is neither a task field nor a registered task's section")
            value = out[key]
            try:
                out[key] = value if isinstance(value, section) else section.model_validate(value)
            except ValidationError as exc:  # raised here, its fields would lose the section's name
                raise ValueError("; ".join(
                    f"field 'task.{'.'.join(str(p) for p in (key, *e['loc']))}': {e['msg']}"
                    + ("" if isinstance(e.get("input"), dict) else f" (got {e.get('input')!r})")
                    for e in exc.errors()
                )) from None  # fmt: skip
        return out


def _task_name(data: dict) -> str:
    task = data.get("task", {})
    return task.get("name", "digits") if isinstance(task, dict) else getattr(task, "name", "digits")


def with_task_defaults(data: Any, sections: tuple[str, ...] = ("method", "eval")) -> Any:
    """``data`` with the chosen task's preset defaults merged under the given sections (the config
    wins; a section given as a config object is taken whole)."""
    task = task_definition(data)
    if task is None:
        return data  # field validation reports the bad task name
    defaults = task.defaults
    mergeable = [k for k in sections if k in defaults and isinstance(data.get(k, {}), dict)]
    return {**data, **{k: deep_merge(defaults[k], data.get(k, {})) for k in mergeable}}


def task_definition(data: Any) -> registry.TaskDefinition | None:
    """The definition of the task an experiment config's raw ``data`` names (None if unknown)."""
    if not isinstance(data, dict) or not registry.is_known(name := _task_name(data)):
        return None
    return registry.get(name)
