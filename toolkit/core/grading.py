"""Grading a completion against a task's reference answer: the organism's exact match, and a math grader for real
models, behind one call, :func:`grade`.

>>> grade("x = -10", "<think>…</think>\\n\\nSo $\\boxed{-10}$.", grader="math")
Grade(correct=True, value='-10', format_ok=True)

``task`` is the reference answer (a string) or anything with an ``.answer`` string (the organism's ``Example``).
A :class:`Grade` is ``(correct, value, format_ok)``: ``value`` is the final answer read from the completion (``None``
when there is none) and ``format_ok`` says that there is one. The graders (:data:`GRADERS`):

``"strict"`` — the organism's, exactly what ``Behaviour.correct`` always did: the final answer
(:func:`~toolkit.core.answers.extract_answer`: the text after the last ``</think>``, unwrapped from ``The answer is
….``) equals the reference string; ``format_ok``: the answer part is not empty.

``"math"`` — a general grader for real models, on `math-verify <https://github.com/huggingface/Math-Verify>`_
(``parse``/``verify``, LaTeX and plain-expression extraction, symbolic and numeric equality to 6 decimals):

1. Only the answer part counts: the text after the last ``</think>``; an unclosed think block (a truncated
   scratchpad) has no answer: incorrect, ``value=None``. Markdown bold (``**``) is removed.
2. Several candidate answers: the content of the **last** ``\\boxed{…}`` (or ``\\fbox{…}``) is the answer when there
   is one; otherwise math-verify's pick over the whole answer part: an anchored ``final answer is …`` / ``answer: …``
   first, else the **last** expression (so trailing prose, "The answer is 7. Let me know…", is ignored, and "3 or 5"
   reads 5).
3. A leading variable assignment is stripped from the reference and from the prediction (``x = 4``, ``\\boxed{x=4}``
   and ``4`` are the same answer); fractions, decimals and LaTeX compare by value (``\\frac{1}{2}`` = 0.5 = 1/2).
4. A reference that math-verify reads nothing from ("olleh", a refusal sentence) is compared as text instead:
   case-folded, whitespace collapsed, surrounding quotes/backticks/``$``/``*`` and a final ``.``/``!`` removed. The
   prediction is the whole answer part when that matches; else the last boxed content, else the last bold span, else
   what follows the last ``is`` or ``:`` (to a sentence end), else the whole answer part. ``value`` is normalised.

The math grader also accepts any answer part whose normalised text (rule 4) equals the reference's. math-verify runs
with its timeouts off (``parsing_timeout=None``, ``timeout_seconds=None``): its default uses ``signal.alarm``, which
fails off the main thread (a data loader, a notebook worker). A callable ``grader(task, completion)`` returning a
:class:`Grade` (or a bool) is the per-call hook for any other grader.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

from toolkit.core.answers import answer_format, answer_text, extract_answer


@dataclass(frozen=True)
class Grade:
    """One completion graded: ``correct``; ``value``, the final answer read (``None`` when there is none);
    ``format_ok``, whether there is a readable final answer."""

    correct: bool
    value: str | None
    format_ok: bool


GraderFn = Callable[[object, str], "Grade | bool"]
AUTO = "auto"
ASSIGNMENT = re.compile(r"^\s*[A-Za-z](?:_\{?\w+\}?)?\s*=(?!=)\s*")  # x = …, y_1 = … (not x == …)
BOXED = re.compile(r"\\(?:boxed|fbox)\s*\{")
BOLD = re.compile(r"\*\*(.+?)\*\*", re.S)
ANSWER_IS = re.compile(r"(?:\bis\b|:)\s*(.+?)(?:[.!](?:\s|$)|\n|$)", re.I)  # … is X. / Answer: X
TEXT_MACRO = re.compile(r"\\(?:text|textbf|textit|mathrm|mathbf|mbox)\s*\{([^{}]*)\}")
QUOTES = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"'})


def is_organism(spec: str | None) -> bool:
    """Whether a model spec names the organism (``organism``, ``organism-base``, ``organism@N``, …)."""
    return isinstance(spec, str) and spec.startswith("organism")


def reference_of(task) -> str:
    """The reference answer of ``task``: the string itself, or its ``.answer``."""
    answer = task if isinstance(task, str) else getattr(task, "answer", None)
    if not isinstance(answer, str):
        raise TypeError(f"task must be a reference answer (str) or have an .answer string, got {type(task).__name__}")
    return answer


def normalise(text: str) -> str:
    """Text for a string comparison: ``\\text{…}`` unwrapped, curly quotes straightened, case-folded, whitespace
    collapsed, surrounding quotes/backticks/``$``/``*`` and a final ``.`` or ``!`` removed."""
    text = " ".join(TEXT_MACRO.sub(r"\1", text).translate(QUOTES).split()).casefold()
    return text.strip(" *_`'\"$").rstrip(".!").strip(" *_`'\"$")


def strip_assignment(text: str) -> str:
    """``x = 4`` → ``4``; anything else unchanged."""
    return ASSIGNMENT.sub("", text, count=1)


def last_boxed(text: str) -> str | None:
    """The content of the last ``\\boxed{…}``/``\\fbox{…}`` (braces matched), or ``None``."""
    starts = [m.end() for m in BOXED.finditer(text)]
    if not starts:
        return None
    depth, start = 1, starts[-1]
    for i in range(start, len(text)):
        depth += {"{": 1, "}": -1}.get(text[i], 0)
        if depth == 0:
            return text[start:i].strip()
    return None  # an unclosed box: a truncated answer


def strict_grade(task, completion: str) -> Grade:
    """The organism's grader: the final answer equals the reference exactly."""
    answer = extract_answer(completion)
    return Grade(answer == reference_of(task), answer if answer_format(completion) != "none" else None,
                 answer_format(completion) != "none")


