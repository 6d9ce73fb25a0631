"""Notebook 03's study: EAP-IG circuits of a post-trained model and its base model, and their emergent heads.

The steps, one function each (the notebook calls them in order and draws each result with :mod:`toolkit.views.eap`):

1. :func:`prepare` — load both models and make each model's own clean/corrupted pairs on the same held-out problems
   (``held_out(task, n_problems, seed=1000 + seed)``, :func:`toolkit.methods.eap.make_pairs`).
2. :func:`score_edges` — EAP-IG scores of every edge, per task and model.
3. :func:`compare_with_exact` — exact per-edge patching on a few pairs of the first task (post-trained model) as
   ground truth; correlations of EAP and EAP-IG (logit difference) and of EAP-IG with the chosen metric.
4. :func:`circuits_and_faithfulness` — faithfulness curves over circuit sizes, the top-n circuits, head importance.
5. :func:`emergent_heads` — heads in the post-trained model's circuit and not in the base model's, ranked.
6. :func:`attention_of_top_heads` — attention patterns of the top emergent heads on one clean pair.
7. :func:`ablation_step` / :func:`ablation_check` — zero-ablate the emergent heads during generation against random
   heads of the same number (:mod:`toolkit.evaluation.causal`), accuracy change per task with paired bootstrap CIs.

The claims are in :mod:`toolkit.studies.emergent.claims`; every step's result, as the notebook saves it, in
:class:`toolkit.studies.emergent.results.EmergentResults`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import torch

from toolkit.core.interventions import attention_patterns
from toolkit.core.models import LoadedModel, load
from toolkit.core.specs import derive_base_model, short_label
from toolkit.core.stats import correlation
from toolkit.core.units import Head, HeadComparison, as_heads, compare_heads
from toolkit.evaluation import causal, emergence, stability
from toolkit.methods import eap
from toolkit.organism.tasks import held_out

CURVE_SIZES = (1, 2, 5, 10, 20, 40, 80, 160)  # circuit sizes of the faithfulness curve (plus all edges and top_n)
SENSITIVITY_TOP_NS = (5, 10, 20, 40, 80)  # circuit sizes of the top-n sensitivity curve (plus top_n)
PAIRS_SEED_OFFSET = 1000  # problems for the pairs: held_out(task, n, seed=1000 + seed)
EVAL_SEED_OFFSET = 2000  # problems for the ablation check: held_out(task, n, seed=2000 + seed)


# --------------------------------------------------------------------------------------------------- 1. pairs
@dataclass
class Setup:
    """The two models (post-trained first), the graph and each model's pairs per task (``pairs[task][name]``; None
    where none could be made, the reason in ``no_pairs``: :func:`toolkit.studies.emergent.claims.preconditions`)."""

    models: dict[str, LoadedModel]
    graph: eap.Graph
    pairs: dict[str, dict[str, eap.Pairs | None]]
    n_problems: int
    no_pairs: dict[tuple[str, str], str] = field(default_factory=dict)  # (task, name) -> why it has no pairs (None)
    specs: dict[str, str] = field(default_factory=dict)  # name (the model's label) -> the spec it was loaded from

    @property
    def tasks(self) -> list[str]:
        return list(self.pairs)

    @property
    def first(self) -> str:
        """The first task: the one the exact comparison and the ablation check use."""
        return self.tasks[0]

    @property
    def names(self) -> list[str]:
        return list(self.models)

    @property
    def runs(self) -> list[tuple[str, str]]:
        """``(task, model name)`` for every task and model, tasks outermost."""
        return [(task, name) for task in self.tasks for name in self.models]

    @property
    def n_edges(self) -> int:
        """Edges of the full graph."""
        return int(self.graph.valid_mask().sum())


def prepare(model: str, base_model: str, tasks: Sequence[str], *, device: str = "auto", n_problems: int = 40,
            enable_thinking: bool = False, seed: int = 0, label: str = "") -> Setup:
    """Seed torch, load ``model`` and ``base_model``, and make each model's pairs on the same problems per task.

    An empty ``base_model`` is derived from ``model`` (:func:`toolkit.core.specs.derive_base_model`; refused, before
    anything loads, for a model that is not the organism). The models are named by their labels (``label``, else
    :func:`toolkit.core.specs.short_label` of the spec; the base's gets `` (base)`` when the two would be equal):
    the keys of every result and the names in every title and claim."""
    base_model = derive_base_model(model, base_model)
    names = label or short_label(model), short_label(base_model)
    names = names if names[0] != names[1] else (names[0], f"{names[1]} (base)")
    torch.manual_seed(seed)
    models = {names[0]: load(model, device), names[1]: load(base_model, device)}
    specs = dict(zip(names, (model, base_model), strict=True))
    model = names[0]
    graph = eap.Graph.from_bridge(models[model].bridge)
    pairs, failed = {}, {}
    for task in tasks:
        problems = held_out(task, n_problems, seed=PAIRS_SEED_OFFSET + seed)
        pairs[task] = {}
        for name, m in models.items():  # no pair at all is a failed precondition (claims.preconditions), not a crash
            try:
                pairs[task][name] = eap.make_pairs(m, problems, enable_thinking=enable_thinking, seed=seed,
                                                   unequal="drop")
            except eap.EAPError as e:
                pairs[task][name], failed[task, name] = None, str(e)
    return Setup(models, graph, pairs, n_problems, failed, specs)


# --------------------------------------------------------------------------------------------------- 2. scores
def score_edges(setup: Setup, *, ig_steps: int, metric: str, batch_size: int,
                per_example: bool = True) -> dict[str, dict[str, eap.Scores]]:
    """EAP-IG scores ``[task][model name]`` on each model's own pairs (with per-pair rows for the bootstraps)."""
    return {task: {name: eap.attribute(m, setup.pairs[task][name], method="eap-ig", steps=ig_steps, metric=metric,
                                       batch_size=batch_size, per_example=per_example)
                   for name, m in setup.models.items()} for task in setup.tasks}


# --------------------------------------------------------------------------------------------------- 3. exact
class ExactComparison(NamedTuple):
    """Exact per-edge scores (``exact[metric]``), the approximations compared with them and the correlations
    (``corr[label]``: :func:`toolkit.core.stats.correlation` over all edges)."""

    exact: dict[str, eap.Scores]
    approx: dict[str, eap.Scores]
    corr: dict[str, dict[str, float]]

    def to_results(self) -> dict:
        return {k: {"pearson": v["pearson_r"], "spearman": v["spearman_r"], "n": v["n"]} for k, v in self.corr.items()}


def compare_with_exact(setup: Setup, *, n_exact: int, ig_steps: int, metric: str,
                       batch_size: int) -> ExactComparison:
    """Exact scores on the first ``n_exact`` pairs of the first task (post-trained model) for the logit difference
    and ``metric``; EAP and EAP-IG with the logit difference, and EAP-IG with ``metric`` (plain EAP with KL is zero)."""
    model = setup.names[0]
    pairs = setup.pairs[setup.first][model]
    sub = pairs.subset(range(min(n_exact, len(pairs))))
    target = setup.models[model]
    exact = {mt: eap.attribute(target, sub, method="exact", metric=mt, batch_size=batch_size)
             for mt in dict.fromkeys(["logit_diff", metric])}
    approx = {"EAP": eap.attribute(target, sub, method="eap", metric="logit_diff", show_progress=False),
              "EAP-IG": eap.attribute(target, sub, method="eap-ig", steps=ig_steps, metric="logit_diff",
                                      show_progress=False)}
    corr = {f"{k} (logit diff)": correlation(exact["logit_diff"].flat(), v.flat()) for k, v in approx.items()}
    if metric != "logit_diff":
        ig_metric = eap.attribute(target, sub, method="eap-ig", steps=ig_steps, metric=metric, show_progress=False)
        corr[f"EAP-IG ({metric})"] = correlation(exact[metric].flat(), ig_metric.flat())
    return ExactComparison(exact, approx, corr)


# --------------------------------------------------------------------------------------------------- 4. circuits
class CircuitResults(NamedTuple):
    """Faithfulness curves (``curves["task: name"]``, :func:`toolkit.methods.eap.faithfulness_curve`), the top-n
    circuits and head importances (``[task][name]``), and each circuit's faithfulness (``faith["task: name"]``)."""

    sizes: list[int]
    curves: dict[str, dict]
    circuits: dict[str, dict[str, eap.Circuit]]
    importance: dict[str, dict[str, torch.Tensor]]
    faith: dict[str, float]
    top_n: int

    def curves_to_results(self) -> dict:
        return {k: {"requested": c["requested"], "n_edges": c["n_edges"], "recovered": c["recovered"]}
                for k, c in self.curves.items()}


def circuits_and_faithfulness(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], *, top_n: int,
                              metric: str, batch_size: int) -> CircuitResults:
    """Faithfulness at :data:`CURVE_SIZES`, all edges and ``top_n``; the ``top_n`` circuits and head importance."""
    sizes = sorted({*CURVE_SIZES, setup.n_edges, top_n})
    curves = {f"{task}: {name}": eap.faithfulness_curve(setup.models[name], setup.pairs[task][name],
                                                        scores[task][name], sizes, metric=metric,
                                                        batch_size=batch_size) for task, name in setup.runs}
    circuits = {task: {name: eap.select(scores[task][name], top_n=top_n) for name in setup.models}
                for task in setup.tasks}
    faith = {f"{task}: {name}": curves[f"{task}: {name}"]["recovered"][sizes.index(top_n)]
             for task, name in setup.runs}
    importance = {task: {name: eap.head_importance(scores[task][name], circuits[task][name])
                         for name in setup.models} for task in setup.tasks}
    return CircuitResults(sizes, curves, circuits, importance, faith, top_n)


