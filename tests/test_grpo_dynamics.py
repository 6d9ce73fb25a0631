"""Notebook 04's study (toolkit.studies.grpo_dynamics) and views: cached snapshots per weights, accuracy per
checkpoint, head scaling against a placebo, and the figures."""

import matplotlib

matplotlib.use("Agg")

import pytest  # noqa: E402
import torch  # noqa: E402
from test_dynamics import BASE, SNAPSHOTS  # noqa: E402  (the hand-made sequence of head sets)

from toolkit.core.cache import model_fingerprint  # noqa: E402
from toolkit.core.units import compare_heads  # noqa: E402
from toolkit.methods import dynamics  # noqa: E402
from toolkit.studies import grpo_dynamics as study  # noqa: E402
from toolkit.training.problems import eval_problems  # noqa: E402
from toolkit.views import grpo_dynamics as view  # noqa: E402


def test_figures_draw(tmp_path):
    dyn = dynamics.head_dynamics(BASE, SNAPSHOTS)
    series = study.RewardSeries("accuracy reward", [1, 2, 3], [0.1, 0.2, 0.3], {10: 0.1, 40: 0.3}, {})
    view.dynamics_figure(dyn, series, "GRPO").savefig(tmp_path / "a.png")
    view.heatmap_figure(dynamics.heatmap(dyn)).savefig(tmp_path / "c.png")
    view.heatmap_figure(dynamics.heatmap(dyn), "GRPO").savefig(tmp_path / "c2.png")
    ci = {"estimate": 0.1, "low": 0.0, "high": 0.2}
    result = study.HeadScaling([(0, 1)], 1, {"linear": ci},
                               {arm: {"linear": {"accuracy": ci, "change": ci, "changed": ci}}
                                for arm in ("×1.3", "random ×1.3")})
    assert "L0H1" in view.scaling_table(result) and "nothing to scale" in view.scaling_table(None)
    assert result.to_results() == {"×1.3": {"linear": {"accuracy": 0.1, "change": ci, "changed": 0.1}},
                                   "random ×1.3": {"linear": {"accuracy": 0.1, "change": ci, "changed": 0.1}},
                                   "heads": [(0, 1)]}
    view.checkpoint_map_figure(dyn, 3, 4, 4).savefig(tmp_path / "m.png")
    assert "<td>10</td><td>L2H0</td><td>1/1</td><td>40</td><td>0.75</td>" in view.cohort_table(dyn, "GRPO")
    box = view.explorer({"GRPO": dyn}, 4, 4)
    box.children[0].children[1].value = 2  # the checkpoint slider
    assert len(box.children[1].outputs) == 2


def test_head_scaling_identity_and_bad_heads(tiny):
    examples = eval_problems(n=4)
    got = study.head_scaling(tiny, [(0, 1), (1, 3)], examples, factors=(1.0,), max_new_tokens=4, samples=3)
    assert set(got.scaled) == {"×1", "random ×1"} and got.heads == [(0, 1), (1, 3)]
    for task, by in got.scaled["×1"].items():  # same seed, factor 1: the very same samples
        assert by["change"]["estimate"] == 0.0 and by["accuracy"] == got.baseline[task]
        assert by["changed"]["estimate"] == 0.0
    with pytest.raises(ValueError, match="out of range"):
        study.head_scaling(tiny, [(9, 0)], examples)


def test_snapshots_are_cached_per_weights_and_an_interrupted_analysis_continues(tmp_path, monkeypatch):
    from toolkit.methods import eap

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
    examples = eval_problems(("arithmetic",), 16)  # organism-base answers every equation alike (no pairs)
    settings = study.SnapshotSettings(ig_steps=2, top_n=30)
    specs = {0: "organism-base", 10: "organism", 20: "organism-base"}  # step 20: the same weights as step 0
    with pytest.raises(KeyboardInterrupt):
        study.snapshot_scores(specs, examples, settings)
    assert calls == ["organism-base", "organism"]
    fail[0] = False
    dyn = study.dynamics_of(study.snapshot_scores(specs, examples, settings), settings.top_n)
    assert calls == ["organism-base", "organism", "organism"]  # only the missing snapshot was computed
    study.snapshot_scores(specs, examples, settings)
    assert len(calls) == 3  # everything cached now
    # independently: the emergent heads are compare_heads' only_a of the two circuits
    folder = study.analysis_dir(examples, settings)
    base, post = (eap.select(eap.Scores.load(p), top_n=30, absolute=True, method="top", prune=True)
                  for p in (folder / f"{model_fingerprint(s)}.scores.json" for s in ("organism-base", "organism")))
    assert dyn.emergent[0] == compare_heads(post, base).only_a
    assert dyn.sets[1] == base.heads and dyn.emergent[1] == set()


