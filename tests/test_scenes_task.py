"""The scenes task end to end at toy sizes: `prepare` trains the autoencoder, the UNet and the
reward into the cache, assembles a diffusers pipeline folder, and hands the engine a Problem
whose metrics score real renders as GenEval would (all correct)."""

import json

import pytest
import torch

from pgraft import config as C
from pgraft.tasks import prepare_task

TOY = {
    "pretrain_scenes": 300,
    "vae": {"block_out_channels": [8, 16, 16], "steps": 20, "batch": 16},
    "unet": {"block_out_channels": [16, 32], "pretrain_steps": 20, "pretrain_batch": 16},
    "vqa": {"width": 16, "layers": 1, "heads": 2, "scenes": 200, "steps": 20, "batch": 16},
    "reference_size": 100,
    "reward_check": 100,
}


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    cache = tmp_path_factory.mktemp("cache")
    return prepare_task(C.TaskConfig(name="scenes", cache_dir=cache, scenes=TOY), progress=False), cache


def test_prepare_trains_every_part_into_the_cache_and_loads_a_pipeline_folder(task):
    from diffusers import StableDiffusionPipeline

    task, cache = task
    assert set(task.paths) == {"vae", "unet", "reward", "pipeline"}
    assert all(str(cache) in p for p in task.paths.values())
    (folder,) = (cache / "scenes").glob("pipeline-*")
    assert task.paths["pipeline"] == str(folder)  # the folder StableDiffusionPipeline loads
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert task.sample_shape == (4, 8, 8) and task.null_label == len(task.class_names)
    held = task.eval_conditions.tolist()
    assert held == list(range(task.num_conditions, len(task.class_names)))
    assert 0 < task.judge_accuracy <= 1 and 0 < task.real_reward_mean < 1


def test_real_renders_score_as_genevals_ceiling(task):
    task, _ = task
    images, labels = task.metrics.real_samples(60)
    assert set(labels.tolist()) <= set(task.eval_conditions.tolist())
    scores = task.metrics(images, labels)
    assert scores["geneval"] == 1.0 and scores["well_formed"] == 1.0
    assert set(task.metrics.COLUMNS) <= set(scores)
    # the base's samples are images the reward takes
    latents = torch.randn(3, *task.sample_shape)
    decoded = task.decode(latents)
    assert decoded.shape == (3, 3, 32, 32)
    r = task.reward(decoded, torch.tensor([0, 1, 2]))
    assert r.shape == (3,) and bool(((r >= 0) & (r <= 1)).all())


def test_a_second_prepare_reads_the_cache(task):
    task, cache = task
    again = prepare_task(C.TaskConfig(name="scenes", cache_dir=cache, scenes=TOY), progress=False)
    assert again.paths == task.paths
    assert len(list((cache / "scenes").glob("pipeline-*"))) == 1  # the same weights: the same folder
    for a, b in zip(again.base.parameters(), task.base.parameters()):
        assert torch.equal(a, b)


def test_the_shipped_models_are_what_the_code_would_train():
    """The default autoencoder, UNet and reward ship in the package under the hash of the config
    that trained them (`pgraft pretrain --task scenes --ship`), and load into their architectures."""
    from pgraft.io import load_state
    from pgraft.tasks import cache, model_payloads
    from pgraft.tasks.scenes.mini_sd import build_autoencoder
    from pgraft.tasks.scenes.prompts import all_prompts
    from pgraft.tasks.scenes.task import build_unet
    from pgraft.tasks.scenes.vqa import MiniVQA

    cfg = C.TaskConfig(name="scenes")
    s = cfg.scenes
    prompts = len(all_prompts())
    builders = {
        "vae": lambda: build_autoencoder(s.vae),
        "unet": lambda: build_unet(s.unet),
        "reward": lambda: MiniVQA(torch.zeros(prompts, 16, 384), torch.ones(prompts, 16, dtype=torch.bool), s.vqa),
    }
    payloads = model_payloads(cfg)
    assert set(payloads) == set(builders)
    for kind, payload in payloads.items():
        path = cache.entry_path(cache.SHIPPED_ROOT, "scenes", kind, payload)
        assert path.exists(), f"no shipped {kind}: run `pgraft pretrain --task scenes --ship`"
        state, meta = load_state(path)  # verifies the checksum
        assert meta["kind"] == kind and meta["config"] == json.loads(json.dumps(payload, default=str)), kind
        assert path.stat().st_size < 8 << 20
        builders[kind]().load_state_dict(state)
