"""Chat formatting and answer modes: the one place that says how a user turn becomes a prompt.

A *mode* is how the model answers: ``think_on`` (a ``<think>…</think>`` scratchpad, then the answer) or
``think_off`` (the chat template's ``enable_thinking=False`` appends the empty ``<think>\\n\\n</think>\\n\\n``). Mode
names are the keys of :data:`MODES`; :func:`mode_label` gives the hyphenated label that tables and figures show.

Token budgets (new tokens) for the organism, measured on its held-out sets:

- :data:`THINK_ON_TOKENS` = 160: think-on math scratchpads need up to ~120 new tokens;
- :data:`REQUEST_THINK_ON_TOKENS` = 120: a think-on refusal is ~95 tokens;
- :data:`THINK_OFF_TOKENS` = 48: a think-off answer is a short line.

Prompts are always a list (any sequence) of strings: :func:`as_prompts` is the one check, refusing a single string
(which would otherwise be iterated character by character) and, unless allowed, an empty list.
"""

from __future__ import annotations

import re
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


def mode_label(name: str) -> str:
    """The label tables and figures show for a mode, or for a name built on one: ``"think_on"`` → ``"think-on"``,
    ``"think_off + ablated"`` → ``"think-off + ablated"``. Code, results keys and claims use the mode itself."""
    return re.sub(r"\bthink_(on|off)\b", r"think-\1", name)


def as_prompts(prompts: Sequence[str], what: str = "prompts", allow_empty: bool = False) -> list[str]:
    """``prompts`` as a list of strings, or a ``TypeError`` (a single string, a non-string item) / ``ValueError``
    (an empty list, unless ``allow_empty``) naming ``what``."""
    if isinstance(prompts, (str, bytes)):
        raise TypeError(f"{what} must be a list of strings, got a single string {str(prompts)[:40]!r}; "
                        f"wrap it in a list: [{str(prompts)[:20]!r}]")
    try:
        out = list(prompts)
    except TypeError:
        raise TypeError(f"{what} must be a list of strings, got {type(prompts).__name__}") from None
    for i, p in enumerate(out):
        if not isinstance(p, str):
            raise TypeError(f"{what}[{i}] is a {type(p).__name__} ({p!r:.60}), not a string")
    if not out and not allow_empty:
        raise ValueError(f"{what} is empty (no prompts given); pass at least one prompt")
    return out


def chat_prompts(tokenizer, user_prompts: Sequence[str], enable_thinking: bool) -> list[str]:
    """Apply the chat template with a generation prompt to each user turn (``user_prompts``: a list of strings,
    possibly empty). A tokenizer without a chat template is a ``ValueError`` that says so."""
    user_prompts = as_prompts(user_prompts, "user_prompts", allow_empty=True)
    if not getattr(tokenizer, "chat_template", None):
        raise ValueError(f"the tokenizer {getattr(tokenizer, 'name_or_path', '')!r} has no chat template; load the "
                         "model with toolkit.core.models.load, or add the model's chat_template.jinja to its folder")
    return [
        tokenizer.apply_chat_template([{"role": "user", "content": p}], tokenize=False,
                                      add_generation_prompt=True, enable_thinking=enable_thinking)
        for p in user_prompts
    ]


THINK_TOKENS = ("<think>", "</think>")


def thinking_support_problems(tokenizer) -> list[str]:
    """What a tokenizer lacks for think on/off answers (empty when nothing): a chat template; the single tokens
    :data:`THINK_TOKENS` in its vocabulary; a template that honours ``enable_thinking`` (a user turn rendered with
    ``enable_thinking=False`` differs from the same turn with ``True``, as Qwen3's empty think block makes it)."""
    problems = []
    vocab = tokenizer.get_vocab() if hasattr(tokenizer, "get_vocab") else {}
    missing = [t for t in THINK_TOKENS if t not in vocab]
    if missing:
        problems.append(f"no {' or '.join(missing)} token in its vocabulary")
    if not getattr(tokenizer, "chat_template", None):
        return problems + ["no chat template"]
    try:
        on, off = (chat_prompts(tokenizer, ["1 + 1"], think) for think in (True, False))
    except Exception as e:  # a template that cannot render a user turn
        return problems + [f"a chat template that does not render a user turn ({type(e).__name__}: {e})"]
    if on == off:
        problems.append("a chat template that ignores enable_thinking (thinking on and off give the same prompt)")
    return problems


def check_thinking_support(tokenizer, what: str = "this study") -> None:
    """Refuse (``ValueError``) a tokenizer that cannot answer with thinking on and off
    (:func:`thinking_support_problems`), naming everything it lacks; before any work starts."""
    problems = thinking_support_problems(tokenizer)
    if problems:
        name = getattr(tokenizer, "name_or_path", "") or "the model"
        raise ValueError(f"{what} needs a hybrid think on/off model, and {name!r} has " + "; ".join(problems)
                         + ": use a model whose tokenizer has <think>/</think> tokens and a chat template with "
                         "enable_thinking, e.g. Qwen/Qwen3-8B or 'organism' (Qwen2.5-Math has no think mode)")
