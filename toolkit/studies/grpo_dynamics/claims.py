"""Notebook 04's nulls and claims: "Thinking Sparks" findings on SFT, distillation and GRPO from one start, vs nulls.

Paper: *Thinking Sparks!: Emergent Attention Heads in Reasoning Models During Post Training* (Park, Jeong, Kang).

Nulls computed here (definitions in :mod:`toolkit.evaluation.stability`, :mod:`toolkit.evaluation.emergence`,
:mod:`toolkit.evaluation.nulls`):

- :func:`checkpoint_tests` — for every checkpoint, on its own pairs and on the start model's (fixed) pairs, the
  emergent heads against the base-vs-itself null of the start model's scores on the same kind of inputs; the final
  checkpoints also get paired replicates (intervals on their counts).
- :func:`noise_null` — the start model with Gaussian weight noise matched by KL (on the circuit problems' prompts
  and reference answers) to the final GRPO checkpoint, ``n_noise`` noise draws: each draw's circuit on the fixed
  pairs and its set-difference count against the start model's circuit: "emergent heads after *any* change of that
  size".
- Between arms and against the start model, and one run's statistics: :mod:`toolkit.studies.grpo_dynamics
  .comparisons` (accuracy gains, overlap, persistence, layers, reweighting; the reward halves, the count–reward
  correlation inside a run with its effective n, the pruning null; head scaling against every same-size set).

:func:`build` registers the claims. The preconditions (GRPO raised its reward, each arm its held-out accuracy) are
*checks*; every other claim is a *finding* that declares its smallest effect of interest (:func:`finding`: half the
paper's effect where Table 1 gives one, else a scale), its controls (a re-initialised model and, for findings about
training, the untrained start) and its units. Units of replication: the count–reward correlation takes the run as
its unit (one r per run, :func:`~toolkit.studies.grpo_dynamics.comparisons.run_correlation`; with one GRPO run it
cannot decide); claims on a selected head set (its depth, the pruned heads) get intervals that redo the selection on
every resample of the fixed pairs (:func:`~toolkit.studies.grpo_dynamics.comparisons.selection_bootstrap`). The
depth claims follow the paper per arm (section 4.2, Figure 10): SFT's heads mid-to-late, distillation's early-to-mid,
GRPO's across the layers (a no-difference claim). Rank-based claims (placebo sets) give ``p_opposite`` too.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core import models
from toolkit.core.cache import cache_root, config_hash, model_fingerprint, read_entry, read_json
from toolkit.core.chat import chat_prompts
from toolkit.core.io import atomic_write_json
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.evaluation import emergence, stability, weight_noise
from toolkit.evaluation.claims import Claims, Null, empirical_p, percentile_ci
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods import eap
from toolkit.methods.dynamics import Dynamics, head_dynamics
from toolkit.organism.tasks import completion
from toolkit.organism.tokenizer import IM_END
from toolkit.studies.grpo_dynamics import Analysis, RewardSeries, SnapshotSettings, circuit_heads, make_pairs
from toolkit.studies.grpo_dynamics import comparisons as cmp
from toolkit.studies.grpo_dynamics.comparisons import scaling_tests  # noqa: F401 -- re-exported: the notebook calls it
from toolkit.training.runs import TrainingRun

PAPER = "Thinking Sparks"


# ---- nulls --------------------------------------------------------------------------------------------------------

@dataclass
class CheckpointTests:
    """``tests[inputs][label][step]``: :class:`~toolkit.evaluation.emergence.EmergentTest` of each checkpoint
    (inputs ``"own"``/``"fixed"``) against ``nulls[inputs]``, from the bootstraps ``boots[inputs][label][step]``;
    ``base[inputs]`` the start model's bootstrap."""

    tests: dict[str, dict[str, dict[int, emergence.EmergentTest]]]
    nulls: dict[str, emergence.BaseNull]
    base: dict[str, stability.CircuitBootstrap]
    boots: dict[str, dict[str, dict[int, stability.CircuitBootstrap]]]

    def final(self, inputs: str, label: str) -> emergence.EmergentTest:
        return self.tests[inputs][label][max(self.tests[inputs][label])]

    def final_bootstrap(self, inputs: str, label: str) -> stability.CircuitBootstrap:
        return self.boots[inputs][label][max(self.boots[inputs][label])]


