"""The layout rewards against hand-computed layouts, and the shipped corpus loader."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch

from pgraft.errors import CheckpointError, ShapeError
from pgraft.rewards.layouts import LayoutReward, alignment, out_of_page, overlap
from pgraft.tasks.layouts import CORPUS, MAX_ELEMENTS, TYPES, load_layouts


def layout(*boxes, pad: int = 0) -> torch.Tensor:
    """One layout [1, N, 5] from (cx, cy, w, h) boxes, plus ``pad`` absent slots."""
    rows = [[1.0, *b] for b in boxes] + [[0.0, 0.3, 0.3, 0.9, 0.9]] * pad  # absent: ignored whatever it holds
    return torch.tensor([rows])


def test_perfectly_aligned_boxes_score_zero_alignment():
    # left edges at 0.1 and 0.1, centres and right edges differ
    aligned = layout((0.2, 0.2, 0.2, 0.1), (0.3, 0.6, 0.4, 0.1), pad=3)
    assert float(alignment(aligned)) == pytest.approx(0.0, abs=1e-6)
    # shifting one box by 0.05 in x: its nearest line is 0.05 away, and so is the other's
    shifted = layout((0.25, 0.2, 0.2, 0.1), (0.3, 0.6, 0.4, 0.1))
    assert float(alignment(shifted)) == pytest.approx(-math.log(1 - 0.05), rel=1e-4)


def test_disjoint_boxes_do_not_overlap_and_identical_boxes_overlap_fully():
    disjoint = layout((0.2, 0.2, 0.1, 0.1), (0.8, 0.8, 0.1, 0.1), pad=2)
    assert float(overlap(disjoint)) == 0.0
    # far apart on every line: nearest distance 0.6 for both
    assert float(alignment(disjoint)) == pytest.approx(-math.log(1 - 0.6), rel=1e-4)
    same = layout((0.5, 0.5, 0.2, 0.2), (0.5, 0.5, 0.2, 0.2))
    assert float(overlap(same)) == pytest.approx(1.0)  # (1 + 1) / 2 elements
    # a small box inside a big one: ∩/area(small) = 1, ∩/area(big) = 1/4; / 2 elements
    nested = layout((0.5, 0.5, 0.4, 0.4), (0.5, 0.5, 0.2, 0.2))
    assert float(overlap(nested)) == pytest.approx((1 + 0.25) / 2)


def test_out_of_page_and_the_weighted_reward():
    half_out = layout((1.0, 0.5, 0.2, 0.2), (0.5, 0.5, 0.2, 0.2))
    assert float(out_of_page(half_out)) == pytest.approx(0.25)  # (0.5 + 0) / 2
    same = layout((0.5, 0.5, 0.2, 0.2), (0.5, 0.5, 0.2, 0.2))
    reward = LayoutReward([("alignment", 1.0), ("overlap", 2.0)])
    assert float(reward(same, torch.zeros(1))) == pytest.approx(-2.0)
    batch = torch.cat([same, layout((0.2, 0.2, 0.1, 0.1), (0.8, 0.8, 0.1, 0.1))])
    assert reward(batch, torch.zeros(2)).shape == (2,)


def test_layout_rewards_refuse_other_shapes():
    with pytest.raises(ShapeError, match=r"decoded layouts \[B, N, 5\]"):
        overlap(torch.rand(2, 1, 16, 16))
    with pytest.raises(ShapeError, match="float layouts"):
        alignment(torch.ones(2, 3, 5, dtype=torch.int64))
    with pytest.raises(ValueError, match="layout reward terms"):
        LayoutReward([("beauty", 1.0)])


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus file is built by tools/build_layout_corpus.py")
def test_the_shipped_corpus_loads_and_round_trips():
    corpus = load_layouts()
    assert len(corpus) > 1000
    assert int(corpus.counts.min()) >= 2 and int(corpus.counts.max()) <= MAX_ELEMENTS
    present = corpus.boxes[..., 0] > 0.5
    assert torch.equal(present.sum(-1), corpus.counts)
    assert bool(((corpus.types >= 0) == present).all()) and int(corpus.types.max()) < len(TYPES)
    # the file's float16 boxes come back exactly
    with np.load(CORPUS) as f:
        raw = torch.from_numpy(f["boxes"].astype(np.float32))
    torch.testing.assert_close(corpus.boxes[..., 1:][present], raw[..., 1:][present], rtol=0, atol=0)
    # the rewards run on real layouts: finite, overlaps ≥ 0
    sample = corpus.boxes[:500]
    assert bool(torch.isfinite(alignment(sample)).all()) and bool((overlap(sample) >= 0).all())


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus file is built by tools/build_layout_corpus.py")
def test_a_corrupt_corpus_is_refused_clearly(tmp_path):
    truncated = tmp_path / "truncated.npz"
    truncated.write_bytes(CORPUS.read_bytes()[:1000])
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        load_layouts(truncated)
    with np.load(CORPUS) as f:
        boxes, counts, types = f["boxes"].copy(), f["counts"].copy(), f["types"]
    boxes[0, 0, 1] = 7.0  # a box far off the page
    bad = tmp_path / "bad.npz"
    np.savez_compressed(bad, boxes=boxes, counts=counts, types=types)
    with pytest.raises(CheckpointError, match="outside the page"):
        load_layouts(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        load_layouts(tmp_path / "missing.npz")


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus file is built by tools/build_layout_corpus.py")
def test_the_documented_corpus_statistics_are_the_shipped_files():
    import json
    from pathlib import Path

    from pgraft.tasks.layouts import corpus_stats

    documented = json.loads((Path(__file__).parents[1] / "docs/results/layouts_corpus.json").read_text())
    assert documented["stats"] == corpus_stats(load_layouts())
    manifest = json.loads(CORPUS.with_suffix(".manifest.json").read_text())
    assert len(manifest["pages"]) == documented["stats"]["pages"]
    assert all(v != "not installed" for v in manifest["packages"].values())


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus file is built by tools/build_layout_corpus.py")
def test_encode_then_decode_returns_every_corpus_layout_in_canonical_order():
    from pgraft.tasks.layouts import SAMPLE_DIM, canonical_order, decode, encode, type_multisets

    corpus = load_layouts()
    x = encode(corpus.boxes, corpus.types)
    assert x.shape == (len(corpus), SAMPLE_DIM) and float(x.abs().max()) <= 1
    order = canonical_order(corpus.types)
    expected = corpus.boxes.gather(1, order[..., None].expand(-1, -1, 5))
    assert torch.equal(decode(x), expected)  # exact: float16 values survive 2v − 1 and back
    # the conditions: each layout's sorted types are its multiset's row of the table
    table, ids = type_multisets(corpus.types)
    assert torch.equal(table[ids], corpus.types.gather(1, order))
    assert 1 < table.shape[0] < len(corpus)
    # the types come first in canonical order: present slots lead, sorted by type
    sorted_types = table[ids]
    assert bool((sorted_types[:, 1:] >= sorted_types[:, :-1]).logical_or(sorted_types[:, 1:] < 0).all())
    with pytest.raises(ShapeError, match="layout samples must be"):
        decode(torch.zeros(2, 7))


def test_layout_denoiser_treats_slots_of_one_type_as_exchangeable():
    from pgraft.config import GraphModelConfig
    from pgraft.models.layout_transformer import LayoutDenoiser
    from pgraft.models.unet import scheduler_config_for

    torch.manual_seed(0)
    cfg = GraphModelConfig(dim=32, heads=2, layers=2)
    table = torch.tensor([[0, 0, 0, 1, -1], [2, 2, 4, -1, -1]])
    net = LayoutDenoiser(cfg, table, len(TYPES), scheduler_config_for(cfg)).eval()
    x, t, c = torch.randn(2, 25), torch.tensor([100, 800]), torch.tensor([0, 1])
    perm = torch.tensor([2, 0, 1, 3, 4])  # shuffles the three text slots of condition 0

    def permute(v):
        return v.view(-1, 5, 5)[:, perm].flatten(1)

    with torch.no_grad():
        out = net(x, t, c)
        assert out.shape == x.shape
        torch.testing.assert_close(net(permute(x[:1]), t[:1], c[:1]), permute(out[:1]), atol=1e-5, rtol=1e-4)
        # the condition matters, and the null label (CFG) is accepted
        assert not torch.allclose(net(x, t, torch.tensor([1, 0])), out, atol=1e-4)
        assert net(x, t, torch.full((2,), net.null_label)).shape == x.shape


def test_the_reward_reads_presence_from_the_condition():
    """Leaving an element out (its present flag off) does not escape the overlap it causes: the
    task's reward scores every element the condition asks for."""
    from pgraft.rewards.layouts import with_condition_presence

    table = torch.tensor([[0, 0, -1]])
    both = layout((0.5, 0.5, 0.2, 0.2), (0.5, 0.5, 0.2, 0.2), pad=1)
    dropped = both.clone()
    dropped[0, 1, 0] = 0.0  # the model's flag says "absent" for the second text box
    plain = LayoutReward([("overlap", 1.0)])
    conditioned = LayoutReward([("overlap", 1.0)], type_table=table)
    assert float(plain(dropped, torch.zeros(1))) == 0.0  # the loophole without the condition
    assert float(conditioned(dropped, torch.zeros(1, dtype=torch.int64))) == pytest.approx(-1.0)
    assert float(conditioned(both, torch.zeros(1, dtype=torch.int64))) == pytest.approx(-1.0)
    with pytest.raises(ShapeError, match="do not match"):
        with_condition_presence(both, torch.zeros(1, 2, dtype=torch.int64))


