"""The learner contract: what a round of :class:`~.rounds.PGraftLoop` keeps from its rollout and
how it learns from it. The loop calls these members and nothing else, so a new algorithm is a new
class that meets this Protocol, chosen once by ``method.algorithm`` (docs/architecture.md).

:class:`~.rounds.RejectionSampling` (GRAFT / P-GRAFT: a GRS rule, the denoising loss) and
:class:`~.policy_gradient.PolicyGradient` (DDPO / GRPO: advantages, PPO's loss) are the two.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from ..buffer import TrajectoryBuffer
from ..config import PGraftConfig
from ..models.schedule import Schedule
from .rollout import Rollout
from .select import Acceptance
from .train import TrainingData


@runtime_checkable
class Learner(Protocol):
    record: bool  # the rollout keeps whole chains and their log-probabilities (else x_{N_I} and x_0)
    needs_samples: bool  # accept() reads the decoded samples or their duplicate keys (the dedup rule)

    @staticmethod
    def passes_for(cfg: PGraftConfig, schedule: Schedule) -> int:
        """Backward passes per minibatch (the DeepSpeed engine is built for them before the learner)."""
        ...

    def fields(self, sample_shape: tuple[int, ...], steps: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """The buffer's fields beyond the reward: name -> (per-row shape, dtype)."""
        ...

    def row_fields(self, traj: Rollout) -> dict[str, torch.Tensor]:
        """The rollout's tensors that fill those fields, one row per sample."""
        ...

    def accept(self, rewards: torch.Tensor, groups: int, round_: int, samples=None, keys=None) -> Acceptance:
        """The samples to keep from the flat [groups·M] reward table, with any extra fields."""
        ...

    def training_data(self, buffer: TrajectoryBuffer, schedule: Schedule) -> TrainingData:
        """What the trainer's minibatches teach (a denoising target, or a policy objective)."""
        ...

    def steps_per_round(self, rows: int, global_batch: int) -> int: ...

    def diagnostics(self) -> dict:
        """Extra RoundLog fields of the round just trained."""
        ...

    def state_dict(self) -> dict: ...

    def load_state_dict(self, state: dict) -> None: ...
