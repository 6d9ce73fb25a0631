"""Head dynamics over checkpoints (toolkit.methods.dynamics): cohorts, heatmap, map, correlation on hand-made
sequences, against a slow per-head count."""

import random

import numpy as np
import pytest

from toolkit.core import stats
from toolkit.core.units import compare_heads
from toolkit.methods import dynamics

BASE = {(0, 0), (1, 1)}
SNAPSHOTS = {
    10: {(0, 0), (1, 1), (2, 0)},
    20: {(0, 0), (2, 0), (3, 1)},
    30: {(1, 1), (3, 1)},
    40: {(0, 0), (1, 1), (2, 0), (0, 3)},
}


def test_dynamics_of_a_hand_made_sequence():
    dyn = dynamics.head_dynamics(BASE, SNAPSHOTS)
    assert dyn.steps == [10, 20, 30, 40]
    assert dyn.emergent == [{(2, 0)}, {(2, 0), (3, 1)}, {(3, 1)}, {(2, 0), (0, 3)}]
    assert dyn.n_emergent == [1, 2, 1, 2]
    assert dyn.n_maintained == [2, 1, 1, 2]
    # newly active: emergent now, not active at the previous checkpoint ((2, 0) returns at 40)
    assert dyn.newly_active == [{(2, 0)}, {(3, 1)}, set(), {(2, 0), (0, 3)}]
    assert dyn.first_seen == {(2, 0): 10, (3, 1): 20, (0, 3): 40}
    assert dyn.cohorts == {10: {(2, 0)}, 20: {(3, 1)}, 40: {(0, 3)}}
    assert dyn.cohort_counts == {10: [1, 1, 0, 1], 20: [0, 1, 1, 0], 40: [0, 0, 0, 1]}
    assert dyn.cohort_survival[10] == {"size": 1, "active_at_final": 1, "last_active": 40, "checkpoints_alive": 3,
                                       "mean_lifetime": 0.75}
    assert dyn.cohort_survival[20] == {"size": 1, "active_at_final": 0, "last_active": 30, "checkpoints_alive": 2,
                                       "mean_lifetime": pytest.approx(2 / 3)}
    assert dyn.cohort_survival[40]["mean_lifetime"] == 1.0
    assert dyn.final_emergent == {(2, 0), (0, 3)}
    summary = dyn.summary()
    assert summary["cohorts"]["20"]["heads"] == [[3, 1]] and summary["final_emergent"] == [[0, 3], [2, 0]]


def test_cohort_with_several_members_and_partial_survival():
    dyn = dynamics.head_dynamics(set(), {1: {(0, 0), (0, 1), (1, 0)}, 2: {(0, 0)}, 3: {(0, 0), (0, 1)}})
    assert dyn.cohorts == {1: {(0, 0), (0, 1), (1, 0)}}
    assert dyn.cohort_counts[1] == [3, 1, 2]
    # lifetimes: (0,0) 3/3, (0,1) 2/3, (1,0) 1/3
    assert dyn.cohort_survival[1]["mean_lifetime"] == pytest.approx(2 / 3)
    assert dyn.cohort_survival[1]["active_at_final"] == 2


def test_heatmap_of_a_hand_made_sequence():
    hm = dynamics.heatmap(dynamics.head_dynamics(BASE, SNAPSHOTS))
    assert hm.heads == [(0, 0), (0, 3), (1, 1), (2, 0), (3, 1)]
    assert hm.steps == [10, 20, 30, 40]
    np.testing.assert_array_equal(hm.active.astype(int), [[1, 1, 0, 1], [0, 0, 0, 1], [1, 0, 1, 1], [1, 1, 0, 1],
                                                          [0, 1, 1, 0]])
    np.testing.assert_array_equal(hm.is_base, [True, False, True, False, False])
    np.testing.assert_array_equal(hm.final, [True, True, True, True, False])
    np.testing.assert_allclose(hm.frequency, [0.75, 0.25, 0.75, 0.75, 0.5])
    np.testing.assert_array_equal(hm.codes()[1], [0, 0, 0, 2])
    np.testing.assert_array_equal(hm.codes()[0], [1, 1, 0, 1])


