"""The shipped YAML configs validate, and the documented defaults are the code's defaults."""

from pathlib import Path

import pytest

from pgraft import config as C

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("name,cls", [("digits_demo.yaml", C.DemoConfig), ("digits_sweep.yaml", C.SweepConfig)])
def test_shipped_defaults_equal_the_code_defaults(name, cls):
    assert C.load(cls, CONFIGS / name) == cls()


def test_tiny_config_validates():
    cfg = C.load(C.DemoConfig, CONFIGS / "tiny.yaml")
    assert cfg.method.select.k <= cfg.method.samples_per_condition


def test_train_configs_validate_and_spell_out_the_defaults():
    full = C.load(C.TrainRunConfig, CONFIGS / "digits_train.yaml")
    assert full.model_copy(update={"checkpoint": C.CheckpointConfig()}) == C.TrainRunConfig()
    assert full.method.n_i == 6 and full.checkpoint.every_steps == 100
    for name in ("digits_train_short.yaml", "tiny_train.yaml"):
        cfg = C.load(C.TrainRunConfig, CONFIGS / name)
        assert 0 < cfg.method.n_i < cfg.method.sampler.steps
        assert cfg.method.rollout_batch < cfg.method.samples_per_condition * 10  # shardable across 2 ranks


def test_inc_config_spells_out_the_defaults():
    assert C.load(C.IncConfig, CONFIGS / "digits_inc.yaml") == C.IncConfig()
    with pytest.raises(C.ConfigError, match="pairs"):
        C.build(C.IncConfig, {"pairs": [[16, 0]]})


def test_task_defaults_sit_under_the_config_and_config_objects_win_whole():
    from pgraft.config import DemoConfig, PGraftConfig, SweepConfig, TaskConfig, build

    # molecules' defaults fill what a mapping leaves unset, and what it sets wins
    c = build(DemoConfig, {}, ["task.name=molecules", "method.rounds=2", "method.select.k=64"])
    assert (c.method.samples_per_condition, c.method.rounds, c.method.select.k) == (1024, 2, 64)
    assert c.method.select.rule == "dedup" and c.eval.samples_per_class == 2000 and c.pgraft_n_i == 3
    assert build(SweepConfig, {}, ["task.name=molecules"]).method.samples_per_condition == 1024
    # a config object (the Python API) is taken as it is
    mine = PGraftConfig(samples_per_condition=64, select={"k": 8})
    c = DemoConfig(task=TaskConfig(name="molecules"), method=mine)
    assert c.method == mine and c.eval.samples_per_class == 2000
    # the image tasks have no task defaults
    assert build(DemoConfig, {}, []).method == PGraftConfig()


def test_a_comparisons_curve_evaluation_scales_with_its_final_one():
    """Unset, the per-round curve draws a fifth of the final evaluation's samples per class: 10 of
    digits' 50, 400 of molecules' 2,000 unconditional samples (10 would decide its winners)."""
    from pgraft.config import CompareConfig, build

    assert build(CompareConfig, {}, []).curve_samples_per_class == 10
    assert build(CompareConfig, {}, ["task.name=molecules"]).curve_samples_per_class == 400
    assert build(CompareConfig, {}, ["task.name=layouts"]).curve_samples_per_class == 1
    assert build(CompareConfig, {}, ["task.name=molecules", "curve_samples_per_class=7"]).curve_samples_per_class == 7
    with pytest.raises(C.ConfigError, match="curve_samples_per_class"):
        build(CompareConfig, {}, ["curve_samples_per_class=0"])


def test_a_demo_run_names_its_own_n_i_and_either_baseline():
    """The scenes demo runs P-GRAFT at two N_I and both policy-gradient baselines: a pgraft run's
    ``n_i`` replaces pgraft_n_i, a grpo run takes the GRPO algorithm, and ``n_i`` elsewhere is refused."""
    from pgraft.config import DemoConfig, build

    c = build(DemoConfig, {}, ["task.name=scenes"])
    by_name = {r.name: c.run_config(r) for r in c.runs}
    assert {k: (m.algorithm, m.n_i) for k, m in by_name.items()} == {
        "graft": ("pgraft", 0),
        "pgraft": ("pgraft", 6),
        "pgraft_12": ("pgraft", 12),
        "ddpo": ("ddpo", 0),
        "grpo": ("grpo", 0),
    }
    with pytest.raises(C.ConfigError, match="n_i applies to pgraft runs only"):
        build(DemoConfig, {}, ["runs=[{name: d, kind: ddpo, n_i: 3}]"])
    with pytest.raises(C.ConfigError, match="pgraft_n_i|n_i"):
        build(DemoConfig, {}, ["task.name=scenes", "runs=[{name: p, kind: pgraft, n_i: 20}]"])
