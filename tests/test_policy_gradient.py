"""DDPO / GRPO (docs/method.md §4): stored log-probabilities, the PPO surrogate, the advantage trackers,
and a short DDPO run that learns."""

import math

import pytest
import torch
from margins import assert_rises

from pgraft.config import EvalConfig, PGraftConfig, UNetConfig
from pgraft.engine.advantages import PerConditionStats, group_advantages
from pgraft.engine.compose import Single
from pgraft.engine.evaluate import evaluate
from pgraft.engine.policy_gradient import (
    PPOObjective,
    guided_output,
    ppo_clip_loss,
    transition_log_prob,
    transition_mean,
)
from pgraft.engine.problem import Problem
from pgraft.engine.rollout import rollout
from pgraft.engine.rounds import run_pgraft
from pgraft.models.flow import FlowUNet
from pgraft.models.schedule import Schedule
from pgraft.models.unet import ClassConditionalUNet
from pgraft.tasks.digits import decode

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, attention=False, num_train_timesteps=100)


def _model(prediction_type):
    torch.manual_seed(0)
    cfg = UNetConfig(**TINY, prediction_type=prediction_type)
    return ClassConditionalUNet.from_config(cfg, image_size=8, num_classes=3).eval().requires_grad_(False)


def _flow_model():
    torch.manual_seed(0)
    return FlowUNet.from_config(UNetConfig(**TINY), image_size=8).eval().requires_grad_(False)


CASES = [
    ("epsilon", "ddim", 1.0, 1.0),
    ("epsilon", "ddim", 0.5, 3.0),  # DDIM η < 1 with CFG
    ("v_prediction", "ddim", 1.0, 3.0),
    ("v_prediction", "ddim", 0.3, 1.0),
    ("epsilon", "ddpm", 1.0, 2.0),
    ("flow", "flow_sde", 0.7, 1.0),  # Flow-GRPO's SDE step
]


@pytest.mark.parametrize("prediction_type,kind,eta,guidance", CASES)
def test_recomputed_log_probs_equal_the_rollouts(prediction_type, kind, eta, guidance):
    model = _flow_model() if kind == "flow_sde" else _model(prediction_type)
    null = None if kind == "flow_sde" else model.null_label
    sched = Schedule.from_scheduler_config(model.scheduler_config, 6, kind, eta)
    cond = torch.arange(3).repeat_interleave(4)
    traj = rollout(Single(model), sched, cond, (1, 8, 8), (0,), guidance_scale=guidance, null_label=null, record=True)
    assert traj.states.shape == (12, 7, 1, 8, 8) and traj.log_prob.shape == (12, 6)
    torch.testing.assert_close(traj.states[:, -1], traj.x0, rtol=0, atol=0)
    table = sched.table()
    for step in range(sched.steps):
        steps = torch.full((12,), step)
        x_t = traj.states[:, step]
        out = guided_output(model, x_t, sched.timesteps[steps], cond, guidance, null)
        mean = transition_mean(x_t, out, steps, table, sched.clip_sample_range)
        lp = transition_log_prob(traj.states[:, step + 1], mean, steps, table)
        torch.testing.assert_close(lp, traj.log_prob[:, step], rtol=1e-5, atol=1e-5)
        # PPO's first ratio: the recomputed (dimension-averaged) log-prob against the stored one,
        # 1 up to float32 rounding of the two log-densities (measured: at most 6e-6)
        ratio = torch.exp(
            transition_log_prob(traj.states[:, step + 1], mean, steps, table, "mean") - traj.log_prob[:, step] / 64
        )
        torch.testing.assert_close(ratio, torch.ones_like(ratio), rtol=0, atol=1e-5)


def test_the_first_inner_step_of_ppo_has_ratio_one_and_a_real_gradient(tiny_unet):
    cfg = PGraftConfig(algorithm="ddpo", samples_per_condition=4, sampler={"steps": 5})
    sched = Schedule.from_scheduler_config(tiny_unet.scheduler_config, 5)
    cond = torch.arange(3).repeat_interleave(4)
    traj = rollout(Single(tiny_unet), sched, cond, (1, 8, 8), (0,), record=True)
    model = tiny_unet.requires_grad_(True)
    objective = PPOObjective(sched, cfg, tiny_unet.null_label, None, torch.device("cpu"))
    assert objective.passes == 4  # the last DDIM step is deterministic here (ᾱ_prev = 1): not trained
    adv = torch.linspace(-1, 1, 12)
    batch = {"states": traj.states, "log_prob": traj.log_prob, "advantage": adv, "cond": cond}
    for loss, fwd, bwd in objective.losses(model, batch, 12, 0, 12, torch.Generator().manual_seed(0)):
        # ratio = 1 everywhere: the loss is −mean(A) = 0 for these advantages, the gradient −A·∇log p
        assert float(loss.detach()) == pytest.approx(0.0, abs=1e-6)
        grads = torch.autograd.grad(loss, [p for p in model.parameters()], allow_unused=True)
        assert sum(float(g.abs().sum()) for g in grads if g is not None) > 0
        assert (fwd, bwd) == (12, 12)


