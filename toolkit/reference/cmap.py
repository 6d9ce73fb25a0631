"""A slow, naive CMAP reference: one prompt and one site at a time, no padding, no KV cache.

At each step it runs the corrupted model on the whole sequence so far, records the site with
``interventions.record``, and runs the clean model on the whole sequence with ``interventions.patch`` at the last
position (``current``) or at every position (``all``), then appends the greedy token (or the forced one). With a
forced trajectory it also returns ΔL = logit[c*] − logit[k*] of the patched, clean and corrupted logits per step,
where c* and k* are the corrupted and the clean model's top tokens.

``tests/test_cmap.py`` checks the batched, cached :func:`toolkit.methods.cmap.run` against it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from toolkit.core import interventions as iv
from toolkit.core.chat import chat_prompts
from toolkit.core.models import LoadedModel


def reference(clean: LoadedModel, corrupted: LoadedModel, prompt: str, site: iv.Site, mode: str, steps: int,
              forced: Sequence[int] | None = None) -> tuple[list[int], torch.Tensor]:
    """Tokens of one CMAP run and, when ``forced``, the per-step ΔL ``[steps, 3]`` (patched, clean, corrupted)."""
    tok = clean.tokenizer
    eos = tok.convert_tokens_to_ids("<|im_end|>")
    seq = tok(chat_prompts(tok, [prompt], False)[0], add_special_tokens=False)["input_ids"]
    out, deltas = [], []
    for t in range(steps if forced is None else len(forced)):
        x = torch.tensor([seq])
        with iv.record(corrupted.bridge, [site]) as rec:
            d_logits = corrupted.hf(x, use_cache=False).logits[0, -1]
        positions = [len(seq) - 1] if mode == "current" else None
        with iv.patch(clean.bridge, site, rec[site], positions=positions):
            logits = clean.hf(x, use_cache=False).logits[0, -1]
        if forced is None:
            nxt = int(logits.argmax())
        else:
            c_logits = clean.hf(x, use_cache=False).logits[0, -1]
            c_star, k_star = d_logits.argmax(), c_logits.argmax()
            deltas.append([float(v[c_star] - v[k_star]) for v in (logits, c_logits, d_logits)])
            nxt = forced[t]
        out.append(nxt)
        seq = seq + [nxt]
        if forced is None and nxt == eos:
            break
    return out, torch.tensor(deltas)
