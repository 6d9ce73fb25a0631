"""Autoregressive cross-model activation patching (CMAP) with KV caches.

Method (``docs/methods.md``, "CMAP" section). A *clean* receiver model generates while, **at every generation
step**, chosen activations of a *corrupted* donor model (same architecture, fine-tuned on wrong answers) replace its
own. At step t the donor reads the sequence that the patched receiver has produced so far, and its activation at
the current position replaces the receiver's at the chosen site.

Sites use the toolkit's one hook vocabulary (:mod:`toolkit.core.interventions`):

- ``head(L, h, ...)``: one or more heads of layer L (``blocks.L.attn.hook_z``, the heads' z before ``W_O``);
- ``attn(L)``: the attention layer's output (``blocks.L.hook_attn_out``);
- ``mlp(L)``: the MLP's output (``blocks.L.hook_mlp_out``);
- ``resid(L)``: the residual stream after block L (``blocks.L.hook_resid_post``).

Position modes (an explicit choice, ``mode=``):

- ``"current"``: only the newest position is patched; earlier positions stay as the clean model computed them (the
  original's semantics). With a KV cache this means the receiver's cache must hold *unpatched* keys and values: each
  step feeds the receiver the current token twice at the same position, one copy unpatched (whose keys and values
  stay in the cache) and one patched (whose logits give the next token, and whose keys and values are cropped away),
  with a 4-D attention mask so that each copy sees only the prefix and itself. The prompt's last position is the
  first "current" one.
- ``"all"``: every position is patched, the prompt included, and the patches persist in the receiver's cache (one
  receiver pass per step).

Both modes keep a ``DynamicCache`` for each model, so cost grows linearly with length (the original recomputed the
whole prefix four times per token, O(T²)).

Batching. One call sweeps any list of sites in one batched run: the batch holds, per prompt, one row for the clean
model (no patch), one for the corrupted model (its own greedy generation) and one row per site. Hooks on the
receiver patch only the rows assigned to their site, so every row is an independent CMAP run (checked against a
no-cache reference, one run per site, :mod:`toolkit.reference.cmap`, in ``tests/test_cmap.py``).

Teacher forcing (``teacher_forcing="clean"`` or ``"corrupted"``): every row follows one fixed trajectory per prompt,
the clean or the corrupted model's own greedy generation, so step t means the same token in every row. The donor
then runs once per prompt, not per row. This mode yields the per-step corruption transfer score

    CTS_t = (ΔL_patched − ΔL_clean) / (ΔL_corrupted − ΔL_clean),  ΔL = logit[c*_t] − logit[k*_t],

where c*_t and k*_t are the corrupted and the clean model's top tokens at step t on the trajectory. CTS is 0 when the
patch leaves the clean logits' preference, 1 when it moves it as far as the corrupted model. The denominator is ≥ 0
(c* is the corrupted model's top token and k* the clean one's) and is 0 exactly when both models pick the same token:
there CTS is undefined. **Guard:** steps whose denominator is below ``min_gap`` (default :data:`MIN_GAP` = 0.5 logit)
are masked (NaN) and left out of averages; :meth:`CMAPResult.cts_coverage` reports the fraction of steps that count
(metrics in :mod:`toolkit.methods.cmap.result`).

Generation is greedy, thinking disabled by default (``enable_thinking=False``), at most 64 new tokens by default; a
row stops at ``<|im_end|>`` (or the tokenizer's EOS) and is padded afterwards. Metrics per site:
:meth:`CMAPResult.summary` gives final-answer accuracy (``toolkit.core.grading.grade`` with the clean model's grader,
against the records' correct answers), output length, and whether the patched output equals the corrupted model's.

A note on ``resid(last layer)``: patching it at all positions hands the donor's final residual stream to the
receiver's own final norm and unembedding. The patched generation equals the corrupted model's exactly when those are
shared (the invariant tests build such a donor). A fine-tuned donor's final norm and (tied) embeddings moved too, so
there it can differ: with notebook 01's ``B-500x8ep`` only 57.5% of the related-math answers match (notebook 02).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import torch

from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.grading import resolve_grader
from toolkit.core.interventions import Site, SiteError
from toolkit.core.models import as_loaded, check_length
from toolkit.core.progress import progress
from toolkit.methods.cmap.result import CMAPResult, until_eos
from toolkit.methods.cmap.setup import check_compatible
from toolkit.organism import grading_spec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from toolkit.core.models import LoadedModel

MODES = ("current", "all")
TEACHER_FORCING = (None, "clean", "corrupted")
CLEAN, CORRUPTED = -1, -2  # row kinds; sites are 0..n-1


# ---- the batched, cached run -------------------------------------------------------------------------------------


@dataclass
class _Chunk:
    """The outputs of one batch of prompts (see :func:`_run_chunk`)."""

    tokens: torch.Tensor  # [R, T] chosen tokens (pad after a row's end)
    top: torch.Tensor  # [R, T] argmax of each row's next-token logits (receiver; donor for corrupted rows)
    delta: torch.Tensor | None  # [R, T] ΔL of each row (teacher forcing)
    delta_donor: torch.Tensor | None  # [B, T] ΔL of the corrupted model (teacher forcing)
    top_donor: torch.Tensor | None  # [B, T]


class _Hooks:
    """The donor's record hooks and the receiver's patch hooks, switched by ``phase``."""

    def __init__(self, sites: Sequence[Site], kinds: torch.Tensor, donor_of: torch.Tensor):
        self.phase = "off"  # "donor": record; "patch": patch the receiver; "off": nothing
        self.last_only = False  # patch only the last position of the receiver's input (the twin-token step)
        self.store: dict[str, torch.Tensor] = {}
        self.groups: dict[str, list[tuple[torch.Tensor, torch.Tensor, list[int] | None]]] = {}
        for i, site in enumerate(sites):
            rows = (kinds == i).nonzero().flatten()
            if len(rows):
                self.groups.setdefault(site.hook_name, []).append(
                    (rows, donor_of[rows], list(site.units) if site.units else None))

    def record(self, name: str):
        """The donor's hook at ``name``: keep its latest activation (hooks see canonical names, so close over ours)."""
        def hook_fn(act: torch.Tensor, hook) -> None:
            if self.phase == "donor":
                self.store[name] = act.detach().clone()
        return hook_fn

    def patch(self, name: str):
        """The receiver's hook at ``name``: put the donor's activation into the rows of each site there."""
        def hook_fn(act: torch.Tensor, hook) -> torch.Tensor | None:
            if self.phase != "patch":
                return None
            source = self.store[name]
            new = act.clone()
            first = act.shape[1] - source.shape[1] if self.last_only else 0
            for rows, donor_rows, units in self.groups[name]:
                src = source.index_select(0, donor_rows).to(act.dtype)
                part = new[rows, first:]
                if units is None:
                    part = src
                else:
                    part[:, :, units] = src[:, :, units]
                new[rows, first:] = part
            return new
        return hook_fn


