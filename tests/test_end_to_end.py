"""A seconds-long P-GRAFT run on a tiny model: rewards rise, NaN rewards are survived."""

import time

import pytest
from margins import assert_rises

from pgraft.config import EvalConfig, PGraftConfig
from pgraft.engine.compose import Single
from pgraft.engine.evaluate import evaluate
from pgraft.engine.problem import Problem
from pgraft.engine.rounds import run_pgraft
from pgraft.tasks.digits import decode


def brightness(images, conds):
    return images.mean(dim=(1, 2, 3))


def nan_every_third(images, conds):
    r = brightness(images, conds)
    r[::3] = float("nan")
    return r


def _cfg(n_i, **kw):
    return PGraftConfig.model_validate(
        {
            "n_i": n_i,
            "samples_per_condition": 16,
            "rounds": 3,
            "select": {"rule": "top_k", "k": 4},
            "train": {"lr": 3e-3, "batch_size": 32, "steps_per_round": 40, **kw},
            "sampler": {"steps": 8},
            "speed": {"sample_precision": "fp32"},  # the test is about learning, not bf16 rounding
        }
    )


@pytest.mark.parametrize("n_i,mode", [(0, "full"), (3, "full"), (3, "lora")])
def test_rewards_rise_over_rounds(tiny_digits_model, n_i, mode):
    extra = {"mode": mode, "lora_rank": 8, "lr": 1e-2} if mode == "lora" else {}
    problem = Problem(
        base=tiny_digits_model, reward=brightness, decode=decode, num_conditions=3, sample_shape=(1, 8, 8)
    )
    run = run_pgraft(problem, _cfg(n_i, **extra), progress=False)
    assert run.samples_drawn == 3 * 3 * 16
    # Held-out evaluation with common noise: the composed fine-tuned sampler beats the base.
    ev = {
        name: evaluate(policy, run.schedule, problem, EvalConfig(samples_per_class=64))
        for name, policy in (("base", Single(tiny_digits_model)), ("tuned", run.policy))
    }
    assert_rises(ev["tuned"], ev["base"], f"GRAFT/P-GRAFT n_i={n_i} {mode}")
    assert all(r.accepted == 12 for r in run.history)


def test_nan_rewards_are_excluded_and_counted(tiny_digits_model):
    problem = Problem(base=tiny_digits_model, reward=nan_every_third, decode=decode, num_conditions=3,
                      sample_shape=(1, 8, 8))  # fmt: skip
    run = run_pgraft(problem, _cfg(0).model_copy(update={"rounds": 1}), progress=False)
    (log,) = run.history
    assert log.invalid_rewards == 16  # ceil(48 / 3)
    assert log.accepted == 12


def test_a_rounds_wall_time_is_its_phases_and_the_rounds_fit_in_the_run(tiny_digits_model):
    """wall_s = rollout_wall_s + train_wall_s, and the rounds, disjoint stretches of the run, sum to at most
    the run's own time: a rollout counted twice (slow here: the reward sleeps) would overshoot it."""

    def slow_brightness(images, conditions):
        time.sleep(0.05)
        return brightness(images, conditions)

    problem = Problem(base=tiny_digits_model, reward=slow_brightness, decode=decode, num_conditions=3,
                      sample_shape=(1, 8, 8))  # fmt: skip
    started = time.time()
    run = run_pgraft(problem, _cfg(0).model_copy(update={"rounds": 2}), progress=False)
    elapsed = time.time() - started
    for r in run.history:
        assert r.rollout_wall_s >= 0.05 and r.train_wall_s > 0
        assert r.wall_s == pytest.approx(r.rollout_wall_s + r.train_wall_s, rel=1e-12)
    assert sum(r.wall_s for r in run.history) <= run.wall_s <= elapsed


def test_the_positional_form_of_earlier_versions_warns_and_runs_the_same(tiny_digits_model):
    """run_pgraft / evaluate with the old positional arguments: a DeprecationWarning naming the
    replacement, and the very same run as through a Problem."""
    cfg = _cfg(3).model_copy(update={"rounds": 1})
    problem = Problem(
        base=tiny_digits_model, reward=brightness, decode=decode, num_conditions=3, sample_shape=(1, 8, 8)
    )
    new = run_pgraft(problem, cfg, progress=False)
    with pytest.warns(DeprecationWarning, match=r"pass a pgraft.Problem"):
        old = run_pgraft(tiny_digits_model, brightness, decode, 3, (1, 8, 8), cfg, null_label=10, progress=False)
    untimed = {"wall_s": 0, "rollout_wall_s": 0, "train_wall_s": 0}
    assert [vars(r) | untimed for r in old.history] == [vars(r) | untimed for r in new.history]
    held_out = EvalConfig(samples_per_class=8)
    with pytest.warns(DeprecationWarning, match=r"evaluate\(reward, classify"):
        ev_old = evaluate(old.policy, old.schedule, brightness, None, 3, (1, 8, 8), decode, held_out, null_label=10)
    assert ev_old.rewards.tolist() == evaluate(new.policy, new.schedule, problem, held_out).rewards.tolist()
    with pytest.raises(TypeError, match="unexpected arguments"):
        run_pgraft(problem, cfg, 5)
