"""Saving a fine-tuned Stable Diffusion in the ecosystem's formats.

- LoRA: `StableDiffusionPipeline.save_lora_weights` layout (pytorch_lora_weights.safetensors with
  the adapter's config as metadata), so `pipe.load_lora_weights(dir)` loads it.
- Full fine-tune: a complete pipeline folder (`StableDiffusionPipeline.from_pretrained(dir)`), the
  tuned UNet beside the untouched VAE, text encoder, tokenizer and scheduler.
Both carry `pgraft.json` ({"n_i", "sampler", "base_model", ...}): a P-GRAFT model is only
reproduced by the composed sampler (tuned model down to N_I, base below), which `pgraft sample`
rebuilds from it.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from torch import nn

from ..io import write_json

META = "pgraft.json"


def _unet_lora_state(peft_model: nn.Module) -> dict:
    from peft.utils import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model)
    prefix = "unet."
    out = {}
    for key, value in state.items():
        at = key.find(prefix)
        if at < 0:
            continue
        out[key[at + len(prefix) :]] = value.detach().float().cpu().contiguous()
    return out


def save_lora(peft_model: nn.Module, out: str | Path, meta: dict) -> Path:
    """The adapter of a PEFT-wrapped TextConditionalUNet, loadable by diffusers' load_lora_weights."""
    from diffusers import StableDiffusionPipeline

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    config = peft_model.peft_config["default"]
    metadata = {"r": config.r, "lora_alpha": config.lora_alpha, "target_modules": sorted(config.target_modules)}
    StableDiffusionPipeline.save_lora_weights(
        tmp, unet_lora_layers=_unet_lora_state(peft_model), unet_lora_adapter_metadata=metadata
    )
    write_json(tmp / META, {**meta, "format": "lora"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)  # the folder appears whole or not at all
    return out


def save_pipeline(unet: nn.Module, base_folder: str | Path, out: str | Path, meta: dict) -> Path:
    """A full pipeline folder: the base folder's components with ``unet`` in place of its UNet."""
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(base_folder, tmp, ignore=shutil.ignore_patterns("unet"))
    unet.save_pretrained(tmp / "unet")
    index = tmp / "model_index.json"
    if not index.exists():  # a folder of components without an index: write the pipeline's
        index.write_text(json.dumps(_model_index(), indent=2))
    write_json(tmp / META, {**meta, "format": "pipeline"})
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def _model_index() -> dict:
    return {
        "_class_name": "StableDiffusionPipeline",
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "text_encoder": ["transformers", "CLIPTextModel"],
        "tokenizer": ["transformers", "CLIPTokenizer"],
        "scheduler": ["diffusers", "DDIMScheduler"],
        "safety_checker": [None, None],
        "feature_extractor": [None, None],
        "requires_safety_checker": False,
    }


def read_meta(folder: str | Path) -> dict:
    return json.loads((Path(folder) / META).read_text())
