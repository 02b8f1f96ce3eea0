"""Base models that draw well but follow the prompt poorly: the caption noise, the base variants,
the weights shipped inside the package, and `pgraft bases`."""

import json
import os
import shutil
import subprocess
import sys

import pytest
import torch

from pgraft import config as C
from pgraft.errors import CheckpointError
from pgraft.io import load_state
from pgraft.tasks import animals, cache, corrupt_labels, digits, layouts, model_payloads, molecules, prepare_task

TINY_TASK = {
    "unet": {"block_out_channels": [8, 16], "attention": False, "pretrain_steps": 4, "pretrain_batch": 16},
    "judge": {"steps": 4, "batch": 16},
}


def test_caption_noise_replaces_exactly_rho_by_other_classes_uniformly():
    labels = torch.arange(10).repeat(1000)
    noisy = corrupt_labels(labels, 10, 0.4, seed=3)
    changed = noisy != labels
    assert int(changed.sum()) == 4000  # exactly round(rho * N), and never the true class
    assert torch.equal(noisy, corrupt_labels(labels, 10, 0.4, seed=3))  # seeded
    assert torch.equal(corrupt_labels(labels, 10, 0.0, seed=3), labels)
    # The replacement class is uniform over the other 9: a chi-square test on the offsets.
    offsets = ((noisy - labels) % 10)[changed]
    counts = torch.bincount(offsets, minlength=10)[1:].double()
    chi2 = float(((counts - counts.mean()) ** 2 / counts.mean()).sum())
    assert chi2 < 20.09  # 8 degrees of freedom, p = 0.01


def test_base_variant_fills_only_the_unset_pretraining_fields():
    noisy, under = C.TaskConfig(), C.TaskConfig(base="undertrained")
    assert noisy.base == "noisy_captions" and noisy.unet.caption_noise == 0.5 and noisy.unet.pretrain_steps == 3000
    assert under.unet.caption_noise == 0.0 and under.unet.pretrain_steps == 150
    assert under.unet.pretrain_lr_schedule == "constant"
    mine = C.TaskConfig.model_validate({"base": "noisy_captions", "unet": {"caption_noise": 0.2}})
    assert mine.unet.caption_noise == 0.2 and mine.unet.pretrain_steps == 3000
    # Every experiment defaults to the premise-faithful base, on every task.
    for cls in (C.DemoConfig, C.SweepConfig, C.TrainRunConfig):
        assert C.build(cls, {}, ["task.name=animals"]).task.unet.caption_noise == 0.5
    with pytest.raises(C.ConfigError, match="task.base"):
        C.build(C.DemoConfig, {}, ["task.base=clean"])
    with pytest.raises(C.ConfigError, match="caption_noise"):
        C.build(C.DemoConfig, {}, ["task.unet.caption_noise=1.5"])


def _base_architecture(cfg: C.TaskConfig):
    if cfg.name == "molecules":
        return molecules.build_base(cfg)
    if cfg.name == "layouts":
        return layouts.build_base(cfg, layouts.split_layouts(cfg).type_table)
    return {"digits": digits.TASK, "animals": animals.TASK}[cfg.name].build_base(cfg)


@pytest.mark.parametrize("task", ["digits", "animals", "molecules", "layouts"])
def test_shipped_weights_are_what_the_code_would_train(task):
    """The default base and judge ship inside the package under the hash of the config that
    trained them, and their manifests record that very config: changing a default without
    re-shipping (`pgraft pretrain --task T --ship`) fails here."""
    cfg = C.TaskConfig(name=task)
    for kind, payload in model_payloads(cfg).items():
        path = cache.entry_path(cache.SHIPPED_ROOT, task, kind, payload)
        assert path.exists(), f"no shipped {kind} for the default {task}: run `pgraft pretrain --task {task} --ship`"
        state, meta = load_state(path)  # verifies the checksum
        assert meta["kind"] == kind
        assert meta["config"] == json.loads(json.dumps(payload, default=str)), f"{task} {kind}: config drifted"
        assert path.stat().st_size < 8 << 20
    base = _base_architecture(cfg)
    base.load_state_dict(load_state(cache.entry_path(cache.SHIPPED_ROOT, task, "base", model_payloads(cfg)["base"]))[0])


