"""Checking a learner's function against the toolkit's reference: the engine behind the exercise notebooks'
check cells (``notebooks/exercises/``; the lessons' data and checks are in :mod:`toolkit.course`).

:func:`check` calls the learner's function and the reference with the same arguments and compares the two answers.
It never raises for the learner's faults: it returns a :class:`CheckResult` and prints one short line, so a notebook
goes on to the next exercise. Statuses, in the order they are tested:

- ``not implemented`` — the learner's function raised :class:`NotImplementedError` (the exercise stub);
- ``raised`` — it raised anything else (the exception's type and message);
- ``wrong type`` — a tensor where an array was expected, a list where a dict was, a string where a number was;
- ``wrong keys`` / ``wrong length`` — a dict with other keys, a list or tuple of another length;
- ``wrong shape`` / ``wrong dtype`` — tensors and arrays must match exactly (``torch.float32`` ≠ ``torch.float64``);
- ``nan`` — NaN or ±inf where the reference has a finite number (the first such index);
- ``wrong value`` — outside ``|got − want| ≤ atol + rtol·|want|``, with the first mismatch's index and both values;
- ``passed``.

Numbers compare with numbers of any kind (Python, NumPy scalars, 0-d tensors and arrays); containers (dict,
list, tuple) are compared element by element and a mismatch names its path, e.g. ``['recovered']`` or ``[2]``.
``tests/test_exercises.py`` checks every status.
"""

from __future__ import annotations

import json
import numbers
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch

PASSED, NOT_IMPLEMENTED, RAISED = "passed", "not implemented", "raised"
MARKS = {PASSED: "✓", NOT_IMPLEMENTED: "·"}
SUMMARY_PREFIX = "EXERCISE CHECKS "


@dataclass(frozen=True)
class CheckResult:
    """One check's outcome: ``status`` (see the module docstring) and a one-line ``message``."""

    name: str
    status: str
    message: str

    @property
    def passed(self) -> bool:
        return self.status == PASSED

    def __str__(self) -> str:
        """``✓ name: passed``, ``· name: not implemented (…)``, ``✗ name: wrong shape: got (2,), expected (3,)``."""
        if self.status == PASSED:
            return f"✓ {self.name}: passed"
        mark = MARKS.get(self.status, "✗")
        return f"{mark} {self.name}: {self.status}" + (f": {self.message}" if self.message else "")


class _Mismatch(Exception):
    def __init__(self, status: str, message: str):
        super().__init__(message)
        self.status, self.message = status, message


def _where(path: str) -> str:
    return f" at {path}" if path else ""


def _is_number(x) -> bool:
    """A Python or NumPy number, or a 0-d tensor or array."""
    if isinstance(x, (torch.Tensor, np.ndarray)):
        return x.ndim == 0
    return isinstance(x, (numbers.Number, np.bool_))


def _show(value) -> str:
    """A short text of one element: 6 significant digits for numbers."""
    if isinstance(value, (numbers.Number, np.number, np.bool_)) and not isinstance(value, (bool, np.bool_)):
        return f"{float(value):.6g}"
    return repr(value.item() if isinstance(value, np.generic) else value)[:40]


