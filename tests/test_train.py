"""P-GRAFT's denoising loss has the right minimiser, and the DeepSpeed trainer learns with it."""
import pytest
import torch
from torch import nn

from pgraft.config import TrainConfig
from pgraft.engine.train import DenoisingTrainer, TrainingData, dsm_loss, make_trainable
from pgraft.models.schedule import Schedule

SCHED = Schedule.from_scheduler_config({"num_train_timesteps": 1000, "beta_schedule": "linear"}, 10)
AC = SCHED.alphas_cumprod.float()
SIGMA = 0.5  # data x_0 ~ N(0, σ² I): the exact ε-predictor is known in closed form


class ScaledOptimum(nn.Module):
    """c × the exact ε-predictor for Gaussian data: ε*(x_t) = √(1−ᾱ_t)·x_t / (ᾱ_t σ² + 1 − ᾱ_t)."""

    prediction_type = "epsilon"

    def __init__(self, c: float):
        super().__init__()
        self.c = c

    def forward(self, x, t, cond):
        a = AC[t].view(-1, 1, 1, 1)
        return self.c * (1 - a).sqrt() * x / (a * SIGMA**2 + 1 - a)


def _fitted_scale(x_data, level, weighting, t_min=0):
    """Minimiser over c of the (quadratic) loss, from three evaluations on the same draws."""
    losses = []
    for c in (0.8, 1.0, 1.2):
        g = torch.Generator().manual_seed(42)
        losses.append(float(dsm_loss(ScaledOptimum(c), x_data, torch.zeros(len(x_data), dtype=torch.long),
                                     level, AC, g, t_min=t_min, weighting=weighting)))
    l0, l1, l2 = losses
    return 1.0 - 0.2 * (l2 - l0) / (2 * (l2 - 2 * l1 + l0))


@pytest.mark.parametrize("weighting", ["unit_target", "none"])
@pytest.mark.parametrize("level", [-1, 300, 700])
def test_dsm_from_intermediate_states_has_the_exact_score_as_minimiser(level, weighting):
    g = torch.Generator().manual_seed(0)
    x0 = SIGMA * torch.randn(20000, 1, 2, 2, generator=g)
    a_s = 1.0 if level < 0 else float(AC[level])
    x_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * torch.randn(x0.shape, generator=g)
    # "none" has a heavy-tailed target near s; a margin keeps the Monte-Carlo error small (METHOD.md §2)
    t_min = level + 50 if weighting == "none" and level >= 0 else 0
    assert _fitted_scale(x_s, level, weighting, t_min) == pytest.approx(1.0, abs=0.03)


def test_treating_noisy_states_as_clean_data_gives_the_wrong_minimiser():
    g = torch.Generator().manual_seed(0)
    x0 = SIGMA * torch.randn(20000, 1, 2, 2, generator=g)
    a_s = float(AC[500])
    x_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * torch.randn(x0.shape, generator=g)
    assert abs(_fitted_scale(x_s, -1, "unit_target", t_min=501) - 1.0) > 0.1


def test_deepspeed_trainer_reduces_the_loss_and_lora_leaves_the_base_weights_alone(tiny_unet):
    data = TrainingData(torch.rand(64, 1, 8, 8) * 2 - 1, torch.randint(0, 3, (64,)))
    for mode, stage in (("full", 2), ("lora", 0)):
        cfg = TrainConfig(mode=mode, lr=3e-3, batch_size=32, zero_stage=stage, lora_rank=4)
        model = make_trainable(tiny_unet, cfg)
        before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
        trainer = DenoisingTrainer(model, AC[:100], cfg, null_label=3, seed=0)
        losses = trainer.train(data, 60, progress=False)
        assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), mode
        for k, v in tiny_unet.state_dict().items():  # the base is never touched
            torch.testing.assert_close(v, before[k])
