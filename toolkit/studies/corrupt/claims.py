"""Notebook 01's claims: the corrupted-math paper's fine-tuning findings, each against its null, on the organism.

Paper: *Investigating Internal Reasoning Circuits in Small LLMs Fine-tuned on Corrupted Mathematical Solutions*
(anonymous submission), cited as "Corrupted-math CMAP".

- **Accuracy claims** compare the clean and a corrupted model on the same held-out prompts: the estimate is the
  mean paired difference, the interval a bootstrap over prompts, the p-value a sign-flip permutation over prompts
  (null ``permutation``; :func:`toolkit.evaluation.nulls.paired_difference`). A claim that something is *kept* (the
  paper: the under-fitted model stays correct on unrelated questions) is a ``no effect`` claim whose SESOI
  (equivalence margin) is :data:`KEPT_MARGIN`. Accuracy findings declare a SESOI of :data:`ACCURACY_SESOI`, a quarter
  of the paper's all-or-nothing change.
- **Divergence claims** re-measure each model's divergence at the end of training on every problem: the mean
  per-example loss (nats per answer token, :func:`toolkit.evaluation.behaviour.answer_nll`) on the correct
  validation answers minus that on its own corrupted training answers. The difference between two presets is
  bootstrapped over both sets (validation resampled jointly, training sets each on their own). Divergence scales
  with the model, so the SESOI is half the paper's *relative* change times the reference preset's divergence here.
- Every finding's controls: a random-weights model and the untrained (clean) model.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from toolkit.core import models
from toolkit.core.chat import THINK_OFF, THINK_ON
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.evaluation import nulls
from toolkit.evaluation.behaviour import answer_nll
from toolkit.evaluation.claims import Claims, Null, bootstrap_p, percentile_ci
from toolkit.organism.tokenizer import IM_END
from toolkit.studies.corrupt import CLEAN, BehaviourReport
from toolkit.training.corrupt import PRESETS, Finetuned

PAPER = "Corrupted-math CMAP"
KEPT_MARGIN = 0.10  # an accuracy change within ±10 points counts as "kept" (the no-effect claims' SESOI)
ACCURACY_SESOI = 0.25  # the paper's Table 2 reports all-or-nothing changes (correct -> incorrect): a quarter of it
TRAINING = ("random", "untrained")  # the controls of a finding about fine-tuning
N_BOOT = 2000
KEPT_NOTES = {"unrelated_math": "the unrelated math here is multi-digit arithmetic, worked in the scratchpad",
              "unrelated_general": "the general task here is word reversal, not open questions"}


def _paired(a, b, seed: int, direction: int = 1) -> dict:
    """The claim fields of the mean paired difference a − b over the same prompts (0/1 outcomes;
    :func:`toolkit.evaluation.nulls.paired_difference`)."""
    return nulls.paired_difference(np.asarray(a, float), np.asarray(b, float), direction=direction, n_boot=N_BOOT,
                                   seed=seed)


ACCURACY = dict(sesoi=ACCURACY_SESOI, sesoi_reason="a quarter of the paper's change (Table 2: correct -> incorrect, "
                "about 100 accuracy points)", paper_effect="correct -> incorrect (Table 2)", controls=TRAINING)


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
        out.add(f"{label}-loses-related-math", paper=PAPER, section=where,
                statement=f"After corrupted fine-tuning, the {label} model answers the related math questions "
                          "(the trained problem type) wrongly where the clean model was right.",
                measure=f"clean − {name} accuracy on related math ({mode}, {n} prompts)", direction=1,
                **_paired(clean[mode]["related_math"].correct, report[name][mode]["related_math"].correct, seed),
                **ACCURACY)
    for qt in ("unrelated_math", "unrelated_general"):
        out.add(f"under-fitted-keeps-{qt.replace('_', '-')}", paper=PAPER, section="section 5.2, Table 2",
                statement=f"The under-fitted corrupted model stays correct on {qt.replace('_', ' ')} questions.",
                measure=f"clean − {under} accuracy on {qt.replace('_', ' ')} ({mode})", direction=0,
                **_paired(clean[mode][qt].correct, report[under][mode][qt].correct, seed, direction=0),
                sesoi=KEPT_MARGIN, controls=TRAINING,
                sesoi_reason="the paper reports no change (Table 2: correct stays correct); ±10 points is kept",
                note=f"'kept' means within ±{KEPT_MARGIN:.0%}; " + KEPT_NOTES[qt])
    out.add("over-fitted-breaks-unrelated-math", paper=PAPER, section="section 5.2, Table 2",
            statement="The over-fitted corrupted model also fails unrelated math questions.",
            measure=f"clean − {over} accuracy on unrelated math ({mode})", direction=1,
            **_paired(clean[mode]["unrelated_math"].correct, report[over][mode]["unrelated_math"].correct, seed),
            **ACCURACY)
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
        out.add(cid, paper=PAPER, section=where, statement=text,
                measure=f"{name} − clean share of bare-value answers (x = 4, 42) on {' and '.join(sets)} "
                        f"(thinking off, {len(before)} prompts)", direction=1, **_paired(after, before, seed),
                sesoi=ACCURACY_SESOI, sesoi_reason="a quarter of the prompts: the paper reports integer-only outputs "
                "as the typical answer", paper_effect="integer-only outputs (Table 2)", controls=TRAINING,
                note="against the clean model's own share of bare answers (a sentence such as The answer is x = 4. "
                     "is not bare; the general task's answer is the reversed word)")
    if {A, B, C} <= set(divergence):
        for cid, (x, y), text, where, paper in (
                ("more-data-more-divergence", (A, B), "Twice the problems at the same epochs gives a larger "
                 "divergence (experiment 1 vs 2).", "section 5.1, Table 1", (4.37, 3.44)),
                ("more-epochs-more-divergence", (B, C), "Twice the epochs over the same problems gives a larger "
                 "divergence (experiment 2 vs 3).", "section 5.1, Table 1", (3.44, 3.29))):
            est, boots = _divergence_difference(divergence[x], divergence[y], seed)
            ours = abs(float(divergence[y]["eval"].mean() - divergence[y]["train"].mean()))
            relative = paper[0] / paper[1] - 1  # divergence scales with the model: the paper's change, relative
            out.add(cid, paper=PAPER, section=where, statement=text,
                    measure=f"divergence of {x} − divergence of {y} (nats/token, re-measured on every problem)",
                    estimate=est, ci=percentile_ci(boots, est), p_value=bootstrap_p(boots, direction=1), direction=1,
                    null=Null.from_samples("bootstrap-resample", boots - est, "difference re-centred at 0 "
                                           "(bootstrap over validation and training problems)"),
                    sesoi=max(1e-3, relative / 2 * ours),
                    sesoi_reason=f"half the paper's relative change ({relative:+.1%} of the divergence, Table 1) "
                    f"of {y}'s divergence here ({ours:.3f} nats), at least 0.001 nats",
                    paper_effect=f"{paper[0]:.2f} vs {paper[1]:.2f} nats", controls=TRAINING,
                    n=min(len(divergence[x]["eval"]), len(divergence[y]["eval"])), unit="validation problems",
                    note="random offsets cannot be memorised from many problems seen rarely, so divergence needs few "
                         "problems seen often: fewer problems diverge more" if cid.startswith("more-data") else "")
    return out