def test_maximum_iou_on_hand_computed_layouts():
    from pgraft.tasks.layout_metrics import box_iou, maximum_iou

    # two boxes of 0.2 × 0.2, one shifted by half its width: IoU = 0.02 / 0.06 = 1/3
    assert float(box_iou(torch.tensor([0.5, 0.5, 0.2, 0.2]), torch.tensor([0.6, 0.5, 0.2, 0.2]))) == pytest.approx(
        1 / 3
    )
    table = torch.tensor([[0, 1, -1], [0, 0, -1]])
    a = layout((0.3, 0.3, 0.2, 0.2), (0.5, 0.8, 0.4, 0.1), pad=1)[0]
    b = layout((0.7, 0.3, 0.2, 0.2), (0.5, 0.1, 0.4, 0.1), pad=1)[0]
    real = torch.stack([a, b])
    cond = torch.zeros(2, dtype=torch.int64)
    # the generated set is the real set in the other order: the matching finds it, IoU 1
    assert maximum_iou(real.flip(0), cond, real, cond, table) == pytest.approx(1.0)
    # one generated layout equal to a with its text box shifted by half its width: (1/3 + 1) / 2
    shifted = layout((0.4, 0.3, 0.2, 0.2), (0.5, 0.8, 0.4, 0.1), pad=1)
    assert maximum_iou(shifted, cond[:1], real, cond, table) == pytest.approx((1 / 3 + 1) / 2)
    # slots of one type are matched to each other, whatever the generator's slot order
    two_text = layout((0.5, 0.8, 0.2, 0.1), (0.5, 0.2, 0.2, 0.1), pad=1)
    ordered = layout((0.5, 0.2, 0.2, 0.1), (0.5, 0.8, 0.2, 0.1), pad=1)
    one = torch.ones(1, dtype=torch.int64)
    assert maximum_iou(two_text, one, ordered, one, table) == pytest.approx(1.0)
    # a multiset with no real layout is left out
    assert math.isnan(maximum_iou(two_text, one, real, cond, table))


