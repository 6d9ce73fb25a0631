"""Notebook 05 against its nulls (toolkit.studies.think_on_off.claims, toolkit.studies.think_on_off.sets): stable head
sets and the stable off-only set, edges for a recovery level with intervals, sampled placebo sets, pass@k against
success@k over sample orders, the efficiency bootstrap, condition effects, claims that are never scored on NaN, and
the saved results."""

import itertools
import math

import numpy as np
import pytest

from toolkit.core.answers import per_problem_at_k
from toolkit.evaluation import stability
from toolkit.organism.tasks import Example
from toolkit.studies import think_on_off as th
from toolkit.studies.think_on_off import claims as tc
from toolkit.studies.think_on_off import metrics as tm
from toolkit.studies.think_on_off import sets as ts

PROBLEMS = [Example("linear", "Solve for x: 2x + 1 = x + 4", "", "x = 3"),
            Example("linear", "Solve for x: 3x + 2 = x + 8", "", "x = 3"),
            Example("linear", "Solve for x: 5x = 4x + 2", "", "x = 2")]


def boot(heads: np.ndarray, full) -> stability.CircuitBootstrap:
    """A bootstrap of hand-made resampled head sets ``[B, L, H]`` (bool) and all-pairs heads ``full``."""
    grid = np.zeros(heads.shape[1:], bool)
    for h in full:
        grid[h] = True
    return stability.CircuitBootstrap(None, 0, 0.8, 0, np.ones((len(heads), 1)), None, heads.astype(bool), None,
                                      None, grid, None)


def inclusion(rates: dict, b: int = 10) -> np.ndarray:
    """``[b, 2, 2]`` resampled head sets with head h in the first ``rates[h] * b`` resamples."""
    out = np.zeros((b, 2, 2), bool)
    for h, r in rates.items():
        out[:round(r * b), h[0], h[1]] = True
    return out


def test_stable_off_only_set_is_stable_in_think_off_and_rare_in_think_on():
    on = boot(inclusion({(0, 0): 1.0, (0, 1): 0.7, (1, 0): 0.4}), [(0, 0), (0, 1)])
    off = boot(inclusion({(0, 0): 1.0, (0, 1): 0.9, (1, 0): 0.8, (1, 1): 0.5}), [(0, 0), (0, 1), (1, 0)])
    s = ts.StableComparison(on, off)
    assert s.stable_on == {(0, 0)} and s.stable_off == {(0, 0), (0, 1), (1, 0)}
    # (0, 1) is stable in think-off but in the think-on circuit on 70% of resamples: not off-only
    assert s.off_only == {(1, 0)} and s.stable_shared == {(0, 0)}
    assert ts.StableComparison(on, off, on_max=0.3).off_only == frozenset()
    np.testing.assert_array_equal(s.head_count_draws(), off.n_heads - on.n_heads)
    est, draws = s.shared_share()
    assert est == 1.0 and np.all(draws == 1.0)  # every think-on head is in the think-off circuit
    assert s.to_results()["off_only"] == ["L1H0"]


def curve(recovered_per_pair: list[list[float]], sizes=(5, 10, 20)):
    m = np.array(recovered_per_pair, float)  # KL-like: clean 0, corrupted 1, so recovered = 1 - metric
    return {"metric": 1 - m, "clean": np.zeros(len(m)), "corrupted": np.ones(len(m)), "n_edges": np.array(sizes)}


def test_edges_for_a_recovery_level_with_bootstrap_intervals():
    on = curve([[0.9, 1.0, 1.0]] * 4)
    off = curve([[0.1, 0.5, 0.85], [0.1, 0.6, 0.9], [0.2, 0.4, 0.6], [0.0, 0.5, 0.3]])
    assert ts.edges_for_level(on, np.arange(4)) == 5
    assert ts.edges_for_level(off, np.arange(4)) == math.inf  # mean at 20 edges: 0.6625
    assert ts.edges_for_level(off, np.array([0, 1])) == 20
    got = ts.edges_bootstrap({"think_on": on, "think_off": off}, 0.8, n_boot=200, seed=1)
    assert np.all(got["think_on"][1] == 5) and set(got["think_off"][1]) <= {20.0, math.inf}
    lo, hi = ts.interval(got["think_off"][1])
    assert lo == 20 and hi == math.inf
    est, draws = tc.edges_difference(got, largest=20)
    assert est == 21 - 5 and set(draws) <= {15.0, 16.0}


