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
  original's semantics). With a KV cache this means the receiver's cache must hold *unpatched* keys and values: at
  each step the current token is read once unpatched (its keys and values stay in the cache) and once patched (its
  logits give the next token; it sees the cached prefix and itself, and its keys and values are not kept). The
  prompt's last position is the first "current" one.
- ``"all"``: every position is patched, the prompt included, and the patches persist in the receiver's cache (one
  receiver pass per step).

Both modes keep a KV cache for each model, so cost grows linearly with length (the original recomputed the whole
prefix four times per token, O(T²)).

Batching. One call sweeps any list of sites in one batched run: per prompt, one row for the clean model (no patch),
one for the corrupted model (its own greedy generation) and one row per site; each model runs only the rows that
need it, the prompt is read once per prompt, and rows that have ended leave the batch
(:mod:`toolkit.methods.cmap.batch`). Only a site's own rows are patched, so every row is an independent CMAP run
(checked against a no-cache reference, one run per site, :mod:`toolkit.reference.cmap`, in ``tests/test_cmap.py``).
Two runners compute it: :mod:`toolkit.methods.cmap.fast`, a layer loop over the HF modules that runs each row only
through the layers it needs (Qwen2/Qwen3 on one device with nothing hooked, head/attn/mlp/resid sites), and
:mod:`toolkit.methods.cmap.bridge`, through the bridge's hooks, for everything else.

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

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np

from toolkit.core.chat import as_prompts, chat_prompts
from toolkit.core.checks import check_int
from toolkit.core.grading import resolve_grader
from toolkit.core.interventions import Site, SiteError
from toolkit.core.models import as_loaded, check_length
from toolkit.core.progress import progress
from toolkit.methods.cmap.batch import run_chunk
from toolkit.methods.cmap.result import CMAPResult, until_eos
from toolkit.methods.cmap.setup import check_compatible
from toolkit.organism import grading_spec

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase

    from toolkit.core.models import LoadedModel

MODES = ("current", "all")
TEACHER_FORCING = (None, "clean", "corrupted")


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
        chunks.append(run_chunk(clean, corrupted, prompt_ids[start:stop], sites, mode, max_new_tokens, forced,
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
