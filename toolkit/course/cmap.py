"""Lesson 02 (cross-model activation patching): the data and the checks of ``notebooks/exercises/02_cmap.ipynb``.

The receiver is the organism (``clean``); the donor (``corrupted``) is ``organism-base``, an earlier snapshot of the
same training run with the same architecture — a stand-in that costs no training for notebook 01's corrupted
checkpoint. Prompts are held-out sums, thinking off; sites are :data:`SITES`. The checks compare the learner's
pieces with the slow no-cache reference (:mod:`toolkit.reference.cmap`) and the fast path
(:func:`toolkit.methods.cmap.run`):

1. :func:`check_patched_logits` — one CMAP step: the clean model's next-token logits with a site replaced by the
   corrupted model's activation at the last position (``current``) or at every position (``all``), against the
   reference's record-then-patch step (the toolkit's :func:`~toolkit.core.interventions.record` and
   :func:`~toolkit.core.interventions.patch`);
2. :func:`check_cmap_generate` — greedy autoregressive CMAP (a new patch at every step, stop after the end token),
   against :func:`toolkit.reference.cmap.reference`;
3. :func:`check_cts` — ΔL = logit[c*] − logit[k*] of the patched, clean and corrupted logits along the clean
   trajectory, and CTS = (ΔL_patched − ΔL_clean) / (ΔL_corrupted − ΔL_clean) (NaN below ``min_gap``), against the
   teacher-forced :func:`toolkit.methods.cmap.run` (:meth:`~toolkit.methods.cmap.CMAPResult.cts`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import interventions as iv
from toolkit.core.chat import chat_prompts
from toolkit.core.models import LoadedModel, load
from toolkit.course.checks import CheckResult, check
from toolkit.methods import cmap
from toolkit.organism import tasks
from toolkit.reference.cmap import reference

SITES = (iv.mlp(1), iv.resid(2), iv.head(3, 0))
STEPS = 24  # new tokens per generation (the organism's answers end well before)


@dataclass
class Data:
    """The two models, the prompts, their chat-formatted token ids and the teacher-forced fast-path run."""

    clean: LoadedModel
    corrupted: LoadedModel
    prompts: list[str]
    prompt_ids: list[list[int]]
    forced: cmap.CMAPResult
    eos: int


def setup(n_prompts: int = 3, seed: int = 1) -> Data:
    """Both organisms on the CPU, ``n_prompts`` held-out sums and their teacher-forced CMAP at :data:`SITES`
    (seconds)."""
    clean, corrupted = load("organism", device="cpu"), load("organism-base", device="cpu")
    prompts = [e.prompt for e in tasks.held_out("arithmetic", n_prompts, seed=seed)]
    tok = clean.tokenizer
    ids = [tok(text, add_special_tokens=False)["input_ids"] for text in chat_prompts(tok, prompts, False)]
    forced = cmap.run(clean, corrupted, prompts, list(SITES), max_new_tokens=STEPS, teacher_forcing="clean")
    return Data(clean, corrupted, prompts, ids, forced, cmap.end_token(tok))


@torch.no_grad()
def reference_step(data: Data, ids: list[int], site: iv.Site, mode: str) -> torch.Tensor:
    """``[vocab]``: the reference's patched step (record the site in the corrupted model, patch it into the clean one
    at the last position or at all positions)."""
    x = torch.tensor([ids])  # (1, T)
    with iv.record(data.corrupted.bridge, [site]) as rec:
        data.corrupted.hf(x, use_cache=False)
    with iv.patch(data.clean.bridge, site, rec[site], positions=[len(ids) - 1] if mode == "current" else None):
        return data.clean.hf(x, use_cache=False).logits[0, -1]


def step_cases(data: Data) -> dict[str, tuple[list[int], iv.Site, str]]:
    """Every prompt × site in ``current`` mode, on the prompt and on the prompt plus 5 trajectory tokens; and
    the first prompt at every site in ``all`` mode."""
    cases = {}
    for b, ids in enumerate(data.prompt_ids):
        longer = ids + data.forced.trajectory[b][:5]
        for site in SITES:
            cases[f"prompt {b}, {site.label}, current"] = (ids, site, "current")
            cases[f"prompt {b} + 5 tokens, {site.label}, current"] = (longer, site, "current")
    for site in SITES:
        cases[f"prompt 0 + 5 tokens, {site.label}, all"] = (data.prompt_ids[0] + data.forced.trajectory[0][:5], site,
                                                            "all")
    return cases


def check_patched_logits(patched_logits: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``patched_logits(ids, site, mode)`` → ``[vocab]`` float32, on :func:`step_cases`."""
    cases = step_cases(data)

    def learner(_):
        return {name: patched_logits(list(ids), site, mode) for name, (ids, site, mode) in cases.items()}

    def ref(_):
        return {name: reference_step(data, ids, site, mode) for name, (ids, site, mode) in cases.items()}

    return check(learner, ref, None, name="patched_logits", atol=1e-4, rtol=1e-4, verbose=verbose)


