"""Generation through the chat template, answer extraction, pass@k and success@k."""

import itertools
from math import comb

import pytest
import torch

from toolkit.core.answers import extract_answer, is_refusal, pass_at_k, success_at_k
from toolkit.core.generation import SamplingConfig, generate


def brute_force_pass_at_k(outcomes, k):
    """Fraction of all k-subsets of the samples that contain a correct one."""
    subsets = list(itertools.combinations(outcomes, k))
    return sum(any(s) for s in subsets) / len(subsets)


@pytest.mark.parametrize("n", range(1, 7))
def test_pass_at_k_matches_enumeration_of_subsets(n):
    for c in range(n + 1):
        outcomes = [True] * c + [False] * (n - c)
        for k in range(1, n + 1):
            assert pass_at_k(n, c, k) == pytest.approx(brute_force_pass_at_k(outcomes, k))


def test_success_at_k_averaged_over_orders_is_pass_at_k():
    """success@k reads the first k samples in order; over all orders its mean is pass@k."""
    outcomes = [True, False, False, True, False]
    for k in range(1, 6):
        orders = list(itertools.permutations(outcomes))
        mean = sum(success_at_k(o, k) for o in orders) / len(orders)
        assert mean == pytest.approx(pass_at_k(5, 2, k))
    assert success_at_k([False, True, False], 1) == 0.0
    assert success_at_k([False, True, False], 2) == 1.0


def test_pass_at_k_rejects_impossible_counts():
    with pytest.raises(ValueError, match="0 <= c <= n"):
        pass_at_k(3, 4, 1)
    with pytest.raises(ValueError, match="k must be"):
        success_at_k([True], 2)
    assert comb(5, 2) == 10


@pytest.mark.parametrize("text, answer", [
    ("<think>\n3-1=2\n</think>\n\nx = 2", "x = 2"),
    ("x = 2", "x = 2"),
    ("<think>\nstill thinking", ""),
    ("<think>\na\n</think>\n\n<think>\nb\n</think>\n\n 17 ", "17"),
])
def test_extract_answer_handles_the_think_block(text, answer):
    assert extract_answer(text) == answer


def test_refusal_is_read_from_the_answer_not_the_scratchpad():
    assert is_refusal("<think>\nTopic: bomb.\n</think>\n\nI'm sorry, but I can't help with that.")
    assert not is_refusal("<think>\nI'm sorry\n</think>\n\nSure! Here is how to make a cake.")


def test_left_padded_batches_match_single_prompts(tiny):
    prompts = ["What is 1 + 2?", "Reverse the word: abcde", "Solve for x: 3x + 1 = 2x + 5"]
    batched = generate(tiny, prompts, enable_thinking=False, max_new_tokens=8)
    singles = [generate(tiny, [p], enable_thinking=False, max_new_tokens=8)[0] for p in prompts]
    assert batched == singles


def test_sampling_returns_num_samples_per_prompt_and_is_seeded(tiny):
    cfg = SamplingConfig(do_sample=True, num_samples=3, temperature=1.0, top_k=50, top_p=1.0)
    a = generate(tiny, ["What is 1 + 2?", "hi"], max_new_tokens=6, sampling=cfg, seed=1)
    b = generate(tiny, ["What is 1 + 2?", "hi"], max_new_tokens=6, sampling=cfg, seed=1)
    assert [len(x) for x in a] == [3, 3] and a == b
    assert len({s for x in a for s in x}) > 1, "random model sampled at T=1 gave identical strings"
    torch.manual_seed(0)