def test_maximum_iou_matches_elements_where_reading_order_would_not():
    """Two text boxes side by side, the left one a little higher in the generated layout and a
    little lower in the real one: reading order (centre y) pairs left with right (IoU 0), the
    optimal matching pairs left with left. LayoutGAN++'s score, by hand: each box 0.2 × 0.1,
    shifted by 0.02 of its 0.1 height, overlaps 0.2 × 0.08 = 0.016 of a 0.024 union: IoU 2/3."""
    from pgraft.tasks.layout_metrics import maximum_iou, reading_order

    table = torch.tensor([[0, 0, -1]])
    gen = layout((0.25, 0.50, 0.2, 0.1), (0.75, 0.51, 0.2, 0.1), pad=1)
    real = layout((0.25, 0.52, 0.2, 0.1), (0.75, 0.49, 0.2, 0.1), pad=1)
    zero = torch.zeros(1, dtype=torch.int64)
    assert maximum_iou(gen, zero, real, zero, table) == pytest.approx(2 / 3)
    # the reading-order pairing the metric used to make scores nothing: the boxes it pairs are apart
    (g, _), (r, _) = reading_order(gen, table[zero]), reading_order(real, table[zero])
    assert torch.allclose(g[0, 0, 1:3], torch.tensor([0.25, 0.50])) and torch.allclose(
        r[0, 0, 1:3], torch.tensor([0.75, 0.49])
    )