PAPER_TAU = 0.1  # Thinking Sparks (appendix, circuit construction): "simplify each circuit with the threshold τ = 0.1"


def simplified_circuits(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], found: CircuitResults, *,
                        tau: float = PAPER_TAU, metric: str, batch_size: int) -> dict[str, dict]:
    """The paper's simplification beside each top-n circuit: of the top-``top_n`` edges keep those whose |score| is
    at least ``tau`` × the largest |score| of the model's graph on that task, dead nodes pruned. The paper states
    τ = 0.1 without its scale; this reading makes it relative, so it means the same for any metric and model.
    Per ``"task: model"``: edges, heads and recovered share of the top-n circuit and of its simplification."""
    if not 0 < tau <= 1:
        raise ValueError(f"tau must be in (0, 1], got {tau}")
    out = {}
    for task, name in setup.runs:
        s, top = scores[task][name], found.circuits[task][name]
        threshold = tau * float(s.values.abs().masked_fill(~s.valid, 0).max())
        simple = eap.select(s, top_n=found.top_n, threshold=threshold)
        got = eap.faithfulness(setup.models[name], setup.pairs[task][name], simple, metric=metric,
                               batch_size=batch_size)
        out[f"{task}: {name}"] = {
            "threshold": threshold, "top_n": {"edges": top.n_edges, "heads": sorted(top.heads),
                                              "recovered": found.faith[f"{task}: {name}"]},
            "tau": {"edges": simple.n_edges, "heads": sorted(simple.heads), "recovered": got["recovered"]}}
    return out


