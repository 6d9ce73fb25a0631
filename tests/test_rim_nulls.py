"""RIM against its nulls (toolkit.studies.rim: split, placebos, noise, claims): the selection/evaluation split, the
KL reference that matches the checkpoint rows' KL, every same-size head set and random neuron sets on the tiny
models against direct ablations."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from toolkit.core import interventions, units
from toolkit.evaluation import causal, weight_noise
from toolkit.methods import rim
from toolkit.organism import probes, tasks
from toolkit.studies import rim as rim_study


def test_split_pairs_is_disjoint_seeded_and_checked():
    s = rim_study.split_pairs(10, seed=3)
    assert len(s.select) == 5 and sorted(s.select + s.evaluate) == list(range(10))
    assert s == rim_study.split_pairs(10, seed=3) and s != rim_study.split_pairs(10, seed=4)
    assert len(rim_study.split_pairs(9, fraction=0.34).select) == 3
    with pytest.raises(ValueError, match="held-out"):
        rim_study.split_pairs(1)
    with pytest.raises(ValueError, match="fraction"):
        rim_study.split_pairs(10, fraction=1.0)


def test_kl_reference_gives_the_rows_kl(tiny):
    seqs = rim.encode(tiny.tokenizer, [e.prompt for e in probes.reasoning_probes(3)], True,
                      [tasks.completion(e, True) for e in probes.reasoning_probes(3)])
    noisy = weight_noise.add_weight_noise(tiny.hf, 0.3, seed=1)
    base_logps = rim.neuron_activations(tiny, seqs, reduce="response", with_logits=True).logps
    with torch.no_grad():
        other = []
        for s in seqs:
            ids = torch.tensor([s.ids])
            other.append(torch.log_softmax(noisy(input_ids=ids).logits[0, s.response_start - 1:-1].float(), -1))
    want = rim.mean_kl(base_logps, other)
    got = weight_noise.mean_kl(tiny.hf, noisy, rim_study.kl_reference(seqs, batch_size=2))
    assert got == pytest.approx(want, rel=1e-4) and want > 0


def _heads(tiny, n=4):
    pairs = rim_study.request_pairs(n)
    behaviour = rim_study.refusal_behaviour(tiny, pairs, ("think_off",))
    split = rim_study.split_pairs(n, seed=0)
    return pairs, rim_study.refusal_heads(tiny, pairs, behaviour, 2, 1, ("think_off",), split=split), split


def test_heads_are_selected_on_one_split_and_placebos_are_every_pair_of_heads(tiny):
    pairs, heads, split = _heads(tiny)
    a = heads["think_off"]
    sel = a.rows(split.select)
    assert a.top == rim.top_heads(a.shift[sel], 2) and a.split == split
    got = rim_study.head_placebos(tiny, pairs, heads, sets_per_batch=5, n_boot=50)
    tests = got.tests["think_off"]
    assert len(got.sets["think_off"]) == 27 and tuple(sorted(a.top)) not in got.sets["think_off"]  # C(8, 2) − 1
    held = a.rows(split.evaluate)
    want_shift = a.shift[held][:, [h[0] for h in a.top], [h[1] for h in a.top]].mean(1).mean()
    assert tests["shift"].target_mean == pytest.approx(want_shift)
    rows = rim_study.placebos.refusal_rows(tiny, pairs, heads, "think_off", split.evaluate)
    before = causal.continuation_logprob(tiny.hf, rows).exp()
    with interventions.ablate(tiny.bridge, units.head_sites(a.top)):
        after = causal.continuation_logprob(tiny.hf, rows).exp()
    assert tests["ablation"].target_mean == pytest.approx(float((after - before).mean()), abs=1e-5)
    assert tests["layer"].target_mean == pytest.approx(np.mean([lay for lay, _ in a.top]))
    assert set(got.to_results()["think_off"]) == {"shift", "ablation", "layer"}


def test_neuron_placebos_zero_the_safety_and_random_sets(tiny):
    pairs, heads, split = _heads(tiny)
    behaviour = rim_study.refusal_behaviour(tiny, pairs, ("think_off",))
    problems = probes.math_problems(2)
    math = rim_study.math_accuracy(tiny, problems)
    probe_set = rim_study.make_probes(tiny.tokenizer, pairs, problems, problems)
    neurons = rim_study.neuron_analysis(tiny, probe_set, behaviour, math, top_m=60, n_sets=2, n_controls=1,
                                        split=split, n_placebos=5)
    assert len(neurons.placebos) == 5 and neurons.controls == neurons.placebos[:1]
    assert neurons.neuron_sets()["control"] == neurons.placebos
    # selected on the counterfactuals of the selection split only
    want = rim.select_safety_neurons(neurons.refusal[split.select], neurons.compliance[split.select], 60, 2)
    assert neurons.neurons == want.neurons
    reasoning = rim.encode(tiny.tokenizer, [e.prompt for e in problems], True,
                           [tasks.completion(e, True) for e in problems])
    got = rim_study.neuron_placebos(tiny, pairs, heads, neurons, reasoning, n_boot=50)
    assert got.n_sets == 5 and set(got.tests) == {"contrast", "refusal", "math"}
    held = neurons.contrast(neurons.neurons, split.evaluate)  # the held-out contrast: requests that did not select
    assert len(held) == len(split.evaluate) and got.tests["contrast"].target_mean == pytest.approx(held.mean())
    assert got.tests["refusal"].n_problems == len(split.evaluate) and got.tests["math"].n_problems == 2
    assert got.to_results()["math"]["n_sets"] == 5
    rows = rim_study.placebos.forced_rows(reasoning)
    lengths = torch.tensor([len(c) for _, c in rows], dtype=torch.float)
    before = causal.continuation_logprob(tiny.hf, rows) / lengths
    with causal.intervene(tiny.bridge, causal.Condition.on_neurons("s", neurons.neurons, 0.0)):
        after = causal.continuation_logprob(tiny.hf, rows) / lengths
    assert got.tests["math"].target_mean == pytest.approx(float((after - before).mean()), abs=1e-5)


@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_the_counterfactual_selection_finds_a_planted_refusal_neuron(tiny_dirs, arch):
    """A neuron made to fire on characters that only the forced refusal contains (not the forced compliance) is the
    top safety neuron: the contrast is the same request under a forced refusal against a forced compliance."""
    from toolkit.core.models import load

    tiny = load(str(tiny_dirs[arch]))  # its own copy: the weights are edited
    pairs = rim_study.request_pairs(8)
    probe_set = rim_study.make_probes(tiny.tokenizer, pairs, probes.math_problems(1), probes.math_problems(1))
    tok, hf = tiny.tokenizer, tiny.hf
    refusal_ids = {i for s in probe_set.safety for i in s.ids[s.response_start:]}
    other_ids = {i for s in probe_set.compliance for i in s.ids} | {i for s in probe_set.safety
                                                                   for i in s.ids[:s.response_start]}
    planted_ids = sorted(refusal_ids - other_ids)
    assert planted_ids, [tok.decode([i]) for i in refusal_ids]
    layer, unit = 0, 7
    mlp = hf.model.layers[layer].mlp
    direction = torch.nn.functional.normalize(torch.randn(hf.config.hidden_size, generator=torch.Generator()
                                                          .manual_seed(0)), dim=0)
    with torch.no_grad():
        emb = hf.model.embed_tokens.weight
        emb[planted_ids] += 4 * emb.norm(dim=-1).mean() * direction
        mlp.gate_proj.weight[unit] = 3 * direction
        mlp.up_proj.weight[unit] = 3 * direction
    refusal = rim.neuron_activations(tiny, probe_set.safety, reduce="response").acts
    compliance = rim.neuron_activations(tiny, probe_set.compliance, reduce="response").acts
    sel = rim.select_safety_neurons(refusal, compliance, top_m=5, n_sets=2)
    assert sel.neurons[0] == (layer, unit), sel.neurons
    assert all(s[0] == (layer, unit) for s in sel.per_set)


def test_parameters_that_leave_the_rim_study_without_data_are_named(tiny):
    pairs = rim_study.request_pairs(4)
    problems = probes.math_problems(1)
    probe_set = rim_study.make_probes(tiny.tokenizer, pairs, problems, problems)
    with pytest.raises(ValueError, match=r"snapshots must be steps in 1\.\.2"):  # spacing larger than the run
        rim_study.fine_tune(tiny, probe_set, [1e-3], 2, [5], 2)
    with pytest.raises(ValueError, match="unknown scratchpad style"):
        rim_study.fine_tune(tiny, probe_set, [1e-3], 2, [2], 2, styles=["sloppy"])
    with pytest.raises(ValueError, match="at least one style"):
        rim_study.fine_tune(tiny, probe_set, [1e-3], 2, [2], 2, styles=[])
    # a random tiny model refuses nothing: there is no refusal to forget (raised before any training)
    with pytest.raises(ValueError, match="no refusal to forget.*n_pairs"):
        rim_study.fine_tune(tiny, probe_set, [1e-3], 2, [2], 2)
    behaviour = rim_study.refusal_behaviour(tiny, pairs, ("think_off",))
    with pytest.raises(ValueError, match="evaluation split.*n_pairs"):
        rim_study.neuron_analysis(tiny, probe_set, behaviour, [True], split=rim_study.Split([0, 1, 2, 3], []))
