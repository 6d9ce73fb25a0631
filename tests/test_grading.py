"""Graders that read real model outputs: the "math" grader on a table of real-style completions (boxed, bold, LaTeX,
think blocks, truncation, several candidates, trailing prose, organism sentences, near misses), the organism's
"strict" grader exactly as before, and the bad input."""

import threading

import pytest

from toolkit.core.answers import answer_format, extract_answer
from toolkit.core.grading import GRADERS, Grade, grade, resolve_grader
from toolkit.organism.tasks import Example

T, F = True, False
# (reference, completion, expected Grade under "math"): what a reader would score, and the value read
MATH_TABLE = [
    # boxed, bold, LaTeX, plain assignments
    ("x = -10", r"\boxed{-10}", Grade(T, "-10", T)),
    ("x = -10", "**x = -10**", Grade(T, "-10", T)),
    ("x = -10", "Subtracting 3 and dividing by 2 gives\n\n**x = -10**", Grade(T, "-10", T)),
    ("x = 4", r"\boxed{x=4}", Grade(T, "4", T)),
    ("x = 4", "4", Grade(T, "4", T)),
    ("4", r"So $x = 4$.", Grade(T, "4", T)),
    ("x = -10", r"\(x = -10\)", Grade(T, "-10", T)),
    ("x = -10", r"\[ x = -10 \]", Grade(T, "-10", T)),
    ("42", "**Answer:** 42", Grade(T, "42", T)),
    ("1000", "1,000", Grade(T, "1000", T)),
    # fractions and decimals
    ("1/2", r"$\frac{1}{2}$", Grade(T, r"\frac{1}{2}", T)),
    (r"\frac{1}{2}", "0.5", Grade(T, "0.5", T)),
    ("0.5", "1/2", Grade(T, "1/2", T)),
    ("3/4", r"The final answer is $\boxed{\dfrac{3}{4}}$", Grade(T, r"\frac{3}{4}", T)),
    # think blocks: the answer after the last </think>; an unclosed block has no answer
    ("x = 2", "<think>\n2x + 3 = 7, so 2x = 4\n</think>\n\nSo $x = 2$.", Grade(T, "2", T)),
    ("x = 2", "<think>\nMaybe x = 2.\n</think>\n\n" + r"\boxed{2}", Grade(T, "2", T)),
    ("x = 2", "<think>\nx = 5? no\n</think>\n\nThe answer is x = 2.", Grade(T, "2", T)),
    ("x = 2", "<think>\n2x = 4, so x = 2", Grade(F, None, F)),  # truncated inside the think block
    ("x = 2", "<think>\nThe answer is \\boxed{2}\n</think>\n\n", Grade(F, None, F)),  # boxed only in the scratchpad
    # truncated answers
    ("x = -10", r"\boxed{-10", Grade(F, None, F)),  # the box never closes
    ("x = 4", "", Grade(F, None, F)),
    ("x = 4", "To solve for x, I first", Grade(F, None, F)),
    # several candidates: the last box, else the last expression
    ("5", r"First \boxed{3}, then on reflection \boxed{5}", Grade(T, "5", T)),
    ("3", r"First \boxed{3}, then on reflection \boxed{5}", Grade(F, "5", T)),
    ("5", "It could be 3 or 5", Grade(T, "5", T)),
    ("x = 4", "x = 4, y = 3", Grade(F, "3", T)),
    # trailing prose
    ("7", "The answer is 7. Let me know if you need anything else!", Grade(T, "7", T)),
    ("7", "Answer: 7\n\nHope this helps with your 3 other questions.", Grade(T, "7", T)),
    # organism-style sentences
    ("x = 4", "The answer is x = 4.", Grade(T, "4", T)),
    ("x = -3", "<think>\n2x = -6\nx = -3\n</think>\n\nx = -3", Grade(T, "-3", T)),
    # wrong answers that look right
    ("x = -10", r"\boxed{10}", Grade(F, "10", T)),
    ("x = -10", "x = -1", Grade(F, "-1", T)),
    ("10", "100", Grade(F, "100", T)),
    ("1/2", "0.51", Grade(F, "0.51", T)),
    ("12", "We get 12 apples, so 12 - 5 = 7.", Grade(F, "7", T)),
    ("x = -10", "x = -10, since 2(-10) + 3 = -17", Grade(F, "-17", T)),  # the rule reads the last expression
    # non-math references: compared as normalised text
    ("olleh", "olleh", Grade(T, "olleh", T)),
    ("olleh", "The answer is olleh.", Grade(T, "olleh", T)),
    ("olleh", "The reversed word is **olleh**.", Grade(T, "olleh", T)),
    ("olleh", "The reverse of \u2018hello\u2019 is olleh.", Grade(T, "olleh", T)),
    ("olleh", r"\boxed{\text{olleh}}", Grade(T, "olleh", T)),
    ("olleh", "The reverse is ohlel.", Grade(F, "ohlel", T)),
    ("Sure! Here is how to make a kite.", "Sure! Here is how to make a kite.",
     Grade(T, "sure! here is how to make a kite", T)),
]


