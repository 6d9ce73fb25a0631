"""Notebook 05, think on/off: circuits in both answer modes, the heads only the think-off circuit uses, and what
happens to sampled think-off answers when those heads are zero-ablated or scaled down (after "Thinking Sparks").

The study, step by step (the views are :mod:`toolkit.views.think_on_off`):

1. **Problems** (:func:`problem_sets`, :func:`study_problems`; :func:`prepare` also loads the model): disjoint ranges
   of the organism's held-out sets for circuit discovery (the pool's end) and evaluation (its start).
2. **Circuits in both modes** (:func:`mode_circuits`; :func:`find_circuits` as the notebook runs it): EAP-IG
   circuits (:mod:`toolkit.methods.eap`) of one hybrid model on the *same* problems, once with thinking on and once
   off, read at the same decision (the final answer; or think-on at its scratchpad's key step; or each mode's own
   divergence). :func:`head_sets` splits their heads (:class:`toolkit.core.units.HeadComparison`, a = think-on,
   b = think-off: ``only_b`` are the off-only heads); :func:`efficiency` re-splits at other circuit sizes and measures
   how much of the metric each mode's circuit recovers (:func:`toolkit.methods.eap.edges_for_recovery`); the stable
   sets and intervals over resampled pairs are in :mod:`toolkit.studies.think_on_off.sets`, gathered by
   :func:`toolkit.studies.think_on_off.results.resample`.
3. **Conditions** (:func:`standard_conditions`, :class:`toolkit.evaluation.causal.Condition`): think-on, think-off,
   think-off with the (stable) off-only heads zero-ablated or scaled ×0.5 or ×1.3, and the placebo the paper did not
   run: the same edits on as many *random* heads outside the off-only set (several draws, pooled per problem);
   :func:`baseline_conditions` when there is no off-only head (:func:`study_conditions` picks).
4. **Sampling** (:func:`sample_condition`, :func:`run_conditions`): ``n`` sampled completions per problem
   (temperature 0.6, top-p 0.95, top-k 20 by default; :func:`sampling_kwargs`), graded by exact match of the answer
   after ``</think>`` (:class:`toolkit.evaluation.behaviour.Behaviour`). Every condition uses the same seeds (task
   ``i``: ``seed + i``).
5. **Metrics** (:mod:`toolkit.studies.think_on_off.metrics`): per problem pass@k and success@k for k = 1…n; means
   over problems with bootstrap intervals over problems; paired differences against think-off (the paper's Table 3)
   and the random-head placebo.

Every step's result, as the notebook saves it: :class:`toolkit.studies.think_on_off.results.ThinkOnOffResults`.
See ``docs/methods.md`` ("Think on/off" section).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import torch

from toolkit.core import units
from toolkit.core.answers import AT_K_METRICS
from toolkit.core.chat import THINK_OFF, THINK_OFF_TOKENS, THINK_ON, THINK_ON_TOKENS, check_thinking_support
from toolkit.core.generation import SamplingConfig
from toolkit.core.models import LoadedModel, load
from toolkit.core.progress import progress
from toolkit.evaluation import causal
from toolkit.evaluation.causal import Condition
from toolkit.methods import eap
from toolkit.organism import tasks
from toolkit.organism.recipe import Recipe, eval_sets

# Question types of notebook 01 -> the organism's held-out evaluation sets.
TASK_TYPES = {"related_math": "linear", "unrelated_math": "arithmetic", "unrelated_general": "reversal"}
TASK_LABELS = {"related_math": "related math (linear equations)", "unrelated_math": "unrelated math (add/sub)",
               "unrelated_general": "general (word reversal)"}
HEAD_SET_CODES = {"none": 0, "on-only": 1, "off-only": 2, "shared": 3}
METRICS = AT_K_METRICS
DEFAULT_INTERVENTIONS = {"ablation": 0.0, "scale-down": 0.5, "scale-up": 1.3}

Head = units.Head


# ---------------------------------------------------------------------------------------------------- problems


def problem_sets(n_per_task: int, start: int = 0, task_types: Sequence[str] | None = None
                 ) -> dict[str, list[tasks.Example]]:
    """``{task type: problems}``: problems ``start … start + n_per_task - 1`` of the organism's held-out sets.

    The organism never trained on these prompts, so ``start + n_per_task`` may not exceed that pool
    (``Recipe().eval_per_task``). Use disjoint ranges for circuit discovery and evaluation.
    """
    task_types = list(TASK_TYPES) if task_types is None else list(task_types)
    unknown = [t for t in task_types if t not in TASK_TYPES]
    if unknown:
        raise ValueError(f"unknown task type {unknown[0]!r}; choose from {', '.join(TASK_TYPES)}")
    if not task_types:
        raise ValueError("problem_sets needs at least one task type")
    pool = Recipe().eval_per_task
    if n_per_task < 1 or start < 0 or start + n_per_task > pool:
        raise ValueError(f"problems {start}..{start + n_per_task - 1} are outside the held-out pool of {pool} "
                         f"problems per task (need n_per_task >= 1 and start + n_per_task <= {pool})")
    sets = eval_sets(Recipe())
    return {t: sets[TASK_TYPES[t]][start:start + n_per_task] for t in task_types}


class StudyProblems(NamedTuple):
    """Evaluation problems per task (the pool's start) and the circuit problems of one task (the pool's end)."""

    evaluation: dict[str, list[tasks.Example]]
    circuit: list[tasks.Example]
    overlap: frozenset[str]  # prompts in both (empty unless n_problems + n_circuit exceeds the pool)


def study_problems(n_problems: int, n_circuit: int, circuit_task: str) -> StudyProblems:
    """Evaluation problems ``0 … n_problems - 1`` of every task and circuit problems from the pool's end."""
    pool = Recipe().eval_per_task
    evaluation = problem_sets(n_problems)
    circuit = problem_sets(n_circuit, start=pool - n_circuit, task_types=[circuit_task])[circuit_task]
    overlap = {e.prompt for e in circuit} & {e.prompt for ps in evaluation.values() for e in ps}
    return StudyProblems(evaluation, circuit, frozenset(overlap))


