"""Think on/off (toolkit.studies.think_on_off, toolkit.views.think_on_off): head sets, conditions, interventions
during sampled generation with a KV cache, pass@k / success@k curves with bootstrap intervals, the table and the
explorer."""

import itertools
from contextlib import contextmanager

import numpy as np
import pytest
import torch

from toolkit.core import interventions as iv
from toolkit.core import units
from toolkit.core.answers import per_problem_at_k
from toolkit.core.chat import mode_label
from toolkit.core.generation import SamplingConfig
from toolkit.evaluation import causal
from toolkit.evaluation.behaviour import Behaviour
from toolkit.methods import eap
from toolkit.organism.tasks import Example
from toolkit.studies import think_on_off as th
from toolkit.studies.think_on_off import metrics as tm
from toolkit.views import think_on_off as tv

# ------------------------------------------------------------------------------------------------ interventions


def _o_proj_linear(hf, layer):
    """The plain nn.Linear under the bridge's o_proj wrapper (independent of the hook vocabulary)."""
    o_proj = hf.model.layers[layer].self_attn.o_proj
    return getattr(o_proj, "original_component", None) or o_proj


def reference_z(hf, ids, mask, heads, factor, n_heads, d_head):
    """No-cache forward over the whole sequence with the heads scaled by a pre-hook on each layer's o_proj Linear
    (not through toolkit.core.interventions); returns {layer: z before the edit, [b, T, H, d_head]}."""
    raw, handles = {}, []
    by_layer = {}
    for layer, h in heads:
        by_layer.setdefault(layer, []).append(h)
    for layer in range(hf.config.num_hidden_layers):
        def pre_hook(module, args, layer=layer):
            x = args[0]
            raw[layer] = x.detach().clone().view(*x.shape[:2], n_heads, d_head)
            x = x.clone().view(*x.shape[:2], n_heads, d_head)
            for h in by_layer.get(layer, []):
                x[:, :, h] = x[:, :, h] * factor
            return (x.view(*args[0].shape), *args[1:])
        handles.append(_o_proj_linear(hf, layer).register_forward_pre_hook(pre_hook))
    try:
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        with torch.no_grad():
            hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    return raw


@pytest.mark.parametrize("factor", [0.0, 0.5], ids=["ablate", "scale-0.5"])
def test_heads_are_zeroed_or_scaled_during_sampled_generation_with_kv_cache(tiny, factor, monkeypatch):
    """Record every head's hook_z while sample_condition generates (sampled, KV cache) under the intervention; an
    independent no-cache forward over the generated tokens, with the edit made by hand on o_proj's input, gives each
    head's unedited z. The chosen heads must be exactly factor × that at every position (prompt and each new token),
    and every other head must equal it: untouched."""
    hf, bridge = tiny.hf, tiny.bridge
    n_layers, n_heads, d_head = bridge.cfg.n_layers, bridge.cfg.n_heads, bridge.cfg.d_head
    heads = ((0, 1), (1, 0), (1, 3))
    cond = th.condition("off + edit", False, heads, factor)
    outputs, calls = [], []
    real_generate = hf.generate

    def spy(*args, **kwargs):
        calls.append(kwargs)
        out = real_generate(*args, **kwargs)
        outputs.append((kwargs["input_ids"], kwargs["attention_mask"], out))
        return out

    monkeypatch.setattr(hf, "generate", spy)
    problems = {"related_math": [Example("linear", "Solve for x: 3x + 4 = 1x + 10", "", "x = 3"),
                                 Example("linear", "Solve for x: 2x + 1 = 5x + 1", "", "x = 0")]}
    all_heads = [iv.head(layer, *range(n_heads)) for layer in range(n_layers)]
    recordings, steps = [], []
    real_intervene = causal.intervene

    @contextmanager
    def intervene_and_record(b, condition):  # what sample_condition applies, then a recorder behind it
        with real_intervene(b, condition), iv.record(b, all_heads) as rec:
            recordings.append(rec)
            yield

    monkeypatch.setattr(causal, "intervene", intervene_and_record)
    handle = hf.get_input_embeddings().register_forward_hook(lambda mod, args, out: steps.append(out.shape[1]))
    try:
        samples = th.sample_condition(tiny, cond, problems, n_samples=3, max_new_tokens_off=10, seed=3)
    finally:
        handle.remove()
    (rec,) = recordings
    assert calls[0]["do_sample"] and calls[0]["num_return_sequences"] == 3 and calls[0]["top_k"] == 20
    assert steps[0] > 1 and len(steps) > 2 and set(steps[1:]) == {1}, f"not a KV-cache generation: {steps}"
    (prompt_ids, prompt_mask, gen), = outputs
    assert samples.correct["related_math"].shape == (2, 3) and gen.shape[1] - prompt_ids.shape[1] > 3
    rows = prompt_ids.shape[0] * 3
    assert gen.shape[0] == rows
    full_mask = torch.cat([prompt_mask.repeat_interleave(3, 0),
                           torch.ones(rows, gen.shape[1] - prompt_ids.shape[1], dtype=prompt_mask.dtype)], 1)
    raw = reference_z(hf, gen, full_mask, heads, factor, n_heads, d_head)
    T = gen.shape[1] - 1  # the last sampled token is never fed back
    valid = full_mask[:, :T].bool()
    chosen = set(heads)
    for layer in range(n_layers):
        got = rec[all_heads[layer]]
        assert got.shape[:2] == (rows, T)
        for h in range(n_heads):
            want = raw[layer][:, :T, h] * (factor if (layer, h) in chosen else 1.0)
            torch.testing.assert_close(got[:, :, h][valid], want[valid], atol=2e-5, rtol=1e-4)
            assert raw[layer][:, :T, h][valid].abs().max() > 1e-3, "every head's unedited output is nonzero"
    if factor == 0.0:
        assert all(rec[all_heads[layer]][:, :, h].abs().max() == 0 for layer, h in heads)


