"""Stable Diffusion 1.x / 2.x (ε- or v-prediction) from a local pipeline folder, as engine parts.

The folder holds diffusers' components: unet/, vae/, text_encoder/, tokenizer/, scheduler/ (as
`StableDiffusionPipeline.save_pretrained` writes them). The frozen text encoder (CLIP in SD 1.x
and 2.x; any transformers encoder whose first output is its token embeddings, such as the scenes
task's MiniLM) embeds the prompt set once, as diffusers' pipeline does; the UNet becomes a
:class:`TextConditionalUNet` whose condition is a prompt id (row P = the negative prompt, the null
condition of classifier-free guidance); the VAE decodes latents to images for rewards in chunks.
Nothing here is trained but the UNet (or its LoRA).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from ..errors import ConfigError
from .text_unet import TextConditionalUNet

log = logging.getLogger("pgraft")
COMPONENTS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")


@dataclass
class StableDiffusion:
    denoiser: TextConditionalUNet  # the network the engine samples and trains
    vae: nn.Module
    text_encoder: nn.Module
    tokenizer: object
    prompts: list[str]
    negative_prompt: str
    decode_batch: int = 8

    @property
    def sample_shape(self) -> tuple[int, int, int]:
        c = self.denoiser.unet.config
        return (c.in_channels, c.sample_size, c.sample_size)

    @property
    def null_label(self) -> int:
        return self.denoiser.null_label

    @torch.no_grad()
    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents → images in [0, 1], ``decode_batch`` at a time (VAE activations dominate memory)."""
        vae = self.vae
        device, dtype = next(vae.parameters()).device, next(vae.parameters()).dtype
        out = []
        for chunk in latents.split(self.decode_batch):
            x = chunk.to(device, dtype) / vae.config.scaling_factor
            out.append(((vae.decode(x).sample.float() + 1) / 2).clamp(0, 1))
        return torch.cat(out).to(latents.device)


@torch.no_grad()
def encode_prompts(text_encoder, tokenizer, prompts: Sequence[str]) -> torch.Tensor:
    """Token embeddings [P, L, D], exactly as diffusers' pipeline computes them: padded to the
    tokenizer's max length L (77 for CLIP), with the attention mask passed only to an encoder whose
    config sets ``use_attention_mask``."""
    batch = tokenizer(
        list(prompts), padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt"
    )
    device = next(text_encoder.parameters()).device
    masked = getattr(text_encoder.config, "use_attention_mask", False)
    mask = batch.attention_mask.to(device) if masked else None
    return text_encoder(batch.input_ids.to(device), attention_mask=mask)[0].float().cpu()


def load_stable_diffusion(
    path: str | Path,
    prompts: Sequence[str],
    *,
    negative_prompt: str = "",
    dtype: torch.dtype = torch.float32,
    device: str | torch.device | None = None,
    decode_batch: int = 8,
    attention: str = "auto",
) -> StableDiffusion:
    """Load SD from a local folder (``local_files_only``); ``attention``: auto | xformers | sdpa."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoModel, AutoTokenizer

    path = Path(path)
    missing = [c for c in COMPONENTS if not (path / c).is_dir()]
    if missing:
        raise ConfigError(
            f"{path} is not a Stable Diffusion folder: missing component folder(s) {', '.join(missing)} "
            f"(expected {', '.join(COMPONENTS)}, as StableDiffusionPipeline.save_pretrained writes)"
        )
    if not prompts:
        raise ConfigError("the prompt set is empty")
    if dtype == torch.float16 and not torch.cuda.is_available():
        raise ConfigError("float16 Stable Diffusion needs a GPU; use float32 or bfloat16 on the CPU")
    local = {"local_files_only": True}
    unet = UNet2DConditionModel.from_pretrained(path, subfolder="unet", torch_dtype=dtype, **local)
    vae = AutoencoderKL.from_pretrained(path, subfolder="vae", torch_dtype=dtype, **local)
    # whatever encoder class the folder's config names (CLIPTextModel for SD, BertModel for MiniLM)
    text_encoder = AutoModel.from_pretrained(path, subfolder="text_encoder", torch_dtype=dtype, **local)
    tokenizer = AutoTokenizer.from_pretrained(path, subfolder="tokenizer", **local)
    config_file = path / "scheduler" / "scheduler_config.json"
    if not config_file.is_file():
        raise ConfigError(f"{config_file} is missing: the scheduler config defines the noise schedule")
    scheduler_config = {k: v for k, v in json.loads(config_file.read_text()).items() if not k.startswith("_")}
    for module in (unet, vae, text_encoder):
        module.eval().requires_grad_(False)
        if device is not None:
            module.to(device)
    _choose_attention(unet, attention)
    embeds = encode_prompts(text_encoder, tokenizer, [*prompts, negative_prompt])
    # built around the placed UNet, so its prompt table is on the UNet's device too
    denoiser = TextConditionalUNet(
        unet, embeds, None, scheduler_config.get("prediction_type", "epsilon"), scheduler_config
    )
    return StableDiffusion(denoiser, vae, text_encoder, tokenizer, list(prompts), negative_prompt, decode_batch)


def _choose_attention(unet, attention: str) -> None:
    """xformers' memory-efficient attention on CUDA when installed; PyTorch SDPA otherwise."""
    if attention not in ("auto", "xformers", "sdpa"):
        raise ConfigError(f"attention must be auto, xformers or sdpa, got {attention!r}")
    if attention == "sdpa":
        return
    on_cuda = next(unet.parameters()).is_cuda
    try:
        import xformers  # noqa: F401
    except ImportError:
        if attention == "xformers":
            raise ConfigError("attention=xformers needs the `gpu` extra: pip install 'pgraft[gpu]'") from None
        return
    if not on_cuda:
        if attention == "xformers":
            raise ConfigError("attention=xformers needs the model on a CUDA device")
        return
    unet.enable_xformers_memory_efficient_attention()
    log.info("UNet attention: xformers")
