"""The rewards of notebook 04's GRPO runs, summed with equal weights, and the answer formats they check.

- :func:`accuracy_reward`: 1 if the final answer (the text after ``</think>``) is right by the row's grader
  (:func:`toolkit.core.grading.grade`; the dataset's ``grader`` column: ``"strict"``, the organism's exact match,
  for the organism, ``"math"`` for any other model, :func:`grader_for`), else 0;
- :func:`format_reward`: 1 if the whole assistant turn is one well-formed ``<think>…</think>`` block followed by a
  one-line answer in the task's answer format (:data:`ANSWER_PATTERNS`: ``x = N`` for equations, an integer for
  sums), else 0.

The assistant turn is read from the prompt's tail plus the completion (:func:`assistant_turn`). Distillation keeps a
teacher's trace only when :func:`accuracy_reward` gives it 1 (:mod:`toolkit.training.distill`).
"""

from __future__ import annotations

import re

from toolkit.core.answers import extract_answer
from toolkit.core.grading import grade, resolve_grader
from toolkit.organism import grading_spec
from toolkit.organism.tokenizer import EMPTY_THINK

ANSWER_PATTERNS = {"linear": r"x = -?\d+", "arithmetic": r"-?\d+", "reversal": r"[a-z]+"}  # a task's answer format


def _text(completion) -> str:
    """A completion as text (TRL passes strings for standard prompts, message lists for conversational ones)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion


def assistant_turn(prompt, completion) -> str:
    """The assistant turn as the model wrote it: the empty think block when the prompt holds it (thinking off),
    then the completion."""
    prefix = EMPTY_THINK if isinstance(prompt, str) and prompt.endswith(EMPTY_THINK) else ""
    return prefix + _text(completion)


_TURN = re.compile(r"<think>\n((?:(?!</?think>)[\s\S])*)</think>\n\n([^\n]*)")


def well_formed(turn: str, answer_pattern: str) -> bool:
    """One ``<think>…</think>`` block (no nested or second tag), a blank line, then a one-line answer whose value
    (:func:`~toolkit.core.answers.extract_answer`: bare, or in the sentence ``The answer is ….``) matches
    ``answer_pattern`` exactly."""
    m = _TURN.fullmatch(turn)
    return bool(m) and re.fullmatch(answer_pattern, extract_answer(m.group(2))) is not None


def grader_for(tokenizer, spec: str) -> str:
    """The grader of a model's answers (``"auto"`` resolved as :func:`toolkit.evaluation.behaviour.behave` does)."""
    return resolve_grader("auto", grading_spec(tokenizer, spec))


def accuracy_reward(completions, answer, prompts=None, grader=None, **kwargs) -> list[float]:
    """1.0 where the final answer (after the last ``</think>``) is ``answer`` by the row's ``grader`` (a dataset
    column; ``"strict"``, exact match, where there is none), else 0.0."""
    prompts = prompts or [None] * len(completions)
    graders = grader or ["strict"] * len(completions)
    return [float(grade(a, assistant_turn(p, c), g).correct)
            for p, c, a, g in zip(prompts, completions, answer, graders, strict=True)]


def format_reward(completions, answer_pattern, prompts=None, **kwargs) -> list[float]:
    """1.0 where the assistant turn is :func:`well_formed` for its task's answer format, else 0.0."""
    prompts = prompts or [None] * len(completions)
    return [float(well_formed(assistant_turn(p, c), pat)) for p, c, pat in zip(prompts, completions, answer_pattern)]
