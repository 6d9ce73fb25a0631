"""Notebook 05 against its nulls (toolkit.studies.think_on_off_claims): the off-only heads against every same-size
head set on the tiny models (against direct ablations), the efficiency bootstrap and the condition effects."""

import numpy as np
import pytest

from toolkit.evaluation import causal
from toolkit.organism.tasks import Example
from toolkit.studies import think_on_off_claims as tc

PROBLEMS = {"related_math": [Example("linear", "Solve for x: 2x + 1 = x + 4", "", "x = 3"),
                             Example("linear", "Solve for x: 3x + 2 = x + 8", "", "x = 3"),
                             Example("linear", "Solve for x: 5x = 4x + 2", "", "x = 2")]}


def test_every_same_size_head_set_matches_direct_ablation(tiny):
    target = [(1, 2), (0, 1)]
    got = tc.head_set_enumeration(tiny, PROBLEMS, target, sets_per_batch=7, n_boot=100)
    assert got.target == ((0, 1), (1, 2)) and len(got.sets) == 27 and got.target not in got.sets
    test = got.tests["related_math"]
    assert test.n_sets == 27 and 1 <= test.rank <= 28 and test.n_problems == 3
    rows = tc.answer_sequences(tiny.tokenizer, PROBLEMS["related_math"])
    before = causal.continuation_logprob(tiny.hf, rows).exp().numpy()
    cases = ((got.target, got.target_effect["related_math"]), (got.sets[5], got.set_effects["related_math"][5]))
    for s, effect in cases:
        with causal.intervene(tiny.bridge, causal.Condition.on_heads("x", s, 0.0)):
            after = causal.continuation_logprob(tiny.hf, rows).exp().numpy()
        np.testing.assert_allclose(effect, after - before, atol=1e-5)
    assert got.to_results()["n_sets"] == 27 and "rank" in got.summary()
    with pytest.raises(ValueError, match="empty"):
        tc.head_set_enumeration(tiny, PROBLEMS, [])


def test_efficiency_bootstrap_and_condition_effect():
    on = {"metric": np.tile([0.5, 0.2, 0.0], (6, 1)), "clean": np.zeros(6), "corrupted": np.ones(6)}
    off = {"metric": np.tile([0.9, 0.6, 0.1], (5, 1)), "clean": np.zeros(5), "corrupted": np.ones(5)}
    est, draws = tc.efficiency_bootstrap(on, off, n_boot=50)
    assert est == pytest.approx(np.mean([0.5, 0.8, 1.0]) - np.mean([0.1, 0.4, 0.9])) and len(draws) == 50
    assert np.allclose(draws, est)                                    # identical pairs: no resampling noise
    treated, base = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0])
    e = tc.condition_effect(treated, base, n_boot=200)
    assert e["estimate"] == pytest.approx(0.5) and e["null"].kind == "permutation" and 0 < e["p"] <= 1