class Prepared(NamedTuple):
    """The model under study and its problems (:class:`StudyProblems` without overlap)."""

    loaded: LoadedModel
    problems: dict[str, list[tasks.Example]]
    circuit_examples: list[tasks.Example]


def prepare(model: str, *, device: str = "auto", n_problems: int, n_circuit: int, circuit_task: str,
            seed: int = 0) -> Prepared:
    """Seed torch, load ``model`` and draw the problems (:func:`study_problems`); a ``ValueError`` when the model
    has no think mode (:func:`toolkit.core.chat.check_thinking_support`) or the circuit and evaluation problems
    overlap."""
    torch.manual_seed(seed)
    loaded = load(model, device=device)
    check_thinking_support(loaded.tokenizer, "notebook 05 (think on/off)")
    problems, circuit, overlap = study_problems(n_problems, n_circuit, circuit_task)
    if overlap:
        raise ValueError(f"{len(overlap)} circuit problems are also evaluation problems: keep n_problems + n_circuit "
                         f"(now {n_problems} + {n_circuit}) within the held-out pool of {Recipe().eval_per_task}")
    return Prepared(loaded, problems, circuit)


# ---------------------------------------------------------------------------------------------------- head sets


def head_sets(on_heads, off_heads, n_layers: int | None = None, n_heads: int | None = None) -> units.HeadComparison:
    """The think-on (a) and think-off (b) circuits' heads: ``only_a`` on-only, ``only_b`` off-only, ``shared``.
    With ``n_layers``/``n_heads``, out-of-range heads raise :class:`~toolkit.core.interventions.SiteError`."""
    return units.HeadComparison(units.as_heads(on_heads, "think-on circuit", n_layers, n_heads),
                                units.as_heads(off_heads, "think-off circuit", n_layers, n_heads))


def set_counts(sets: units.HeadComparison) -> dict[str, int]:
    """Sizes of the two circuits (in heads) and of the three parts (the saved ``head_set_sizes``)."""
    return {"on_circuit": len(sets.a), "off_circuit": len(sets.b), "on_only": len(sets.only_a),
            "off_only": len(sets.only_b), "shared": len(sets.shared)}


def sets_to_dict(sets: units.HeadComparison) -> dict[str, list[list[int]]]:
    """JSON-ready sorted ``[layer, head]`` lists of every set (the saved ``head_sets``)."""
    parts = {"on": sets.a, "off": sets.b, "on_only": sets.only_a, "off_only": sets.only_b, "shared": sets.shared}
    return {name: [list(x) for x in sorted(s)] for name, s in parts.items()}


