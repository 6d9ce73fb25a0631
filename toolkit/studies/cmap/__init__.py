"""Notebook 02's study: where does notebook 01's corruption live? CMAP of the corrupted donor into the clean model,
swept over layers and components, then over the heads of the layers that matter, on the three question types.

Each function here is one notebook step and returns a typed result; :func:`results` turns them into the notebook's
saved results. The method itself is :mod:`toolkit.methods.cmap`; the figures and tables are in
:mod:`toolkit.views.cmap`. The donor is a notebook-01 checkpoint, found (or trained) by :func:`corrupted_model`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from toolkit.core import models
from toolkit.core.interventions import Site
from toolkit.core.models import LoadedModel
from toolkit.core.progress import progress
from toolkit.core.stats import bootstrap_ci
from toolkit.methods import cmap
from toolkit.methods.cmap import CMAPResult
from toolkit.training.corrupt_data import QUESTION_TYPES

QUESTION_SETS = ("related_math", "unrelated_math", "unrelated_general")
DEFAULT_DONOR = "B-500x8ep"  # the preset whose data gives the prompts when the donor is a model folder
EXPLORER_PROMPTS = 8  # prompts per question type offered by the explorer


def corrupted_model(name: str, model: str = "organism", size_scale: float = 1.0, device: str = "auto",
                    seed: int = 0) -> str:
    """The folder of the corrupted donor ``name``: an existing model folder, or a notebook-01 preset name
    (``"B-500x8ep"``) whose checkpoint :func:`toolkit.training.corrupt.corrupted_checkpoint` finds (saved as
    ``<preset>-x<size_scale>`` when ``size_scale`` ≠ 1). A missing preset checkpoint is trained here through
    :func:`toolkit.training.corrupt.finetune`, exactly as notebook 01 would with the same ``seed``."""
    from toolkit.training import corrupt

    if Path(name).expanduser().is_dir():
        return str(Path(name).expanduser())
    preset = corrupt.preset(name).scaled(size_scale)
    checkpoint = corrupt.checkpoint_name(name, model, size_scale, seed)
    try:
        return str(corrupt.corrupted_checkpoint(checkpoint))
    except FileNotFoundError:
        data = corrupt.load_data([preset], n_eval=1, seed=seed)
        return str(corrupt.finetune(model, preset, data, checkpoint, device, corrupt.settings_for(seed)).path)


# ---- setup ---------------------------------------------------------------------------------------------------------


@dataclass
class Setup:
    """The clean and corrupted models, the prompts per question type and the layer sites to sweep."""

    clean: LoadedModel
    corrupted: LoadedModel
    donor_path: str
    sets: dict[str, list[dict]]  # question type -> records with "prompt" and "correct_answer"
    labels: dict[str, str]  # question type -> display name
    layer_sites: list[Site]

    @property
    def n_layers(self) -> int:
        return self.clean.bridge.cfg.n_layers

    @property
    def n_heads(self) -> int:
        return self.clean.bridge.cfg.n_heads

    def describe(self) -> str:
        return (f"donor: {self.donor_path}\n{self.n_layers} layers x {self.n_heads} heads; {len(self.layer_sites)} "
                f"layer sites; { {k: len(v) for k, v in self.sets.items()} } prompts")

    def explorer_prompts(self, per_type: int = EXPLORER_PROMPTS) -> dict[str, list[str]]:
        """``{question type label: the first prompts}`` for the explorer."""
        return {self.labels[k]: [r["prompt"] for r in v[:per_type]] for k, v in self.sets.items()}


def setup(model: str, corrupted: str, size_scale: float, device: str, n_prompts: int,
          components: Sequence[str], seed: int = 0) -> Setup:
    """Seed torch, find (or train) the donor, load both models, check that they are compatible, and take the first
    ``n_prompts`` evaluation prompts of each question type (of notebook 01's data drawn with ``seed``, whose
    checkpoint is the donor); one layer sweep per component."""
    from toolkit.training import corrupt

    if not 1 <= n_prompts <= 200:
        raise ValueError(f"n_prompts must be between 1 and 200 (the held-out prompts per question type), got "
                         f"{n_prompts!r}")
    if not components:
        raise ValueError("components is empty: sweep at least one of 'resid', 'attn', 'mlp'")
    torch.manual_seed(seed)
    donor_path = corrupted_model(corrupted, model, size_scale, device, seed)
    clean_m, corrupted_m = models.load(model, device=device), models.load(donor_path, device=device)
    cmap.check_compatible(clean_m, corrupted_m)
    data = corrupt.load_data([corrupt.preset(corrupted if corrupted in corrupt.PRESETS else DEFAULT_DONOR)],
                             n_prompts, seed=seed)
    sets = {name: data[name][:n_prompts] for name in QUESTION_SETS}
    labels = {name: QUESTION_TYPES[name] for name in sets}
    layer_sites = [s for c in components for s in cmap.layer_sweep(clean_m.bridge, c)]
    return Setup(clean_m, corrupted_m, donor_path, sets, labels, layer_sites)


# ---- sweeps --------------------------------------------------------------------------------------------------------


def sweep_question_types(clean: LoadedModel, corrupted: LoadedModel, sets: dict[str, list[dict]],
                         sites: Sequence[Site], mode: str = "current", max_new_tokens: int = 64,
                         enable_thinking: bool = False, teacher_forcing: str | None = None,
                         batch_size: int = 256) -> dict[str, CMAPResult]:
    """:func:`toolkit.methods.cmap.run` on each question type's prompts (records with ``prompt``, as in
    :mod:`toolkit.training.corrupt_data`)."""
    if not sets:
        raise ValueError("no question types given")
    out = {}
    for name, records in progress(sets.items(), desc=f"CMAP sweep ({mode})", total=len(sets)):
        if not records:
            raise ValueError(f"question type {name!r} has no prompts")
        out[name] = cmap.run(clean, corrupted, [r["prompt"] for r in records], sites, mode, max_new_tokens,
                             enable_thinking, teacher_forcing, batch_size=batch_size)
    return out


def summaries(results: dict[str, CMAPResult], sets: dict[str, list[dict]]) -> dict[str, dict[str, dict]]:
    """``{question type: CMAPResult.summary(correct answers)}``."""
    return {name: r.summary([rec["correct_answer"] for rec in sets[name]]) for name, r in results.items()}


@dataclass
class FreeSweep:
    """Free-running CMAP per question type and its behaviour summaries (``CMAPResult.summary``)."""

    results: dict[str, CMAPResult]
    summary: dict[str, dict[str, dict]]  # question type -> site label (and clean, corrupted) -> metrics


def free_sweep(setup: Setup, sites: Sequence[Site], mode: str, max_new_tokens: int, enable_thinking: bool,
               batch_size: int) -> FreeSweep:
    """One batched free-running run per question type over ``sites``, with accuracy, transfer and length."""
    results = sweep_question_types(setup.clean, setup.corrupted, setup.sets, sites, mode, max_new_tokens,
                                   enable_thinking, batch_size=batch_size)
    return FreeSweep(results, summaries(results, setup.sets))


@dataclass
class ForcedSweep:
    """Teacher-forced (clean trajectory) CMAP per question type: each site's CTS pooled as a ratio of sums over
    every defined step (the headline aggregate), its per-step mean and median, each prompt's own pooled CTS (the
    spread across prompts) and the CTS coverage."""

    results: dict[str, CMAPResult]
    pooled_cts: dict[str, np.ndarray]  # question type -> [S]
    mean_cts: dict[str, np.ndarray]  # question type -> [S], a mean of per-step ratios
    median_cts: dict[str, np.ndarray]  # question type -> [S]
    prompt_cts: dict[str, np.ndarray]  # question type -> [B, S]
    coverage: dict[str, float]  # question type -> fraction of steps where CTS is defined

    def describe(self) -> str:
        return f"fraction of steps where CTS is defined: { {k: round(v, 2) for k, v in self.coverage.items()} }"


def forced_sweep(setup: Setup, sites: Sequence[Site], mode: str, max_new_tokens: int, enable_thinking: bool,
                 batch_size: int, min_gap: float) -> ForcedSweep:
    """One batched run per question type over ``sites``, every row following the clean model's own generation."""
    results = sweep_question_types(setup.clean, setup.corrupted, setup.sets, sites, mode, max_new_tokens,
                                   enable_thinking, teacher_forcing="clean", batch_size=batch_size)
    def each(method):
        return {name: getattr(r, method)(min_gap) for name, r in results.items()}
    return ForcedSweep(results, each("pooled_cts"), each("mean_cts"), each("median_cts"), each("prompt_cts"),
                       each("cts_coverage"))


