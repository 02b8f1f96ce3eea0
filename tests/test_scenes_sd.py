"""The scenes task's Stable Diffusion in miniature, as a diffusers pipeline folder: diffusers'
own StableDiffusionPipeline loads and samples it, and pgraft's Stable Diffusion loader reads it
with the same prompt embeddings (tiny networks here; the real MiniLM text encoder)."""

import numpy as np
import torch

from pgraft.config import UNetConfig
from pgraft.models.stable_diffusion import load_stable_diffusion
from pgraft.models.text_unet import build_text_unet
from pgraft.tasks.scenes.mini_sd import (
    AutoencoderConfig,
    build_autoencoder,
    save_pipeline,
    scheduler_config,
    text_encoder,
    train_autoencoder,
)
from pgraft.tasks.scenes.prompts import all_prompts, draw_scene
from pgraft.tasks.scenes.scene import render

TEXTS = [p.text for p in all_prompts()[::60]]


def _renders(n, seed=0):
    rng = np.random.default_rng(seed)
    prompts = all_prompts()
    return torch.from_numpy(np.stack([render(draw_scene(prompts[i % len(prompts)], rng), rng) for i in range(n)]))


def test_the_autoencoder_compresses_4x_a_side_and_scales_its_latents_to_unit_variance():
    images = _renders(48)
    cfg = AutoencoderConfig(block_out_channels=(8, 16, 16), steps=30, batch=16, lr=3e-3)
    codec = train_autoencoder(build_autoencoder(cfg), images, cfg, progress=False)
    latents = codec.encode(images)
    assert latents.shape == (48, 4, 8, 8)
    assert abs(float(latents.std()) - 1) < 1e-3
    # the scaling factor travels with the weights, and into the pipeline's config
    again = build_autoencoder(cfg)
    again.load_state_dict(codec.state_dict())
    assert again.pipeline_vae().config.scaling_factor == float(codec.scaling_factor) != 0.18215
    out = codec.decode(latents)
    assert out.shape == images.shape and 0 <= out.min() and out.max() <= 1


def test_the_pipeline_folder_loads_and_samples_in_diffusers_and_reads_alike_in_pgraft(tmp_path):
    from diffusers import StableDiffusionPipeline

    cfg = AutoencoderConfig(block_out_channels=(8, 16, 16), steps=2, batch=8)
    codec = train_autoencoder(build_autoencoder(cfg), _renders(16), cfg, progress=False)
    unet = build_text_unet(UNetConfig(block_out_channels=(16, 32)), 8, 384, channels=4)
    unet_cfg = UNetConfig(beta_schedule="scaled_linear", prediction_type="v_prediction")
    folder = save_pipeline(
        tmp_path / "mini-sd", unet, codec.pipeline_vae(), *text_encoder(), scheduler_config(unet_cfg)
    )

    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    images = pipe(TEXTS[:2], num_inference_steps=3, output_type="pt").images
    assert images.shape == (2, 3, 32, 32)

    sd = load_stable_diffusion(folder, TEXTS)
    assert sd.sample_shape == (4, 8, 8) and sd.denoiser.prediction_type == "v_prediction"
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(TEXTS, "cpu", 1, True, negative_prompt=[""] * len(TEXTS))
    torch.testing.assert_close(sd.denoiser.prompt_embeds[: len(TEXTS)], pos, atol=1e-5, rtol=0)
    torch.testing.assert_close(sd.denoiser.prompt_embeds[-1], neg[0], atol=1e-5, rtol=0)
    assert sd.decode(torch.zeros(2, 4, 8, 8)).shape == (2, 3, 32, 32)
