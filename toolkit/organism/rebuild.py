"""An organism example from its prompt: the problem a prompt poses, with the generator's scratchpads and answer
(equations and sums). Corrupted problems (:func:`toolkit.methods.eap.corrupt_prompt`) exist only as prompts; this
gives them their reference completions, so pairs can be read at the answer (:func:`toolkit.methods.eap.answer_pairs`).

The formats are :mod:`toolkit.organism.tasks`' (which stays untouched: its source is part of the organism's recipe
hash); a test rebuilds hundreds of generated examples from their prompts and requires them equal.
"""

from __future__ import annotations

import re

from toolkit.organism.tasks import Example, _column_steps

LINEAR = re.compile(r"Solve for x: (\d+)x \+ (\d+) = (\d+)x \+ (\d+)")
ARITHMETIC = re.compile(r"What is (\d+) ([+-]) (\d+)\?")


def linear_example(a: int, b: int, c: int, d: int) -> Example:
    """The equation ax + b = cx + d (a ≠ c, integer solution) with its scratchpads, as :func:`tasks.linear` poses it."""
    k, r = a - c, d - b
    if k == 0 or r % k:
        raise ValueError(f"{a}x + {b} = {c}x + {d} has no integer solution")
    x = r // k
    steps = f"{a}x - {c}x = {d} - {b}\n{k}x = {r}\nx = {r} / {k}\nx = {x}"
    return Example("linear", f"Solve for x: {a}x + {b} = {c}x + {d}", steps, f"x = {x}", f"{k}x = {r}\nx = {x}",
                   {"a": a, "b": b, "c": c, "d": d, "x": x})


def arithmetic_example(a: int, b: int, op: str) -> Example:
    """``a op b`` (op "+" or "-", a ≥ b for "-") with its scratchpads, as :func:`tasks.arithmetic` poses it."""
    if op not in ("+", "-") or (op == "-" and b > a):
        raise ValueError(f"{a} {op} {b} is not one of the organism's sums (op + or -, a >= b for -)")
    result = a + b if op == "+" else a - b
    lines = _column_steps(a, b, op)
    if op == "+" and result >= 10 ** len(lines):
        lines.append("write 1")
    steps = "\n".join(lines) + f"\n{a} {op} {b} = {result}"
    width = max(len(str(a)), len(str(b)))
    digits = [(a // 10**i % 10, b // 10**i % 10) for i in range(width)]
    columns = ", ".join(f"{x}{op}{y} write {(x + y if op == '+' else x - y) % 10}" for x, y in digits)
    return Example("arithmetic", f"What is {a} {op} {b}?", steps, str(result), f"{columns}\n{a} {op} {b} = {result}",
                   {"a": a, "b": b, "op": op})


def from_prompt(task: str, prompt: str) -> Example | None:
    """The example of ``task`` whose prompt is ``prompt``; None for another task or format, or a problem without an
    integer solution (equations) or with a negative result (differences)."""
    if task == "linear" and (m := LINEAR.fullmatch(prompt)):
        a, b, c, d = map(int, m.groups())
        return linear_example(a, b, c, d) if a != c and (d - b) % (a - c) == 0 else None
    if task == "arithmetic" and (m := ARITHMETIC.fullmatch(prompt)):
        a, op, b = int(m[1]), m[2], int(m[3])
        return arithmetic_example(a, b, op) if op == "+" or b <= a else None
    return None
