"""Molecule rewards (the molecules task): validity, QED, synthetic accessibility, logP and their
weighted sum, each on decoded molecule codes ``[B, CODE_DIM]`` (pgraft/chem/codec.py).

Every term scores an invalid molecule 0, not NaN: invalidity is what fine-tuning should learn
away, so it must rank below every valid molecule (for logP, whose values can be negative, an
invalid molecule ranks with logP = 0). Hence ``qed`` alone is validity × QED, the default.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..chem import properties
from ..chem.codec import check_codes, molecules

TERMS: dict[str, Callable] = {
    "validity": lambda mol: 1.0,
    "qed": properties.qed,
    "sa": properties.sa_normalised,  # (10 − SA) / 9 in [0, 1]
    "logp": properties.logp,
}


class MoleculeReward:
    """``sum_i weight_i · term_i(molecule)`` per sample, 0 for an invalid molecule."""

    def __init__(self, terms: Sequence[tuple[str, float]]):
        if not terms:
            raise ValueError("a molecule reward needs at least one term")
        unknown = [name for name, _ in terms if name not in TERMS]
        if unknown:
            raise ValueError(f"unknown molecule reward term(s) {unknown}; known: {sorted(TERMS)}")
        self.terms = [(name, float(w)) for name, w in terms]
        self.__name__ = " + ".join(name if w == 1 else f"{w:g}·{name}" for name, w in self.terms)

    def __call__(self, codes: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        check_codes(codes, f"the molecule reward {self.__name__}")
        values = [
            0.0 if mol is None else sum(w * TERMS[name](mol) for name, w in self.terms) for mol in molecules(codes)
        ]
        return torch.tensor(values, dtype=torch.float32)


def validity(codes, conditions):
    return MoleculeReward([("validity", 1.0)])(codes, conditions)


def qed(codes, conditions):
    """validity × QED: the molecules task's default reward."""
    return MoleculeReward([("qed", 1.0)])(codes, conditions)


def sa(codes, conditions):
    return MoleculeReward([("sa", 1.0)])(codes, conditions)


def logp(codes, conditions):
    return MoleculeReward([("logp", 1.0)])(codes, conditions)