def test_the_clipped_surrogate_has_no_gradient_outside_the_clip_in_the_losing_direction():
    eps = 0.2
    ratio = torch.tensor([1.5, 0.5, 1.1, 0.9, 0.5, 1.5], requires_grad=True)
    adv = torch.tensor([2.0, -3.0, 1.0, -1.0, 4.0, -2.0])
    # rows 0, 1: past the clip where the objective would gain (A > 0, ρ > 1 + ε; A < 0, ρ < 1 − ε) → 0
    # rows 2, 3: inside the clip → −A/N; rows 4, 5: outside but losing ground → unclipped, −A/N
    (grad,) = torch.autograd.grad(ppo_clip_loss(ratio, adv, eps), ratio)
    n = 6
    torch.testing.assert_close(grad, torch.tensor([0.0, 0.0, -1.0 / n, 1.0 / n, -4.0 / n, 2.0 / n]))
    value = ppo_clip_loss(ratio.detach(), adv, eps)
    expected = [-2.0 * 1.2, 3.0 * 0.8, -1.0 * 1.1, 1.0 * 0.9, -4.0 * 0.5, 2.0 * 1.5]
    assert float(value) == pytest.approx(sum(expected) / n)


def test_ddpo_tracker_falls_back_to_batch_statistics_then_uses_its_window():
    stats = PerConditionStats(window=4, min_count=3)
    cond = torch.tensor([0, 0, 1, 1])
    r1 = torch.tensor([1.0, 3.0, 10.0, 20.0])
    adv = stats.update(cond, r1)
    # fewer than 3 rewards per condition: the batch's mean 8.5 and std (population)
    mean, std = 8.5, math.sqrt(((1 - 8.5) ** 2 + (3 - 8.5) ** 2 + (10 - 8.5) ** 2 + (20 - 8.5) ** 2) / 4)
    torch.testing.assert_close(adv, (r1.double() - mean) / (std + 1e-6))
    r2 = torch.tensor([5.0, 7.0, 30.0, 40.0])
    adv = stats.update(cond, r2)
    # windows hold [1, 3, 5, 7] and [10, 20, 30, 40]
    w0 = torch.tensor([1.0, 3.0, 5.0, 7.0], dtype=torch.float64)
    w1 = torch.tensor([10.0, 20.0, 30.0, 40.0], dtype=torch.float64)
    exp0 = (torch.tensor([5.0, 7.0], dtype=torch.float64) - w0.mean()) / (w0.std(unbiased=False) + 1e-6)
    exp1 = (torch.tensor([30.0, 40.0], dtype=torch.float64) - w1.mean()) / (w1.std(unbiased=False) + 1e-6)
    torch.testing.assert_close(adv, torch.cat([exp0, exp1]))
    stats.update(torch.tensor([0]), torch.tensor([9.0]))  # the window keeps the last 4: [3, 5, 7, 9]
    assert list(stats.stats[0]) == [3.0, 5.0, 7.0, 9.0]
    restored = PerConditionStats(window=4, min_count=3)
    restored.load_state_dict(stats.state_dict())
    assert {c: list(w) for c, w in restored.stats.items()} == {c: list(w) for c, w in stats.stats.items()}
    nan = stats.update(torch.tensor([1, 1]), torch.tensor([float("nan"), 50.0]))
    assert math.isnan(float(nan[0])) and list(stats.stats[1]) == [20.0, 30.0, 40.0, 50.0]


def test_grpo_normalises_within_each_group():
    r = torch.tensor([[1.0, 2.0, 3.0], [10.0, 10.0, 40.0]])
    per_group = group_advantages(r, global_std=False)
    exp0 = (torch.tensor([1.0, 2.0, 3.0]) - 2.0) / (math.sqrt(2 / 3) + 1e-4)
    exp1 = (torch.tensor([10.0, 10.0, 40.0]) - 20.0) / (math.sqrt(200) + 1e-4)
    torch.testing.assert_close(per_group, torch.stack([exp0, exp1]).double())
    glob = group_advantages(r, global_std=True)
    std = float(r.flatten().double().std(unbiased=False))  # the whole round's
    torch.testing.assert_close(glob, (r.double() - r.double().mean(1, keepdim=True)) / (std + 1e-4))
    with_nan = group_advantages(torch.tensor([[1.0, float("nan"), 3.0]]), global_std=False)
    assert math.isnan(float(with_nan[0, 1]))
    torch.testing.assert_close(with_nan[0, [0, 2]], torch.tensor([-1.0, 1.0], dtype=torch.float64) / (1 + 1e-4))