def test_an_empty_cache_starts_from_the_shipped_weights_and_trains_nothing(tmp_path):
    from shipped import prepare_shipped

    task = prepare_shipped(C.TaskConfig(cache_dir=tmp_path), progress=False)
    assert all(str(cache.SHIPPED_ROOT) in p for p in task.paths.values())
    assert not any(tmp_path.iterdir())  # nothing written to the cache
    assert task.judge_accuracy > 0.95


def test_a_corrupt_shipped_file_is_a_clear_error(tmp_path, monkeypatch):
    shipped = tmp_path / "shipped"
    shutil.copytree(cache.SHIPPED_ROOT / "digits", shipped / "digits")
    monkeypatch.setattr(cache, "SHIPPED_ROOT", shipped)
    cfg = C.TaskConfig(cache_dir=tmp_path / "cache")
    base = cache.entry_path(shipped, "digits", "base", model_payloads(cfg)["base"])
    data = bytearray(base.read_bytes())
    data[len(data) // 2] ^= 0xFF
    base.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch.*pgraft pretrain --force"):
        prepare_task(cfg, progress=False)


def test_force_retrains_into_the_cache_not_the_package(tmp_path):
    payload = model_payloads(C.TaskConfig())["base"]
    path, present = cache.find_entry(tmp_path, "digits", "base", payload)
    assert present and path.is_relative_to(cache.SHIPPED_ROOT)
    path, present = cache.find_entry(tmp_path, "digits", "base", payload, force=True)
    assert not present and path.is_relative_to(tmp_path)


def test_tiny_bases_measure_the_real_images_and_each_variant(tmp_path):
    from pgraft.experiments.bases import run_bases

    cfg = C.BasesConfig.model_validate(
        {
            "tasks": ["digits"],
            "task": {**TINY_TASK, "cache_dir": str(tmp_path / "cache")},
            "sampler": {"steps": 3},
            "eval": {"samples_per_class": 4},
        }
    )
    res = run_bases(cfg, tmp_path / "out")
    real, noisy, under = res["rows"]
    assert [r["model"] for r in res["rows"]] == ["real held-out", "base (noisy_captions)", "base (undertrained)"]
    task = prepare_task(cfg.task_config("digits", "undertrained"), progress=False)
    assert real["reward_mean"] == pytest.approx(task.real_reward_mean, abs=1e-6)  # the same judge, same images
    assert real["samples"] == len(task.data.test_y) and noisy["samples"] == under["samples"] == 40
    for r in res["rows"]:
        assert 0.1 <= r["quality"] <= 1 and 0 <= r["quality_confident"] <= 1 and r["fid"] >= 0
        assert r["quality"] >= r["reward_mean"] - 1e-9  # the arg-max's probability bounds the prompted one
    assert noisy["caption_noise"] == 0.5 and under["caption_noise"] == 0.0
    for f in ("grid_digits_real.png", "grid_digits_noisy_captions.png", "grid_digits_undertrained.png"):
        assert (tmp_path / "out" / f).exists()
    with pytest.raises(C.ConfigError, match="chosen by the tasks and variants"):
        C.build(C.BasesConfig, {"task": {"base": "undertrained"}})


def test_sweep_levels_that_round_to_one_step_are_refused():
    with pytest.raises(C.ConfigError, match="same N_I twice"):
        C.build(C.SweepConfig, {}, ["n_i_fracs=[0.24, 0.25]"])  # both are step 6 of 25


def test_the_image_tasks_need_neither_rdkit_nor_qm9():
    """The digits demo runs without the molecules extra: nothing on its path imports it."""
    script = (
        "import sys; import pgraft.cli, pgraft.experiments.demo, pgraft.experiments.sweep, pgraft.tasks;"
        "from pgraft.config import DemoConfig; from pgraft.tasks import prepare_task;"
        "prepare_task(DemoConfig().task, progress=False);"
        "bad = [m for m in sys.modules if m.split('.')[0] in ('rdkit', 'qm9pack')]; assert not bad, bad"
    )
    subprocess.run([sys.executable, "-c", script], check=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