def test_checkpoint_correct_is_cached_per_weights(tmp_path, monkeypatch):
    """Greedy answers of the organism per checkpoint spec, graded once per weights (step 20 shares step 0's)."""
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    examples = eval_problems(("arithmetic",), 4)
    got = study.checkpoint_correct({0: "organism-base", 20: "organism-base"}, examples, max_new_tokens=8)
    assert got[0].tolist() == got[20].tolist() and got[0].shape == (4,)
    assert len(list((tmp_path / "circuits" / "accuracy").glob("*.json"))) == 1


def test_head_scaling_of_all_heads_to_zero_breaks_the_organism():
    """An independent check on a real model: the organism solves equations with thinking; with every head of layer
    0 zeroed it cannot."""
    from toolkit.core import models

    organism = models.load("organism")
    examples = eval_problems(("linear",), 6)
    got = study.head_scaling(organism, [(0, h) for h in range(4)], examples, factors=(0.0,),
                             enable_thinking=True, max_new_tokens=80, control_seed=None)
    assert got.baseline["linear"]["estimate"] >= 0.8
    assert got.scaled["×0"]["linear"]["accuracy"]["estimate"] == 0.0
    assert got.scaled["×0"]["linear"]["change"]["estimate"] == -got.baseline["linear"]["estimate"]
    assert got.scaled["×0"]["linear"]["changed"]["estimate"] == 1.0


def test_correlation_statistics_and_the_pruning_null():
    """Effective n shrinks for autocorrelated series; a perfect count–reward relation has r = 1 and a small
    permutation p; the reward-halves difference; "tried and pruned" heads in resampled start-model circuits."""
    import numpy as np

    from toolkit.evaluation import stability
    from toolkit.methods import eap
    from toolkit.studies.grpo_dynamics import comparisons as gcmp

    trend = np.arange(10.0)
    assert gcmp.effective_n(trend, trend) == pytest.approx(10 * (1 - 0.7**2) / (1 + 0.7**2))  # lag-1 ρ = 0.7
    c = gcmp.count_reward([0, 1, 2, 3, 4, 5, 6, 7], [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8])
    assert c["r"] == pytest.approx(1.0) and c["p"] < 0.01 and c["n"] == 8 and c["ci"][0] > 0.9
    flat = gcmp.count_reward([2, 2, 2], [0.1, 0.2, 0.3])
    assert np.isnan(flat["r"]) and np.isnan(flat["p"])
    h = gcmp.reward_halves([1, 2, 3, 4], [0.0, 0.0, 1.0, 1.0])
    assert h["estimate"] == 1.0 and h["ci"] == (1.0, 1.0) and h["p"] < 0.2
    g = eap.Graph(2, 4, 2)
    per = torch.zeros(4, g.n_sources, g.n_targets, dtype=torch.float64)
    for r, (layer, head) in enumerate([(0, 1), (0, 1), (1, 2), (0, 1)]):  # pair 2 routes through another head
        per[r, 0, g.q_target(layer, head)] = per[r, g.head_source(layer, head), g.logits_target] = 5.0
    bs = stability.bootstrap_circuit(eap.Scores(per.mean(0), g, per_example=per), top_n=2,
                                     counts=np.eye(4, dtype=int)[[0, 2, 1, 3, 2, 0]])
    # sequences of 3: (0, 2, 1) tries L1H2 and drops it; (3, 2, 0) likewise
    assert list(gcmp.pruning_null(bs, 3)) == [1, 1]


def test_null_band_figure_draws(tmp_path):
    from types import SimpleNamespace

    import numpy as np

    from toolkit.evaluation import emergence

    dyn = dynamics.head_dynamics(BASE, SNAPSHOTS)
    zeros = np.zeros((5, 4, 4))
    null = emergence.BaseNull(30, 0.95, emergence.Replicates(zeros, zeros.astype(bool), zeros, 2),
                              emergence.Replicates(zeros, zeros.astype(bool), zeros, 2))
    counts = {s: SimpleNamespace(count=1) for s in dyn.steps}
    tests = SimpleNamespace(nulls={"own": null, "fixed": null}, tests={k: {"GRPO": counts} for k in ("own", "fixed")})
    analysis = SimpleNamespace(dyns={"GRPO": dyn}, fixed={"GRPO": dyn})
    view.null_band_figure(tests, analysis).savefig(tmp_path / "n.png")