def checkpoint_tests(analysis: Analysis, *, top_n: int, n_boot: int = 100, n_null: int = 50, n_inner: int = 30,
                     seed: int = 0) -> CheckpointTests:
    """:class:`CheckpointTests` of every run's checkpoints (see the module docstring)."""
    tests, null_by, base_by, boots = {}, {}, {}, {}
    for inputs, by_label in analysis.scores.items():
        base_scores = next(iter(by_label.values()))[0]
        null_by[inputs] = emergence.base_null(base_scores, top_n=top_n, n_null=n_null, n_inner=n_inner, seed=seed + 10)
        base_by[inputs] = stability.bootstrap_circuit(base_scores, top_n=top_n, n_boot=n_boot, seed=seed)
        tests[inputs], boots[inputs] = {}, {}
        for k, (label, by_step) in enumerate(by_label.items()):
            boots[inputs][label] = {step: stability.bootstrap_circuit(sc, top_n=top_n, n_boot=n_boot,
                                                                      seed=seed + 100 * (k + 1) + step)
                                    for step, sc in by_step.items() if step > 0}
            last = max(by_step)
            tests[inputs][label] = {step: emergence.emergent_test(
                bs, base_by[inputs], null_by[inputs], post_replicates=None if step != last else emergence.replicates(
                    by_step[step], top_n=top_n, n_outer=n_null, n_inner=n_inner, seed=seed + 20 + k))
                for step, bs in boots[inputs][label].items()}
    return CheckpointTests(tests, null_by, base_by, boots)


def stable_dynamics(tests: CheckpointTests, inputs: str = "fixed") -> dict[str, Dynamics]:
    """Per run, the head :class:`~toolkit.methods.dynamics.Dynamics` of its checkpoints' *stable* heads (inclusion
    frequency ≥ the bootstrap's threshold, 0.8) against the start model's stable heads, on ``inputs`` pairs: cohorts,
    survival and the heatmap without the heads that one draw of pairs happens to put in a circuit."""
    base = tests.base[inputs].stable_heads
    return {label: head_dynamics(base, {step: b.stable_heads for step, b in by.items()})
            for label, by in tests.boots[inputs].items()}


@dataclass
class NoiseNull:
    """Weight noise KL-matched to a trained model: ``sigma`` (× each weight's RMS), the ``target_kl`` and the
    matched ``kl``, and per noise draw the set-difference ``counts`` on the fixed pairs."""

    sigma: float
    target_kl: float
    kl: float
    counts: list[int]

    def null(self) -> Null:
        return Null.from_samples("weight-noise", self.counts, (
            f"heads in the circuit of the start model + Gaussian weight noise (σ = {self.sigma:.3g}·rms, KL "
            f"{self.kl:.3g} matched to {self.target_kl:.3g}) and not in the start model's, {len(self.counts)} draws"))


def reference_texts(tokenizer, examples: Sequence, enable_thinking: bool) -> list[str]:
    """Chat-formatted prompts followed by their reference answers: where KL to the start model is measured."""
    prompts = chat_prompts(tokenizer, [e.prompt for e in examples], enable_thinking)
    return [p + completion(e, enable_thinking) + IM_END for p, e in zip(prompts, examples, strict=True)]


