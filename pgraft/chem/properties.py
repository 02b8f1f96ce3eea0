"""Molecular properties, each RDKit's own function: QED, synthetic accessibility (RDKit's Contrib
SA scorer, shipped in the wheel), Crippen logP, a standardisable descriptor vector and Morgan
fingerprints (the molecule rewards and metrics)."""

from __future__ import annotations

import functools
import os
import sys

import torch

from . import require_rdkit

SA_WORST, SA_BEST = 10.0, 1.0  # the SA score's range (Ertl & Schuffenhauer 2009): 1 easy, 10 hard


def qed(mol) -> float:
    from rdkit.Chem import QED

    return float(QED.qed(mol))


@functools.cache
def _sascorer():
    require_rdkit()
    from rdkit.Chem import RDConfig

    path = os.path.join(RDConfig.RDContribDir, "SA_Score")
    if path not in sys.path:
        sys.path.append(path)
    import sascorer  # RDKit's Contrib module: no package of its own

    return sascorer


def sa_score(mol) -> float:
    """The raw SA score in [1, 10] (lower: easier to synthesise)."""
    return float(_sascorer().calculateScore(mol))


def sa_normalised(mol) -> float:
    """SA mapped to [0, 1], higher is easier: (10 − SA) / 9 (ours; the usual linear rescaling)."""
    return (SA_WORST - sa_score(mol)) / (SA_WORST - SA_BEST)


def logp(mol) -> float:
    from rdkit.Chem import Crippen

    return float(Crippen.MolLogP(mol))


# The descriptor space of the Fréchet distance (ours, docs/molecules.md): size, polarity, shape and
# composition descriptors that QM9-sized molecules vary in, standardised with the training set's
# mean and std before the distance.
DESCRIPTORS = (
    "MolWt", "MolLogP", "MolMR", "TPSA", "NumHDonors", "NumHAcceptors", "NumRotatableBonds", "RingCount",
    "NumAromaticRings", "NumAliphaticRings", "FractionCSP3", "HeavyAtomCount", "NumHeteroatoms", "BertzCT",
    "NumValenceElectrons", "qed",
)  # fmt: skip


def descriptor_vectors(mols: list) -> torch.Tensor:
    """[N, len(DESCRIPTORS)] float64 for the given (valid) molecules."""
    from rdkit.Chem import Descriptors

    fns = [getattr(Descriptors, name) for name in DESCRIPTORS]
    return torch.tensor([[float(f(m)) for f in fns] for m in mols], dtype=torch.float64).reshape(-1, len(fns))


def morgan_fingerprints(mols: list):
    from rdkit.Chem import rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    return [gen.GetFingerprint(m) for m in mols]


def internal_diversity(mols: list) -> float:
    """1 − the mean Tanimoto similarity of Morgan fingerprints (radius 2, 2048 bits) over all pairs
    of distinct samples (MOSES's IntDiv₁); NaN below 2 molecules."""
    from rdkit import DataStructs

    fps = morgan_fingerprints(mols)
    n = len(fps)
    if n < 2:
        return float("nan")
    total = sum(sum(DataStructs.BulkTanimotoSimilarity(fps[i], fps[i + 1 :])) for i in range(n - 1))
    return 1.0 - total / (n * (n - 1) / 2)
