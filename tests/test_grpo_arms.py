"""Notebook 04's three matched arms (SFT, distillation, GRPO from one start) and the statistics of their claims:
held-out accuracy gains, overlap of emergent sets, survival of emergent heads, the layers they sit in (ranked both
ways, the selection resampled), and the count–reward correlation with the run as its unit."""

import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest

from toolkit.methods.dynamics import head_dynamics, head_survival
from toolkit.studies import grpo_dynamics as study
from toolkit.studies.grpo_dynamics import claims as grpo_claims
from toolkit.studies.grpo_dynamics import comparisons as grpo_comparisons
from toolkit.training import problems, traces
from toolkit.training.distill import DistillSettings
from toolkit.training.grpo import GRPOSettings
from toolkit.training.traces import SFTSettings


def test_matched_arms_share_tasks_mode_steps_spacing_and_completions_per_step():
    arms = study.matched_arms(steps=20, save_every=5, prompts_per_step=2, num_generations=8)
    assert tuple(arms) == study.ARMS == ("SFT", "Distill", "GRPO")
    assert [type(s) for s in arms.values()] == [SFTSettings, DistillSettings, GRPOSettings]
    for name in ("model", "tasks", "steps", "save_every", "n_train", "seed"):
        assert len({getattr(s, name) for s in arms.values()}) == 1, name
    assert arms["GRPO"].enable_thinking and arms["GRPO"].tasks == ("linear", "arithmetic")
    assert {study.completions_per_step(s) for s in arms.values()} == {16}
    assert arms["Distill"].teacher == "organism"
    assert arms["Distill"].max_new_tokens == arms["GRPO"].max_completion_length


@pytest.mark.parametrize("arm, change, message", [
    ("GRPO", {"tasks": ("linear",)}, "differ in tasks"),
    ("SFT", {"steps": 30}, "differ in steps"),
    ("Distill", {"save_every": 10}, "differ in save_every"),
    ("SFT", {"seed": 1}, "differ in seed"),
    ("GRPO", {"enable_thinking": False}, "enable_thinking=True"),
    ("SFT", {"batch_size": 8}, "completions per step"),
    ("Distill", {"teacher": "organism-base"}, "teacher is its student"),
])
def test_arms_that_differ_are_refused_naming_the_setting(arm, change, message):
    arms = study.matched_arms(steps=20, save_every=5)
    arms[arm] = dataclasses.replace(arms[arm], **change)
    with pytest.raises(ValueError, match=message):
        study.check_matched(arms)


def test_arms_in_another_order_or_of_the_wrong_kind_are_refused():
    arms = study.matched_arms(steps=20, save_every=5)
    with pytest.raises(ValueError, match="must be SFT: SFTSettings"):
        study.check_matched({k: arms[k] for k in ("GRPO", "SFT", "Distill")})
    with pytest.raises(ValueError, match="must be SFT: SFTSettings"):
        study.check_matched(arms | {"Distill": arms["SFT"]})


def test_sft_trains_on_generator_traces_and_distillation_on_teacher_samples(monkeypatch):
    """The two SFT-style arms differ only in their records: the generator's traces, or the teacher's samples
    (filtered to right answers with keep_correct)."""
    arms = study.matched_arms(steps=4, save_every=2, n_train=6)
    examples = problems.train_problems(arms["SFT"].tasks, 6)
    generator = traces.trace_records(examples)
    assert arms["SFT"].sft_records() == generator
    from toolkit.training import distill

    def teacher(settings, examples, device):  # a teacher that answers each prompt its own way: right, then wrong
        return [[f"<think>\nteacher {i}\n</think>\n\n{e.answer if i % 2 == 0 else 'x = 999'}"] for i, e in
                enumerate(examples)]

    monkeypatch.setattr(distill, "teacher_traces", teacher)
    records = arms["Distill"].sft_records()
    assert [r["answer"] for r in records] == [t[0] for t in teacher(None, examples, None)][::2]
    assert not {r["answer"] for r in records} & {r["answer"] for r in generator}
    kept_all = dataclasses.replace(arms["Distill"], keep_correct=False).sft_records()
    assert len(kept_all) == 6 and [r["prompt"] for r in kept_all] == [e.prompt for e in examples]


def test_accuracy_gain_is_paired_with_a_sign_flip_null():
    before = np.array([0, 0, 0, 0, 1, 1, 0, 0, 0, 0] * 4, float)
    after = np.array([1, 1, 1, 0, 1, 1, 1, 1, 0, 0] * 4, float)
    g = grpo_comparisons.accuracy_gain(before, after)
    assert g["estimate"] == pytest.approx(0.5) and g["ci"][0] > 0.3 and g["p"] < 0.01 and g["n"] == 40
    same = grpo_comparisons.accuracy_gain(before, before)
    assert same["estimate"] == 0 and same["p"] == 1.0
    with pytest.raises(ValueError, match="n_eval"):
        grpo_comparisons.accuracy_gain(np.array([]), np.array([]))


def _boot(full: list, resamples: list[list]) -> SimpleNamespace:
    def grid(heads):
        g = np.zeros((4, 4), bool)
        for h in heads:
            g[h] = True
        return g
    return SimpleNamespace(full_heads_grid=grid(full), heads=np.stack([grid(r) for r in resamples]))


