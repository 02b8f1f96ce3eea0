"""Stable Diffusion through the engine, on tiny random components built in the test."""

import pytest
import torch
from sd_tiny import build_tiny_sd

from pgraft.config import PGraftConfig
from pgraft.engine.problem import Problem
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
    problem = Problem(base=sd.denoiser, reward=jpeg_incompressibility, decode=sd.decode, num_conditions=len(PROMPTS),
                      sample_shape=sd.sample_shape)  # fmt: skip
    run = run_pgraft(problem, _cfg(mode, n_i), progress=False)
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


ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
SD2 = ROOT / "configs" / "sd2_pgraft.yaml"


def test_the_sd2_config_validates_and_builds_everything_but_the_weights(tmp_path, monkeypatch):
    from pgraft import config as C
    from pgraft.prompts import load_prompts, split_prompts
    from pgraft.rewards.build import build_reward

    monkeypatch.chdir(ROOT)  # the config's prompt path is relative to the repository
    cfg = C.load(C.TrainRunConfig, SD2)
    sd = cfg.stable_diffusion
    assert cfg.method.train.mode == "lora" and cfg.method.sampler.steps == 50 and 0 < cfg.method.n_i < 50
    train, held = split_prompts(load_prompts(sd.prompts), sd.eval_fraction, cfg.method.seed)
    assert len(train) == 32 and len(held) == 8
    try:
        import t2v_metrics  # noqa: F401
    except ImportError:  # what a user without the extra sees
        from pgraft.errors import RewardError

        with pytest.raises(RewardError, match="vqascore"):
            build_reward(cfg.reward, [p.text for p in train])


def test_pgraft_train_runs_the_sd2_recipe_on_a_tiny_model(tmp_path, monkeypatch, sd_folder):
    """The shipped recipe end to end, shrunk: tiny SD in place of SD2, JPEG in place of VQAScore."""
    import json

    from pgraft.cli import main

    monkeypatch.chdir(ROOT)
    shrink = [
        f"stable_diffusion.path={sd_folder}", "stable_diffusion.dtype=fp32", "reward=[{name: jpeg_incompressibility}]",
        "method.samples_per_condition=2", "method.rounds=1", "method.rollout_batch=32", "method.select.k=1",
        "method.sampler.steps=4", "method.n_i=1", "method.train.steps_per_round=2", "method.train.precision=fp32",
        "method.train.zero_stage=0", "method.train.warmup_steps=0", "eval.samples_per_class=1", "eval.batch_size=8",
        "checkpoint.every_steps=0",
    ]  # fmt: skip
    mode = "lora" if "epsilon" in sd_folder.name else "full"  # one of each across the two folders
    shrink.append(f"method.train.mode={mode}")
    run = tmp_path / "run"
    args = ["train", "--config", str(SD2), "--out", str(run)]
    for s in shrink:
        args += ["--set", s]
    assert main(args) == 0
    res = json.loads((run / "results.json").read_text())
    assert res["task"] == "stable_diffusion" and res["models"]["pgraft"]["n_i"] == 1
    assert res["history"][0]["samples_drawn"] == 64 and res["history"][0]["accepted"] == 32
    assert len(res["models"]["pgraft"]["per_class"]) == 8  # the held-out prompts

    # Saved in diffusers' formats, with N_I in the metadata; `pgraft sample` reproduces the sampler.
    from pgraft.models.export import read_meta

    saved = run / "models" / ("lora" if mode == "lora" else "pipeline")
    assert read_meta(saved)["n_i"] == 1
    if mode == "full":
        from diffusers import StableDiffusionPipeline

        StableDiffusionPipeline.from_pretrained(saved, local_files_only=True)
    assert (
        main(["sample", "--run", str(run), "--prompt", "a red cube", "--num", "2", "--out", str(tmp_path / "a")]) == 0
    )
    assert (
        main(["sample", "--run", str(run), "--prompt", "a red cube", "--num", "2", "--out", str(tmp_path / "b")]) == 0
    )
    pngs = sorted((tmp_path / "a").glob("sample_*.png"))
    assert len(pngs) == 2
    assert [p.read_bytes() for p in pngs] == [p.read_bytes() for p in sorted((tmp_path / "b").glob("sample_*.png"))]