def _mv():
    """math-verify, imported on first use (sympy is slow to import), its no-timeout warning silenced: the timeouts
    are off on purpose (module docstring)."""
    import math_verify.grader
    import math_verify.parser
    from math_verify import ExprExtractionConfig, LatexExtractionConfig, parse, verify

    math_verify.parser.TIMEOUT_WARNING_SHOWN = math_verify.grader.TIMEOUT_WARNING_SHOWN = True
    return parse, verify, [LatexExtractionConfig(), ExprExtractionConfig()]


def _parse(text: str) -> tuple[list, str | None]:
    """math-verify's reading of ``text``: ``(parsed, value)``, a variable assignment dropped; ``([], None)``."""
    import sympy

    parse, _, config = _mv()
    got = parse(text, config, parsing_timeout=None)
    if not got:
        return [], None
    first = got[0]
    if isinstance(first, sympy.Eq) and first.lhs.is_Symbol:
        first = first.rhs
    value = got[1] if len(got) > 1 and isinstance(got[1], str) else str(first)
    return [first], strip_assignment(value).strip()


@lru_cache(maxsize=4096)
def _gold(reference: str) -> tuple:
    """The reference as math-verify reads it (an empty tuple: not math)."""
    ref = strip_assignment(reference.strip())
    parsed, _ = _parse(ref)
    if not parsed and "\\" in ref and "$" not in ref:  # bare LaTeX (\frac12); never plain words (o·l·l·e·h)
        parsed, _ = _parse(f"${ref}$")
    return tuple(parsed)


def _text_candidate(answer: str) -> str:
    """The prediction of a text reference: last boxed, else last bold, else after the last ``is``/``:``, else all."""
    if (boxed := last_boxed(answer)) is not None:
        return boxed
    if bold := BOLD.findall(answer):
        return bold[-1]
    if said := ANSWER_IS.findall(answer):
        return said[-1]
    return answer


def math_grade(task, completion: str) -> Grade:
    """The general math grader (module docstring)."""
    reference = reference_of(task)
    answer = answer_text(completion)
    if not answer:
        return Grade(False, None, False)
    same_text = normalise(answer) == normalise(reference)
    gold = _gold(reference)
    if not gold:
        value = normalise(answer if same_text else _text_candidate(answer)) or None
        return Grade(same_text or value == normalise(reference), value, value is not None)
    plain = answer.replace("**", "")
    boxed = last_boxed(plain)
    pred, value = _parse(f"\\boxed{{{strip_assignment(boxed)}}}") if boxed is not None else _parse(plain)
    if value is None and boxed:
        value = strip_assignment(boxed)
    _, verify, _ = _mv()
    correct = bool(pred) and verify(list(gold), pred, timeout_seconds=None)
    return Grade(bool(correct or same_text), value or None, bool(value))


GRADERS: dict[str, GraderFn] = {"strict": strict_grade, "math": math_grade}


def resolve_grader(grader: str | GraderFn, spec: str | None = None) -> str | GraderFn:
    """``grader`` checked: ``"auto"`` becomes ``"strict"`` for the organism's spec (:func:`is_organism`) and
    ``"math"`` for any other model; a name of :data:`GRADERS` or a callable is returned as is."""
    if callable(grader):
        return grader
    if grader == AUTO:
        return "strict" if is_organism(spec) else "math"
    if grader not in GRADERS:
        raise ValueError(f"unknown grader {grader!r}; choose from {', '.join([*GRADERS, AUTO])} or pass a callable "
                         "grader(task, completion) -> Grade")
    return grader


def grade(task, completion: str, grader: str | GraderFn = "strict") -> Grade:
    """Grade ``completion`` against ``task`` (a reference answer, or an object with ``.answer``) with ``grader``: a
    name of :data:`GRADERS` or a callable ``grader(task, completion)`` returning a :class:`Grade` or a bool."""
    if not isinstance(completion, str):
        raise TypeError(f"completion must be a string, got {type(completion).__name__}")
    if callable(grader):
        got = grader(task, completion)
        if isinstance(got, Grade):
            return got
        fmt = bool(answer_text(completion))
        return Grade(bool(got), extract_answer(completion) if fmt else None, fmt)
    if grader == AUTO:
        raise ValueError("grader 'auto' needs the model's spec: resolve it first with resolve_grader('auto', spec)")
    return GRADERS[resolve_grader(grader)](task, completion)