# --------------------------------------------------------------------------------------------------- 5. emergent
class Emergent(NamedTuple):
    """Per task: the head comparison of the post-trained (a) and base (b) circuits, and the emergent heads
    (``only_a``) ranked by the post-trained circuit's head importance."""

    comparisons: dict[str, HeadComparison]
    ranked: dict[str, list[Head]]

    @property
    def all(self) -> list[Head]:
        """Heads emergent in any task, sorted."""
        return sorted({h for hs in self.ranked.values() for h in hs})


def emergent_heads(setup: Setup, found: CircuitResults) -> Emergent:
    """Compare each task's post-trained circuit with the base model's; rank the emergent heads."""
    model, base = setup.names
    cmp = {task: compare_heads(found.circuits[task][model], found.circuits[task][base]) for task in setup.tasks}
    ranked = {task: eap.ranked_heads(cmp[task].only_a, found.importance[task][model]) for task in setup.tasks}
    return Emergent(cmp, ranked)


# --------------------------------------------------------------------------------------------------- 5b. stability
@dataclass
class Stability:
    """Bootstrap circuits ``boots[task][name]`` (:mod:`toolkit.evaluation.stability`), the post-trained vs base
    Jaccard of circuit heads per task (``overlap``), emergent heads against the base-vs-itself null per task
    (``tests``, :mod:`toolkit.evaluation.emergence`) and every run's top-n sensitivity (``sensitivity["t: name"]``)."""

    boots: dict[str, dict[str, stability.CircuitBootstrap]]
    overlap: dict[str, stability.Overlap]
    tests: dict[str, emergence.EmergentTest]
    sensitivity: dict[str, stability.Sensitivity]