@torch.no_grad()
def _engine_images(policy, sd, latents, steps, guidance):
    from pgraft.engine.rollout import run_chain
    from pgraft.models.schedule import Schedule

    sched = Schedule.from_scheduler_config(sd.denoiser.scheduler_config, steps, "ddim", 0.0)
    cond = torch.zeros(latents.shape[0], dtype=torch.long)
    x0, _ = run_chain(
        policy, sched, latents.clone(), cond, torch.Generator(), guidance_scale=guidance, null_label=sd.null_label
    )
    return sd.decode(x0)


def test_saved_lora_loads_in_diffusers_and_reproduces_the_engine_images(sd_folder, tmp_path):
    from diffusers import StableDiffusionPipeline

    from pgraft.config import TrainConfig
    from pgraft.engine.compose import Single
    from pgraft.engine.train import make_trainable
    from pgraft.models.export import read_meta, save_lora

    sd = load_stable_diffusion(sd_folder, PROMPTS[:1], negative_prompt="blurry")
    tuned = make_trainable(sd.denoiser, TrainConfig(mode="lora", lora_rank=4, lora_alpha=8.0,
                                                    lora_targets=["to_q", "to_k", "to_v", "to_out.0"]))  # fmt: skip
    with torch.no_grad():  # a non-trivial adapter (PEFT starts lora_B at zero)
        for name, p in tuned.named_parameters():
            if "lora_B" in name:
                p.copy_(0.3 * torch.randn_like(p))
    tuned.eval()
    save_lora(tuned, tmp_path / "lora", {"n_i": 0})
    assert read_meta(tmp_path / "lora")["n_i"] == 0

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(3))
    ours = _engine_images(Single(tuned), sd, latents, 5, 3.0)
    base = _engine_images(Single(sd.denoiser), sd, latents, 5, 3.0)
    assert float((ours - base).abs().max()) > 1e-3  # the adapter changes the images

    pipe = StableDiffusionPipeline.from_pretrained(sd_folder, safety_checker=None, local_files_only=True)
    pipe.load_lora_weights(tmp_path / "lora")
    emb = sd.denoiser.prompt_embeds
    theirs = pipe(
        prompt_embeds=emb[:1].expand(2, -1, -1), negative_prompt_embeds=emb[1:].expand(2, -1, -1),
        latents=latents, num_inference_steps=5, guidance_scale=3.0, eta=0.0, output_type="pt",
    ).images  # fmt: skip
    torch.testing.assert_close(theirs.float(), ours, atol=2e-4, rtol=0)


def test_a_folder_with_a_bert_text_encoder_embeds_and_samples_as_diffusers_does(tmp_path):
    """A folder whose text encoder is BERT-like (the scenes task's MiniLM is one): the loader embeds
    prompts exactly as diffusers' pipeline does (16 tokens, masked), and both sample the same images."""
    from diffusers import StableDiffusionPipeline

    from pgraft.engine.compose import Single

    folder = build_tiny_sd(tmp_path / "sd", "v_prediction", text="bert")
    sd = load_stable_diffusion(folder, PROMPTS[:2], negative_prompt="")
    assert sd.denoiser.prompt_embeds.shape == (3, 16, 32)
    pipe = StableDiffusionPipeline.from_pretrained(folder, safety_checker=None, local_files_only=True)
    assert type(pipe.text_encoder).__name__ == "BertModel"
    with torch.no_grad():
        pos, neg = pipe.encode_prompt(PROMPTS[:2], "cpu", 1, True, negative_prompt=["", ""])
    torch.testing.assert_close(sd.denoiser.prompt_embeds[:2], pos, atol=1e-6, rtol=0)
    torch.testing.assert_close(sd.denoiser.prompt_embeds[2:].expand(2, -1, -1), neg, atol=1e-6, rtol=0)

    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(5))
    ours = _engine_images(Single(sd.denoiser), sd, latents, 5, 3.0)  # prompt 0 for both
    theirs = pipe(
        PROMPTS[:1] * 2, latents=latents, num_inference_steps=5, guidance_scale=3.0, eta=0.0, output_type="pt"
    ).images
    torch.testing.assert_close(theirs.float(), ours, atol=2e-4, rtol=0)
