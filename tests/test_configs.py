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
