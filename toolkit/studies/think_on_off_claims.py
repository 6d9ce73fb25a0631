"""Notebook 05's findings against their nulls (after "Thinking Sparks", section 6 and Table 3); the study itself is
:mod:`toolkit.studies.think_on_off`.

- **Every same-size head set** (:func:`head_set_enumeration`): the off-only heads zero-ablated (or scaled) against
  *every* other set of as many heads (``C(16, 3) = 560`` sets on the organism, :func:`toolkit.evaluation.nulls
  .same_size_sets`), with a cheap teacher-forced measure: the probability of the reference answer given the
  think-off prompt, ``P(answer) = exp Σ log p(answer token)``, per problem. A set's effect on a problem is
  ``P_edited − P_unedited``; :func:`toolkit.evaluation.nulls.placebo_test` gives the off-only set's rank,
  permutation p and a two-level interval. All sets are run batched (:func:`toolkit.evaluation.causal
  .unit_set_scores`).
- **Circuit size** (:func:`head_count_bootstrap`): heads in the think-off circuit minus heads in the think-on circuit,
  on bootstrap resamples of each mode's pairs (:func:`toolkit.evaluation.stability.bootstrap_circuit`; needs
  per-example scores).
- **Efficiency** (:func:`efficiency_bootstrap`): the mean recovered share of the KL metric over the circuit sizes of
  the sweep (the area under the faithfulness curve), think-on minus think-off, with the circuits fixed and the
  pairs resampled (one faithfulness curve per pair, so a resample needs no model call).
- **Condition effects** (:func:`condition_effect`): a paired pass@1 difference over problems with its bootstrap
  interval and a sign-flip permutation null (:func:`toolkit.evaluation.causal.paired_permutation`).

:func:`register_claims` turns them into the notebook's :class:`~toolkit.evaluation.claims.Claims`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core import units
from toolkit.core.chat import chat_prompts
from toolkit.core.models import LoadedModel
from toolkit.evaluation import causal, nulls, stability
from toolkit.evaluation.claims import Claims, Null, bootstrap_p
from toolkit.methods import eap
from toolkit.organism import tasks

PAPER = "Thinking Sparks, section 6"
TABLE = "Thinking Sparks, section 6 (Table 3)"


def answer_sequences(tokenizer, problems: Sequence[tasks.Example]) -> list[tuple[list[int], list[int]]]:
    """``(think-off chat prompt ids, reference answer ids)`` per problem; the reference is the think-off answer as the
    organism gives it (a sentence for math, :func:`toolkit.organism.tasks.say`)."""
    prompts = chat_prompts(tokenizer, [p.prompt for p in problems], enable_thinking=False)
    return [(tokenizer(t, add_special_tokens=False)["input_ids"], tokenizer(tasks.say(p), add_special_tokens=False)
             ["input_ids"]) for t, p in zip(prompts, problems)]


@dataclass
class SetEnumeration:
    """The target head set and every other same-size set, edited by ``factor``: per task, the per-problem change in
    P(answer) of the target ``[n]`` and of each set ``[n_sets, n]``, and the :class:`~toolkit.evaluation.nulls
    .PlaceboTest` (direction ``direction``)."""

    target: tuple
    sets: list[tuple]
    factor: float
    target_effect: dict[str, np.ndarray]
    set_effects: dict[str, np.ndarray]
    tests: dict[str, nulls.PlaceboTest]

    def to_results(self) -> dict:
        return {"target": [list(h) for h in self.target], "n_sets": len(self.sets), "factor": self.factor,
                "tests": {t: {"target_mean": r.target_mean, "placebo_mean": r.placebo_mean, "rank": r.rank,
                              "p_value": r.p_value, "difference": r.difference, "ci": list(r.ci)}
                          for t, r in self.tests.items()}}

    def summary(self) -> str:
        return "\n".join(f"{task}: {r.summary()}" for task, r in self.tests.items())


def head_set_enumeration(loaded: LoadedModel, problems: Mapping[str, Sequence[tasks.Example]], target, *,
                         factor: float = 0.0, direction: int = 1, max_sets: int = 5000, n_random: int = 200,
                         sets_per_batch: int = 16, n_boot: int = 2000, seed: int = 0) -> SetEnumeration:
    """The target heads against every same-size head set (or ``n_random`` random ones when there are more than
    ``max_sets``), teacher-forced think-off P(answer) per problem (module docstring)."""
    cfg = loaded.bridge.cfg
    target = tuple(sorted(units.as_heads(target, "target heads", cfg.n_layers, cfg.n_heads)))
    if not target:
        raise ValueError("the target head set is empty: there is nothing to compare with the placebo sets")
    every = [(lay, h) for lay in range(cfg.n_layers) for h in range(cfg.n_heads)]
    sets = nulls.same_size_sets(every, len(target), skip=[target], max_sets=max_sets, n_random=n_random, seed=seed)
    rows = [seq for ps in problems.values() for seq in answer_sequences(loaded.tokenizer, ps)]
    pad = loaded.tokenizer.pad_token_id or 0
    logp = causal.unit_set_scores(loaded.bridge, [[]] + [list(target)] + [list(s) for s in sets],
                                  lambda r: causal.continuation_logprob(loaded.hf, rows, repeat=r, pad_id=pad),
                                  len(rows), kind="head", factor=factor, sets_per_batch=sets_per_batch)
    prob = np.exp(logp)
    change = prob[1:] - prob[0]
    t_eff, s_eff, tests, start = {}, {}, {}, 0
    for task, ps in problems.items():
        cols = slice(start, start + len(ps))
        start += len(ps)
        t_eff[task], s_eff[task] = change[0, cols], change[1:, cols]
        tests[task] = nulls.placebo_test(t_eff[task], s_eff[task], direction=direction, n_boot=n_boot, seed=seed,
                                         description=f"the same edit (x{factor:g}) on each of the other {len(sets)} "
                                                     f"sets of {len(target)} heads; mean change in P(answer)")
    return SetEnumeration(target, sets, factor, t_eff, s_eff, tests)


def head_count_bootstrap(scores_on: eap.Scores, scores_off: eap.Scores, top_n: int, *, n_boot: int = 200,
                         seed: int = 0) -> np.ndarray:
    """``[n_boot]``: heads in the think-off circuit minus heads in the think-on circuit, each mode's pairs resampled
    independently (both score sets need per-example scores)."""
    on = stability.bootstrap_circuit(scores_on, top_n=top_n, n_boot=n_boot, seed=seed)
    off = stability.bootstrap_circuit(scores_off, top_n=top_n, n_boot=n_boot, seed=seed + 1)
    return np.asarray(off.n_heads, dtype=float) - np.asarray(on.n_heads, dtype=float)


def per_pair_faithfulness(loaded: LoadedModel, pairs, scores: eap.Scores, sizes: Sequence[int], *,
                          metric: str = "kl") -> dict[str, np.ndarray]:
    """``{"metric" [n_pairs, n_sizes], "clean" [n_pairs], "corrupted" [n_pairs]}``: one faithfulness curve per pair
    (the circuits selected once, on all pairs)."""
    rows = [eap.faithfulness_curve(loaded, pairs.subset([i]), scores, list(sizes), metric=metric, batch_size=1)
            for i in range(len(pairs))]
    return {"metric": np.array([r["metric"] for r in rows]), "clean": np.array([r["clean"] for r in rows]),
            "corrupted": np.array([r["corrupted"] for r in rows])}


def _area(curve: Mapping[str, np.ndarray], idx: np.ndarray) -> float:
    m, c, k = curve["metric"][idx].mean(0), curve["clean"][idx].mean(), curve["corrupted"][idx].mean()
    return float(np.mean((m - k) / (c - k))) if abs(c - k) > 1e-12 else float("nan")


def efficiency_bootstrap(on: Mapping[str, np.ndarray], off: Mapping[str, np.ndarray], *, n_boot: int = 1000,
                         seed: int = 0) -> tuple[float, np.ndarray]:
    """``(estimate, draws)`` of the mean recovered share over the sweep, think-on minus think-off, from
    :func:`per_pair_faithfulness` of each mode; each mode's pairs are resampled independently."""
    rng = np.random.default_rng(seed)
    n_on, n_off = len(on["clean"]), len(off["clean"])
    est = _area(on, np.arange(n_on)) - _area(off, np.arange(n_off))
    draws = np.array([_area(on, rng.integers(0, n_on, n_on)) - _area(off, rng.integers(0, n_off, n_off))
                      for _ in range(n_boot)])
    return est, draws


