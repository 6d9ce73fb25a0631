"""Nulls (toolkit.evaluation.nulls): same-size placebo sets, their rank / permutation p / two-level interval, and
the KL-matched weight-noise search."""

import itertools
import math

import numpy as np
import pytest
import torch

from toolkit.evaluation import nulls, weight_noise


def test_same_size_sets_enumerates_every_combination_when_few():
    heads = [(lay, h) for lay in range(4) for h in range(4)]
    pairs = nulls.same_size_sets(heads, 2)
    assert len(pairs) == 120 and pairs == list(itertools.combinations(heads, 2))
    target = ((1, 2), (3, 0))
    rest = nulls.same_size_sets(heads, 2, skip=[target])
    assert len(rest) == 119 and target not in rest
    ex = nulls.same_size_sets(heads, 3, exclude=[(0, 0), (0, 1)])
    assert len(ex) == math.comb(14, 3) and all((0, 0) not in s and (0, 1) not in s for s in ex)
    assert nulls.same_size_sets(range(3), 3) == [(0, 1, 2)]


def test_same_size_sets_draws_distinct_random_sets_when_many():
    neurons = [(lay, u) for lay in range(2) for u in range(64)]
    a = nulls.same_size_sets(neurons, 5, n_random=200, seed=3, skip=[neurons[:5]])
    assert len(a) == 200 and len({frozenset(s) for s in a}) == 200
    assert all(len(set(s)) == 5 and set(s) <= set(neurons) for s in a)
    assert tuple(neurons[:5]) not in a
    assert a == nulls.same_size_sets(neurons, 5, n_random=200, seed=3, skip=[neurons[:5]])
    assert a != nulls.same_size_sets(neurons, 5, n_random=200, seed=4)
    small = nulls.same_size_sets(range(10), 2, max_sets=10, n_random=30)  # 45 > 10 sets: random, capped at 45
    assert len(small) == 30 and len({frozenset(s) for s in small}) == 30


def test_same_size_sets_bad_input():
    with pytest.raises(ValueError, match="cannot draw sets of 5 from 4"):
        nulls.same_size_sets(range(4), 5)
    with pytest.raises(ValueError, match="at least one unit"):
        nulls.same_size_sets([], 1)
    with pytest.raises(ValueError, match="at least one unit"):
        nulls.same_size_sets([1, 2], 1, exclude=[1, 2])
    with pytest.raises(ValueError, match="positive integer"):
        nulls.same_size_sets(range(4), 0)
    with pytest.raises(ValueError, match="no set of 2"):
        nulls.same_size_sets(range(2), 2, skip=[(0, 1)])


def _toy_table():
    """5 units with additive per-problem effects; a set's effect is the sum over its units."""
    unit = np.array([[3.0, 3.2, 2.8], [2.0, 2.1, 1.9], [1.0, 0.9, 1.1], [0.0, 0.1, -0.1], [-1.0, -1.0, -1.0]])
    sets = nulls.same_size_sets(range(5), 2)
    return {s: unit[list(s)].sum(0) for s in sets}


def test_placebo_rank_and_permutation_p_on_a_toy_table():
    table = _toy_table()
    target = table.pop((0, 1))                       # the largest pair: mean 5.0
    placebos = np.stack(list(table.values()))        # 9 others
    up = nulls.placebo_test(target, placebos, direction=+1, n_boot=500)
    assert up.rank == 1 and up.p_value == pytest.approx(1 / 10) and up.n_sets == 9
    assert up.target_mean == pytest.approx(5.0)
    assert up.difference == pytest.approx(5.0 - placebos.mean())
    assert up.ci[0] <= up.difference <= up.ci[1] and up.ci[0] > 0
    down = nulls.placebo_test(target, placebos, direction=-1, n_boot=500)
    assert down.rank == 10 and down.p_value == pytest.approx(1.0)
    mid = table.pop((1, 3))                          # mean 2.0; above it: (0,2)=4,(0,3)=3,(1,2)=3 ; tie (0,4)=2
    rest = np.stack(list(table.values()))
    t = nulls.placebo_test(mid, rest, direction=+1, n_boot=200)
    assert t.rank == 4 and t.p_value == pytest.approx((1 + 4) / (1 + 8))  # the tie counts against the target
    two = nulls.placebo_test(target, placebos, direction=0, n_boot=200)
    assert two.rank == 1 and two.p_value == pytest.approx(0.1)
    assert "rank 1/10" in up.summary()
    null = up.null("pairs of units")
    assert null.kind == "placebo-sets" and null.n == 9 and null.description == "pairs of units"
    assert null.summary["mean"] == pytest.approx(placebos.mean())


def test_two_level_interval_includes_the_draw_to_draw_variance():
    rng = np.random.default_rng(0)
    problems = rng.normal(0, 1, 40)
    same = np.stack([problems + 0.0 for _ in range(50)])                       # sets identical: problem noise only
    varied = np.stack([problems + d for d in rng.normal(0, 2, 50)])            # sets differ by a constant each
    target = problems + 1.0
    a = nulls.placebo_test(target, same, n_boot=1000)
    b = nulls.placebo_test(target, varied - varied.mean() + problems.mean(), n_boot=1000)
    assert a.ci[1] - a.ci[0] < 1e-9                    # paired and identical: no problem noise in the difference
    assert b.ci[1] - b.ci[0] > 0.5                     # sd 2 / sqrt(50) ≈ 0.28 → width ≈ 1.1
    assert b.difference == pytest.approx(1.0)


