"""Where the CUDA-only paths put things, checked on the CPU.

Without a GPU, the meta device stands in for "a device that is not where the module was built":
a tensor placed from the wrong source stays on the CPU and the check sees it. The GPU check
(benches/gpu_check.sh) runs the same paths on CUDA for real.
"""

from __future__ import annotations

import threading

import pytest
import torch

from pgraft.config import PGraftConfig, SpeedConfig
from pgraft.engine.problem import Problem
from pgraft.engine.rounds import PGraftLoop
from pgraft.engine.speed import VerifiedCompile, apply_float32_math, low_precision, native_bf16
from pgraft.errors import ConfigError
from pgraft.tasks.digits import decode

META = torch.device("meta")


def brightness(images, conds):
    return images.mean(dim=(1, 2, 3))


def test_the_ppo_objective_is_placed_on_the_engines_device_not_the_modules(tiny_unet, monkeypatch):
    """DeepSpeed moves the trained network to its device when the engine is built; the PPO
    objective's coefficient table and timesteps, and the frozen base, must follow the engine."""
    import pgraft.engine.train as train

    built = train.DenoisingTrainer.__init__

    def on_meta(self, *args, **kwargs):  # the engine reports a device the module was not built on
        built(self, *args, **kwargs)
        self.device = META

    monkeypatch.setattr(train.DenoisingTrainer, "__init__", on_meta)
    cfg = PGraftConfig(algorithm="ddpo", samples_per_condition=4, sampler={"steps": 4})
    problem = Problem(base=tiny_unet, reward=brightness, decode=decode, num_conditions=3, sample_shape=(1, 8, 8))
    loop = PGraftLoop(problem, cfg, progress=False)
    objective = loop.learner.objective
    assert loop.device == META and objective.device == META
    assert objective.table.device == META and objective.timesteps.device == META
    assert next(loop.base.parameters()).device == META


def test_a_text_unet_keeps_its_prompt_table_beside_its_unet():
    """`pgraft sample` built the denoiser around a UNet already on the GPU: its prompt table
    (computed on the CPU) must move with it, not stay behind."""
    from pgraft.config import UNetConfig
    from pgraft.models.text_unet import TextConditionalUNet, build_text_unet

    unet = build_text_unet(UNetConfig(block_out_channels=(8, 16), attention=False), 8, 16).to(META)
    embeds, mask = torch.randn(3, 5, 16), torch.ones(3, 5, dtype=torch.bool)
    d = TextConditionalUNet(unet, embeds, mask, "epsilon", {})
    assert d.prompt_embeds.device == META and d.prompt_mask.device == META
    assert {t.device for t in d.state_dict().values()} == {META}


def test_the_reward_worker_uses_the_callers_gpu(monkeypatch):
    """CUDA's current device is per thread: the scoring thread must adopt the rank's GPU."""
    from pgraft.engine.scoring import OverlappedScorer

    seen = {}
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 3)
    monkeypatch.setattr(torch.cuda, "set_device", lambda d: seen.setdefault(threading.current_thread().name, d))
    scorer = OverlappedScorer(brightness, lambda x: x)
    scorer.submit(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.long))
    scorer.results((1, 4, 4))
    assert list(seen.values()) == [3] and all(name.startswith("pgraft-reward") for name in seen)


def test_bf16_is_native_only_from_compute_capability_8(monkeypatch):
    """torch.cuda.is_bf16_supported() says yes on Volta/Turing too, where bf16 is emulated."""
    gpu = torch.device("cuda", 0)
    for capability, native in (((7, 0), False), ((7, 5), False), ((8, 0), True), ((9, 0), True)):
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda index=None, c=capability: c)
        assert native_bf16(gpu) is native, capability


def test_the_compile_check_allows_16_bit_rounding_only_for_16_bit_networks():
    """A compiled forward 1% off the eager one: refused for an fp32 network, accepted for a bf16
    one (eager and compiled kernels round bf16 differently by about that much)."""
    x = torch.randn(4, 8)
    for dtype, accepted in ((torch.float32, False), (torch.bfloat16, True)):
        net = torch.nn.Linear(8, 8).to(dtype)
        check = VerifiedCompile(net.forward, net, option="speed.compile_sampling", gradients=False)
        check.compiled = lambda inp, net=net: net(inp) * 1.01  # what a slightly-off compiled graph gives
        assert low_precision(net, x.device) is accepted
        if accepted:
            check.check((x.to(dtype),), {}, gradients=False)
        else:
            with pytest.raises(ConfigError, match="speed.compile_sampling"):
                check.check((x,), {}, gradients=False)


