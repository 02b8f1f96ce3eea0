"""The `molecules` task: QM9's small organic molecules as graphs (pgraft/chem/codec.py), a graph-
transformer base pretrained on them, and RDKit rewards (validity × QED by default).

QM9 (130,831 molecules of at most 9 heavy atoms C/N/O/F) ships inside the ``qm9pack`` package as
CSVs; they are read by path (its loader uses the deprecated pkg_resources). Every SMILES is parsed
and encoded once; the 0.4% the codec cannot represent (charged atoms: zwitterions) are left out and
counted. The encoded set is cached under $PGRAFT_CACHE (parsing takes ~30 s) and split train /
held-out with a fixed seed. The task is unconditional: one condition, so a selection group is M
samples of the same (empty) prompt.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import importlib.metadata
import importlib.util
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, Optional

import torch
from pydantic import Field

from ..chem import codec, properties, require, require_rdkit
from ..config import GraphModelConfig, TaskConfig
from ..config.registry import TaskDefinition, register_task
from ..config.schema import _Strict
from ..errors import CheckpointError
from ..io import load_state, save_state
from ..models.graph_transformer import GraphDenoiser
from ..models.unet import scheduler_config_for
from ..report import save_figure
from ..stats import frechet_distance
from . import cache
from .pretraining import pretrained_base
from .task import Task

log = logging.getLogger("pgraft")

NUM_CLASSES = 1
CLASS_NAMES = ["molecule"]
QM9_FILES = ("qm9_part1.csv", "qm9_part2.csv", "qm9_part3.csv")
CODEC_VERSION = 1  # bump when the codec's encoding changes (invalidates the cached data set)


MoleculeTerm = Literal["validity", "qed", "sa", "logp"]


class MoleculeRewardTerm(_Strict):
    name: MoleculeTerm
    weight: float = 1.0


class MoleculesConfig(_Strict):
    """The molecules task's section, ``task.molecules``: QM9 (qm9pack) as graphs, a graph-transformer
    base (``model``, docs/molecules.md), RDKit rewards."""

    model: GraphModelConfig = Field(default_factory=GraphModelConfig)
    # every term scores an invalid molecule 0, so qed alone is validity × QED (the default)
    reward: list[MoleculeRewardTerm] = Field(default_factory=lambda: [MoleculeRewardTerm(name="qed")], min_length=1)
    # None: all of QM9; N: a seeded random subset of N molecules (tests, quick experiments)
    max_molecules: Optional[int] = Field(None, ge=10)
    # held-out molecules in the Fréchet distance's reference set (and training molecules in its floor)
    reference_size: int = Field(5000, ge=100)


@dataclass(frozen=True)
class MoleculeData:
    train_x: torch.Tensor  # [N, SAMPLE_DIM] model space
    train_y: torch.Tensor  # [N] zeros: the one condition
    test_x: torch.Tensor
    test_y: torch.Tensor
    train_smiles: list[str]  # canonical, stereo-free
    test_smiles: list[str]
    skipped: dict[str, int]  # QM9 molecules the codec cannot represent, by kind


def qm9_folder() -> Path:
    require("qm9pack", "the molecules task's data (QM9)")
    spec = importlib.util.find_spec("qm9pack")
    return Path(spec.submodule_search_locations[0]) / "data"


def read_qm9_smiles() -> list[str]:
    import pandas as pd

    folder = qm9_folder()
    return [s for name in QM9_FILES for s in pd.read_csv(folder / name, usecols=["SMILES"])["SMILES"].tolist()]


def encode_qm9(smiles: list[str]) -> tuple[torch.Tensor, list[str], dict[str, int]]:
    """Codes [N, CODE_DIM] (uint8), canonical SMILES, and the count of each kind skipped."""
    require_rdkit()
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    codes, canon, skipped = [], [], collections.Counter()
    for s in smiles:
        mol = Chem.MolFromSmiles(s)
        try:
            codes.append(codec.encode_codes(mol))
        except codec.EncodeError as exc:
            skipped[exc.kind] += 1
            continue
        canon.append(codec.canonical_smiles(mol))
    return torch.stack(codes).to(torch.uint8), canon, dict(skipped)


def _encoded_qm9(cfg: TaskConfig) -> tuple[torch.Tensor, list[str], dict[str, int]]:
    """The whole encoded QM9, from the cache or encoded now and cached."""
    payload = {"data": "qm9", "qm9pack": importlib.metadata.version("qm9pack"), "codec": CODEC_VERSION}
    path = cache.entry_path(cache.cache_root(cfg.cache_dir), "molecules", "data", payload)
    if path.exists():
        try:
            state, meta = load_state(path)
            return state["codes"], meta["smiles"], meta["skipped"]
        except (CheckpointError, KeyError) as exc:  # corrupt or partial: encode again and overwrite
            log.warning("the cached QM9 encoding is unusable (%s); encoding QM9 again (~30 s)", exc)
    codes, smiles, skipped = encode_qm9(read_qm9_smiles())
    save_state(path, {"codes": codes}, {"smiles": smiles, "skipped": skipped})
    return codes, smiles, skipped


def load_molecules_split(cfg: TaskConfig) -> MoleculeData:
    codes, smiles, skipped = _encoded_qm9(cfg)
    g = torch.Generator().manual_seed(cfg.split_seed)
    order = torch.randperm(codes.shape[0], generator=g)
    if cfg.molecules.max_molecules is not None:
        order = order[: cfg.molecules.max_molecules]
    n_test = max(1, round(cfg.test_fraction * order.numel()))
    test, train = order[:n_test], order[n_test:]
    x = lambda idx: codec.codes_to_model(codes[idx].long())  # noqa: E731
    zeros = lambda idx: torch.zeros(idx.numel(), dtype=torch.int64)  # noqa: E731
    return MoleculeData(
        x(train), zeros(train), x(test), zeros(test),
        [smiles[i] for i in train.tolist()], [smiles[i] for i in test.tolist()], skipped,
    )  # fmt: skip


def build_base(cfg: TaskConfig) -> GraphDenoiser:
    m = cfg.molecules.model
    return GraphDenoiser(m, NUM_CLASSES, scheduler_config_for(m))


def base_payload(cfg: TaskConfig) -> dict:
    return {
        "task": "molecules",
        "codec": CODEC_VERSION,
        "test_fraction": cfg.test_fraction,
        "split_seed": cfg.split_seed,
        "max_molecules": cfg.molecules.max_molecules,
        **cfg.molecules.model.model_dump(mode="json"),
    }


class MoleculeMetrics:
    """Metrics of decoded samples (docs/molecules.md): validity (one fragment, fully sanitised:
    what the rewards count), ``validity_gdss`` (the field's "validity without correction", by
    GDSS's rule: valences only, fragments allowed), uniqueness (unique / valid), novelty (unique
    valid not in the training set / unique valid), mean QED and SA of the valid ones, internal
    diversity, ``fcd``: the Fréchet ChemNet Distance (pgraft/chem/chemnet.py) of the valid samples
    to ``reference_size`` held-out QM9 molecules, and ``fd``: the Fréchet distance to the same
    molecules in a standardised RDKit descriptor space (standardised with the training set's mean
    and std). :meth:`real_samples` are held-out molecules outside that reference: the row that
    shows what real data scores (the floor of both distances at the same sample size). The
    reference's ChemNet activations are computed once, on first use, and kept in ``cache_root``."""

    COLUMNS = ("validity", "validity_gdss", "uniqueness", "novelty", "qed", "sa", "diversity", "fcd", "fd")

    def __init__(self, data: MoleculeData, reference_size: int, seed: int = 0, cache_root: Path | None = None):
        from rdkit import Chem

        self.data = data
        self.train = set(data.train_smiles)
        g = torch.Generator().manual_seed(seed)
        train_pick = torch.randperm(len(data.train_smiles), generator=g)[:reference_size].tolist()
        self.test_order = torch.randperm(len(data.test_smiles), generator=g)
        self.reference_size = min(reference_size, len(data.test_smiles) // 2)  # leave real samples outside it
        mols = lambda smiles, idx: [Chem.MolFromSmiles(smiles[i]) for i in idx]  # noqa: E731
        train_desc = properties.descriptor_vectors(mols(data.train_smiles, train_pick))
        self.mean, self.std = train_desc.mean(0), train_desc.std(0).clamp_min(1e-8)
        reference = self.test_order[: self.reference_size].tolist()
        self.reference = self.standardise(properties.descriptor_vectors(mols(data.test_smiles, reference)))
        self.reference_smiles = [data.test_smiles[i] for i in reference]
        self.cache_root = cache_root

    @functools.cached_property
    def reference_activations(self):
        """ChemNet's activations of the reference molecules (cached: ~1 ms a molecule)."""
        from ..chem import chemnet

        digest = hashlib.sha256("\n".join(self.reference_smiles).encode()).hexdigest()
        payload = {"chemnet": chemnet.CHEMNET_SHA256, "reference_smiles": digest}
        path = None
        if self.cache_root is not None:
            path = cache.entry_path(self.cache_root, "molecules", "fcd_reference", payload)
            if path.exists():
                try:
                    return load_state(path)[0]["activations"].numpy()
                except (CheckpointError, KeyError) as exc:
                    log.warning("the cached ChemNet reference is unusable (%s); computing it again", exc)
        act = chemnet.activations(self.reference_smiles)
        if path is not None:
            save_state(path, {"activations": torch.from_numpy(act)}, {"molecules": len(self.reference_smiles)})
        return act

    def real_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Up to ``n`` decoded held-out molecules that are not in the FD reference, and their conditions."""
        idx = self.test_order[self.reference_size : self.reference_size + n]
        return codec.decode(self.data.test_x[idx]), self.data.test_y[idx]

    def standardise(self, desc: torch.Tensor) -> torch.Tensor:
        return (desc - self.mean) / self.std

    def __call__(self, codes: torch.Tensor, labels: torch.Tensor) -> dict:
        mols = codec.molecules(codes)
        valid = [m for m in mols if m is not None]
        smiles = [codec.canonical_smiles(m) for m in valid]
        unique = set(smiles)
        nan = float("nan")
        mean = lambda f: sum(f(m) for m in valid) / len(valid) if valid else nan  # noqa: E731
        return {
            "validity": len(valid) / len(mols) if mols else nan,
            "validity_gdss": codec.valency_validity(codes) if mols else nan,
            "uniqueness": len(unique) / len(valid) if valid else nan,
            "novelty": len(unique - self.train) / len(unique) if unique else nan,
            "qed": mean(properties.qed),
            "sa": mean(properties.sa_score),
            "diversity": properties.internal_diversity(valid),
            "fcd": self.fcd(smiles),
            "fd": self.fd(valid),
            "valid_samples": len(valid),
        }

    def fcd(self, smiles: list[str]) -> float:
        """The FCD of these canonical SMILES (duplicates kept: the sampled distribution) to the reference."""
        from ..chem import chemnet

        if len(smiles) < 2:
            return float("nan")
        return chemnet.fcd_from_activations(chemnet.activations(smiles), self.reference_activations)

    def fd(self, mols: list) -> float:
        if len(mols) < 2:
            return float("nan")
        return frechet_distance(self.standardise(properties.descriptor_vectors(mols)), self.reference)


def render(codes: torch.Tensor, labels: torch.Tensor, path, title: str, per_row: int = 8, rows: int = 3) -> Path:
    """A titled grid of the first samples as RDKit drawings (an invalid one: a blank cell labelled so)."""
    import matplotlib.pyplot as plt
    from rdkit import Chem
    from rdkit.Chem import Draw

    mols = codec.molecules(codes[: per_row * rows])
    legends = [codec.canonical_smiles(m) if m is not None else "(invalid)" for m in mols]
    img = Draw.MolsToGridImage(
        [m if m is not None else Chem.MolFromSmiles("*") for m in mols],  # an invalid sample: a "*"
        molsPerRow=per_row,
        subImgSize=(160, 140),
        legends=legends,
    )
    fig, ax = plt.subplots(figsize=(img.width / 110, img.height / 110 + 0.4))
    ax.imshow(img)
    ax.axis("off")
    ax.set_title(title, fontsize=10)
    return save_figure(fig, path)


def prepare(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    from ..rewards.molecules import MoleculeReward

    t0 = time.time()
    data = load_molecules_split(cfg)
    m = cfg.molecules
    build = lambda: build_base(cfg)  # noqa: E731
    base, base_path = pretrained_base(cfg, build, data, m.model, "task.molecules.model", force, progress)
    reward = MoleculeReward([(t.name, t.weight) for t in m.reward])
    reference = data.test_x[: m.reference_size]
    real_reward = float(reward(codec.decode(reference), torch.zeros(reference.shape[0], dtype=torch.int64)).mean())
    return Task(
        name="molecules",
        data=data,
        base=base,
        reward=reward,
        real_reward_mean=real_reward,
        num_conditions=NUM_CLASSES,
        class_names=CLASS_NAMES,
        sample_shape=(codec.SAMPLE_DIM,),
        decode=codec.decode,
        paths={"base": str(base_path)},
        pretrain_s=time.time() - t0,
        duplicate_key=codec.duplicate_keys,
        metrics=MoleculeMetrics(data, m.reference_size, cache_root=cache.cache_root(cfg.cache_dir)),
        render=render,
    )


register_task(
    TaskDefinition(
        "molecules",
        prepare,
        lambda cfg: {"base": base_payload(cfg)},
        label="molecules (QM9)",
        diversity_label="diversity (1 − mean Tanimoto)",
        section=MoleculesConfig,
        # One unconditional group: M = 1024 samples a round (the image demos draw 10 × 64 = 640),
        # K = 128 (12.5%, as 8 of 64) under the dedup rule (the paper's molecule setting), rollout in
        # one chunk, and 2,000 held-out samples in every evaluation (docs/molecules.md).
        defaults={
            "method": {"samples_per_condition": 1024, "rollout_batch": 1024, "select": {"rule": "dedup", "k": 128}},
            "eval": {"samples_per_class": 2000, "batch_size": 1000},
        },
        # GRAFT with and without the dedup rule, P-GRAFT with it, and DDPO
        demo_runs=(
            {"name": "graft", "kind": "graft", "changes": {"select": {"rule": "top_k"}}},
            {"name": "graft_dedup", "kind": "graft", "changes": {"select": {"rule": "dedup"}}},
            {"name": "pgraft_dedup", "kind": "pgraft", "changes": {"select": {"rule": "dedup"}}},
            {"name": "ddpo", "kind": "ddpo"},
        ),
        # the earlier base's sweep chose 3; on the shipped base 0, 3 and 6 tie within their seed CIs
        # (docs/experiments.md "Choosing N_I")
        demo_n_i=3,
        # DDPO only (the demo's baseline): docs/results/tune_molecules{,_refine}.json
        tuned_baselines={"ddpo": {"train": {"lr": 1e-4}, "pg": {"clip_range": 1e-2}}},
    )
)