def released_maximum_iou(gen, gen_types, real, real_types):
    """LayoutGAN++'s released compute_maximum_iou (ktrk115/const_layout, metric.py), transcribed
    loop for loop with numpy and scipy: the reference the vectorised metric must equal."""
    import numpy as np
    from scipy.optimize import linear_sum_assignment

    def iou(b1, b2):
        l1, t1, r1, bt1 = (
            b1[:, 0] - b1[:, 2] / 2,
            b1[:, 1] - b1[:, 3] / 2,
            b1[:, 0] + b1[:, 2] / 2,
            b1[:, 1] + b1[:, 3] / 2,
        )
        l2, t2, r2, bt2 = (
            b2[:, 0] - b2[:, 2] / 2,
            b2[:, 1] - b2[:, 3] / 2,
            b2[:, 0] + b2[:, 2] / 2,
            b2[:, 1] + b2[:, 3] / 2,
        )
        a1, a2 = (r1 - l1) * (bt1 - t1), (r2 - l2) * (bt2 - t2)
        lm, rm, tm, bm = np.maximum(l1, l2), np.minimum(r1, r2), np.maximum(t1, t2), np.minimum(bt1, bt2)
        ai = np.where((lm < rm) & (tm < bm), (rm - lm) * (bm - tm), 0.0)
        return ai / (a1 + a2 - ai)

    def for_layout(bi, li, bj, lj):
        score = 0.0
        for lab in set(li.tolist()):
            _bi, _bj = bi[li == lab], bj[lj == lab]
            n = len(_bi)
            ii, jj = np.meshgrid(range(n), range(n))
            m = iou(_bi[ii.flatten()], _bj[jj.flatten()]).reshape(n, n)
            ii, jj = linear_sum_assignment(m, maximize=True)
            score += m[ii, jj].sum()
        return score / len(bi)

    def by_key(boxes, types):
        out = {}
        for b, t in zip(boxes, types):
            out.setdefault(str(sorted(t.tolist())), []).append((b, t))
        return out

    g, r = by_key(gen, gen_types), by_key(real, real_types)
    scores = []
    for key in set(g) & set(r):
        m = np.array([[for_layout(bi, li, bj, lj) for bj, lj in r[key]] for bi, li in g[key]])
        ii, jj = linear_sum_assignment(m, maximize=True)
        scores.extend(m[ii, jj])
    return float(np.mean(scores))


