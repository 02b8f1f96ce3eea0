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
