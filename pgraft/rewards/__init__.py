"""Reward functions behind one signature: ``reward(images [B,C,H,W] in [0,1], conditions) -> [B]``.

Conditions are integer ids (class labels or prompt ids). Available: the judge classifier
(embedded tasks), JPEG compressibility / incompressibility (DDPO), CLIPScore and the LAION
aesthetic predictor (local CLIP weights), VQAScore (optional extra), P(yes) from a local
image–text model (VQAScore's form; the scenes task's reward), and a weighted sum.
"""

from .base import RewardFn, score
from .clip import AestheticScore, CLIPScore
from .jpeg import jpeg_compressibility, jpeg_incompressibility
from .judge import JudgeReward
from .vqascore import VQAScore
from .weighted import WeightedSum
from .yes_probability import YesProbability

__all__ = [
    "RewardFn",
    "score",
    "JudgeReward",
    "jpeg_compressibility",
    "jpeg_incompressibility",
    "CLIPScore",
    "AestheticScore",
    "VQAScore",
    "WeightedSum",
    "YesProbability",
]