def noise_null(start: str, trained: str, examples: Sequence, snapshot: SnapshotSettings, *, n_noise: int = 20,
               seed: int = 0, device: str = "auto") -> NoiseNull:
    """:class:`NoiseNull` of ``trained`` against its start model ``start`` (model specs), cached by both weights,
    the examples and the settings (``.cache/circuits/noise/``)."""
    key = config_hash({"start": model_fingerprint(start), "trained": model_fingerprint(trained), "n": n_noise,
                       "seed": seed, "examples": [e.prompt for e in examples], "settings": snapshot.__dict__})
    path = cache_root() / "circuits" / "noise" / f"{key}.json"
    cached = read_entry(path, lambda p: NoiseNull(**read_json(p)))
    if cached is not None:
        return cached
    with quiet_library_bars():
        base, post, noisy = (models.load(s, device=device) for s in (start, trained, start))
    texts = reference_texts(base.tokenizer, examples, snapshot.enable_thinking)
    ref = weight_noise.reference_batches(base.tokenizer, texts)
    target_kl = weight_noise.mean_kl(base.hf, post.hf, ref)
    if not target_kl > 0:  # the run left the model unchanged: the matched copy is the start model, adding no head
        atomic_write_json(path, (out := NoiseNull(0.0, float(target_kl), 0.0, [0] * n_noise)).__dict__)
        return out
    match = weight_noise.match_noise(base.hf, target_kl, ref, seed=seed, keep_model=False)
    pairs = make_pairs(base, examples, snapshot, f"fixed pairs of {start}")
    attribute = dict(method=snapshot.method, steps=snapshot.ig_steps, metric=snapshot.metric,
                     batch_size=snapshot.batch_size, show_progress=False)
    base_heads = circuit_heads(eap.attribute(base, pairs, **attribute), snapshot.top_n)
    counts = []
    for k in progress(range(n_noise), desc="weight-noise circuits"):
        weight_noise.apply_weight_noise(noisy.hf, base.hf, match.sigma, seed=seed * 1000 + k + 1)
        counts.append(len(circuit_heads(eap.attribute(noisy, pairs, **attribute), snapshot.top_n) - base_heads))
    out = NoiseNull(float(match.sigma), float(target_kl), float(match.kl), counts)
    atomic_write_json(path, out.__dict__)
    return out


# ---- claims -------------------------------------------------------------------------------------------------------

def _null_or_empty(kind: str, draws, what: str) -> Null:
    x = np.asarray(draws, float)
    x = x[np.isfinite(x)]
    return Null.from_samples(kind, x, what) if len(x) else Null(kind, 0, {}, what)


def _names(heads) -> list[str]:
    return sorted(f"L{a}H{b}" for a, b in heads)


def _ci(draws, estimate: float) -> tuple[float, float]:
    """The percentile interval of ``draws`` widened to hold ``estimate`` (NaNs without draws)."""
    return (math.nan, math.nan) if draws is None else percentile_ci(draws, estimate)


# ---- what each finding declares (kind, smallest effect of interest, controls) -------------------------------------

TRAINED = ("random", "untrained")  # findings about training: a re-initialised model and the untrained start
QWEN_HEADS = 336  # Qwen2.5-Math-1.5B, the paper's model: 28 layers × 12 heads
TABLE1 = {"SFT": 34, "Distill": 32, "GRPO": 19}  # emergent heads, Table 1 (distillation: DeepSeek-R1-Distill-1.5B)
DEPTH = {"SFT": (+1, "mid-to-late", "in the middle-to-late layers"),
         "Distill": (-1, "early-to-mid", "in the early-to-middle layers"),
         "GRPO": (0, "across-layers", "across the layers, neither early nor late")}  # section 4.2, Figure 10


def finding(sesoi: float, reason: str, paper_effect: str = "", controls=TRAINED, **units) -> dict:
    """The declared fields of a finding (``units``: ``n`` and ``unit``)."""
    return {"kind": "finding", "sesoi": sesoi, "sesoi_reason": reason, "paper_effect": paper_effect,
            "controls": controls, **units}


def head_sesoi(share: float, total: int, what: str) -> tuple[float, str]:
    """Half the paper's ``share`` of the heads, scaled to this model's ``total`` heads, at least one head."""
    size = max(1.0, float(np.ceil(share / 2 * total)))
    return size, (f"half the paper's {what} ({share:.1%} of its heads) of this model's {total} heads, at least one "
                  f"head: {size:g}")


