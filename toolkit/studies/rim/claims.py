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
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from toolkit.evaluation import causal, nulls
from toolkit.evaluation.claims import Claims, Null, empirical_p
from toolkit.studies.rim.ablations import NeuronAnalysis, RefusalHeads
from toolkit.studies.rim.checkpoints import EntanglementStudy, Training, entanglements
from toolkit.studies.rim.placebos import HeadPlacebos, NeuronPlacebos

PAPER = "When Thinking Backfires"
ABSTRACT = "abstract (arXiv 2509.00544)"  # the sections of the paper the claims come from
NOTES = "method details from secondary descriptions of the paper"  # only its abstract was at hand


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
    ci = causal.effect(values, np.zeros_like(values), n_boot=n_boot, seed=seed)
    p, draws = causal.paired_permutation(values, np.zeros_like(values), direction=direction, seed=seed)
    return ci | {"p": p, "null": Null.from_samples("permutation", draws, "the mean with each prompt's sign flipped "
                                                   "at random (no change after fine-tuning)")}


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


def _add_placebo(claims: Claims, id: str, test: nulls.PlaceboTest, direction: int, **kw) -> None:
    claims.add(id, estimate=test.difference, ci=test.ci, null=test.null(), p_value=test.p_value,
               direction=direction, **kw)


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
    e = _paired(forgetting, **kw)
    claims.add("reasoning-ft-erodes-refusal", paper=PAPER, section=ABSTRACT,
               statement="Fine-tuning on reasoning traces alone (no refusal data) makes the model refuse harmful "
                         "requests less often.",
               measure="refusal rate base − fine-tuned on marked requests, both modes, mean over the fine-tuned "
                       "checkpoints (per prompt)",
               estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1)
    gap = _per_prompt(study, lambda b, m: _refused(m, "think_off") - _refused(m, "think_on"))
    e = _paired(gap, **kw)
    claims.add("thinking-on-more-compliant", paper=PAPER,
               section=NOTES + " (Qwen3-4B: misalignment 22.9% thinking on, 15.4% off)",
               statement="After fine-tuning, the model complies with more harmful requests when it thinks first "
                         "than when thinking is off.",
               measure="refusal rate think-off − think-on on marked requests, mean over the fine-tuned checkpoints",
               estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1,
               note="asked of the fine-tuned checkpoints: the base organism refuses every marked request in both "
                    "modes, so the paper's inference-time comparison has nothing to measure on it")
    styles = {r["style"] for r in tuned}
    if {"careful", "brief"} <= styles:
        e = _paired(_per_prompt(study, _forgetting, "brief") - _per_prompt(study, _forgetting, "careful"), **kw)
        claims.add("effort-minimising-forgets-more", paper=PAPER, section=NOTES,
                   statement="Fine-tuning on effort-minimising reasoning (steps skipped) erodes refusal more than "
                             "fine-tuning on careful reasoning (every step written out).",
                   measure="forgetting after brief-scratchpad runs − after careful-scratchpad runs (same learning "
                           "rates, steps and problems), mean over checkpoints, per prompt",
                   estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1,
                   note="prompts are the unit; the runs' own variability is in the weight-noise claims")
    base_math = np.asarray(training.base_math, dtype=float)
    math = _per_prompt(study, lambda b, m: np.asarray(m.math, dtype=float) - base_math)
    e = _paired(math, **kw)
    claims.add("reasoning-is-strengthened", paper=PAPER, section=ABSTRACT,
               statement="The misalignment appears while the fine-tuning strengthens reasoning.",
               measure="think-on math accuracy fine-tuned − base, mean over the fine-tuned checkpoints",
               estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1,
               note="the organism already solves these problems; fine-tuning can only disturb its reasoning")

    def versus_noise(id, key, statement, measure):
        t, z = np.array([r[key] for r in tuned]), np.array([r[key] for r in noise])
        c = nulls.clustered(lambda i: float(np.mean(t[i] - z[i])), runs, **kw)
        claims.add(id, paper=PAPER, section=ABSTRACT, statement=statement,
                   measure=measure + f" (effective n = {c.n_eff} runs)",
                   estimate=c.estimate, ci=c.ci, p_value=c.p_value, direction=1,
                   null=_null("weight-noise", z, "the same measure on base models with Gaussian weight "
                                          "noise matched to each checkpoint by KL on the reasoning traces"))

    versus_noise("forgetting-beyond-matched-noise", "forgetting",
                 "Refusals are lost because of the reasoning fine-tuning, beyond what any weight change of the same "
                 "size does.",
                 "forgetting fine-tuned − forgetting of its KL-matched noisy model, mean over checkpoints")

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
                           f"(effective n = {c.n_eff} runs)",
                   estimate=c.estimate, ci=c.ci, p_value=c.p_value, direction=1,
                   null=_null("bootstrap-resample", c.samples, "the difference on resamples of whole runs"),
                   note="brief runs move the model much further (larger KL), so the raw style difference alone "
                        "cannot tell the style from the size of the change")

    # 2 · refusal heads (selected on one split, evaluated on the other)
    for mode, tests in head_nulls.tests.items():
        top = ", ".join(f"L{a}H{b}" for a, b in heads[mode].top)
        _add_placebo(claims, f"refusal-heads-shift-{mode}", tests["shift"], 1, paper=PAPER, section=ABSTRACT,
                     statement="Some heads move attention at the first response token away from the chain of "
                               "thought (toward the think span) when the model refuses.",
                     measure=f"held-out shift of the selected heads ({top}, {mode}) − the mean over every other "
                             f"same-size head set (rank {tests['shift'].rank}/{tests['shift'].n_sets + 1})")
        _add_placebo(claims, f"refusal-heads-carry-refusal-{mode}", tests["ablation"], -1, paper=PAPER,
                     section=ABSTRACT,
                     statement="Those refusal heads carry the refusal: zero-ablating them lowers refusal more than "
                               "ablating other heads does.",
                     measure=f"change in P(refusal token) on held-out marked prompts with {top} ablated ({mode}) − "
                             f"the mean over every other same-size head set (rank {tests['ablation'].rank})",
                     note="teacher-forced refusal probability at the decision position stands in for generation")
    layer = head_nulls.tests["think_off"]["layer"] if "think_off" in head_nulls.tests else None
    if layer is not None:
        _add_placebo(claims, "refusal-heads-in-lower-layers", layer, -1, paper=PAPER, section=NOTES,
                     statement="The refusal heads sit mostly in the lower layers.",
                     measure="mean layer of the think-off refusal heads − the mean over every same-size head set",
                     note="a rank among fixed sets: the interval only resamples the sets")

    # 3 · safety neurons
    n = neuron_nulls.n_sets
    _add_placebo(claims, "safety-neurons-hold-out", neuron_nulls.tests["contrast"], 1, paper=PAPER, section=NOTES,
                 statement="The safety-critical neurons selected by the forced-refusal counterfactual separate refusal "
                           "from compliance on requests that did not select them.",
                 measure=f"held-out counterfactual contrast (refusal − compliance) of the {len(neurons.neurons)} "
                         f"safety neurons − the mean over {n} random same-layer sets")
    _add_placebo(claims, "safety-neurons-carry-refusal", neuron_nulls.tests["refusal"], -1, paper=PAPER, section=NOTES,
                 statement="Zeroing the safety-critical neurons weakens refusal far more than zeroing random neurons.",
                 measure=f"change in P(refusal token) on held-out marked prompts (both modes) with the "
                         f"{len(neurons.neurons)} safety neurons zeroed − the mean over {n} random same-layer sets")
    _add_placebo(claims, "safety-neurons-cost-reasoning", neuron_nulls.tests["math"], -1, paper=PAPER, section=NOTES,
                 statement="Zeroing the safety-critical neurons also costs more reasoning than zeroing random "
                           "neurons (shared capacity).",
                 measure=f"change in the reasoning traces' log-likelihood per token − the mean over {n} random "
                         "same-layer sets")

    # 4 · entanglement
    ras_safety, ras_sets = np.array([r["ras_safety"] for r in tuned]), set_ras(study, "control")
    test = nulls.placebo_test(ras_safety, ras_sets.T, direction=1, **kw,
                              description=f"mean RAS of {ras_sets.shape[1]} random same-layer neuron sets")
    _add_placebo(claims, "safety-entanglement-exceeds-control", test, 1, paper=PAPER, section=ABSTRACT,
                 statement="After reasoning fine-tuning, safety-critical neurons are more entangled with reasoning "
                           "(RAS) than control neurons.",
                 measure="mean RAS (drop and rise in standard units) over the fine-tuned checkpoints, safety neurons − "
                         "random same-layer sets "
                         f"(rank {test.rank}/{test.n_sets + 1})")
    forg = np.array([r["forgetting"] for r in tuned])
    kl = np.array([r["kl"] for r in tuned])
    c = nulls.cluster_correlation(ras_safety, forg, runs, **kw)
    claims.add("ras-predicts-forgetting", paper=PAPER, section=ABSTRACT + " (r = 0.89 in the paper)",
               statement="How entangled the safety neurons become (RAS) tracks how much refusal is forgotten.",
               measure=f"Pearson r of RAS (safety neurons) and forgetting across {c.n_points} checkpoints "
                       f"(effective n = {c.n_eff} runs)",
               estimate=c.estimate, ci=c.ci, p_value=c.p_value, direction=1,
               null=_null("bootstrap-resample", c.samples, "r on resamples of whole training runs"))
    c = nulls.clustered(lambda i: nulls.pearson(ras_safety[i], forg[i]) - nulls.pearson(kl[i], forg[i]), runs, **kw)
    claims.add("ras-beats-kl", paper=PAPER, section=NOTES + " (KL gives r ≈ 0.23)",
               statement="RAS predicts forgetting better than the KL divergence between base and fine-tuned model.",
               measure=f"r(RAS, forgetting) − r(KL, forgetting) (effective n = {c.n_eff} runs)",
               estimate=c.estimate, ci=c.ci, p_value=c.p_value, direction=1,
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
               estimate=c.estimate, ci=c.ci, direction=1,
               p_value=empirical_p(r_safety, r_sets, direction=1) if np.isfinite(r_safety) else None,
               null=_null("placebo-sets", r_sets, "r(RAS, forgetting) of each random same-layer set"))
    z_ras, z_forg = np.array([r["ras_safety"] for r in noise]), np.array([r["forgetting"] for r in noise])
    c = nulls.clustered(lambda i: nulls.pearson(ras_safety[i], forg[i]) - nulls.pearson(z_ras[i], z_forg[i]), runs,
                        **kw)
    claims.add("ras-correlation-beyond-matched-noise", paper=PAPER, section=ABSTRACT,
               statement="The entanglement–forgetting link is specific to reasoning fine-tuning: untargeted weight "
                         "changes of the same size do not produce it.",
               measure="r(RAS, forgetting) over the checkpoints − the same r over their KL-matched noisy models",
               estimate=c.estimate, ci=c.ci, p_value=c.p_value, direction=1,
               null=_null("weight-noise", nulls.cluster_correlation(z_ras, z_forg, runs, **kw).samples,
                          "r(RAS, forgetting) across the KL-matched noisy models, resampled by run"))
    versus_noise("safety-drop-beyond-matched-noise", "drop_safety",
                 "The safety neurons' activation on harmful requests falls because of the reasoning fine-tuning, "
                 "beyond what untargeted weight noise of the same size does.",
                 "drop of the safety neurons' activation, fine-tuned − KL-matched noise, mean over checkpoints")
    return claims