def test_success_at_k_over_every_order_equals_pass_at_k():
    rng = np.random.default_rng(3)
    correct = rng.random((7, 5)) < 0.4
    exact = tm.success_over_orders(correct)
    np.testing.assert_allclose(exact, per_problem_at_k(correct, "pass"), atol=1e-12)
    # the same by brute force on one problem: the mean over the 120 orders of "any of the first k correct"
    row = correct[0]
    brute = [np.mean([any(row[list(p[:k])]) for p in itertools.permutations(range(5))]) for k in range(1, 6)]
    np.testing.assert_allclose(exact[0], brute)
    approx = tm.success_over_orders(correct, n_orders=4000, seed=0)
    assert np.abs(approx - exact).max() < 0.05
    with pytest.raises(ValueError, match="too many"):
        tm.success_over_orders(np.zeros((2, 9), bool))


def fake_results(rates, n_problems=20, n=4, seed=0):
    rng = np.random.default_rng(seed)
    out = {}
    for c in rates:
        s = th.Samples(c)
        s.correct["related_math"] = rng.random((n_problems, n)) < rates[c]
        out[c.name] = s
    return out


def test_claims_without_an_off_only_set_are_unmeasured_never_scored_on_nan():
    results = fake_results({th.condition("think_on", True): 0.9, th.condition("think_off", False): 0.3})
    on = boot(inclusion({(0, 0): 1.0}), [(0, 0)])
    off = boot(inclusion({(0, 0): 1.0, (1, 1): 0.6}), [(0, 0), (1, 1)])
    stable = ts.StableComparison(on, off)
    assert not stable.off_only
    edges = {"think_on": (5.0, np.full(50, 5.0)), "think_off": (math.inf, np.full(50, math.inf))}
    claims = tc.register_claims(results, tm.group_matrix, stable=stable, edges=edges, largest=20,
                                efficiency=(0.3, np.linspace(0.1, 0.5, 50)), enumeration=None, placebos=None,
                                n_boot=100)
    unmeasured = [c for c in claims if c.note.startswith(tc.UNMEASURED)]
    assert {c.id for c in unmeasured} == {"off-only-ablation-helps", "off-only-ablation-specific",
                                          "off-only-scale-down-helps", "off-only-scale-down-specific",
                                          "off-only-heads-specific", "ablation-ahead-early", "ablation-behind-late"}
    assert all(c.verdict == "inconclusive" and c.reason == "not-measured" and c.null.n == 0 for c in unmeasured)
    for c in claims:
        if c not in unmeasured:
            assert all(math.isfinite(v) for v in (c.estimate, *c.ci)), c
        # every claim declares its kind, smallest effect (with the reason) and controls, measured or not
        assert c.sesoi > 0 and c.sesoi_reason and c.controls == ("random",), c
        assert c.kind == ("check" if c.id.startswith("think-on-beats-off") else "finding"), c
    gap = claims["think-on-beats-off-related-math"]  # 0.9 against 0.3 on 20 problems: far beyond the 0.06 SESOI
    assert gap.verdict == "reproduces" and gap.ci[0] > gap.sesoi and (gap.n, gap.unit) == (20, "problems")
    edges = claims["off-circuit-needs-more-edges"]
    assert edges.estimate == 16 and edges.ci == (16, 16)  # every resample gives 16: nothing resampled can move it
    assert (edges.verdict, edges.reason) == ("inconclusive", "no-interval")
    assert claims["off-only-ablation-helps"].paper_effect.startswith("AIME'24 30.0 → 36.6")
    record = claims["off-only-ablation-helps"].to_dict()
    assert record["estimate"] is None and record["verdict"] == "inconclusive"


def placebos_ranked(target: float, others: list[float], n_problems: int = 12):
    """Sampled placebos whose pass@1 change (one sample per problem) is ``target`` for the off-only set and
    ``others`` for the other sets, in the share of problems solved after the edit (think-off solves none)."""
    def solved(share):
        return (np.arange(n_problems) < round(share * n_problems))[:, None]

    return ts.SampledPlacebos((1, 0), 0.0, "related_math", [(k,) for k in range(len(others))],
                              np.zeros((n_problems, 1), bool), solved(target), np.stack([solved(o) for o in others]),
                              True)


