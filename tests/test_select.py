"""GRS acceptance rules: exact semantics, and the accepted-reward laws of docs/method.md §1 (KS tests)."""

import numpy as np
import pytest
import torch
from scipy import stats

from pgraft.config import SelectConfig
from pgraft.engine.select import select
from pgraft.errors import RewardError, ShapeError


def _accepted(rewards, cfg, **kw):
    sel = select(rewards, cfg, **kw)
    return rewards.flatten()[sel.indices], sel


def test_top_k_matches_torch_topk_and_breaks_ties_low_index_first():
    r = torch.tensor([[0.5, 0.9, 0.9, 0.1, 0.9], [3.0, 2.0, 1.0, 0.0, -1.0]])
    sel = select(r, SelectConfig(rule="top_k", k=2))
    assert sel.indices.tolist() == [1, 2, 5, 6]
    assert sel.groups.tolist() == [0, 0, 1, 1]
    g = torch.Generator().manual_seed(0)
    r = torch.randn(50, 16, generator=g)
    sel = select(r, SelectConfig(rule="top_k", k=5))
    expect = (torch.topk(r, 5, dim=1).indices + torch.arange(50)[:, None] * 16).flatten()
    assert sel.indices.tolist() == expect.tolist()


def test_nan_and_inf_are_excluded_and_counted_and_short_groups_keep_what_they_have():
    nan, inf = float("nan"), float("inf")
    r = torch.tensor([[nan, 0.2, inf, 0.1], [nan, nan, nan, 0.3], [nan, nan, nan, -inf]])
    sel = select(r, SelectConfig(rule="top_k", k=3))
    assert sel.invalid == 9
    assert sel.indices.tolist() == [1, 3, 7]
    assert sel.accepted_per_group.tolist() == [2, 1, 0]
    assert select(r, SelectConfig(rule="best_of_n")).indices.tolist() == [1, 7]
    assert select(r, SelectConfig(rule="threshold", threshold=0.15)).indices.tolist() == [1, 7]


def test_k_equals_m_and_k_one_and_one_element_groups():
    r = torch.tensor([[0.3, 0.1, 0.2]])
    assert select(r, SelectConfig(rule="top_k", k=3)).indices.tolist() == [0, 2, 1]
    assert select(r, SelectConfig(rule="top_k", k=1)).indices.tolist() == [0]
    one = torch.tensor([[0.4], [0.7]])
    assert select(one, SelectConfig(rule="top_k", k=1)).indices.tolist() == [0, 1]
    with pytest.raises(ShapeError, match="exceeds the group size"):
        select(r, SelectConfig(rule="top_k", k=4))
    with pytest.raises(ShapeError, match="groups, samples_per_group"):
        select(torch.zeros(3), SelectConfig())


def _ks_against(accepted: np.ndarray, density, grid=np.linspace(0, 1, 20001)):
    cdf = np.cumsum(density(grid))
    cdf /= cdf[-1]
    return stats.kstest(accepted, lambda x: np.interp(x, grid, cdf)).pvalue


@pytest.mark.parametrize("m,k", [(8, 3), (5, 1), (16, 4)])
def test_top_k_accepted_law_matches_binomial_tilt(m, k):
    # r ~ U(0, 1): F(r) = r, accepted density ∝ P[Binomial(M-1, 1-r) <= K-1].
    g = torch.Generator().manual_seed(m * 100 + k)
    acc, _ = _accepted(torch.rand(4000, m, generator=g, dtype=torch.float64), SelectConfig(rule="top_k", k=k))

    def g_top_k(r):
        return stats.binom.cdf(k - 1, m - 1, 1 - r)

    assert _ks_against(acc.numpy(), g_top_k) > 0.01
    # and the wrong law (plain uniform) is firmly rejected, so the test can fail
    assert stats.kstest(acc.numpy(), "uniform").pvalue < 1e-6


def test_best_of_n_law_is_F_to_the_M_minus_1():
    m = 6
    g = torch.Generator().manual_seed(7)
    r = -torch.log(torch.rand(6000, m, generator=g, dtype=torch.float64))  # Exp(1): F(r) = 1 - e^{-r}
    acc, _ = _accepted(r, SelectConfig(rule="best_of_n"))
    # accepted density f·F^(M-1)/Z  ⇒  CDF of the accepted reward is F(r)^M
    p = stats.kstest(acc.numpy(), lambda x: (1 - np.exp(-x)) ** m).pvalue
    assert p > 0.01
    assert stats.kstest(acc.numpy(), lambda x: 1 - np.exp(-x)).pvalue < 1e-6


def test_threshold_accepts_exactly_the_rewards_at_or_above_tau():
    g = torch.Generator().manual_seed(3)
    r = torch.rand(200, 10, generator=g)
    acc, sel = _accepted(r, SelectConfig(rule="threshold", threshold=0.7))
    assert (acc >= 0.7).all()
    assert sel.count == int((r >= 0.7).sum())
    # accepted law: f·1{r>=τ}/Z = U(0.7, 1)
    assert stats.kstest(acc.numpy(), "uniform", args=(0.7, 0.3)).pvalue > 0.01


