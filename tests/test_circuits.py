"""Head dynamics over checkpoints: cohorts, heatmap, correlation on hand-made sequences; cached snapshots; scaling."""

import random

import numpy as np
import pytest

from toolkit import circuits, grpo
from toolkit.core import stats

BASE = {(0, 0), (1, 1)}
SNAPSHOTS = {
    10: {(0, 0), (1, 1), (2, 0)},
    20: {(0, 0), (2, 0), (3, 1)},
    30: {(1, 1), (3, 1)},
    40: {(0, 0), (1, 1), (2, 0), (0, 3)},
}


def test_dynamics_of_a_hand_made_sequence():
    dyn = circuits.head_dynamics(BASE, SNAPSHOTS)
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
    dyn = circuits.head_dynamics(set(), {1: {(0, 0), (0, 1), (1, 0)}, 2: {(0, 0)}, 3: {(0, 0), (0, 1)}})
    assert dyn.cohorts == {1: {(0, 0), (0, 1), (1, 0)}}
    assert dyn.cohort_counts[1] == [3, 1, 2]
    # lifetimes: (0,0) 3/3, (0,1) 2/3, (1,0) 1/3
    assert dyn.cohort_survival[1]["mean_lifetime"] == pytest.approx(2 / 3)
    assert dyn.cohort_survival[1]["active_at_final"] == 2


def test_heatmap_of_a_hand_made_sequence():
    hm = circuits.heatmap(circuits.head_dynamics(BASE, SNAPSHOTS))
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
        dyn = circuits.head_dynamics(base, snaps)
        assert dyn.cohort_counts == _reference(base, snaps)
        totals = [sum(col) for col in zip(*dyn.cohort_counts.values())] or [0] * len(dyn.steps)
        assert totals == dyn.n_emergent
        assert [a + b for a, b in zip(dyn.n_emergent, dyn.n_maintained)] == [len(s) for s in snaps.values()]
        hm = circuits.heatmap(dyn)
        assert hm.active.sum() == sum(len(s) for s in snaps.values())
        assert hm.final.sum() == len(snaps[max(snaps)])


def test_bad_sequences_are_refused():
    with pytest.raises(ValueError, match="at least one checkpoint"):
        circuits.head_dynamics(BASE, {})
    with pytest.raises(ValueError, match="positive"):
        circuits.head_dynamics(BASE, {0: BASE})
    with pytest.raises(ValueError, match="pair"):
        circuits.head_dynamics({(0, 0, 1)}, {1: set()})


def test_reward_correlation():
    dyn = circuits.head_dynamics(BASE, SNAPSHOTS)
    rewards = {10: 0.1, 20: 0.5, 30: 0.2, 40: 0.4}
    got = circuits.reward_correlation(dyn, rewards)
    assert got == stats.correlation([1, 2, 1, 2], [0.1, 0.5, 0.2, 0.4])
    assert got["pearson_r"] == pytest.approx(np.corrcoef([1, 2, 1, 2], [0.1, 0.5, 0.2, 0.4])[0, 1])
    linear = circuits.reward_correlation(dyn, {s: 3 * n + 1 for s, n in zip(dyn.steps, dyn.n_emergent)})
    assert linear["pearson_r"] == pytest.approx(1.0) and linear["spearman_r"] == pytest.approx(1.0)
    with pytest.raises(ValueError, match="no reward for checkpoint steps \\[40\\]"):
        circuits.reward_correlation(dyn, {10: 0, 20: 0, 30: 0})


def test_compare_sets():
    got = circuits.compare_sets({(0, 1), (1, 2)}, {(1, 2), (3, 0), (2, 2)})
    assert got["shared"] == [(1, 2)] and got["only_a"] == [(0, 1)] and got["only_b"] == [(2, 2), (3, 0)]
    assert (got["n_a"], got["n_b"], got["jaccard"]) == (2, 3, 0.25)


