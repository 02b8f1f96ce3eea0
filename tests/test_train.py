"""P-GRAFT's denoising loss has the right minimiser, and the DeepSpeed trainer learns with it."""

import pytest
import torch
from torch import nn

from pgraft.config import TrainConfig
from pgraft.engine.train import DenoisingTrainer, TrainingData, dsm_loss, make_trainable
from pgraft.errors import ConfigError
from pgraft.models.schedule import Schedule

SCHED = Schedule.from_scheduler_config({"num_train_timesteps": 1000, "beta_schedule": "linear"}, 10)
AC = SCHED.alphas_cumprod.float()
SIGMA = 0.5  # data x_0 ~ N(0, σ² I): the exact ε-predictor is known in closed form


class ScaledOptimum(nn.Module):
    """c × the exact ε-predictor for data x_0 ~ N(0, σ²): ε*(x_t) = √(1−ᾱ_t)·x_t / (ᾱ_t σ² + 1 − ᾱ_t)."""

    prediction_type = "epsilon"

    def __init__(self, c: float, sigma: float = SIGMA):
        super().__init__()
        self.c, self.sigma = c, sigma

    def forward(self, x, t, cond):
        a = AC[t].view(-1, 1, 1, 1)
        return self.c * (1 - a).sqrt() * x / (a * self.sigma**2 + 1 - a)


def _loss(model, x, level, t_min=0, weighting="unit_target"):
    g = torch.Generator().manual_seed(42)  # the same t and ε' draws for every model compared
    return float(
        dsm_loss(model, x, torch.zeros(len(x), dtype=torch.long), level, AC, g, t_min=t_min, weighting=weighting)
    )


def _fitted_scale(x_data, level, weighting, t_min=0):
    """Minimiser over c of the (quadratic) loss, from three evaluations on the same draws."""
    l0, l1, l2 = (_loss(ScaledOptimum(c), x_data, level, t_min, weighting) for c in (0.8, 1.0, 1.2))
    return 1.0 - 0.2 * (l2 - l0) / (2 * (l2 - 2 * l1 + l0))


@pytest.mark.parametrize("weighting", ["unit_target", "none"])
@pytest.mark.parametrize("level", [-1, 300, 700])
def test_dsm_from_intermediate_states_has_the_exact_score_as_minimiser(level, weighting):
    g = torch.Generator().manual_seed(0)
    x0 = SIGMA * torch.randn(20000, 1, 2, 2, generator=g)
    a_s = 1.0 if level < 0 else float(AC[level])
    x_s = a_s**0.5 * x0 + (1 - a_s) ** 0.5 * torch.randn(x0.shape, generator=g)
    # "none" has a heavy-tailed target near s; a margin keeps the Monte-Carlo error small (docs/method.md §2)
    t_min = level + 50 if weighting == "none" and level >= 0 else 0
    assert _fitted_scale(x_s, level, weighting, t_min) == pytest.approx(1.0, abs=0.03)


def test_only_the_level_aware_loss_prefers_the_true_score_over_the_noisy_data_score():
    # States x_s at level 250 look like clean data of std √(ᾱ_s σ² + 1 − ᾱ_s). The level-aware loss
    # must prefer the true model's score; treating x_s as clean data (level -1) prefers the wrong one.
    g = torch.Generator().manual_seed(0)
    s = 250
    a_s = float(AC[s])
    x_s = a_s**0.5 * SIGMA * torch.randn(20000, 1, 2, 2, generator=g) + (1 - a_s) ** 0.5 * torch.randn(
        20000, 1, 2, 2, generator=g
    )
    true, fake = ScaledOptimum(1.0), ScaledOptimum(1.0, sigma=(a_s * SIGMA**2 + 1 - a_s) ** 0.5)
    assert _loss(true, x_s, s) < _loss(fake, x_s, s)
    assert _loss(fake, x_s, -1, t_min=s + 1) < _loss(true, x_s, -1, t_min=s + 1)


def test_deepspeed_trainer_reduces_the_loss_and_lora_leaves_the_base_weights_alone(tiny_unet, digits8):
    keep = digits8.train_y < 3  # tiny_unet has 3 classes
    data = TrainingData(digits8.train_x[keep], digits8.train_y[keep])
    for mode, stage in (("full", 2), ("lora", 0)):
        cfg = TrainConfig(mode=mode, lr=3e-3 if mode == "full" else 1e-2, batch_size=32, zero_stage=stage, lora_rank=4)
        model = make_trainable(tiny_unet, cfg)
        before = {k: v.clone() for k, v in tiny_unet.state_dict().items()}
        trainer = DenoisingTrainer(model, AC[:100], cfg, null_label=3, seed=0)
        losses = trainer.train(data, 60, progress=False)
        assert sum(losses[-10:]) < 0.8 * sum(losses[:10]), mode
        for k, v in tiny_unet.state_dict().items():  # the base is never touched
            torch.testing.assert_close(v, before[k])


def test_bf16_engine_with_warmup_learns_and_samples_in_float32(tiny_unet, digits8):
    keep = digits8.train_y < 3
    cfg = TrainConfig(lr=3e-3, batch_size=32, precision="bf16", zero_stage=1, warmup_steps=5)
    model = make_trainable(tiny_unet, cfg)
    trainer = DenoisingTrainer(model, AC[:100], cfg, null_label=3, seed=0)
    losses = trainer.train(TrainingData(digits8.train_x[keep], digits8.train_y[keep]), 40, progress=False)
    assert next(model.parameters()).dtype == torch.bfloat16
    assert sum(losses[-5:]) < 0.8 * sum(losses[:5])
    assert trainer.engine.get_lr() == [pytest.approx(3e-3)]  # the warm-up ended at the configured LR
    with torch.no_grad():
        out = trainer.sampling_model()(torch.randn(2, 1, 8, 8), torch.tensor([5, 5]), torch.tensor([1, 2]))
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


def test_fp16_on_the_cpu_is_refused_with_the_reason(tiny_unet):
    cfg = TrainConfig(precision="fp16")
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        DenoisingTrainer(make_trainable(tiny_unet, cfg), AC[:100], cfg, null_label=3, seed=0)