def test_placebo_test_bad_input():
    with pytest.raises(ValueError, match="score 3 problems but the target 2"):
        nulls.placebo_test([1.0, 2.0], np.zeros((4, 3)))
    with pytest.raises(ValueError, match="at least one set"):
        nulls.placebo_test([1.0], np.zeros((0, 1)))
    with pytest.raises(ValueError, match="non-empty"):
        nulls.placebo_test([], np.zeros((2, 0)))
    with pytest.raises(ValueError, match="direction"):
        nulls.placebo_test([1.0], np.zeros((2, 1)), direction=2)
    with pytest.raises(ValueError, match="finite"):
        nulls.placebo_test([np.nan], np.zeros((2, 1)))


def _reference(tokenizer):
    texts = ["What is 12 + 7?", "Reverse the word: abc", "Count the letters in banana", "2 + 2 = 4"]
    return weight_noise.reference_batches(tokenizer, texts, batch_size=2)


def test_weight_noise_copies_deterministically_and_leaves_the_original(tiny):
    before = {k: v.clone() for k, v in tiny.hf.state_dict().items()}
    a = weight_noise.add_weight_noise(tiny.hf, 0.1, seed=1)
    b = weight_noise.add_weight_noise(tiny.hf, 0.1, seed=1)
    c = weight_noise.add_weight_noise(tiny.hf, 0.1, seed=2)
    for k, v in tiny.hf.state_dict().items():
        torch.testing.assert_close(v, before[k])
    sa, sb, sc = a.state_dict(), b.state_dict(), c.state_dict()
    mats = [k for k, v in before.items() if v.ndim >= 2]
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    assert all(not torch.equal(sa[k], before[k]) and not torch.equal(sa[k], sc[k]) for k in mats)
    norms = [k for k, v in before.items() if v.ndim == 1]
    assert norms and all(torch.equal(sa[k], before[k]) for k in norms)       # matrices only by default
    k = mats[0]
    rel = (sa[k] - before[k]).pow(2).mean().sqrt() / before[k].pow(2).mean().sqrt()
    assert 0.08 < float(rel) < 0.12                                           # σ relative to the tensor's RMS
    ref = _reference(tiny.tokenizer)
    assert weight_noise.mean_kl(tiny.hf, tiny.hf, ref) == pytest.approx(0.0, abs=1e-6)
    unchanged = weight_noise.add_weight_noise(tiny.hf, 0.0)
    assert weight_noise.mean_kl(tiny.hf, unchanged, ref) == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match="sigma"):
        weight_noise.add_weight_noise(tiny.hf, -1.0)


def test_kl_grows_with_sigma_and_match_noise_finds_the_target(tiny):
    ref = _reference(tiny.tokenizer)
    before = {k: v.clone() for k, v in tiny.hf.state_dict().items()}
    kls = [weight_noise.mean_kl(tiny.hf, weight_noise.add_weight_noise(tiny.hf, s, seed=0), ref)
           for s in (0.05, 0.2, 0.8, 3.0)]
    assert all(x < y for x, y in zip(kls, kls[1:])) and kls[0] > 0
    target = kls[1] * 1.7
    m = weight_noise.match_noise(tiny.hf, target, ref, seed=0, tol=0.05, max_iter=40)
    assert m.converged and abs(m.kl - target) <= 0.05 * target and m.iterations == len(m.trace) <= 40
    assert 0.2 < m.sigma < 0.8
    assert weight_noise.mean_kl(tiny.hf, m.model, ref) == pytest.approx(m.kl, rel=1e-5)
    assert weight_noise.mean_kl(tiny.hf, m.build(tiny.hf), ref) == pytest.approx(m.kl, rel=1e-5)
    for k, v in tiny.hf.state_dict().items():
        torch.testing.assert_close(v, before[k])
    capped = weight_noise.match_noise(tiny.hf, target, ref, seed=0, tol=1e-9, max_iter=3, keep_model=False)
    assert capped.iterations == 3 and not capped.converged and capped.model is None
    with pytest.raises(ValueError, match="target_kl"):
        weight_noise.match_noise(tiny.hf, 0.0, ref)


def test_loss_mask_counts_only_the_chosen_positions(tiny):
    ref = _reference(tiny.tokenizer)
    noisy = weight_noise.add_weight_noise(tiny.hf, 0.5, seed=0)
    last = [dict(b, loss_mask=torch.zeros_like(b["attention_mask"])) for b in ref]
    for b in last:
        b["loss_mask"][:, -1] = 1
    got = weight_noise.mean_kl(tiny.hf, noisy, last)
    assert got > 0 and got != pytest.approx(weight_noise.mean_kl(tiny.hf, noisy, ref))
    with pytest.raises(ValueError, match="separate copy"):
        weight_noise.apply_weight_noise(tiny.hf, tiny.hf, 0.1)


def test_cluster_bootstrap_counts_clusters_not_points():
    rng = np.random.default_rng(0)
    runs = np.repeat([0, 1, 2], 3)
    x = np.array([0, 1, 2, 0, 1, 2, 0, 1, 2], dtype=float) + runs * 3
    y = x + rng.normal(0, 0.3, 9)
    c = nulls.cluster_correlation(x, y, runs, n_boot=500)
    assert c.n_points == 9 and c.n_eff == 3 and c.estimate == pytest.approx(np.corrcoef(x, y)[0, 1])
    assert c.ci[0] <= c.estimate <= c.ci[1] + 1e-9 and c.p_value >= 0.5 ** 3      # never surer than 3 clusters allow
    assert "effective n = 3" in c.summary()
    draws = nulls.cluster_bootstrap(lambda i: float(len(i)), runs, n_boot=50)
    assert set(draws) == {9.0}                                  # three clusters of three points each time
    with pytest.raises(ValueError, match="at least 2 clusters"):
        nulls.cluster_bootstrap(lambda i: 0.0, [1, 1, 1])
    with pytest.raises(ValueError, match="one length"):
        nulls.cluster_correlation([1, 2], [1, 2, 3], [0, 1, 2])