def _reference(base, snapshots):
    """A slow, independent count: per step, per cohort step, loop over all heads."""
    steps = sorted(snapshots)
    heads = set().union(base, *snapshots.values())
    counts = {}
    for c in steps:
        for h in heads:
            born = next((s for s in steps if h in snapshots[s] and h not in base), None)
            if born == c:
                counts.setdefault(c, [0] * len(steps))
                for i, s in enumerate(steps):
                    counts[c][i] += int(h in snapshots[s] and s >= c)
    return counts


def test_random_sequences_match_a_reference_and_cohorts_sum_to_emergent():
    rng = random.Random(0)
    pool = [(lay, h) for lay in range(4) for h in range(4)]
    for _ in range(30):
        base = set(rng.sample(pool, rng.randint(0, 6)))
        snaps = {10 * (i + 1): set(rng.sample(pool, rng.randint(0, 8))) for i in range(rng.randint(1, 7))}
        dyn = dynamics.head_dynamics(base, snaps)
        assert dyn.cohort_counts == _reference(base, snaps)
        totals = [sum(col) for col in zip(*dyn.cohort_counts.values())] or [0] * len(dyn.steps)
        assert totals == dyn.n_emergent
        assert [a + b for a, b in zip(dyn.n_emergent, dyn.n_maintained)] == [len(s) for s in snaps.values()]
        hm = dynamics.heatmap(dyn)
        assert hm.active.sum() == sum(len(s) for s in snaps.values())
        assert hm.final.sum() == len(snaps[max(snaps)])


def test_bad_sequences_are_refused():
    with pytest.raises(ValueError, match="at least one checkpoint"):
        dynamics.head_dynamics(BASE, {})
    with pytest.raises(ValueError, match="positive"):
        dynamics.head_dynamics(BASE, {0: BASE})
    with pytest.raises(ValueError, match="pair"):
        dynamics.head_dynamics({(0, 0, 1)}, {1: set()})


def test_reward_correlation():
    dyn = dynamics.head_dynamics(BASE, SNAPSHOTS)
    rewards = {10: 0.1, 20: 0.5, 30: 0.2, 40: 0.4}
    got = dynamics.reward_correlation(dyn, rewards)
    assert got == stats.correlation([1, 2, 1, 2], [0.1, 0.5, 0.2, 0.4])
    assert got["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 1, 2], [0.1, 0.5, 0.2, 0.4])[0, 1])
    linear = dynamics.reward_correlation(dyn, {s: 3 * n + 1 for s, n in zip(dyn.steps, dyn.n_emergent)})
    assert linear["pearson_r"] == pytest.approx(1.0) and linear["spearman_r"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no reward for checkpoint steps \\[40\\]"):
        dynamics.reward_correlation(dyn, {10: 0, 20: 0, 30: 0})


def test_final_sets_compare_with_core_units():
    """The comparison notebook 04 uses (was ``circuits.compare_sets``): same keys, same values."""
    got = compare_heads({(0, 1), (1, 2)}, {(1, 2), (3, 0), (2, 2)}).to_dict()
    assert got["shared"] == [(1, 2)] and got["only_a"] == [(0, 1)] and got["only_b"] == [(2, 2), (3, 0)]
    assert (got["n_a"], got["n_b"], got["jaccard"]) == (2, 3, 0.25)


def test_checkpoint_map_and_ever_emergent():
    dyn = dynamics.head_dynamics(BASE, SNAPSHOTS)
    np.testing.assert_array_equal(dynamics.checkpoint_map(dyn, 3, 4, 4),
                                  [[1, 0, 0, 2], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])
    np.testing.assert_array_equal(dynamics.checkpoint_map(dyn, 2, 4, 4),  # (0, 0) is a base head lost at step 30
                                  [[3, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0], [0, 2, 0, 0]])
    assert dyn.ever_emergent == {(2, 0), (3, 1), (0, 3)}
