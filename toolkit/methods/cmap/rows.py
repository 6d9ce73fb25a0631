"""The rows of one batched CMAP chunk (:class:`Rows`): which output row is which variant of which prompt, and the
left-padded prompts. Shared by the two ways of running a chunk (:mod:`toolkit.methods.cmap.fast`,
:mod:`toolkit.methods.cmap.bridge`; :mod:`toolkit.methods.cmap.batch` picks one and runs the generation loop).

The output holds, per prompt, one row per variant (clean, corrupted when free-running, one per site), prompt-major.
Each model runs only the rows that need it: the receiver (clean model) the site rows and the clean rows, the donor
(corrupted model) the site rows and the corrupted rows, or, teacher-forced, one row per prompt. Both runners put the
site rows first in the receiver and the clean rows last, in prompt order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from toolkit.core.interventions import Site

CLEAN, CORRUPTED = -1, -2  # row kinds; sites are 0..n-1


@dataclass
class Rows:
    """One chunk's rows and prompts (``R`` output rows, ``B`` prompts, ``P`` the longest prompt)."""

    sites: list[Site]
    mode: str
    free: bool  # free-running (else teacher-forced: the donor runs one row per prompt)
    kinds: torch.Tensor  # [R] CLEAN, CORRUPTED or the site index
    prompt_of: torch.Tensor  # [R] the prompt of each row
    base: torch.Tensor  # [B, P] prompt ids, left-padded
    base_mask: torch.Tensor  # [B, P] 1 on prompt tokens
    steps: int  # generation steps at most
    device: torch.device

    @property
    def n_prompts(self) -> int:
        return len(self.base)

    @property
    def width(self) -> int:
        return self.base.shape[1]

    @property
    def capacity(self) -> int:
        """Cache positions a row can need: the prompt, every step, and one spare slot."""
        return self.width + self.steps + 1

    @property
    def patching(self) -> bool:
        return bool(self.sites)

    def of_kind(self, kind: int) -> torch.Tensor:
        return (self.kinds == kind).nonzero().flatten()


def make_rows(prompt_ids: list[list[int]], sites: Sequence[Site], mode: str, max_new_tokens: int,
              forced: list[list[int]] | None, pad: int, device: torch.device) -> Rows:
    n_prompts = len(prompt_ids)
    variants = [CLEAN] + ([CORRUPTED] if forced is None else []) + list(range(len(sites)))
    kinds = torch.tensor(variants * n_prompts, device=device)
    prompt_of = torch.arange(n_prompts, device=device).repeat_interleave(len(variants))
    width = max(map(len, prompt_ids))
    base = torch.full((n_prompts, width), pad, dtype=torch.long, device=device)
    base_mask = torch.zeros_like(base)
    for b, ids in enumerate(prompt_ids):
        base[b, width - len(ids):] = torch.tensor(ids, device=device)
        base_mask[b, width - len(ids):] = 1
    steps = max_new_tokens if forced is None else max(map(len, forced), default=0)
    return Rows(list(sites), mode, forced is None, kinds, prompt_of, base, base_mask, steps, device)