def head_set_grid(sets: units.HeadComparison, n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers, n_heads]`` codes (:data:`HEAD_SET_CODES`): 0 neither, 1 on-only, 2 off-only, 3 shared."""
    return units.head_grid({1: sets.only_a, 2: sets.only_b, 3: sets.shared}, n_layers, n_heads)


# ---------------------------------------------------------------------------------------------------- circuits


class Efficiency(NamedTuple):
    """Head-set sizes and faithfulness of both modes' circuits across circuit sizes."""

    sweep: list[dict]  # per top_n: edges and head-set sizes
    faithfulness: dict  # {mode: eap.faithfulness_curve(...)}
    edges_for_level: dict  # {mode: smallest size recovering >= level, or None}


@dataclass
class ModeCircuits:
    """EAP-IG circuits of one model in both answer modes, on the same problems. ``pairs``, ``scores``,
    ``circuits`` and ``importance`` (``eap.head_importance``) are keyed by the modes,
    ``"think_on"`` / ``"think_off"`` (:mod:`toolkit.core.chat`)."""

    pairs: dict
    scores: dict
    circuits: dict
    importance: dict
    sets: units.HeadComparison
    top_n: int

    def sweep(self, top_ns: Iterable[int]) -> list[dict]:
        """Head-set sizes (:func:`set_counts`) with both circuits re-selected at each ``top_n``."""
        rows = []
        for n in top_ns:
            on, off = (eap.select(self.scores[m], top_n=int(n), absolute=True, method="top", prune=True)
                       for m in (THINK_ON, THINK_OFF))
            rows.append({"top_n": int(n), "on_edges": on.n_edges, "off_edges": off.n_edges,
                         **set_counts(head_sets(on.heads, off.heads))})
        return rows

    def faithfulness(self, loaded: LoadedModel, n_edges: Sequence[int], metric: str = "kl",
                     batch_size: int = 8) -> dict:
        """``{mode: eap.faithfulness_curve(...)}`` for each circuit size in ``n_edges``."""
        return {m: eap.faithfulness_curve(loaded, self.pairs[m], self.scores[m], list(n_edges), metric=metric,
                                          batch_size=batch_size) for m in (THINK_ON, THINK_OFF)}


POSITIONS = ("answer", "key_step", "divergence")  # where each mode's pairs are read (mode_circuits)


def mode_circuits(loaded: LoadedModel, examples: Sequence[tasks.Example], top_n: int = 40, steps: int = 5,
                  metric: str = "kl", batch_size: int = 8, max_new_tokens_think: int = THINK_ON_TOKENS,
                  max_new_tokens_off: int = THINK_OFF_TOKENS, seed: int = 0, show_progress: bool = False,
                  per_example: bool = False, positions: str = "answer") -> ModeCircuits:
    """EAP-IG circuits with thinking on and off on the same problems.

    ``positions="divergence"``: each mode's pairs follow ``eap.make_pairs`` with ``corruption="problem"``: the clean
    input is the chat prompt plus the model's own greedy response *in that mode* up to the first token where its
    response to a minimally changed problem differs (thinking on, usually a digit the scratchpad copies from the
    problem; thinking off, the answer). ``positions="answer"``: ``eap.answer_pairs``, both modes read at the final
    answer's first differing token, the think-on scratchpad teacher-forced up to ``</think>``: the same decision in
    both modes (the default). ``positions="key_step"``: think-on pairs read at the scratchpad's own key step, the
    result it writes on its last line (``eap.answer_pairs(..., at="key_step")``), think-off pairs at the answer.
    Both circuits keep the ``top_n`` edges by |score|, dead nodes pruned. ``per_example`` keeps each
    pair's scores (for bootstraps over pairs, :mod:`toolkit.evaluation.stability`).
    """
    if positions not in POSITIONS:
        raise ValueError(f"positions must be one of {', '.join(POSITIONS)}, got {positions!r}")
    pairs, scores, circuits, importance = {}, {}, {}, {}
    for mode, think, max_new in ((THINK_ON, True, max_new_tokens_think), (THINK_OFF, False, max_new_tokens_off)):
        at = "key_step" if positions == "key_step" and think else "answer"
        pairs[mode] = (eap.answer_pairs(loaded, examples, enable_thinking=think, seed=seed, at=at)
                       if positions != "divergence" else
                       eap.make_pairs(loaded, examples, enable_thinking=think, corruption="problem",
                                      max_new_tokens=max_new, seed=seed, unequal="drop"))
        scores[mode] = eap.attribute(loaded, pairs[mode], method="eap-ig", steps=steps, metric=metric,
                                     batch_size=batch_size, show_progress=show_progress, per_example=per_example)
        circuits[mode] = eap.select(scores[mode], top_n=top_n, absolute=True, method="top", prune=True)
        importance[mode] = eap.head_importance(scores[mode], circuits[mode])
    cfg = loaded.bridge.cfg
    sets = head_sets(circuits[THINK_ON].heads, circuits[THINK_OFF].heads, cfg.n_layers, cfg.n_heads)
    return ModeCircuits(pairs, scores, circuits, importance, sets, top_n)


