"""Bad input: one clear error each, naming the cause."""

import pytest
import torch

from pgraft import config as C
from pgraft.errors import CheckpointError, ConfigError, RewardError
from pgraft.io import load_state, save_state
from pgraft.rewards import score


@pytest.mark.parametrize(
    "cls,overrides,pattern",
    [
        (C.PGraftConfig, ["select.k=9", "samples_per_condition=4"], r"select.k=9 exceeds samples_per_condition=4"),
        (C.PGraftConfig, ["n_i=25", "sampler.steps=25"], r"n_i=25 must lie in \[0, sampler.steps=25\)"),
        (C.PGraftConfig, ["n_i=-1"], r"'n_i': Input should be greater than or equal to 0"),
        (C.PGraftConfig, ["select.rule=top_p"], r"'select.rule': Input should be 'top_k', 'best_of_n'"),
        (C.PGraftConfig, ["rounds=-2"], r"'rounds': Input should be greater than or equal to 1"),
        (C.PGraftConfig, ["samples_per_condition=0"], r"'samples_per_condition'"),
        (C.PGraftConfig, ["train.steps_per_round=-5"], r"'train.steps_per_round'"),
        (C.PGraftConfig, ["select.rule=threshold"], r"needs select.threshold"),
        (C.PGraftConfig, ["train.lr=abc"], r"'train.lr': Input should be a valid number"),
        (C.PGraftConfig, ["train.zero_stage=4"], r"'train.zero_stage'"),
        (C.PGraftConfig, ["sampler.kind=ddpm", "sampler.eta=0.5"], r"eta applies to the ddim sampler only"),
        (C.PGraftConfig, ["select.typo=1"], r"'select.typo': Extra inputs are not permitted"),
        (C.DemoConfig, ["pgraft_n_i=30"], r"pgraft_n_i=30 must lie in \[1, method.sampler.steps=25\)"),
        (C.SweepConfig, ["n_i_fracs=[0.5, 1.0]"], r"n_i_fracs entries must lie in \[0, 1\)"),
        (C.DemoConfig, ["eval.samples_per_class=-1"], r"'eval.samples_per_class'"),
        (C.DemoConfig, ["method.n_i=3"], r"method.n_i is set by the experiment itself; set pgraft_n_i"),
        (C.SweepConfig, ["method.n_i=3"], r"set n_i_fracs instead"),
        (C.DemoConfig, ["task.name=cifar"], r"'task.name': unknown task 'cifar'; the known tasks are digits, animals"),
    ],
)
def test_config_errors_name_the_field(cls, overrides, pattern):
    with pytest.raises(ConfigError, match=pattern):
        C.build(cls, {}, overrides)


def test_config_files_and_override_syntax(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        C.load(C.DemoConfig, tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("method: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        C.load(C.DemoConfig, bad)
    with pytest.raises(ConfigError, match="field.path=value"):
        C.build(C.DemoConfig, {}, ["method.rounds"])
    good = tmp_path / "good.yaml"
    good.write_text(C.to_yaml(C.build(C.DemoConfig, {}, ["method.rounds=5"])))
    assert C.load(C.DemoConfig, good).method.rounds == 5


def _wrong_shape(images, conds):
    return torch.zeros(images.shape[0], 2)


def _wrong_type(images, conds):
    return [0.0] * images.shape[0]


def _integer(images, conds):
    return torch.zeros(images.shape[0], dtype=torch.long)


@pytest.mark.parametrize(
    "fn,pattern",
    [(_wrong_shape, r"returned shape \(4, 2\)"), (_wrong_type, "returned list"), (_integer, "float dtype")],
)
def test_reward_contract_violations_raise(fn, pattern):
    with pytest.raises(RewardError, match=pattern):
        score(fn, torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long))


def test_nan_rewards_pass_through_score_for_selection_to_exclude():
    r = score(lambda x, c: torch.full((x.shape[0],), float("nan")), torch.rand(3, 1, 2, 2), torch.zeros(3))
    assert torch.isnan(r).all()


def test_corrupt_truncated_and_incomplete_state_files_are_detected(tmp_path):
    path = save_state(tmp_path / "m.safetensors", {"w": torch.arange(100.0)}, {"n_i": 3})
    state, meta = load_state(path)
    assert meta == {"n_i": 3} and torch.equal(state["w"], torch.arange(100.0))
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_state(path)
    path.write_bytes(bytes(blob[:20]))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        load_state(path)
    (tmp_path / "m.safetensors.json").unlink()
    with pytest.raises(CheckpointError, match="incomplete"):
        load_state(path)
    with pytest.raises(CheckpointError, match="missing"):
        load_state(tmp_path / "never.safetensors")
