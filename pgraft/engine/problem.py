"""The problem a round loop solves, in one object: what the engine needs to know of a task.

:class:`Problem` replaces the six to eight positional arguments (base, reward, decode, the number
of conditions, the sample shape, the null label, ...) that the round loop and the evaluation took;
an embedded task (:class:`pgraft.tasks.Task`) is a Problem with its data and records attached.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, fields
from typing import Any, Callable, Protocol, runtime_checkable

import torch

from ..models.denoiser import Denoiser
from ..rewards.base import RewardFn


@runtime_checkable
class SampleMetrics(Protocol):
    """A task's own metrics of decoded samples (molecules: validity, novelty, FD, ...)."""

    COLUMNS: tuple[str, ...]  # the entries tables show, in order; a "diversity" among them replaces the pixel one

    def __call__(self, decoded: Any, labels: torch.Tensor) -> dict[str, float]: ...

    def real_samples(self, n: int) -> tuple[Any, torch.Tensor]:
        """Up to ``n`` real held-out samples (decoded) and their conditions: the reference row."""
        ...


@dataclass(kw_only=True)
class Problem:
    """A frozen base, a reward and how samples look.

    ``decode`` maps model space to what the reward takes (images in [0, 1], molecules, boxes);
    conditions are the integers ``0..num_conditions-1`` (class labels, prompt ids, type multisets).
    """

    base: Denoiser
    reward: RewardFn
    decode: Callable[[torch.Tensor], Any]
    num_conditions: int
    sample_shape: tuple[int, ...]
    # the condition the base reads as "no condition" (classifier-free guidance); None: the base's
    # ``null_label`` attribute if it has one
    null_label: int | None = None
    # the dedup rule's key per decoded sample (int64 [B]); None: the rule compares samples
    duplicate_key: Callable[[Any], torch.Tensor] | None = None
    # decoded samples -> predicted condition ids, for the evaluation's accuracy (None: no accuracy)
    classify: Callable[[Any], torch.Tensor] | None = None
    eval_conditions: torch.Tensor | None = None  # held-out condition ids; None: 0..num_conditions-1
    metrics: SampleMetrics | None = None

    def __post_init__(self):
        if self.null_label is None:
            self.null_label = getattr(self.base, "null_label", None)
        if self.num_conditions < 1:
            raise ValueError(f"num_conditions must be >= 1, got {self.num_conditions}")
        self.sample_shape = tuple(self.sample_shape)


_FIELDS = {f.name for f in fields(Problem)}


def problem_from_legacy(caller: str, positional: tuple[str, ...], args: tuple, kwargs: dict) -> tuple[Problem, tuple]:
    """A call in the positional form of earlier versions (deprecated), as the new form: the first
    ``len(positional)`` ``args`` (named by ``positional``) and the keyword arguments that belong
    to the Problem (popped from ``kwargs``) become one Problem. Returns it and the arguments after."""
    warnings.warn(
        f"{caller}({', '.join(positional)}, ...) is deprecated: pass a pgraft.Problem(...) "
        f"(or a prepared task) in their place",
        DeprecationWarning,
        stacklevel=3,
    )
    if len(args) <= len(positional):
        raise TypeError(f"{caller}: the deprecated form takes {len(positional)} positional arguments and a config")
    given = dict(zip(positional, args))
    if "conditions" in kwargs:  # evaluate()'s name for the held-out conditions
        kwargs["eval_conditions"] = kwargs.pop("conditions")
    given.update({k: kwargs.pop(k) for k in list(kwargs) if k in _FIELDS})
    return Problem(**given), args[len(positional) :]