def test_classic_rule_tilts_by_exp_r_over_alpha_and_accepts_at_the_right_rate():
    alpha = 0.25
    g = torch.Generator().manual_seed(11)
    r = torch.rand(3000, 8, generator=g, dtype=torch.float64)
    cfg = SelectConfig(rule="classic", alpha=alpha, r_max=1.0)
    acc, sel = _accepted(r, cfg, generator=torch.Generator().manual_seed(5))
    assert _ks_against(acc.numpy(), lambda x: np.exp(x / alpha)) > 0.01
    rate = sel.count / r.numel()
    expected = alpha * (1 - np.exp(-1 / alpha))  # E[exp((r-1)/α)] for r ~ U(0,1)
    assert abs(rate - expected) < 4 * np.sqrt(expected * (1 - expected) / r.numel())
    with pytest.raises(RewardError, match="exceeds select.r_max"):
        select(r + 1.0, cfg, generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="generator"):
        select(r, cfg)


def test_dedup_collapses_near_duplicates_then_takes_top_k():
    base = torch.zeros(1, 4, 1, 2, 2)
    base[0, 1] = 0.01  # near-duplicate of sample 0
    base[0, 2] = 0.5
    base[0, 3] = 1.0
    samples = base.view(4, 1, 2, 2)
    r = torch.tensor([[0.9, 0.8, 0.7, 0.1]])
    sel = select(r, SelectConfig(rule="dedup", k=2, dedup_eps=0.05), samples=samples)
    assert sel.indices.tolist() == [0, 2]
    sel = select(r, SelectConfig(rule="dedup", k=2, dedup_eps=0.0), samples=samples)
    assert sel.indices.tolist() == [0, 1]  # eps 0: plain top-K
    with pytest.raises(ShapeError, match="dedup rule needs duplicate keys or samples"):
        select(r, SelectConfig(rule="dedup", k=2))


def test_dedup_on_keys_keeps_the_best_of_each_key_then_takes_top_k():
    r = torch.tensor([[0.9, 0.8, 0.7, 0.6, float("nan"), 0.1]])
    keys = torch.tensor([5, 5, 7, 5, 3, 9])
    assert select(r, SelectConfig(rule="dedup", k=2), keys=keys).indices.tolist() == [0, 2]
    # the NaN is never accepted, even with a key of its own; K larger than the distinct keys keeps them all
    assert select(r, SelectConfig(rule="dedup", k=5), keys=keys).indices.tolist() == [0, 2, 5]
    # distinct keys: exactly top-K
    distinct = torch.arange(6)
    assert select(r, SelectConfig(rule="dedup", k=3), keys=distinct).indices.tolist() == [0, 1, 2]
    # keys win over samples, and per group: group 1's key 5 is not group 0's
    r2 = torch.tensor([[0.9, 0.8], [0.7, 0.6]])
    sel = select(r2, SelectConfig(rule="dedup", k=2), keys=torch.tensor([5, 5, 5, 1]), samples=torch.zeros(4, 3))
    assert sel.indices.tolist() == [0, 2, 3]
    with pytest.raises(ShapeError, match="dedup keys must be integers"):
        select(r, SelectConfig(rule="dedup", k=2), keys=keys.float())
    with pytest.raises(ShapeError, match="dedup keys must be integers"):
        select(r, SelectConfig(rule="dedup", k=2), keys=keys[:3])


def _exact_accepted_law(p: np.ndarray, reward: np.ndarray, m: int, k: int, dedup: bool) -> np.ndarray:
    """The law of an accepted sample's value for top-K over groups of m i.i.d. draws from the
    discrete law p, by enumerating every group composition (multinomial counts): with dedup each
    present value counts once before the top K are taken."""
    values = len(p)
    expected = np.zeros(values)

    def compositions(total, parts):
        if parts == 1:
            yield (total,)
            return
        for first in range(total + 1):
            for rest in compositions(total - first, parts - 1):
                yield (first, *rest)

    by_reward = np.argsort(-reward, kind="stable")
    for counts in compositions(m, values):
        prob = stats.multinomial.pmf(counts, m, p)
        room = k
        for v in by_reward:
            if room == 0:
                break
            take = min(1 if dedup else counts[v], room) if counts[v] else 0
            expected[v] += prob * take
            room -= take
    return expected / expected.sum()


def test_dedup_accepted_law_matches_the_exact_law_on_a_discrete_toy():
    """Duplicates collapse before the top K: on a discrete law the accepted law has a closed
    form (enumerated exactly); the rule's empirical law matches it, and differs from plain
    top-K's (which accepts every copy of a frequent high-reward value): the diversity term."""
    p = np.array([0.30, 0.25, 0.20, 0.12, 0.08, 0.05])
    reward = np.array([0.1, 0.9, 0.3, 0.7, 0.5, 0.95])  # distinct: no ties to break
    m, k, groups = 6, 2, 20000
    g = torch.Generator().manual_seed(17)
    values = torch.multinomial(torch.tensor(p), groups * m, replacement=True, generator=g)
    rewards = torch.tensor(reward)[values].view(groups, m)
    sel = select(rewards, SelectConfig(rule="dedup", k=k), keys=values)
    counts = np.bincount(values[sel.indices].numpy(), minlength=len(p))
    law = _exact_accepted_law(p, reward, m, k, dedup=True)
    assert stats.chisquare(counts, law * counts.sum()).pvalue > 0.01
    plain = _exact_accepted_law(p, reward, m, k, dedup=False)
    assert stats.chisquare(counts, plain * counts.sum()).pvalue < 1e-6  # the test can fail
    # and plain top-K's empirical law matches its own exact law (the enumeration is right)
    top = select(rewards, SelectConfig(rule="top_k", k=k))
    top_counts = np.bincount(values[top.indices].numpy(), minlength=len(p))
    assert stats.chisquare(top_counts, plain * top_counts.sum()).pvalue > 0.01