def test_placebo_set_claims_decide_both_ways_from_ranks():
    results = fake_results({th.condition("think_on", True): 0.9, th.condition("think_off", False): 0.3,
                            th.condition("think_off + ablation", False, [(1, 0)], 0.0): 0.3})
    stable = ts.StableComparison(boot(inclusion({(0, 0): 1.0}), [(0, 0)]),
                                 boot(inclusion({(0, 0): 1.0, (1, 0): 1.0}), [(0, 0), (1, 0)]))
    edges = {"think_on": (5.0, np.full(50, 5.0)), "think_off": (10.0, np.full(50, 10.0))}
    kw = dict(stable=stable, edges=edges, largest=20, efficiency=(0.3, np.linspace(0.1, 0.5, 50)), enumeration=None,
              n_boot=200)
    others = [0.25 + 0.01 * k for k in range(30)]
    best = tc.register_claims(results, tm.group_matrix, placebos={"ablation": placebos_ranked(0.75, others)}, **kw)
    c = best["off-only-ablation-specific"]  # above all 30 sets: rank p = 1/31, far over the SESOI
    assert c.null.kind == "placebo-sets" and c.p_value == pytest.approx(1 / 31) and c.p_opposite == 1.0
    assert c.verdict == "reproduces"
    worst = tc.register_claims(results, tm.group_matrix, placebos={"ablation": placebos_ranked(0.0, others)}, **kw)
    c = worst["off-only-ablation-specific"]  # below all 30 sets: the rank from the other end decides
    assert c.p_value == 1.0 and c.p_opposite == pytest.approx(1 / 31)
    assert (c.verdict, c.reason) == ("contradicts", "opposite")
    middle = tc.register_claims(results, tm.group_matrix, placebos={"ablation": placebos_ranked(0.42, others)}, **kw)
    c = middle["off-only-ablation-specific"]  # in the middle of the sets: neither rank is below 0.05
    assert c.verdict == "inconclusive" and min(c.p_value, c.p_opposite) > 0.05


def test_sampled_placebo_sets_exclude_the_target_and_score_every_set(tiny):
    target = [(1, 2)]
    conds = [th.condition("think_off", False), th.condition("think_off + ablation", False, target, 0.0)]
    kwargs = dict(n_samples=2, max_new_tokens_off=6)
    results = th.run_conditions(tiny, conds, {"related_math": PROBLEMS}, show_progress=False, seed=3, **kwargs)
    got = ts.sampled_placebos(tiny, target, {"ablation": 0.0}, PROBLEMS, results, task="related_math", n_sets=10,
                              seed=3, **kwargs)["ablation"]
    assert got.exhaustive and len(got.sets) == 7 and (1, 2) not in {s[0] for s in got.sets}
    assert got.placebo.shape == (7, 3, 2) and got.target.shape == (3, 2)
    direct = th.sample_condition(tiny, th.condition("p", False, got.sets[4], 0.0), {"related_math": PROBLEMS},
                                 seed=3, **kwargs).correct["related_math"]
    np.testing.assert_array_equal(got.placebo[4], direct)
    test = got.test("pass", 1, n_boot=50)
    assert test.n_sets == 7 and 1 <= test.rank <= 8
    assert not ts.sampled_placebos(tiny, target, {"ablation": 0.0}, PROBLEMS, results, task="related_math",
                                   n_sets=3, seed=3, **kwargs)["ablation"].exhaustive
    with pytest.raises(ValueError, match="empty"):
        ts.sampled_placebos(tiny, [], {"ablation": 0.0}, PROBLEMS, results, task="related_math")


def test_efficiency_bootstrap_and_condition_effect():
    on = {"metric": np.tile([0.5, 0.2, 0.0], (6, 1)), "clean": np.zeros(6), "corrupted": np.ones(6)}
    off = {"metric": np.tile([0.9, 0.6, 0.1], (5, 1)), "clean": np.zeros(5), "corrupted": np.ones(5)}
    est, draws = tc.efficiency_bootstrap(on, off, n_boot=50)
    assert est == pytest.approx(np.mean([0.5, 0.8, 1.0]) - np.mean([0.1, 0.4, 0.9])) and len(draws) == 50
    assert np.allclose(draws, est)                                    # identical pairs: no resampling noise
    treated, base = np.array([1.0, 1.0, 0.0, 1.0]), np.array([0.0, 0.0, 0.0, 1.0])
    e = tc.condition_effect(treated, base, n_boot=200)
    assert e["estimate"] == pytest.approx(0.5) and e["null"].kind == "permutation" and 0 < e["p"] <= 1


