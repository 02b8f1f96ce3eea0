"""The `scenes` task: GenEval in miniature through the real Stable Diffusion code path.

Its parts are trained by the package (`pgraft pretrain --task scenes`) and shipped with it:
  vae     the mini SD's autoencoder, on real renders;
  unet    the mini SD's UNet, on the renders' latents with web-like captions: a fraction
          ``web_fraction`` of the captions carry the errors alt-text makes (prompts.web_caption),
          so the base draws well-formed scenes that follow compositional prompts poorly;
  reward  the mini VQA model, on real renders with true and hard-negative prompts.
The task assembles them with the frozen MiniLM into a diffusers pipeline folder in the cache and
loads it through the same loader as a user's Stable Diffusion folder. Conditions are prompt ids:
the training prompts (the rounds' selection groups), then the held-out prompts (evaluation only,
as GenEval's prompts are unseen by the fine-tuning); the empty prompt is the null condition.
"""

from __future__ import annotations

import functools
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field, model_validator
from tqdm.auto import tqdm

from ...config import TaskConfig, UNetConfig
from ...config.schema import _Strict
from ...engine.distributed import barrier, local_device, rank
from ...models.stable_diffusion import load_stable_diffusion
from ...models.text_unet import TextConditionalUNet, build_text_unet
from ...report import save_grid
from ...rewards.yes_probability import YesProbability
from ...stats import frechet_distance
from .. import cache
from ..pretraining import pretrain, pretrained
from ..task import Task
from . import geneval
from .mini_sd import (
    AutoencoderConfig,
    LatentCodec,
    build_autoencoder,
    prompt_table,
    save_pipeline,
    scheduler_config,
    text_encoder,
    train_autoencoder,
)
from .prompts import CATEGORIES, ScenePrompt, all_prompts, draw_scene, split_prompts, web_caption
from .scene import render
from .vqa import MiniVQA, VQAConfig, accuracy_by_category, make_pairs, train_vqa

WORLD_VERSION = 1  # bump when the world, the prompts or the captions change (invalidates the models)
LATENT_CHANNELS = 4
TEXT_WIDTH = 384  # MiniLM's token embeddings


# SD2's noise schedule; the size and pretraining budget are ours (1.2M parameters, 10,000 steps:
# about 25 minutes on 2 CPU cores). Fields a config sets in task.scenes.unet replace these one by one.
UNET_DEFAULTS = {
    "block_out_channels": (32, 64),
    "beta_schedule": "scaled_linear",
    "prediction_type": "v_prediction",
    "pretrain_steps": 10_000,
    "pretrain_batch": 128,
    "pretrain_lr": 1e-3,
    "pretrain_lr_schedule": "linear_decay",
    "cond_dropout": 0.1,
}


class ScenesConfig(_Strict):
    """The scenes task's section, ``task.scenes`` (docs/scenes.md)."""

    held_out_fraction: float = Field(0.25, gt=0, lt=1)  # of each category's prompts
    prompt_seed: int = 0
    pretrain_scenes: int = Field(40_000, ge=100)  # renders the autoencoder and the UNet learn from
    # of the UNet's captions, written as alt-text would; at 0.5 the base scored 0.660 on GenEval-like
    web_fraction: float = Field(0.75, ge=0, lt=1)
    data_seed: int = 0
    vae: AutoencoderConfig = Field(default_factory=AutoencoderConfig)
    unet: UNetConfig = Field(default_factory=lambda: UNetConfig(**UNET_DEFAULTS))
    vqa: VQAConfig = Field(default_factory=VQAConfig)
    reference_size: int = Field(2000, ge=100)  # real renders of held-out prompts: FID's reference
    reward_check: int = Field(3000, ge=100)  # fresh renders that measure the reward's accuracy

    @model_validator(mode="before")
    @classmethod
    def _unet_preset(cls, data: Any) -> Any:
        if isinstance(data, dict) and isinstance(data.get("unet", {}), dict):
            return {**data, "unet": {**UNET_DEFAULTS, **data.get("unet", {})}}
        return data


@dataclass(frozen=True)
class PretrainingSet:
    images: torch.Tensor  # [N, 3, 32, 32] in [0, 1]
    captions: torch.Tensor  # [N] each scene's caption (index into all_prompts): its prompt, or a web-like one


