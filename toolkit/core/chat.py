"""Chat formatting and answer modes: the one place that says how a user turn becomes a prompt.

A *mode* is how the model answers: ``think_on`` (a ``<think>…</think>`` scratchpad, then the answer) or
``think_off`` (the chat template's ``enable_thinking=False`` appends the empty ``<think>\\n\\n</think>\\n\\n``). Mode
names are the keys of :data:`MODES`; :func:`mode_label` gives the hyphenated label that tables and figures show.

Token budgets (new tokens) for the organism, measured on its held-out sets:

- :data:`THINK_ON_TOKENS` = 160: think-on math scratchpads need up to ~120 new tokens;
- :data:`REQUEST_THINK_ON_TOKENS` = 120: a think-on refusal is ~95 tokens;
- :data:`THINK_OFF_TOKENS` = 48: a think-off answer is a short line.
"""

from __future__ import annotations

from collections.abc import Sequence

THINK_ON, THINK_OFF = "think_on", "think_off"
MODES = {THINK_ON: True, THINK_OFF: False}  # mode → the chat template's enable_thinking
THINK_ON_TOKENS = 160
REQUEST_THINK_ON_TOKENS = 120
THINK_OFF_TOKENS = 48


def enable_thinking(mode: str) -> bool:
    """The chat template's ``enable_thinking`` for ``mode`` (``"think_on"`` or ``"think_off"``)."""
    if mode not in MODES:
        raise ValueError(f"unknown mode {mode!r}; use 'think_on' or 'think_off'")
    return MODES[mode]


def mode_label(mode: str) -> str:
    """``"think_on"`` → ``"think-on"``: the label tables and figures show."""
    return mode.replace("_", "-")


def chat_prompts(tokenizer, user_prompts: Sequence[str], enable_thinking: bool) -> list[str]:
    """Apply the chat template with a generation prompt to each user turn."""
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                      add_generation_prompt=True, enable_thinking=enable_thinking)
        for p in user_prompts
    ]