def thinking_run(setup: Setup, mode: str, think_tokens: int, batch_size: int) -> CMAPResult:
    """The layer sweep teacher-forced on the clean model's thinking-on scratchpads for related math."""
    return cmap.run(setup.clean, setup.corrupted, [r["prompt"] for r in setup.sets["related_math"]],
                    setup.layer_sites, mode, think_tokens, enable_thinking=True, teacher_forcing="clean",
                    batch_size=batch_size)


def head_layers(layer_sites: Sequence[Site], cts: np.ndarray, n_head_layers: int, n_layers: int) -> list[int]:
    """The ``n_head_layers`` layers whose attention output has the highest CTS (``cts`` over ``layer_sites``; NaN
    ranks last), in layer order; the last layers when no attention output was swept."""
    attn_idx = [i for i, s in enumerate(layer_sites) if s.component == "attn"]
    if not attn_idx:
        return list(range(n_layers - n_head_layers, n_layers))
    order = sorted(attn_idx, key=lambda i: -np.nan_to_num(cts[i], nan=-np.inf))
    return sorted(layer_sites[i].layer for i in order[:n_head_layers])


@dataclass
class HeadSweep:
    """Single-head sweeps of the chosen layers: teacher-forced (CTS) and free-running (behaviour)."""

    layers: list[int]
    sites: list[Site]
    forced: dict[str, CMAPResult]
    free: FreeSweep