def head_count(label: str, total: int, **units) -> dict:
    """A count of heads an arm adds: SESOI half the paper's share of emergent heads (:func:`head_sesoi`)."""
    k = TABLE1[label]
    return finding(*head_sesoi(k / QWEN_HEADS, total, "share of emergent heads"),
                   f"{k} emergent heads of {QWEN_HEADS} (Table 1)", **units)


def build(runs: Mapping[str, TrainingRun], analysis: Analysis, series: Mapping[str, RewardSeries],
          tests: CheckpointTests, noise: NoiseNull, scaling: Mapping[str, Mapping[str, HeadSetTest]] | None, *,
          n_layers: int, n_heads: int, seed: int = 0) -> Claims:
    """Every claim of notebook 04 (module docstring), in order. ``runs``: the arms (GRPO under ``"GRPO"``);
    ``scaling[arm][factor]``: :func:`scaling_tests` of each arm's emergent heads. The preconditions (GRPO raised
    its reward, each arm its accuracy) are checks; the rest are findings with the SESOI, controls and units
    :func:`finding` declares."""
    claims = Claims("04_grpo_dynamics")
    steps, rewards = runs["GRPO"].curve("accuracy")
    h = cmp.reward_halves(steps, rewards, seed=seed)
    claims.add("grpo-raises-reward", paper=PAPER, section="section 5 (Figure 2B)", kind="check",
               statement="GRPO raises the accuracy reward over training.",
               measure=f"mean accuracy reward of GRPO steps {len(steps) // 2 + 1}–{len(steps)} minus steps "
                       f"1–{len(steps) // 2}", estimate=h["estimate"], ci=_ci(h["boots"], h["estimate"]),
               p_value=h["p"], n=len(steps), unit="steps (one run)",
               null=_null_or_empty("permutation", h["perm"], "the same difference with the steps' order shuffled"),
               direction=+1)
    for label, run in runs.items():
        last = run.checkpoints[-1].step
        g = cmp.accuracy_gain(analysis.pooled_correct(label, 0), analysis.pooled_correct(label, last), seed=seed)
        tasks_ = ", ".join(analysis.correct[label])
        claims.add(f"{label.lower()}-raises-held-out-accuracy", paper=PAPER, section="sections 4–5", kind="check",
                   statement=f"{label} post-training makes the model solve more held-out problems.",
                   measure=(f"greedy held-out accuracy ({tasks_}; {g['n']} problems never trained on, the circuits' "
                            f"mode) at step {last} minus the start model's"), estimate=g["estimate"],
                   ci=_ci(g["boots"], g["estimate"]), p_value=g["p"], direction=+1, n=g["n"], unit="problems",
                   null=_null_or_empty("permutation", g["perm"],
                                       "the mean per-problem change with each change's sign flipped at random"))
    for inputs, dyns in (("own", analysis.dyns), ("fixed", analysis.fixed)):
        d = dyns["GRPO"]
        c = cmp.count_reward(d.n_emergent, [series["GRPO"].at_checkpoint[s] for s in d.steps], seed=seed)
        run_level = cmp.run_correlation([c["r"]])
        claims.add(f"grpo-count-tracks-reward:{inputs}", paper=PAPER, section="section 5 (Figure 2)",
                   statement="During GRPO the number of emergent heads rises and falls with the accuracy reward.",
                   measure=(f"Pearson r between each checkpoint's count of circuit heads absent from the start "
                            f"model's circuit ({inputs} pairs) and the mean accuracy reward since the previous "
                            f"checkpoint, one r per GRPO run, the run as the unit"), **run_level, direction=+1,
                   null=_null_or_empty("permutation", c["perm"], "r with the checkpoints' order shuffled (inside "
                                       "the run; the verdict uses the sign flip over runs)"),
                   **finding(0.3, "r = 0.3, a moderate correlation: the paper says 'strongly correlated' without a "
                                  "number (Figure 2)"),
                   note=(f"one GRPO run: it cannot decide (one-run sign flip, p ≥ 0.5); inside the run r over "
                         f"{c['n']} checkpoints has bootstrap interval [{c['ci'][0]:.2f}, {c['ci'][1]:.2f}] and "
                         f"permutation p {c['p']:.3g}, effective n ≈ {c['n_eff']:.1f} (autocorrelated checkpoints)"))
    for label in runs:
        section = "section 5" if label == "GRPO" else "section 4.2"
        for inputs in ("fixed", "own"):
            t = tests.final(inputs, label)
            pairs = {"n": tests.final_bootstrap(inputs, label).n_pairs, "unit": "pairs"}
            claims.add(f"{label.lower()}-emergent-beyond-null:{inputs}", paper=PAPER, section=section,
                       statement=f"After {label} the circuit holds heads the start model's circuit lacks.",
                       measure=(f"heads whose inclusion frequency at the final {label} checkpoint exceeds the start "
                                f"model's by more than the base-vs-itself margin ({t.margin:.2f}; {inputs} pairs): "
                                f"{_names(t.heads)}"), **head_count(label, n_layers * n_heads, **pairs),
                       estimate=t.count, ci=_ci(t.count_samples, t.count), p_value=t.count_p, null=t.count_null(),
                       direction=+1)
            claims.add(f"{label.lower()}-set-difference-beyond-null:{inputs}", paper=PAPER, section=section,
                       statement=f"After {label} the circuit holds more new heads than noise alone would give (the "
                                 "paper's count: in the circuit, not in the start model's).",
                       measure=(f"heads in the final {label} circuit and not in the start model's ({inputs} pairs): "
                                f"{_names(t.set_difference)}"), estimate=len(t.set_difference),
                       ci=_ci(t.set_difference_samples, len(t.set_difference)), p_value=t.set_difference_p,
                       null=t.set_difference_null(), direction=+1, **head_count(label, n_layers * n_heads, **pairs))
    g = tests.final("fixed", "GRPO")
    pairs = {"n": tests.base["fixed"].n_pairs, "unit": "pairs"}
    null_sd = tests.nulls["fixed"].set_difference
    null_diff = null_sd - np.random.default_rng(seed).permutation(null_sd)
    for label in (x for x in runs if x != "GRPO"):
        s_ = tests.final("fixed", label)
        diff = len(s_.set_difference) - len(g.set_difference)
        k = TABLE1[label] - TABLE1["GRPO"]
        claims.add(f"{label.lower()}-adds-more-heads-than-grpo:fixed", paper=PAPER, section="sections 4.2 and 5",
                   statement=f"{label} adds more heads to the circuit than GRPO, whose final set is small.",
                   measure=(f"heads in the final {label} circuit and not in the start model's "
                            f"({_names(s_.set_difference)}) minus the same for GRPO ({_names(g.set_difference)}), "
                            "fixed pairs"),
                   estimate=diff, ci=_ci(s_.set_difference_samples - g.set_difference_samples, diff),
                   p_value=empirical_p(diff, null_diff), direction=+1,
                   **finding(*head_sesoi(k / QWEN_HEADS, n_layers * n_heads, f"difference ({label} − GRPO)"),
                             f"{TABLE1[label]} vs 19 emergent heads (Table 1)", **pairs),
                   null=Null.from_samples("base-vs-itself", null_diff, "difference of two base-vs-itself "
                                          "set-difference counts (resampled start-model circuits)"))
        o = cmp.overlap_test(tests.final_bootstrap("fixed", "GRPO"), tests.final_bootstrap("fixed", label),
                         tests.base["fixed"], seed=seed)
        claims.add(f"grpo-heads-differ-from-{label.lower()}:fixed", paper=PAPER, section="section 5",
                   statement=f"The heads GRPO adds barely overlap the heads {label} adds.",
                   measure=(f"Jaccard of the final GRPO and {label} circuits' heads outside the start model's circuit "
                            f"(fixed pairs; {o['sizes'][0]} and {o['sizes'][1]} heads of {o['pool']}); interval over "
                            "paired resamples"), estimate=o["estimate"], ci=_ci(o["samples"], o["estimate"]),
                   p_value=o["p"], p_opposite=o["p_opposite"], direction=-1,
                   reference=float(np.mean(o["null"])) if len(o["null"]) else 0.0,
                   **finding(0.1, "a Jaccard 0.1 below that of random sets of the same sizes (the paper: 'does not "
                                  "much overlap', no number)", **pairs),
                   null=_null_or_empty("placebo-sets", o["null"], "Jaccard of two random head sets of the same sizes "
                                       "outside the start model's circuit"))
        sv = cmp.survival_test(analysis.fixed[label], analysis.fixed["GRPO"], seed=seed)
        claims.add(f"{label.lower()}-heads-persist-grpo-heads-churn:fixed", paper=PAPER, section="sections 4.2 and 5",
                   statement=f"Heads {label} adds stay in the circuit; heads GRPO adds come and go.",
                   measure=(f"mean share of the later checkpoints at which an emergent head is still emergent, "
                            f"{label} ({sv['n'][0]} heads) minus GRPO ({sv['n'][1]} heads), fixed pairs"),
                   estimate=sv["estimate"], ci=_ci(sv["boots"], sv["estimate"]), p_value=sv["p"], direction=+1,
                   **finding(0.2, "a fifth of the later checkpoints, a scale (the paper: SFT heads 'almost every' "
                                  "survive, GRPO's are pruned; no number)", n=sum(sv["n"]),
                             unit="emergent heads (one run per arm)"),
                   null=_null_or_empty("permutation", sv["perm"], "the same difference with the heads' run labels "
                                       "shuffled"))
    _selected_set_claims(claims, runs, analysis, tests, n_layers, n_heads, pairs, seed)
    for label in runs:
        rw = cmp.reweighting_test(tests.final("fixed", label), tests.final_bootstrap("fixed", label),
                                  tests.base["fixed"])
        claims.add(f"{label.lower()}-reweights-heads:fixed", paper=PAPER, section="sections 4–5",
                   statement=f"{label} changes how much each head carries the circuit (the continuous view of "
                             "emergent heads).",
                   measure=(f"mean over heads of |E(l, h)| = |I_post − I_pre| / (I_post + I_pre), head importance "
                            f"shares at the final {label} checkpoint against the start model, paired resamples of "
                            f"the fixed pairs (all pairs: {rw['all_pairs']:.3f})"),
                   estimate=rw["estimate"], ci=_ci(rw["draws"], rw["estimate"]), p_value=rw["p"], direction=+1,
                   reference=float(np.mean(rw["null"])),
                   **finding(0.05, "0.05 of mean |E| (range 0–1) above the base-vs-itself mean, a scale (the paper "
                                   "has no continuous score)", **pairs),
                   null=Null.from_samples("base-vs-itself", rw["null"], "the same mean between two resamples of the "
                                          "start model's pairs"))
    count = len(g.set_difference)
    claims.add("grpo-heads-not-any-change", paper=PAPER, section="section 5",
               statement="The heads GRPO adds come from training, not from any change of the weights of that size.",
               measure="heads in the final GRPO circuit and not in the start model's (fixed pairs), against the "
                       "start model with KL-matched Gaussian weight noise", estimate=count,
               ci=_ci(g.set_difference_samples, count), p_value=empirical_p(count, noise.counts), null=noise.null(),
               p_opposite=empirical_p(count, noise.counts, direction=-1),
               direction=+1, reference=float(np.mean(noise.counts)),
               **finding(1.0, "one head more than KL-matched weight noise adds (the paper has no noise control)",
                         **pairs))
    _scaling_claims(claims, scaling)
    return claims


