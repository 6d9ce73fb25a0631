"""Causal tests (toolkit.evaluation.causal): conditions on any sites, placebo draws, running under interventions,
pooling and paired statistics."""

import numpy as np
import pytest
import torch

from toolkit.core import interventions as iv
from toolkit.core import units
from toolkit.core.generation import SamplingConfig
from toolkit.core.stats import bootstrap_ci, paired_difference_ci
from toolkit.evaluation import causal


def test_conditions_on_heads_neurons_and_whole_components():
    c = causal.Condition.on_heads("x", [(1, 0), (0, 2), (1, 0), (1, 3)], 0.5)
    assert c.sites == tuple(units.head_sites([(0, 2), (1, 0), (1, 3)]))
    assert c.heads == ((0, 2), (1, 0), (1, 3)) and c.group == "x" and c.thinking is None
    assert c.intervention == "scale ×0.5, 3 heads"
    n = causal.Condition.on_neurons("n", [(2, 7), (0, 1), (2, 3)], 0.0, group="g", thinking=True)
    assert n.sites == (iv.neurons(0, 1), iv.neurons(2, 3, 7)) and n.neurons == ((0, 1), (2, 3), (2, 7))
    assert n.intervention == "ablate 3 neurons" and n.group == "g" and n.thinking
    m = causal.Condition("mlp", (iv.mlp(1), iv.attn(0)), 0.0)
    assert m.intervention == "ablate 2 sites" and m.heads == () and m.n_units == 2
    assert causal.Condition("one", iv.resid(0), 2.0).sites == (iv.resid(0),)
    assert causal.Condition("base").intervention == "none"
    with pytest.raises(ValueError, match="needs sites"):
        causal.Condition("x", (), 0.0)
    with pytest.raises(ValueError, match="finite"):
        causal.Condition.on_heads("x", [(0, 1)], float("inf"))
    with pytest.raises(TypeError, match="not a Site"):
        causal.Condition("x", ((0, 1),), 0.0)
    with pytest.raises(ValueError, match="not a .layer, head. pair"):
        causal.Condition.on_heads("x", [(1, 2, 3)], 0.0)


def test_placebo_draws_are_the_units_pickers_with_consecutive_seeds():
    heads = [(3, 1), (2, 3), (0, 0)]
    draws = causal.placebo_heads(heads, 4, 4, 3, seed=7)
    assert draws == [units.random_heads(4, 4, 3, exclude=heads, seed=7 + i) for i in range(3)]
    assert all(not set(d) & set(heads) for d in draws) and len({tuple(d) for d in draws}) > 1
    assert causal.placebo_heads(heads, 4, 4, 1, seed=2, k=2, exclude=[(0, 0)]) == [
        units.random_heads(4, 4, 2, exclude=[(0, 0)], seed=2)]
    assert causal.placebo_heads(heads, 4, 4, 0) == []
    neurons = [(0, 3), (0, 9), (2, 1)]
    nd = causal.placebo_neurons(neurons, 32, 2, seed=5)
    assert nd == [units.random_neurons(neurons, 32, 5), units.random_neurons(neurons, 32, 6)]
    conds = causal.placebo_conditions("rand", draws, 0.0, thinking=False)
    assert [c.name for c in conds] == ["rand #1", "rand #2", "rand #3"] and {c.group for c in conds} == {"rand"}
    assert [c.heads for c in conds] == [tuple(d) for d in draws] and not conds[0].thinking
    named = causal.placebo_conditions("control", nd, 0.0, kind="neuron", names=["r0", "r1"])
    assert [c.neurons for c in named] == [tuple(d) for d in nd]
    with pytest.raises(ValueError, match="2 names for 3"):
        causal.placebo_conditions("g", draws, 0.0, names=["a", "b"])
    with pytest.raises(iv.SiteError, match="only 1 are left"):
        causal.placebo_heads([(0, h) for h in range(4)] + [(1, 0), (1, 1), (1, 2)], 2, 4, 1)


