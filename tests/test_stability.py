"""Circuit stability and emergent heads against the base-vs-itself null (toolkit.evaluation.stability, .emergence),
and EAP's exact per-example scores (attribute(per_example=True)).

Hand-made score tensors: each "resample" of ``ONE_EACH`` counts holds exactly one pair, so inclusion frequencies are
known fractions.
"""

import numpy as np
import pytest
import torch

from toolkit.core.models import load
from toolkit.evaluation import emergence as em
from toolkit.evaluation import stability as st
from toolkit.evaluation.claims import Null
from toolkit.methods import eap

G = eap.Graph(n_layers=2, n_heads=4, n_kv_heads=2)
ONE_EACH = np.eye(4, dtype=np.int64)  # resample r = pair r alone


def _path(values, head, weight):
    """A live path input → head (its q input) → logits of ``weight``."""
    layer, h = head
    values[0, G.q_target(layer, h)] = weight
    values[G.head_source(layer, h), G.logits_target] = weight


def _scores(rows_heads, noise=0.0, seed=0):
    """Per-example scores: row r carries a live path through ``rows_heads[r]`` (plus small noise)."""
    gen = torch.Generator().manual_seed(seed)
    per = noise * torch.rand(len(rows_heads), G.n_sources, G.n_targets, generator=gen, dtype=torch.float64)
    for r, head in enumerate(rows_heads):
        _path(per[r], head, 5.0)
    per = per.masked_fill(~G.valid_mask(), 0.0)
    return eap.Scores(per.mean(0), G, {"steps": 5}, per_example=per)


def test_inclusion_frequencies_are_known_fractions():
    a, b = (0, 1), (1, 2)
    sc = _scores([a, a, a, b])  # the a-path is the top in exactly 3 of 4 pairs
    bs = st.bootstrap_circuit(sc, top_n=2, counts=ONE_EACH)
    assert bs.head_inclusion[a] == 0.75 and bs.head_inclusion[b] == 0.25 and bs.head_inclusion.sum() == 1.0
    assert bs.edge_inclusion[0, G.q_target(*a)] == 0.75 and bs.edge_inclusion[G.head_source(*b), -1] == 0.25
    assert bs.stable_heads == frozenset() and bs.threshold == st.STABLE_THRESHOLD == 0.8
    loose = st.bootstrap_circuit(sc, top_n=2, counts=ONE_EACH, threshold=0.7)
    assert loose.stable_heads == {a} and int((loose.edge_inclusion >= loose.threshold).sum()) == 2
    assert bs.full_heads == {a} and list(bs.n_heads) == [1, 1, 1, 1] and list(bs.new_heads) == [0, 0, 0, 1]
    null = bs.null("new_heads")
    assert isinstance(null, Null) and null.kind == "bootstrap-resample" and null.summary["mean"] == 0.25
    assert bs.summary()["stable_heads"] == []


def test_batched_selection_equals_eap_select():
    gen = torch.Generator().manual_seed(3)
    per = torch.randn(12, G.n_sources, G.n_targets, generator=gen, dtype=torch.float64)
    per[:, 0, G.q_target(0, 1)] += 3  # a live backbone so that pruning keeps something
    per[:, G.head_source(0, 1), G.logits_target] += 3
    sc = eap.Scores(per.mean(0), G, per_example=per)
    for top_n in (1, 5, 20, 500):
        bs = st.bootstrap_circuit(sc, top_n=top_n, n_boot=6, seed=1)
        assert torch.equal(bs.full_edges, eap.select(sc, top_n=top_n).edges)
        for b in range(bs.n_boot):
            c = torch.from_numpy(bs.counts[b]).double()
            vals = (c @ per.reshape(12, -1) / c.sum()).view(G.n_sources, G.n_targets)
            want = eap.select(eap.Scores(vals, G), top_n=top_n)
            assert torch.equal(bs.edges[b], want.edges) and frozenset(
                zip(*np.nonzero(bs.heads[b]), strict=True)) == want.heads
    assert (st.resample_counts(7, 5, seed=2).sum(1) == 7).all()


