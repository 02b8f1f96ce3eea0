"""Group selection kernels: Triton (interpreted, or compiled on a GPU), C++ and the torch reference against
torch.topk semantics."""

import sys

import pytest
import torch
from kernel_devices import BACKENDS, host, to

from pgraft.errors import ShapeError
from pgraft.kernels import _backend
from pgraft.kernels.select import best_of_n, gather_rows, group_topk, threshold_mask


def _topk(r, k, valid=None, backend="torch"):
    """group_topk on the backend's device, results on the CPU."""
    return host(group_topk(*to(backend, r), k, *to(backend, valid), backend=backend))


def _expected_topk(rewards, k):
    """Independent oracle: per group, a Python sort of (−reward, index) over the valid entries."""
    out, counts = [], []
    for row in rewards.tolist():
        ranked = sorted((-r, i) for i, r in enumerate(row) if r == r and abs(r) != float("inf"))[:k]
        counts.append(len(ranked))
        out.append([i for _, i in ranked] + [-1] * (k - len(ranked)))
    return torch.tensor(out, dtype=torch.int64), torch.tensor(counts, dtype=torch.int64)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("g,m,k", [(5, 7, 3), (3, 33, 33), (4, 16, 1), (6, 1, 1), (2, 1024, 5)])
def test_topk_matches_the_oracle_and_torch_topk(backend, g, m, k):
    gen = torch.Generator().manual_seed(g * m + k)
    r = torch.randn(g, m, generator=gen)
    idx, counts = _topk(r, k, backend=backend)
    exp_idx, exp_counts = _expected_topk(r, k)
    assert torch.equal(idx, exp_idx) and torch.equal(counts, exp_counts)
    assert torch.equal(idx, torch.topk(r, k, dim=1).indices)  # distinct rewards: topk's order


@pytest.mark.parametrize("backend", BACKENDS)
def test_ties_nan_inf_and_short_groups(backend):
    nan, inf = float("nan"), float("inf")
    r = torch.tensor(
        [
            [0.5, 0.9, 0.9, 0.1, 0.9, 0.9],  # ties: lowest index first
            [nan, 0.2, inf, 0.1, -inf, nan],  # only two valid
            [nan, nan, nan, nan, nan, nan],  # none valid
            [1.0, 1.0, 1.0, 1.0, 1.0, 1.0],  # all tied
        ]
    )
    idx, counts = _topk(r, 3, backend=backend)
    assert idx.tolist() == [[1, 2, 4], [1, 3, -1], [-1, -1, -1], [0, 1, 2]]
    assert counts.tolist() == [3, 2, 0, 3]
    assert best_of_n(*to(backend, r), backend=backend).tolist() == [1, 1, -1, 0]
    valid = torch.ones_like(r, dtype=torch.bool)
    valid[0, 1] = False  # an explicit mask excludes a valid-looking reward
    assert _topk(r, 2, valid, backend=backend)[0][0].tolist() == [2, 4]


@pytest.mark.parametrize("backend", BACKENDS)
def test_poisoned_outputs_are_fully_written(backend, monkeypatch):
    # Poison torch.empty so that any index or count a kernel forgets to write is garbage.
    real_empty = torch.empty

    def poisoned(*args, **kw):
        t = real_empty(*args, **kw)
        return t.fill_(-77) if not t.is_floating_point() else t.fill_(float("nan"))

    monkeypatch.setattr(torch, "empty", poisoned)
    r = torch.randn(4, 9, generator=torch.Generator().manual_seed(1))
    r[2, :7] = float("nan")
    idx, counts = _topk(r, 4, backend=backend)
    monkeypatch.undo()
    exp_idx, exp_counts = _expected_topk(r, 4)
    assert torch.equal(idx, exp_idx) and torch.equal(counts, exp_counts)


def test_threshold_mask_excludes_invalid():
    r = torch.tensor([[0.2, float("nan"), 0.7, float("inf")]])
    assert threshold_mask(r, 0.5).tolist() == [[False, False, True, False]]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16, torch.int64])
def test_gather_rows_of_several_tensors(backend, dtype):
    gen = torch.Generator().manual_seed(2)
    a, b, idx = to(backend, (torch.randn(12, 2, 3, 5, generator=gen) * 10).to(dtype), torch.arange(12),
                   torch.tensor([11, 0, 5, 5, 3]))  # fmt: skip
    out_a, out_b = gather_rows(idx, a, b, backend=backend)
    assert torch.equal(out_a, a[idx]) and torch.equal(out_b, b[idx]) and out_a.is_contiguous()
    assert gather_rows(idx[:0], a, backend=backend)[0].shape == (0, 2, 3, 5)
    dest = to(backend, torch.full((5, 2, 3, 5), -9).to(dtype), torch.full((5,), -9, dtype=torch.int64))  # poisoned
    got = gather_rows(idx, a, b, out=dest, backend=backend)
    assert got[0] is dest[0] and torch.equal(dest[0], a[idx]) and torch.equal(dest[1], b[idx])


def test_bad_inputs_raise_named_errors():
    with pytest.raises(ShapeError, match=r"k=5 must lie in \[1, M=4\]"):
        group_topk(torch.zeros(2, 4), 5)
    with pytest.raises(ShapeError, match="groups, samples_per_group"):
        group_topk(torch.zeros(8), 1)
    with pytest.raises(ShapeError, match="exceed the supported M <= 1024"):
        group_topk(torch.zeros(1, 1025), 1)
    with pytest.raises(ShapeError, match="floating point"):
        group_topk(torch.zeros(2, 4, dtype=torch.int64), 1)
    with pytest.raises(ShapeError, match="valid must be a bool tensor"):
        group_topk(torch.zeros(2, 4), 1, torch.ones(2, 3, dtype=torch.bool))
    with pytest.raises(ShapeError, match="leading row dimension"):
        gather_rows(torch.tensor([0]), torch.tensor(1.0))
    with pytest.raises(ShapeError, match=r"gather indices must lie in \[0, 3\)"):
        gather_rows(torch.tensor([3]), torch.zeros(3, 2))
    with pytest.raises(ShapeError, match="out has 2 tensors for 1 sources"):
        gather_rows(torch.tensor([0]), torch.zeros(3, 2), out=[torch.zeros(1, 2), torch.zeros(1, 2)])
    with pytest.raises(ShapeError, match="must be contiguous"):
        gather_rows(torch.tensor([0]), torch.zeros(3, 2), out=[torch.zeros(2, 2)])
    with pytest.raises(ShapeError, match="1-D int64"):
        gather_rows(torch.tensor([0.0]), torch.zeros(3, 2))


@pytest.mark.skipif(not _backend.HAVE_CPP, reason="the compiled extension is not built")
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="setup.py passes -fopenmp on Linux only")
def test_the_extension_is_built_with_openmp():
    # Without -fopenmp, ATen's at::parallel_for compiles to a serial loop inside pgraft._C and
    # every fused CPU path silently runs on one thread (it did until setup.py passed the flag).
    assert _backend._C.openmp()


@pytest.mark.parametrize("backend", BACKENDS)
def test_gather_of_rows_longer_than_one_block(backend):
    """9,000 elements per row: more than the gather's largest block (4,096), so each row is
    copied by several programs, the last one masked."""
    gen = torch.Generator().manual_seed(3)
    src, idx = to(backend, torch.randn(4, 9000, generator=gen), torch.tensor([3, 1, 3]))
    dest = to(backend, torch.full((3, 9000), float("nan")))[0]
    gather_rows(idx, src, out=[dest], backend=backend)
    assert torch.equal(host(dest), host(src)[host(idx)])
