"""Notebook 03's claims: "Thinking Sparks" findings on EAP-IG circuits and emergent heads, each against its null.

Paper: *Thinking Sparks!: Emergent Attention Heads in Reasoning Models During Post Training*
by Park, Jeong and Kang, cited as "Thinking Sparks".

- ``eap-ig-approximates-patching``: Pearson r of EAP-IG scores with exact single-edge patching over every edge;
  interval: bootstrap over edges; null ``permutation``: r with the exact scores shuffled across edges.
- ``ig-steps-converged``: Spearman ρ of the scores with ``ig_steps`` against 4× as many steps, interval: bootstrap
  over pairs (per-pair scores); null ``target``: ρ ≥ :data:`CONVERGED_RHO`.
- ``emergent-beyond-null:<task>``: the number of heads whose inclusion gain exceeds the base-vs-itself margin
  (:mod:`toolkit.evaluation.emergence`), its interval over paired replicates, null ``base-vs-itself`` (the count
  between two resamples of the base), p = share of null counts ≥ it.
- ``emergent-set-difference:<task>``: the old definition (in the post-trained circuit, not in the base's), against
  the count between two resampled base circuits.
- ``ablation-hurts:<task>``: the ablated heads' teacher-forced effect (change in mean log-probability per token of
  the reference answer) minus the mean over every other same-size head set; null ``placebo-sets``, p = rank.

The two method checks are ``check`` claims; the others are findings with a SESOI of :data:`COUNT_SESOI` heads (counts
can be called absent) or :data:`ABLATION_SESOI` nats per token, and the controls ``random`` and ``untrained``.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats as _stats

from toolkit.evaluation import preconditions as pre
from toolkit.evaluation.claims import Claims, Null, count_ci, empirical_p, percentile_ci
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.evaluation.stability import Convergence, counts_of
from toolkit.methods import eap
from toolkit.organism.probes import MATH_TASKS
from toolkit.studies.emergent import ExactComparison, Setup, Stability

PAPER = "Thinking Sparks"
CONVERGED_RHO = 0.9  # ig_steps converged: rank correlation with 4× the steps at least this
N_BOOT = 1000
COUNT_SESOI = 2  # heads: one more head than noise gives is within a resample's reach; two are a change of circuit
ABLATION_SESOI = 0.1  # nats per answer token (≈ 10% less probability per token) beyond the placebo sets
CONTROLS = ("random", "untrained")  # a re-initialised model, and the base model against itself (no post-training)
COUNT = dict(sesoi=COUNT_SESOI, sesoi_reason="two heads: the paper reports several emergent heads per task, and one "
             "head more than the base-vs-itself null is within resampling reach", controls=CONTROLS)
ABLATION_TASKS = tuple(sorted(MATH_TASKS))  # the math tasks (post-training improved them), their claims in this order


def _pearson(x: np.ndarray, y: np.ndarray) -> float:
    return float(np.corrcoef(x, y)[0, 1])


def exact_claim(claims: Claims, exact: ExactComparison, *, seed: int = 0) -> None:
    """``eap-ig-approximates-patching`` on the exact comparison's edges (logit difference, where EAP-IG and exact
    patching measure the same quantity)."""
    x = exact.exact["logit_diff"].flat().numpy()
    y = exact.approx["EAP-IG"].flat().numpy()
    rng = np.random.default_rng(seed)
    r = _pearson(x, y)
    idx = rng.integers(0, len(x), size=(N_BOOT, len(x)))
    boots = np.array([_pearson(x[i], y[i]) for i in idx])
    perm = np.array([_pearson(rng.permutation(x), y) for _ in range(N_BOOT)])
    claims.add("eap-ig-approximates-patching", paper=PAPER, section="section 2.1",
               statement="EAP-IG edge scores approximate the effect of patching each edge on its own.",
               measure=f"Pearson r of EAP-IG (logit difference) with exact single-edge patching over {len(x)} edges",
               estimate=r, ci=percentile_ci(boots, r), p_value=empirical_p(r, perm), kind="check",
               n=len(x), unit="edges",
               null=Null.from_samples("permutation", perm, "r with the exact scores shuffled across edges"),
               direction=+1, note=f"{exact.exact['logit_diff'].meta.get('n_examples', '?')} pairs of the first task")


def convergence_claim(claims: Claims, coarse: eap.Scores, fine: eap.Scores, conv: Convergence, *,
                      seed: int = 0) -> None:
    """``ig-steps-converged``: Spearman ρ of the two score sets, bootstrap over pairs."""
    a, b = coarse.per_example, fine.per_example
    n = len(a)
    counts = counts_of(np.random.default_rng(seed).integers(0, n, size=(N_BOOT // 5, n)), n)
    valid = coarse.valid
    boots = []
    for c in counts:
        w = (c / c.sum())[:, None, None]
        boots.append(_stats.spearmanr((a * w).sum(0)[valid], (b * w).sum(0)[valid])[0])
    claims.add("ig-steps-converged", paper=PAPER, section="section 3.1",
               statement="EAP-IG with few integration steps ranks the edges as with many (the paper used 100).",
               measure=f"Spearman ρ over {conv.n} edges, m = {conv.steps[0]} against m = {conv.steps[1]}",
               estimate=conv.spearman, ci=percentile_ci(boots, conv.spearman), direction=+1, kind="check", n=n,
               unit="pairs",
               reference=CONVERGED_RHO, null=Null.target(CONVERGED_RHO, "converged: ρ at least this"),
               note=f"top-{conv.top_n} circuits' heads agree at Jaccard {conv.jaccard_heads:.2f}")


def emergent_claims(claims: Claims, stab: Stability, model: str, base: str) -> None:
    """``emergent-beyond-null:<task>`` and ``emergent-set-difference:<task>`` for every task."""
    for task, t in stab.tests.items():
        claims.add(f"emergent-beyond-null:{task}", paper=PAPER, section="section 3.1",
                   statement="Post-training adds heads to the task's circuit that the base model's circuit lacks.",
                   measure=(f"{task}: heads of {model} whose inclusion frequency exceeds {base}'s by more than the "
                            f"base-vs-itself margin ({t.margin:.2f}); emergent: {[f'L{a}H{b}' for a, b in t.heads]}"),
                   estimate=t.count, ci=count_ci(t.count_samples, t.count), p_value=t.count_p,
                   null=t.count_null(), direction=+1, unit="pairs (resampled)", **COUNT,
                   note="each model's circuit is built on its own pairs (own answers), as in the paper")
        claims.add(f"emergent-set-difference:{task}", paper=PAPER, section="section 3.1",
                   statement="Heads in the post-trained circuit and not in the base's are more than noise would "
                             "give (the paper's definition, without a null).",
                   measure=(f"{task}: heads in {model}'s top-{stab.boots[task][model].top_n} circuit and not in "
                            f"{base}'s: {sorted(f'L{a}H{b}' for a, b in t.set_difference)}"),
                   estimate=len(t.set_difference), ci=count_ci(t.set_difference_samples, len(t.set_difference)),
                   p_value=t.set_difference_p, null=t.set_difference_null(), direction=+1,
                   unit="pairs (resampled)", **COUNT)


def ablation_claims(claims: Claims, test: HeadSetTest, rule: str, tasks: tuple[str, ...] = ABLATION_TASKS) -> None:
    """``ablation-hurts:<task>`` for each of ``tasks`` the test covers."""
    heads = [f"L{a}H{b}" for a, b in test.heads]
    for task in tasks:
        if task not in test.tests:
            continue
        r = test.tests[task]
        claims.add(f"ablation-hurts:{task}", paper=PAPER, section="sections 3.1 and 4.1",
                   statement="Zero-ablating the emergent heads hurts the trained reasoning task more than ablating "
                             "other heads does.",
                   measure=(f"{task}: change in mean log-probability per token of the reference answer "
                            f"({'think-on' if test.enable_thinking else 'think-off'}, teacher-forced, "
                            f"{r.n_problems} problems) with {heads} zeroed, minus the mean over all {r.n_sets} "
                            f"other sets of {len(heads)} heads; rank {r.rank}/{r.n_sets + 1}"),
                   direction=-1, **r.claim_fields(), sesoi=ABLATION_SESOI,
                   sesoi_reason="0.1 nats per answer token (about 10% less probability per token) beyond the "
                   "placebos: the paper's ablations cost whole answers", controls=CONTROLS,
                   note=f"heads chosen by the {rule} rule on the pairs' problems; evaluated on other problems")


MIN_PAIR_SHARE = 0.25  # precondition: pairs from at least a quarter of the problems offered, per task and model


def preconditions(setup: Setup) -> Claims:
    """Notebook 03's preconditions (:mod:`toolkit.evaluation.preconditions`): ``precondition:enough-pairs:<task>:
    <model>``, the pairs of each task and model (examples whose answers changed under corruption) at least
    :data:`MIN_PAIR_SHARE` of ``setup.n_problems`` (and 2): a model that does not solve the problems gives no pairs,
    and its circuit would rest on too few to resample."""
    claims = Claims("03_eap_ig")
    need = pre.share_threshold(setup.n_problems, MIN_PAIR_SHARE)
    for task, name in setup.runs:
        pairs = setup.pairs[task][name]
        pre.at_least(claims, f"enough-pairs:{task}:{name}", count=0 if pairs is None else len(pairs), threshold=need,
                     paper=PAPER, section="section 3 (method)", unit="pairs",
                     statement=f"{name} answers enough {task} problems, differently under corruption, to form pairs.",
                     measure=f"clean/corrupted pairs of {name} on {setup.n_problems} {task} problems",
                     note=setup.no_pairs.get((task, name), ""))
    return claims


def build(exact: ExactComparison, coarse: eap.Scores, fine: eap.Scores, conv: Convergence, stab: Stability,
          names: Sequence[str], placebo: HeadSetTest, rule: str, *, seed: int = 0) -> Claims:
    """Every claim of notebook 03, in order (``names``: the post-trained and the base model)."""
    claims = Claims("03_eap_ig")
    exact_claim(claims, exact, seed=seed)
    convergence_claim(claims, coarse, fine, conv, seed=seed)
    emergent_claims(claims, stab, names[0], names[1])
    ablation_claims(claims, placebo, rule)
    return claims
