"""The layout rewards against hand-computed layouts, and the shipped corpus loader."""

from __future__ import annotations

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