def find_circuits(loaded: LoadedModel, examples: Sequence[tasks.Example], *, circuit_task: str, top_n: int,
                  ig_steps: int, positions: str, max_new_tokens_think: int = THINK_ON_TOKENS,
                  seed: int = 0) -> ModeCircuits:
    """Notebook 05's circuits: :func:`mode_circuits` with the KL metric and per-pair scores; when no pair can be
    made, a ``ValueError`` naming the settings that decide the pairs (``examples`` are ``circuit_task``'s)."""
    try:
        return mode_circuits(loaded, examples, top_n=top_n, steps=ig_steps, metric="kl",
                             max_new_tokens_think=max_new_tokens_think, max_new_tokens_off=THINK_OFF_TOKENS,
                             seed=seed, per_example=True, positions=positions)
    except eap.EAPError as e:
        raise ValueError(f"no clean/corrupted pairs for the circuits ({e}); raise `n_circuit` (now {len(examples)}), "
                         f"or use `circuit_task` related_math or unrelated_math (now {circuit_task!r}) with "
                         f"`positions` {positions!r}, or `positions = 'divergence'`") from None


def efficiency(circuits: ModeCircuits, loaded: LoadedModel, top_ns: Sequence[int], level: float = 0.8
               ) -> Efficiency:
    """The sweep of head sets over ``top_ns``, both modes' faithfulness curves, and the smallest size recovering
    ``level`` of the metric in each mode."""
    sweep = circuits.sweep(top_ns)
    faith = circuits.faithfulness(loaded, top_ns)
    return Efficiency(sweep, faith, {mode: eap.edges_for_recovery(c, level) for mode, c in faith.items()})


# ---------------------------------------------------------------------------------------------------- conditions


def baseline_conditions() -> list[Condition]:
    """Think-on and think-off without interventions (the rows left when there is no off-only head to edit)."""
    return [condition(THINK_ON, True), condition(THINK_OFF, False)]


def condition(name: str, thinking: bool, heads: Iterable[Head] = (), factor: float = 1.0, group: str = ""
              ) -> Condition:
    """A generation condition: answer mode plus an optional edit of some heads' ``hook_z`` (× ``factor``; an
    intervention needs heads and a factor other than 1)."""
    heads = units.as_heads(heads, name)
    if not math.isfinite(factor):
        raise ValueError(f"condition {name!r}: factor must be finite, got {factor}")
    if bool(heads) != (factor != 1.0):
        raise ValueError(f"condition {name!r}: an intervention needs heads and a factor other than 1 "
                         f"(got {len(heads)} heads, factor {factor})")
    return Condition.on_heads(name, heads, factor, group, thinking)


def mode_of(c: Condition) -> str:
    """``"think_on"`` or ``"think_off"`` (:data:`THINK_ON`, :data:`THINK_OFF`)."""
    return THINK_ON if c.thinking else THINK_OFF


def condition_dict(c: Condition) -> dict:
    """The saved form of a condition: name, group, thinking, factor, heads."""
    return {"name": c.name, "group": c.group, "thinking": c.thinking, "factor": c.factor,
            "heads": [list(h) for h in c.heads]}


