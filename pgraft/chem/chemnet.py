"""The Fréchet ChemNet Distance (FCD; Preuer et al. 2018), the distribution metric that MOSES,
GuacaMol and the QM9 graph-diffusion papers report, through the ``fcd`` package: its ChemNet
weights (shipped inside its wheel), its SMILES tokenisation and its Fréchet distance.

The package's own loader calls ``torch.load`` on the weights file with torch's defaults. pgraft
unpickles nothing it has not verified: the file's bytes are checked against the SHA-256 of the
release this module was written for (fcd 1.2.2), then read with ``weights_only=True`` (plain
tensors and containers; the file is a list of layer configs and state dicts and needs nothing
more). A different file is refused with both digests named.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import io

import numpy as np
import torch

from ..errors import CheckpointError
from . import require

CHEMNET_FILE = "ChemNet_v0.13_pretrained.pt"
CHEMNET_SHA256 = "c22e977602b30eeabd7f81e6c790dd3234c7d7788c6c3e7979d8720ccc96951a"  # fcd 1.2.2


@functools.cache
def chemnet() -> torch.nn.Module:
    """ChemNet from the installed ``fcd`` package, verified and loaded without unpickling code."""
    require("fcd", "the Fréchet ChemNet Distance (molecules metrics)")
    from fcd.utils import load_imported_model

    data = importlib.resources.files("fcd").joinpath(CHEMNET_FILE).read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    if digest != CHEMNET_SHA256:
        raise CheckpointError(
            f"fcd's {CHEMNET_FILE} has SHA-256 {digest}, not the {CHEMNET_SHA256} of fcd 1.2.2 that pgraft "
            "verified: install fcd==1.2.2 (a different file is not loaded)"
        )
    layers = torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")
    return load_imported_model(layers).eval().requires_grad_(False)


@torch.no_grad()
def activations(smiles: list[str], batch_size: int = 256) -> np.ndarray:
    """ChemNet's penultimate activations [N, 512] of ``smiles`` (canonical SMILES, as FCD expects),
    tokenised and padded by the package (its default length, 350), computed in this process."""
    from fcd.utils import SmilesDataset

    if not smiles:
        return np.zeros((0, 512), dtype=np.float32)
    net, data = chemnet(), SmilesDataset(smiles)
    out = []
    for lo in range(0, len(data), batch_size):
        batch = torch.from_numpy(np.stack([data[i] for i in range(lo, min(lo + batch_size, len(data)))]))
        out.append(net(batch.transpose(1, 2).float()).numpy().astype(np.float32))
    return np.concatenate(out)


def fcd_from_activations(a: np.ndarray, b: np.ndarray) -> float:
    """The package's Fréchet distance between Gaussians fitted to two activation sets."""
    from fcd.utils import calculate_frechet_distance

    if len(a) < 2 or len(b) < 2:
        return float("nan")
    return float(calculate_frechet_distance(a.mean(0), np.cov(a.T), b.mean(0), np.cov(b.T)))