def test_notebook_05_saves_every_step_under_its_keys():
    from types import SimpleNamespace

    from toolkit.evaluation.claims import Claims, Null
    from toolkit.run.results import _jsonable
    from toolkit.studies.think_on_off import results as tr

    on = boot(inclusion({(0, 0): 1.0}), [(0, 0)])
    off = boot(inclusion({(0, 0): 1.0, (1, 0): 0.9}), [(0, 0), (1, 0)])
    modes = ("think_on", "think_off")
    circuits = th.ModeCircuits({"think_on": [0] * 3, "think_off": [0] * 2}, {},
                               {m: SimpleNamespace(n_edges=n) for m, n in zip(modes, (4, 6))}, {},
                               th.head_sets([(0, 0)], [(0, 0), (1, 0)]), top_n=6)
    by_size = th.Efficiency([{"top_n": 6}], {m: {"n_edges": [4, 6], "recovered": [0.5, 0.9], "metric": [1.0, 0.1]}
                                             for m in modes}, {"think_on": 6, "think_off": None})
    resampled = tr.Resampled(ts.StableComparison(on, off), {m: curve([[0.5, 0.9]], sizes=(4, 6)) for m in modes},
                             {"think_on": (6.0, np.full(10, 6.0)), "think_off": (math.inf, np.full(10, math.inf))},
                             (0.2, np.linspace(0, 0.4, 11)))
    claims = Claims("05_think_on_off")
    claims.add("c", paper="P", statement="s", measure="m", estimate=1.0, ci=(0.5, 1.5), null=Null.target(0),
               direction=1, kind="target")
    correct = np.array([[True, False], [False, False]])
    at_k = tm.AtK({"think_on": 1}, {"think_on": 2}, correct, per_problem_at_k(correct, "pass"),
                  per_problem_at_k(correct, "success"), tm.success_over_orders(correct))
    saved = tr.ThinkOnOffResults(circuits, by_size, resampled, tr.KeyStep(circuits, resampled),
                                 th.baseline_conditions(), {1: {"think_on": {}}}, {}, at_k, {}, None, claims,
                                 model="organism", positions="answer", n_problems=2, n_samples=2,
                                 n_random=0).to_results()
    assert list(saved) == ["model", "top_n", "positions", "n_problems", "n_samples", "n_random", "head_sets",
                           "head_set_sizes", "sweep", "circuit_edges", "pairs", "faithfulness", "edges_for_80pct",
                           "edges_for_80pct_bootstrap", "stable_sets", "key_step", "conditions", "table",
                           "effects_pass@1", "pass_at_k", "success_at_k", "success_over_orders",
                           "sampled_placebo_sets", "head_count_off_minus_on", "efficiency_on_minus_off",
                           "placebo_sets", "verdicts"]
    assert saved["head_set_sizes"] == {"on_circuit": 1, "off_circuit": 2, "on_only": 0, "off_only": 1, "shared": 1}
    assert saved["pairs"] == {"think_on": 3, "think_off": 2} and saved["circuit_edges"] == {"think_on": 4,
                                                                                          "think_off": 6}
    assert saved["faithfulness"]["think_on"] == {"n_edges": [4, 6], "recovered": [0.5, 0.9]}
    assert saved["edges_for_80pct_bootstrap"]["think_on"] == {"estimate": 6.0, "ci": [6.0, 6.0]}
    assert _jsonable(saved, "results")["edges_for_80pct_bootstrap"]["think_off"] == {"estimate": None,
                                                                                   "ci": [None, None]}
    assert saved["key_step"]["pairs"] == saved["pairs"] and saved["key_step"]["on_share_in_off"] == 1.0
    assert [c["name"] for c in saved["conditions"]] == ["think_on", "think_off"] and saved["table"] == {
        "pass@1": {"think_on": {}}}
    assert saved["success_over_orders"]["think_off"] == saved["success_over_orders"]["pass"] == [0.25, 0.5]
    assert saved["head_count_off_minus_on"]["estimate"] == 1
    assert saved["efficiency_on_minus_off"] == {"estimate": 0.2, "bootstrap": pytest.approx([0.01, 0.2, 0.39])}
    assert saved["placebo_sets"] is None and saved["verdicts"] == {"c": "reproduces"} and resampled.largest == 6


def test_claim_texts_are_computed_from_the_model_never_the_organism():
    results = fake_results({th.condition("think_on", True): 0.9, th.condition("think_off", False): 0.3})
    on, off = np.zeros((10, 3, 5), bool), np.zeros((10, 3, 5), bool)  # 3 layers × 5 heads, not the organism's 4 × 4
    on[:, 0, 0] = off[:, 0, 0] = True
    off[:6, 2, 4] = True
    on, off = boot(on, [(0, 0)]), boot(off, [(0, 0), (2, 4)])
    edges = {"think_on": (5.0, np.full(50, 5.0)), "think_off": (8.0, np.full(50, 8.0))}
    claims = tc.register_claims(results, tm.group_matrix, stable=ts.StableComparison(on, off), edges=edges,
                                largest=20, efficiency=(0.3, np.linspace(0.1, 0.5, 50)), enumeration=None,
                                placebos=None, n_boot=100)
    assert "the model has 15 heads (3 layers × 5)" in claims["off-circuit-has-more-heads"].note
    for c in claims:
        assert "/" not in c.statement, c
        assert not any("organism" in t.lower() for t in (c.statement, c.measure, c.note, c.sesoi_reason)), c