def test_intervene_is_the_hook_vocabularys_scale_and_ablate(tiny):
    ids = tiny.tokenizer(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    before = tiny.hf(ids).logits
    with causal.intervene(tiny.bridge, causal.Condition("none")):
        torch.testing.assert_close(tiny.hf(ids).logits, before)
    for cond in (causal.Condition.on_heads("h", [(0, 0), (1, 2)], 0.5), causal.Condition("m", (iv.mlp(0),), 0.0),
                 causal.Condition.on_neurons("n", [(1, 3), (0, 5)], 0.0)):
        with causal.intervene(tiny.bridge, cond):
            got = tiny.hf(ids).logits
        with iv.scale(tiny.bridge, list(cond.sites), cond.factor):
            want = tiny.hf(ids).logits
        torch.testing.assert_close(got, want)
        assert not torch.allclose(got, before)
    torch.testing.assert_close(tiny.hf(ids).logits, before)


def test_run_and_behave_tasks_share_seeds_so_only_the_intervention_differs(tiny):
    from toolkit.core.generation import generate

    prompts = {"a": ["Reverse the word: abc", "Reverse the word: dog"], "b": ["What is 3 + 4?"]}
    every_head = [(lay, h) for lay in range(2) for h in range(4)]
    conds = [causal.Condition("x"), causal.Condition("y", thinking=True), causal.Condition.on_heads("z", every_head, 0)]
    sampling = SamplingConfig(do_sample=True, num_samples=2)
    res = causal.run(tiny.bridge, conds, lambda c: causal.behave_tasks(
        tiny, prompts, enable_thinking=bool(c.thinking), max_new_tokens=9 if c.thinking else 6, sampling=sampling,
        seed=3))
    assert list(res) == ["x", "y", "z"]
    want = generate(tiny, prompts["b"], max_new_tokens=6, sampling=sampling, seed=4)
    assert res["x"]["b"].completions == want  # task 1 uses seed + 1
    again = causal.behave_tasks(tiny, prompts, max_new_tokens=6, sampling=sampling, seed=3)
    assert again["a"].completions == res["x"]["a"].completions
    assert res["y"]["a"].enable_thinking and not res["x"]["a"].enable_thinking
    assert res["z"]["a"].completions != res["x"]["a"].completions, "ablating every head changed no sample"
    with causal.intervene(tiny.bridge, conds[2]):
        inside = causal.behave_tasks(tiny, prompts, max_new_tokens=6, sampling=sampling, seed=3)
    assert inside["a"].completions == res["z"]["a"].completions
    same = causal.behave_tasks(tiny, {"a": prompts["b"], "b": prompts["b"]}, max_new_tokens=6, sampling=sampling,
                               seed=3, seed_step=0)
    assert same["a"].completions == same["b"].completions
    with pytest.raises(ValueError, match="unique"):
        causal.run(tiny.bridge, [conds[0], conds[0]], lambda c: None)
    with pytest.raises(iv.SiteError, match="heads are 0..3"):
        causal.run(tiny.bridge, [causal.Condition.on_heads("bad", [(0, 7)], 0.0)], lambda c: None)


def test_pool_and_paired_effects_are_the_stats_calls():
    rng = np.random.default_rng(0)
    draws = [list((rng.random(20) < p).astype(float)) for p in (0.2, 0.5, 0.7)]
    pooled = causal.pool(draws)
    assert pooled.tolist() == [sum(d[i] for d in draws) / 3 for i in range(20)]  # exactly eap's sum / n
    treated, base = (rng.random(20) < 0.1).astype(float), (rng.random(20) < 0.6).astype(float)
    e = causal.paired_effects(treated, base, pooled, n_boot=500, seed=2)
    assert e["baseline"] == bootstrap_ci(base, n_boot=500, seed=2)
    assert e["treated"] == bootstrap_ci(treated, n_boot=500, seed=2)
    assert e["placebo"] == bootstrap_ci(pooled, n_boot=500, seed=2)
    assert e["change_treated"] == paired_difference_ci(treated, base, n_boot=500, seed=2)
    assert e["change_placebo"] == paired_difference_ci(pooled, base, n_boot=500, seed=2)
    assert e["treated_minus_placebo"] == paired_difference_ci(treated, pooled, n_boot=500, seed=2)
    assert set(causal.paired_effects(treated, base)) == {"baseline", "treated", "change_treated"}
    assert causal.effect(list(treated), list(base)) == paired_difference_ci(treated, base)
    with pytest.raises(ValueError, match="same problems"):
        causal.pool([[1.0, 0.0], [1.0]])
    conds = [causal.Condition("a"), causal.Condition("r1", group="r"), causal.Condition("r2", group="r")]
    assert causal.groups(conds) == ["a", "r"] and [c.name for c in causal.members(conds, "r")] == ["r1", "r2"]
    with pytest.raises(KeyError, match="no condition in group"):
        causal.members(conds, "nope")
