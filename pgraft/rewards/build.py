"""Build a reward from config terms: one term is that reward, several are a weighted sum."""

from __future__ import annotations

from typing import Sequence

from ..config import RewardTerm
from .base import RewardFn
from .clip import AestheticScore, CLIPScore
from .jpeg import jpeg_compressibility, jpeg_incompressibility
from .vqascore import VQAScore
from .weighted import WeightedSum


def build_reward(terms: Sequence[RewardTerm], prompts: Sequence[str], device=None) -> RewardFn:
    """``prompts[i]`` is the text of condition id i (rewards that read the prompt need it)."""
    built = []
    for t in terms:
        if t.name == "vqascore":
            fn = VQAScore(prompts, t.model, None if device is None else str(device))
        elif t.name == "clip_score":
            fn = CLIPScore.from_pretrained(t.clip_path, prompts, device)
        elif t.name == "aesthetic":
            fn = AestheticScore.from_pretrained(t.clip_path, t.head_path, device)
        else:
            fn = {"jpeg_compressibility": jpeg_compressibility, "jpeg_incompressibility": jpeg_incompressibility}[
                t.name
            ]
        built.append((t.weight, fn))
    if len(built) == 1 and built[0][0] == 1.0:
        return built[0][1]
    return WeightedSum(built)
