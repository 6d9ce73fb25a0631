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
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

import torch

from toolkit.core.interventions import attention_patterns
from toolkit.core.models import LoadedModel, load
from toolkit.core.stats import correlation
from toolkit.core.units import Head, HeadComparison, as_heads, compare_heads
from toolkit.evaluation import causal
from toolkit.methods import eap
from toolkit.organism.tasks import held_out

CURVE_SIZES = (1, 2, 5, 10, 20, 40, 80, 160)  # circuit sizes of the faithfulness curve (plus all edges and top_n)
PAIRS_SEED_OFFSET = 1000  # problems for the pairs: held_out(task, n, seed=1000 + seed)
EVAL_SEED_OFFSET = 2000  # problems for the ablation check: held_out(task, n, seed=2000 + seed)


# --------------------------------------------------------------------------------------------------- 1. pairs
@dataclass
class Setup:
    """The two models (post-trained first), the graph and each model's pairs per task (``pairs[task][name]``)."""

    models: dict[str, LoadedModel]
    graph: eap.Graph
    pairs: dict[str, dict[str, eap.Pairs]]
    n_problems: int

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
            enable_thinking: bool = False, seed: int = 0) -> Setup:
    """Seed torch, load ``model`` and ``base_model``, and make each model's pairs on the same problems per task."""
    torch.manual_seed(seed)
    models = {model: load(model, device), base_model: load(base_model, device)}
    graph = eap.Graph.from_bridge(models[model].bridge)
    pairs = {}
    for task in tasks:
        problems = held_out(task, n_problems, seed=PAIRS_SEED_OFFSET + seed)
        pairs[task] = {name: eap.make_pairs(m, problems, enable_thinking=enable_thinking, seed=seed, unequal="drop")
                       for name, m in models.items()}
    return Setup(models, graph, pairs, n_problems)


# --------------------------------------------------------------------------------------------------- 2. scores
def score_edges(setup: Setup, *, ig_steps: int, metric: str, batch_size: int) -> dict[str, dict[str, eap.Scores]]:
    """EAP-IG scores ``[task][model name]`` on each model's own pairs."""
    return {task: {name: eap.attribute(m, setup.pairs[task][name], method="eap-ig", steps=ig_steps, metric=metric,
                                       batch_size=batch_size) for name, m in setup.models.items()}
            for task in setup.tasks}


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
        keys = ("baseline", "change_ablated", "change_random", "ablated_minus_random")
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


def heads_to_ablate(setup: Setup, found: CircuitResults, emergent: Emergent, n_ablate: int) -> list[Head]:
    """The first task's top ``n_ablate`` emergent heads, or else its post-trained circuit's most important head."""
    first, model = setup.first, setup.names[0]
    return emergent.ranked[first][:n_ablate] or eap.ranked_heads(found.circuits[first][model].heads,
                                                                  found.importance[first][model])[:1]


def ablation_step(setup: Setup, found: CircuitResults, emergent: Emergent, *, n_ablate: int,
                  eval_tasks: Sequence[str], n_eval: int, n_random: int, enable_thinking: bool, max_new_tokens: int,
                  seed: int = 0) -> AblationCheck:
    """:func:`ablation_check` of :func:`heads_to_ablate` on the post-trained model, ``n_eval`` held-out problems per
    task of ``eval_tasks`` (``seed=2000 + seed``)."""
    heads = heads_to_ablate(setup, found, emergent, n_ablate)
    examples = {task: held_out(task, n_eval, seed=EVAL_SEED_OFFSET + seed) for task in eval_tasks}
    return ablation_check(setup.models[setup.names[0]], heads, examples, n_random=n_random,
                          enable_thinking=enable_thinking, max_new_tokens=max_new_tokens, seed=seed)