def circuit_stability(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], *, top_n: int, n_boot: int = 200,
                      n_null: int = 100, n_inner: int = 50, seed: int = 0,
                      top_ns: Sequence[int] = SENSITIVITY_TOP_NS) -> Stability:
    """Bootstrap every circuit over its pairs (per-example scores, no recompute), test the post-trained model's heads
    against the base-vs-itself null and sweep ``top_n`` (independent seeds per model and stage)."""
    model, base = setup.names
    boots = {task: {name: stability.bootstrap_circuit(scores[task][name], top_n=top_n, n_boot=n_boot, seed=seed + i)
                    for i, name in enumerate(setup.names)} for task in setup.tasks}
    tests = {}
    for task in setup.tasks:
        null = emergence.base_null(scores[task][base], top_n=top_n, n_null=n_null, n_inner=n_inner, seed=seed + 10)
        reps = emergence.replicates(scores[task][model], top_n=top_n, n_outer=n_null, n_inner=n_inner,
                                    seed=seed + 20)
        tests[task] = emergence.emergent_test(boots[task][model], boots[task][base], null, post_replicates=reps)
    overlap = {task: stability.jaccard(boots[task][model], boots[task][base]) for task in setup.tasks}
    sizes = sorted({*top_ns, top_n})
    sensitivity = {f"{task}: {name}": stability.top_n_sensitivity(scores[task][name], sizes, n_boot=n_boot // 2,
                                                                  seed=seed) for task, name in setup.runs}
    return Stability(boots, overlap, tests, sensitivity)


def ig_convergence(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], *, fine_steps: int, metric: str,
                   batch_size: int, top_n: int) -> tuple[stability.Convergence, eap.Scores]:
    """The first task's post-trained scores with ``fine_steps`` IG steps against those already made
    (:func:`toolkit.evaluation.stability.ig_convergence`); also returns the fine scores (with per-pair rows)."""
    model, task = setup.names[0], setup.first
    fine = eap.attribute(setup.models[model], setup.pairs[task][model], method="eap-ig", steps=fine_steps,
                         metric=metric, batch_size=batch_size, per_example=True, show_progress=False)
    return stability.ig_convergence(scores[task][model], fine, top_n=top_n), fine


# --------------------------------------------------------------------------------------------------- 6. attention
class AttentionView(NamedTuple):
    """Attention of ``heads`` (``patterns``: ``[n_heads, T, T]``) on the first clean pair of ``task``."""

    task: str
    heads: list[Head]
    tokens: list[str]
    patterns: torch.Tensor


def attention_of_top_heads(setup: Setup, found: CircuitResults, emergent: Emergent, n: int = 3) -> AttentionView:
    """The first ``n`` emergent heads (tasks in order), each with the first task where it is emergent; with none,
    the post-trained circuit's ``n`` most important heads on the first task."""
    model = setup.names[0]
    shown = [(task, h) for task in setup.tasks for h in emergent.ranked[task]][:n]
    if not shown:
        first = setup.first
        shown = [(first, h) for h in eap.ranked_heads(found.circuits[first][model].heads,
                                                       found.importance[first][model])[:n]]
    view_task = shown[0][0]
    pairs, loaded = setup.pairs[view_task][model], setup.models[model]
    n_tok = int(pairs.lengths[0])
    ids = pairs.clean_ids[:1, :n_tok]
    tokens = [loaded.tokenizer.decode([t]) for t in ids[0].tolist()]
    heads = [h for _, h in shown]
    patterns = attention_patterns(loaded.bridge, ids.to(next(loaded.hf.parameters()).device),
                                  sorted({layer for layer, _ in heads}))
    stack = torch.stack([patterns[layer][0, h] for layer, h in heads])  # [n_heads, T, T]
    return AttentionView(view_task, heads, tokens, stack)


# --------------------------------------------------------------------------------------------------- 7. ablation
@dataclass
class AblationCheck:
    """Zero-ablation of ``heads`` (sorted) against ``random_heads`` draws: per task ``{"n", "baseline", "ablated",
    "random"`` (accuracy with bootstrap CIs), ``"change_ablated", "change_random", "ablated_minus_random"`` (paired
    bootstrap CIs over problems)``}``. ``chosen`` keeps the heads in the order they were chosen (by importance)."""

    heads: list[Head]
    random_heads: list[list[Head]]
    enable_thinking: bool
    tasks: dict[str, dict]
    chosen: list[Head]

    def to_results(self) -> dict:
        keys = ("baseline", "change_ablated") + (("change_random", "ablated_minus_random") if self.random_heads else ())
        return {t: {k: r[k] for k in keys} for t, r in self.tasks.items()}


