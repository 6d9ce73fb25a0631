"""Every same-size unit set at once (toolkit.evaluation.causal): per-row masks, batched set scores, teacher-forced
continuation log-probabilities, and the paired sign-flip permutation test."""

import numpy as np
import pytest
import torch

from toolkit.evaluation import causal, nulls


def _sequences(tok):
    texts = [("What is 12 + 7?", " 19"), ("Reverse the word: abc", " cba"), ("2 + 2 =", " 4 ok")]
    return [(tok(p, add_special_tokens=False)["input_ids"], tok(c, add_special_tokens=False)["input_ids"])
            for p, c in texts]


def test_continuation_logprob_matches_one_unpadded_pass_each(tiny):
    seqs = _sequences(tiny.tokenizer)
    got = causal.continuation_logprob(tiny.hf, seqs, repeat=2)
    assert got.shape == (6,)
    for i, (p, c) in enumerate(seqs):
        ids = torch.tensor([list(p) + list(c)])
        logp = torch.log_softmax(tiny.hf(input_ids=ids).logits[0, :-1].float(), -1)
        want = logp[len(p) - 1:].gather(-1, ids[0, len(p):, None]).sum()
        assert float(got[i]) == pytest.approx(float(want), abs=1e-4)
        assert float(got[i + 3]) == pytest.approx(float(want), abs=1e-4)
    with pytest.raises(ValueError, match="non-empty"):
        causal.continuation_logprob(tiny.hf, [([1], [])])


@pytest.mark.parametrize("kind", ["head", "neuron"])
def test_unit_set_scores_equal_one_condition_at_a_time(tiny, kind):
    seqs = _sequences(tiny.tokenizer)
    units = ([(lay, h) for lay in range(2) for h in range(4)] if kind == "head"
             else [(lay, u) for lay in range(2) for u in range(0, 128, 9)])
    sets = nulls.same_size_sets(units, 2, max_sets=10, n_random=7, seed=1) + [[]]
    got = causal.unit_set_scores(tiny.bridge, sets, lambda r: causal.continuation_logprob(tiny.hf, seqs, repeat=r),
                                 len(seqs), kind=kind, factor=0.0, sets_per_batch=3)
    assert got.shape == (8, 3)
    make = causal.Condition.on_heads if kind == "head" else causal.Condition.on_neurons
    for s, row in zip(sets, got):
        with causal.intervene(tiny.bridge, make("x", s, 0.0) if s else causal.Condition("x")):
            want = causal.continuation_logprob(tiny.hf, seqs).numpy()
        np.testing.assert_allclose(row, want, atol=1e-4)
    assert not np.allclose(got[0], got[-1])
    with pytest.raises(ValueError, match="out of range"):
        causal.unit_set_scores(tiny.bridge, [[(9, 0)]], lambda r: torch.zeros(r), 1, kind=kind)


def test_paired_permutation_p_and_null():
    rng = np.random.default_rng(0)
    base = rng.normal(0, 1, 30)
    p, draws = nulls.paired_permutation(base + 1.0, base, n_perm=999, seed=1)
    assert p == pytest.approx(1 / 1000) and draws.shape == (999,) and abs(draws.mean()) < 0.1
    p_down, _ = nulls.paired_permutation(base + 1.0, base, direction=-1, n_perm=999)
    assert p_down > 0.99
    noise = rng.normal(0, 1, 30)
    p_two, _ = nulls.paired_permutation(base + noise * 0.01, base, direction=0, n_perm=999)
    assert 0.0 < p_two <= 1.0
    with pytest.raises(ValueError, match="one paired value per problem"):
        nulls.paired_permutation([], [])