def pretraining_set(n: int, web_fraction: float, seed: int, progress: bool = False) -> PretrainingSet:
    """``n`` scenes, each drawn for a prompt of a category chosen uniformly (all prompts: a base
    is pretrained on everything; only the fine-tuning holds prompts out), captioned web-like with
    probability ``web_fraction``."""
    prompts = all_prompts()
    index = {p: i for i, p in enumerate(prompts)}
    by_category = [[i for i, p in enumerate(prompts) if p.category == c] for c in CATEGORIES]
    rng = np.random.default_rng(seed)
    images, captions = [], []
    for _ in tqdm(range(n), desc="render pretraining scenes", disable=not progress, leave=False):
        ids = by_category[rng.integers(len(by_category))]
        prompt = prompts[ids[rng.integers(len(ids))]]
        objects = draw_scene(prompt, rng)
        images.append(render(objects, rng))
        web = rng.random() < web_fraction
        captions.append(index[web_caption(prompt, objects, rng)] if web else index[prompt])
    return PretrainingSet(torch.from_numpy(np.stack(images)), torch.tensor(captions, dtype=torch.long))


def payloads(cfg: TaskConfig) -> dict[str, dict]:
    s = cfg.scenes
    world = {"task": "scenes", "world": WORLD_VERSION, "scenes": s.pretrain_scenes, "data_seed": s.data_seed}
    vae = {**world, **s.vae.model_dump(mode="json")}
    unet = {**world, "vae": vae, "web_fraction": s.web_fraction, "text_encoder": "all-MiniLM-L6-v2",
            **s.unet.model_dump(mode="json")}  # fmt: skip
    reward = {"task": "scenes", "world": WORLD_VERSION, "text_encoder": "all-MiniLM-L6-v2", **s.vqa.model_dump()}
    return {"vae": vae, "unet": unet, "reward": reward}


def build_unet(u: UNetConfig):
    return build_text_unet(u, 8, TEXT_WIDTH, channels=LATENT_CHANNELS)