@pytest.fixture
def restore_float32_math():
    flags = (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32)
    deterministic = torch.are_deterministic_algorithms_enabled()
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = flags
    torch.use_deterministic_algorithms(deterministic)


def test_fp32_means_ieee_fp32_unless_tf32_is_asked_for(restore_float32_math, tiny_unet):
    torch.backends.cudnn.allow_tf32 = True  # torch's own default for convolutions
    problem = Problem(base=tiny_unet, reward=brightness, decode=decode, num_conditions=3, sample_shape=(1, 8, 8))
    PGraftLoop(problem, PGraftConfig(samples_per_condition=4, select={"k": 2}), progress=False)
    assert not torch.backends.cudnn.allow_tf32 and not torch.backends.cuda.matmul.allow_tf32
    apply_float32_math(SpeedConfig(tf32=True))
    assert torch.backends.cudnn.allow_tf32 and torch.backends.cuda.matmul.allow_tf32
    apply_float32_math(SpeedConfig(deterministic=True))
    assert torch.are_deterministic_algorithms_enabled() and not torch.backends.cudnn.allow_tf32
    apply_float32_math(SpeedConfig())  # the next run's config decides again
    assert not torch.are_deterministic_algorithms_enabled()
    with pytest.raises(ValueError, match="speed.tf32: ddpo's PPO ratio needs IEEE float32"):
        PGraftConfig(algorithm="ddpo", speed={"tf32": True})


def test_the_rollout_refuses_noise_drawn_on_another_device(tiny_unet):
    from pgraft.engine.compose import Single
    from pgraft.engine.rollout import run_chain
    from pgraft.models.schedule import Schedule

    sched = Schedule.from_scheduler_config(tiny_unet.scheduler_config, 4, "ddim", 1.0)
    x = torch.randn(2, 1, 8, 8, device=META)  # a chain on another device than its CPU generator
    with pytest.raises(ValueError, match="draw the noise where the chain runs"):
        run_chain(Single(tiny_unet), sched, x, torch.zeros(2, dtype=torch.long), torch.Generator())


def test_device_tables_are_built_once_per_device(tiny_unet):
    from pgraft.models.schedule import Schedule

    sched = Schedule.from_scheduler_config(tiny_unet.scheduler_config, 4, "ddim", 1.0)
    assert sched.timesteps_on("cpu") is sched.timesteps_on(torch.device("cpu"))
    assert sched.step_ids("cpu").tolist() == [0, 1, 2, 3] and sched.step_ids("cpu") is sched.step_ids("cpu")


CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (benches/gpu_check.sh runs it)")


def _host_to_device_copies(fn) -> int:
    from torch.profiler import ProfilerActivity, profile

    fn()  # warm-up: the schedule's device tables are built once per device
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CUDA]) as prof:
        fn()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if "Memcpy HtoD" in e.name)


@CUDA
def test_the_sampler_loop_copies_nothing_from_the_host_per_step(tiny_unet):
    """Host-to-device copies per chunk do not grow with the number of sampler steps."""
    from pgraft.engine.compose import Single
    from pgraft.engine.rollout import rollout
    from pgraft.models.schedule import Schedule

    model = tiny_unet.to("cuda")
    conds = torch.arange(3).repeat_interleave(4)
    counts = {}
    for steps in (4, 12):
        sched = Schedule.from_scheduler_config(model.scheduler_config, steps, "ddim", 1.0)
        counts[steps] = _host_to_device_copies(
            lambda: rollout(Single(model), sched, conds, (1, 8, 8), (0, "h2d"), device="cuda", record=True)  # noqa: B023
        )
    assert counts[12] == counts[4], counts


@CUDA
def test_kernels_launch_on_the_gpu_of_their_tensors():
    """With another GPU current, the step and the gather still run (and write) where their inputs are."""
    from pgraft.kernels.denoise_step import denoise_step
    from pgraft.kernels.select import gather_rows
    from pgraft.models.schedule import Schedule

    last = torch.device("cuda", torch.cuda.device_count() - 1)
    sched = Schedule.from_scheduler_config({"num_train_timesteps": 1000}, 10, "ddim", 1.0)
    x, o, z = (torch.randn(4, 3000, device=last) for _ in range(3))
    with torch.cuda.device(0):
        got = denoise_step(x, o, 3, sched, z, return_log_prob=True, backend="triton")
        rows = gather_rows(torch.tensor([2, 0], device=last), x, backend="triton")[0]
    ref = denoise_step(x.cpu(), o.cpu(), 3, sched, z.cpu(), return_log_prob=True, backend="torch")
    assert got.prev_sample.device == last and rows.device == last
    torch.testing.assert_close(got.prev_sample.cpu(), ref.prev_sample, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(rows.cpu(), x.cpu()[[2, 0]])
