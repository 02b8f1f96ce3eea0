"""Reward functions behind one signature: ``reward(images [B,C,H,W] in [0,1], conditions) -> [B]``."""

from .base import RewardFn, score
from .judge import JudgeReward

__all__ = ["RewardFn", "score", "JudgeReward"]