def test_jaccard_pairs_resample_i_with_resample_i():
    a, b = (0, 1), (1, 2)
    x = st.bootstrap_circuit(_scores([a, a, a, b]), top_n=2, counts=ONE_EACH)
    y = st.bootstrap_circuit(_scores([a, a, b, a]), top_n=2, counts=ONE_EACH)
    ov = st.jaccard(x, y)
    assert list(ov.samples) == [1.0, 1.0, 0.0, 0.0] and ov.estimate == 1.0  # both all-pairs circuits: {a}
    assert ov.ci[0] <= ov.ci[1] and ov.null().kind == "bootstrap-resample"
    assert list(st.jaccard(x, y, unit="edges").samples) == [1.0, 1.0, 0.0, 0.0]
    with pytest.raises(st.StabilityError, match="same n_boot"):
        st.jaccard(x, st.bootstrap_circuit(_scores([a, a, a, b]), top_n=2, n_boot=3))


def test_top_n_sensitivity_and_ig_convergence():
    sc = _scores([(0, 1)] * 4, noise=0.01)
    sens = st.top_n_sensitivity(sc, [2, 4], n_boot=20)
    assert sens.top_ns == [2, 4] and sens.heads[0] == 1.0 and sens.n_heads[0] == 1
    assert set(sens.to_results()) == {"top_ns", "heads", "heads_low", "heads_high", "edges", "n_heads", "n_stable"}
    same = st.ig_convergence(sc, sc, top_n=2)
    assert same.spearman == pytest.approx(1.0) and same.jaccard_heads == 1.0 and same.steps == (5, 5)
    other = _scores([(1, 2)] * 4, noise=0.01, seed=1)
    assert st.ig_convergence(sc, other, top_n=2).jaccard_heads == 0.0
    with pytest.raises(st.StabilityError, match="same graph"):
        st.ig_convergence(sc, eap.Scores(torch.zeros(1 + 3 * 5, 3 * 9 + 1), eap.Graph(3, 4, 2)))
    with pytest.raises(st.StabilityError, match="per_example=True"):
        st.bootstrap_circuit(eap.Scores(sc.values, G), top_n=2)


def test_base_vs_itself_null_and_emergent_margin():
    a, b = (0, 1), (1, 2)
    base = _scores([a] * 6, noise=0.01)
    null = em.base_null(base, top_n=2, n_null=20, n_inner=10)
    # a noise-free base gives the same circuit in every resample: no difference, margin 0, no null count
    assert null.margin == 0.0 and not null.count.any() and not null.set_difference.any()
    assert null.diff.shape == (20, 2, 4) and null.n == 20 and null.first.n_inner == 10
    post = _scores([b] * 6, noise=0.01, seed=1)
    pb, bb = (st.bootstrap_circuit(s, top_n=2, n_boot=30) for s in (post, base))
    reps = em.replicates(post, top_n=2, n_outer=20, n_inner=10)
    test = em.emergent_test(pb, bb, null, post_replicates=reps)
    assert test.count_ci() == (1.0, 1.0) and test.set_difference_ci() == (1.0, 1.0)
    with pytest.raises(st.StabilityError, match="n_outer equal"):
        em.emergent_test(pb, bb, null, post_replicates=em.replicates(post, top_n=2, n_outer=3, n_inner=2))
    assert test.heads == [b] and test.count == 1 and test.set_difference == {b}
    assert test.p_values[b] == pytest.approx(1 / 21) and test.p_values[a] == 1.0
    assert test.count_p == pytest.approx(1 / 21)
    assert test.change[b] > 0.9 and test.change[a] < -0.9 and test.change_low[b] <= test.change[b] <= 1
    assert test.count_null().kind == "base-vs-itself" and test.set_difference_null().summary["mean"] == 0
    assert test.summary()["count"] == 1