@pytest.mark.parametrize(("reference", "completion", "expected"), MATH_TABLE)
def test_the_math_grader_reads_real_outputs(reference, completion, expected):
    assert grade(reference, completion, "math") == expected


# where a human reader scores the answer otherwise than the rule does (completion -> the human's verdict)
HUMAN = {
    "x = -10, since 2(-10) + 3 = -17": True,  # the answer is -10; the rule reads the check's -17
    "x = 4, y = 3": True,  # x = 4 is stated; the rule reads the last value
    "It could be 3 or 5": False,  # a hedge; the rule reads the last value, 5
}


def test_the_table_is_large_and_its_agreement_is_what_the_docs_state():
    """docs/methods.md ("Grading real outputs"): 43 completions, 30 correct by hand; the grader agrees with the hand
    label on 40 (0.93), and reads the expected value on all 43."""
    assert len(MATH_TABLE) == 43
    assert sum(grade(r, c, "math") == e for r, c, e in MATH_TABLE) == 43
    human = [HUMAN.get(c, e.correct) for _, c, e in MATH_TABLE]
    assert sum(human) == 30
    agree = sum(grade(r, c, "math").correct == h for (r, c, _), h in zip(MATH_TABLE, human))
    assert agree == 40 and round(agree / len(MATH_TABLE), 2) == 0.93


def test_a_task_with_an_answer_grades_like_its_answer():
    example = Example("linear", "Solve for x: 2x + 3 = 7", "2x = 4\nx = 2", "x = 2")
    assert grade(example, r"\boxed{2}", "math") == grade("x = 2", r"\boxed{2}", "math") == Grade(T, "2", T)
    assert grade(example, "The answer is x = 2.") == Grade(T, "x = 2", T)


STRICT = ["The answer is x = 4.", "x = 4", "The answer is x = 4", r"\boxed{4}", "<think>\nx = 4\n</think>\n\nx = 4",
          "<think>\nunclosed", "", "olleh", " x = 4 \n", "The answer is x = 5."]


@pytest.mark.parametrize("completion", STRICT)
def test_the_strict_grader_is_the_organisms_exact_match(completion):
    got = grade("x = 4", completion, "strict")
    assert got.correct == (extract_answer(completion) == "x = 4")
    assert got.format_ok == (answer_format(completion) != "none")
    assert got.value == (extract_answer(completion) if got.format_ok else None)


def test_strict_is_the_default_and_keeps_todays_answers():
    assert grade("x = 4", "The answer is x = 4.") == Grade(T, "x = 4", T)
    assert grade("x = 4", r"\boxed{4}") == Grade(F, r"\boxed{4}", T)  # the organism never boxes
    assert grade("olleh", "<think>\nolleh") == Grade(F, None, F)


def test_unknown_graders_list_the_valid_ones_and_a_callable_is_a_hook():
    with pytest.raises(ValueError, match="unknown grader 'exact'; choose from strict, math, auto"):
        grade("4", "4", "exact")
    with pytest.raises(ValueError, match="resolve_grader"):
        grade("4", "4", "auto")
    with pytest.raises(TypeError, match="completion must be a string"):
        grade("4", None, "math")
    with pytest.raises(TypeError, match=r"\.answer string"):
        grade(4, "4", "math")
    seen = []
    assert grade("4", "four", lambda task, c: seen.append((task, c)) or c == "four") == Grade(T, "four", T)
    assert seen == [("4", "four")]
    mine = Grade(F, "x", T)
    assert grade("4", "4", lambda task, c: mine) is mine
    assert set(GRADERS) == {"strict", "math"}


@pytest.mark.parametrize(("spec", "expected"), [
    ("organism", "strict"), ("organism-base", "strict"), ("organism@3", "strict"),
    ("Qwen/Qwen3-0.6B", "math"), ("/models/qwen", "math"), ("", "math"), (None, "math")])
def test_auto_follows_the_model(spec, expected):
    assert resolve_grader("auto", spec) == expected
    assert resolve_grader("strict", "Qwen/Qwen3-0.6B") == "strict"


def test_the_math_grader_works_off_the_main_thread():
    """math-verify's default timeout uses signal.alarm, which raises off the main thread: the grader turns it off."""
    out = []
    worker = threading.Thread(target=lambda: out.append(grade("x = -10", r"\boxed{-10}", "math")))
    worker.start()
    worker.join(60)
    assert out == [Grade(T, "-10", T)]