def test_intervene_without_heads_changes_nothing_and_hooks_are_removed(tiny):
    ids = tiny.tokenizer(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    before = tiny.hf(ids).logits
    with causal.intervene(tiny.bridge, th.condition("off", False)):
        torch.testing.assert_close(tiny.hf(ids).logits, before)
    with causal.intervene(tiny.bridge, th.condition("x", False, ((0, 0), (1, 2)), 0.0)):
        assert not torch.allclose(tiny.hf(ids).logits, before)
    torch.testing.assert_close(tiny.hf(ids).logits, before)
    with pytest.raises(iv.SiteError, match="heads are 0..3"):
        th.sample_condition(tiny, th.condition("bad", False, ((0, 7),), 0.0),
                            {"t": [Example("linear", "Solve for x: 1x + 1 = 2x + 0", "", "x = 1")]})


def test_conditions_share_seeds_so_only_the_intervention_differs(tiny):
    problems = {"unrelated_general": [Example("reversal", "Reverse the word: abc", "", "cba"),
                                      Example("reversal", "Reverse the word: hello", "", "olleh")]}
    kwargs = dict(n_samples=2, max_new_tokens_off=8, seed=5)
    every_head = tuple((lay, h) for lay in range(2) for h in range(4))
    res = th.run_conditions(tiny, [th.condition("a", False), th.condition("b", False),
                                   th.condition("c", False, every_head, 0.0)], problems, show_progress=False, **kwargs)
    assert res["a"].completions == res["b"].completions
    assert res["a"].completions != res["c"].completions, "ablating every head changed no sample"
    assert res["a"].correct["unrelated_general"].dtype == bool
    with pytest.raises(ValueError, match="unique"):
        th.run_conditions(tiny, [th.condition("a", False)] * 2, problems, show_progress=False, **kwargs)


# ------------------------------------------------------------------------------------------------ head sets


def test_head_sets_split_and_grid():
    on = [(0, 1), (1, 2), (3, 0)]
    off = [(1, 2), (2, 3), (3, 1), (0, 0)]
    sets = th.head_sets(on, off, n_layers=4, n_heads=4)
    assert isinstance(sets, units.HeadComparison)
    assert sets.only_a == {(0, 1), (3, 0)}
    assert sets.only_b == {(2, 3), (3, 1), (0, 0)}
    assert sets.shared == {(1, 2)}
    assert th.set_counts(sets) == {"on_circuit": 3, "off_circuit": 4, "on_only": 2, "off_only": 3, "shared": 1}
    grid = th.head_set_grid(sets, 4, 4)
    expected = np.zeros((4, 4), int)
    for (layer, h), code in {(0, 1): 1, (3, 0): 1, (2, 3): 2, (3, 1): 2, (0, 0): 2, (1, 2): 3}.items():
        expected[layer, h] = code
    np.testing.assert_array_equal(grid, expected)
    assert th.sets_to_dict(sets)["off_only"] == [[0, 0], [2, 3], [3, 1]]
    assert list(th.sets_to_dict(sets)) == ["on", "off", "on_only", "off_only", "shared"]
    with pytest.raises(iv.SiteError, match="layer 4 is out of range"):
        th.head_sets(on + [(4, 0)], off, n_layers=4, n_heads=4)
    with pytest.raises(iv.SiteError, match="heads are 0..3"):
        th.head_sets(on, [(0, 9)], n_layers=4, n_heads=4)
    with pytest.raises(ValueError, match="not a .layer, head. pair"):
        th.head_sets([(1, 2, 3)], off)


def test_standard_conditions_have_same_size_random_controls_outside_off_only():
    off_only = [(3, 1), (2, 3), (0, 0)]
    conds = th.standard_conditions(off_only, n_layers=4, n_heads=4, n_random=3, seed=7)
    by_group = {}
    for c in conds:
        by_group.setdefault(c.group, []).append(c)
    assert list(by_group) == ["think_on", "think_off", "think_off + ablation", "think_off + scale-down",
                              "think_off + scale-up", "think_off + ablation, random heads",
                              "think_off + scale-down, random heads", "think_off + scale-up, random heads"]
    assert by_group["think_off + scale-up"][0].factor == 1.3
    assert [c.name for c in th.baseline_conditions()] == ["think_on", "think_off"]
    assert by_group["think_on"][0].thinking and not by_group["think_on"][0].heads
    assert by_group["think_off + ablation"][0].heads == tuple(sorted(off_only))
    assert by_group["think_off + ablation"][0].factor == 0.0 and by_group["think_off + scale-down"][0].factor == 0.5
    random_ablate = by_group["think_off + ablation, random heads"]
    random_scale = by_group["think_off + scale-down, random heads"]
    assert len(random_ablate) == 3
    draws = [c.heads for c in random_ablate]
    assert [c.heads for c in random_scale] == draws  # the same draws for both interventions
    assert len(set(draws)) > 1
    for d in draws:
        assert len(d) == len(set(d)) == 3 and not set(d) & set(off_only)
    assert all(not c.thinking for c in conds[1:])
    assert draws == [c.heads for c in th.standard_conditions(off_only, 4, 4, n_random=3, seed=7)
                     if c.group == "think_off + ablation, random heads"]
    with pytest.raises(ValueError, match="no off-only heads"):
        th.standard_conditions([], 4, 4)
    with pytest.raises(iv.SiteError, match="only 1 are left"):
        th.standard_conditions([(0, h) for h in range(4)] + [(1, 0), (1, 1), (1, 2)], 2, 4)


def test_condition_validation():
    with pytest.raises(ValueError, match="needs heads and a factor"):
        th.condition("x", False, (), 0.0)
    with pytest.raises(ValueError, match="needs heads and a factor"):
        th.condition("x", False, ((0, 1),), 1.0)
    with pytest.raises(ValueError, match="finite"):
        th.condition("x", False, ((0, 1),), float("nan"))
    c = th.condition("x", False, [(1, 0), (0, 2), (1, 0)], 0.5)
    assert c.heads == ((0, 2), (1, 0)) and c.group == "x" and c.intervention == "scale ×0.5, 2 heads"
    assert th.mode_of(th.condition("y", True)) == "think_on"
    assert mode_label(th.mode_of(th.condition("y", True))) == "think-on"  # the label figures and tables show
    assert mode_label("think_off + ablation, random heads") == "think-off + ablation, random heads"
    assert th.condition_dict(c) == {"name": "x", "group": "x", "thinking": False, "factor": 0.5,
                                    "heads": [[0, 2], [1, 0]]}


def test_problem_sets_are_disjoint_held_out_ranges():
    ev = th.problem_sets(5)
    circ = th.problem_sets(5, start=195)
    assert list(ev) == list(th.TASK_TYPES)
    assert [e.task for e in ev["related_math"]] == ["linear"] * 5
    assert not {e.prompt for e in ev["related_math"]} & {e.prompt for e in circ["related_math"]}
    with pytest.raises(ValueError, match="outside the held-out pool of 200"):
        th.problem_sets(10, start=195)
    with pytest.raises(ValueError, match="unknown task type"):
        th.problem_sets(3, task_types=["poetry"])


# ------------------------------------------------------------------------------------------------ metrics


def test_per_problem_pass_and_success_at_k_match_enumeration():
    rng = np.random.default_rng(0)
    correct = rng.random((6, 5)) < 0.4
    p = per_problem_at_k(correct, "pass")
    s = per_problem_at_k(correct, "success")
    for i, row in enumerate(correct):
        for k in range(1, 6):
            subsets = list(itertools.combinations(row, k))
            assert p[i, k - 1] == pytest.approx(sum(any(x) for x in subsets) / len(subsets))
            assert s[i, k - 1] == float(row[:k].any())
    np.testing.assert_allclose(p[:, 0], correct.mean(1))
    assert np.all(np.diff(p, axis=1) >= -1e-12) and np.all(np.diff(s, axis=1) >= 0)
    with pytest.raises(ValueError, match="unknown metric"):
        per_problem_at_k(correct, "best")
    with pytest.raises(ValueError, match="non-empty"):
        per_problem_at_k(np.zeros((0, 3), bool))


def fake_results(seed=0, n_problems=30, n=4):
    """Hand-made graded samples: think-on mostly right, think-off rarely, two random draws pooled."""
    rng = np.random.default_rng(seed)
    rates = {"think_on": 0.9, "think_off": 0.3, "ablate": 0.1, "rand #1": 0.3, "rand #2": 0.5}
    conds = [th.condition("think_on", True), th.condition("think_off", False),
             th.condition("ablate", False, ((0, 1),), 0.0),
             th.condition("rand #1", False, ((2, 0),), 0.0, group="rand"),
             th.condition("rand #2", False, ((3, 3),), 0.0, group="rand")]
    out = {}
    for c in conds:
        s = th.Samples(c)
        for task in ("related_math", "unrelated_math"):
            s.correct[task] = rng.random((n_problems, n)) < rates[c.name]
        out[c.name] = s
    return out


def test_curves_pool_groups_and_bracket_the_estimate():
    res = fake_results()
    cur = tm.curves(res, metric="pass", n_boot=300)
    assert list(cur) == ["think_on", "think_off", "ablate", "rand"]
    pooled = (per_problem_at_k(res["rand #1"].correct["related_math"])
              + per_problem_at_k(res["rand #2"].correct["related_math"])) / 2
    c = cur["rand"]["related_math"]
    assert c["k"] == [1, 2, 3, 4]
    np.testing.assert_allclose(c["estimate"], pooled.mean(0))
    for group in cur.values():
        for t in group.values():
            assert all(lo <= e <= hi for lo, e, hi in zip(t["low"], t["estimate"], t["high"]))
    # a slow reference for one interval: resample problems by hand with the same generator and seed
    m = per_problem_at_k(res["think_off"].correct["unrelated_math"])[:, 1]
    idx = np.random.default_rng(0).integers(0, len(m), size=(300, len(m)))
    boots = np.sort([m[i].mean() for i in idx])
    t = cur["think_off"]["unrelated_math"]
    assert t["low"][1] == pytest.approx(np.quantile(boots, 0.025))
    assert t["high"][1] == pytest.approx(np.quantile(boots, 0.975))
    succ = tm.curves(res, metric="success", n_boot=200)
    assert succ["think_on"]["related_math"]["estimate"][0] == pytest.approx(
        res["think_on"].correct["related_math"][:, 0].mean())
    with pytest.raises(KeyError, match="no condition in group"):
        tm.group_matrix(res, "nope", "related_math")


def test_table_rows_cells_and_paired_deltas():
    res = fake_results()
    tab = tm.table(res, metric="pass", k=2, n_boot=300)
    assert list(tab) == ["think_on", "think_off", "ablate", "rand"]
    assert tab["think_off"]["related_math"]["delta"] is None
    for group in ("think_on", "ablate", "rand"):
        for task in ("related_math", "unrelated_math"):
            a = tm.group_matrix(res, group, task)[:, 1]
            b = tm.group_matrix(res, "think_off", task)[:, 1]
            cell = tab[group][task]
            assert cell["estimate"] == pytest.approx(a.mean())
            assert cell["delta"]["estimate"] == pytest.approx(a.mean() - b.mean())
            assert cell["low"] <= cell["estimate"] <= cell["high"]
    assert tab["think_on"]["related_math"]["delta"]["low"] > 0
    assert tab["ablate"]["related_math"]["delta"]["high"] < 0
    md = tv.table_markdown(tab, "pass@2 (%)")
    assert md.count("\n") == 5 and "| rand |" in md and "Δ" in md
    html = tv.table_html(tab)
    assert html.count("<tr>") == 5 and "#1a7f37" in html and "#c62828" in html
    with pytest.raises(ValueError, match="k must be in 1..4"):
        tm.table(res, k=5)


def test_grade_uses_the_answer_after_think():
    ex = [Example("linear", "p", "", "x = 3"), Example("reversal", "q", "", "cba")]
    completions = [["<think>\nstuff\n</think>\n\nx = 3", "x = 4"], ["cba", "<think>\nunfinished"]]
    got = Behaviour(["p", "q"], False, completions).correct([e.answer for e in ex])
    np.testing.assert_array_equal(got, [[True, False], [True, False]])
    assert got.dtype == bool
    with pytest.raises(ValueError, match="2 prompts"):
        Behaviour(["p", "q"], False, completions).correct(["x = 3"])


# ------------------------------------------------------------------------------------------------ figures, explorer


def test_figures_and_explorer(tiny):
    import matplotlib.pyplot as plt

    sets = th.head_sets([(0, 1), (1, 2)], [(1, 2), (1, 3)], 2, 4)
    fig = tv.head_maps_figure(torch.rand(2, 4), torch.rand(2, 4), sets, 2, 4)
    assert len(fig.axes) >= 3
    plt.close(fig)
    with pytest.raises(ValueError, match="expected \\(2, 4\\)"):
        tv.head_maps_figure(torch.rand(3, 4), None, sets, 2, 4)
    fig = tv.curves_figure(tm.curves(fake_results(n_problems=5), n_boot=50))
    assert len(fig.axes[0].lines) == 4
    plt.close(fig)

    problems = {"unrelated_general": [Example("reversal", "Reverse the word: abc", "", "cba"),
                                      Example("reversal", "Reverse the word: dog", "", "god")]}
    conds = th.standard_conditions(sets.only_b, 2, 4, n_random=1)
    res = th.run_conditions(tiny, conds[:2], problems, show_progress=False, n_samples=2, max_new_tokens_off=6,
                            max_new_tokens_think=6)
    box = tv.explorer(tiny, problems, conds, res, n_samples=2, max_new_tokens_think=6, max_new_tokens_off=6,
                      sampling=SamplingConfig(do_sample=True))
    problem, (thinking, resample), edit, out = box.children[0], box.children[1].children, box.children[2], \
        box.children[3]
    first = out.outputs[0]["data"]["text/html"]
    assert "from the evaluation" in first and "Reverse the word: abc" in first
    problem.value = problem.options[1][1]
    assert "dog" in out.outputs[0]["data"]["text/html"]
    edit.value = edit.options[1]
    assert "sampled live" in out.outputs[0]["data"]["text/html"]
    thinking.value = True
    resample.click()
    assert "draw 1" in out.outputs[0]["data"]["text/html"]


@pytest.fixture(scope="module")
def organism():
    from toolkit.core.models import load

    return load("organism")


def test_mode_circuits_split_the_two_modes_heads_like_eap_compare_heads(organism):
    """On the shipped organism (a random tiny model's greedy answers rarely depend on the problem)."""
    # organism v2 gives most equations one answer thinking off: 5 of these 40 pairs differ in that mode
    examples = th.problem_sets(40, start=160, task_types=["related_math"])["related_math"]
    mc = th.mode_circuits(organism, examples, top_n=30, steps=2, max_new_tokens_think=40, max_new_tokens_off=24,
                          positions="divergence")
    on, off = mc.circuits["think_on"], mc.circuits["think_off"]
    cmp = units.compare_heads(on, off)
    assert mc.sets.a == on.heads and mc.sets.b == off.heads
    assert (mc.sets.shared, mc.sets.only_a, mc.sets.only_b) == (cmp.shared, cmp.only_a, cmp.only_b)
    assert mc.importance["think_off"].shape == (4, 4)
    assert all(r["response_prefix"].startswith("<think>") for r in mc.pairs["think_on"].records)
    assert all(r["response_prefix"].startswith("The answer is") for r in mc.pairs["think_off"].records)  # sentence
    rows = mc.sweep([4, 30])
    assert rows[1]["on_circuit"] == len(on.heads) and rows[1]["off_edges"] == off.n_edges
    assert rows[0]["on_edges"] <= 4


def test_edges_for_recovery_reads_the_first_size_reaching_the_level():
    curve = {"n_edges": [5, 10, 20, 40], "recovered": [0.2, float("nan"), 0.85, 0.95]}
    assert eap.edges_for_recovery(curve, 0.8) == 20
    assert eap.edges_for_recovery(curve, 0.9) == 40
    assert eap.edges_for_recovery(curve, 0.99) is None