def test_overlap_of_emergent_sets_leaves_out_base_heads_and_has_a_random_set_null():
    base = _boot([(0, 0), (0, 1)], [[(0, 0)]] * 3)
    a = _boot([(0, 0), (3, 1), (3, 2)], [[(3, 1), (3, 2)], [(3, 1)], [(0, 0), (3, 1), (3, 2)]])
    b = _boot([(0, 1), (3, 1), (2, 0)], [[(3, 1), (2, 0)], [(3, 1)], [(2, 0)]])
    o = grpo_comparisons.overlap_test(a, b, base, n_null=500)
    assert o["sizes"] == (2, 2) and o["pool"] == 14
    assert o["estimate"] == pytest.approx(1 / 3)  # {L3H1, L3H2} vs {L3H1, L2H0}
    assert 0 < o["ci"][0] < 0.1 and 0.9 < o["ci"][1] <= 1  # resamples: 1/3, 1 and 0
    assert 0 < np.mean(o["null"]) < 0.2 and 0 < o["p"] <= 1
    empty = grpo_comparisons.overlap_test(base, b, base)
    assert np.isnan(empty["estimate"]) and empty["p"] is None and not len(empty["null"])


def test_survival_of_emergent_heads():
    base = {(0, 0)}
    stays = head_dynamics(base, {1: {(0, 0), (3, 1)}, 2: {(3, 1)}, 3: {(3, 1), (2, 2)}})
    churns = head_dynamics(base, {1: {(1, 1)}, 2: {(1, 2)}, 3: {(1, 3)}})
    assert head_survival(stays) == {(3, 1): 1.0}  # L2H2 is born at the last checkpoint: left out
    assert head_survival(churns) == {(1, 1): 0.0, (1, 2): 0.0}
    s = grpo_comparisons.survival_test(stays, churns)
    assert s["estimate"] == 1.0 and s["n"] == (1, 2) and s["ci"] == (1.0, 1.0)
    assert np.isnan(grpo_comparisons.survival_test(head_dynamics(base, {1: {(2, 2)}}), churns)["estimate"])


def test_layer_test_against_every_same_size_set_outside_the_base():
    late = grpo_comparisons.layer_test({(7, 0), (7, 1)}, 8, 2, base_heads={(0, 0)})
    assert late["estimate"] == 1.0 and late["ci"] == (1.0, 1.0)
    assert len(late["null"]) == 15 * 14 // 2 - 1  # every other pair of the 15 heads outside the base
    assert late["reference"] == pytest.approx(np.mean(late["null"])) and late["p"] < 0.05
    early = grpo_comparisons.layer_test({(0, 1)}, 8, 2, base_heads={(0, 0)})
    assert early["estimate"] == 0.0 and early["p"] == 1.0
    none = grpo_comparisons.layer_test(set(), 4, 4, base_heads=set())
    assert np.isnan(none["estimate"]) and none["p"] is None


def test_parameters_that_leave_the_study_without_data_are_named():
    with pytest.raises(ValueError, match="multiple of save_every"):
        study.matched_arms(steps=4, save_every=10)
    with pytest.raises(ValueError, match="tasks is empty"):
        study.matched_arms(tasks=(), steps=4, save_every=2)
    with pytest.raises(ValueError, match="n_eval"):
        study.analyse_checkpoints({}, ["linear"], 8, study.SnapshotSettings(), ["linear"], 0)
    with pytest.raises(ValueError, match="n_circuit"):
        study.analyse_checkpoints({}, ["linear"], 0, study.SnapshotSettings(), ["linear"], 8)


def test_reweighting_is_zero_for_a_model_against_itself_and_the_null_is_resampling():
    import torch

    from toolkit.evaluation import emergence, stability
    from toolkit.methods import eap

    g = eap.Graph(2, 2, 1)
    rng = np.random.default_rng(0)
    per = torch.tensor(rng.normal(size=(12, g.n_sources, g.n_targets)))
    scores = eap.Scores(per.mean(0), g, per_example=per)
    bs = stability.bootstrap_circuit(scores, top_n=6, n_boot=20, seed=1)
    null = emergence.base_null(scores, top_n=6, n_null=10, n_inner=5)
    t = emergence.emergent_test(bs, bs, null)
    rw = grpo_comparisons.reweighting_test(t, bs, bs)
    assert rw["estimate"] == 0 and rw["all_pairs"] == 0 and rw["ci"] == (0.0, 0.0) and rw["p"] == 1.0
    assert len(rw["null"]) == 10 and (rw["null"] > 0).all()


def test_stable_dynamics_use_the_stable_heads_of_every_checkpoint():
    boot = lambda heads: SimpleNamespace(stable_heads=frozenset(heads))  # noqa: E731
    tests = SimpleNamespace(base={"fixed": boot({(0, 0), (1, 1)})},
                            boots={"fixed": {"SFT": {5: boot({(0, 0), (3, 2)}), 10: boot({(0, 0), (3, 2)})}}})
    (label, dyn), = grpo_claims.stable_dynamics(tests).items()
    assert label == "SFT" and dyn.steps == [5, 10] and dyn.emergent == [frozenset({(3, 2)})] * 2
    assert dyn.maintained == [frozenset({(0, 0)})] * 2