def brightness(images, conds):
    return images.mean(dim=(1, 2, 3))


def on_brightness(model) -> Problem:
    """``model``'s first three conditions, rewarded by brightness."""
    return Problem(base=model, reward=brightness, decode=decode, num_conditions=3, sample_shape=(1, 8, 8))


@pytest.mark.parametrize("algorithm,mode", [("ddpo", "full"), ("grpo", "full"), ("ddpo", "lora")])
def test_a_short_policy_gradient_run_raises_the_held_out_reward(tiny_digits_model, algorithm, mode):
    lr = 3e-2 if mode == "full" else 1e-1
    cfg = PGraftConfig.model_validate(
        {
            "algorithm": algorithm,
            "samples_per_condition": 16,
            "rounds": 3,
            "train": {"lr": lr, "batch_size": 16, "mode": mode, "lora_rank": 8},
            "sampler": {"steps": 8},
            "pg": {"clip_range": 0.1},
            "speed": {"sample_precision": "fp32"},  # what "auto" gives a policy gradient, stated
        }
    )
    run_problem = on_brightness(tiny_digits_model)
    run = run_pgraft(run_problem, cfg, progress=False)
    assert all(h.accepted == 48 and h.train_backward == 3 * 16 * 7 for h in run.history)  # 3 steps × 16 × 7 passes
    ev = {
        name: evaluate(policy, run.schedule, run_problem, EvalConfig(samples_per_class=64))
        for name, policy in (("base", Single(tiny_digits_model)), ("tuned", run.policy))
    }
    assert_rises(ev["tuned"], ev["base"], f"{algorithm} {mode}")


def test_policy_gradient_configs_refuse_what_they_cannot_do():
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match="n_i=3 applies to algorithm=pgraft"):
        PGraftConfig(algorithm="ddpo", n_i=3)
    with pytest.raises(ValidationError, match="stochastic sampler"):
        PGraftConfig(algorithm="grpo", sampler={"eta": 0.0})
    with pytest.raises(ValidationError, match=">= 2"):
        PGraftConfig(algorithm="grpo", samples_per_condition=1)
    from pgraft.config import CompareConfig, DemoConfig, SweepConfig, build
    from pgraft.errors import ConfigError

    for cls in (DemoConfig, SweepConfig, CompareConfig):  # each experiment chooses the algorithms itself
        with pytest.raises(ConfigError, match="method.algorithm"):
            build(cls, {"method": {"algorithm": "ddpo"}})


def test_the_loop_refuses_a_baseline_with_an_intermediate_step(tiny_unet):
    from pgraft.errors import ConfigError

    cfg = PGraftConfig(algorithm="ddpo", samples_per_condition=4).model_copy(update={"n_i": 2})  # not validated
    with pytest.raises(ConfigError, match="n_i=2 applies to algorithm=pgraft"):
        run_pgraft(on_brightness(tiny_unet), cfg, progress=False)


def test_grpo_trains_a_class_conditional_flow_base_with_the_flow_sde_step(digits8):
    """Flow-GRPO's setting in miniature: a conditional rectified flow on the real 8×8 digits,
    sampled with the SDE step, fine-tuned by GRPO toward brightness."""
    from pgraft.engine.inc import train_flow

    torch.manual_seed(0)
    model = ClassConditionalUNet.flow(UNetConfig(**TINY), image_size=8, num_classes=10)
    train_flow(
        model, digits8.train_x, 200, batch_size=64, lr=3e-3, seed=0, progress=False,
        labels=digits8.train_y, null_label=model.null_label,
    )  # fmt: skip
    cfg = PGraftConfig.model_validate(
        {
            "algorithm": "grpo",
            "samples_per_condition": 16,
            "rounds": 3,
            "train": {"lr": 3e-2, "batch_size": 16},
            "sampler": {"kind": "flow_sde", "steps": 8, "eta": 0.7},
            "pg": {"clip_range": 0.1},
            "speed": {"sample_precision": "fp32"},
        }
    )
    run_problem = on_brightness(model)
    run = run_pgraft(run_problem, cfg, progress=False)
    assert run.schedule.kind == "flow_sde"
    ev = {
        name: evaluate(policy, run.schedule, run_problem, EvalConfig(samples_per_class=64))
        for name, policy in (("base", Single(model)), ("tuned", run.policy))
    }
    assert_rises(ev["tuned"], ev["base"], "grpo flow_sde")