def test_figures_draw(tmp_path):
    dyn = circuits.head_dynamics(BASE, SNAPSHOTS)
    fig = circuits.dynamics_figure(dyn, [1, 2, 3], [0.1, 0.2, 0.3], "GRPO")
    fig.savefig(tmp_path / "a.png")
    circuits.heatmap_figure(circuits.heatmap(dyn)).savefig(tmp_path / "c.png")
    ci = {"estimate": 0.1, "low": 0.0, "high": 0.2}
    result = {"baseline": {"linear": ci}, "scaled": {arm: {"linear": {"accuracy": ci, "change": ci, "changed": ci}}
                                                     for arm in ("×1.3", "random ×1.3")}}
    circuits.scaling_figure(result).savefig(tmp_path / "s.png")
    fig = circuits.checkpoint_map_figure(dyn, 3, 4, 4)
    fig.savefig(tmp_path / "m.png")
    np.testing.assert_array_equal(circuits.checkpoint_map(dyn, 3, 4, 4)[:, :],
                                  [[1, 0, 0, 2], [0, 1, 0, 0], [2, 0, 0, 0], [0, 0, 0, 0]])


def test_head_scaling_identity_and_bad_heads(tiny):
    examples = grpo.eval_problems(n=4)
    got = circuits.head_scaling(tiny, [(0, 1), (1, 3)], examples, factors=(1.0,), max_new_tokens=4, samples=3)
    assert set(got["scaled"]) == {"×1", "random ×1"}
    for task, by in got["scaled"]["×1"].items():  # same seed, factor 1: the very same samples
        assert by["change"]["estimate"] == 0.0 and by["accuracy"] == got["baseline"][task]
        assert by["changed"]["estimate"] == 0.0
    with pytest.raises(ValueError, match="out of range"):
        circuits.head_scaling(tiny, [(9, 0)], examples)


def test_snapshots_are_cached_per_weights_and_an_interrupted_analysis_continues(tmp_path, monkeypatch):
    from toolkit import eap

    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    calls = []
    real = eap.attribute

    def counting(loaded, *args, **kwargs):
        calls.append(loaded.spec)
        if len(calls) == 2 and fail[0]:
            raise KeyboardInterrupt("interrupted analysis")
        return real(loaded, *args, **kwargs)

    fail = [True]
    monkeypatch.setattr(eap, "attribute", counting)
    examples = grpo.eval_problems(("arithmetic",), 16)  # organism-base answers every equation alike (no pairs)
    settings = circuits.SnapshotSettings(ig_steps=2, top_n=30)
    specs = {0: "organism-base", 10: "organism", 20: "organism-base"}  # step 20: the same weights as step 0
    with pytest.raises(KeyboardInterrupt):
        circuits.snapshot_scores(specs, examples, settings)
    assert calls == ["organism-base", "organism"]
    fail[0] = False
    dyn = circuits.run_dynamics(specs, examples, settings)
    assert calls == ["organism-base", "organism", "organism"]  # only the missing snapshot was computed
    circuits.run_dynamics(specs, examples, settings)
    assert len(calls) == 3  # everything cached now
    # independently: the emergent heads are eap.compare_heads' only_a of the two circuits
    folder = circuits.analysis_dir(examples, settings)
    base, post = (eap.select(eap.Scores.load(p), top_n=30, absolute=True, method="top", prune=True)
                  for p in (folder / f"{grpo.model_fingerprint(s)}.scores.json" for s in ("organism-base", "organism")))
    assert dyn.emergent[0] == set(eap.compare_heads(post, base)["only_a"])
    assert dyn.sets[1] == base.heads and dyn.emergent[1] == set()


def test_head_scaling_of_all_heads_to_zero_breaks_the_organism():
    """An independent check on a real model: the organism solves equations with thinking; with every head of layer
    0 zeroed it cannot."""
    from toolkit.core import models

    organism = models.load("organism")
    examples = grpo.eval_problems(("linear",), 6)
    got = circuits.head_scaling(organism, [(0, h) for h in range(4)], examples, factors=(0.0,),
                                enable_thinking=True, max_new_tokens=80, control_seed=None)
    assert got["baseline"]["linear"]["estimate"] >= 0.8
    assert got["scaled"]["×0"]["linear"]["accuracy"]["estimate"] == 0.0
    assert got["scaled"]["×0"]["linear"]["change"]["estimate"] == -got["baseline"]["linear"]["estimate"]
    assert got["scaled"]["×0"]["linear"]["changed"]["estimate"] == 1.0
