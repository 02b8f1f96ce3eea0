"""The task registry: every task is one :class:`TaskDefinition`, registered by the module that
defines it; configs, experiments and the CLI read tasks from here and from nowhere else.

A task module ends with ``register_task(TaskDefinition(...))``. The embedded tasks are found by name in
:data:`BUILTIN` (module paths, imported on first use, so that reading a config does not import
every task's models); a task of another package is registered by importing its module, or by an
entry point in the ``pgraft.tasks`` group whose object is its definition (docs/custom_task.md).
"""

from __future__ import annotations

import functools
import importlib
import importlib.metadata
from dataclasses import dataclass, field
from typing import Any, Callable

from pydantic import BaseModel

from ..errors import ConfigError

# The embedded tasks, in the order tables list them: name -> the module that registers it.
BUILTIN: dict[str, str] = {
    "digits": "pgraft.tasks.digits",
    "animals": "pgraft.tasks.animals",
    "molecules": "pgraft.tasks.molecules",
    "layouts": "pgraft.tasks.layouts",
    "scenes": "pgraft.tasks.scenes",
}
ENTRY_POINTS = "pgraft.tasks"

# GRAFT against P-GRAFT: what `pgraft demo` runs on a task that names nothing else
DEFAULT_DEMO_RUNS: tuple[dict, ...] = ({"name": "graft", "kind": "graft"}, {"name": "pgraft", "kind": "pgraft"})


@dataclass(frozen=True)
class TaskDefinition:
    """Everything pgraft knows about a task, in one object.

    ``prepare(cfg, force=..., progress=...)`` builds the runtime :class:`pgraft.tasks.Task` (data,
    frozen base, reward, metrics, renderer) from a validated ``TaskConfig``; ``payloads(cfg)`` is
    what keys each pretrained model in the cache ({"base": {...}, "judge": {...}}), so that
    `pgraft pretrain --ship` and the cache agree. The rest are the experiments' presets.
    """

    name: str
    prepare: Callable[..., Any]
    payloads: Callable[[Any], dict[str, dict]]
    # how plots and grids name the task; None: "<name>, <base variant> base"
    label: str | None = None
    diversity_label: str = "diversity (within-class RMS dist.)"
    # the task's own config section, read from ``task.<name>`` (absent: its defaults)
    section: type[BaseModel] | None = None
    # the base variants of task.base (caption noise, pretraining length) apply to its task.unet
    base_variants: bool = False
    # merged under an experiment's sections ("method", "eval") when the task is chosen; the config wins
    defaults: dict[str, dict] = field(default_factory=dict)
    demo_runs: tuple[dict, ...] = DEFAULT_DEMO_RUNS  # DemoRun fields of `pgraft demo`'s models
    demo_n_i: int = 6  # N_I of the demo's P-GRAFT runs
    # the baselines' changes to the shared method ({"ddpo": {...}, "grpo": {...}}): their tuned values
    tuned_baselines: dict[str, dict] = field(default_factory=dict)

    def __post_init__(self):
        if not self.name.isidentifier() or self.name != self.name.lower():
            raise ValueError(f"task name {self.name!r} must be a lower-case identifier (it names a config section)")


_REGISTERED: dict[str, TaskDefinition] = {}


def register_task(definition: TaskDefinition, *, replace: bool = False) -> TaskDefinition:
    """Make ``definition`` a task every config, experiment and CLI command accepts by its name."""
    known = _REGISTERED.get(definition.name)
    if known is not None and known is not definition and not replace:
        raise ValueError(f"a task named {definition.name!r} is already registered (pass replace=True to replace it)")
    _REGISTERED[definition.name] = definition
    return definition


def unregister_task(name: str) -> None:
    """Forget a task registered at run time (the embedded tasks stay)."""
    if name in BUILTIN:
        raise ValueError(f"{name!r} is an embedded task; it cannot be unregistered")
    _REGISTERED.pop(name, None)


@functools.cache  # scanning the installed distributions costs milliseconds; configs validate often
def _entry_points() -> dict[str, importlib.metadata.EntryPoint]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)}


def names() -> list[str]:
    """Every task a config may name: the embedded ones first, then the registered and installed ones."""
    return list(dict.fromkeys([*BUILTIN, *_REGISTERED, *_entry_points()]))


def is_known(name: str) -> bool:
    return name in _REGISTERED or name in BUILTIN or name in _entry_points()


def get(name: str) -> TaskDefinition:
    """The definition of task ``name``; a clear error listing the known tasks otherwise."""
    if name not in _REGISTERED:
        if name in BUILTIN:
            importlib.import_module(BUILTIN[name])  # the module registers its definition
        elif name in (eps := _entry_points()):
            definition = eps[name].load()
            if not isinstance(definition, TaskDefinition) or definition.name != name:
                raise ConfigError(f"entry point {ENTRY_POINTS}:{name} must be a TaskDefinition named {name!r}")
            register_task(definition)
    if name not in _REGISTERED:
        raise ConfigError(f"unknown task {name!r}; the known tasks are {', '.join(names())}")
    return _REGISTERED[name]