def ablation_check(loaded: LoadedModel, heads, examples: Mapping[str, Sequence], *, n_random: int = 5,
                   enable_thinking: bool = False, max_new_tokens: int = 32, seed: int = 0, batch_size: int = 64,
                   show_progress: bool = True) -> AblationCheck:
    """Zero-ablate ``heads`` during greedy generation, and as a control ``n_random`` draws of as many random heads
    (none of ``heads``; draw r uses seed ``seed + r``); exact-match accuracy per task (``examples``:
    ``{task: [Example, ...]}``). Every condition and task generates with seed 0 (greedy, common random numbers)."""
    chosen = [tuple(h) for h in heads]
    cfg = loaded.bridge.cfg
    heads = sorted(as_heads(heads, "ablated heads", int(cfg.n_layers), int(cfg.n_heads)))
    if not heads:
        raise eap.EAPError("ablation_check needs at least one head to ablate")
    if not examples or not all(examples.values()):
        raise eap.EAPError("ablation_check needs a non-empty list of examples for every task")
    controls = causal.placebo_heads(heads, int(cfg.n_layers), int(cfg.n_heads), n_random, seed=seed)
    conds = [causal.Condition("baseline"), causal.Condition.on_heads("ablated", heads, 0.0)]
    conds += causal.placebo_conditions("random", controls, 0.0, names=[f"random{r}" for r in range(n_random)])
    prompts = {task: [e.prompt for e in exs] for task, exs in examples.items()}
    raw = causal.run(loaded.bridge, conds, lambda c: causal.behave_tasks(
        loaded, prompts, enable_thinking=enable_thinking, max_new_tokens=max_new_tokens, batch_size=batch_size,
        seed=0, seed_step=0), show_progress=show_progress, desc="ablation check")
    tasks = {}
    for task, exs in examples.items():
        score = {n: [float(x) for x in raw[n][task].correct([e.answer for e in exs])[:, 0]] for n in raw}
        rnd = causal.pool([score[f"random{r}"] for r in range(n_random)]) if n_random else score["baseline"]
        e = causal.paired_effects(score["ablated"], score["baseline"], rnd)
        tasks[task] = {"n": len(exs), "baseline": e["baseline"], "ablated": e["treated"], "random": e["placebo"],
                       "change_ablated": e["change_treated"], "change_random": e["change_placebo"],
                       "ablated_minus_random": e["treated_minus_placebo"]}
    return AblationCheck(heads, controls, enable_thinking, tasks, chosen)


def heads_to_ablate(setup: Setup, found: CircuitResults, emergent: Emergent, n_ablate: int,
                    stab: Stability | None = None) -> tuple[list[Head], str]:
    """The first task's top ``n_ablate`` emergent heads and the rule that chose them: ``"null"`` (beyond the
    base-vs-itself null, by inclusion gain; needs ``stab``), else ``"set difference"`` (in the post-trained circuit
    and not the base's, by importance), else ``"most important"`` (the post-trained circuit's top head)."""
    first, model = setup.first, setup.names[0]
    if stab is not None and stab.tests[first].heads:
        return list(stab.tests[first].heads[:n_ablate]), "null"
    if emergent.ranked[first]:
        return emergent.ranked[first][:n_ablate], "set difference"
    return eap.ranked_heads(found.circuits[first][model].heads, found.importance[first][model])[:1], "most important"


def eval_examples(tasks: Sequence[str], n: int, seed: int = 0, *, exclude_n: int = 0) -> dict[str, list]:
    """Held-out problems for the causal checks (``seed=2000 + seed``), never one of the first ``exclude_n`` problems
    that :func:`prepare` drew for the pairs (select on one set of problems, evaluate on another)."""
    def pair_prompts(task: str) -> set[str]:
        return {e.prompt for e in held_out(task, exclude_n, seed=PAIRS_SEED_OFFSET + seed)} if exclude_n else set()
    return {task: held_out(task, n, seed=EVAL_SEED_OFFSET + seed, exclude=pair_prompts(task)) for task in tasks}


def ablation_step(setup: Setup, heads: Sequence[Head], *, eval_tasks: Sequence[str], n_eval: int, n_random: int,
                  enable_thinking: bool, max_new_tokens: int, seed: int = 0) -> AblationCheck:
    """:func:`ablation_check` of ``heads`` on the post-trained model, ``n_eval`` held-out problems per task of
    ``eval_tasks`` (:func:`eval_examples`)."""
    examples = eval_examples(eval_tasks, n_eval, seed, exclude_n=setup.n_problems)
    return ablation_check(setup.models[setup.names[0]], heads, examples,
                          n_random=n_random, enable_thinking=enable_thinking, max_new_tokens=max_new_tokens, seed=seed)
