"""A task from one module (tests/toy_task.py, written as docs/custom_task.md says) is accepted by
the configs, the experiments and the CLI, and a demo on it learns."""

from __future__ import annotations

import importlib
import json

import pytest
import torch

from pgraft.config import DemoConfig, build, load, registry, to_yaml
from pgraft.errors import ConfigError


@pytest.fixture
def points():
    module = importlib.import_module("toy_task")
    registry.register_task(module.DEFINITION)  # the same object: a no-op unless a test unregistered it
    yield module
    registry.unregister_task("points")


def test_the_registry_refuses_what_it_cannot_tell_apart(points):
    with pytest.raises(ValueError, match="already registered"):
        registry.register_task(registry.TaskDefinition("points", points.prepare, points.payloads))
    with pytest.raises(ValueError, match="lower-case identifier"):
        registry.TaskDefinition("Two Words", points.prepare, points.payloads)
    with pytest.raises(ValueError, match="embedded task"):
        registry.unregister_task("digits")
    with pytest.raises(
        ConfigError,
        match="unknown task 'nope'; the known tasks are digits, animals, molecules, layouts, scenes, points",
    ):
        registry.get("nope")


def test_a_registered_task_gets_its_section_presets_and_cli_name(points, tmp_path):
    cfg = build(DemoConfig, {"task": {"name": "points"}}, ["task.points.clusters=4"])
    assert isinstance(cfg.task.points, points.PointsConfig) and cfg.task.points.clusters == 4
    assert cfg.task.label == "points (toy)" and cfg.pgraft_n_i == 2
    assert [r.name for r in cfg.runs] == ["graft", "pgraft", "ddpo"]
    assert cfg.method.samples_per_condition == 16 and cfg.eval.samples_per_class == 128  # its defaults
    assert cfg.run_config(cfg.runs[2]).train.lr == 3e-4  # its tuned DDPO
    # a written-out config reads back the same (the run folder's config.yaml)
    (tmp_path / "c.yaml").write_text(to_yaml(cfg))
    assert load(DemoConfig, tmp_path / "c.yaml") == cfg
    with pytest.raises(ConfigError, match=r"task.points.clusters': Input should be less than or equal to 16"):
        build(DemoConfig, {"task": {"name": "points", "points": {"clusters": 99}}})
    with pytest.raises(ConfigError, match="'colour' is neither a task field nor a registered task's section"):
        build(DemoConfig, {"task": {"name": "points", "colour": "red"}})
    from pgraft.cli import parser

    assert parser().parse_args(["demo", "--task", "points"]).task == "points"


@pytest.mark.slow
def test_a_demo_on_the_registered_task_learns(points, tmp_path):
    """`pgraft demo`'s code path on the new task: its base pretrained once through pgraft's trainer
    and cache, GRAFT, P-GRAFT and DDPO trained, its metrics, renderer and labels in the results.
    GRAFT's and P-GRAFT's held-out reward rise over the base's with disjoint CIs (both move the
    samples toward the rewarded corner by several CI widths; measured margins in the asserts)."""
    from pgraft.experiments.demo import run_demo

    cfg = build(DemoConfig, {"task": {"name": "points", "cache_dir": str(tmp_path / "cache")}})
    run_demo(cfg, tmp_path / "run")
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    models = results["models"]
    assert set(models) == {"base", "graft", "pgraft", "ddpo"}
    base = models["base"]
    for name in ("graft", "pgraft"):
        assert models[name]["reward_ci95"][0] > base["reward_ci95"][1], (name, models[name], base)
        assert models[name]["spread"] > 0 and models[name]["samples_drawn"] == 2 * 3 * 16
    assert results["task_info"]["real_held_out"]["spread"] == pytest.approx(0.3 * (torch.pi / 2) ** 0.5, rel=0.1)
    for name in ("base", "graft", "pgraft", "ddpo"):
        assert (tmp_path / "run" / f"grid_{name}.png").stat().st_size > 1000
    # the base was pretrained into the cache once, keyed by the task's payloads
    assert len(list((tmp_path / "cache").rglob("*.safetensors"))) == 1
