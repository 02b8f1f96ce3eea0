"""A Stable Diffusion run as a Task: the local model, its prompt set (train prompts are the
selection groups, held-out prompts are evaluated), and the configured reward."""

from __future__ import annotations

import time

import torch

from ..config import StableDiffusionConfig, TrainRunConfig
from ..engine.distributed import local_device
from ..models.stable_diffusion import load_stable_diffusion
from ..prompts import load_prompts, split_prompts
from ..rewards.build import build_reward
from .task import Task

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def prepare_sd_task(cfg: TrainRunConfig) -> Task:
    t0 = time.time()
    sd_cfg: StableDiffusionConfig = cfg.stable_diffusion
    prompts = load_prompts(sd_cfg.prompts)
    if sd_cfg.eval_prompts is not None:
        train, held_out = prompts, load_prompts(sd_cfg.eval_prompts)
    else:
        train, held_out = split_prompts(prompts, sd_cfg.eval_fraction, cfg.method.seed)
    texts = [p.text for p in train + held_out]  # condition id i ↔ texts[i]; the negative prompt is last
    device = local_device()  # this rank's GPU (with its index: the reward's worker thread needs it) or the CPU
    sd = load_stable_diffusion(
        sd_cfg.path,
        texts,
        negative_prompt=sd_cfg.negative_prompt,
        dtype=DTYPES[sd_cfg.dtype],
        device=device,
        decode_batch=sd_cfg.decode_batch,
        attention=sd_cfg.attention,
    )
    return Task(
        name="stable_diffusion",
        data=None,
        base=sd.denoiser,
        reward=build_reward(cfg.reward, texts, device),
        num_conditions=len(train),
        class_names=texts,
        sample_shape=sd.sample_shape,
        decode=sd.decode,
        paths={"model": str(sd_cfg.path)},
        pretrain_s=time.time() - t0,
        eval_conditions=torch.arange(len(train), len(texts)),
    )