@pytest.mark.parametrize("counts", [(1, 2), (3, 1, 2), (8, 1)], ids=["small", "three_types", "scipy_path"])
def test_maximum_iou_equals_layoutgan_plus_plus_released_code(counts):
    """Random layouts in three multisets (one type with 8 elements takes the per-pair scipy path;
    up to 6 are matched by enumerating permutations), slots shuffled within each layout for the
    released code: both give the same score."""
    import numpy as np

    from pgraft.tasks.layout_metrics import maximum_iou

    g = torch.Generator().manual_seed(sum(counts))
    types_row = torch.cat([torch.full((c,), t) for t, c in enumerate(counts)])
    n = types_row.numel()
    table = torch.stack([torch.cat([types_row, torch.full((2,), -1)])] * 2)
    table[1, 0] = -1  # a second multiset: the first element left out, the slot empty

    def draw(k):
        boxes = torch.rand(k, n + 2, 4, generator=g) * torch.tensor([0.6, 0.6, 0.3, 0.3]) + torch.tensor(
            [0.2, 0.2, 0.05, 0.05]
        )
        return torch.cat([torch.ones(k, n + 2, 1), boxes], -1)

    gen, real = draw(9), draw(7)
    gen_cond, real_cond = torch.tensor([0] * 5 + [1] * 4), torch.tensor([0] * 3 + [1] * 4)
    ours = maximum_iou(gen, gen_cond, real, real_cond, table)

    def as_lists(layouts, cond):
        boxes, types = [], []
        for lay, c in zip(layouts, cond):
            keep = table[c] >= 0
            perm = torch.randperm(int(keep.sum()), generator=g)  # the released code's order is any
            boxes.append(lay[keep][perm, 1:].double().numpy())
            types.append(table[c][keep][perm].numpy())
        return boxes, types

    reference = released_maximum_iou(*as_lists(gen, gen_cond), *as_lists(real, real_cond))
    assert ours == pytest.approx(reference, abs=1e-12)
    assert np.isfinite(ours) and 0 < ours < 1


def test_layout_diversity_is_zero_for_copies_and_the_rms_distance_for_two():
    from pgraft.tasks.layout_metrics import layout_diversity

    table = torch.tensor([[0, 1, -1]])
    a = layout((0.3, 0.3, 0.2, 0.2), (0.5, 0.8, 0.4, 0.1), pad=1)
    cond = torch.zeros(3, dtype=torch.int64)
    assert layout_diversity(torch.cat([a, a, a]), cond, table) == 0.0
    b = a.clone()
    b[0, 0, 1] += 0.4  # one coordinate of eight moves by 0.4: RMS distance 0.4 / √8
    assert layout_diversity(torch.cat([a, b]), cond[:2], table) == pytest.approx(0.4 / 8**0.5)
    # a condition with one layout contributes nothing
    assert math.isnan(layout_diversity(a, cond[:1], table))


def test_fid_features_ignore_slot_order_and_absent_slots():
    from pgraft.config import LayoutFidConfig
    from pgraft.models.layout_fid import LayoutFeatureNet, perturb

    torch.manual_seed(0)
    net = LayoutFeatureNet(LayoutFidConfig(dim=16, heads=2, layers=1), len(TYPES)).eval()
    x = layout((0.3, 0.3, 0.2, 0.2), (0.5, 0.8, 0.4, 0.1), (0.5, 0.5, 0.3, 0.1), pad=2)
    types = torch.tensor([[0, 1, 0, -1, -1]])
    perm = torch.tensor([2, 1, 0, 4, 3])
    with torch.no_grad():
        f = net.features(x, types)
        torch.testing.assert_close(net.features(x[:, perm], types[:, perm]), f, atol=1e-5, rtol=1e-5)
        junk = x.clone()
        junk[0, 3:, 1:] = 0.9  # whatever absent slots hold
        torch.testing.assert_close(net.features(junk, types), f, atol=1e-6, rtol=1e-6)
    fake = perturb(x.expand(64, -1, -1), types.expand(64, -1), torch.Generator().manual_seed(0))
    assert bool((fake[:, 3:, 1:] == 0).all()) and bool(((fake[..., 1:] >= 0) & (fake[..., 1:] <= 1)).all())
    assert not torch.equal(fake[:, :3], x.expand(64, -1, -1)[:, :3])


