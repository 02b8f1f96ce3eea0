"""The command line: help, a tiny demo and sweep end to end, the cache, and clear errors."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pgraft.cli import main
from pgraft.stats import seed_ci95

ROOT = Path(__file__).resolve().parents[1]
TINY = ROOT / "configs" / "tiny.yaml"
SCHEMA = {"reward_mean", "reward_ci95", "accuracy", "diversity", "samples_drawn", "wall_s"}


def test_help_lists_the_commands():
    out = subprocess.run([sys.executable, "-m", "pgraft.cli", "sweep", "--help"], capture_output=True, text=True)
    assert out.returncode == 0 and "--out" in out.stdout and "--set" in out.stdout


def test_tiny_demo_then_sweep_write_the_documented_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGRAFT_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--config", str(TINY), "--out", str(tmp_path / "demo")]) == 0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert res["task"] == "digits" and set(res["models"]) == {"base", "graft", "pgraft"}
    for name, m in res["models"].items():
        assert SCHEMA <= set(m), name
        lo, hi = m["reward_ci95"]
        assert lo <= m["reward_mean"] <= hi
    assert res["models"]["graft"]["samples_drawn"] == res["models"]["pgraft"]["samples_drawn"] == 40
    for f in (
        "config.yaml",
        "metrics.jsonl",
        "grid_base.png",
        "grid_pgraft.png",
        "reward_per_round.png",
        "models/pgraft.safetensors",
    ):
        assert (tmp_path / "demo" / f).exists(), f
    assert "pgraft" in capsys.readouterr().out

    # The sweep reuses the cached base model and judge (no second pretraining).
    cached = sorted((tmp_path / "cache").rglob("*.safetensors"))
    mtimes = [p.stat().st_mtime for p in cached]
    sweep_cfg = yaml.safe_load(TINY.read_text())
    del sweep_cfg["pgraft_n_i"]  # the sweep's own N_I list replaces it
    (tmp_path / "sweep.yaml").write_text(yaml.safe_dump(sweep_cfg))
    assert (
        main(
            [
                "sweep",
                "--config",
                str(tmp_path / "sweep.yaml"),
                "--out",
                str(tmp_path / "sweep"),
                "--set",
                "n_i_fracs=[0.0, 0.5]",
                "--set",
                "diag_completions=3",
                "--set",
                "seeds=[0, 1]",
            ]
        )
        == 0
    )
    assert [p.stat().st_mtime for p in cached] == mtimes
    sweep = json.loads((tmp_path / "sweep" / "results.json").read_text())
    rows = sweep["rows"]
    assert sweep["seeds"] == [0, 1]
    assert [r["n_i_frac"] for r in rows] == [0.0, 0.5]
    assert rows[0]["cond_var"] == 0.0 and rows[1]["cond_var"] >= 0.0
    assert rows[0]["share_decided"] == 1.0 and rows[0]["total_var"] is None and rows[1]["total_var"] >= 0.0
    diag = {d["n_i_frac"]: d for d in sweep["diagnostic"]}  # trained levels + diagnostic-only ones
    assert sorted(diag) == [0.0, 0.25, 0.5, 0.75, 0.9]
    assert diag[0.5]["cond_var"] == rows[1]["cond_var"] and len(diag[0.9]["per_seed"]) == 2
    for r in rows:  # the row's reward pools both seeds; the spread is between their means
        means = [p["reward_mean"] for p in r["per_seed"]]
        assert [p["seed"] for p in r["per_seed"]] == [0, 1]
        assert abs(r["reward_mean"] - sum(means) / 2) < 1e-9  # equal sample counts per seed
        assert abs(r["reward_seed_std"] - abs(means[0] - means[1]) / 2**0.5) < 1e-9
        assert r["reward_ci95"][0] <= r["reward_mean"] <= r["reward_ci95"][1]
    assert (tmp_path / "sweep" / "sweep.png").exists()

    # Seeds run as separate jobs merge into the sweep that ran them all.
    sweep_args = ["sweep", "--config", str(tmp_path / "sweep.yaml"), "--set", "n_i_fracs=[0.0, 0.5]"]
    sweep_args += ["--set", "diag_completions=3"]
    assert main([*sweep_args, "--set", "seeds=[2]", "--out", str(tmp_path / "s2")]) == 0
    assert main(["sweep", "--merge", str(tmp_path / "sweep"), str(tmp_path / "s2"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["seeds"] == [0, 1, 2] and merged["complete"]
    for r, r2 in zip(merged["rows"], json.loads((tmp_path / "s2" / "results.json").read_text())["rows"]):
        assert [p["seed"] for p in r["per_seed"]] == [0, 1, 2]
        assert abs(r["reward_mean"] - sum(p["reward_mean"] for p in r["per_seed"]) / 3) < 1e-9
        assert r["per_seed"][2] == r2["per_seed"][0]
    assert [len(d["per_seed"]) for d in merged["diagnostic"]] == [3] * 5
    run_times = [json.loads((tmp_path / r / "results.json").read_text())["total_wall_s"] for r in ("sweep", "s2")]
    assert merged["runs_wall_s"] == run_times and merged["total_wall_s"] == pytest.approx(sum(run_times))
    assert main([*sweep_args, "--set", "seeds=[2]", "--set", "method.rounds=2", "--out", str(tmp_path / "x")]) == 0
    assert main(["sweep", "--merge", str(tmp_path / "sweep"), str(tmp_path / "x"), "--out", str(tmp_path / "m2")]) == 2
    assert main(["sweep", "--merge", str(tmp_path / "s2"), str(tmp_path / "s2"), "--out", str(tmp_path / "m3")]) == 2
    assert "a seed appears in more than one run" in capsys.readouterr().err


def test_pooling_seeds_from_their_summaries_equals_pooling_their_rewards():
    import torch

    from pgraft.engine.evaluate import mean_ci95
    from pgraft.experiments.sweep import pool

    g = torch.Generator().manual_seed(0)
    parts = [torch.rand(n, generator=g, dtype=torch.float64) * s for n, s in ((300, 1.0), (500, 0.5), (40, 2.0))]
    mean, ci = pool([(p.numel(), float(p.mean()), float(p.std())) for p in parts])
    ref_mean, ref_ci = mean_ci95(torch.cat(parts))
    assert abs(mean - ref_mean) < 1e-12 and max(abs(a - b) for a, b in zip(ci, ref_ci)) < 1e-12


def test_the_seed_interval_is_students_t_over_seed_means():
    mean, ci = seed_ci95([0.2, 0.4, 0.6])
    half = 4.302652729911275 * 0.2 / 3**0.5  # t(0.975, 2 dof) · s / √n
    assert mean == pytest.approx(0.4) and ci == pytest.approx([0.4 - half, 0.4 + half], abs=1e-9)
    assert seed_ci95([0.5]) == (0.5, None)  # one seed: no interval over seeds


def test_corrupt_cached_model_is_a_clear_error(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGRAFT_CACHE", str(tmp_path / "cache"))
    tiny_task = [
        "--set",
        "unet.pretrain_steps=2",
        "--set",
        "judge.steps=2",
        "--set",
        "unet.block_out_channels=[8,16]",
        "--set",
        "unet.attention=false",
    ]
    assert main(["pretrain", *tiny_task]) == 0
    (base,) = (tmp_path / "cache").rglob("base-*/weights.safetensors")
    base.write_bytes(base.read_bytes()[:-10])
    assert main(["pretrain", *tiny_task]) == 2
    err = capsys.readouterr().err
    assert "checksum mismatch" in err and "--force" in err
    assert main(["pretrain", "--force", *tiny_task]) == 0


def test_bad_config_is_reported_not_raised(capsys):
    assert main(["demo", "--set", "method.select.k=100", "--set", "method.samples_per_condition=8"]) == 2
    assert "select.k=100 exceeds samples_per_condition=8" in capsys.readouterr().err


def test_tiny_demo_on_the_animals_task(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRAFT_CACHE", str(tmp_path / "cache"))
    assert main(["demo", "--task", "animals", "--config", str(TINY), "--out", str(tmp_path / "demo")]) == 0
    res = json.loads((tmp_path / "demo" / "results.json").read_text())
    assert res["task"] == "animals" and set(res["models"]) == {"base", "graft", "pgraft"}
    assert SCHEMA <= set(res["models"]["pgraft"])
    assert res["task_info"]["judge_accuracy"] > 0.3  # 10 classes: well above chance even after 30 steps


def test_tiny_inc_writes_the_documented_results(tmp_path, monkeypatch):
    monkeypatch.setenv("PGRAFT_CACHE", str(tmp_path / "cache"))
    cfg = {
        "task": yaml.safe_load(TINY.read_text())["task"],
        "base": {"block_out_channels": [8, 16], "attention": False, "train_steps": 30, "batch": 32},
        "corrector": {"block_out_channels": [4, 8], "attention": False, "train_steps": 30, "batch": 32},
        "base_steps": [2, 4],
        "pairs": [[4, 1]],
        "inversion": {"max_iters": 10},
        "eval": {"samples": 100, "seeds": [0, 1], "batch_size": 100},
    }
    (tmp_path / "inc.yaml").write_text(yaml.safe_dump(cfg))
    assert main(["inc", "--config", str(tmp_path / "inc.yaml"), "--out", str(tmp_path / "inc")]) == 0
    res = json.loads((tmp_path / "inc" / "results.json").read_text())
    assert [(r["method"], r["base_steps"], r["corrector_steps"]) for r in res["rows"]] == [
        ("base", 2, 0), ("base", 4, 0), ("base+inc", 4, 1)
    ]  # fmt: skip
    for r in res["rows"]:
        assert r["fid"] >= 0 and r["fid_std"] >= 0 and r["flops_per_image"] > 0
    base4, inc = res["rows"][1], res["rows"][2]
    assert inc["flops_per_image"] > base4["flops_per_image"]  # the corrector's step costs something
    assert set(res["inversion"]) >= {"recon_err_max", "recon_err_mean"}
    assert (tmp_path / "inc" / "fid_vs_flops.png").exists()
    cached = sorted((tmp_path / "cache" / "digits").glob("flow-base-*"))
    assert len(cached) == 1  # `pgraft pretrain --model flow` finds the same cache entry
    assert main(["pretrain", "--model", "flow", "--config", str(tmp_path / "inc.yaml")]) == 0
    assert sorted((tmp_path / "cache" / "digits").glob("flow-base-*")) == cached


def test_tiny_compare_writes_curves_costs_and_the_documented_shape(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PGRAFT_CACHE", str(tmp_path / "cache"))
    tiny = ROOT / "configs" / "tiny_compare.yaml"
    assert main(["compare", "--config", str(tiny), "--out", str(tmp_path / "cmp")]) == 0
    res = json.loads((tmp_path / "cmp" / "results.json").read_text())
    assert res["task"] == "digits" and res["complete"] and res["seeds"] == [0, 1]
    assert set(res["methods"]) == {"base", "ddpo", "grpo", "graft", "pgraft_2"}
    final_keys = set("reward_mean reward_ci95 reward_seed_std accuracy diversity samples passes wall_s".split())
    assert final_keys <= set(res["methods"]["base"]["final"])
    for name, m in res["methods"].items():
        if name == "base":
            continue
        f = m["final"]
        assert final_keys <= set(f), name
        assert f["samples"] == 2 * 10 * 4  # equal samples: 2 rounds of M = 4 for 10 classes
        assert f["sampling_forward"] == f["samples"] * 4  # 4 sampler steps, no CFG
        assert f["passes"] == f["sampling_forward"] + f["train_forward"] + f["train_backward"] > f["sampling_forward"]
        curve = m["curve"]
        assert [p["samples"] for p in curve] == [0, 40, 80]
        assert all({"samples", "passes", "reward_mean", "reward_ci95"} <= set(p) for p in curve)
        assert [p["passes"] for p in curve] == sorted(p["passes"] for p in curve)
        lo, hi = f["reward_ci95"]
        assert lo <= f["reward_mean"] <= hi
    # DDPO trains every trajectory on its 3 stochastic steps (the 4th DDIM step is deterministic)
    assert res["methods"]["ddpo"]["final"]["train_backward"] == 2 * 40 * 3
    assert res["methods"]["graft"]["final"]["train_backward"] == 2 * 3 * 8
    for f in ("reward_vs_samples.png", "reward_vs_passes.png", "grid_ddpo.png", "grid_pgraft_2.png"):
        assert (tmp_path / "cmp" / f).exists(), f
    assert res["equal_samples"]["at"] == 80 and res["equal_samples"]["winner"] in res["methods"]
    assert res["equal_compute"]["at"] == min(m["final"]["passes"] for n, m in res["methods"].items() if n != "base")
    out = capsys.readouterr().out
    assert "grpo" in out and "samples drawn: highest held-out reward" in out

    # seeds run as separate jobs merge into the same comparison
    for seed in (0, 1):
        args = ["compare", "--config", str(tiny), "--set", f"seeds=[{seed}]", "--out", str(tmp_path / f"s{seed}")]
        assert main(args) == 0
    assert main(["compare", "--merge", str(tmp_path / "s0"), str(tmp_path / "s1"), "--out", str(tmp_path / "m")]) == 0
    merged = json.loads((tmp_path / "m" / "results.json").read_text())
    assert merged["seeds"] == [0, 1] and merged["complete"]
    # claims across seeds: each final's t-interval over seeds, every pair's per-seed difference
    for name, m in merged["methods"].items():
        if name != "base":
            seed_means = [p["final"]["reward_mean"] for p in m["per_seed"]]
            assert m["final"]["reward_seed_ci95"] == pytest.approx(seed_ci95(seed_means)[1])
    diff = merged["differences"]["ddpo - graft"]  # pairs in the methods' order
    ddpo, graft = ([p["final"]["reward_mean"] for p in merged["methods"][n]["per_seed"]] for n in ("ddpo", "graft"))
    assert diff["seeds"] == 2 and diff["mean"] == pytest.approx((ddpo[0] - graft[0] + ddpo[1] - graft[1]) / 2)
    assert len(merged["differences"]) == 10  # every pair of the 5 methods, the base's included
    assert diff["decided"] == (diff["seed_ci95"][0] > 0 or diff["seed_ci95"][1] < 0)
    reach = merged["samples_to_threshold"]
    finals = [m["final"]["reward_mean"] for m in merged["methods"].values()]
    base_reward = merged["methods"]["base"]["final"]["reward_mean"]
    assert reach["threshold"] == pytest.approx(base_reward + 0.9 * (max(finals) - base_reward))
    for name, r in reach["methods"].items():
        assert len(r["per_seed"]) == 2 and r["within"] == merged["methods"][name]["final"]["samples"]
        for hit, p in zip(r["per_seed"], merged["methods"][name]["per_seed"]):
            crossed = [pt["samples"] for pt in p["curve"] if pt["reward_mean"] >= reach["threshold"]]
            assert hit == (crossed[0] if crossed else None)
    from pgraft.experiments.results_page import compare_section

    page = "\n".join(compare_section("digits", merged))
    assert "95% CI over seeds" in page and "DDPO − GRAFT" in page and "Samples to reach" in page
    run_times = [json.loads((tmp_path / f"s{seed}" / "results.json").read_text())["total_wall_s"] for seed in (0, 1)]
    assert min(run_times) > 0 and merged["total_wall_s"] == pytest.approx(sum(run_times))  # the runs' own times
    for name, m in res["methods"].items():
        assert merged["methods"][name]["final"]["reward_mean"] == pytest.approx(m["final"]["reward_mean"])
        if name != "base":
            for a, b in zip(merged["methods"][name]["curve"], m["curve"], strict=True):
                assert a["reward_mean"] == pytest.approx(b["reward_mean"]) and a["passes"] == b["passes"]

    assert (
        main(["compare", "--config", str(tiny), "--tune", "--set", "methods=[ddpo]", "--out", str(tmp_path / "tune")])
        == 0
    )
    tune = json.loads((tmp_path / "tune" / "results.json").read_text())
    assert [(r["lr"], r["clip_range"]) for r in tune["rows"]] == [(0.001, 0.0001), (0.001, 0.01)]
    assert tune["best"]["ddpo"] in tune["rows"]
    assert "best ddpo: --set ddpo.train.lr=" in capsys.readouterr().out
