"""Inverse noise correction: inversion round trip, reported non-convergence, the corrector, the
composed sampler's switch, FLOP counts, the Fréchet distance."""

import logging

import pytest
import torch
from torch import nn

from pgraft.config import FlowModelConfig
from pgraft.engine.inc import (
    corrected_sample,
    euler,
    flops_per_forward,
    flow_schedule,
    frechet_distance,
    invert,
    train_flow,
)
from pgraft.models.flow import FlowUNet

TOL = 1e-3  # stated round-trip tolerance (max abs pixel error, data in [-1, 1])


@pytest.fixture(scope="module")
def small_flow(digits8):
    torch.manual_seed(0)
    cfg = FlowModelConfig(block_out_channels=(8, 16), attention=False)
    model = FlowUNet.from_config(cfg.unet(), 8)
    train_flow(model, digits8.train_x, 150, batch_size=64, lr=3e-3, seed=0, progress=False)
    return model


def test_inversion_round_trip_on_a_trained_flow(small_flow, digits8):
    x = digits8.test_x[:64]
    sched = flow_schedule(8)
    z, report = invert(small_flow, sched, x, max_iters=100, tol=1e-6)
    assert report.converged and report.total_steps == 8
    assert report.recon_err_max < TOL
    torch.testing.assert_close(euler(small_flow, sched, z), x, atol=TOL, rtol=0)
    assert 0.3 < float(z.std()) < 3  # the inverse noises look like noise, not like digits


class Steep(nn.Module):
    """v(x) = 5·x: backward Euler's fixed point diverges when |h|·5 > 1 (h = 1 for K = 1)."""

    def forward(self, x, t, cond=None):
        return 5 * x


def test_a_non_converging_inversion_is_reported(caplog):
    x = torch.randn(4, 1, 4, 4)
    with caplog.at_level(logging.WARNING, logger="pgraft"):
        _, report = invert(Steep(), flow_schedule(1), x, max_iters=20, tol=1e-6)
    assert not report.converged and report.unconverged_steps == 1
    assert report.summary()["converged"] is False
    assert "did not converge" in caplog.text


class Recorder(nn.Module):
    def __init__(self, scale):
        super().__init__()
        self.scale, self.calls = scale, []

    def forward(self, x, t, cond=None):
        self.calls.append(round(float(t[0]), 3))
        return self.scale * x


def test_composed_sampler_runs_the_corrector_then_the_base():
    corrector, base = Recorder(0.1), Recorder(-0.2)
    out = corrected_sample(corrector, flow_schedule(3), base, flow_schedule(5), 7, (1, 4, 4), torch.Generator())
    assert out.shape == (7, 1, 4, 4)
    assert corrector.calls == [round(float(t), 3) for t in flow_schedule(3).timesteps]
    assert base.calls == [round(float(t), 3) for t in flow_schedule(5).timesteps]


def test_corrector_learns_the_law_of_a_noise_bank(small_flow, digits8):
    z, _ = invert(small_flow, flow_schedule(8), digits8.train_x[:256], max_iters=100, tol=1e-6)
    bank = z + 1.5  # a bank far from N(0, I), so there is something to learn
    corrector = FlowUNet.from_config(FlowModelConfig(block_out_channels=(4, 8), attention=False).unet(), 8)
    losses = train_flow(corrector, bank, 150, batch_size=64, lr=1e-2, seed=0, progress=False)
    assert sum(losses[-10:]) < 0.7 * sum(losses[:10])
    out = euler(corrector, flow_schedule(8), torch.randn(512, 1, 8, 8, generator=torch.Generator().manual_seed(1)))
    assert float(out.mean()) == pytest.approx(float(bank.mean()), abs=0.3)
    assert sum(p.numel() for p in corrector.parameters()) < sum(p.numel() for p in small_flow.parameters()) / 3


class LinearConv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 8 * 8, 10)

    def forward(self, x, t, cond=None):
        return self.fc(self.conv(x).flatten(1))


def test_flop_count_matches_a_hand_count():
    # conv: 2·(C_in·k·k)·C_out·H·W multiply-adds; linear: 2·in·out (batch 1)
    expected = 2 * (1 * 3 * 3) * 4 * 8 * 8 + 2 * (4 * 8 * 8) * 10
    assert flops_per_forward(LinearConv(), (1, 8, 8)) == expected


def test_frechet_distance_of_gaussians():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(20000, 3, generator=g)
    b = torch.randn(20000, 3, generator=g) * 2 + torch.tensor([1.0, 0.0, 0.0])
    # closed form for N(0, I) vs N(m, 4I): |m|² + Σ (1 + 4 − 2·2) = 1 + 3
    assert frechet_distance(a, b) == pytest.approx(4.0, abs=0.1)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_the_uniform_flow_grid_steps_like_euler_by_hand():
    sched = flow_schedule(4)
    assert sched.timesteps.tolist() == [1000.0, 750.0, 500.0, 250.0]
    x = torch.randn(3, 1, 2, 2)
    out = euler(Steep(), sched, x)  # v = 5x: each step multiplies by (1 + 5·h), h = −1/4
    torch.testing.assert_close(out, x * (1 - 5 / 4) ** 4)