def test_emergent_margin_logic_on_a_hand_made_null():
    """Heads whose inclusion gain exceeds the null's 95% max-difference quantile are emergent; p per head."""
    a, b = (0, 1), (1, 2)
    post = st.bootstrap_circuit(_scores([a, a, b, b]), top_n=2, counts=ONE_EACH)  # a: 0.5, b: 0.5
    base = st.bootstrap_circuit(_scores([a, a, a, a]), top_n=2, counts=ONE_EACH)  # a: 1.0, b: 0
    max_diff = np.array([0.0] * 15 + [0.5, 0.55, 0.6, 0.6])  # 95% quantile 0.6: b's gain 0.5 is not enough
    zeros = np.zeros((19, 2, 4))
    second = zeros.copy()
    second[:, 1, 3] = max_diff  # the null's largest gain, at a head that plays no part here
    heads2 = zeros.astype(bool)
    heads2[18, 0, 0] = True  # one replicate's second resample has a head its first lacks
    null = em.BaseNull(2, 0.95, em.Replicates(zeros, zeros.astype(bool), zeros, 4),
                       em.Replicates(second, heads2, zeros, 4))
    assert list(null.max_diff) == list(max_diff) and list(null.set_difference) == [0] * 18 + [1]
    test = em.emergent_test(post, base, null)
    assert test.margin == pytest.approx(0.6) and test.heads == [] and test.difference[b] == 0.5
    assert test.p_values[b] == pytest.approx((1 + 4) / 20) and test.p_values[a] == 1.0  # 4 null maxima >= 0.5
    assert list(null.count) == [0] * 19 and test.count_p == 1.0
    lower = em.BaseNull(2, 0.9, null.first, null.second)  # 90% quantile: 0.55 + 0.2·0.05 = 0.56 > 0.5
    assert lower.margin == pytest.approx(0.56) and em.emergent_test(post, base, lower).heads == []
    lowest = em.BaseNull(2, 0.5, null.first, null.second)  # margin 0: b (gain 0.5) is emergent
    low = em.emergent_test(post, base, lowest)
    assert low.heads == [b] and low.count_p == pytest.approx((1 + 4) / 20)  # the largest gain against null maxima
    assert test.set_difference == frozenset() and test.set_difference_p == pytest.approx(20 / 20)
    assert np.isnan(test.count_ci()).all()  # no post replicates given: no interval
    with pytest.raises(st.StabilityError, match="one top_n"):
        em.emergent_test(st.bootstrap_circuit(_scores([a] * 4), top_n=3, counts=ONE_EACH), base, null)


# ---- exact per-example scores --------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["qwen2", "qwen3"])
def tiny64(request, tiny_dirs):
    return load(str(tiny_dirs[request.param]), dtype=torch.float64)


