"""Rewards computed from CLIP embeddings: CLIPScore and the LAION aesthetic predictor.

Conditions are prompt ids: row i of ``prompts`` is the text of condition i. Images [B, C, H, W]
in [0, 1] are resized (bicubic) to the vision tower's input size and normalised with CLIP's mean
and std in torch, batched, on the model's device; text embeddings are computed once.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import RewardError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def _load_clip(path: str | Path):
    from transformers import AutoTokenizer, CLIPModel

    path = Path(path)
    if not (path / "config.json").is_file():
        raise RewardError(f"{path} is not a CLIP model folder (no config.json); pass a local CLIPModel directory")
    return CLIPModel.from_pretrained(path, local_files_only=True), AutoTokenizer.from_pretrained(
        path, local_files_only=True
    )


class _ClipImages:
    """CLIP's image embedding of reward inputs (unit norm)."""

    def __init__(self, model, device: str | torch.device | None = None):
        self.model = model.eval().requires_grad_(False)
        if device is not None:
            self.model.to(device)
        self.size = model.config.vision_config.image_size

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        x = images.to(self.device, torch.float32)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = F.interpolate(x, size=(self.size, self.size), mode="bicubic", align_corners=False).clamp(0, 1)
        mean = torch.tensor(CLIP_MEAN, device=x.device).view(1, 3, 1, 1)
        std = torch.tensor(CLIP_STD, device=x.device).view(1, 3, 1, 1)
        feats = self.model.get_image_features(pixel_values=(x - mean) / std)
        feats = getattr(feats, "pooler_output", feats)
        return F.normalize(feats.float(), dim=-1)


class CLIPScore(_ClipImages):
    """CLIPScore (Hessel et al., 2021, as torchmetrics computes it): max(100·cos(image, prompt), 0)."""

    __name__ = "clip_score"

    def __init__(self, model, tokenizer, prompts: Sequence[str], device=None):
        super().__init__(model, device)
        if not prompts:
            raise RewardError("CLIPScore needs the prompt text of every condition id")
        with torch.no_grad():
            tokens = tokenizer(list(prompts), padding=True, truncation=True, return_tensors="pt").to(self.device)
            text = self.model.get_text_features(**tokens)
            text = getattr(text, "pooler_output", text)
        self.text = F.normalize(text.float(), dim=-1)  # [P, D]

    @classmethod
    def from_pretrained(cls, path: str | Path, prompts: Sequence[str], device=None) -> "CLIPScore":
        model, tokenizer = _load_clip(path)
        return cls(model, tokenizer, prompts, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        cond = conditions.to(self.device).long()
        if int(cond.max()) >= self.text.shape[0] or int(cond.min()) < 0:
            raise RewardError(f"condition ids must lie in [0, {self.text.shape[0]}) (one per prompt)")
        cos = (self.embed(images) * self.text[cond]).sum(-1)
        return (100 * cos).clamp(min=0).cpu()


class AestheticMLP(nn.Module):
    """The LAION improved aesthetic predictor's head (on unit-norm CLIP ViT-L/14 embeddings)."""

    def __init__(self, dim: int = 768):
        super().__init__()
        self.layers = nn.Sequential(
            nn.Linear(dim, 1024),
            nn.Dropout(0.2),
            nn.Linear(1024, 128),
            nn.Dropout(0.2),
            nn.Linear(128, 64),
            nn.Dropout(0.1),
            nn.Linear(64, 16),
            nn.Linear(16, 1),
        )

    def forward(self, emb: torch.Tensor) -> torch.Tensor:
        return self.layers(emb)


class AestheticScore(_ClipImages):
    """LAION aesthetic predictor: the MLP head on CLIP image embeddings (prompt-independent)."""

    __name__ = "aesthetic"

    def __init__(self, model, head: AestheticMLP, device=None):
        super().__init__(model, device)
        self.head = head.eval().requires_grad_(False).to(self.device)

    @classmethod
    def from_pretrained(cls, clip_path: str | Path, head_path: str | Path, device=None) -> "AestheticScore":
        """``head_path``: the predictor's weights (.safetensors, or the published .pth read with weights_only)."""
        model, _ = _load_clip(clip_path)
        head_path = Path(head_path)
        if not head_path.is_file():
            raise RewardError(f"aesthetic predictor weights {head_path} not found")
        if head_path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(head_path))
        else:
            state = torch.load(head_path, map_location="cpu", weights_only=True)
        head = AestheticMLP(model.config.projection_dim)
        try:
            head.load_state_dict(state)
        except RuntimeError as exc:
            raise RewardError(f"{head_path} is not an aesthetic predictor for this CLIP: {exc}") from None
        return cls(model, head, device)

    @torch.no_grad()
    def __call__(self, images: torch.Tensor, conditions: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(images)).squeeze(-1).float().cpu()
