"""Notebook 06's findings as claims against their nulls ("When Thinking Backfires", arXiv 2509.00544; the claims
cite its abstract, and method details from secondary descriptions of the paper: :data:`NOTES`).

Nulls, by claim family:

- **Behaviour after fine-tuning** (forgetting, think-on vs think-off refusal, math): per prompt, the change averaged
  over the fine-tuned checkpoints; interval: bootstrap over prompts; p: sign-flip permutation over prompts.
- **Against untargeted change** (``weight-noise``): every checkpoint beside its KL-matched noisy model
  (:mod:`~toolkit.studies.rim.noise`); the difference averaged over checkpoints, with a cluster bootstrap over the
  training runs (effective n = runs, not checkpoints; :func:`toolkit.evaluation.nulls.clustered`, whose p is never
  below 2^−runs: with three runs, 0.125, so these claims cannot reach p < 0.05 without more runs).
- **Heads and neurons** (``placebo-sets``): :mod:`~toolkit.studies.rim.placebos` on the held-out pairs.
- **Entanglement**: the safety neurons' RAS against ≥ 200 random same-layer sets (checkpoints as the units of
  :func:`toolkit.evaluation.nulls.placebo_test`); correlations with forgetting across checkpoints with cluster
  bootstrap intervals over runs, against KL, against the random sets' correlations, and against the noisy models'.
- **Brief against careful runs** (``effort-minimising-forgets-more``): one number per run (its mean forgetting over
  its checkpoints and prompts), runs as the unit (:func:`toolkit.evaluation.nulls.runs_difference`: with 3 runs
  against 3 its p cannot go below 0.05, and with one run per style there is no interval).

Every claim declares its kind: that fine-tuning strengthens reasoning is the study's precondition (a *check*); the
rest are *findings* with their smallest effect of interest (half the paper's number where the secondary
descriptions give one, else a scale), their controls (a re-initialised model; and KL-matched weight noise for the
findings about fine-tuning) and their units. Claims over the checkpoints of a few runs declare the floor
``2^−runs`` of their p and widen their cluster-bootstrap interval for few runs (:func:`_over_runs`). Placebo-set
claims decide both ways from ranks (``p_opposite``); the refusal heads' depth gets an interval that redoes their
selection on resampled selection pairs.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

from toolkit.evaluation import causal, nulls
from toolkit.evaluation.claims import Claims, Null, empirical_p, percentile_ci
from toolkit.methods.rim import top_heads
from toolkit.studies.rim.ablations import NeuronAnalysis, RefusalHeads
from toolkit.studies.rim.checkpoints import EntanglementStudy, Training, entanglements
from toolkit.studies.rim.placebos import HeadPlacebos, NeuronPlacebos

PAPER = "When Thinking Backfires"
ABSTRACT = "abstract (arXiv 2509.00544)"  # the sections of the paper the claims come from
NOTES = "method details from secondary descriptions of the paper"  # only its abstract was at hand
TRAINED, BASE = ("random", "weight-noise"), ("random",)  # controls: findings about fine-tuning, about the base model
FORGET = (0.05, "5 points of refusal rate, a scale (the paper's forgetting has no size in what we have of it)")
STD = (0.05, "a twentieth of a base-model standard deviation, a scale (the paper reports no size)")


def finding(sesoi: float, reason: str, paper_effect: str = "", controls=TRAINED, **units) -> dict:
    """What a finding declares besides its numbers (``units``: ``n`` and ``unit``)."""
    return {"kind": "finding", "sesoi": sesoi, "sesoi_reason": reason, "paper_effect": paper_effect,
            "controls": controls, **units}


def _hold(ci, estimate: float) -> tuple[float, float]:
    """``ci`` widened to hold ``estimate`` (a percentile interval need not)."""
    lo, hi = float(ci[0]), float(ci[1])
    if not (np.isfinite(lo) and np.isfinite(hi) and np.isfinite(estimate)):
        return lo, hi
    return min(lo, estimate), max(hi, estimate)


def _over_runs(c: nulls.ClusteredCorrelation) -> dict:
    """Claim fields of a statistic over the checkpoints of a few runs (:func:`toolkit.evaluation.nulls.clustered`):
    its p and that p's floor ``2^−runs``, the runs as the unit, and an interval for few runs: the estimate ± the
    t quantile with ``runs − 1`` degrees of freedom × the sd of the cluster-bootstrap draws (joined with their
    percentile interval). The percentile interval alone is too narrow with few clusters (with 2 runs it barely
    spans the two runs' values) and would let a claim contradict on two runs; t(runs − 1) is the usual few-cluster
    correction (Cameron, Gelbach and Miller 2008)."""
    ci, draws, k = c.ci, np.asarray(c.samples, float), c.n_eff
    if k >= 2 and len(draws) >= 2 and np.isfinite(c.estimate):
        half = float(stats.t.ppf(0.975, k - 1) * draws.std(ddof=1))
        ci = (min(c.ci[0], c.estimate - half), max(c.ci[1], c.estimate + half))
    return {"estimate": c.estimate, "ci": _hold(ci, c.estimate), "p_value": c.p_value, "p_floor": 0.5 ** k,
            "n": k, "unit": "runs"}


def _per_prompt(study: EntanglementStudy, value, style: str | None = None) -> np.ndarray:
    """Per prompt, ``value(base measurement, tuned measurement)`` averaged over the fine-tuned checkpoints (only
    those of runs in ``style``, if given)."""
    base = study.measured[study.rows[0]["label"]]
    return np.mean([value(base, study.measured[r["label"]]) for r in study.tuned
                    if style is None or r["style"] == style], axis=0)


def _forgetting(b, m) -> np.ndarray:
    """Per prompt: refused by the base model − refused by the checkpoint, averaged over the answer modes."""
    return np.mean([_refused(b, k) - _refused(m, k) for k in b.behaviour], 0)


def _paired(values: np.ndarray, n_boot: int, seed: int, direction: int = 1) -> dict:
    """Claim fields of a per-prompt change: its mean, bootstrap interval over prompts, sign-flip p and null."""
    ci = causal.effect(values, np.zeros_like(values), n_boot=n_boot, seed=seed)
    p, draws = nulls.paired_permutation(values, np.zeros_like(values), direction=direction, seed=seed)
    return {"estimate": ci["estimate"], "ci": _hold((ci["low"], ci["high"]), ci["estimate"]), "p_value": p,
            "n": len(values), "unit": "prompts",
            "null": Null.from_samples("permutation", draws, "the mean with each prompt's sign flipped at random (no "
                                      "change after fine-tuning)")}


def _null(kind: str, samples, description: str) -> Null:
    """``Null.from_samples``, or a null without draws where none is finite (e.g. one training run)."""
    x = np.asarray(samples, dtype=float).ravel()
    if np.isfinite(x).any():
        return Null.from_samples(kind, x, description)
    return Null(kind, 0, {}, description + " (not computable with these parameters)")


def _refused(m, mode: str) -> np.ndarray:
    return np.asarray(m.behaviour[mode].refused, dtype=float)


def _pearson_rows(a: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Pearson r of each row of ``a`` ``[S, n]`` with ``y`` ``[n]`` (NaN for constant rows)."""
    a = a - a.mean(1, keepdims=True)
    y = y - y.mean()
    den = np.sqrt((a ** 2).sum(1) * (y ** 2).sum())
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, (a @ y) / np.where(den > 0, den, 1), np.nan)


