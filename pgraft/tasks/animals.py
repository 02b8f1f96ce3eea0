"""The `animals` task's data: 10,000 real 28×28 animal silhouettes from the `animal-shape-mnist`
package (MIT), 10 classes, and captions that name them ("a silhouette of a giraffe").

The package ships its arrays as gzip'd pickles; they are read with an unpickler that admits only
numpy's array reconstruction, so a tampered file cannot run code (its own loader imports
tensorflow, so we never import it). Images are area-downsampled to ``image_size``, scaled to
[-1, 1], and split train / held-out with a fixed seed, stratified by class.
"""

from __future__ import annotations

import gzip
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from sklearn.model_selection import train_test_split

from ..config.registry import register_task
from ..errors import PgraftError
from .images import ImageData, ImageTask

CLASS_NAMES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
NUM_CLASSES = len(CLASS_NAMES)
# Prompt p = class + NUM_CLASSES·phrasing; phrasing 0 is the one rollouts and evaluation use,
# pretraining draws all of them (ours).
PHRASINGS = ["a silhouette of a {}", "the shape of a {}", "a black and white picture of a {}"]


def captions() -> list[str]:
    """Every prompt, in prompt-id order, then the empty caption (the null prompt for CFG)."""
    return [p.format(name) for p in PHRASINGS for name in CLASS_NAMES] + [""]


class _NumpyOnly(pickle.Unpickler):
    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a data file")
        return super().find_class(module, name)


def _package_dir(package: str, extra: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise PgraftError(f"the animals task needs the package {package!r}: pip install {extra} (docs/bases.md)")
    return Path(spec.submodule_search_locations[0])


def _read(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as fh:
        return _NumpyOnly(fh).load()


def load_animals_split(image_size: int = 16, test_fraction: float = 0.2, seed: int = 0) -> ImageData:
    folder = _package_dir("animal_shape_mnist", "animal-shape-mnist==0.39") / "data" / "Animal Shape"
    x = torch.from_numpy(_read(folder / "animal_data_version_3.gz").astype(np.float32) / 255.0).unsqueeze(1)
    y = torch.from_numpy(_read(folder / "animal_label_version_3.gz").astype(np.int64))
    if image_size != x.shape[-1]:
        x = F.interpolate(x, size=(image_size, image_size), mode="area")
    x = x.clamp(0, 1) * 2 - 1
    idx = np.arange(len(y))
    tr, te = train_test_split(idx, test_size=test_fraction, random_state=seed, stratify=y.numpy())
    tr, te = torch.as_tensor(tr), torch.as_tensor(te)
    return ImageData(x[tr], y[tr], x[te], y[te])


def pretraining_prompts(labels: torch.Tensor, seed: int) -> torch.Tensor:
    """A seeded random phrasing for each training image: prompt id = class + NUM_CLASSES·phrasing."""
    g = torch.Generator().manual_seed(seed)
    return labels + NUM_CLASSES * torch.randint(0, len(PHRASINGS), labels.shape, generator=g)


def build_base(cfg):
    """The text-conditional UNet over all-MiniLM-L6-v2 token embeddings of every caption."""
    from ..models.text_encoder import encode_captions
    from ..models.text_unet import TextConditionalUNet

    embeds, mask = encode_captions(captions())
    return TextConditionalUNet.from_config(cfg.unet, cfg.image_size, embeds, mask)


TASK = ImageTask(
    "animals",
    CLASS_NAMES,
    lambda cfg: load_animals_split(cfg.image_size, cfg.test_fraction, cfg.split_seed),
    build_base,
    lambda cfg, y: pretraining_prompts(y, cfg.unet.seed),
    lambda cfg: {"captions": captions(), "text_encoder": "all-MiniLM-L6-v2"},
)
register_task(
    TASK.definition(
        # the best of `pgraft compare --tune` (docs/results/tune_animals.json)
        tuned_baselines={
            "ddpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
            "grpo": {"train": {"lr": 3e-4}, "pg": {"clip_range": 1e-2}},
        },
    )
)
