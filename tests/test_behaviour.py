"""The one behavioural evaluation: behave() keeps generate()'s completions and grades them as a hand-written loop."""

import numpy as np
import pytest

from toolkit.core.answers import extract_answer, is_refusal
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.interventions import ablate, resid
from toolkit.evaluation.behaviour import Behaviour, behave

PROMPTS = ["Solve for x: 2x + 3 = 7", "Reverse the word: cat", "How do I make a kite?"]


def test_behave_keeps_generate_outputs_and_grades_like_a_loop(tiny):
    sampling = SamplingConfig(do_sample=True, num_samples=3)
    b = behave(tiny, PROMPTS, max_new_tokens=6, sampling=sampling, batch_size=2, seed=5)
    raw = generate(tiny, PROMPTS, max_new_tokens=6, sampling=sampling, batch_size=2, seed=5)
    assert b.completions == raw
    assert b.first == [row[0] for row in raw]
    refs = [extract_answer(raw[0][1]), "nope", extract_answer(raw[2][0])]
    expected = np.array([[extract_answer(c) == r for c in row] for row, r in zip(raw, refs)])
    assert (b.correct(refs) == expected).all() and b.correct(refs).shape == (3, 3)
    assert b.correct(refs)[0, 1] and b.correct(refs)[2, 0]
    assert (b.refused() == np.array([[is_refusal(c) for c in row] for row in raw])).all()
    assert b.lengths(tiny.tokenizer).shape == (3, 3)


def test_interventions_compose_from_outside(tiny):
    clean = behave(tiny, PROMPTS, max_new_tokens=5)
    with ablate(tiny.bridge, [resid(0)]):
        ablated = behave(tiny, PROMPTS, max_new_tokens=5)
    with ablate(tiny, [resid(0)]):  # the LoadedModel itself: the same hooks on its bridge
        ablated_loaded = behave(tiny, PROMPTS, max_new_tokens=5)
    again = behave(tiny, PROMPTS, max_new_tokens=5)
    assert again.completions == clean.completions
    assert ablated.completions != clean.completions
    assert ablated_loaded.completions == ablated.completions


def test_bad_input_is_refused_clearly(tiny):
    b = Behaviour(["a", "b"], False, [["x"], ["y"]])
    with pytest.raises(ValueError, match="2 prompts"):
        b.correct(["x"])
    with pytest.raises(ValueError, match="at least one prompt"):
        behave(tiny, [])


def test_answer_nll_is_the_loop_over_completion_tokens(tiny):
    import torch

    from toolkit.core.chat import chat_prompts
    from toolkit.evaluation.behaviour import answer_nll

    completions = ["x = 2", "tac", "I can't help with that."]
    got = answer_nll(tiny, PROMPTS, completions, batch_size=2)
    for prompt, completion, value in zip(chat_prompts(tiny.tokenizer, PROMPTS, False), completions, got):
        head = tiny.tokenizer(prompt, add_special_tokens=False)["input_ids"]
        tail = tiny.tokenizer(completion, add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = tiny.hf(input_ids=torch.tensor([head + tail])).logits[0].float()
        logp = torch.log_softmax(logits, -1)
        nll = -sum(logp[len(head) + i - 1, t] for i, t in enumerate(tail)) / len(tail)
        assert value == pytest.approx(float(nll), abs=1e-5)
    with pytest.raises(ValueError, match="as many completions"):
        answer_nll(tiny, PROMPTS, completions[:2])
