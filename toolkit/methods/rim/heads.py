"""RIM measures, part 2: refusal heads — attention spans at the first response token and the per-head shift.
Definitions: :mod:`toolkit.methods.rim`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import interventions
from toolkit.core.chat import REQUEST_THINK_ON_TOKENS, THINK_OFF_TOKENS, as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.generation import generate
from toolkit.core.models import LoadedModel
from toolkit.methods.rim.forward import _device
from toolkit.organism.tokenizer import THINK_CLOSE, THINK_OPEN

SPANS = ("cot", "think", "rest")


def span_masks(tokens: Sequence[str], query: int, think_open: str = THINK_OPEN,
               think_close: str = THINK_CLOSE) -> dict[str, np.ndarray]:
    """Boolean masks over key positions ``0..query`` for the three spans (see the module docstring): ``cot`` (the
    non-whitespace content of the last think block before ``query``), ``think`` (its delimiters and the whitespace
    inside it) and ``rest``. ``tokens`` are the decoded tokens of the sequence. Raises ValueError if no complete
    think block ends before ``query``."""
    if not 0 <= query < len(tokens):
        raise ValueError(f"query position {query} is outside the sequence of {len(tokens)} tokens")
    opens = [i for i in range(query + 1) if tokens[i] == think_open]
    if not opens:
        raise ValueError(f"no {think_open} at or before the query position {query}")
    start = opens[-1]
    closes = [i for i in range(start + 1, query + 1) if tokens[i] == think_close]
    if not closes:
        raise ValueError(f"the think block opened at {start} is not closed before the query position {query}")
    end = closes[0]
    lo, hi = start + 1, end
    while lo < hi and not tokens[lo].strip():
        lo += 1
    while hi > lo and not tokens[hi - 1].strip():
        hi -= 1
    cot = np.zeros(query + 1, dtype=bool)
    think = np.zeros(query + 1, dtype=bool)
    cot[lo:hi] = True
    think[start:end + 1] = True
    think[lo:hi] = False
    return {"cot": cot, "think": think, "rest": ~(cot | think)}


def span_masses(pattern: torch.Tensor | np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Attention mass per span: ``pattern`` is the query row ``[..., keys]`` (keys ≥ the masks' length are ignored:
    a causal query attends to none of them); returns ``[..., 3]`` in the order of :data:`SPANS`."""
    p = np.asarray(pattern.float().cpu() if isinstance(pattern, torch.Tensor) else pattern, dtype=float)
    n = len(masks["cot"])
    if p.shape[-1] < n:
        raise ValueError(f"the attention row covers {p.shape[-1]} keys but the spans cover {n} positions")
    return np.stack([p[..., :n][..., masks[s]].sum(-1) for s in SPANS], axis=-1)


@dataclass
class FirstResponse:
    """A sequence cut at the first response token: ``ids`` end with the query position (whose next token is the
    first answer token); ``tokens`` are its decoded tokens; ``output`` is the full greedy response."""

    ids: list[int]
    tokens: list[str]
    output: str

    @property
    def query(self) -> int:
        return len(self.ids) - 1


def first_response_sequences(loaded: LoadedModel, prompts: Sequence[str], think: bool,
                             outputs: Sequence[str] | None = None) -> list[FirstResponse | None]:
    """For each prompt, the chat prompt plus (thinking on) the model's own greedy think block up to and including
    the whitespace after ``</think>``; ``None`` where the response never closes its think block. ``outputs``: the
    greedy responses if already generated (otherwise generated here, batches of 128)."""
    tok, prompts = loaded.tokenizer, as_prompts(prompts, "prompts")
    if outputs is not None and len(as_prompts(outputs, "outputs")) != len(prompts):
        raise ValueError(f"{len(outputs)} outputs for {len(prompts)} prompts")
    if outputs is None:
        outputs = [o[0] for o in generate(loaded, list(prompts), enable_thinking=think, batch_size=128,
                                          max_new_tokens=REQUEST_THINK_ON_TOKENS if think else THINK_OFF_TOKENS)]
    texts = chat_prompts(tok, list(prompts), enable_thinking=think)
    out: list[FirstResponse | None] = []
    for text, output in zip(texts, outputs):
        if think:
            at = output.find(THINK_CLOSE)
            if not output.startswith(THINK_OPEN) or at < 0:
                out.append(None)
                continue
            rest = output[at + len(THINK_CLOSE):]
            text = text + output[:at + len(THINK_CLOSE)] + rest[:len(rest) - len(rest.lstrip())]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(FirstResponse(ids, [tok.decode([i]) for i in ids], output))
    return out


@torch.no_grad()
def head_span_masses(loaded: LoadedModel, seqs: Sequence[FirstResponse]) -> np.ndarray:
    """``[n, L, H, 3]``: each head's attention mass on the CoT, the think span and the rest, from the first response
    token (``blocks.{L}.attn.hook_pattern``)."""
    cfg = loaded.bridge.cfg
    out = np.zeros((len(seqs), cfg.n_layers, cfg.n_heads, len(SPANS)))
    layers = list(range(cfg.n_layers))
    for i, s in enumerate(seqs):
        masks = span_masks(s.tokens, s.query)
        patterns = interventions.attention_patterns(loaded.bridge, torch.tensor([s.ids], device=_device(loaded)),
                                                    layers)  # {layer: (1, H, q, k)}
        for layer in layers:
            out[i, layer] = span_masses(patterns[layer][0, :, s.query], masks)  # (H, 3)
    return out


def head_shift(refuse: np.ndarray, comply: np.ndarray) -> np.ndarray:
    """Per pair and head: ``(think_r − think_c) − (cot_r − cot_c)`` from two ``[n, L, H, 3]`` span-mass arrays of
    matched refusal and compliance prompts."""
    if refuse.shape != comply.shape or refuse.shape[-1] != len(SPANS):
        raise ValueError(f"need two matched [n, L, H, 3] arrays, got {refuse.shape} and {comply.shape}")
    d = refuse - comply
    return d[..., 1] - d[..., 0]


def top_heads(shift: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest mean shift (``shift`` is ``[n, L, H]``), largest first."""
    mean = shift.mean(0)
    check_int(k, "k", 1, mean.size)
    order = np.argsort(-mean, axis=None, kind="stable")[:k]
    return [tuple(int(v) for v in np.unravel_index(i, mean.shape)) for i in order]
