"""The batched denoising step against diffusers' own DDIMScheduler / DDPMScheduler .step()."""

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from pgraft.errors import ConfigError, ShapeError
from pgraft.kernels import denoise_step
from pgraft.models.schedule import Schedule

CFG = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True, "clip_sample_range": 1.0}


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("guidance", [1.0, 3.0])
def test_ddim_step_matches_diffusers_at_every_step(prediction_type, eta, guidance):
    cfg = {**CFG, "prediction_type": prediction_type}
    ours = Schedule.from_scheduler_config(cfg, 50, "ddim", eta)
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(ref.timesteps):
        x, cond, uncond, z = (torch.randn(4, 1, 6, 6, generator=g) for _ in range(4))
        out = uncond + guidance * (cond - uncond)
        expect = ref.step(out, t, x, eta=eta, variance_noise=z)
        got = denoise_step(
            x, cond, i, ours, z, uncond_output=uncond if guidance != 1.0 else None, guidance_scale=guidance
        )
        if guidance == 1.0:
            got = denoise_step(x, out, i, ours, z)
        torch.testing.assert_close(got.prev_sample, expect.prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.pred_x0, expect.pred_original_sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_ddpm_step_matches_diffusers_at_every_step(prediction_type):
    cfg = {**CFG, "prediction_type": prediction_type}
    ours = Schedule.from_scheduler_config(cfg, 20, "ddpm")
    ref = DDPMScheduler(**cfg)
    ref.set_timesteps(20)
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate(ref.timesteps):
        x, out = torch.randn(4, 1, 6, 6, generator=g), torch.randn(4, 1, 6, 6, generator=g)
        expect = ref.step(out, t, x, generator=torch.Generator().manual_seed(i)).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
        torch.testing.assert_close(denoise_step(x, out, i, ours, z).prev_sample, expect, atol=1e-5, rtol=0)


def test_rows_may_sit_at_different_steps():
    sched = Schedule.from_scheduler_config(CFG, 10, "ddim", 1.0)
    g = torch.Generator().manual_seed(2)
    x, out, z = (torch.randn(3, 1, 4, 4, generator=g) for _ in range(3))
    steps = torch.tensor([0, 4, 9])
    mixed = denoise_step(x, out, steps, sched, z).prev_sample
    for row, s in enumerate(steps.tolist()):
        alone = denoise_step(x[row : row + 1], out[row : row + 1], s, sched, z[row : row + 1]).prev_sample
        torch.testing.assert_close(mixed[row : row + 1], alone)


def test_float16_storage_keeps_float32_arithmetic():
    sched = Schedule.from_scheduler_config(CFG, 10, "ddim", 1.0)
    g = torch.Generator().manual_seed(3)
    x, out, z = (torch.randn(8, 1, 4, 4, generator=g) for _ in range(3))
    ref = denoise_step(x.half().float(), out.half().float(), 3, sched, z.half().float()).prev_sample
    half = denoise_step(x.half(), out.half(), 3, sched, z.half()).prev_sample
    assert half.dtype == torch.float16
    torch.testing.assert_close(half.float(), ref, atol=2e-3, rtol=1e-3)


def test_bad_inputs_raise_named_errors():
    sched = Schedule.from_scheduler_config(CFG, 10, "ddim", 1.0)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ShapeError, match="model_output shape"):
        denoise_step(x, torch.randn(2, 1, 4, 5), 0, sched, x)
    with pytest.raises(ShapeError, match="pass a noise tensor"):
        denoise_step(x, x, 0, sched, None)
    with pytest.raises(ShapeError, match="entries for a batch"):
        denoise_step(x, x, torch.tensor([0, 1, 2]), sched, x)
    with pytest.raises(ConfigError, match="thresholding"):
        Schedule.from_scheduler_config({**CFG, "thresholding": True}, 10)
    with pytest.raises(ConfigError, match="prediction_type"):
        Schedule.from_scheduler_config({**CFG, "prediction_type": "sample"}, 10)
    with pytest.raises(ConfigError, match="exceeds"):
        Schedule.from_scheduler_config(CFG, 2000)


def test_state_indexing_follows_method_notation():
    sched = Schedule.from_scheduler_config(CFG, 50, "ddim", 1.0)
    assert sched.state_timestep(50) == 980  # x_S, the initial noise, at the first model timestep
    assert sched.state_timestep(1) == 0
    assert sched.state_alpha(0) == 1.0
    with pytest.raises(ValueError):
        sched.state_timestep(0)
