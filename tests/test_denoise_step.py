"""The fused denoising step: Triton (interpreted, or compiled on a GPU) vs C++ vs torch reference vs diffusers.

Every timestep of a 50-step schedule, fresh random inputs, CFG on and off, ε- and v-prediction,
DDPM, DDIM (η ∈ {0, 0.5, 1}), flow-matching Euler (ODE and stochastic) and Flow-GRPO's SDE step.
Outputs are poisoned (NaN) before each call, so an element a kernel forgets to write fails.
"""

import math

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler, FlowMatchEulerDiscreteScheduler
from kernel_devices import BACKENDS, device, host, to

from pgraft.errors import ConfigError, ShapeError
from pgraft.kernels.denoise_step import denoise_step
from pgraft.models.schedule import Schedule

DDPM_CFG = {"num_train_timesteps": 1000, "beta_schedule": "squaredcos_cap_v2", "clip_sample": True}
SHAPE = (2, 1, 3, 5)  # 15 elements per row: not a power of two, so masking is exercised


def _inputs(g, n=4, dtype=torch.float32):
    return [torch.randn(SHAPE, generator=g).to(dtype) for _ in range(n)]


def _ours(x, cond, uncond, z, i, sched, guidance, backend, **kw):
    """Run our step on the backend's device with poisoned outputs; returns its StepOutput on the CPU."""
    x, cond, uncond, z = to(backend, x, cond, uncond, z)
    prev = torch.full_like(x, float("nan"))
    prev.copy_(x)  # in-place target: its old contents are the input
    u = uncond if guidance != 1.0 else None
    o = cond if guidance != 1.0 else uncond + guidance * (cond - uncond)
    out = denoise_step(prev, o, i, sched, z, uncond_output=u, guidance_scale=guidance, inplace=kw.pop("inplace", True),
                       backend=backend, **kw)  # fmt: skip
    return host(out)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("eta", [0.0, 0.5, 1.0])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_ddim_matches_diffusers_at_every_step(backend, prediction_type, eta, guidance):
    cfg = {**DDPM_CFG, "prediction_type": prediction_type}
    ours = Schedule.from_scheduler_config(cfg, 50, "ddim", eta)
    ref = DDIMScheduler(**cfg)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(0)
    for i, t in enumerate(ref.timesteps):
        x, cond, uncond, z = _inputs(g)
        expect = ref.step(uncond + guidance * (cond - uncond), t, x, eta=eta, variance_noise=z)
        got = _ours(x, cond, uncond, z, i, ours, guidance, backend)
        torch.testing.assert_close(got.prev_sample, expect.prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.pred_x0, expect.pred_original_sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_ddpm_matches_diffusers_at_every_step(backend, prediction_type, guidance):
    cfg = {**DDPM_CFG, "prediction_type": prediction_type}
    ours = Schedule.from_scheduler_config(cfg, 50, "ddpm")
    ref = DDPMScheduler(**cfg)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(1)
    for i, t in enumerate(ref.timesteps):
        x, cond, uncond = _inputs(g, 3)
        expect = ref.step(uncond + guidance * (cond - uncond), t, x, generator=torch.Generator().manual_seed(i))
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))  # the noise diffusers drew
        got = _ours(x, cond, uncond, z, i, ours, guidance, backend)
        torch.testing.assert_close(got.prev_sample, expect.prev_sample, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.pred_x0, expect.pred_original_sample, atol=1e-5, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("guidance", [1.0, 4.0])
def test_flow_euler_matches_diffusers_at_every_step(backend, stochastic, guidance):
    cfg = {"num_train_timesteps": 1000, "shift": 3.0, "stochastic_sampling": stochastic}
    ours = Schedule.from_scheduler_config(cfg, 50, "flow")
    ref = FlowMatchEulerDiscreteScheduler(**cfg)
    ref.set_timesteps(50)
    g = torch.Generator().manual_seed(2)
    for i, t in enumerate(ref.timesteps):
        x, cond, uncond = _inputs(g, 3)
        seed = torch.Generator().manual_seed(100 + i)
        expect = ref.step(uncond + guidance * (cond - uncond), t, x, generator=seed).prev_sample
        z = torch.randn(x.shape, generator=torch.Generator().manual_seed(100 + i)) if stochastic else None
        got = _ours(x, cond, uncond, z, i, ours, guidance, backend)
        torch.testing.assert_close(got.prev_sample, expect, atol=1e-5, rtol=0)
        torch.testing.assert_close(got.pred_x0, x - ref.sigmas[i] * (uncond + guidance * (cond - uncond)), atol=1e-5,
                                   rtol=0)  # fmt: skip


def _flow_grpo_sde_step(v, sigmas, i, x, z, noise_level):
    """Flow-GRPO's sde_step_with_logprob (arXiv 2505.05470), written out independently."""
    sigma, sigma_prev, sigma_max = sigmas[i], sigmas[i + 1], sigmas[1]
    dt = sigma_prev - sigma
    std = math.sqrt(sigma / (1 - (sigma_max if sigma == 1 else sigma))) * noise_level
    mean = x * (1 + std**2 / (2 * sigma) * dt) + v * (1 + std**2 * (1 - sigma) / (2 * sigma)) * dt
    scale = std * math.sqrt(-dt)
    return mean, scale, mean + scale * z


@pytest.mark.parametrize("backend", BACKENDS)
def test_flow_sde_step_and_its_log_probability(backend):
    cfg = {"num_train_timesteps": 1000, "shift": 3.0}
    ours = Schedule.from_scheduler_config(cfg, 50, "flow_sde", eta=0.7)
    ref = FlowMatchEulerDiscreteScheduler(**cfg)
    ref.set_timesteps(50)
    sigmas = ref.sigmas.double().tolist()
    g = torch.Generator().manual_seed(3)
    for i in range(50):
        x, v, z = _inputs(g, 3)
        mean, scale, expect = _flow_grpo_sde_step(v.double(), sigmas, i, x.double(), z.double(), 0.7)
        got = _ours(x, v, v, z, i, ours, 1.0, backend, return_log_prob=True)
        torch.testing.assert_close(got.prev_sample.double(), expect, atol=1e-5, rtol=0)
        lp = torch.distributions.Normal(mean, scale).log_prob(expect).flatten(1).sum(1)
        torch.testing.assert_close(got.log_prob.double(), lp, atol=1e-3, rtol=1e-5)


@pytest.mark.parametrize("backend", BACKENDS)
def test_ddim_log_probability_against_torch_normal(backend):
    sched = Schedule.from_scheduler_config(DDPM_CFG, 20, "ddim", 1.0)
    g = torch.Generator().manual_seed(4)
    for i in range(19):  # the last DDIM step lands on x_0 with σ > 0 as well; check all but the edge
        x, o, z = _inputs(g, 3)
        got = host(denoise_step(*to(backend, x, o), i, sched, *to(backend, z), return_log_prob=True, backend=backend))
        det = denoise_step(x, o, i, sched, torch.zeros_like(z), backend="torch").prev_sample  # the mean
        sigma = float(sched.coefficients[i, 5])
        lp = torch.distributions.Normal(det.double(), sigma).log_prob(got.prev_sample.double()).flatten(1).sum(1)
        torch.testing.assert_close(got.log_prob.double(), lp, atol=2e-3, rtol=1e-5)


def test_deterministic_steps_report_zero_log_probability():
    sched = Schedule.from_scheduler_config(DDPM_CFG, 10, "ddim", 0.0)
    x, o, z = _inputs(torch.Generator().manual_seed(5), 3)
    assert torch.equal(denoise_step(x, o, 3, sched, z, return_log_prob=True).log_prob, torch.zeros(2))


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_16_bit_storage_is_within_rounding_of_float32(backend, dtype):
    sched = Schedule.from_scheduler_config({**DDPM_CFG, "prediction_type": "v_prediction"}, 50, "ddim", 1.0)
    g = torch.Generator().manual_seed(6)
    # 1,200 elements per row: whole 8-lane groups, a ragged tail and more than one of the C++
    # float16 path's 512-element conversion blocks.
    x, cond, uncond, z = (torch.randn(2, 3, 20, 20, generator=g).to(dtype) for _ in range(4))
    for i in (0, 25, 49):
        ref = denoise_step(x.float(), cond.float(), i, sched, z.float(), uncond_output=uncond.float(),
                           guidance_scale=3.0, return_log_prob=True, backend="torch")  # fmt: skip
        dx, dc, du, dz = to(backend, x, cond, uncond, z)
        got = host(denoise_step(dx, dc, i, sched, dz, uncond_output=du, guidance_scale=3.0, return_log_prob=True,
                                backend=backend))  # fmt: skip
        # The log-probability needs Σz² of the stored noise only, which float32 holds exactly.
        torch.testing.assert_close(got.log_prob, ref.log_prob, rtol=1e-5, atol=1e-3)
        inplace = denoise_step(dx.clone(), dc, i, sched, dz, uncond_output=du, guidance_scale=3.0, inplace=True,
                               backend=backend)  # fmt: skip
        assert torch.equal(host(inplace.prev_sample), got.prev_sample)
        assert got.prev_sample.dtype == dtype
        eps = torch.finfo(dtype).eps
        torch.testing.assert_close(got.prev_sample.float(), ref.prev_sample, rtol=eps, atol=eps)
        torch.testing.assert_close(got.pred_x0.float(), ref.pred_x0, rtol=eps, atol=eps)


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_at_different_steps_equal_rows_stepped_alone(backend):
    sched = Schedule.from_scheduler_config(DDPM_CFG, 10, "ddim", 1.0)
    x, o, z = (torch.randn(3, 1, 4, 4, generator=torch.Generator().manual_seed(7)) for _ in range(3))
    steps = torch.tensor([0, 4, 9])
    mixed = host(denoise_step(*to(backend, x, o, steps), sched, *to(backend, z), backend=backend))
    for row, s in enumerate(steps.tolist()):
        alone = denoise_step(x[row : row + 1], o[row : row + 1], s, sched, z[row : row + 1], backend="torch")
        torch.testing.assert_close(mixed.prev_sample[row : row + 1], alone.prev_sample, atol=1e-6, rtol=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_place_leaves_inputs_untouched_and_skips_x0_when_asked(backend):
    sched = Schedule.from_scheduler_config(DDPM_CFG, 10, "ddim", 1.0)
    x, o, z = to(backend, *_inputs(torch.Generator().manual_seed(8), 3))
    x_before = x.clone()
    out = denoise_step(x, o, 2, sched, z, return_x0=False, backend=backend)
    assert out.pred_x0 is None and torch.equal(x, x_before)
    dest = torch.full_like(x, float("nan"))
    assert denoise_step(x, o, 2, sched, z, out=dest, backend=backend).prev_sample is dest
    torch.testing.assert_close(dest, out.prev_sample)
    with pytest.raises(ShapeError, match="cannot be combined"):
        denoise_step(x, o, 2, sched, z, out=dest, inplace=True, backend=backend)
    inplace = denoise_step(x, o, 2, sched, z, inplace=True, backend=backend)
    assert inplace.prev_sample.data_ptr() == x.data_ptr()
    torch.testing.assert_close(x, out.prev_sample)


def test_bad_inputs_raise_named_errors():
    sched = Schedule.from_scheduler_config(DDPM_CFG, 10, "ddim", 1.0)
    x = torch.randn(2, 1, 4, 4)
    with pytest.raises(ShapeError, match="model_output shape"):
        denoise_step(x, torch.randn(2, 1, 4, 5), 0, sched, x)
    with pytest.raises(ShapeError, match="model_output dtype"):
        denoise_step(x, x.half(), 0, sched, x)
    with pytest.raises(ShapeError, match="sample dtype"):
        denoise_step(x.double(), x.double(), 0, sched, x.double())
    with pytest.raises(ShapeError, match="pass a noise tensor"):
        denoise_step(x, x, 0, sched, None)
    with pytest.raises(ShapeError, match="entries for a batch"):
        denoise_step(x, x, torch.tensor([0, 1, 2]), sched, x)
    with pytest.raises(ShapeError, match=r"step indices must lie in \[0, 10\)"):
        denoise_step(x, x, 10, sched, x)
    with pytest.raises(ValueError, match="backend must be one of"):
        denoise_step(x, x, 0, sched, x, backend="cuda")


@pytest.mark.parametrize(
    "cfg,kind,pattern",
    [
        ({**DDPM_CFG, "thresholding": True}, "ddim", "thresholding"),
        ({**DDPM_CFG, "prediction_type": "sample"}, "ddim", "prediction_type"),
        ({**DDPM_CFG, "variance_type": "learned"}, "ddpm", "fixed_small"),
        ({"use_dynamic_shifting": True}, "flow", "use_dynamic_shifting"),
        ({"invert_sigmas": True}, "flow", "invert_sigmas"),
        ({"stochastic_sampling": True}, "flow_sde", "stochastic_sampling=False"),
        (DDPM_CFG, "euler", "unknown sampler kind"),
    ],
)
def test_unsupported_scheduler_options_are_refused(cfg, kind, pattern):
    with pytest.raises(ConfigError, match=pattern):
        Schedule.from_scheduler_config(cfg, 10, kind)


@pytest.mark.parametrize("spacing,offset", [("trailing", 0), ("linspace", 0), ("leading", 1)])
def test_timestep_spacing_and_offset_are_honoured(spacing, offset):
    cfg = {**DDPM_CFG, "timestep_spacing": spacing, "steps_offset": offset}
    for kind, cls in (("ddim", DDIMScheduler), ("ddpm", DDPMScheduler)):
        ours = Schedule.from_scheduler_config(cfg, 10, kind, 1.0)
        ref = cls(**cfg)
        ref.set_timesteps(10)
        assert ours.timesteps.tolist() == ref.timesteps.tolist()
        g = torch.Generator().manual_seed(9)
        for i, t in enumerate(ref.timesteps):
            x, o = _inputs(g, 2)
            z = torch.randn(x.shape, generator=torch.Generator().manual_seed(i))
            kw = (
                {"eta": 1.0, "variance_noise": z} if kind == "ddim" else {"generator": torch.Generator().manual_seed(i)}
            )
            expect = ref.step(o, t, x, **kw).prev_sample
            # At t = 999 (ᾱ ≈ 2e-9), √(1 − ᾱ_prev − σ²) cancels catastrophically in diffusers' float32
            # (3.43e-4 there, 3.10e-4 exactly); our table is built in float64, hence 1e-4 here.
            torch.testing.assert_close(denoise_step(x, o, i, ours, z).prev_sample, expect, atol=1e-4, rtol=0)


def test_state_indexing_follows_method_notation():
    sched = Schedule.from_scheduler_config(DDPM_CFG, 50, "ddim", 1.0)
    assert sched.state_timestep(50) == 980  # x_S, the initial noise, at the first model timestep
    assert sched.state_timestep(1) == 0
    assert sched.state_alpha(0) == 1.0
    with pytest.raises(ValueError):
        sched.state_timestep(0)


def test_integer_step_out_of_range_is_caught_before_any_kernel_runs():
    sched = Schedule.from_scheduler_config(DDPM_CFG, 10, "ddim", 1.0)
    x = torch.randn(2, 1, 4, 4, device=device("triton"))
    for bad in (-1, 10):
        with pytest.raises(ShapeError, match=rf"must lie in \[0, 10\), got {bad}"):
            denoise_step(x, x, bad, sched, x, backend="triton")


@pytest.mark.parametrize("backend", BACKENDS)
def test_rows_longer_than_one_block_sum_their_log_probability_across_blocks(backend):
    """2,500 float32 elements per row: three of the Triton step's 1,024-element blocks (two full,
    one masked), whose partial Σz² meet in one atomic add per block."""
    sched = Schedule.from_scheduler_config(DDPM_CFG, 20, "ddim", 1.0)
    g = torch.Generator().manual_seed(8)
    x, o, z = (torch.randn(3, 2500, generator=g) for _ in range(3))
    for i in (0, 10, 18):
        ref = denoise_step(x, o, i, sched, z, return_log_prob=True, backend="torch")
        got = host(denoise_step(*to(backend, x, o), i, sched, *to(backend, z), return_log_prob=True, backend=backend))
        # a few float32 ulps of values up to ~10: the C++ loop's fused multiply-adds round differently
        torch.testing.assert_close(got.prev_sample, ref.prev_sample, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.pred_x0, ref.pred_x0, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(got.log_prob, ref.log_prob, rtol=1e-6, atol=1e-3)
