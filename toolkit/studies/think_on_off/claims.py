"""Notebook 05's findings against their nulls (after "Thinking Sparks", section 6, Table 3 and appendix A.3); the
study is :mod:`toolkit.studies.think_on_off`, the head sets with intervals :mod:`toolkit.studies.think_on_off.sets`.

- **Circuit size and overlap** (:class:`~toolkit.studies.think_on_off.sets.StableComparison`): heads in the
  think-off circuit minus heads in the think-on circuit, and the share of the think-on circuit's heads the think-off
  circuit holds too, on paired bootstrap resamples of each mode's pairs (circuits reselected).
- **Edges for 80% recovery** (:func:`~toolkit.studies.think_on_off.sets.edges_bootstrap`): think-off minus
  think-on, pairs resampled, circuits fixed; a resample that never reaches the level within the sweep counts as one
  edge more than the sweep's largest circuit (a lower bound for that mode).
- **Efficiency** (:func:`efficiency_bootstrap`): the mean recovered share of the KL metric over the circuit sizes of
  the sweep (the area under the faithfulness curve), think-on minus think-off, with the circuits fixed and the
  pairs resampled (one faithfulness curve per pair, so a resample needs no model call).
- **Condition effects** (:func:`condition_effect`): a paired difference over problems (pass@k or success@k) with its
  bootstrap interval and a sign-flip permutation null (:func:`toolkit.evaluation.nulls.paired_permutation`).
- **The off-only set against same-size placebo sets**: sampled (pass@1 change from think-off, every other set or a
  stated number of random ones, :func:`~toolkit.studies.think_on_off.sets.sampled_placebos`) and teacher-forced
  (every other set, :func:`toolkit.evaluation.placebo_sets.head_set_test`).

When the stable off-only set is empty nothing was intervened on: those claims are registered *unmeasured* (no
estimate, verdict ``inconclusive``, the note says why), never scored on a NaN.
:func:`register_claims` turns it all into the notebook's :class:`~toolkit.evaluation.claims.Claims`.

**Kinds and smallest effects** (:data:`DECLARED`): think-on beating think-off is a *check* (the study's
precondition: a gap for the think-off heads to compensate); every other claim is a *finding* with its SESOI (half
of the paper's Table 3 gain where it gives one, else a scale) and the ``random`` control (none is about training).
The placebo-set claims decide both ways from ranks (``p_opposite``).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from toolkit.core.chat import THINK_OFF, THINK_ON
from toolkit.core.models import LoadedModel
from toolkit.evaluation import nulls
from toolkit.evaluation import preconditions as pre
from toolkit.evaluation.claims import Claims, Null, bootstrap_p, percentile_ci
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods import eap
from toolkit.studies.think_on_off.sets import SampledPlacebos, StableComparison

PAPER = "Thinking Sparks"
SECTION, TABLE, COVERAGE = "section 6", "section 6 (Table 3)", "section 6 (Figure 5)"  # where in the paper
UNMEASURED = "not measured: "  # the note of a claim that has no data
_TABLE3 = "Qwen3-8B pass@1, Table 3"
# id -> (sesoi, why that size, the paper's effect): in each claim's units, in the paper's direction
DECLARED = {
    "think-on-beats-off": (0.06, "half of the paper's smallest think-on gain (MATH, +12.4 points)",
                           f"MATH 93.8 vs 81.4, AIME'24 80.0 vs 30.0 ({_TABLE3})"),
    "off-circuit-has-more-heads": (1.0, "one head, the smallest difference a count can show (the paper's 'much "
                                        "larger' set has no count)", ""),
    "on-heads-shared-with-off": (0.1, "a share of 0.6 is the least that 'most of its heads' means (no number in the "
                                      "paper)", ""),
    "off-circuit-needs-more-edges": (10.0, "the sweep's step, 10 edges: a smaller difference cannot be resolved", ""),
    "on-circuit-more-efficient": (0.05, "5 points of recovered KL share on a 0-1 scale (no number in the paper)", ""),
    "off-only-ablation-helps": (0.033, "half of the paper's AIME'24 gain from ablation (+6.6 points)",
                                f"AIME'24 30.0 → 36.6, MATH 81.4 → 83.6 ({_TABLE3})"),
    "off-only-scale-down-helps": (0.03, "half of the paper's GPQA gain from halving (+6.1 points)",
                                  f"GPQA 44.9 → 51.0, AIME'25 13.3 → 23.3 ({_TABLE3})"),
    "off-only-heads-specific": (0.05, "0.05 nats per token, about a 5% change in the reference answer's per-token "
                                      "probability (the paper has no teacher-forced measure)", ""),
    "ablation-ahead-early": (0.05, "5 points of success@2, a scale: Figure 5 gives no number in the text", ""),
    "ablation-behind-late": (0.05, "5 points of pass@n, a scale: Figure 5 gives no number in the text", ""),
}
DECLARED["off-only-ablation-specific"] = DECLARED["off-only-ablation-helps"]
DECLARED["off-only-scale-down-specific"] = DECLARED["off-only-scale-down-helps"]


def declared(id: str, *, n: int | None = None, unit: str = "") -> dict:
    """What claim ``id`` declares besides its numbers (:data:`DECLARED`): kind, SESOI with its reason, the paper's
    effect, controls, and the number of independent units ``n`` of ``unit``."""
    key = "think-on-beats-off" if id.startswith("think-on-beats-off") else id
    sesoi, reason, paper = DECLARED[key]
    kind = "check" if key == "think-on-beats-off" else "finding"
    return {"kind": kind, "sesoi": sesoi, "sesoi_reason": reason, "paper_effect": paper, "controls": ("random",),
            "n": n, "unit": unit}


def per_pair_faithfulness(loaded: LoadedModel, pairs, scores: eap.Scores, sizes: Sequence[int], *,
                          metric: str = "kl") -> dict[str, np.ndarray]:
    """``{"metric" [n_pairs, n_sizes], "clean" [n_pairs], "corrupted" [n_pairs], "n_edges" [n_sizes]}``: one
    faithfulness curve per pair (the circuits selected once, on all pairs; ``n_edges`` their sizes once pruned)."""
    rows = [eap.faithfulness_curve(loaded, pairs.subset([i]), scores, list(sizes), metric=metric, batch_size=1)
            for i in range(len(pairs))]
    return {"metric": np.array([r["metric"] for r in rows]), "clean": np.array([r["clean"] for r in rows]),
            "corrupted": np.array([r["corrupted"] for r in rows]), "n_edges": np.array(rows[0]["n_edges"])}


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
    """A paired difference over problems: ``{"estimate", "low", "high", "p", "null"}``
    (:func:`toolkit.evaluation.nulls.paired_difference`: bootstrap interval, Newcombe's where every problem changed
    alike, sign-flip p)."""
    f = nulls.paired_difference(treated, baseline, direction=direction, n_boot=n_boot, seed=seed)
    return {"estimate": f["estimate"], "low": f["ci"][0], "high": f["ci"][1], "p": f["p_value"], "null": f["null"]}


def _interval(draws: np.ndarray, estimate: float) -> tuple[float, float]:
    """The 95% percentile interval of the finite ``draws``, widened to hold ``estimate``."""
    return percentile_ci(draws, estimate)


def edges_difference(edges: Mapping[str, tuple[float, np.ndarray]], largest: int, on: str = THINK_ON,
                     off: str = THINK_OFF) -> tuple[float, np.ndarray]:
    """``(all pairs, draws)`` of think-off minus think-on edges for the level (:func:`~toolkit.studies
    .think_on_off_sets.edges_bootstrap`); a size beyond the sweep (``inf``) counts as ``largest + 1``."""
    def cap(x):
        return np.minimum(np.asarray(x, dtype=float), largest + 1)

    return float(cap(edges[off][0]) - cap(edges[on][0])), cap(edges[off][1]) - cap(edges[on][1])


def _unmeasured(claims: Claims, id: str, *, section: str, statement: str, measure: str, kind: str, reason: str):
    """A claim with no data: no estimate, verdict ``inconclusive`` (reason ``not-measured``), the reason in its null
    and note."""
    nan = float("nan")
    claims.add(id, paper=PAPER, section=section, statement=statement, measure=measure, estimate=nan, ci=(nan, nan),
               null=Null(kind, 0, {}, UNMEASURED + reason), direction=1, note=UNMEASURED + reason, **declared(id))


MIN_PAIR_SHARE = 0.25  # precondition: pairs from at least a quarter of the circuit problems, in each mode


def preconditions(pairs: Mapping[str, eap.Pairs], n_circuit: int, *, task: str = "") -> Claims:
    """Notebook 05's preconditions (:mod:`toolkit.evaluation.preconditions`): ``precondition:enough-pairs:<mode>``,
    each mode's circuit pairs (``ModeCircuits.pairs``) at least :data:`MIN_PAIR_SHARE` of the ``n_circuit``
    problems (and 2), so that both circuits and their resamples rest on enough problems."""
    claims = Claims("05_think_on_off")
    need = pre.share_threshold(n_circuit, MIN_PAIR_SHARE)
    for mode in (THINK_ON, THINK_OFF):
        got = pairs.get(mode)
        pre.at_least(claims, f"enough-pairs:{mode}", count=0 if got is None else len(got), threshold=need,
                     paper=PAPER, section=SECTION, unit="pairs",
                     statement=f"The circuit problems give enough clean/corrupted pairs in {mode} mode.",
                     measure=f"{mode} pairs of {n_circuit} {task or 'circuit'} problems")
    return claims


def register_claims(results: Mapping, group_matrix, *, stable: StableComparison,
                    edges: Mapping[str, tuple[float, np.ndarray]], largest: int, efficiency: tuple[float, np.ndarray],
                    enumeration: HeadSetTest | None, placebos: Mapping[str, SampledPlacebos] | None,
                    task: str = "related_math", positions: str = "answer", on: str = THINK_ON,
                    off: str = THINK_OFF, n_boot: int = 1000, seed: int = 0) -> Claims:
    """The notebook's claims. ``group_matrix(results, group, task, metric)`` gives per-problem pass@k or success@k
    ``[problems, n]``; ``edges`` and ``efficiency`` come from :mod:`toolkit.studies.think_on_off.sets` and
    :func:`efficiency_bootstrap` (``largest``: the sweep's largest circuit); ``enumeration`` and ``placebos`` are
    ``None`` when the stable off-only set is empty (those claims are then unmeasured)."""
    claims = Claims("05_think_on_off", independent_seeds=False)  # seeds draw overlapping problems from one pool
    sampled = {s.condition.group for s in results.values()}
    tasks_ = next(iter(results.values())).correct

    def at(group, metric, t=task):
        return group_matrix(results, group, t, metric)

    def paired(id, *, section, statement, measure, treated, baseline, note=""):
        e = condition_effect(treated, baseline, n_boot=n_boot, seed=seed)
        est = e["estimate"]
        claims.add(id, paper=PAPER, section=section, statement=statement, measure=measure, estimate=est,
                   ci=(min(e["low"], est), max(e["high"], est)), null=e["null"], p_value=e["p"], direction=1,
                   note=note, **declared(id, n=len(treated), unit="problems"))

    for t, label in dict.fromkeys([(task, "the circuit task"), ("unrelated_math", "addition and subtraction")]):
        if t in tasks_:
            paired(f"think-on-beats-off-{t.replace('_', '-')}", section=TABLE,
                   statement="Answering with the scratchpad (think-on) solves more problems than answering with "
                             "thinking switched off.",
                   measure=f"pass@1 think-on − think-off on {label}, paired over problems",
                   treated=at(on, "pass", t)[:, 0], baseline=at(off, "pass", t)[:, 0])
    where = {"answer": "both modes read at the final answer (think-on scratchpad teacher-forced)",
             "key_step": "think-on read at the scratchpad's key step, think-off at the answer",
             "divergence": "the modes read at different tokens (the first scratchpad line vs the answer)"}[positions]
    draws = stable.head_count_draws()
    pairs = {"n": min(stable.on.n_pairs, stable.off.n_pairs), "unit": "pairs (the fewer of the two modes)"}
    est = len(stable.off.full_heads) - len(stable.on.full_heads)
    claims.add("off-circuit-has-more-heads", paper=PAPER, section=SECTION,
               statement="With thinking off the model's circuit recruits a larger set of attention heads than with "
                         "thinking on.",
               measure="heads in the think-off circuit − heads in the think-on circuit (same number of edges)",
               estimate=est, ci=_interval(draws, est), **declared("off-circuit-has-more-heads", **pairs),
               null=Null.from_samples("bootstrap-resample", draws, "the difference on bootstrap resamples of each "
                                      "mode's pairs (circuits reselected)"),
               p_value=bootstrap_p(draws, direction=1), direction=1,
               note="the model has {} heads ({} layers × {}); ".format(stable.off.full_heads_grid.size,
                                                                 *stable.off.full_heads_grid.shape) + where)
    est, draws = stable.shared_share()
    claims.add("on-heads-shared-with-off", paper=PAPER, section=SECTION,
               statement="The think-on circuit has no set of its own reasoning heads: most of its heads are in the "
                         "think-off circuit too.",
               measure="share of the think-on circuit's heads also in the think-off circuit (reference 0.5)",
               estimate=est, ci=_interval(draws, est), reference=0.5, **declared("on-heads-shared-with-off", **pairs),
               null=Null.from_samples("bootstrap-resample", draws, "the share on paired bootstrap resamples of "
                                      "each mode's pairs (circuits reselected)"),
               p_value=bootstrap_p(draws, reference=0.5, direction=1), direction=1, note=where)
    est, draws = edges_difference(edges, largest, on, off)
    claims.add("off-circuit-needs-more-edges", paper=PAPER, section=SECTION,
               statement="Without thinking the model needs a larger, less efficient circuit for the same behaviour.",
               measure="edges for 80% recovery of the KL metric, think-off − think-on",
               estimate=est, ci=_interval(draws, est), **declared("off-circuit-needs-more-edges", **pairs),
               null=Null.from_samples("bootstrap-resample", draws, "the difference on bootstrap resamples of each "
                                      "mode's pairs (circuits fixed)"),
               p_value=bootstrap_p(draws, direction=1), direction=1,
               note=f"{where}; a mode that never reaches 80% in the sweep counts as {largest + 1} edges")
    est, draws = efficiency
    claims.add("on-circuit-more-efficient", paper=PAPER, section=SECTION,
               statement="The think-on circuit carries the behaviour with fewer components: it is the more "
                         "efficient pathway.",
               measure="mean recovered share of the KL metric over the sweep sizes, think-on − think-off",
               estimate=est, ci=_interval(draws, est), **declared("on-circuit-more-efficient", **pairs),
               null=Null.from_samples("bootstrap-resample", draws, "the difference on bootstrap resamples of each "
                                      "mode's pairs (circuits fixed)"),
               p_value=bootstrap_p(draws, direction=1), direction=1, note=where)
    _interventions(claims, at, paired, sampled, placebos, enumeration, task, off, n_boot, seed)
    return claims


def _interventions(claims, at, paired, sampled, placebos, enumeration, task, off, n_boot, seed):
    empty = "the stable off-only set is empty, so nothing was intervened on"
    for label, verb in (("ablation", "Zero-ablating"), ("scale-down", "Halving")):
        group = f"{off} + {label}"
        spec = dict(section=TABLE, statement=f"{verb} the heads that only the think-off circuit uses raises think-off "
                                             "accuracy.",
                    measure=f"pass@1 think-off + {label} − think-off on {task}, paired over problems")
        if group in sampled:
            paired(f"off-only-{label}-helps", **spec, treated=at(group, "pass")[:, 0],
                   baseline=at(off, "pass")[:, 0])
        else:
            _unmeasured(claims, f"off-only-{label}-helps", **spec, kind="permutation", reason=empty)
        spec = dict(section=TABLE, statement=f"The think-off gain from {verb.lower()} the off-only heads belongs to "
                                             "those heads: the same edit on other heads does not give it.",
                    measure=f"sampled pass@1 change on {task} (think-off + {label} − think-off), off-only set − "
                            "mean of the same-size placebo sets")
        if placebos and label in placebos:
            p = placebos[label]
            r = p.test("pass", 1, direction=1, n_boot=n_boot, seed=seed)
            id = f"off-only-{label}-specific"
            claims.add(id, paper=PAPER, **spec, **(r.claim_fields() | declared(id, n=r.n_problems, unit="problems")),
                       direction=1, note=f"rank {r.rank}/{r.n_sets + 1}; "
                       + ("every other set" if p.exhaustive else f"{r.n_sets} random sets (not every set)"))
        else:
            _unmeasured(claims, f"off-only-{label}-specific", **spec, kind="placebo-sets", reason=empty)
    spec = dict(section=TABLE, statement="The gain from ablating the off-only heads belongs to those heads: "
                                         "ablating other heads does not give it.",
                measure=f"teacher-forced change in mean log-probability per token of the think-off reference answer "
                        f"on {task}, off-only set ablated − mean over every other same-size set")
    if enumeration is not None:
        r = enumeration.tests[task]
        claims.add("off-only-heads-specific", paper=PAPER, **spec,
                   **(r.claim_fields() | declared("off-only-heads-specific", n=r.n_problems, unit="problems")),
                   direction=1, note=f"rank {r.rank}/{r.n_sets + 1}; a teacher-forced measure over every set, next "
                   "to the sampled one over fewer sets")
    else:
        _unmeasured(claims, "off-only-heads-specific", **spec, kind="placebo-sets", reason=empty)
    group = f"{off} + ablation"
    cover = (("ablation-ahead-early", "success", 2, "With the off-only heads ablated the model finds a right answer "
              "sooner: it is ahead of unedited think-off at success@k for k ≤ 2.", group, off),
             ("ablation-behind-late", "pass", None, "With many samples unedited think-off solves more problems than "
              "with the off-only heads ablated (pass@k at large k).", off, group))
    for id, metric, k, statement, treated, baseline in cover:
        spec = dict(section=COVERAGE, statement=statement,
                    measure=f"{metric}@{k or 'n'} {treated} − {baseline} on {task}, paired over problems")
        if group in sampled:
            a, b = at(treated, metric), at(baseline, metric)
            j = a.shape[1] - 1 if k is None else min(k, a.shape[1]) - 1
            paired(id, **spec, treated=a[:, j], baseline=b[:, j],
                   note="success@k and pass@k have the same expectation for independent samples")
        else:
            _unmeasured(claims, id, **spec, kind="permutation", reason=empty)
