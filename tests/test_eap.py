"""EAP / EAP-IG against an independent implementation, faithfulness invariants, selection, GQA grouping.

The reference (:mod:`toolkit.reference.eap`) is written from the HF weights alone (no bridge, no hooks): an explicit
float64 forward of Qwen2/Qwen3 in which every target has its own copy of its input, rows run one by one.
"""

import math

import pytest
import torch

from toolkit.core.models import load
from toolkit.core.units import compare_heads
from toolkit.methods import eap
from toolkit.methods.eap.memory import check_memory
from toolkit.reference.eap import Reference, reference_patched_metric, reference_scores


# ----------------------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny64(request, tiny_dirs):
    """Tiny model in float64 (2 layers, 4 query / 2 KV heads)."""
    return load(str(tiny_dirs[request.param]), dtype=torch.float64)


def _pairs(seed=0, lengths=(7, 5, 9)):
    """Random pairs of unequal row lengths (so batches are padded): each corrupted row differs in two tokens."""
    gen = torch.Generator().manual_seed(seed)
    clean, corr = [], []
    for n in lengths:
        a = torch.randint(5, 120, (n,), generator=gen).tolist()
        b = list(a)
        for j in (0, n // 2):
            b[j] = (b[j] + 17) % 115 + 5
        clean.append(a)
        corr.append(b)
    cl = torch.randint(5, 120, (len(lengths),), generator=gen).tolist()
    xl = [(c + 3) % 115 + 5 for c in cl]
    return eap.Pairs.from_token_lists(clean, corr, cl, xl, pad_id=0)


# ----------------------------------------------------------------------------------------------- tests
@pytest.mark.parametrize("metric", ["kl", "logit_diff", "prob_diff"])
def test_eap_ig_equals_independent_reference(tiny64, metric):
    pairs, steps = _pairs(), 3
    fast = eap.attribute(tiny64, pairs, method="eap-ig", steps=steps, metric=metric, batch_size=2,
                         show_progress=False)
    ref = Reference(tiny64.hf, fast.graph)
    slow = reference_scores(ref, pairs, metric, [k / steps for k in range(steps)])
    assert fast.values.abs().max() > 1e-6  # not trivially zero
    torch.testing.assert_close(fast.values, slow, atol=1e-5, rtol=1e-5)


def test_the_bridge_hook_path_equals_the_bare_module_path(tiny64, monkeypatch):
    """Anything hooking the bridge sends the passes through its own hook points: same scores as the bare HF modules
    (float64: to rounding), packed or not."""
    from toolkit.methods.eap import gradients

    pairs = _pairs(seed=2)
    bare = eap.attribute(tiny64, pairs, steps=3, batch_size=2, show_progress=False).values
    monkeypatch.setattr(gradients, "PACK_MACS", 0)  # one pass per row group
    unpacked = eap.attribute(tiny64, pairs, steps=3, batch_size=2, show_progress=False).values
    monkeypatch.setattr(gradients, "_hooked", lambda bridge: True)
    hooked = eap.attribute(tiny64, pairs, steps=3, batch_size=2, show_progress=False).values
    assert bare.abs().max() > 1e-6
    torch.testing.assert_close(unpacked, bare, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(hooked, bare, atol=1e-12, rtol=1e-10)


def test_the_bridge_modules_are_restored_after_an_error(tiny64, monkeypatch):
    """The bare-module passes swap the bridge's wrappers out of the module tree; an error inside puts them back."""
    from toolkit.methods.eap import gradients

    before = [(name, type(m)) for name, m in tiny64.hf.named_modules()]

    def broken(*args, **kwargs):
        assert [(name, type(m)) for name, m in tiny64.hf.named_modules()] != before  # inside the swap
        raise RuntimeError("a pass failed")

    monkeypatch.setattr(gradients._Batch, "__init__", broken)
    with pytest.raises(RuntimeError, match="a pass failed"):
        eap.attribute(tiny64, _pairs(), steps=2, show_progress=False)
    assert [(name, type(m)) for name, m in tiny64.hf.named_modules()] == before
    monkeypatch.undo()
    again = eap.attribute(tiny64, _pairs(), steps=2, show_progress=False)  # and the model still works
    assert torch.isfinite(again.values).all()


def test_plain_eap_is_the_clean_gradient(tiny64):
    pairs = _pairs(seed=1)
    fast = eap.attribute(tiny64, pairs, method="eap", metric="logit_diff", batch_size=3, show_progress=False)
    slow = reference_scores(Reference(tiny64.hf, fast.graph), pairs, "logit_diff", [1.0])
    torch.testing.assert_close(fast.values, slow, atol=1e-5, rtol=1e-5)
    kl = eap.attribute(tiny64, pairs, method="eap", metric="kl", show_progress=False)
    assert kl.values.abs().max() < 1e-8  # the KL gradient vanishes at the clean input (documented)


def test_grouped_kv_scores_are_sums_of_per_query_head_scores(tiny64):
    pairs, steps = _pairs(seed=2, lengths=(6, 8)), 2
    g = eap.Graph.from_bridge(tiny64.bridge)
    assert g.n_kv_heads < g.n_heads  # GQA is exercised
    ref = Reference(tiny64.hf, g)
    alphas = [k / steps for k in range(steps)]
    per_head = reference_scores(ref, pairs, "logit_diff", alphas, grouped=False)
    fast = eap.attribute(tiny64, pairs, steps=steps, metric="logit_diff", show_progress=False)
    checked = 0
    for layer in range(g.n_layers):
        for grp in range(g.n_kv_heads):
            heads = range(grp * g.group_size, (grp + 1) * g.group_size)
            for kind, target in (("k", g.k_target(layer, grp)), ("v", g.v_target(layer, grp))):
                for s in range(g.sources_before(layer)):
                    parts = [per_head[(s, (kind, layer, h))] for h in heads]
                    assert len({round(x, 12) for x in parts}) > 1 or abs(parts[0]) < 1e-12  # heads differ
                    assert fast.values[s, target].item() == pytest.approx(sum(parts), abs=1e-5, rel=1e-5)
                    checked += 1
    assert checked > 0


def test_faithfulness_invariants_and_reference(tiny64):
    pairs = _pairs(seed=3)
    g = eap.Graph.from_bridge(tiny64.bridge)
    for metric in ("kl", "logit_diff"):
        full = eap.faithfulness(tiny64, pairs, eap.Circuit.full(g), metric=metric, batch_size=2)
        empty = eap.faithfulness(tiny64, pairs, eap.Circuit.empty(g), metric=metric, batch_size=2)
        assert full["metric"] == pytest.approx(full["clean"], abs=1e-9)
        assert empty["metric"] == pytest.approx(empty["corrupted"], abs=1e-9)
        assert abs(full["clean"] - full["corrupted"]) > 1e-4
        assert full["recovered"] == pytest.approx(1.0) and empty["recovered"] == pytest.approx(0.0, abs=1e-6)
    # a random circuit agrees with the explicit per-edge patched reference
    gen = torch.Generator().manual_seed(0)
    edges = (torch.rand(g.n_sources, g.n_targets, generator=gen) < 0.5) & g.valid_mask()
    circuit = eap.Circuit(edges, g)
    got = eap.faithfulness(tiny64, pairs, circuit, metric="logit_diff")
    want = reference_patched_metric(Reference(tiny64.hf, g), pairs, g.valid_mask() & ~edges, "logit_diff")
    assert got["metric"] == pytest.approx(want, abs=1e-6)


def test_exact_scores_are_single_edge_patches(tiny64):
    pairs = _pairs(seed=4, lengths=(5, 6))
    exact = eap.attribute(tiny64, pairs, method="exact", metric="logit_diff", batch_size=2, show_progress=False)
    g, ref = exact.graph, Reference(tiny64.hf, exact.graph)
    clean = reference_patched_metric(ref, pairs, torch.zeros(g.n_sources, g.n_targets, dtype=torch.bool),
                                     "logit_diff")
    for s, t in [(0, g.q_target(0, 1)), (g.head_source(0, 2), g.k_target(1, 1)), (g.mlp_source(1), g.logits_target)]:
        miss = torch.zeros(g.n_sources, g.n_targets, dtype=torch.bool)
        miss[s, t] = True
        want = reference_patched_metric(ref, pairs, miss, "logit_diff") - clean
        assert exact.values[s, t].item() == pytest.approx(want, abs=1e-6)  # the bridge softmaxes in float32
    ig = eap.attribute(tiny64, pairs, steps=8, metric="logit_diff", show_progress=False)
    assert torch.corrcoef(torch.stack([ig.flat(), exact.flat()]))[0, 1] > 0.5


def test_graph_names_and_validity():
    g = eap.Graph(n_layers=2, n_heads=4, n_kv_heads=2)
    assert g.n_sources == 1 + 2 * 5 and g.n_targets == 2 * (4 + 2 + 2 + 1) + 1
    assert g.target_names[g.k_target(1, 1)] == "a1.kv1<k>" and g.source_names[g.head_source(1, 3)] == "a1.h3"
    valid = g.valid_mask()
    assert not valid[g.head_source(0, 0), g.q_target(0, 1)]  # no edge within a layer's attention
    assert valid[g.head_source(0, 0), g.mlp_target(0)] and valid[g.head_source(0, 0), g.q_target(1, 0)]
    assert g.target_owner(g.v_target(1, 1)) == [g.head_source(1, 2), g.head_source(1, 3)]
    with pytest.raises(eap.EAPError, match="layer 5 is out of range"):
        g.q_target(5, 0)
    with pytest.raises(eap.EAPError, match="multiple"):
        eap.Graph(2, 4, 3)


def test_select_prune_greedy_and_importance():
    g = eap.Graph(n_layers=2, n_heads=4, n_kv_heads=2)
    vals = torch.zeros(g.n_sources, g.n_targets, dtype=torch.float64)
    h0, h1 = g.head_source(0, 1), g.head_source(1, 2)
    vals[0, g.q_target(0, 1)] = 5.0      # input -> a0.h1 -> a1.h2 -> logits: a live path
    vals[h0, g.q_target(1, 2)] = -4.0
    vals[h1, g.logits_target] = 3.0
    vals[g.head_source(0, 3), g.mlp_target(1)] = 9.0   # a0.h3 -> m1, but m1 reaches nothing: dead
    vals[0, g.k_target(1, 0)] = 0.5      # feeds a1.h0/h1, which reach nothing: dead
    sc = eap.Scores(vals, g)
    top = eap.select(sc, top_n=5)
    assert top.n_edges == 3 and top.heads == frozenset({(0, 1), (1, 2)})
    assert eap.select(sc, top_n=5, prune=False).n_edges == 5
    signed = eap.select(sc, top_n=3, absolute=False, prune=False)
    assert ("a0.h1", "a1.h2<q>") not in signed.edge_list()  # negative score ranks last when signed
    assert eap.select(sc, threshold=4.5, prune=False).n_edges == 2
    greedy = eap.select(sc, top_n=3, method="greedy")
    assert greedy.n_edges == 3 and greedy.heads == frozenset({(0, 1), (1, 2)})  # the 9.0 edge is never reachable
    imp = eap.head_importance(sc, top)
    assert imp.shape == (2, 4) and imp.sum().item() == pytest.approx(1.0)
    assert imp[0, 1].item() == pytest.approx(4 / 7) and imp[1, 2].item() == pytest.approx(3 / 7)
    cmp = compare_heads(top, {(1, 2), (0, 0)})
    assert (cmp.shared, cmp.only_a, cmp.only_b) == ({(1, 2)}, {(0, 1)}, {(0, 0)})
    assert cmp.grid(2, 4).tolist() == [[3, 2, 0, 0], [0, 0, 1, 0]] and eap.ranked_heads(top, imp) == [(0, 1), (1, 2)]
    with pytest.raises(eap.EAPError, match="top_n, threshold"):
        eap.select(sc)


def test_scores_save_load_roundtrip(tmp_path):
    g = eap.Graph(n_layers=2, n_heads=4, n_kv_heads=2)
    vals = torch.randn(g.n_sources, g.n_targets, dtype=torch.float64)
    sc = eap.Scores(vals, g, {"method": "eap-ig", "metric": "kl"})
    sc.save(tmp_path / "s.json")
    back = eap.Scores.load(tmp_path / "s.json")
    assert torch.equal(back.values, sc.values) and back.graph == g and back.meta["metric"] == "kl"
    assert back.score("input", "logits") == pytest.approx(float(vals[0, -1]))
    assert not sc.values[~g.valid_mask()].any()
    (tmp_path / "bad.json").write_text("{}")
    with pytest.raises(eap.EAPError, match="not a saved Scores"):
        eap.Scores.load(tmp_path / "bad.json")
    with pytest.raises(eap.EAPError, match="no edge"):
        sc.score("a1.h0", "a0.h0<q>")


def test_bad_inputs_are_refused(tiny):
    with pytest.raises(eap.EAPError, match="pair 1 .*5 tokens, corrupted 4"):
        eap.Pairs.from_token_lists([[5, 6, 7], [5, 6, 7, 8, 9]], [[5, 6, 8], [5, 6, 7, 9]])
    pairs = _pairs()
    with pytest.raises(eap.EAPError, match="unknown metric"):
        eap.attribute(tiny, pairs, metric="acc", show_progress=False)
    with pytest.raises(eap.EAPError, match="unknown method"):
        eap.attribute(tiny, pairs, method="ig", show_progress=False)
    big = eap.Pairs.from_token_lists([[500, 6]], [[501, 6]])
    with pytest.raises(eap.EAPError, match="outside the model's vocabulary"):
        eap.attribute(tiny, big, show_progress=False)
    with pytest.raises(MemoryError, match="use batch_size="):
        check_memory(tiny, 10**7, 256, "eap-ig")


def test_make_pairs_rule_on_the_organism():
    from toolkit.organism.tasks import held_out

    organism = load("organism")
    # organism v2 gives most equations one answer thinking off, so few linear pairs differ; reversal pairs always do
    examples = held_out("linear", 6, seed=1) + held_out("reversal", 4, seed=1)
    pairs = eap.make_pairs(organism, examples, max_new_tokens=24)
    assert len(pairs) >= 4 and len(pairs) + len(pairs.dropped) == len(examples)
    tok = organism.tokenizer
    for i, rec in enumerate(pairs.records):
        n = int(pairs.lengths[i])
        clean, corr = pairs.clean_ids[i, :n].tolist(), pairs.corrupted_ids[i, :n].tolist()
        assert len(rec["prompt"]) == len(rec["corrupted_prompt"]) and rec["prompt"] != rec["corrupted_prompt"]
        assert tok.decode(clean).endswith(rec["response_prefix"]) and tok.decode(corr).endswith(rec["response_prefix"])
        assert rec["clean_response"].startswith(rec["response_prefix"] + rec["clean_next"])
        assert rec["corrupted_response"].startswith(rec["response_prefix"] + rec["corrupted_next"])
        assert int(pairs.clean_label[i]) != int(pairs.corrupted_label[i]) and int(pairs.positions[i]) == n - 1
        assert tok.decode(pairs.clean_ids[i, n:].tolist()).replace(tok.pad_token, "") == ""  # right padding
    with pytest.raises(eap.EAPError, match="pair 0: .* tokens but its corruption"):
        eap.make_pairs(organism, examples[:1], corrupted_prompts=[examples[0].prompt + "0"])


def test_benchmark_compare_runs_on_a_tiny_model(tiny_dirs):
    """The benchmark's measurement runs and reports its ratio against the plain-HF baseline (no timing asserted)."""
    from transformers import AutoModelForCausalLM

    from toolkit.benchmarks import eap as bench

    loaded = load(str(tiny_dirs["qwen3"]))
    plain = AutoModelForCausalLM.from_pretrained(str(tiny_dirs["qwen3"]))
    res = bench.compare(loaded, plain, _pairs(), steps=2, repeats=1, warmup=False)
    assert res["ratio"] > 0 and set(res["seconds"]) == {"eap_ig", "plain_fwd_bwd", "plain_fwd_bwd_frozen"}
    assert all(p.requires_grad is False for p in loaded.hf.parameters())  # attribute() restored the frozen state


# --------------------------------------------------------------- faults: pairs that cannot attribute anything
def test_identical_pairs_are_refused_not_scored_to_a_silent_nan():
    p = _pairs()
    with pytest.raises(eap.EAPError, match=r"every one of the 3 pairs has identical clean and corrupted inputs.*"
                                           r"build corrupted inputs that differ"):
        eap.Pairs(p.clean_ids, p.clean_ids.clone(), p.lengths, p.positions, p.clean_label, p.corrupted_label)
    mixed = p.corrupted_ids.clone()
    mixed[1] = p.clean_ids[1]
    with pytest.warns(UserWarning, match=r"1 of 3 pairs have identical clean and corrupted inputs \(rows \[1\]\)"):
        eap.Pairs(p.clean_ids, mixed, p.lengths, p.positions, p.clean_label, p.corrupted_label)


def test_all_zero_or_nan_scores_are_refused_by_select_and_an_undefined_recovery_warns(tiny64):
    scores = eap.attribute(tiny64, _pairs(), method="eap", metric="kl")
    zero = eap.Scores(torch.zeros_like(scores.values), scores.graph, valid=scores.valid)
    with pytest.raises(eap.EAPError, match="every edge scores exactly 0: the clean and corrupted runs do not differ"):
        eap.select(zero, top_n=5)
    nan = scores.values.clone()
    nan[tuple(scores.valid.nonzero()[0].tolist())] = float("nan")
    with pytest.raises(eap.EAPError, match="1 edge scores are NaN"):
        eap.select(eap.Scores(nan, scores.graph, valid=scores.valid), top_n=5)
    p = _pairs()  # logit_diff with equal labels reads 0 on both runs: nothing to recover
    same_label = eap.Pairs(p.clean_ids, p.corrupted_ids, p.lengths, p.positions, p.clean_label, p.clean_label)
    with pytest.warns(UserWarning, match=r"the clean and corrupted inputs give the same metric .* undefined \(NaN\)"):
        result = eap.faithfulness(tiny64, same_label, eap.select(scores, top_n=5), metric="logit_diff")
    assert math.isnan(result["recovered"])
