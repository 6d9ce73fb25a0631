"""The batched, cached CMAP run over a chunk of prompts (:func:`run_chunk`): the generation loop; the method and its
conventions are in :mod:`toolkit.methods.cmap.engine`, the rows in :mod:`toolkit.methods.cmap.rows`.

A runner does the forwards: :mod:`toolkit.methods.cmap.fast` (a layer loop over the HF modules, for Qwen2/Qwen3 on
one device with nothing hooked: :func:`toolkit.methods.cmap.fast.supported`) or :mod:`toolkit.methods.cmap.bridge`
(through the TransformerLens bridge's hooks, for anything else). Both compute the same thing; the tests check the
results against the no-cache reference. A runner has the receiver's rows (``rec_rows``: output rows, the
``n_site`` site rows first, the clean rows last), the donor's (``don_rows``: output rows, or prompts when
teacher-forced) and the output rows of the donor's logits when free-running (``corrupted_rows``), and
``prefill()``, ``step(cur, d_cur)``, ``advance()`` and ``drop(finished)``.

Ended rows. A free-running row that has ended is dropped from the models' batches once the ended rows are at least
1/:data:`DROP_FRACTION` of them (dropping copies the caches), so a chunk costs about the sum of its rows' lengths
rather than rows × the longest. A batch can empty before the other (the corrupted rows may outlast all the others).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from toolkit.core.interventions import Site
from toolkit.methods.cmap import bridge, fast
from toolkit.methods.cmap.rows import make_rows

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel

DROP_FRACTION = 16


@dataclass
class Chunk:
    """The outputs of one batch of prompts (see :func:`run_chunk`)."""

    tokens: torch.Tensor  # [R, T] chosen tokens (pad after a row's end)
    top: torch.Tensor  # [R, T] argmax of each row's next-token logits (receiver; donor for corrupted rows)
    delta: torch.Tensor | None  # [R, T] ΔL of each row (teacher forcing)
    delta_donor: torch.Tensor | None  # [B, T] ΔL of the corrupted model (teacher forcing)
    top_donor: torch.Tensor | None  # [B, T]


@torch.inference_mode()
def run_chunk(clean: LoadedModel, corrupted: LoadedModel, prompt_ids: list[list[int]], sites: Sequence[Site],
              mode: str, max_new_tokens: int, forced: list[list[int]] | None, eos: int, pad: int) -> Chunk:
    """CMAP for a few prompts and all ``sites`` at once (module docstring)."""
    device = next(clean.hf.parameters()).device
    rows = make_rows(prompt_ids, sites, mode, max_new_tokens, forced, pad, device)
    opener = fast.open_runner if fast.supported(clean, corrupted, sites) else bridge.open_runner
    with opener(clean, corrupted, rows) as runner:
        return _generate(runner, rows, forced, eos, pad)


def _generate(runner, rows, forced, eos: int, pad: int) -> Chunk:
    device, steps, prompt_of = rows.device, rows.steps, rows.prompt_of
    n_rows, n_prompts = len(rows.kinds), rows.n_prompts
    tokens = torch.full((n_rows, steps), pad, dtype=torch.long, device=device)
    top = torch.full((n_rows, steps), -1, dtype=torch.long, device=device)
    delta = delta_donor = top_donor = None
    if forced is not None:
        delta = torch.full((n_rows, steps), math.nan, device=device)
        delta_donor = torch.full((n_prompts, steps), math.nan, device=device)
        top_donor = torch.full((n_prompts, steps), -1, dtype=torch.long, device=device)
        forced_t = torch.full((n_prompts, steps), pad, dtype=torch.long, device=device)
        for b, traj in enumerate(forced):
            forced_t[b, :len(traj)] = torch.tensor(traj, dtype=torch.long, device=device)
    finished = torch.zeros(n_rows, dtype=torch.bool, device=device)
    if rows.width > 1:
        runner.prefill()
    cur = rows.base[prompt_of[runner.rec_rows], -1:]
    d_cur = rows.base[prompt_of[runner.don_rows], -1:] if forced is None else rows.base[:, -1:]
    for t in range(steps):
        logits, d_logits = runner.step(cur, d_cur)
        r_top = logits.argmax(-1)
        top[runner.rec_rows, t] = r_top
        if forced is None:
            d_top = d_logits.argmax(-1)
            top[runner.corrupted_rows, t] = d_top
            nxt = torch.full((n_rows,), pad, dtype=torch.long, device=device)
            nxt[runner.rec_rows], nxt[runner.corrupted_rows] = r_top, d_top
            nxt.masked_fill_(finished, pad)
            finished |= nxt == eos
            tokens[:, t] = nxt
            if bool(finished.all()):
                tokens, top = tokens[:, :t + 1], top[:, :t + 1]
                break
            runner.advance()
            ended = int(finished[runner.rec_rows].sum()) + int(finished[runner.don_rows].sum())
            if ended and ended * DROP_FRACTION >= len(runner.rec_rows) + len(runner.don_rows):
                runner.drop(finished)
            cur, d_cur = nxt[runner.rec_rows, None], nxt[runner.don_rows, None]
        else:
            clean_local = slice(runner.n_site, None)  # the receiver's clean rows, in prompt order
            c_star, k_star = d_logits.argmax(-1), r_top[clean_local]  # [B]
            top_donor[:, t] = c_star
            of = prompt_of[runner.rec_rows]
            pair = logits.gather(1, torch.stack([c_star[of], k_star[of]], 1))
            delta[runner.rec_rows, t] = pair[:, 0] - pair[:, 1]
            d_pair = d_logits.gather(1, torch.stack([c_star, k_star], 1))
            delta_donor[:, t] = d_pair[:, 0] - d_pair[:, 1]
            d_cur = forced_t[:, t:t + 1]
            nxt = d_cur[prompt_of, 0]
            tokens[:, t] = nxt
            cur = nxt[runner.rec_rows, None]
            runner.advance()
    return Chunk(tokens.cpu(), top.cpu(), None if delta is None else delta.cpu(),
                 None if delta_donor is None else delta_donor.cpu(), None if top_donor is None else top_donor.cpu())
