"""An organism example from its prompt: the problem a prompt poses, with the generator's scratchpads and answer
(equations and sums). Corrupted problems (:func:`toolkit.methods.eap.corrupt_prompt`) exist only as prompts; this
gives them their reference completions, so pairs can be read at the answer (:func:`toolkit.methods.eap.answer_pairs`).

The generators of :mod:`toolkit.organism.tasks` pose the problem themselves, driven by a scripted stand-in for their
random numbers, so the scratchpads have one source (``tasks.py`` stays untouched: it is part of the organism's
recipe hash). A test rebuilds hundreds of generated examples from their prompts and requires them equal.
"""

from __future__ import annotations

import re

from toolkit.organism import tasks

LINEAR = re.compile(r"Solve for x: (\d+)x \+ (\d+) = (\d+)x \+ (\d+)")
ARITHMETIC = re.compile(r"What is (\d+) ([+-]) (\d+)\?")


class Scripted:
    """Stands in for ``random.Random`` in a task generator: ``choice`` and ``randint`` return ``values`` in order,
    so the generator poses a chosen problem. A value outside what the generator asked for (not among the choices,
    outside the range), or a request beyond the script, raises ``ValueError``: a problem it would not pose."""

    def __init__(self, *values):
        self.values = list(values)

    def _next(self):
        if not self.values:
            raise ValueError("the generator asked for more numbers than were scripted")
        return self.values.pop(0)

    def choice(self, options):
        value = self._next()
        if value not in options:
            raise ValueError(f"{value!r} is not among the generator's choices")
        return value

    def randint(self, low: int, high: int) -> int:
        value = self._next()
        if not low <= value <= high:
            raise ValueError(f"{value} is outside the generator's range {low}..{high}")
        return value


def from_prompt(task: str, prompt: str) -> tasks.Example | None:
    """The example of ``task`` whose prompt is ``prompt``, as its generator poses it; None for another task or
    format, or a problem the generator would not pose (no integer solution, a number outside its ranges)."""
    try:
        if task == "linear" and (m := LINEAR.fullmatch(prompt)):
            a, b, c, d = map(int, m.groups())
            if a == c or (d - b) % (a - c):
                return None
            ex = tasks.linear(Scripted(a, c, b), x=(d - b) // (a - c))  # linear draws a, c, b for the given x
        elif task == "arithmetic" and (m := ARITHMETIC.fullmatch(prompt)):
            ex = tasks.arithmetic(Scripted(m[2], int(m[1]), int(m[3])))  # arithmetic draws op, a, b
        else:
            return None
    except ValueError:
        return None
    return ex if ex.prompt == prompt else None
