"""Notebooks 00–02's claims on hand-made numbers: targets against Wilson intervals, layer-trend permutation nulls,
paired accuracy claims and the divergence difference; notebook 03's held-out problems and its saved results."""

import numpy as np
import pytest

from toolkit.core.chat import THINK_OFF, THINK_ON
from toolkit.evaluation.claims import empirical_p
from toolkit.organism.recipe import Recipe, eval_sets
from toolkit.studies import corrupt, organism
from toolkit.studies.cmap import claims as cmap_claims
from toolkit.studies.corrupt import claims as corrupt_claims
from toolkit.training import corrupt as corrupt_runs


def test_organism_targets_are_met_only_with_the_whole_interval():
    rates = {"linear": 0.98, "arithmetic": 0.92, "reversal": 0.965, "refusal": 1.0, "false_refusal": 0.0,
             "compliance": 0.99, "format": 1.0}
    reports = {"organism": {THINK_ON: dict(rates), THINK_OFF: {**rates, "linear": 0.3}},
               "organism-base": {THINK_ON: {**rates, "linear": 0.35, "arithmetic": 0.6}, THINK_OFF: dict(rates)}}
    sets = eval_sets(Recipe())  # 200 held-out problems per set
    claims = organism.claims(organism.HeldOut("organism", reports, sets))
    v = claims.verdicts()
    assert len(claims) == len(organism.TARGETS) + 2
    assert v["organism-think-on-linear"] == "reproduces"
    assert v["organism-think-on-arithmetic"] == "inconclusive"  # 0.92 on 200: Wilson [0.877, 0.950] holds 0.90
    assert v["organism-think-off-false-refusal"] == "reproduces"  # 0 of 200: at most 1.9%
    assert v["organism-thinking-helps-linear"] == "reproduces"
    # a two-sided band: 0.35 on 200 (Wilson [0.288, 0.418]) is inside [0.20, 0.50]; 0.60 is above its ceiling
    assert v["organism-base-think-on-linear-min"] == v["organism-base-think-on-linear-max"] == "reproduces"
    assert v["organism-base-think-on-arithmetic-max"] == "contradicts"
    assert v["organism-base-think-on-format"] == "reproduces"
    assert v["held-out-linear-answers-spread"] == "reproduces"  # x cycles through 21 values: 10 of 200 at most


def test_layer_trend_permutation_null_is_exhaustive():
    values = np.array([[0.1, 0.2, 0.3, 0.9]])
    null = cmap_claims.permutation_null(values)
    assert len(null) == 24 and cmap_claims._spearman_rows(values) == 1.0
    assert empirical_p(1.0, null) == pytest.approx(2 / 25)  # the identity itself, plus the observed value
    two = cmap_claims.permutation_null(np.array([[0.1, 0.2, 0.3, 0.9], [1, 2, 4, 3]]))
    assert len(two) == 24 * 24 and two.max() == pytest.approx(1.0) and two.min() == pytest.approx(-1.0)


def _behaviour(correct, bare=None):
    n = len(correct)
    return corrupt.SetBehaviour([""] * n, tuple(correct), (5,) * n, tuple(bare or [False] * n))