def sweep_heads(setup: Setup, forced: ForcedSweep, n_head_layers: int, mode: str, max_new_tokens: int,
                enable_thinking: bool, batch_size: int) -> HeadSweep:
    """Every head of the ``n_head_layers`` layers with the highest pooled attention CTS on related math
    (:func:`head_layers`), teacher-forced and free-running."""
    layers = head_layers(setup.layer_sites, forced.pooled_cts["related_math"], n_head_layers, setup.n_layers)
    sites = cmap.head_sweep(setup.clean.bridge, layers)
    heads_forced = sweep_question_types(setup.clean, setup.corrupted, setup.sets, sites, mode, max_new_tokens,
                                        enable_thinking, teacher_forcing="clean", batch_size=batch_size)
    return HeadSweep(layers, sites, heads_forced,
                     free_sweep(setup, sites, mode, max_new_tokens, enable_thinking, batch_size))


@dataclass
class NoiseDonor:
    """The untargeted-change null of the late-layer claim: the clean model plus Gaussian weight noise (σ) whose KL to
    the clean model matches the corrupted donor's (``target_kl``; reached: ``kl``), swept on related math exactly
    like the donor (``forced``: teacher-forced on the clean trajectory, over the layer sites)."""

    sigma: float
    target_kl: float
    kl: float
    forced: CMAPResult


def noise_donor_sweep(setup: Setup, forced: ForcedSweep, mode: str, max_new_tokens: int, enable_thinking: bool,
                      batch_size: int, seed: int = 0) -> NoiseDonor:
    """:class:`NoiseDonor`: KL measured on the related-math prompts followed by the clean model's answers
    (:mod:`toolkit.evaluation.weight_noise`), then the same teacher-forced layer sweep with the noisy donor. If
    the corruption sits in the last layers *because it is a corruption*, its layer profile is later than that of
    a change of the same size in no particular direction."""
    from toolkit.core.chat import chat_prompts
    from toolkit.evaluation import weight_noise

    records = setup.sets["related_math"]
    tok = setup.clean.tokenizer
    prompts = chat_prompts(tok, [r["prompt"] for r in records], enable_thinking)
    texts = [p + answer for p, answer in zip(prompts, forced.results["related_math"].clean_texts())]
    reference = weight_noise.reference_batches(tok, texts)
    target_kl = weight_noise.mean_kl(setup.clean.hf, setup.corrupted.hf, reference)
    match = weight_noise.match_noise(setup.clean.hf, target_kl, reference, seed=seed, keep_model=False)
    noisy = models.load(setup.clean.spec, device=str(next(setup.clean.hf.parameters()).device))
    weight_noise.apply_weight_noise(noisy.hf, setup.clean.hf, match.sigma, seed=seed)
    result = cmap.run(setup.clean, noisy, [r["prompt"] for r in records], setup.layer_sites, mode, max_new_tokens,
                      enable_thinking, teacher_forcing="clean", batch_size=batch_size)
    return NoiseDonor(float(match.sigma), float(target_kl), float(match.kl), result)