def test_most_frequent_answer_share():
    from toolkit.organism.tasks import Example

    ex = [Example("linear", f"p{i}", "", a) for i, a in enumerate(["x = 1", "x = 1", "x = 2", "x = 3"])]
    analysis = study.Analysis({}, {}, {"linear": ex}, {}, {}, [])
    assert analysis.most_frequent_share == {"linear": 0.5}


def test_layer_test_ranks_both_ways_and_its_interval_redoes_the_selection():
    late = grpo_comparisons.layer_test({(7, 0), (7, 1)}, 8, 2, base_heads={(0, 0)})
    assert late["p"] < 0.05 and late["p_opposite"] == 1.0  # the deepest pair: no set is deeper, every set shallower
    early = grpo_comparisons.layer_test({(0, 1)}, 8, 2, base_heads={(0, 0)}, direction=-1)
    assert early["p"] == pytest.approx(1 / 15) and early["p_opposite"] == 1.0  # the shallowest of 15 single heads
    # the selection redone on three resamples picked {L7H0, L7H1}, {L1H0} and nothing: depths 1, 1/7 and none
    selection = np.zeros((3, 8, 2), bool)
    selection[0, 7] = True
    selection[1, 1, 0] = True
    got = grpo_comparisons.layer_test({(7, 0), (7, 1)}, 8, 2, base_heads={(0, 0)}, selection=selection)
    assert np.allclose(got["draws"][:2], [1.0, 1 / 7]) and np.isnan(got["draws"][2])
    assert got["ci"] == pytest.approx((1 / 7 + 0.025 * (1 - 1 / 7), 1.0))  # the 2.5% and 97.5% of {1/7, 1}
    assert got["estimate"] == 1.0 and late["ci"] == (1.0, 1.0)  # the fixed selection alone: no width at all


def test_selection_bootstrap_reselects_every_checkpoint_on_the_start_models_resamples():
    import torch

    from toolkit.evaluation import stability
    from toolkit.methods import eap

    g = eap.Graph(2, 4, 2)

    def scores(routes):  # pair r's whole effect through head routes[r]
        per = torch.zeros(len(routes), g.n_sources, g.n_targets, dtype=torch.float64)
        for r, (layer, head) in enumerate(routes):
            per[r, 0, g.q_target(layer, head)] = per[r, g.head_source(layer, head), g.logits_target] = 5.0
        return eap.Scores(per.mean(0), g, per_example=per)

    start = scores([(0, 1)] * 4)
    base = stability.bootstrap_circuit(start, top_n=2, counts=np.eye(4, dtype=int)[[0, 1, 2, 3, 2]])
    # step 1 routes pair 2 through L1H2, step 2 is the start model again: L1H2 is tried on resamples holding pair 2
    got = grpo_comparisons.selection_bootstrap({0: start, 1: scores([(0, 1), (0, 1), (1, 2), (0, 1)]), 2: start},
                                               base)
    assert got["ever"].shape == (5, 2, 4) and not got["final"].any()
    np.testing.assert_array_equal(got["ever"][:, 1, 2], [False, False, True, False, True])
    assert got["ever"].sum() == 2  # nothing else is ever emergent
    pruned = got["ever"].sum((1, 2)) - got["final"].sum((1, 2))
    assert list(pruned) == [0, 0, 1, 0, 1]
    with pytest.raises(ValueError, match="checkpoint"):
        grpo_comparisons.selection_bootstrap({0: start}, base)


def test_count_reward_correlation_takes_the_run_as_its_unit():
    from toolkit.evaluation.claims import Claims, Null

    def verdict(per_run):
        claims = Claims("04_grpo_dynamics")
        return claims.add("r", paper="P", statement="s", measure="m", null=Null("permutation", 100), direction=1,
                          **grpo_comparisons.run_correlation(per_run), **grpo_claims.finding(0.3, "a scale"))

    one = verdict([0.95])  # one run, however strong its r over its checkpoints, cannot decide
    assert one.ci == (-1.0, 1.0) and one.p_value == 0.5 and one.p_floor == 0.5 and (one.n, one.unit) == (1, "runs")
    assert (one.verdict, one.reason) == ("inconclusive", "floor")
    three = verdict([0.8, 0.7, 0.9])  # every run agrees, but a sign flip over 3 runs cannot go below 1/8
    assert three.p_value == 0.125 and (three.verdict, three.reason) == ("inconclusive", "floor")
    five = verdict([0.8, 0.7, 0.9, 0.6, 0.75])
    assert five.p_value == 1 / 32 and five.verdict == "reproduces"
    flat = verdict([0.1, -0.1, 0.05, -0.05, 0.0])  # runs spread around 0, the interval below the SESOI of 0.3
    assert (flat.verdict, flat.reason) == ("contradicts", "absent")
    assert verdict([float("nan")]).reason == "not-measured"  # a constant count in every run: no r at all