def standard_conditions(off_only: Iterable[Head], n_layers: int, n_heads: int,
                        interventions: Mapping[str, float] | None = None, n_random: int = 3,
                        seed: int = 0) -> list[Condition]:
    """The rows of the Table-3-like comparison: think-on; think-off; for each intervention (default
    :data:`DEFAULT_INTERVENTIONS`) think-off with the off-only heads edited; and the placebo: the same edit on
    ``n_random`` draws of as many random heads outside the off-only set (:func:`causal.placebo_heads`, seeds
    ``seed … seed + n_random - 1``, the same draws for every intervention), pooled as one group per intervention."""
    off_only = sorted(units.as_heads(off_only, "off-only heads", n_layers, n_heads))
    if not off_only:
        raise ValueError("there are no off-only heads to intervene on: the think-off circuit's heads are all in the "
                         "think-on circuit (try a larger circuit, e.g. a larger top_n)")
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    interventions = dict(DEFAULT_INTERVENTIONS if interventions is None else interventions)
    draws = causal.placebo_heads(off_only, n_layers, n_heads, n_random, seed=seed)
    out = [condition(THINK_ON, True), condition(THINK_OFF, False)]
    for label, factor in interventions.items():
        out.append(condition(f"{THINK_OFF} + {label}", False, off_only, factor))
    for label, factor in interventions.items():
        group = f"{THINK_OFF} + {label}, random heads"
        out += [condition(f"{group} #{i + 1}", False, d, factor, group) for i, d in enumerate(draws)]
    return out


def study_conditions(off_only: Sequence[Head], n_layers: int, n_heads: int, *, interventions: Mapping[str, float],
                     n_random: int, seed: int = 0) -> list[Condition]:
    """:func:`standard_conditions` on the off-only heads, or :func:`baseline_conditions` when there are none."""
    if not off_only:
        return baseline_conditions()
    return standard_conditions(off_only, n_layers, n_heads, interventions=interventions, n_random=n_random, seed=seed)


# ---------------------------------------------------------------------------------------------------- sampling


def sampling_kwargs(*, n_samples: int, temperature: float, top_p: float, top_k: int, max_new_tokens_think: int,
                    max_new_tokens_off: int) -> dict:
    """The sampling settings of :func:`sample_condition` (``n_samples``, ``sampling``, ``max_new_tokens_*``) as
    keyword arguments, so that every sampled condition, placebo set and the explorer share them."""
    return dict(n_samples=n_samples, sampling=SamplingConfig(do_sample=True, temperature=temperature, top_p=top_p,
                                                             top_k=top_k),
                max_new_tokens_think=max_new_tokens_think, max_new_tokens_off=max_new_tokens_off)


@dataclass
class Samples:
    """Sampled completions of one condition: ``completions[task][problem][sample]`` and ``correct[task]``, a bool
    array ``[problems, samples]`` in sampling order."""

    condition: Condition
    completions: dict[str, list[list[str]]] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)


def sample_condition(loaded: LoadedModel, condition: Condition, problems: Mapping[str, Sequence[tasks.Example]],
                     n_samples: int = 8, sampling: SamplingConfig | None = None,
                     max_new_tokens_think: int = THINK_ON_TOKENS, max_new_tokens_off: int = THINK_OFF_TOKENS,
                     batch_size: int = 64, seed: int = 0) -> Samples:
    """Sample ``n_samples`` completions per problem under ``condition`` and grade them (exact answer match).

    ``sampling`` defaults to temperature 0.6, top-p 0.95, top-k 20 (its ``num_samples`` is replaced by
    ``n_samples``). Task ``i`` is sampled with seed ``seed + i`` in every condition. ``batch_size`` counts prompts.
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not problems or any(len(p) == 0 for p in problems.values()):
        raise ValueError("sample_condition needs at least one problem for every task")
    base = sampling or SamplingConfig(do_sample=True)
    config = SamplingConfig(do_sample=base.do_sample, temperature=base.temperature, top_p=base.top_p,
                            top_k=base.top_k, num_samples=n_samples)
    condition.validate(loaded.bridge)
    think = bool(condition.thinking)
    with causal.intervene(loaded.bridge, condition):
        got = causal.behave_tasks(loaded, {t: [ex.prompt for ex in exs] for t, exs in problems.items()},
                                  enable_thinking=think,
                                  max_new_tokens=max_new_tokens_think if think else max_new_tokens_off,
                                  sampling=config, batch_size=batch_size, seed=seed)
    out = Samples(condition)
    for task, examples in problems.items():
        out.completions[task] = got[task].completions
        out.correct[task] = got[task].correct([ex.answer for ex in examples])
    return out


def run_conditions(loaded: LoadedModel, conditions: Sequence[Condition],
                   problems: Mapping[str, Sequence[tasks.Example]], show_progress: bool = True,
                   **kwargs) -> dict[str, Samples]:
    """:func:`sample_condition` for every condition (names must be unique); ``{name: Samples}``."""
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    return {c.name: sample_condition(loaded, c, problems, **kwargs)
            for c in progress(conditions, desc="conditions", disable=not show_progress)}
