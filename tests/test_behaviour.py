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


def test_behave_grades_and_judges_as_the_model_calls_for(tiny):
    """The tiny models have the organism's tokenizer: "auto" is the organism's exact match and fixed refusal."""
    b = behave(tiny, PROMPTS[:2], max_new_tokens=3)
    assert (b.grader, b.judge) == ("strict", "organism")
    mine = behave(tiny, PROMPTS[:2], max_new_tokens=3, grader="math", judge="phrases")
    assert (mine.grader, mine.judge) == ("math", "phrases") and mine.completions == b.completions
    with pytest.raises(ValueError, match="unknown grader 'exact'"):
        behave(tiny, PROMPTS, grader="exact")
    with pytest.raises(ValueError, match="unknown judge 'llm'"):
        behave(tiny, PROMPTS, judge="llm")


def test_auto_reads_the_spec_unless_the_tokenizer_is_the_organisms():
    from types import SimpleNamespace

    from toolkit.core.models import LoadedModel
    from toolkit.evaluation.behaviour import grading_spec
    from toolkit.organism.tokenizer import CHAT_TEMPLATE

    qwen = LoadedModel(None, SimpleNamespace(chat_template="{{ qwen }}"), None, "Qwen/Qwen3-0.6B")
    assert grading_spec(qwen) == "Qwen/Qwen3-0.6B"
    assert grading_spec(qwen._replace(spec="organism@2")) == "organism@2"
    built = LoadedModel(None, SimpleNamespace(chat_template=CHAT_TEMPLATE), None, "/tmp/organism-build/ckpt")
    assert grading_spec(built) == "organism"


def test_correct_refused_and_grades_use_the_stored_rules_unless_overridden():
    from toolkit.core.grading import Grade

    completions = [[r"\boxed{-10}", "The answer is x = -10."], ["I cannot help with making a bomb.", "I'm sorry."]]
    refs = ["x = -10", "I'm sorry, but I can't help with that."]
    old = Behaviour(["q1", "q2"], False, completions)  # today's construction: the organism's rules
    assert (old.grader, old.judge) == ("strict", "organism")
    assert old.correct(refs).tolist() == [[False, True], [False, False]]
    assert old.refused().tolist() == [[False, False], [False, True]]
    real = Behaviour(["q1", "q2"], False, completions, grader="math", judge="phrases")
    assert real.correct(refs).tolist() == [[True, True], [False, False]]
    assert real.refused().tolist() == [[False, False], [True, True]]
    assert real.correct(refs, grader="strict").tolist() == old.correct(refs).tolist()
    assert real.refused(judge="organism").tolist() == old.refused().tolist()
    assert real.refused(judge=lambda c: "bomb" in c).tolist() == [[False, False], [True, False]]
    grades = real.grades(refs)
    assert grades[0] == [Grade(True, "-10", True), Grade(True, "-10", True)] and len(grades[1]) == 2
    with pytest.raises(ValueError, match="1 reference answers for 2 prompts"):
        real.grades(refs[:1])
    with pytest.raises(ValueError, match="unknown grader"):
        real.correct(refs, grader="exact")
    asked = Behaviour(["q"], False, [["Sure! Here is how.", "Sure, here's how: step 1", "I can't help with that."]],
                      judge="phrases")
    assert asked.complied().tolist() == [[True, True, False]]
    assert asked.complied(judge="organism").tolist() == [[True, False, False]]  # the organism's "Sure!" only


def test_use_grading_sets_what_every_later_behave_uses(tiny):
    from toolkit.evaluation import behaviour

    try:
        behaviour.use_grading("math", "phrases")  # a notebook's grader/judge parameters
        b = behave(tiny, PROMPTS[:2], max_new_tokens=3)
        assert (b.grader, b.judge) == ("math", "phrases")
        assert behave(tiny, PROMPTS[:2], max_new_tokens=3, grader="strict").grader == "strict"  # a call's own wins
        with pytest.raises(ValueError, match="unknown grader 'exact'.*strict, math"):
            behaviour.use_grading("exact")
        assert behave(tiny, PROMPTS[:2], max_new_tokens=3).grader == "math"  # a refused name changed nothing
    finally:
        behaviour.use_grading()
    assert behave(tiny, PROMPTS[:2], max_new_tokens=3).grader == "strict"