class SceneMetrics:
    """GenEval-like scores of decoded samples (per category and overall), the fraction of
    well-formed images, and ``fid``: the Fréchet distance to real renders of the held-out prompts in
    the autoencoder's latent space (a learned feature space that is not the reward's)."""

    COLUMNS = ("geneval", *(f"geneval_{c}" for c in CATEGORIES), "well_formed", "fid")

    def __init__(self, conditions: list[ScenePrompt], eval_ids: list[int], codec: LatentCodec, size: int, seed: int):
        self.conditions, self.codec = conditions, codec
        rng = np.random.default_rng(seed)
        labels = torch.tensor([eval_ids[i % len(eval_ids)] for i in range(2 * size)])
        images = torch.from_numpy(np.stack([render(draw_scene(conditions[c], rng), rng) for c in labels.tolist()]))
        self.reference = self.features(images[:size])
        self.real = (images[size:], labels[size:])  # outside the reference: the floor at the same size

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.codec.encode(images.float().cpu(), scaled=False).flatten(1)

    def real_samples(self, n: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.real[0][:n], self.real[1][:n]

    def __call__(self, decoded: torch.Tensor, labels: torch.Tensor) -> dict[str, float]:
        prompts = [self.conditions[i] for i in labels.tolist()]
        report = geneval.score(prompts, decoded.float().cpu().numpy())
        return {
            "geneval": report["overall"],
            **{f"geneval_{c}": v for c, v in report["categories"].items()},
            "well_formed": report["well_formed"],
            "fid": frechet_distance(self.features(decoded), self.reference),
        }


def _pipeline_folder(cfg: TaskConfig, unet, codec: LatentCodec, weights: list[str]) -> Path:
    """The mini SD as a diffusers pipeline folder in the cache, written once per pair of UNet and
    VAE weights (keyed by their files' checksums, so a retrained model gets a folder of its own)."""
    key = {"weights": [json.loads(Path(w + ".json").read_text())["sha256"] for w in weights]}
    folder = cache.cache_root(cfg.cache_dir) / "scenes" / f"pipeline-{cache.config_key(key)}"
    if rank() == 0 and not (folder / "model_index.json").is_file():
        tmp = folder.with_name(folder.name + ".partial")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pipeline(tmp, unet, codec.pipeline_vae(), *text_encoder(), scheduler_config(cfg.scenes.unet))
        (tmp / "pgraft.json").write_text(json.dumps(key, sort_keys=True))
        shutil.rmtree(folder, ignore_errors=True)
        tmp.rename(folder)  # whole or absent
    barrier()
    return folder


def prompt_split(s: ScenesConfig) -> tuple[list[ScenePrompt], list[int], list[int]]:
    """Every prompt, and the ids of the training and the held-out ones."""
    prompts = all_prompts()
    return (prompts, *split_prompts(prompts, s.held_out_fraction, s.prompt_seed))


def measure_reward(vqa: MiniVQA, conditions: list[ScenePrompt], s: ScenesConfig) -> dict:
    """The reward's accuracy per category on ``s.reward_check`` fresh real renders of the
    conditions (``vqa``'s prompt ids index ``conditions``)."""
    check = make_pairs(conditions, s.reward_check, seed=s.vqa.seed + 1, hard_fraction=s.vqa.hard_fraction)
    return accuracy_by_category(vqa, conditions, check)


def prepare(cfg: TaskConfig, *, force: bool = False, progress: bool = True) -> Task:
    t0 = time.time()
    s = cfg.scenes
    progress = progress and rank() == 0
    prompts, train_ids, held_ids = prompt_split(s)
    conditions = [prompts[i] for i in train_ids + held_ids]  # condition id → prompt
    data = functools.cache(lambda: pretraining_set(s.pretrain_scenes, s.web_fraction, s.data_seed, progress))

    codec, vae_path = pretrained(
        cfg, "vae", lambda: train_autoencoder(build_autoencoder(s.vae), data().images, s.vae, progress),
        lambda: build_autoencoder(s.vae), force=force, collective=False,
    )  # fmt: skip

    def pretrain_unet():
        embeds, _ = prompt_table([p.text for p in prompts] + [""])  # the last row: the null prompt
        torch.manual_seed(s.unet.seed)  # the initial weights too, whatever ran before in the process
        model = TextConditionalUNet(build_unet(s.unet), embeds, None, s.unet.prediction_type, scheduler_config(s.unet))
        return pretrain(model, codec.encode(data().images), data().captions, s.unet, "task.scenes.unet", progress).unet

    unet, unet_path = pretrained(
        cfg, "unet", pretrain_unet, lambda: build_unet(s.unet), force=force, collective=True
    )  # fmt: skip

    texts = [p.text for p in conditions]
    table = prompt_table(texts)

    def train_reward():
        net = MiniVQA(*prompt_table([p.text for p in prompts]), s.vqa)
        pairs = make_pairs(prompts, s.vqa.scenes, s.vqa.seed, s.vqa.hard_fraction, progress)
        return train_vqa(net, pairs, s.vqa, progress)

    vqa, reward_path = pretrained(
        cfg, "reward", train_reward, lambda: MiniVQA(*table, s.vqa), force=force, collective=False
    )  # fmt: skip
    reward_accuracy = measure_reward(vqa, conditions, s)

    folder = _pipeline_folder(cfg, unet, codec, [str(unet_path), str(vae_path)])
    sd = load_stable_diffusion(
        folder,
        texts,
        negative_prompt="",
        device=local_device(),
    )
    reward = YesProbability(vqa.to(local_device()))
    eval_ids = list(range(len(train_ids), len(conditions)))
    metrics = SceneMetrics(conditions, eval_ids, codec, s.reference_size, seed=s.data_seed + 1)
    real, real_labels = metrics.real_samples(s.reference_size)
    return Task(
        name="scenes",
        data=None,
        base=sd.denoiser,
        reward=reward,
        judge_accuracy=reward_accuracy["overall"],
        real_reward_mean=float(reward(real, real_labels).mean()),
        num_conditions=len(train_ids),
        class_names=texts,
        sample_shape=sd.sample_shape,
        decode=sd.decode,
        eval_conditions=torch.tensor(eval_ids),
        metrics=metrics,
        # the assembled diffusers folder too: what StableDiffusionPipeline.from_pretrained loads
        paths={"vae": str(vae_path), "unet": str(unet_path), "reward": str(reward_path), "pipeline": str(folder)},
        pretrain_s=time.time() - t0,
        render=functools.partial(render_grid, texts),
        info={"reward_accuracy": reward_accuracy},  # per category, on fresh real renders
    )


def render_grid(texts: list[str], decoded: torch.Tensor, labels: torch.Tensor, path, title: str, rows: int = 8):
    """The first ``rows`` prompts' samples, one row each, the prompt over the row."""
    keep = torch.isin(labels, labels.unique()[:rows])
    return save_grid(decoded[keep], labels[keep], path, per_class=8, class_names=texts, title=title)