@pytest.mark.skipif(not CORPUS.exists(), reason="the corpus file is built by tools/build_layout_corpus.py")
def test_the_split_is_disjoint_and_its_first_conditions_are_the_most_frequent():
    from pgraft.config import TaskConfig
    from pgraft.tasks.layouts import condition_names, decode, split_layouts

    cfg = TaskConfig(name="layouts")
    data = split_layouts(cfg)
    held = cfg.layouts.held_out
    assert data.test_x.shape[0] == data.reference_x.shape[0] == held
    corpus = load_layouts()
    rows = torch.cat([data.train_x, data.test_x, data.reference_x])
    # each distinct page once (a few hundred pages repeat another exactly), so none on both sides
    assert torch.unique(rows, dim=0).shape[0] == rows.shape[0] > 0.95 * len(corpus)
    counts = torch.bincount(data.train_y, minlength=data.type_table.shape[0])
    assert bool((counts[1:] <= counts[:-1]).all())  # ids by training frequency
    # every page's slots carry its condition's types: present exactly where the table has a type
    for x, y in ((data.train_x, data.train_y), (data.test_x, data.test_y)):
        assert torch.equal(decode(x)[..., 0] > 0, data.types(y) >= 0)
    assert condition_names(data.type_table, 1) == ["2 text"]
    with pytest.raises(ValueError, match="held_out"):
        split_layouts(TaskConfig(name="layouts", layouts={"held_out": 5000}))


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """The default layouts task from the shipped base and FID network (nothing trains)."""
    from shipped import prepare_shipped

    from pgraft.config import TaskConfig

    return prepare_shipped(TaskConfig(name="layouts", cache_dir=tmp_path_factory.mktemp("cache")))


@pytest.mark.slow
def test_a_tiny_layouts_run_goes_end_to_end_through_the_public_api(task):
    """GRAFT and P-GRAFT on layouts run through the engine unchanged (rollout, fused step, selection
    per type multiset, the C++ buffer, DeepSpeed training, composed sampling): each round accepts
    K of M per condition above the rollout's mean, and P-GRAFT's held-out reward on the conditions
    trained on rises over the base (paired on common held-out noise; GRAFT's need not: on layouts
    it degenerates, docs/experiments.md), with every metric in range. Rollouts in fp32: the rise is about
    learning, and bf16 rounding moves a 3-round run by about a CI half-width."""
    from margins import assert_rises

    from pgraft import EvalConfig, PGraftConfig, Single, evaluate
    from pgraft.engine.rounds import PGraftLoop

    conditions = 64  # the most frequent type multisets, to keep the test short

    def run(n_i: int):
        cfg = PGraftConfig.model_validate(
            {"n_i": n_i, "samples_per_condition": 16, "rollout_batch": 1024, "rounds": 3, "select": {"k": 2},
             "train": {"lr": 3e-4, "batch_size": 64, "steps_per_round": 100},
             "speed": {"sample_precision": "fp32"}}
        )  # fmt: skip
        loop = PGraftLoop(dataclasses.replace(task, num_conditions=conditions), cfg, progress=False)
        result = loop.run()
        for entry in result.history:
            assert entry.accepted == 2 * conditions and entry.accepted_reward_mean > entry.rollout_reward_mean
        return result

    graft, pgraft = run(0), run(6)
    assert pgraft.policy.n_i == 6
    held_out = EvalConfig(samples_per_class=1, batch_size=1000)
    pages = task.eval_conditions[task.eval_conditions < conditions]  # held-out pages of those multisets
    evals = {
        name: evaluate(policy, graft.schedule, dataclasses.replace(task, eval_conditions=pages), held_out)
        for name, policy in (("base", Single(task.base)), ("graft", graft.policy), ("pgraft", pgraft.policy))
    }
    base = evals["base"]
    assert_rises(evals["pgraft"], base, "layouts P-GRAFT n_i=6")
    for ev in evals.values():
        s = ev.summary()
        assert s["eval_samples"] == pages.numel() > 900 and 0 <= s["max_iou"] <= 1 and 0 < s["area"] < 1
        assert s["fid"] >= 0 and 0 <= s["presence"] <= 1 and s["alignment"] >= 0 and s["overlap"] >= 0
        assert s["diversity"] > 0