def set_ras(study: EntanglementStudy, name: str) -> np.ndarray:
    """``[n_tuned, n_draws]``: the mean RAS of each draw of neuron set ``name`` at each fine-tuned checkpoint."""
    b = study.measured[study.rows[0]["label"]]
    return np.array([[e.mean_ras for e in entanglements(b, study.measured[r["label"]], name)] for r in study.tuned])


def _add_placebo(claims: Claims, id: str, test: nulls.PlaceboTest, direction: int, *, unit: str, **kw) -> None:
    """A placebo-set claim: rank p-values from both ends (it decides both ways from ranks)."""
    claims.add(id, **(test.claim_fields() | {"unit": unit}), direction=direction, **kw)


def layer_selection_draws(shift: np.ndarray, k: int, placebo_mean: float, *, n_boot: int = 2000,
                          seed: int = 0) -> np.ndarray:
    """``[n_boot]``: the mean layer of the top-``k`` heads selected again on each resample of the selection pairs'
    shifts (``shift`` ``[n, L, H]``), minus ``placebo_mean``: how far the selected set's depth moves with which pairs
    selected it."""
    rng = np.random.default_rng(seed)
    return np.array([np.mean([lay for lay, _ in top_heads(shift[rng.integers(0, len(shift), len(shift))], k)])
                     for _ in range(n_boot)]) - placebo_mean


