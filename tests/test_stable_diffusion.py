"""Stable Diffusion through the engine, on tiny random components built in the test."""

import pytest
import torch
from sd_tiny import build_tiny_sd

from pgraft.config import PGraftConfig
from pgraft.engine.rounds import run_pgraft
from pgraft.errors import ConfigError
from pgraft.models.stable_diffusion import load_stable_diffusion
from pgraft.rewards import jpeg_incompressibility

PROMPTS = ["a red cube", "a blue ball", "a green tree"]


@pytest.fixture(scope="module", params=["epsilon", "v_prediction"])
def sd_folder(request, tmp_path_factory):
    return build_tiny_sd(tmp_path_factory.mktemp(f"sd-{request.param}"), request.param)


def _cfg(mode, n_i):
    return PGraftConfig.model_validate({
        "n_i": n_i, "samples_per_condition": 4, "rounds": 1, "rollout_batch": 6,
        "select": {"rule": "top_k", "k": 2},
        "train": {"mode": mode, "steps_per_round": 3, "batch_size": 4, "lr": 1e-3, "lora_rank": 4},
        "sampler": {"steps": 5, "guidance_scale": 3.0},
    })  # fmt: skip


def test_loads_components_and_encodes_prompts_with_a_negative_prompt(sd_folder):
    sd = load_stable_diffusion(sd_folder, PROMPTS, negative_prompt="blurry")
    assert sd.sample_shape == (4, 8, 8) and sd.null_label == 3
    assert sd.denoiser.prompt_embeds.shape == (4, 77, 32)
    assert sd.denoiser.prediction_type == sd.denoiser.scheduler_config["prediction_type"]
    images = sd.decode(torch.randn(5, 4, 8, 8))
    assert images.shape == (5, 3, 16, 16) and 0 <= float(images.min()) and float(images.max()) <= 1


@pytest.mark.parametrize("mode,n_i", [("lora", 2), ("full", 0)])
def test_one_pgraft_round_with_cfg(sd_folder, mode, n_i):
    sd = load_stable_diffusion(sd_folder, PROMPTS, negative_prompt="blurry")
    before = {k: v.clone() for k, v in sd.denoiser.state_dict().items()}
    run = run_pgraft(
        sd.denoiser, jpeg_incompressibility, sd.decode, len(PROMPTS), sd.sample_shape, _cfg(mode, n_i),
        null_label=sd.null_label, progress=False,
    )  # fmt: skip
    (log,) = run.history
    assert log.samples_drawn == 12 and log.accepted == 6 and log.train_loss == log.train_loss
    tuned = run.model.state_dict()
    changed = [k for k, v in tuned.items() if "lora_" in k or not torch.equal(v, before.get(k, v))]
    assert changed, "training changed nothing"
    for k, v in sd.denoiser.state_dict().items():  # the frozen base is untouched
        torch.testing.assert_close(v, before[k], rtol=0, atol=0)


def test_a_folder_missing_a_component_is_named(tmp_path, sd_folder):
    import shutil

    broken = tmp_path / "sd"
    shutil.copytree(sd_folder, broken)
    shutil.rmtree(broken / "vae")
    with pytest.raises(ConfigError, match="missing component folder.*vae"):
        load_stable_diffusion(broken, PROMPTS)