@pytest.mark.slow
def test_the_layouts_demo_writes_its_stable_interface(task, tmp_path):
    """`pgraft demo --task layouts` (shrunk): base, graft, pgraft and ddpo, each with the
    documented keys, the real held-out row, and a rendered page grid per model."""
    import json

    from pgraft.cli import main

    out = tmp_path / "demo"
    sets = [
        f"task.cache_dir={tmp_path / 'cache'}", "task.layouts.conditions=8",  # the shipped models: nothing trains
        "method.samples_per_condition=8", "method.select.k=2", "method.rounds=1", "method.train.steps_per_round=5",
        "method.train.batch_size=8", "method.sampler.steps=10", "pgraft_n_i=3",
    ]  # fmt: skip
    assert main(["demo", "--task", "layouts", "--out", str(out), *(a for x in sets for a in ("--set", x))]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["task"] == "layouts"
    assert list(results["models"]) == ["base", "graft", "pgraft", "ddpo"]
    keys = {
        "reward_mean",
        "reward_ci95",
        "fid",
        "alignment",
        "overlap",
        "max_iou",
        "diversity",
        "samples_drawn",
        "wall_s",
    }
    for name, model in results["models"].items():
        assert keys <= set(model), name
        assert model["samples_drawn"] == (0 if name == "base" else 64)
        assert model["eval_samples"] == 2000
        assert (out / f"grid_{name}.png").exists()
    real = results["task_info"]["real_held_out"]
    assert real["presence"] == 1.0 and 0 < real["max_iou"] < 1 and real["fid"] >= 0


def test_shrinkage_is_the_log_shortfall_of_covered_area():
    from pgraft.rewards.layouts import shrinkage

    expected = torch.tensor([[0.04, 0.01, 0.0]])  # per slot; the third is absent
    full = layout((0.3, 0.3, 0.2, 0.2), (0.7, 0.7, 0.1, 0.1), pad=1)  # areas 0.04 and 0.01: as expected
    assert float(shrinkage(full, expected)) == pytest.approx(0.0, abs=1e-6)
    half = layout((0.3, 0.3, 0.2, 0.1), (0.7, 0.7, 0.1, 0.05), pad=1)  # half the area
    assert float(shrinkage(half, expected)) == pytest.approx(math.log(2), rel=1e-5)
    larger = layout((0.3, 0.3, 0.4, 0.4), (0.7, 0.7, 0.1, 0.1), pad=1)
    assert float(shrinkage(larger, expected)) == 0.0
    # through the reward: the table gives the types, type_area their expected areas
    table, type_area = torch.tensor([[0, 1, -1]]), torch.tensor([0.04, 0.01, 1.0, 1.0, 1.0])
    reward = LayoutReward([("shrinkage", 2.0)], table, type_area)
    assert float(reward(half, torch.zeros(1, dtype=torch.int64))) == pytest.approx(-2 * math.log(2), rel=1e-5)
    with pytest.raises(ValueError, match="need type_table and type_area"):
        LayoutReward([("shrinkage", 1.0)])
