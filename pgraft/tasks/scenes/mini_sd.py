"""A Stable Diffusion in miniature, built from diffusers' and transformers' own classes: an
AutoencoderKL (32×32 RGB ↔ 4×8×8 latents), the frozen all-MiniLM-L6-v2 text encoder (token
embeddings, 16 tokens, masked), a cross-attention UNet2DConditionModel and an SD2-like scheduler
(scaled-linear betas, v-prediction). :func:`save_pipeline` writes it as the folder
``StableDiffusionPipeline.save_pretrained`` writes, so diffusers loads and samples it as it is and
pgraft reads it through the loader it uses for any Stable Diffusion folder.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn
from tqdm.auto import tqdm

from ...config import UNetConfig
from ...config.schema import _Strict
from ...models.text_encoder import minilm_path
from .lr_schedule import warmup_cosine

TOKENS = 16  # the prompts' token length (the longest prompt has 9 with [CLS] and [SEP])
# Stable Diffusion 2's scheduler options (stabilityai/stable-diffusion-2's scheduler_config.json,
# DDIM); the noise schedule itself comes from the UNet's config (SD2's: scaled-linear, v-prediction)
SD2_SCHEDULER = {
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "timestep_spacing": "leading",
}


def scheduler_config(unet: UNetConfig) -> dict:
    """The scheduler the UNet is trained under and the pipeline folder ships."""
    schedule = {k: getattr(unet, k) for k in ("num_train_timesteps", "beta_schedule", "prediction_type")}
    return {**SD2_SCHEDULER, **schedule}


class AutoencoderConfig(_Strict):
    """The VAE, ``task.scenes.vae`` (ours): three levels, so latents are 4× smaller a side; narrow
    at full resolution, where its cost is (about 5 minutes of training on 2 CPU cores)."""

    block_out_channels: tuple[int, ...] = (16, 32, 32)
    latent_channels: int = Field(4, ge=1)
    layers_per_block: int = Field(1, ge=1)
    steps: int = Field(1500, ge=1)
    batch: int = Field(64, ge=1)
    lr: float = Field(1e-3, gt=0)
    kl_weight: float = Field(1e-6, ge=0)  # Stable Diffusion's VAE uses about this
    seed: int = 0


class LatentCodec(nn.Module):
    """An AutoencoderKL and its latents' scaling factor (a buffer, so it is saved with the weights;
    diffusers keeps it in the config). Images in [0, 1] ↔ scaled latents, what the UNet sees."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.register_buffer("scaling_factor", torch.tensor(float(vae.config.scaling_factor)))

    def pipeline_vae(self):
        """The AutoencoderKL with the scaling factor in its config, as a pipeline folder holds it."""
        self.vae.register_to_config(scaling_factor=float(self.scaling_factor))
        return self.vae

    @torch.no_grad()
    def encode(self, images: torch.Tensor, scaled: bool = True, batch: int = 256) -> torch.Tensor:
        """Images → the posterior means (× the scaling factor unless ``scaled`` is False)."""
        scale = float(self.scaling_factor) if scaled else 1.0
        return torch.cat([self.vae.encode(x * 2 - 1).latent_dist.mean * scale for x in images.split(batch)])

    @torch.no_grad()
    def decode(self, latents: torch.Tensor, batch: int = 256) -> torch.Tensor:
        """Scaled latents → images in [0, 1] (as :meth:`StableDiffusion.decode` does)."""
        out = [self.vae.decode(z / float(self.scaling_factor)).sample for z in latents.split(batch)]
        return ((torch.cat(out) + 1) / 2).clamp(0, 1)


def build_autoencoder(cfg: AutoencoderConfig, image_size: int = 32) -> LatentCodec:
    from diffusers import AutoencoderKL

    levels = len(cfg.block_out_channels)
    return LatentCodec(
        AutoencoderKL(
            in_channels=3,
            out_channels=3,
            down_block_types=["DownEncoderBlock2D"] * levels,
            up_block_types=["UpDecoderBlock2D"] * levels,
            block_out_channels=list(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            latent_channels=cfg.latent_channels,
            norm_num_groups=min(16, min(cfg.block_out_channels)),
            sample_size=image_size,
        )
    )


def train_autoencoder(codec: LatentCodec, images: torch.Tensor, cfg: AutoencoderConfig, progress: bool = True):
    """Reconstruction (MSE in [-1, 1]) plus ``kl_weight`` × the posterior's KL to N(0, I); then the
    scaling factor is set to 1 / the latents' std on the training images (SD's convention), so the
    diffusion model sees unit-variance latents. ``images`` in [0, 1], seeded."""
    g = torch.Generator().manual_seed(cfg.seed)
    torch.manual_seed(cfg.seed)
    vae = codec.vae
    opt = torch.optim.AdamW(vae.parameters(), lr=cfg.lr, weight_decay=0.0)
    sched = warmup_cosine(opt, cfg.steps)
    vae.train()
    bar = tqdm(range(cfg.steps), desc="train autoencoder", disable=not progress, leave=False)
    for _ in bar:
        x = images[torch.randint(0, len(images), (cfg.batch,), generator=g)] * 2 - 1
        posterior = vae.encode(x).latent_dist
        loss = F.mse_loss(vae.decode(posterior.sample(generator=g)).sample, x) + cfg.kl_weight * posterior.kl().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        bar.set_postfix(loss=f"{loss.item():.4f}", refresh=False)
    codec.eval().requires_grad_(False)
    latents = codec.encode(images[: min(len(images), 4096)], scaled=False)
    codec.scaling_factor.fill_(float(1 / latents.std()))
    return codec


def prompt_table(texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """The texts' token embeddings [P, 16, 384] as the pipeline computes them, and their token mask."""
    from ...models.stable_diffusion import encode_prompts

    model, tokenizer = text_encoder()
    mask = tokenizer(texts, padding="max_length", max_length=TOKENS, truncation=True, return_tensors="pt")
    return encode_prompts(model, tokenizer, texts), mask.attention_mask.bool()


@functools.cache  # loaded once per process (frozen, never trained)
def text_encoder():
    """MiniLM as the pipeline's text encoder: the model and its tokenizer, 16 tokens long, and a
    config flag that makes diffusers pass the attention mask (so padding does not shift the
    embeddings of a prompt's words)."""
    from transformers import AutoModel, AutoTokenizer

    path = str(minilm_path())
    model = AutoModel.from_pretrained(path, local_files_only=True).eval()
    model.config.use_attention_mask = True
    tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True, model_max_length=TOKENS)
    return model.requires_grad_(False), tokenizer


def save_pipeline(folder: Path, unet, vae, text_model, tokenizer, scheduler: dict) -> Path:
    """The model as ``StableDiffusionPipeline.save_pretrained`` writes it (no safety checker)."""
    from diffusers import DDIMScheduler, StableDiffusionPipeline

    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_model, tokenizer=tokenizer, unet=unet,
        scheduler=DDIMScheduler.from_config(scheduler),
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )  # fmt: skip
    pipe.save_pretrained(folder)
    return Path(folder)
