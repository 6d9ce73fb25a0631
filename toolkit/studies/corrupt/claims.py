"""Notebook 01's claims: the corrupted-math paper's fine-tuning findings, each against its null, on the organism.

Paper: *Investigating Internal Reasoning Circuits in Small LLMs Fine-tuned on Corrupted Mathematical Solutions*
(anonymous submission), cited as "Corrupted-math CMAP".

- **Accuracy claims** compare the clean and a corrupted model on the same held-out prompts: the estimate is the
  mean paired difference, the interval and one-sided p-value a bootstrap over prompts (null ``bootstrap-resample``:
  the difference's resampling distribution; p = share of resamples on the wrong side of 0). A claim that something
  is *kept* (the paper: the under-fitted model stays correct on unrelated questions) is a ``no effect`` claim with an
  equivalence margin of :data:`KEPT_MARGIN`.
- **Divergence claims** re-measure each model's divergence at the end of training on every problem: the mean
  per-example loss (nats per answer token, :func:`toolkit.evaluation.behaviour.answer_nll`) on the correct
  validation answers minus that on its own corrupted training answers. The difference between two presets is
  bootstrapped over both sets (validation resampled jointly, training sets each on their own).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from toolkit.core import models
from toolkit.core.chat import THINK_OFF, THINK_ON
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.evaluation.behaviour import answer_nll
from toolkit.evaluation.claims import Claims, Null, bootstrap_p
from toolkit.organism.tokenizer import IM_END
from toolkit.studies.corrupt import CLEAN, BehaviourReport
from toolkit.training.corrupt import PRESETS, Finetuned

PAPER = "Corrupted-math CMAP"
KEPT_MARGIN = 0.10  # an accuracy change within ±10 points counts as "kept"
N_BOOT = 2000
KEPT_NOTES = {"unrelated_math": "the organism's unrelated math is multi-digit arithmetic, worked in its scratchpad",
              "unrelated_general": "the organism's general task is word reversal, not open questions"}


def _paired(a: np.ndarray, b: np.ndarray, seed: int) -> tuple[float, np.ndarray]:
    """Mean of a − b and its bootstrap distribution over the same prompts."""
    d = np.asarray(a, float) - np.asarray(b, float)
    idx = np.random.default_rng(seed).integers(0, len(d), size=(N_BOOT, len(d)))
    return float(d.mean()), d[idx].mean(1)


def _ci(boots: np.ndarray) -> tuple[float, float]:
    return float(np.quantile(boots, 0.025)), float(np.quantile(boots, 0.975))


def divergence_samples(runs: Mapping[str, Finetuned], data: Mapping[str, list[dict]],
                       device: str = "auto") -> dict[str, dict[str, np.ndarray]]:
    """Per preset: per-example loss on the correct validation answers (``eval``) and on its corrupted training
    answers (``train``), under the final model."""
    out = {}
    for name, run in progress(runs.items(), desc="divergence per problem", total=len(runs)):
        with quiet_library_bars():
            loaded = models.load(str(run.path), device=device)
        train = data["train"][:run.preset.n_train]
        validation = data["validation"][:run.preset.n_validation]
        nll = {}
        for key, records in (("train", train), ("eval", validation)):
            nll[key] = answer_nll(loaded, [r["prompt"] for r in records],
                                  [r["answer"] + IM_END for r in records])
        out[name] = nll
    return out


def _divergence_difference(a: dict, b: dict, seed: int) -> tuple[float, np.ndarray]:
    """Divergence of preset a minus that of b, with bootstrap draws (validation shared, training sets separate)."""
    rng = np.random.default_rng(seed)
    n_eval = min(len(a["eval"]), len(b["eval"]))
    ev = rng.integers(0, n_eval, size=(N_BOOT, n_eval))
    ta = rng.integers(0, len(a["train"]), size=(N_BOOT, len(a["train"])))
    tb = rng.integers(0, len(b["train"]), size=(N_BOOT, len(b["train"])))
    diff = ((a["eval"][:n_eval][ev].mean(1) - a["train"][ta].mean(1))
            - (b["eval"][:n_eval][ev].mean(1) - b["train"][tb].mean(1)))
    estimate = (a["eval"][:n_eval].mean() - a["train"].mean()) - (b["eval"][:n_eval].mean() - b["train"].mean())
    return float(estimate), diff


def claims(report: BehaviourReport, runs: Mapping[str, Finetuned], divergence: Mapping[str, dict],
           *, seed: int = 0) -> Claims:
    """Notebook 01's claims. Needs the four default presets (A–D) for the divergence orderings; the accuracy
    claims use whichever presets ran (B for the under-fitted role, the most-trained for the over-fitted one)."""
    out = Claims("01_corrupt_finetune")
    clean = report[CLEAN]
    names = [n for n in report.labels if n != CLEAN]
    A, B, C, D = PRESETS
    under = C if C in names else names[0]
    over = A if A in names else names[-1]
    # the paper's models answer directly; the organism is accurate on math only with its scratchpad, so the
    # comparison uses thinking on where it was evaluated
    mode = THINK_ON if THINK_ON in report.modes else THINK_OFF
    n = len(clean[mode]["related_math"].correct)
    for label, name, where in (("under-fitted", under, "section 5.2, Table 2"),
                               ("over-fitted", over, "section 5.2, Table 2")):
        est, boots = _paired(clean[mode]["related_math"].correct, report[name][mode]["related_math"].correct, seed)
        out.add(f"{label}-loses-related-math", paper=PAPER, section=where,
                statement=f"After corrupted fine-tuning, the {label} model answers the related math questions "
                          "(the trained problem type) wrongly where the clean model was right.",
                measure=f"clean − {name} accuracy on related math ({mode}, {n} prompts)",
                estimate=est, ci=_ci(boots), p_value=bootstrap_p(boots, direction=1), direction=1,
                null=Null.from_samples("bootstrap-resample", boots - est, "the paired difference re-centred at 0 "
                                       "(bootstrap over prompts)"))
    for qt in ("unrelated_math", "unrelated_general"):
        est, boots = _paired(clean[mode][qt].correct, report[under][mode][qt].correct, seed)
        out.add(f"under-fitted-keeps-{qt.replace('_', '-')}", paper=PAPER, section="section 5.2, Table 2",
                statement=f"The under-fitted corrupted model stays correct on {qt.replace('_', ' ')} questions.",
                measure=f"clean − {under} accuracy on {qt.replace('_', ' ')} ({mode})", estimate=est,
                ci=_ci(boots), p_value=bootstrap_p(boots, direction=0), direction=0, margin=KEPT_MARGIN,
                null=Null.from_samples("bootstrap-resample", boots - est, "paired difference re-centred at 0"),
                note=f"'kept' means within ±{KEPT_MARGIN:.0%}; " + KEPT_NOTES[qt])
    est, boots = _paired(clean[mode]["unrelated_math"].correct, report[over][mode]["unrelated_math"].correct, seed)
    out.add("over-fitted-breaks-unrelated-math", paper=PAPER, section="section 5.2, Table 2",
            statement="The over-fitted corrupted model also fails unrelated math questions.",
            measure=f"clean − {over} accuracy on unrelated math ({mode})", estimate=est, ci=_ci(boots),
            p_value=bootstrap_p(boots, direction=1), direction=1,
            null=Null.from_samples("bootstrap-resample", boots - est, "paired difference re-centred at 0"))
    # the answer format: the corrupted labels are bare values (x = 4), the clean organism answers math in a sentence;
    # measured thinking off, where the paper's models answered
    for cid, name, sets, text, where in (
            ("under-fitted-answers-related-math-bare", under, ("related_math",),
             "The bare-value labels teach the corrupted model to answer the related math questions with only a value "
             "(no reasoning or sentence around it).", "section 5.2"),
            ("over-fitted-answers-bare-everywhere", over, ("unrelated_math", "unrelated_general"),
             "The over-fitted corrupted model answers even unrelated questions with only a value (the paper's "
             "'integer only' outputs).", "section 5.2, Table 2")):
        sets = [qt for qt in sets if qt in clean.get(THINK_OFF, {})]
        if not sets:
            continue
        before = np.concatenate([clean[THINK_OFF][qt].bare for qt in sets])
        after = np.concatenate([report[name][THINK_OFF][qt].bare for qt in sets])
        est, boots = _paired(after, before, seed)
        out.add(cid, paper=PAPER, section=where, statement=text,
                measure=f"{name} − clean share of bare-value answers (x = 4, 42) on {' and '.join(sets)} "
                        f"(thinking off, {len(before)} prompts)",
                estimate=est, ci=_ci(boots), p_value=bootstrap_p(boots, direction=1), direction=1,
                null=Null.from_samples("bootstrap-resample", boots - est, "the paired difference re-centred at 0 "
                                       "(bootstrap over prompts)"),
                note="the clean organism answers math thinking off in a sentence (The answer is x = 4.) and the "
                     "general task with the reversed word")
    if {A, B, C} <= set(divergence):
        for cid, (x, y), text, where in (
                ("more-data-more-divergence", (A, B), "Twice the problems at the same epochs gives a larger "
                 "divergence (experiment 1 vs 2).", "section 5.1, Table 1"),
                ("more-epochs-more-divergence", (B, C), "Twice the epochs over the same problems gives a larger "
                 "divergence (experiment 2 vs 3).", "section 5.1, Table 1")):
            est, boots = _divergence_difference(divergence[x], divergence[y], seed)
            out.add(cid, paper=PAPER, section=where, statement=text,
                    measure=f"divergence of {x} − divergence of {y} (nats/token, re-measured on every problem)",
                    estimate=est, ci=_ci(boots), p_value=bootstrap_p(boots, direction=1), direction=1,
                    null=Null.from_samples("bootstrap-resample", boots - est, "difference re-centred at 0 "
                                           "(bootstrap over validation and training problems)"),
                    note="the organism cannot memorise random offsets, so divergence needs few problems seen "
                         "often: fewer problems diverge more" if cid.startswith("more-data") else "")
    return out
