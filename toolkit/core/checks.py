"""Checks of the options every layer takes, before any work is done: :func:`check_int` is the toolkit's one
integer-option check (batch sizes, token budgets, EAP-IG steps, top-n, set counts). Prompt lists have theirs in
:func:`toolkit.core.chat.as_prompts`, head sets in :func:`toolkit.core.units.as_heads`.
"""

from __future__ import annotations

import numbers


def check_int(value, name: str, minimum: int = 1, maximum: int | None = None, error: type = ValueError) -> int:
    """``value`` as an ``int``: a ``TypeError`` unless it is an integer (``bool`` and ``2.0`` are refused), ``error``
    unless ``minimum <= value <= maximum``; the messages name ``name``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in {minimum}..{maximum}"
        raise error(f"{name} must be {bound}, got {value}")
    return int(value)