def condition_effect(treated: np.ndarray, baseline: np.ndarray, *, direction: int = 1, n_boot: int = 1000,
                     seed: int = 0) -> dict:
    """A paired difference over problems: ``{"estimate", "low", "high", "p", "null"}`` (permutation null)."""
    ci = causal.effect(treated, baseline, n_boot=n_boot, seed=seed)
    p, draws = causal.paired_permutation(treated, baseline, direction=direction, seed=seed)
    return ci | {"p": p, "null": Null.from_samples("permutation", draws, "the same paired difference with each "
                                                   "problem's two conditions randomly swapped")}


def _interval(draws: np.ndarray) -> tuple[float, float]:
    ok = draws[np.isfinite(draws)]
    return float(np.quantile(ok, 0.025)), float(np.quantile(ok, 0.975))


def register_claims(results: Mapping, group_matrix, *, head_counts: tuple[float, np.ndarray],
                    efficiency: tuple[float, np.ndarray], enumeration: SetEnumeration, task: str = "related_math",
                    on: str = "think-on", off: str = "think-off", n_boot: int = 1000, seed: int = 0) -> Claims:
    """The notebook's claims. ``group_matrix(results, group, task)`` gives per-problem pass@k ``[problems, n]``
    (pass@1 is column 0); ``head_counts`` and ``efficiency`` are ``(estimate, bootstrap draws)``."""
    claims = Claims("05_think_on_off")

    def pass1(group, t):
        return group_matrix(results, group, t)[:, 0]

    for t, label in dict.fromkeys([(task, "the circuit task"), ("unrelated_math", "addition/subtraction")]):
        if t not in next(iter(results.values())).correct:
            continue
        e = condition_effect(pass1(on, t), pass1(off, t), n_boot=n_boot, seed=seed)
        claims.add(f"think-on-beats-off-{t.replace('_', '-')}", paper=TABLE,
                   statement="Answering with the scratchpad (think-on) solves more problems than answering with "
                             "thinking switched off.",
                   measure=f"pass@1 think-on − think-off on {label}, paired over problems",
                   estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1)
    est, draws = head_counts
    claims.add("off-circuit-has-more-heads", paper=PAPER,
               statement="With thinking off the model's circuit recruits a larger set of attention heads than with "
                         "thinking on.",
               measure="heads in the think-off circuit − heads in the think-on circuit (same number of edges)",
               estimate=est, ci=_interval(draws),
               null=Null.from_samples("bootstrap-resample", draws, "the difference on bootstrap resamples of each "
                                      "mode's pairs (circuits reselected)"),
               p_value=bootstrap_p(draws, direction=1), direction=1,
               note="the organism has 16 heads, and circuits of 40 edges hold most of them in both modes")
    est, draws = efficiency
    claims.add("on-circuit-more-efficient", paper=PAPER,
               statement="The think-on circuit carries the behaviour with fewer components: it is the more "
                         "efficient pathway.",
               measure="mean recovered share of the KL metric over the sweep sizes, think-on − think-off",
               estimate=est, ci=_interval(draws),
               null=Null.from_samples("bootstrap-resample", draws, "the difference on bootstrap resamples of each "
                                      "mode's pairs (circuits fixed)"),
               p_value=bootstrap_p(draws, direction=1), direction=1,
               note="the two modes' metrics are read at different tokens (the first scratchpad line vs the answer)")
    for label, verb in (("ablation", "Zero-ablating"), ("scale-down", "Halving")):
        e = condition_effect(pass1(f"{off} + {label}", task), pass1(off, task), n_boot=n_boot, seed=seed)
        claims.add(f"off-only-{label}-helps", paper=TABLE,
                   statement=f"{verb} the heads that only the think-off circuit uses raises think-off accuracy.",
                   measure=f"pass@1 think-off + {label} − think-off on {task}, paired over problems",
                   estimate=e["estimate"], ci=(e["low"], e["high"]), null=e["null"], p_value=e["p"], direction=1)
    r = enumeration.tests[task]
    claims.add("off-only-heads-specific", paper=TABLE,
               statement="The gain from ablating the off-only heads belongs to those heads: ablating other heads "
                         "does not give it.",
               measure=f"teacher-forced P(answer) change on {task} when the off-only heads are ablated, "
                       f"minus the mean over all {r.n_sets} other same-size head sets (rank {r.rank}/{r.n_sets + 1})",
               estimate=r.difference, ci=r.ci, null=r.null(), p_value=r.p_value, direction=1,
               note="a teacher-forced measure stands in for sampled accuracy across the placebo sets")
    return claims
