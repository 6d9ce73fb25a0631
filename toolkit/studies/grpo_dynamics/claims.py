"""Notebook 04's nulls and claims: "Thinking Sparks" findings on SFT, distillation and GRPO from one start, each
against its null.

Paper: *Thinking Sparks!: Emergent Attention Heads in Reasoning Models During Post Training*
by Park, Jeong and Kang, cited as "Thinking Sparks".

Nulls computed here (definitions in :mod:`toolkit.evaluation.stability`, :mod:`toolkit.evaluation.emergence`,
:mod:`toolkit.evaluation.nulls`):

- :func:`checkpoint_tests` — for every checkpoint, on its own pairs and on the start model's (fixed) pairs, the
  emergent heads against the base-vs-itself null of the start model's scores on the same kind of inputs; the final
  checkpoints also get paired replicates (intervals on their counts).
- :func:`noise_null` — the start model with Gaussian weight noise matched by KL (on the circuit problems' prompts
  and reference answers) to the final GRPO checkpoint, ``n_noise`` noise draws: each draw's circuit on the fixed
  pairs and its set-difference count against the start model's circuit: "emergent heads after *any* change of that
  size".
- :func:`pruning_null` — "tried and pruned" heads (ever emergent, not at the end) in a sequence of resampled start
  model circuits as long as the run: what pure circuit noise gives.
- Correlations of the emergent count with the reward: interval by bootstrap over checkpoints, p by permutation of the
  checkpoint order, and the *effective n* ``n·(1 − ρx·ρy)/(1 + ρx·ρy)`` (ρ: lag-1 autocorrelations) — and one run.
- Between arms and against the start model: :mod:`toolkit.studies.grpo_dynamics.comparisons` (accuracy gains, overlap,
  persistence, layers, reweighting).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core import models
from toolkit.core.cache import cache_root, config_hash, model_fingerprint, read_entry, read_json
from toolkit.core.chat import chat_prompts
from toolkit.core.io import atomic_write_json
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.evaluation import emergence, stability, weight_noise
from toolkit.evaluation.claims import Claims, Null, empirical_p
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods import eap
from toolkit.methods.dynamics import Dynamics, head_dynamics
from toolkit.organism.tasks import completion
from toolkit.organism.tokenizer import IM_END
from toolkit.studies.grpo_dynamics import Analysis, RewardSeries, SnapshotSettings, circuit_heads, make_pairs
from toolkit.studies.grpo_dynamics.comparisons import (
    N_BOOT,
    accuracy_gain,
    layer_test,
    overlap_test,
    reweighting_test,
    survival_test,
)
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


def pruning_null(base: stability.CircuitBootstrap, length: int) -> np.ndarray:
    """Per sequence of ``length`` resampled start-model circuits: heads ever outside the all-pairs circuit minus
    those outside it in the sequence's last circuit ("tried and pruned" by noise alone)."""
    new = base.heads & ~base.full_heads_grid  # [B, L, H]
    seqs = new[:len(new) // length * length].reshape(-1, length, *new.shape[1:])
    return seqs.any(1).sum((1, 2)) - seqs[:, -1].sum((1, 2))


# ---- statistics ---------------------------------------------------------------------------------------------------

def _lag1(x: np.ndarray) -> float:
    x = np.asarray(x, float) - np.mean(x)
    return float((x[1:] * x[:-1]).sum() / (x * x).sum()) if (x * x).sum() > 0 else 0.0


def effective_n(x: Sequence[float], y: Sequence[float]) -> float:
    """``n·(1 − ρx·ρy)/(1 + ρx·ρy)`` with lag-1 autocorrelations ρ (checkpoints of one run are not independent)."""
    r = _lag1(x) * _lag1(y)
    return float(len(x) * (1 - r) / (1 + r))


def _r(x, y) -> float:
    return float(np.corrcoef(x, y)[0, 1]) if np.ptp(x) > 0 and np.ptp(y) > 0 else float("nan")


def count_reward(counts: Sequence[int], rewards: Sequence[float], *, seed: int = 0) -> dict:
    """Pearson r of counts and rewards, bootstrap interval over checkpoints, permutation p, permutation draws and
    the effective n."""
    x, y = np.asarray(counts, float), np.asarray(rewards, float)
    rng = np.random.default_rng(seed)
    boots = np.array([_r(x[i], y[i]) for i in rng.integers(0, len(x), size=(N_BOOT, len(x)))])
    perm = np.array([_r(rng.permutation(x), y) for _ in range(N_BOOT)])
    r = _r(x, y)
    return {"r": r, "ci": stability.interval(boots, 0.95), "perm": perm, "n": len(x), "n_eff": effective_n(x, y),
            "p": empirical_p(r, perm) if np.isfinite(r) else float("nan")}


def reward_halves(steps: Sequence[int], rewards: Sequence[float], *, seed: int = 0) -> dict:
    """Mean reward of the second half of the steps minus the first: bootstrap interval (steps resampled within
    each half), permutation p (step order shuffled) and the permutation draws."""
    y = np.asarray(rewards, float)[np.argsort(steps)]
    h = len(y) // 2
    a, b = y[:h], y[h:]
    rng = np.random.default_rng(seed)
    boots = b[rng.integers(0, len(b), (N_BOOT, len(b)))].mean(1) - a[rng.integers(0, len(a), (N_BOOT, len(a)))].mean(1)
    perm = np.array([(lambda z: z[h:].mean() - z[:h].mean())(rng.permutation(y)) for _ in range(N_BOOT)])
    d = float(b.mean() - a.mean())
    return {"estimate": d, "ci": stability.interval(boots, 0.95), "perm": perm, "p": empirical_p(d, perm)}


def scaling_tests(start: models.LoadedModel, heads: Sequence, examples: Mapping[str, Sequence], *,
                  factors: Sequence[float], n_per_task: int = 16, enable_thinking: bool = False,
                  max_sets: int = 500, seed: int = 0) -> dict[str, HeadSetTest]:
    """Per factor: :func:`toolkit.evaluation.placebo_sets.head_set_test` of ``heads`` scaled in the start model, on the
    first ``n_per_task`` problems of each task, effects ``|change|`` (direction +1: the heads move the reference
    answer's log-probability more than other sets of their size): every other set of as many heads, or 200 random
    ones when there are more than ``max_sets``."""
    from toolkit.evaluation.placebo_sets import head_set_test

    ex = {t: list(e)[:n_per_task] for t, e in examples.items()}
    return {f"{f:g}": head_set_test(start, heads, ex, factor=f, enable_thinking=enable_thinking, direction=+1,
                                    absolute=True, max_sets=max_sets, seed=seed) for f in factors}


# ---- claims -------------------------------------------------------------------------------------------------------

def _null_or_empty(kind: str, draws, what: str) -> Null:
    x = np.asarray(draws, float)
    x = x[np.isfinite(x)]
    return Null.from_samples(kind, x, what) if len(x) else Null(kind, 0, {}, what)


def _names(heads) -> list[str]:
    return sorted(f"L{a}H{b}" for a, b in heads)


def build(runs: Mapping[str, TrainingRun], analysis: Analysis, series: Mapping[str, RewardSeries],
          tests: CheckpointTests, noise: NoiseNull, scaling: Mapping[str, Mapping[str, HeadSetTest]] | None, *,
          n_layers: int, n_heads: int, seed: int = 0) -> Claims:
    """Every claim of notebook 04 (module docstring), in order. ``runs``: the arms (GRPO under ``"GRPO"``);
    ``scaling[arm][factor]``: :func:`scaling_tests` of each arm's emergent heads."""
    claims = Claims("04_grpo_dynamics")
    steps, rewards = runs["GRPO"].curve("accuracy")
    h = reward_halves(steps, rewards, seed=seed)
    claims.add("grpo-raises-reward", paper=PAPER, section="section 5 (Figure 2B)",
               statement="GRPO raises the accuracy reward over training.",
               measure=f"mean accuracy reward of GRPO steps {len(steps) // 2 + 1}–{len(steps)} minus steps "
                       f"1–{len(steps) // 2}", estimate=h["estimate"], ci=h["ci"], p_value=h["p"],
               null=_null_or_empty("permutation", h["perm"], "the same difference with the steps' order shuffled"),
               direction=+1)
    for label, run in runs.items():
        last = run.checkpoints[-1].step
        g = accuracy_gain(analysis.pooled_correct(label, 0), analysis.pooled_correct(label, last), seed=seed)
        tasks_ = ", ".join(analysis.correct[label])
        claims.add(f"{label.lower()}-raises-held-out-accuracy", paper=PAPER, section="sections 4–5",
                   statement=f"{label} post-training makes the model solve more held-out problems.",
                   measure=(f"greedy held-out accuracy ({tasks_}; {g['n']} problems never trained on, the circuits' "
                            f"mode) at step {last} minus the start model's"), estimate=g["estimate"], ci=g["ci"],
                   p_value=g["p"], direction=+1,
                   null=_null_or_empty("permutation", g["perm"],
                                       "the mean per-problem change with each change's sign flipped at random"))
    for inputs, dyns in (("own", analysis.dyns), ("fixed", analysis.fixed)):
        d = dyns["GRPO"]
        c = count_reward(d.n_emergent, [series["GRPO"].at_checkpoint[s] for s in d.steps], seed=seed)
        claims.add(f"grpo-count-tracks-reward:{inputs}", paper=PAPER, section="section 5 (Figure 2)",
                   statement="During GRPO the number of emergent heads rises and falls with the accuracy reward.",
                   measure=(f"Pearson r between each checkpoint's count of circuit heads absent from the start "
                            f"model's circuit ({inputs} pairs) and the mean accuracy reward since the previous "
                            f"checkpoint; {c['n']} checkpoints of one run, effective n ≈ {c['n_eff']:.1f}"),
                   estimate=c["r"], ci=c["ci"], p_value=c["p"] if np.isfinite(c["p"]) else None, direction=+1,
                   null=_null_or_empty("permutation", c["perm"], "r with the checkpoints' order shuffled"),
                   note="one training run: its checkpoints are not independent runs")
    for label in runs:
        section = "section 5" if label == "GRPO" else "section 4.2"
        for inputs in ("fixed", "own"):
            t = tests.final(inputs, label)
            claims.add(f"{label.lower()}-emergent-beyond-null:{inputs}", paper=PAPER, section=section,
                       statement=f"After {label} the circuit holds heads the start model's circuit lacks.",
                       measure=(f"heads whose inclusion frequency at the final {label} checkpoint exceeds the start "
                                f"model's by more than the base-vs-itself margin ({t.margin:.2f}; {inputs} pairs): "
                                f"{_names(t.heads)}"),
                       estimate=t.count, ci=t.count_ci(), p_value=t.count_p, null=t.count_null(), direction=+1)
            claims.add(f"{label.lower()}-set-difference-beyond-null:{inputs}", paper=PAPER, section=section,
                       statement=f"After {label} the circuit holds more new heads than noise alone would give (the "
                                 "paper's count: in the circuit, not in the start model's).",
                       measure=(f"heads in the final {label} circuit and not in the start model's ({inputs} pairs): "
                                f"{_names(t.set_difference)}"), estimate=len(t.set_difference),
                       ci=t.set_difference_ci(), p_value=t.set_difference_p, null=t.set_difference_null(),
                       direction=+1)
    g = tests.final("fixed", "GRPO")
    null_sd = tests.nulls["fixed"].set_difference
    null_diff = null_sd - np.random.default_rng(seed).permutation(null_sd)
    for label in (x for x in runs if x != "GRPO"):
        s_ = tests.final("fixed", label)
        diff = len(s_.set_difference) - len(g.set_difference)
        claims.add(f"{label.lower()}-adds-more-heads-than-grpo:fixed", paper=PAPER, section="sections 4.2 and 5",
                   statement=f"{label} adds more heads to the circuit than GRPO, whose final set is small.",
                   measure=(f"heads in the final {label} circuit and not in the start model's "
                            f"({_names(s_.set_difference)}) minus the same for GRPO ({_names(g.set_difference)}), "
                            "fixed pairs"),
                   estimate=diff, ci=stability.interval(s_.set_difference_samples - g.set_difference_samples, 0.95),
                   p_value=empirical_p(diff, null_diff), direction=+1,
                   null=Null.from_samples("base-vs-itself", null_diff, "difference of two base-vs-itself "
                                          "set-difference counts (resampled start-model circuits)"))
        o = overlap_test(tests.final_bootstrap("fixed", "GRPO"), tests.final_bootstrap("fixed", label),
                         tests.base["fixed"], seed=seed)
        claims.add(f"grpo-heads-differ-from-{label.lower()}:fixed", paper=PAPER, section="section 5",
                   statement=f"The heads GRPO adds barely overlap the heads {label} adds.",
                   measure=(f"Jaccard of the final GRPO and {label} circuits' heads outside the start model's circuit "
                            f"(fixed pairs; {o['sizes'][0]} and {o['sizes'][1]} heads of {o['pool']}); interval over "
                            "paired resamples"), estimate=o["estimate"], ci=o["ci"], p_value=o["p"], direction=-1,
                   reference=float(np.mean(o["null"])) if len(o["null"]) else 0.0,
                   null=_null_or_empty("placebo-sets", o["null"], "Jaccard of two random head sets of the same sizes "
                                       "outside the start model's circuit"))
        sv = survival_test(analysis.fixed[label], analysis.fixed["GRPO"], seed=seed)
        claims.add(f"{label.lower()}-heads-persist-grpo-heads-churn:fixed", paper=PAPER, section="sections 4.2 and 5",
                   statement=f"Heads {label} adds stay in the circuit; heads GRPO adds come and go.",
                   measure=(f"mean share of the later checkpoints at which an emergent head is still emergent, "
                            f"{label} ({sv['n'][0]} heads) minus GRPO ({sv['n'][1]} heads), fixed pairs"),
                   estimate=sv["estimate"], ci=sv["ci"], p_value=sv["p"], direction=+1,
                   null=_null_or_empty("permutation", sv["perm"], "the same difference with the heads' run labels "
                                       "shuffled"))
    for label in runs:
        d = analysis.fixed[label]
        lt = layer_test(d.ever_emergent, n_layers, n_heads, d.base, seed=seed)
        claims.add(f"{label.lower()}-heads-mid-to-late:fixed", paper=PAPER, section="section 4.2",
                   statement=f"The heads {label} adds sit in the middle-to-late layers.",
                   measure=(f"mean relative depth (layer / {n_layers - 1}) of the heads ever emergent during {label} "
                            f"(fixed pairs): {_names(d.ever_emergent)}"), estimate=lt["estimate"], ci=lt["ci"],
                   p_value=lt["p"], direction=+1, reference=lt["reference"],
                   null=_null_or_empty("placebo-sets", lt["null"], "mean relative depth of every other set of as "
                                       "many heads outside the start model's circuit"))
    for label in runs:
        rw = reweighting_test(tests.final("fixed", label), tests.final_bootstrap("fixed", label), tests.base["fixed"])
        claims.add(f"{label.lower()}-reweights-heads:fixed", paper=PAPER, section="sections 4–5",
                   statement=f"{label} changes how much each head carries the circuit (the continuous view of "
                             "emergent heads).",
                   measure=(f"mean over heads of |E(l, h)| = |I_post − I_pre| / (I_post + I_pre), head importance "
                            f"shares at the final {label} checkpoint against the start model, paired resamples of "
                            f"the fixed pairs (all pairs: {rw['all_pairs']:.3f})"),
                   estimate=rw["estimate"], ci=rw["ci"], p_value=rw["p"], direction=+1,
                   reference=float(np.mean(rw["null"])),
                   null=Null.from_samples("base-vs-itself", rw["null"], "the same mean between two resamples of the "
                                          "start model's pairs"))
    count = len(g.set_difference)
    claims.add("grpo-heads-not-any-change", paper=PAPER, section="section 5",
               statement="The heads GRPO adds come from training, not from any change of the weights of that size.",
               measure="heads in the final GRPO circuit and not in the start model's (fixed pairs), against the "
                       "start model with KL-matched Gaussian weight noise", estimate=count,
               ci=g.set_difference_ci(), p_value=empirical_p(count, noise.counts), null=noise.null(), direction=+1,
               reference=float(np.mean(noise.counts)))
    d = analysis.fixed["GRPO"]
    pruned = len(d.ever_emergent) - len(d.final_emergent)
    pnull = pruning_null(tests.base["fixed"], len(d.steps))
    claims.add("grpo-tries-and-prunes:fixed", paper=PAPER, section="section 5",
               statement="GRPO tries heads and prunes many of them again before the end of training.",
               measure=(f"heads ever emergent during GRPO but not at the final checkpoint (fixed pairs): "
                        f"{_names(d.ever_emergent - d.final_emergent)}"), estimate=pruned, ci=(pruned, pruned),
               p_value=empirical_p(pruned, pnull), direction=+1,
               null=Null.from_samples("base-vs-itself", pnull, f"the same count in sequences of {len(d.steps)} "
                                      "resampled start-model circuits"), note="one run: no interval")
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
                           estimate=r.difference, ci=r.ci, p_value=r.p_value, null=r.null(), direction=+1)
    return claims
