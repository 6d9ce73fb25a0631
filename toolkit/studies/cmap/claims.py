"""Notebook 02's claims: where the corrupted-math paper locates the corruption, each finding against its null.

Paper: *Investigating Internal Reasoning Circuits in Small LLMs Fine-tuned on Corrupted Mathematical Solutions*
(anonymous submission), cited as "Corrupted-math CMAP".

- **Layer trends** ("the corruption sits in the last layers"; "patched outputs get shorter as the patched layer
  moves later") are Spearman correlations between the layer index and a per-layer measure, averaged over
  components or question types. The null is ``permutation``: every assignment of the layers' order (each component
  or question type permuted on its own; all of them when there are at most :data:`MAX_PERMUTATIONS`, else that many
  random ones), p = the share at least as large in the paper's direction, identity included. With 4 layers and one
  series the smallest possible p is 1/24. The interval is a bootstrap over prompts.
- **Behaviour under a patch** ("patching the last layer makes related math wrong; earlier layers do not"; "unrelated
  questions stay correct") are paired accuracy differences over the same prompts
  (:func:`toolkit.evaluation.nulls.paired_difference`: bootstrap interval, sign-flip p). "Does not affect" is a
  no-effect claim whose SESOI (equivalence margin) is :data:`KEPT_MARGIN`.
- SESOIs: :data:`TREND_SESOI` for a layer trend (ρ), :data:`ACCURACY_SESOI` for an accuracy change.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats

from toolkit.core.grading import grade
from toolkit.evaluation import nulls
from toolkit.evaluation.claims import Claims, Null, bootstrap_p, empirical_p, percentile_ci
from toolkit.methods.cmap.result import CMAPResult

PAPER = "Corrupted-math CMAP"
MAX_PERMUTATIONS = 5000
KEPT_MARGIN = 0.10  # "does not affect": within ±10 accuracy points (the no-effect claims' SESOI)
TREND_SESOI = 0.5  # a layer trend: Spearman ρ of at least 0.5 over the patched layers
ACCURACY_SESOI = 0.25  # a quarter of the paper's all-or-nothing change (Table 2)
N_BOOT = 1000
CONTROLS = ("random", "untrained")  # a re-initialised model, and the clean model as its own donor (no corruption)
TREND = dict(sesoi=TREND_SESOI, sesoi_reason="the paper locates the corruption qualitatively (layers 30+ of 36): "
             "a trend weaker than ρ = 0.5 over the patched layers would not locate anything",
             paper_effect="corruption from layer ~30 of 36 (section 5.2)", controls=CONTROLS)
ACCURACY = dict(sesoi=ACCURACY_SESOI, sesoi_reason="a quarter of the paper's change (Table 2: correct -> incorrect)",
                paper_effect="correct -> incorrect (Table 2)", controls=CONTROLS)
KEPT = dict(sesoi=KEPT_MARGIN, sesoi_reason="the paper reports no change (Table 2); ±10 points is kept",
            controls=CONTROLS)


def _spearman_rows(values: np.ndarray) -> float:
    """Mean over rows of Spearman(layer index, row) for a ``[series, layers]`` array (NaN rows skipped)."""
    layers = np.arange(values.shape[1])
    rs = [stats.spearmanr(layers, row)[0] for row in values if np.all(np.isfinite(row)) and np.ptp(row) > 0]
    return float(np.mean(rs)) if rs else math.nan


def permutation_null(values: np.ndarray, *, seed: int = 0) -> np.ndarray:
    """The mean Spearman statistic of ``values`` ``[series, layers]`` under every joint permutation of each series'
    layer order (or :data:`MAX_PERMUTATIONS` random ones when there are more)."""
    n_series, n_layers = values.shape
    perms = list(itertools.permutations(range(n_layers)))
    if len(perms) ** n_series <= MAX_PERMUTATIONS:
        combos = itertools.product(perms, repeat=n_series)
    else:
        rng = np.random.default_rng(seed)
        combos = ([tuple(rng.permutation(n_layers)) for _ in range(n_series)] for _ in range(MAX_PERMUTATIONS))
    return np.array([_spearman_rows(np.stack([values[i, list(p)] for i, p in enumerate(combo)]))
                     for combo in combos])


def _trend_claim(out: Claims, cid: str, where: str, statement: str, measure: str, direction: int,
                 per_prompt: Callable[[np.ndarray], np.ndarray], n_prompts: int, seed: int, note: str = "") -> None:
    """Register a layer-trend claim; ``per_prompt(idx)`` gives the ``[series, layers]`` measure on prompts idx."""
    everyone = np.arange(n_prompts)
    values = per_prompt(everyone)
    estimate = _spearman_rows(values)
    null = permutation_null(values, seed=seed)
    rng = np.random.default_rng(seed)
    boots = np.array([_spearman_rows(per_prompt(rng.integers(0, n_prompts, n_prompts))) for _ in range(N_BOOT)])
    ci = percentile_ci(boots, estimate)
    described = "the layers' order permuted (every permutation)"
    defined = math.isfinite(estimate) and np.isfinite(null).any()
    out.add(cid, paper=PAPER, section=where, statement=statement, measure=measure, estimate=estimate, ci=ci,
            p_value=empirical_p(estimate, null, direction=direction) if defined else None, direction=direction,
            null=Null.from_samples("permutation", null, described) if defined else
            Null("permutation", 0, {}, described + "; undefined here: the measure is constant or missing"),
            note=note, n=n_prompts, unit="prompts", **TREND,
            p_floor=2 / (1 + len(null)) if defined else None)  # the identity is among the draws and counts again


def _layer_index(sites, component: str) -> list[int]:
    chosen = sorted((s.layer, i) for i, s in enumerate(sites) if s.component == component)
    return [i for _, i in chosen]


def _cts_by_layer(forced: CMAPResult, sites, components: Sequence[str], min_gap: float):
    """``per_prompt(idx)``: ``[components, layers]`` pooled CTS (a ratio of sums) over the prompts ``idx``."""
    num, den = forced.cts_sums(min_gap)  # [B, S], [B]

    def per_prompt(idx):
        total = den[idx].sum()
        pooled = num[idx].sum(axis=0) / total if total > 0 else np.full(num.shape[1], np.nan)
        return np.stack([pooled[_layer_index(sites, c)] for c in components])
    return per_prompt


def _correct(result: CMAPResult, i_site: int | None, answers: Sequence[str]) -> np.ndarray:
    """Per prompt: whether the final answer of the clean run (``i_site`` None) or of a patch is right."""
    toks = result.clean_tokens if i_site is None else [row[i_site] for row in result.patched_tokens]
    return np.array([grade(a, result.decode(t), result.grader).correct for t, a in zip(toks, answers)], dtype=float)


def _paired_claim(out: Claims, cid: str, where: str, statement: str, measure: str, a, b, direction: int,
                  seed: int, note: str = "") -> None:
    out.add(cid, paper=PAPER, section=where, statement=statement, measure=measure, direction=direction, note=note,
            **nulls.paired_difference(a, b, direction=direction, n_boot=N_BOOT, seed=seed),
            **(ACCURACY if direction else KEPT))


def claims(sets: dict[str, list[dict]], sites, free: dict[str, CMAPResult], forced: dict[str, CMAPResult], *,
           min_gap: float, seed: int = 0, noise: CMAPResult | None = None) -> Claims:
    """Notebook 02's claims from the free-running (``free``) and teacher-forced (``forced``) layer sweeps, and, with
    ``noise`` (the same teacher-forced sweep on related math with a KL-matched weight-noise donor,
    :func:`toolkit.studies.cmap.noise_donor_sweep`), the late-layer claim against an untargeted change."""
    out = Claims("02_cmap")
    rm = "related_math"
    components = [c for c in ("attn", "mlp") if _layer_index(sites, c)]
    n_layers = len(_layer_index(sites, components[0])) if components else 0
    if components and rm in forced:
        _trend_claim(out, "corruption-sits-in-late-layers", "sections 5.2 and 6",
                     "Patching later layers hands over more of the corrupted model's preference than earlier "
                     "layers: the corruption is concentrated near the output.",
                     f"Spearman(layer, pooled CTS) on related math, mean over {', '.join(components)}", 1,
                     _cts_by_layer(forced[rm], sites, components, min_gap), len(sets[rm]), seed)
    if components and rm in forced and noise is not None:
        corrupted = _cts_by_layer(forced[rm], sites, components, min_gap)
        noisy = _cts_by_layer(noise, sites, components, min_gap)

        def gap(idx):
            return _spearman_rows(corrupted(idx)) - _spearman_rows(noisy(idx))
        n = len(sets[rm])
        est = gap(np.arange(n))
        rng = np.random.default_rng(seed)
        boots = np.array([gap(rng.integers(0, n, n)) for _ in range(N_BOOT)])
        defined = math.isfinite(est) and np.isfinite(boots).any()
        ci = percentile_ci(boots, est) if defined else (math.nan,) * 2
        boots = boots[np.isfinite(boots)]
        described = ("the clean model plus Gaussian weight noise with the corrupted donor's KL to it, swept the same "
                     "way; its layer trend, bootstrapped over prompts")
        noise_trend = np.array([_spearman_rows(noisy(rng.integers(0, n, n))) for _ in range(N_BOOT)])
        out.add("corruption-late-beyond-noise", paper=PAPER, section="sections 5.2 and 6",
                statement="The corruption sits in the last layers because it is the fine-tuned corruption: a weight "
                          "change of the same size in no particular direction is not as late.",
                measure=f"Spearman(layer, pooled CTS) of the corrupted donor − of a KL-matched weight-noise donor, "
                        f"related math, mean over {', '.join(components)}",
                estimate=est, ci=ci, p_value=bootstrap_p(boots, direction=1) if defined else None, direction=1,
                null=Null.from_samples("weight-noise", noise_trend[np.isfinite(noise_trend)], described)
                if np.isfinite(noise_trend).any() else Null("weight-noise", 0, {}, described + "; undefined here"),
                n=n, unit="prompts", sesoi=TREND_SESOI / 2, sesoi_reason="half the trend's own SESOI: a layer "
                "trend steeper than noise's by less would not tell the corruption from any weight change",
                controls=("random",))
    resid = _layer_index(sites, "resid")
    if resid:
        types = [qt for qt in free if qt in sets]

        def lengths(idx):
            return np.array([[free[qt].lengths()[sites[i].label][idx].mean() for i in resid] for qt in types])
        _trend_claim(out, "later-patches-shorter-outputs", "section 5.2",
                     "The later the patched layer, the shorter the patched model's outputs.",
                     f"Spearman(layer, mean output length with the residual stream patched), mean over "
                     f"{len(types)} question types", -1, lengths, min(len(sets[qt]) for qt in types), seed,
                     note="the corrupted labels are bare values (x = 4), shorter than an answer in a sentence")
        last, first = resid[-1], resid[0]
        answers = [r["correct_answer"] for r in sets[rm]]
        clean = _correct(free[rm], None, answers)
        at_last = _correct(free[rm], last, answers)
        at_first = _correct(free[rm], first, answers)
        _paired_claim(out, "last-layer-patch-breaks-related-math", "section 5.2, Table 2",
                      "Patching the last layer's output into the clean model makes its related math answers wrong.",
                      f"clean − patched accuracy on related math (L{n_layers - 1} resid)", clean, at_last, 1, seed)
        _paired_claim(out, "first-layer-patch-keeps-related-math", "section 5.2, Table 2",
                      "Patching an early layer leaves the clean model's related math answers correct.",
                      "clean − patched accuracy on related math (L0 resid)", clean, at_first, 0, seed)
        if "unrelated_general" in free:
            ug = [r["correct_answer"] for r in sets["unrelated_general"]]
            clean_g = _correct(free["unrelated_general"], None, ug)
            last_g = _correct(free["unrelated_general"], last, ug)
            _paired_claim(out, "last-layer-patch-keeps-unrelated-general", "section 5.2, Table 2",
                          "Even patched at the last layer, the model stays correct on unrelated general questions.",
                          f"clean − patched accuracy on unrelated general (L{n_layers - 1} resid)", clean_g, last_g,
                          0, seed)
    return out