# ---- saved results -------------------------------------------------------------------------------------------------


def results(setup: Setup, model: str, mode: str, n_prompts: int, max_new_tokens: int, free: FreeSweep,
            forced: ForcedSweep, heads: HeadSweep, think: CMAPResult | None, min_gap: float,
            noise: NoiseDonor | None = None) -> dict:
    """The notebook's saved results (rounded to 4 digits): baselines and per-site numbers per question type (the
    free run's behaviour, with the mean length's 95% bootstrap interval over prompts; CTS pooled, mean and median,
    and the quartiles of the per-prompt pooled CTS), CTS coverage, the head layers and their heads' pooled CTS,
    timings, the thinking-on pooled CTS (None without it) and the weight-noise donor's σ, KL and pooled CTS on
    related math (None without it)."""
    summary = free.summary

    def site_numbers(name):
        lengths = free.results[name].lengths()
        out = {}
        for i, s in enumerate(setup.layer_sites):
            spread = forced.prompt_cts[name][:, i]
            spread = spread[np.isfinite(spread)]
            ci = bootstrap_ci(lengths[s.label])
            out[s.label] = {**{k: round(v, 4) for k, v in summary[name][s.label].items()},
                            "length_ci": [round(ci["low"], 4), round(ci["high"], 4)],
                            "pooled_cts": round(float(forced.pooled_cts[name][i]), 4),
                            "mean_cts": round(float(forced.mean_cts[name][i]), 4),
                            "median_cts": round(float(forced.median_cts[name][i]), 4),
                            "prompt_cts_quartiles": ([round(float(q), 4) for q in np.quantile(spread, [0.25, 0.75])]
                                                     if len(spread) else None)}
        return out

    return {
        "model": model, "corrupted": setup.donor_path, "mode": mode, "n_prompts": n_prompts,
        "max_new_tokens": max_new_tokens,
        "baselines": {name: {m: {k: round(v, 4) for k, v in summary[name][m].items()} for m in ("clean", "corrupted")}
                      for name in setup.sets},
        "sites": {name: site_numbers(name) for name in setup.sets},
        "cts_coverage": {k: round(v, 4) for k, v in forced.coverage.items()},
        "head_layers": heads.layers,
        "head_cts": {name: {s.label: round(float(m), 4) for s, m in zip(heads.sites, r.pooled_cts(min_gap))}
                     for name, r in heads.forced.items()},
        "seconds": {name: round(r.seconds, 2) for name, r in free.results.items()},
        "thinking_pooled_cts": ({s.label: round(float(m), 4)
                                 for s, m in zip(setup.layer_sites, think.pooled_cts(min_gap))}
                                if think is not None else None),
        "noise_donor": ({"sigma": noise.sigma, "kl": round(noise.kl, 4), "target_kl": round(noise.target_kl, 4),
                         "pooled_cts": {s.label: round(float(m), 4)
                                        for s, m in zip(setup.layer_sites, noise.forced.pooled_cts(min_gap))}}
                        if noise is not None else None),
    }


def cts_by_component(results: dict, layer_sites: Sequence[Site], components: Sequence[str]
                     ) -> dict[str, dict[str, list[float]]]:
    """``{component: {question type: [pooled CTS per layer]}}`` from :func:`results`."""
    return {comp: {name: [by_site[s.label]["pooled_cts"] for s in layer_sites if s.component == comp]
                   for name, by_site in results["sites"].items()} for comp in components}
