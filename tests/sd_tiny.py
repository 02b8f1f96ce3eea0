"""A tiny random-initialised Stable Diffusion folder, built in the test (as diffusers' own tests
do; no weights can be downloaded): unet/, vae/, text_encoder/, tokenizer/ (a local vocabulary),
scheduler/. The text encoder is CLIP's kind (Stable Diffusion's) or BERT's (MiniLM's)."""

from __future__ import annotations

import json
import string
from pathlib import Path

import torch

WORDS = ["a", "an", "red", "blue", "green", "cube", "ball", "tree", "blurry"]


def write_vocab(folder: Path) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    chars = list(string.ascii_lowercase + string.digits)
    tokens = ["<|startoftext|>", "<|endoftext|>", "!"] + chars + [c + "</w>" for c in chars]
    (folder / "vocab.json").write_text(json.dumps({t: i for i, t in enumerate(tokens)}))
    (folder / "merges.txt").write_text("#version: 0.2\n")


def _clip_text_encoder(path: Path):
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            bos_token_id=0,
            eos_token_id=1,
            pad_token_id=1,
            hidden_size=32,
            intermediate_size=37,
            num_attention_heads=4,
            num_hidden_layers=2,
            vocab_size=80,
            max_position_embeddings=77,
        )  # fmt: skip
    )
    write_vocab(path / "vocab")
    tokenizer = CLIPTokenizer(
        str(path / "vocab" / "vocab.json"), str(path / "vocab" / "merges.txt"), model_max_length=77
    )
    return text_encoder, tokenizer


def _bert_text_encoder(path: Path):
    """A BERT encoder (MiniLM's architecture) over a word vocabulary, 16 tokens long; it attends
    only to the prompt's tokens (``use_attention_mask``, which diffusers' pipeline honours)."""
    from transformers import BertConfig, BertModel, BertTokenizer

    (path / "vocab").mkdir(parents=True, exist_ok=True)
    (path / "vocab" / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    config = BertConfig(vocab_size=len(WORDS) + 5, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=37, max_position_embeddings=32)  # fmt: skip
    config.use_attention_mask = True
    tokenizer = BertTokenizer(str(path / "vocab" / "vocab.txt"), model_max_length=16)
    return BertModel(config, add_pooling_layer=False), tokenizer


def build_tiny_sd(path: Path, prediction_type: str = "epsilon", latent_size: int = 8, text: str = "clip") -> Path:
    """Written by StableDiffusionPipeline.save_pretrained, so diffusers' own loaders read it too.
    ``latent_size``: the UNet's latent side (images are 2× larger: the tiny VAE has two levels);
    ``text``: the text encoder's kind, clip or bert."""
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel

    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        block_out_channels=(8, 16),
        layers_per_block=1,
        sample_size=latent_size,
        in_channels=4,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        cross_attention_dim=32,
        norm_num_groups=4,
        attention_head_dim=2,
    )
    vae = AutoencoderKL(
        block_out_channels=[8, 16],
        in_channels=3,
        out_channels=3,
        down_block_types=["DownEncoderBlock2D"] * 2,
        up_block_types=["UpDecoderBlock2D"] * 2,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=16,
    )
    text_encoder, tokenizer = {"clip": _clip_text_encoder, "bert": _bert_text_encoder}[text](path)
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear",
        beta_start=0.00085,
        beta_end=0.012,
        clip_sample=False,
        set_alpha_to_one=False,
        steps_offset=1,
        prediction_type=prediction_type,
        timestep_spacing="leading",
    )
    StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    ).save_pretrained(path)  # fmt: skip
    return path