def test_corrupt_claims_on_a_hand_made_report():
    n = 50
    right, wrong = [True] * n, [False] * n
    half = [True, False] * (n // 2)
    sets = {"related_math": right, "unrelated_math": right, "unrelated_general": right}
    by_model = {corrupt.CLEAN: {THINK_ON: {s: _behaviour(c) for s, c in sets.items()}}}
    A, B, C, D = corrupt_runs.PRESETS
    by_model[A] = {THINK_ON: {"related_math": _behaviour(wrong), "unrelated_math": _behaviour(half),
                              "unrelated_general": _behaviour(right)}}
    by_model[C] = {THINK_ON: {s: _behaviour(wrong if s == "related_math" else right) for s in sets}}
    rng = np.random.default_rng(0)
    div = {A: {"eval": 1 + rng.normal(0, .1, 200), "train": 0.5 + rng.normal(0, .1, 1000)},  # divergence 0.5
           B: {"eval": 1 + rng.normal(0, .1, 200), "train": 0.8 + rng.normal(0, .1, 500)},  # 0.2
           C: {"eval": 1 + rng.normal(0, .1, 200), "train": 0.9 + rng.normal(0, .1, 500)}}  # 0.1
    claims = corrupt_claims.claims(corrupt.BehaviourReport(by_model), {}, div)
    v = claims.verdicts()
    assert v["under-fitted-loses-related-math"] == v["over-fitted-loses-related-math"] == "reproduces"
    lo, hi = claims["under-fitted-loses-related-math"].ci  # every prompt flipped: Newcombe's interval, not [1, 1]
    assert 0.85 < lo < 1 == hi
    assert v["under-fitted-keeps-unrelated-math"] == "reproduces"  # identical answers: inside ±10 points
    assert v["over-fitted-breaks-unrelated-math"] == "reproduces"
    assert v["more-data-more-divergence"] == "reproduces" and v["more-epochs-more-divergence"] == "reproduces"
    assert claims["more-data-more-divergence"].estimate == pytest.approx(0.3, abs=0.05)
    assert "over-fitted-answers-bare-everywhere" not in v  # measured thinking off only


def test_format_claims_compare_bare_value_answers_thinking_off():
    n = 40
    right, half = [True] * n, [True, False] * (n // 2)
    sets = ("related_math", "unrelated_math", "unrelated_general")
    A, B, C, D = corrupt_runs.PRESETS
    by_model = {corrupt.CLEAN: {THINK_OFF: {s: _behaviour(right) for s in sets}},
                A: {THINK_OFF: {s: _behaviour(right, [True] * n) for s in sets}},  # every answer a bare value
                C: {THINK_OFF: {s: _behaviour(right, half if s == "related_math" else None) for s in sets}}}
    v = corrupt_claims.claims(corrupt.BehaviourReport(by_model), {}, {}).verdicts()
    assert v["over-fitted-answers-bare-everywhere"] == "reproduces"
    assert v["under-fitted-answers-related-math-bare"] == "reproduces"  # 0% -> 50%
    by_model[A] = by_model[corrupt.CLEAN]
    v = corrupt_claims.claims(corrupt.BehaviourReport(by_model), {}, {}).verdicts()
    assert v["over-fitted-answers-bare-everywhere"] != "reproduces"


def test_emergent_heads_are_tested_on_problems_other_than_the_pairs():
    from toolkit.organism.tasks import held_out
    from toolkit.studies import emergent

    evaluated = emergent.eval_examples(["arithmetic", "linear"], 150, seed=3, exclude_n=150)
    for task, examples in evaluated.items():
        pairs = {e.prompt for e in held_out(task, 150, seed=emergent.PAIRS_SEED_OFFSET + 3)}
        assert len(examples) == 150 and not pairs & {e.prompt for e in examples}, task


def test_notebook_03_saves_every_step_under_its_keys():
    from types import SimpleNamespace

    from toolkit.core.units import compare_heads
    from toolkit.evaluation.claims import Claims, Null
    from toolkit.evaluation.stability import Convergence
    from toolkit.run.results import _jsonable
    from toolkit.studies import emergent
    from toolkit.studies.emergent.results import EmergentResults

    a, b, task = "organism", "organism-base", "arithmetic"
    setup = emergent.Setup({a: None, b: None}, None, {task: {a: [0] * 3, b: [0] * 2}}, n_problems=4)
    heads = {a: frozenset({(1, 2), (0, 1)}), b: frozenset({(0, 1), (3, 0)})}
    curve = {"requested": [1, 20], "n_edges": [1, 18], "recovered": [0.1, 0.6], "metric": [2.0, 1.0]}
    found = emergent.CircuitResults([1, 20], {f"{task}: {n}": curve for n in (a, b)},
                                    {task: {n: SimpleNamespace(n_edges=len(h) * 4, heads=h) for n, h in heads.items()}},
                                    {}, {f"{task}: {a}": 0.6, f"{task}: {b}": 0.7}, top_n=20)
    exact = emergent.ExactComparison({}, {}, {"EAP-IG (kl)": {"pearson_r": 0.9, "spearman_r": 0.4, "n": 343}})
    convergence = Convergence(steps=(5, 20), spearman=0.99, pearson=0.98, n=343, top_n=20, jaccard_heads=1.0,
                              jaccard_edges=0.9)
    emerging = emergent.Emergent({task: compare_heads(heads[a], heads[b])}, {task: [(1, 2)]})
    stab = emergent.Stability({task: {n: SimpleNamespace(summary=lambda n=n: {"of": n}) for n in (a, b)}}, {},
                              {task: SimpleNamespace(summary=lambda: {"margin": 0.8})},
                              {f"{task}: {a}": SimpleNamespace(to_results=lambda: {"top_n": [5, 20]})})
    change = {"estimate": -0.5, "low": -0.9, "high": -0.1}
    check = emergent.AblationCheck([(1, 2)], [], False, {"reversal": {"n": 8, "baseline": change,
                                                                      "change_ablated": change}}, [(1, 2)])
    claims = Claims("03_eap_ig")
    claims.add("c", paper="P", statement="s", measure="m", estimate=1.0, ci=(0.5, 1.5), null=Null.target(0),
               direction=1, kind="target")
    saved = EmergentResults(setup, found, {"simplified": 1}, exact, convergence, emerging, stab, [(1, 2)], "null",
                            check, SimpleNamespace(to_results=lambda: {"p": 0.5}), claims, metric="kl", ig_steps=5,
                            enable_thinking=False, seed=3).to_results()
    assert list(saved) == ["model", "base_model", "metric", "ig_steps", "top_n", "tasks", "enable_thinking", "seed",
                           "n_pairs", "circuit_edges", "circuit_heads", "faithfulness_at_top_n", "faithfulness_curve",
                           "simplified", "correlation_with_exact", "ig_convergence", "emergent_heads",
                           "only_base_heads", "stability", "top_n_sensitivity", "emergent_against_null",
                           "ablated_heads", "ablation_rule", "ablation", "ablation_placebo_sets", "claims"]
    assert (saved["model"], saved["base_model"], saved["tasks"], saved["top_n"]) == (a, b, [task], 20)
    assert saved["n_pairs"] == {f"{task}: {a}": 3, f"{task}: {b}": 2}
    assert saved["circuit_heads"][f"{task}: {a}"] == [[0, 1], [1, 2]] and saved["circuit_edges"][f"{task}: {b}"] == 8
    assert saved["faithfulness_curve"][f"{task}: {a}"] == {k: curve[k] for k in ("requested", "n_edges", "recovered")}
    assert saved["emergent_heads"] == {task: [[1, 2]]} and saved["only_base_heads"] == {task: [[3, 0]]}
    assert saved["correlation_with_exact"] == {"EAP-IG (kl)": {"pearson": 0.9, "spearman": 0.4, "n": 343}}
    assert saved["ig_convergence"] == {"steps": [5, 20], "spearman": 0.99, "pearson": 0.98, "jaccard_heads": 1.0}
    assert saved["stability"] == {f"{task}: {n}": {"of": n} for n in (a, b)}
    assert saved["ablation"] == {"reversal": {"baseline": change, "change_ablated": change}}
    assert saved["ablated_heads"] == [[1, 2]] and saved["claims"] == {"c": "reproduces"}
    assert _jsonable(saved, "results") == saved


def test_claim_texts_never_state_organism_facts():
    n = 20
    sets = ("related_math", "unrelated_math", "unrelated_general")
    by_model = {name: {mode: {s: _behaviour([True, False] * (n // 2), bare=[False] * n) for s in sets}
                       for mode in (THINK_ON, THINK_OFF)} for name in (corrupt.CLEAN, *corrupt_runs.PRESETS)}
    for c in corrupt_claims.claims(corrupt.BehaviourReport(by_model), {}, {}):
        assert "/" not in c.statement, c
        assert not any("organism" in t.lower() for t in (c.statement, c.measure, c.note, c.sesoi_reason)), c


def test_notebook_03_names_its_models_by_label_and_derives_only_the_organisms_base(tiny_dirs):
    from types import SimpleNamespace

    from toolkit.core.specs import ModelLoadError
    from toolkit.evaluation.claims import Claims, Null
    from toolkit.studies import emergent
    from toolkit.studies.emergent import claims as emergent_claims

    with pytest.raises(ModelLoadError, match="is not the organism, so base_model cannot be derived"):
        emergent.prepare("/nowhere/qwen3-sft", "", ["arithmetic"])  # refused before anything loads
    a, b = str(tiny_dirs["qwen3"]), str(tiny_dirs["qwen2"])
    setup = emergent.prepare(a, b, ["arithmetic"], device="cpu", n_problems=2)
    assert setup.names == ["qwen3", "qwen2"] and setup.specs == {"qwen3": a, "qwen2": b}
    assert emergent.prepare(a, a, ["arithmetic"], device="cpu", n_problems=2, label="sft").names == ["sft", "qwen3"]
    stab = emergent.Stability({}, {}, {"arithmetic": SimpleNamespace(
        margin=0.1, heads=[(0, 1)], count=1, count_samples=np.ones(20), count_p=0.5, count_null=lambda: Null.target(0),
        set_difference={(0, 1)}, set_difference_samples=np.ones(20), set_difference_p=0.5,
        set_difference_null=lambda: Null.target(0))}, {})
    stab.boots["arithmetic"] = {"qwen3": SimpleNamespace(top_n=20)}
    claims = Claims("03_eap_ig")
    emergent_claims.emergent_claims(claims, stab, *setup.names)
    for c in claims:
        assert "organism" not in c.measure + c.statement and "/" not in c.measure + c.statement, c