def _kind(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"tensor of shape {tuple(x.shape)}"
    if isinstance(x, np.ndarray):
        return f"array of shape {x.shape}"
    return type(x).__name__


def _where_index(index: tuple[int, ...]) -> str:
    """`` at index [1, 2]`` (nothing for a 0-d value)."""
    return " at index [" + ", ".join(str(i) for i in index) + "]" if index else ""


def _compare_arrays(got: np.ndarray, want: np.ndarray, atol: float, rtol: float, path: str) -> None:
    """Values of two same-shape arrays (as float64 or exact for non-numbers)."""
    if want.dtype.kind in "biuf":
        g, w = got.astype(np.float64), want.astype(np.float64)
        bad_nan = ~np.isfinite(g) & np.isfinite(w)
        if bad_nan.any():
            i = tuple(int(v) for v in np.argwhere(bad_nan)[0])
            raise _Mismatch("nan", f"got {g[i]}{_where_index(i)}{_where(path)} where {w[i]:.6g} was expected")
        close = np.isclose(g, w, atol=atol, rtol=rtol, equal_nan=True)
    else:
        close = got == want
    if not np.all(close):
        close = np.asarray(close)
        i = tuple(int(v) for v in np.argwhere(~close)[0])
        n_bad = f"; {int((~close).sum())} of {close.size} differ" if close.size > 1 else ""
        raise _Mismatch("wrong value", f"got {_show(got[i])}, expected {_show(want[i])}{_where_index(i)}"
                                       f"{_where(path)} (atol {atol:g}, rtol {rtol:g}{n_bad})")


def _compare(got, want, atol: float, rtol: float, path: str = "") -> None:
    """Raise :class:`_Mismatch` at the first difference between ``got`` and ``want``."""
    if isinstance(want, dict):
        if not isinstance(got, dict):
            raise _Mismatch("wrong type", f"got {_kind(got)}{_where(path)}, expected a dict")
        if set(got) != set(want):
            missing, extra = sorted(map(str, set(want) - set(got))), sorted(map(str, set(got) - set(want)))
            parts = ([f"missing {missing}"] if missing else []) + ([f"unexpected {extra}"] if extra else [])
            raise _Mismatch("wrong keys", ", ".join(parts) + _where(path))
        for key in want:
            _compare(got[key], want[key], atol, rtol, f"{path}[{key!r}]")
        return
    if isinstance(want, (list, tuple)):
        if not isinstance(got, (list, tuple)):
            raise _Mismatch("wrong type", f"got {_kind(got)}{_where(path)}, expected a {type(want).__name__}")
        if len(got) != len(want):
            raise _Mismatch("wrong length", f"got {len(got)} items{_where(path)}, expected {len(want)}")
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            _compare(g, w, atol, rtol, f"{path}[{i}]")
        return
    if _is_number(want):
        if not _is_number(got):
            raise _Mismatch("wrong type", f"got {_kind(got)}{_where(path)}, expected a number")
        _compare_arrays(np.asarray(float(got)), np.asarray(float(want)), atol, rtol, path)
        return
    if isinstance(want, (torch.Tensor, np.ndarray)):
        if type(got) is not type(want) and not (isinstance(got, torch.Tensor) and isinstance(want, torch.Tensor)):
            raise _Mismatch("wrong type", f"got {_kind(got)}{_where(path)}, expected a {_kind(want)}")
        if tuple(got.shape) != tuple(want.shape):
            raise _Mismatch("wrong shape", f"got {tuple(got.shape)}{_where(path)}, expected {tuple(want.shape)}")
        if got.dtype != want.dtype:
            raise _Mismatch("wrong dtype", f"got {got.dtype}{_where(path)}, expected {want.dtype}")
        if isinstance(want, torch.Tensor):
            got, want = got.detach().cpu().numpy(), want.detach().cpu().numpy()
        _compare_arrays(got, want, atol, rtol, path)
        return
    if got != want:
        raise _Mismatch("wrong value", f"got {_show(got)}, expected {_show(want)}{_where(path)}")


def compare(got, want, *, atol: float = 1e-6, rtol: float = 1e-5) -> tuple[str, str]:
    """``(status, message)`` of ``got`` against ``want`` (``passed`` or the first mismatch; module docstring)."""
    try:
        _compare(got, want, atol, rtol)
    except _Mismatch as m:
        return m.status, m.message
    return PASSED, ""


def check(learner: Callable, reference: Callable, *args, name: str | None = None, atol: float = 1e-6,
          rtol: float = 1e-5, verbose: bool = True, **kwargs) -> CheckResult:
    """Call ``learner(*args, **kwargs)`` and ``reference(*args, **kwargs)`` and compare the answers.

    The learner's exceptions become statuses (``not implemented``, ``raised``); the reference's propagate (they are
    the lesson's bugs, not the learner's). Prints the result's one line unless ``verbose`` is false.
    """
    name = name or getattr(learner, "__name__", "check")
    try:
        got = learner(*args, **kwargs)
    except NotImplementedError:
        result = CheckResult(name, NOT_IMPLEMENTED, "replace `raise NotImplementedError` with your code")
    except Exception as err:  # the learner's bug: report it and let the notebook go on
        text = str(err).splitlines()[0] if str(err) else ""
        result = CheckResult(name, RAISED, f"{type(err).__name__}{': ' + text[:200] if text else ''}")
    else:
        status, message = compare(got, reference(*args, **kwargs), atol=atol, rtol=rtol)
        result = CheckResult(name, status, message)
    if verbose:
        print(result)
    return result


def summary(results: Iterable[CheckResult]) -> dict[str, str]:
    """``{check name: status}``, printed as one line starting with :data:`SUMMARY_PREFIX` (a JSON object the tests
    read back from the executed notebook) after a human count of passed / not implemented / failed."""
    results = list(results)
    statuses = {r.name: r.status for r in results}
    n_pass = sum(r.passed for r in results)
    n_todo = sum(r.status == NOT_IMPLEMENTED for r in results)
    print(f"{n_pass} of {len(results)} checks pass, {n_todo} not implemented, "
          f"{len(results) - n_pass - n_todo} failing")
    print(SUMMARY_PREFIX + json.dumps(statuses))
    return statuses