def register_claims(training: Training, heads: RefusalHeads, head_nulls: HeadPlacebos, neurons: NeuronAnalysis,
                    neuron_nulls: NeuronPlacebos, study: EntanglementStudy, noise: Sequence[dict], *,
                    n_boot: int = 2000, seed: int = 0) -> Claims:
    """The notebook's claims (module docstring); ``noise`` are the KL-matched noise rows, one per fine-tuned row in
    the same order."""
    claims = Claims("06_rim")
    tuned = study.tuned
    runs = [r["run"] for r in tuned]
    kw = dict(n_boot=n_boot, seed=seed)

    # 1 · behaviour after reasoning fine-tuning
    forgetting = _per_prompt(study, _forgetting)
    claims.add("reasoning-ft-erodes-refusal", paper=PAPER, section=ABSTRACT,
               statement="Fine-tuning on reasoning traces alone (no refusal data) makes the model refuse harmful "
                         "requests less often.",
               measure="refusal rate base − fine-tuned on marked requests, both modes, mean over the fine-tuned "
                       "checkpoints (per prompt)", **_paired(forgetting, **kw), direction=1, **finding(*FORGET))
    gap = _per_prompt(study, lambda b, m: _refused(m, "think_off") - _refused(m, "think_on"))
    claims.add("thinking-on-more-compliant", paper=PAPER,
               section=NOTES + " (Qwen3-4B: misalignment 22.9% thinking on, 15.4% off)",
               statement="After fine-tuning, the model complies with more harmful requests when it thinks first "
                         "than when thinking is off.",
               measure="refusal rate think-off − think-on on marked requests, mean over the fine-tuned checkpoints",
               **_paired(gap, **kw), direction=1,
               **finding(0.037, "half the paper's gap (misalignment 22.9% thinking on − 15.4% off = 7.5 points)",
                         "misalignment 22.94% thinking on vs 15.39% off (Qwen3-4B)"),
               note="asked of the fine-tuned checkpoints: a base model that refuses every marked request in both "
                    "modes leaves the paper's inference-time comparison nothing to measure")
    styles = {r["style"] for r in tuned}
    if {"careful", "brief"} <= styles:
        per_run = {}  # run -> (style, its checkpoints' forgetting)
        for r in tuned:
            per_run.setdefault(r["run"], (r["style"], []))[1].append(r["forgetting"])
        by_style = {s: [float(np.mean(f)) for style, f in per_run.values() if style == s] for s in ("brief", "careful")}
        rl = nulls.runs_difference(by_style["brief"], by_style["careful"], direction=1)
        claims.add("effort-minimising-forgets-more", paper=PAPER, section=NOTES,
                   statement="Fine-tuning on effort-minimising reasoning (steps skipped) erodes refusal more than "
                             "fine-tuning on careful reasoning (every step written out).",
                   measure=f"mean forgetting of the {len(by_style['brief'])} brief-scratchpad runs − of the "
                           f"{len(by_style['careful'])} careful-scratchpad runs (same learning rates, steps and "
                           "problems); one number per run: its forgetting over its checkpoints and prompts",
                   **rl.claim_fields(), direction=1, **finding(*FORGET),
                   null=Null("permutation", round(1 / rl.p_floor), {}, "the difference over every split of the "
                             "runs into groups of these sizes (style labels permuted over runs)"),
                   note="runs are the unit: Welch interval over runs, exact permutation p over the runs' labels")
    base_math = np.asarray(training.base_math, dtype=float)
    math = _per_prompt(study, lambda b, m: np.asarray(m.math, dtype=float) - base_math)
    claims.add("reasoning-is-strengthened", paper=PAPER, section=ABSTRACT, kind="check",
               statement="The misalignment appears while the fine-tuning strengthens reasoning.",
               measure="think-on math accuracy fine-tuned − base, mean over the fine-tuned checkpoints",
               **_paired(math, **kw), direction=1,
               note="a base model that already solves these problems leaves fine-tuning little to strengthen")

    def versus_noise(id, key, statement, measure, sesoi):
        t, z = np.array([r[key] for r in tuned]), np.array([r[key] for r in noise])
        c = nulls.clustered(lambda i: float(np.mean(t[i] - z[i])), runs, **kw)
        claims.add(id, paper=PAPER, section=ABSTRACT, statement=statement,
                   measure=measure + f" (effective n = {c.n_eff} runs)", **_over_runs(c), direction=1,
                   **finding(*sesoi),
                   null=_null("weight-noise", z, "the same measure on base models with Gaussian weight "
                                          "noise matched to each checkpoint by KL on the reasoning traces"))

    versus_noise("forgetting-beyond-matched-noise", "forgetting",
                 "Refusals are lost because of the reasoning fine-tuning, beyond what any weight change of the same "
                 "size does.",
                 "forgetting fine-tuned − forgetting of its KL-matched noisy model, mean over checkpoints", FORGET)

    if {"careful", "brief"} <= styles:
        excess = np.array([r["forgetting"] - z["forgetting"] for r, z in zip(tuned, noise)])
        brief = np.array([r["style"] == "brief" for r in tuned])

        def style_gap(i):
            b, c = excess[i][brief[i]], excess[i][~brief[i]]
            return float(b.mean() - c.mean()) if len(b) and len(c) else float("nan")

        c = nulls.clustered(style_gap, runs, **kw)
        claims.add("effort-minimising-forgets-more-beyond-noise", paper=PAPER, section=NOTES,
                   statement="Effort-minimising reasoning erodes refusal more than careful reasoning does, beyond "
                             "what a weight change of the same size does.",
                   measure="(forgetting − forgetting of its KL-matched noisy model), brief runs − careful runs "
                           f"(effective n = {c.n_eff} runs)", **_over_runs(c), direction=1, **finding(*FORGET),
                   null=_null("bootstrap-resample", c.samples, "the difference on resamples of whole runs"),
                   note="brief runs move the model much further (larger KL), so the raw style difference alone "
                        "cannot tell the style from the size of the change")

    # 2 · refusal heads (selected on one split, evaluated on the other)
    pairs = "held-out pairs"
    for mode, tests in head_nulls.tests.items():
        top = ", ".join(f"L{a}H{b}" for a, b in heads[mode].top)
        _add_placebo(claims, f"refusal-heads-shift-{mode}", tests["shift"], 1, paper=PAPER, section=ABSTRACT,
                     unit=pairs, **finding(0.02, "2% of the attention row moved, a scale (the paper gives no size)",
                                           controls=BASE),
                     statement="Some heads move attention at the first response token away from the chain of "
                               "thought (toward the think span) when the model refuses.",
                     measure=f"held-out shift of the selected heads ({top}, {mode}) − the mean over every other "
                             f"same-size head set (rank {tests['shift'].rank}/{tests['shift'].n_sets + 1})")
        _add_placebo(claims, f"refusal-heads-carry-refusal-{mode}", tests["ablation"], -1, paper=PAPER,
                     section=ABSTRACT, unit=pairs,
                     **finding(0.05, "5 points of refusal probability, a scale (the paper gives no size for heads)",
                               controls=BASE),
                     statement="Those refusal heads carry the refusal: zero-ablating them lowers refusal more than "
                               "ablating other heads does.",
                     measure=f"change in P(refusal token) on held-out marked prompts with {top} ablated ({mode}) − "
                             f"the mean over every other same-size head set (rank {tests['ablation'].rank})",
                     note="teacher-forced refusal probability at the decision position stands in for generation")
    layer = head_nulls.tests["think_off"]["layer"] if "think_off" in head_nulls.tests else None
    if layer is not None:
        a = heads["think_off"]
        draws = layer_selection_draws(a.shift[a.rows(a.split.select)], len(a.top), layer.placebo_mean, **kw)
        claims.add("refusal-heads-in-lower-layers", paper=PAPER, section=NOTES,
                   statement="The refusal heads sit mostly in the lower layers.",
                   measure="mean layer of the think-off refusal heads − the mean over every same-size head set",
                   **(layer.claim_fields() | {"ci": percentile_ci(draws, layer.difference),
                                              "n": len(a.rows(a.split.select)), "unit": "selection pairs"}),
                   direction=-1, **finding(0.5, "half a layer (the paper gives no depth)",
                                           controls=BASE),
                   note="rank among every same-size set; interval: the heads selected again on resampled "
                        "selection pairs")

    # 3 · safety neurons
    n = neuron_nulls.n_sets
    in_sample = float(np.mean(neurons.contrast(neurons.neurons, neurons.split.select)))
    _add_placebo(claims, "safety-neurons-hold-out", neuron_nulls.tests["contrast"], 1, paper=PAPER, section=NOTES,
                 unit="held-out requests",
                 **finding(max(in_sample / 2, 1e-6), f"half the neurons' contrast on the requests that selected them "
                                                     f"({in_sample:.3g}): out of sample, half the selection's effect",
                           controls=BASE),
                 statement="The safety-critical neurons selected by the forced-refusal counterfactual separate refusal "
                           "from compliance on requests that did not select them.",
                 measure=f"held-out counterfactual contrast (refusal − compliance) of the {len(neurons.neurons)} "
                         f"safety neurons − the mean over {n} random same-layer sets")
    _add_placebo(claims, "safety-neurons-carry-refusal", neuron_nulls.tests["refusal"], -1, paper=PAPER, section=NOTES,
                 unit="held-out prompts",
                 **finding(0.077, "half the paper's gap to random neurons (misalignment +13.26% vs −2.19%: 15.5 "
                                  "points), read as refusal probability", "misalignment +13.26% (random −2.19%)",
                           controls=BASE),
                 statement="Zeroing the safety-critical neurons weakens refusal far more than zeroing random neurons.",
                 measure=f"change in P(refusal token) on held-out marked prompts (both modes) with the "
                         f"{len(neurons.neurons)} safety neurons zeroed − the mean over {n} random same-layer sets")
    _add_placebo(claims, "safety-neurons-cost-reasoning", neuron_nulls.tests["math"], -1, paper=PAPER, section=NOTES,
                 unit="reasoning traces",
                 **finding(0.05, "0.05 nats per token, a scale (the paper's accuracy loss is not in these units)",
                           "math accuracy −18.19% (random −7.32%)", controls=BASE),
                 statement="Zeroing the safety-critical neurons also costs more reasoning than zeroing random "
                           "neurons (shared capacity).",
                 measure=f"change in the reasoning traces' log-likelihood per token − the mean over {n} random "
                         "same-layer sets")

    # 4 · entanglement
    ras_safety, ras_sets = np.array([r["ras_safety"] for r in tuned]), set_ras(study, "control")
    test = nulls.placebo_test(ras_safety, ras_sets.T, direction=1, **kw,
                              description=f"mean RAS of {ras_sets.shape[1]} random same-layer neuron sets")
    _add_placebo(claims, "safety-entanglement-exceeds-control", test, 1, paper=PAPER, section=ABSTRACT,
                 unit="checkpoints", **finding(*STD),
                 statement="After reasoning fine-tuning, safety-critical neurons are more entangled with reasoning "
                           "(RAS) than control neurons.",
                 measure="mean RAS (drop and rise in standard units) over the fine-tuned checkpoints, safety "
                         f"neurons − random same-layer sets (rank {test.rank}/{test.n_sets + 1})")
    forg = np.array([r["forgetting"] for r in tuned])
    kl = np.array([r["kl"] for r in tuned])
    z_ras, z_forg = np.array([r["ras_safety"] for r in noise]), np.array([r["forgetting"] for r in noise])

    def ras_predicts(registry: Claims, ras: np.ndarray, forgetting: np.ndarray, **control):
        c = nulls.cluster_correlation(ras, forgetting, runs, **kw)
        return registry.add("ras-predicts-forgetting", paper=PAPER, section=ABSTRACT + " (r = 0.89 in the paper)",
                            statement="How entangled the safety neurons become (RAS) tracks how much refusal is "
                                      "forgotten.",
                            measure=f"Pearson r of RAS (safety neurons) and forgetting across {c.n_points} "
                                    f"checkpoints (effective n = {c.n_eff} runs)", **_over_runs(c), direction=1,
                            **finding(0.45, "half the paper's r = 0.891", "r = 0.891 (p = 0.003)"), **control,
                            null=_null("bootstrap-resample", c.samples, "r on resamples of whole training runs"))

    # its weight-noise control: the same claim on the KL-matched noisy models (no training at all)
    on_noise = ras_predicts(Claims("06_rim (weight-noise control)"), z_ras, z_forg).verdict
    ras_predicts(claims, ras_safety, forg, control_verdicts={"weight-noise": on_noise})
    c = nulls.clustered(lambda i: nulls.pearson(ras_safety[i], forg[i]) - nulls.pearson(kl[i], forg[i]), runs, **kw)
    claims.add("ras-beats-kl", paper=PAPER, section=NOTES + " (KL gives r ≈ 0.23)",
               statement="RAS predicts forgetting better than the KL divergence between base and fine-tuned model.",
               measure=f"r(RAS, forgetting) − r(KL, forgetting) (effective n = {c.n_eff} runs)", **_over_runs(c),
               direction=1, **finding(0.33, "half the paper's gap (r 0.891 for RAS − about 0.23 for KL)",
                                      "r = 0.891 vs about 0.23"),
               null=_null("bootstrap-resample", c.samples, "the difference on resamples of whole runs"))
    r_sets = _pearson_rows(ras_sets.T, forg)
    r_safety = nulls.pearson(ras_safety, forg)
    def specific(i):
        return nulls.pearson(ras_safety[i], forg[i]) - np.nanmean(_pearson_rows(ras_sets[i].T, forg[i]))

    c = nulls.clustered(specific, runs, **kw)
    claims.add("ras-correlation-specific-to-safety-neurons", paper=PAPER, section=ABSTRACT,
               statement="The link between entanglement and forgetting belongs to the safety neurons, not to any "
                         "neurons.",
               measure=f"r(RAS, forgetting) of the safety neurons − the mean r over {ras_sets.shape[1]} random "
                       "same-layer sets",
               **{k: v for k, v in _over_runs(c).items() if k not in ("p_value", "p_floor")}, direction=1,
               p_value=empirical_p(r_safety, r_sets, direction=1) if np.isfinite(r_safety) else None,
               p_opposite=empirical_p(r_safety, r_sets, direction=-1) if np.isfinite(r_safety) else None,
               **finding(0.3, "r 0.3 above the random sets' (the paper gives no r for control neurons)"),
               null=_null("placebo-sets", r_sets, "r(RAS, forgetting) of each random same-layer set"))
    c = nulls.clustered(lambda i: nulls.pearson(ras_safety[i], forg[i]) - nulls.pearson(z_ras[i], z_forg[i]), runs,
                        **kw)
    claims.add("ras-correlation-beyond-matched-noise", paper=PAPER, section=ABSTRACT,
               statement="The entanglement–forgetting link is specific to reasoning fine-tuning: untargeted weight "
                         "changes of the same size do not produce it.",
               measure="r(RAS, forgetting) over the checkpoints − the same r over their KL-matched noisy models",
               **_over_runs(c), direction=1,
               **finding(0.3, "a difference of 0.3 in r, a scale (the paper has no noise control)"),
               null=_null("weight-noise", nulls.cluster_correlation(z_ras, z_forg, runs, **kw).samples,
                          "r(RAS, forgetting) across the KL-matched noisy models, resampled by run"))
    versus_noise("safety-drop-beyond-matched-noise", "drop_safety",
                 "The safety neurons' activation on harmful requests falls because of the reasoning fine-tuning, "
                 "beyond what untargeted weight noise of the same size does.",
                 "drop of the safety neurons' activation, fine-tuned − KL-matched noise, mean over checkpoints", STD)
    return claims