def _pairs(lengths=(7, 5, 9, 6, 8)):
    gen = torch.Generator().manual_seed(0)
    clean, corr = [], []
    for n in lengths:
        row = torch.randint(5, 120, (n,), generator=gen).tolist()
        bad = list(row)
        for j in (0, n // 2):
            bad[j] = (bad[j] + 17) % 115 + 5
        clean.append(row)
        corr.append(bad)
    cl = torch.randint(5, 120, (len(lengths),), generator=gen).tolist()
    return eap.Pairs.from_token_lists(clean, corr, cl, [(c + 3) % 115 + 5 for c in cl], pad_id=0)


@pytest.mark.parametrize(("method", "metric"), [("eap-ig", "kl"), ("eap", "logit_diff")])
def test_per_example_scores_are_exact(tiny64, method, metric, tmp_path):
    pairs = _pairs()
    kw = {"method": method, "steps": 3, "metric": metric, "show_progress": False}
    full = eap.attribute(tiny64, pairs, batch_size=2, per_example=True, **kw)
    plain = eap.attribute(tiny64, pairs, batch_size=2, **kw)
    assert full.per_example.shape == (5, full.graph.n_sources, full.graph.n_targets)
    assert plain.per_example is None and plain.values.abs().max() > 1e-4
    torch.testing.assert_close(full.per_example.mean(0), plain.values, atol=1e-10, rtol=0)
    torch.testing.assert_close(full.values, plain.values, atol=1e-10, rtol=0)
    for idx in ([0, 2], [4], [1, 3, 4]):
        sub = eap.attribute(tiny64, pairs.subset(idx), batch_size=3, **kw)  # other batches: other padding and
        # float64 summation order, which differ by up to ~4e-9 on some CPUs (AMD EPYC); scores are ≥ 1e-4
        torch.testing.assert_close(sub.values, full.per_example[idx].mean(0), atol=1e-8, rtol=0)
    full.save(tmp_path / "s.json")
    assert torch.equal(eap.Scores.load(tmp_path / "s.json").per_example, full.per_example)
    with pytest.raises(eap.EAPError, match="not 'exact'"):
        eap.attribute(tiny64, pairs, method="exact", per_example=True)


# ---- the studies' uses: exhaustive placebo head sets, figures --------------------------------------------------------

def test_head_set_test_agrees_with_one_intervention_at_a_time(tiny):
    """The batched target effect equals an independent recompute: answer_nll under causal.intervene."""
    from toolkit.evaluation import causal
    from toolkit.evaluation import placebo_sets as study
    from toolkit.evaluation.behaviour import answer_nll
    from toolkit.organism.tasks import completion, held_out
    from toolkit.organism.tokenizer import IM_END

    ex = {"arithmetic": held_out("arithmetic", 3, seed=5), "reversal": held_out("reversal", 2, seed=5)}
    got = study.head_set_test(tiny, [(1, 2)], ex, factor=0.0, seed=0, sets_per_batch=3)
    assert len(got.placebos) == 7 and set(got.tests) == {"arithmetic", "reversal"}  # every other single head
    for task, exs in ex.items():
        args = (tiny, [e.prompt for e in exs], [completion(e, False) + IM_END for e in exs])
        intact = answer_nll(*args)
        with causal.intervene(tiny.bridge, causal.Condition.on_heads("x", [(1, 2)], 0.0)):
            ablated = answer_nll(*args)
        assert got.tests[task].target_mean == pytest.approx(float(np.mean(intact - ablated)), abs=1e-4)
        assert got.tests[task].n_sets == 7 and 1 <= got.tests[task].rank <= 8
    assert set(got.to_results()["arithmetic"]) >= {"rank", "p", "ci"}


def test_stability_figures_draw(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    from toolkit.evaluation import nulls
    from toolkit.views import stability as view

    a, b = (0, 1), (1, 2)
    base, post = _scores([a] * 6, noise=0.01), _scores([b] * 6, noise=0.01, seed=1)
    bb, pb = (st.bootstrap_circuit(s, top_n=2, n_boot=20) for s in (base, post))
    test = em.emergent_test(pb, bb, em.base_null(base, top_n=2, n_null=10, n_inner=5),
                            post_replicates=em.replicates(post, top_n=2, n_outer=10, n_inner=5))
    view.inclusion_figure({"base": bb, "post": pb}).savefig(tmp_path / "i.png")
    view.sensitivity_figure({"base": st.top_n_sensitivity(base, [2, 4], n_boot=10)}).savefig(tmp_path / "s.png")
    view.change_figure({"task": test}).savefig(tmp_path / "e.png")
    assert "L1H2" in view.emergent_table({"task": test}) and "p" in view.emergent_table({"task": test})
    placebo = nulls.placebo_test([-1.0, -0.8], [[0.0, -0.1], [-0.2, 0.0], [-0.1, -0.1]], direction=-1)
    view.placebo_figure({"task": placebo}, "change").savefig(tmp_path / "p.png")