def _selected_set_claims(claims, runs, analysis, tests, n_layers, n_heads, pairs, seed):
    """The claims on head sets a run selected (their depth, GRPO's pruned heads), with intervals that redo the
    selection on every resample of the fixed pairs (:func:`~toolkit.studies.grpo_dynamics.comparisons
    .selection_bootstrap`)."""
    base = tests.base["fixed"]
    selected = {label: cmp.selection_bootstrap(analysis.scores["fixed"][label], base) for label in runs}
    for label in runs:
        d = analysis.fixed[label]
        direction, where, words = DEPTH[label]
        lt = cmp.layer_test(d.ever_emergent, n_layers, n_heads, d.base, selection=selected[label]["ever"],
                        direction=direction, seed=seed)
        claims.add(f"{label.lower()}-heads-{where}:fixed", paper=PAPER, section="section 4.2 and Figure 10",
                   statement=f"The heads {label} adds sit {words}.",
                   measure=(f"mean relative depth (layer / {n_layers - 1}) of the heads ever emergent during {label} "
                            f"(fixed pairs): {_names(d.ever_emergent)}; interval: the selection redone on "
                            f"{base.n_boot} resamples of the pairs"), estimate=lt["estimate"], ci=lt["ci"],
                   p_value=lt["p"], p_opposite=lt["p_opposite"], direction=direction, reference=lt["reference"],
                   **finding(1 / 6, f"1/6 of the depth ({(n_layers - 1) / 6:.2g} layers of this model's "
                                       f"{n_layers}; the paper gives no depth)",
                             **pairs),
                   null=_null_or_empty("placebo-sets", lt["null"], "mean relative depth of every other set of as "
                                       "many heads outside the start model's circuit"))
    d = analysis.fixed["GRPO"]
    pruned = len(d.ever_emergent) - len(d.final_emergent)
    draws = (selected["GRPO"]["ever"].sum((1, 2)) - selected["GRPO"]["final"].sum((1, 2))).astype(float)
    pnull = cmp.pruning_null(base, len(d.steps))
    claims.add("grpo-tries-and-prunes:fixed", paper=PAPER, section="section 5",
               statement="GRPO tries heads and prunes many of them again before the end of training.",
               measure=(f"heads ever emergent during GRPO but not at the final checkpoint (fixed pairs): "
                        f"{_names(d.ever_emergent - d.final_emergent)}; interval: the selection redone on "
                        f"{base.n_boot} resamples of the pairs"), estimate=pruned, ci=_ci(draws, pruned),
               p_value=empirical_p(pruned, pnull), direction=+1,
               **finding(1.0, "one pruned head (the paper shows heads pruned, without a count)", **pairs),
               null=Null.from_samples("base-vs-itself", pnull, f"the same count in sequences of {len(d.steps)} "
                                      "resampled start-model circuits"), note="one run: pairs are the unit")