def _forward(hf, ids, mask, pos, cache):
    return hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
              logits_to_keep=1).logits[:, -1].float()


def _twin_forward(hf, cur, mask, pos, cache, hooks: _Hooks):
    """One ``current``-mode receiver step in one forward pass: the current token twice at the same position, the
    first copy unpatched (its keys/values are the clean ones the cache must keep), the second patched (its logits
    are returned). A 4-D mask lets each copy attend to the cached prefix and itself only; afterwards the patched
    copy's keys/values are cropped from the cache. Equivalent to a patched pass, a crop and an unpatched pass
    (checked against the no-cache reference in the tests), at the cost of one forward instead of two."""
    past = mask.shape[1] - 1  # cached positions (the mask already covers the current token)
    prefix = mask[:, :past].bool()
    own = torch.eye(2, dtype=torch.bool, device=mask.device).expand(len(mask), 2, 2)
    mask4 = torch.cat([prefix[:, None, :].expand(-1, 2, -1), own], -1)[:, None]  # [R, 1, 2, past + 2]
    hooks.last_only = True
    try:
        logits = hf(input_ids=cur.repeat(1, 2), attention_mask=mask4, position_ids=pos.repeat(1, 2),
                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    finally:
        hooks.last_only = False
    cache.crop(-1)
    return logits


@torch.no_grad()
def _run_chunk(clean: LoadedModel, corrupted: LoadedModel, prompt_ids: list[list[int]], sites: Sequence[Site],
               mode: str, max_new_tokens: int, forced: list[list[int]] | None, eos: int, pad: int) -> _Chunk:
    """CMAP for a few prompts and all ``sites`` at once; see the module docstring for the row layout."""
    from transformers import DynamicCache

    device = next(clean.hf.parameters()).device
    n_prompts = len(prompt_ids)
    variants = [CLEAN] + ([CORRUPTED] if forced is None else []) + list(range(len(sites)))
    n_var = len(variants)
    kinds = torch.tensor(variants * n_prompts, device=device)  # [R], R = n_prompts * n_var, prompt-major
    prompt_of = torch.arange(n_prompts, device=device).repeat_interleave(n_var)  # [R] prompt index of each row
    rows = len(kinds)
    donor_of = torch.arange(rows, device=device) if forced is None else prompt_of
    width = max(map(len, prompt_ids))
    base = torch.full((n_prompts, width), pad, dtype=torch.long, device=device)  # [B, P] prompts, left-padded
    base_mask = torch.zeros_like(base)
    for b, ids in enumerate(prompt_ids):
        base[b, width - len(ids):] = torch.tensor(ids, device=device)
        base_mask[b, width - len(ids):] = 1
    ids, mask = base[prompt_of], base_mask[prompt_of]  # [R, P]
    d_ids, d_mask = (ids, mask) if forced is None else (base, base_mask)
    hooks = _Hooks(sites, kinds, donor_of)
    patching = bool(hooks.groups)
    names = list(hooks.groups)
    r_cache, d_cache = DynamicCache(config=clean.hf.config), DynamicCache(config=corrupted.hf.config)
    steps = max_new_tokens if forced is None else max(map(len, forced), default=0)
    tokens = torch.full((rows, steps), pad, dtype=torch.long, device=device)
    top = torch.full((rows, steps), -1, dtype=torch.long, device=device)
    delta = torch.full((rows, steps), math.nan, device=device) if forced is not None else None
    delta_donor = torch.full((n_prompts, steps), math.nan, device=device) if forced is not None else None
    top_donor = torch.full((n_prompts, steps), -1, dtype=torch.long, device=device) if forced is not None else None
    if forced is not None:
        forced_t = torch.full((n_prompts, steps), pad, dtype=torch.long, device=device)
        for b, traj in enumerate(forced):
            forced_t[b, :len(traj)] = torch.tensor(traj, dtype=torch.long, device=device)
    finished = torch.zeros(rows, dtype=torch.bool, device=device)
    clean_rows = (kinds == CLEAN).nonzero().flatten()  # one per prompt, in prompt order
    corrupted_rows = (kinds == CORRUPTED).nonzero().flatten()

    def positions(m):
        return (m.cumsum(-1) - 1).clamp(min=0)

    with clean.bridge.hooks(fwd_hooks=[(n, hooks.patch(n)) for n in names]), \
            corrupted.bridge.hooks(fwd_hooks=[(n, hooks.record(n)) for n in names]):
        if width > 1:  # prefill all but the last prompt position; in "all" mode these are patched too
            hooks.phase = "donor" if mode == "all" and patching else "off"
            corrupted.hf(input_ids=d_ids[:, :-1], attention_mask=d_mask[:, :-1],
                         position_ids=positions(d_mask)[:, :-1], past_key_values=d_cache, use_cache=True,
                         logits_to_keep=1)
            hooks.phase = "patch" if mode == "all" and patching else "off"
            clean.hf(input_ids=ids[:, :-1], attention_mask=mask[:, :-1], position_ids=positions(mask)[:, :-1],
                     past_key_values=r_cache, use_cache=True, logits_to_keep=1)
        cur, d_cur = ids[:, -1:], d_ids[:, -1:]
        pos, d_pos = positions(mask)[:, -1:], positions(d_mask)[:, -1:]
        for t in range(steps):
            hooks.phase = "donor" if patching else "off"
            d_logits = _forward(corrupted.hf, d_cur, d_mask, d_pos, d_cache)
            hooks.phase = "patch" if patching else "off"
            if mode == "current" and patching:
                logits = _twin_forward(clean.hf, cur, mask, pos, r_cache, hooks)
            else:
                logits = _forward(clean.hf, cur, mask, pos, r_cache)
            hooks.phase = "off"
            top[:, t] = logits.argmax(-1)
            if forced is None:
                top[corrupted_rows, t] = d_logits[corrupted_rows].argmax(-1)
                nxt = top[:, t].masked_fill(finished, pad)
                finished |= nxt == eos
                tokens[:, t] = nxt
                if bool(finished.all()):
                    tokens, top = tokens[:, :t + 1], top[:, :t + 1]
                    break
                d_nxt = nxt
            else:
                c_star, k_star = d_logits.argmax(-1), logits[clean_rows].argmax(-1)  # [B]
                top_donor[:, t] = c_star
                gather = torch.stack([c_star[prompt_of], k_star[prompt_of]], 1)  # [R, 2]
                pair = logits.gather(1, gather)
                delta[:, t] = pair[:, 0] - pair[:, 1]
                d_pair = d_logits.gather(1, torch.stack([c_star, k_star], 1))
                delta_donor[:, t] = d_pair[:, 0] - d_pair[:, 1]
                d_nxt = forced_t[:, t]
                nxt = d_nxt[prompt_of]
                tokens[:, t] = nxt
            cur, d_cur = nxt[:, None], d_nxt[:, None]
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            d_mask = mask if forced is None else torch.cat([d_mask, torch.ones_like(d_mask[:, :1])], 1)
            pos = pos + 1
            d_pos = pos if forced is None else d_pos + 1
    return _Chunk(tokens.cpu(), top.cpu(), None if delta is None else delta.cpu(),
                  None if delta_donor is None else delta_donor.cpu(), None if top_donor is None else top_donor.cpu())


# ---- entry point ---------------------------------------------------------------------------------------------------


def end_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token a generation stops at: ``<|im_end|>`` if the vocabulary has it, else the tokenizer's EOS."""
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id and im_end is not None:
        return im_end
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has neither <|im_end|> nor an EOS token to stop generation at")
    return tokenizer.eos_token_id


def run(clean: LoadedModel | str, corrupted: LoadedModel | str, prompts: Sequence[str], sites: Sequence[Site] = (),
        mode: str = "current", max_new_tokens: int = 64, enable_thinking: bool = False,
        teacher_forcing: str | None = None, trajectories: Sequence[Sequence[int]] | None = None,
        batch_size: int = 256, show_progress: bool = False) -> CMAPResult:
    """Autoregressive CMAP of ``corrupted`` into ``clean`` (each a :class:`toolkit.core.models.LoadedModel`, or a spec
    to load) at every site of ``sites``, for each user prompt (the chat template is applied; thinking off by default).

    ``mode``: ``"current"`` or ``"all"`` (module docstring). ``teacher_forcing``: None (free-running greedy
    generation), ``"clean"`` or ``"corrupted"`` (every row follows that model's greedy generation, computed first
    unless ``trajectories`` gives the token ids per prompt). ``batch_size`` bounds the rows per batch (prompts ×
    (2 + sites)); prompts are split into chunks accordingly (a chunk holds at least one prompt, so a
    batch_size below 2 + sites is exceeded). Prompts (chat-formatted) plus ``max_new_tokens`` (or the trajectory)
    must fit the models' positions. Returns a :class:`CMAPResult`.
    """
    import time

    clean, corrupted = as_loaded(clean, "cmap.run: clean"), as_loaded(corrupted, "cmap.run: corrupted")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    if teacher_forcing not in TEACHER_FORCING:
        raise ValueError(f"teacher_forcing must be one of {TEACHER_FORCING}, not {teacher_forcing!r}")
    if trajectories is not None and teacher_forcing is None:
        raise ValueError("trajectories are only used with teacher_forcing='clean' or 'corrupted'")
    prompts = as_prompts(prompts, "cmap.run: prompts")
    check_int(max_new_tokens, "max_new_tokens")
    check_int(batch_size, "batch_size")
    check_compatible(clean, corrupted)
    sites = list(sites)
    for s in sites:
        if not isinstance(s, Site):
            raise SiteError(f"{s!r} is not a Site; build sites with toolkit.core.interventions.head/attn/mlp/resid")
        s.validate(clean.bridge)
    if len(set(sites)) != len(sites):
        raise SiteError("the same site is listed twice: " + ", ".join(s.label for s in sites if sites.count(s) > 1))
    tok = clean.tokenizer
    eos = end_token(tok)
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    prompt_ids = [tok(text, add_special_tokens=False)["input_ids"]
                  for text in chat_prompts(tok, prompts, enable_thinking)]
    t0 = time.perf_counter()
    if teacher_forcing is not None and trajectories is None:
        free = run(clean, corrupted, prompts, (), mode, max_new_tokens, enable_thinking, batch_size=batch_size,
                   show_progress=show_progress)
        trajectories = free.clean_tokens if teacher_forcing == "clean" else free.corrupted_tokens
    if trajectories is not None:
        trajectories = [list(map(int, t)) for t in trajectories]
        if len(trajectories) != len(prompts):
            raise ValueError(f"{len(trajectories)} trajectories for {len(prompts)} prompts")
        if not all(trajectories):
            raise ValueError("a teacher-forcing trajectory is empty")
    for i, ids in enumerate(prompt_ids):  # both models must hold the prompt and every generated token
        for model in (clean, corrupted):
            check_length(model, len(ids), f"prompt {i} (chat-formatted)",
                         max_new_tokens if trajectories is None else len(trajectories[i]))
    n_var = 1 + (teacher_forcing is None) + len(sites)
    per_chunk = max(1, batch_size // n_var)
    chunks = []
    for start in progress(range(0, len(prompts), per_chunk), desc=f"CMAP {mode}", disable=not show_progress):
        stop = start + per_chunk
        forced = None if trajectories is None else trajectories[start:stop]
        chunks.append(_run_chunk(clean, corrupted, prompt_ids[start:stop], sites, mode, max_new_tokens, forced,
                                 eos, pad))
    result = _assemble(prompts, sites, mode, teacher_forcing, trajectories, chunks, tok, eos, n_var,
                       time.perf_counter() - t0)
    result.grader = resolve_grader("auto", grading_spec(tok, clean.spec))  # how summary() grades final answers
    return result


def _assemble(prompts, sites, mode, teacher_forcing, trajectories, chunks, tok, eos, n_var, seconds) -> CMAPResult:
    first = 1 if teacher_forcing is not None else 2  # rows per prompt before the sites
    clean_tokens, corrupted_tokens, patched = [], [], []
    d_clean, d_corr, d_patch, t_clean, t_corr, t_patch = [], [], [], [], [], []
    for chunk in chunks:
        n_prompts = chunk.tokens.shape[0] // n_var
        toks = chunk.tokens.view(n_prompts, n_var, -1)  # [R, T] -> [B, V, T], V = rows per prompt
        for b in range(n_prompts):
            clean_tokens.append(until_eos(toks[b, 0].tolist(), eos, keep_eos=True))
            if teacher_forcing is None:
                corrupted_tokens.append(until_eos(toks[b, 1].tolist(), eos, keep_eos=True))
                patched.append([until_eos(toks[b, first + s].tolist(), eos, keep_eos=True)
                                for s in range(len(sites))])
        if teacher_forcing is not None:
            delta = chunk.delta.view(n_prompts, n_var, -1).numpy()  # [B, V, T]
            top = chunk.top.view(n_prompts, n_var, -1).numpy()
            d_clean.append(delta[:, 0])
            d_patch.append(delta[:, first:])
            t_clean.append(top[:, 0])
            t_patch.append(top[:, first:])
            d_corr.append(chunk.delta_donor.numpy())
            t_corr.append(chunk.top_donor.numpy())
    result = CMAPResult(prompts, sites, mode, teacher_forcing, clean_tokens, corrupted_tokens,
                        patched if teacher_forcing is None else None, tok, eos, trajectory=trajectories,
                        seconds=seconds)
    if teacher_forcing is not None:
        steps = max(len(t) for t in trajectories)

        def cat(parts):
            return np.concatenate([np.pad(p, [(0, 0)] * (p.ndim - 1) + [(0, steps - p.shape[-1])],
                                          constant_values=np.nan if p.dtype.kind == "f" else -1) for p in parts])

        result.valid = np.array([[t < len(traj) for t in range(steps)] for traj in trajectories])
        result.delta_clean, result.delta_corrupted, result.delta_patched = cat(d_clean), cat(d_corr), cat(d_patch)
        result.top_clean, result.top_corrupted, result.top_patched = cat(t_clean), cat(t_corr), cat(t_patch)
        if teacher_forcing == "clean":
            result.clean_tokens = trajectories
            result.corrupted_tokens = []
        else:
            result.corrupted_tokens = trajectories
            result.clean_tokens = []
    return result