def test_the_denoising_loss_refuses_a_flow_sampler(tiny_unet):
    from pgraft.errors import ConfigError

    model = ClassConditionalUNet.flow(UNetConfig(**TINY), image_size=8, num_classes=3)
    cfg = PGraftConfig(samples_per_condition=4, select={"k": 2}, sampler={"kind": "flow_sde", "eta": 0.7})
    with pytest.raises(ConfigError, match="algorithm=pgraft trains a denoising loss"):
        run_pgraft(on_brightness(model), cfg, progress=False)


def test_the_kl_term_counts_the_reference_forwards_and_vanishes_against_itself(tiny_digits_model):
    cfg = PGraftConfig.model_validate(
        {
            "algorithm": "ddpo",
            "samples_per_condition": 8,
            "rounds": 1,
            "train": {"batch_size": 8},
            "sampler": {"steps": 4, "guidance_scale": 2.0},
            "pg": {"kl_coef": 1.0},
        }
    )
    (log,) = run_pgraft(on_brightness(tiny_digits_model), cfg, progress=False).history
    # 3 minibatches × 8 trajectories × 3 stochastic steps, CFG doubling each, the base's forwards added
    assert log.train_backward == 3 * 8 * 3 * 2 and log.train_forward == 2 * log.train_backward
    assert log.rollout_forward == 24 * 4 * 2
    sched = Schedule.from_scheduler_config(tiny_digits_model.scheduler_config, 4)
    x = torch.randn(5, 1, 8, 8)
    steps = torch.full((5,), 1)
    from pgraft.engine.policy_gradient import gaussian_kl

    out = tiny_digits_model(x, sched.timesteps[steps], torch.zeros(5, dtype=torch.long))
    mean = transition_mean(x, out, steps, sched.table(), sched.clip_sample_range)
    assert torch.equal(gaussian_kl(mean, mean, steps, sched.table()), torch.zeros(5))
    shifted = mean + 0.01
    sigma = float(sched.table()[1, 5])
    torch.testing.assert_close(
        gaussian_kl(shifted, mean, steps, sched.table()), torch.full((5,), 64 * 1e-4 / (2 * sigma**2))
    )


def test_the_equal_budget_winner_is_read_off_the_curves():
    from pgraft.experiments.compare import winner_at

    def curve(points):
        return {"curve": [{"samples": s, "passes": p, "reward_mean": r} for s, p, r in points]}

    methods = {
        "base": {"final": {}},
        "cheap": curve([(0, 0, 0.5), (10, 100, 0.6), (20, 200, 0.7)]),
        "dear": curve([(0, 0, 0.5), (10, 400, 0.9), (20, 800, 0.95)]),
    }
    samples = winner_at(methods, "samples")
    assert samples["at"] == 20 and samples["winner"] == "dear"
    compute = winner_at(methods, "passes")  # at 200 passes "dear" is halfway to its first round
    assert compute["at"] == 200 and compute["reward_mean"] == {"cheap": 0.7, "dear": pytest.approx(0.7)}
    methods["dear"]["curve"][1]["reward_mean"] = 0.85
    assert winner_at(methods, "passes")["winner"] == "cheap"


def test_a_timestep_fraction_trains_distinct_random_steps_of_each_trajectory(tiny_unet):
    cfg = PGraftConfig(algorithm="ddpo", sampler={"steps": 9}, pg={"timestep_fraction": 0.5})
    sched = Schedule.from_scheduler_config(tiny_unet.scheduler_config, 9)
    objective = PPOObjective(sched, cfg, tiny_unet.null_label, None, torch.device("cpu"))
    assert objective.passes == 4  # int(8 stochastic steps × 0.5), as ddpo-pytorch rounds
    seen = []

    class Spy(torch.nn.Module):
        def forward(self, x, t, cond):
            seen.append(t.clone())
            return tiny_unet(x, t, cond)

    cond = torch.arange(3).repeat_interleave(2)
    traj = rollout(Single(tiny_unet), sched, cond, (1, 8, 8), (0,), record=True)
    batch = {"states": traj.states, "log_prob": traj.log_prob, "advantage": torch.ones(6), "cond": cond}
    list(objective.losses(Spy(), batch, 6, 0, 6, torch.Generator().manual_seed(0)))
    steps = torch.stack(seen, 1)  # [6 trajectories, 4 passes] of timesteps
    last = sched.timesteps[-1]  # the deterministic last step is never drawn
    for row in steps:
        assert len(set(row.tolist())) == 4 and last not in row
    assert len({tuple(r.tolist()) for r in steps}) > 1  # a permutation per trajectory