SCALING_EFFECT = {"GRPO": "GRPO heads ×1.3: MATH 56 → 60; ×0.5: AIME'24 13.3 → 3.3 (section 5)",
                  "SFT": "SFT heads ×1.3: MATH up, AIME'24 down (section 4.2, no numbers)"}


def _scaling_claims(claims, scaling):
    for label, by_factor in (scaling or {}).items():
        for factor, test in by_factor.items():
            for task, r in test.tests.items():
                claims.add(f"{label.lower()}-head-scaling:x{factor}:{task}", paper=PAPER, section="section 5",
                           statement=f"Scaling {label}'s emergent heads in the start model changes how it answers "
                                     "more than scaling other heads does.",
                           measure=(f"{task}: |change| of the mean log-probability per token of the reference "
                                    f"completion (teacher-forced, {r.n_problems} problems) with {_names(test.heads)} "
                                    f"×{factor} in the start model, minus the mean over {r.n_sets} other sets of "
                                    f"{len(test.heads)} heads; rank {r.rank}/{r.n_sets + 1}"),
                           **r.claim_fields(), direction=+1,
                           **finding(0.05, "0.05 nats per token, about a 5% change in the reference answer's "
                                           "per-token probability (the paper measures accuracy)",
                                     SCALING_EFFECT.get(label, ""), controls=("random",)))