def check_cmap_generate(cmap_generate: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``cmap_generate(prompt_ids, site, mode, steps)`` → the new token ids (the end token included), on every
    prompt × site in ``current`` mode and the first prompt's sites in ``all`` mode, against the reference."""
    cases = [(b, site, "current") for b in range(len(data.prompts)) for site in SITES]
    cases += [(0, site, "all") for site in SITES]

    def run(fn):
        return lambda _: {f"prompt {b}, {site.label}, {mode}": [int(t) for t in fn(b, site, mode)]
                          for b, site, mode in cases}

    def learner(b, site, mode):
        return cmap_generate(list(data.prompt_ids[b]), site, mode, STEPS)

    def ref(b, site, mode):
        return reference(data.clean, data.corrupted, data.prompts[b], site, mode, STEPS)[0]

    return check(run(learner), run(ref), None, name="cmap_generate", verbose=verbose)


@torch.no_grad()
def forced_logits(data: Data, b: int, site: iv.Site) -> dict[str, torch.Tensor]:
    """``{"patched", "clean", "corrupted"}``, each ``[T, vocab]``: the next-token logits at every step of prompt
    ``b``'s clean trajectory (patched: :func:`reference_step` at the current position)."""
    ids, traj = data.prompt_ids[b], data.forced.trajectory[b]
    x = torch.tensor([ids + traj[:-1]])  # (1, P + T − 1): step t predicts token t from the prefix before it
    out = {name: model.hf(x).logits[0, len(ids) - 1:] for name, model in (("clean", data.clean),
                                                                          ("corrupted", data.corrupted))}
    out["patched"] = torch.stack([reference_step(data, ids + traj[:t], site, "current") for t in range(len(traj))])
    return out


def check_cts(delta_and_cts: Callable, data: Data, *, min_gap: float = cmap.MIN_GAP,
              verbose: bool = True) -> CheckResult:
    """``delta_and_cts(patched, clean, corrupted, min_gap)`` (``[T, vocab]`` logits) → ``{"delta_patched",
    "delta_clean", "delta_corrupted", "cts"}``, each ``[T]`` float64, on every prompt × site, against the
    teacher-forced fast path."""
    cases = {(b, s): forced_logits(data, b, site) for b in range(len(data.prompts)) for s, site in enumerate(SITES)}
    f, cts = data.forced, data.forced.cts(min_gap)

    def learner(_):
        return {f"prompt {b}, {SITES[s].label}": delta_and_cts(lg["patched"].clone(), lg["clean"].clone(),
                                                               lg["corrupted"].clone(), min_gap)
                for (b, s), lg in cases.items()}

    def ref(_):
        out = {}
        for b, s in cases:
            n = int(f.valid[b].sum())
            out[f"prompt {b}, {SITES[s].label}"] = {
                "delta_patched": f.delta_patched[b, s, :n].astype(np.float64),
                "delta_clean": f.delta_clean[b, :n].astype(np.float64),
                "delta_corrupted": f.delta_corrupted[b, :n].astype(np.float64),
                "cts": cts[b, s, :n].astype(np.float64)}
        return out

    return check(learner, ref, None, name="delta_and_cts", atol=1e-4, rtol=1e-4, verbose=verbose)
