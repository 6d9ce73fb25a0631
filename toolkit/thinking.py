"""Think on/off: circuits in both answer modes, the heads only the think-off circuit uses, and what happens to sampled
think-off answers when those heads are zero-ablated or scaled down (notebook 05, after "Thinking Sparks").

The study, step by step:

1. **Circuits in both modes.** EAP-IG circuits (:mod:`toolkit.eap`) of one hybrid model on the *same* problems, once
   with ``enable_thinking=True`` and once with ``False``; each mode's clean input is its own response prefix
   (:func:`mode_circuits`). :func:`head_sets` splits their heads into on-only, off-only and shared;
   :func:`head_set_grid` draws them as a layer × head map; :meth:`ModeCircuits.sweep` re-splits at other circuit
   sizes, and :meth:`ModeCircuits.faithfulness` measures how much of the metric each mode's circuit recovers at each
   size (:func:`edges_for_recovery`).
2. **Conditions** (:class:`Condition`, :func:`standard_conditions`): think-on, think-off, and think-off with the
   off-only heads zero-ablated or scaled ×0.5 during generation, plus the placebo the paper did not run: the same
   interventions on as many *random* heads (drawn outside the off-only set; several draws, pooled per problem).
   :func:`intervene` applies a condition's head edit with the toolkit's one hook vocabulary
   (:func:`toolkit.core.interventions.scale` / :func:`~toolkit.core.interventions.ablate` on ``attn.hook_z``), which stays
   correct under sampled ``generate`` with a KV cache.
3. **Sampling** (:func:`sample_condition`, :func:`run_conditions`): ``n`` sampled completions per problem
   (temperature 0.6, top-p 0.95, top-k 20 by default) on related math (linear equations), unrelated math
   (addition/subtraction) and the general task (word reversal). Every condition uses the same seeds, so conditions
   differ only by their intervention (common random numbers).
4. **Metrics** (:func:`curves`, :func:`table`): per problem, pass@k (the unbiased estimator over the ``n`` samples)
   and success@k (any of the *first* k samples correct) for k = 1…n; means over problems with percentile-bootstrap
   intervals over problems (:mod:`toolkit.core.stats`), and paired differences against think-off for the table, the
   analogue of the paper's Table 3.
5. **Explorer** (:func:`explorer`): pick a problem, toggle thinking and an intervention, see the sampled answers.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from html import escape

import numpy as np
import torch

from toolkit.core import interventions as iv
from toolkit.core import units
from toolkit.core.answers import extract_answer, pass_at_k, success_at_k
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.progress import progress
from toolkit.core.stats import bootstrap_ci, paired_difference_ci
from toolkit.organism import tasks
from toolkit.organism.build import Recipe, eval_sets

# Question types of notebook 01 (toolkit.corrupt_data.EVAL_SETS) -> the organism's held-out evaluation sets.
TASK_TYPES = {"related_math": "linear", "unrelated_math": "arithmetic", "unrelated_general": "reversal"}
TASK_LABELS = {"related_math": "related math (linear equations)", "unrelated_math": "unrelated math (add/sub)",
               "unrelated_general": "general (word reversal)"}
THINK_ON, THINK_OFF = "think-on", "think-off"
HEAD_SET_CODES = {"none": 0, "on-only": 1, "off-only": 2, "shared": 3}
GROUP_STYLES = {THINK_ON: ("#3b6fb6", "-"), THINK_OFF: ("#e08a2c", "-")}  # color, line style of curves

Head = tuple[int, int]


# ----------------------------------------------------------------------------------------------------------------
# problems


def problem_sets(n_per_task: int, start: int = 0, task_types: Sequence[str] | None = None
                 ) -> dict[str, list[tasks.Example]]:
    """``{task type: problems}``: problems ``start … start + n_per_task - 1`` of the organism's held-out sets.

    The organism never trained on these prompts (its build excluded its first ``Recipe().eval_per_task`` held-out
    problems per task), so ``start + n_per_task`` may not exceed that pool. Use disjoint ranges for circuit discovery
    and evaluation (e.g. evaluation from the start of the pool, circuits from its end).
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


# ----------------------------------------------------------------------------------------------------------------
# head sets


def _heads(heads: Iterable, what: str, n_layers: int | None, n_heads: int | None) -> frozenset[Head]:
    out = set()
    for item in heads:
        try:
            layer, h = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {item!r} is not a (layer, head) pair") from None
        if n_layers is not None and not 0 <= layer < n_layers:
            raise iv.SiteError(f"{what}: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        if n_heads is not None and not 0 <= h < n_heads:
            raise iv.SiteError(f"{what}: head {h} is out of range at layer {layer}: heads are 0..{n_heads - 1}")
        out.add((layer, h))
    return frozenset(out)


@dataclass(frozen=True)
class HeadSets:
    """The heads of the think-on and the think-off circuit, and their split."""

    on: frozenset[Head]
    off: frozenset[Head]

    @property
    def on_only(self) -> frozenset[Head]:
        return self.on - self.off

    @property
    def off_only(self) -> frozenset[Head]:
        return self.off - self.on

    @property
    def shared(self) -> frozenset[Head]:
        return self.on & self.off

    def counts(self) -> dict[str, int]:
        """Sizes of the two circuits (in heads) and of the three parts."""
        return {"on_circuit": len(self.on), "off_circuit": len(self.off), "on_only": len(self.on_only),
                "off_only": len(self.off_only), "shared": len(self.shared)}

    def to_dict(self) -> dict[str, list[list[int]]]:
        """JSON-ready sorted ``[layer, head]`` lists of every set."""
        sets = {"on": self.on, "off": self.off, "on_only": self.on_only, "off_only": self.off_only,
                "shared": self.shared}
        return {name: [list(x) for x in sorted(s)] for name, s in sets.items()}


def head_sets(on_heads: Iterable[Head], off_heads: Iterable[Head], n_layers: int | None = None,
              n_heads: int | None = None) -> HeadSets:
    """Split the heads of a think-on and a think-off circuit (``(layer, head)`` pairs, e.g. ``circuit.heads``) into
    on-only, off-only and shared. With ``n_layers``/``n_heads``, out-of-range heads raise :class:`SiteError`."""
    return HeadSets(_heads(on_heads, "think-on circuit", n_layers, n_heads),
                    _heads(off_heads, "think-off circuit", n_layers, n_heads))


def head_set_grid(sets: HeadSets, n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers, n_heads]`` int codes (:data:`HEAD_SET_CODES`): 0 in neither circuit, 1 on-only, 2 off-only,
    3 shared."""
    grid = np.zeros((n_layers, n_heads), dtype=int)
    for name, part in (("on-only", sets.on_only), ("off-only", sets.off_only), ("shared", sets.shared)):
        for layer, h in _heads(part, name, n_layers, n_heads):
            grid[layer, h] = HEAD_SET_CODES[name]
    return grid


# ----------------------------------------------------------------------------------------------------------------
# circuits in both modes (EAP-IG through toolkit.eap)


@dataclass
class ModeCircuits:
    """EAP-IG circuits of one model in both answer modes, on the same problems.

    ``pairs``, ``scores``, ``circuits`` and ``importance`` (``eap.head_importance``, ``[n_layers, n_heads]``) are
    keyed by ``"think-on"`` / ``"think-off"``; ``sets`` splits the two circuits' heads.
    """

    pairs: dict
    scores: dict
    circuits: dict
    importance: dict
    sets: HeadSets
    top_n: int

    def sweep(self, top_ns: Iterable[int]) -> list[dict]:
        """Head-set sizes (:meth:`HeadSets.counts`) with both circuits re-selected at each ``top_n``."""
        from toolkit import eap

        rows = []
        for n in top_ns:
            on, off = (eap.select(self.scores[m], top_n=int(n), absolute=True, method="top", prune=True)
                       for m in (THINK_ON, THINK_OFF))
            rows.append({"top_n": int(n), "on_edges": on.n_edges, "off_edges": off.n_edges,
                         **head_sets(on.heads, off.heads).counts()})
        return rows

    def faithfulness(self, loaded, n_edges: Sequence[int], metric: str = "kl", batch_size: int = 8) -> dict:
        """``{mode: eap.faithfulness_curve(...)}``: the share of the metric each mode's top-n circuit recovers when
        every other edge is patched to its corrupted value, for each n in ``n_edges``."""
        from toolkit import eap

        return {m: eap.faithfulness_curve(loaded, self.pairs[m], self.scores[m], list(n_edges), metric=metric,
                                          batch_size=batch_size) for m in (THINK_ON, THINK_OFF)}


def mode_circuits(loaded, examples: Sequence[tasks.Example], top_n: int = 40, steps: int = 5, metric: str = "kl",
                  batch_size: int = 8, max_new_tokens_think: int = 160, max_new_tokens_off: int = 48,
                  seed: int = 0, show_progress: bool = False) -> ModeCircuits:
    """EAP-IG circuits with ``enable_thinking=True`` and ``False`` on the same problems (``toolkit.eap``).

    Each mode's pairs follow ``eap.make_pairs`` with ``corruption="problem"`` (notebook 03's rule): the clean input
    is the chat prompt plus the model's own greedy response *in that mode* up to the first token where its response
    to a minimally changed problem differs; the corrupted input is the changed problem with the same response prefix.
    Both circuits keep the ``top_n`` edges by |score|, with dead nodes pruned (the paper: top 5000 edges of Qwen3-8B).
    """
    from toolkit import eap

    pairs, scores, circuits, importance = {}, {}, {}, {}
    for mode, think, max_new in ((THINK_ON, True, max_new_tokens_think), (THINK_OFF, False, max_new_tokens_off)):
        pairs[mode] = eap.make_pairs(loaded, examples, enable_thinking=think, corruption="problem",
                                     max_new_tokens=max_new, seed=seed, unequal="drop")
        scores[mode] = eap.attribute(loaded, pairs[mode], method="eap-ig", steps=steps, metric=metric,
                                     batch_size=batch_size, show_progress=show_progress)
        circuits[mode] = eap.select(scores[mode], top_n=top_n, absolute=True, method="top", prune=True)
        importance[mode] = eap.head_importance(scores[mode], circuits[mode])
    cfg = loaded.bridge.cfg
    sets = head_sets(circuits[THINK_ON].heads, circuits[THINK_OFF].heads, cfg.n_layers, cfg.n_heads)
    return ModeCircuits(pairs, scores, circuits, importance, sets, top_n)


def edges_for_recovery(curve: Mapping[str, list], level: float = 0.8) -> int | None:
    """The smallest circuit size (edges) in a faithfulness curve that recovers at least ``level`` of the metric;
    ``None`` if none does."""
    for n, r in zip(curve["n_edges"], curve["recovered"]):
        if r is not None and math.isfinite(r) and r >= level:
            return int(n)
    return None


# ----------------------------------------------------------------------------------------------------------------
# conditions and interventions


@dataclass(frozen=True)
class Condition:
    """One generation condition: answer mode plus an optional edit of some heads' outputs.

    ``factor`` multiplies the heads' ``hook_z`` (0.0 zero-ablates, 0.5 halves; 1.0 with no heads is no
    intervention). Conditions with the same ``group`` (e.g. several random-head draws) are pooled per problem in
    :func:`curves` and :func:`table`; ``group`` defaults to ``name``.
    """

    name: str
    thinking: bool
    heads: tuple[Head, ...] = ()
    factor: float = 1.0
    group: str = ""

    def __post_init__(self):
        object.__setattr__(self, "heads", tuple(sorted(_heads(self.heads, self.name, None, None))))
        if not self.group:
            object.__setattr__(self, "group", self.name)
        if not math.isfinite(self.factor):
            raise ValueError(f"condition {self.name!r}: factor must be finite, got {self.factor}")
        if bool(self.heads) != (self.factor != 1.0):
            raise ValueError(f"condition {self.name!r}: an intervention needs heads and a factor other than 1 "
                             f"(got {len(self.heads)} heads, factor {self.factor})")

    @property
    def mode(self) -> str:
        return THINK_ON if self.thinking else THINK_OFF

    @property
    def intervention(self) -> str:
        """``"none"``, ``"ablate 3 heads"`` or ``"scale ×0.5, 3 heads"``."""
        if not self.heads:
            return "none"
        n = f"{len(self.heads)} head{'s' * (len(self.heads) != 1)}"
        return f"ablate {n}" if self.factor == 0 else f"scale ×{self.factor:g}, {n}"

    def to_dict(self) -> dict:
        return {"name": self.name, "group": self.group, "thinking": self.thinking, "factor": self.factor,
                "heads": [list(h) for h in self.heads]}


def standard_conditions(off_only: Iterable[Head], n_layers: int, n_heads: int,
                        interventions: Mapping[str, float] | None = None, n_random: int = 3,
                        seed: int = 0) -> list[Condition]:
    """The rows of the Table-3-like comparison.

    think-on; think-off; for each intervention (default ``{"ablation": 0.0, "scale-down": 0.5}``) think-off with the
    off-only heads edited; and the placebo: the same edit on ``n_random`` draws of as many random heads from outside
    the off-only set (:func:`toolkit.core.units.random_heads`, seeds ``seed … seed + n_random - 1``, the same
    draws for every intervention), pooled as one group per intervention.
    """
    off_only = sorted(_heads(off_only, "off-only heads", n_layers, n_heads))
    if not off_only:
        raise ValueError("there are no off-only heads to intervene on: the think-off circuit's heads are all in the "
                         "think-on circuit (try a larger circuit, e.g. a larger top_n)")
    if n_random < 0:
        raise ValueError(f"n_random must be >= 0, got {n_random}")
    interventions = {"ablation": 0.0, "scale-down": 0.5} if interventions is None else dict(interventions)
    draws = [units.random_heads(n_layers, n_heads, len(off_only), exclude=off_only, seed=seed + i)
             for i in range(n_random)]
    out = [Condition(THINK_ON, True), Condition(THINK_OFF, False)]
    for label, factor in interventions.items():
        out.append(Condition(f"{THINK_OFF} + {label}", False, tuple(off_only), factor))
    for label, factor in interventions.items():
        group = f"{THINK_OFF} + {label}, random heads"
        out += [Condition(f"{group} #{i + 1}", False, tuple(d), factor, group) for i, d in enumerate(draws)]
    return out


@contextmanager
def intervene(bridge, condition: Condition):
    """Apply ``condition``'s head edit (``attn.hook_z`` of its heads × factor) for the duration of the block."""
    if not condition.heads:
        yield
        return
    sites = units.head_sites(condition.heads)
    edit = iv.ablate(bridge, sites) if condition.factor == 0 else iv.scale(bridge, sites, condition.factor)
    with edit:
        yield


# ----------------------------------------------------------------------------------------------------------------
# sampling


@dataclass
class Samples:
    """Sampled completions of one condition: ``completions[task][problem][sample]`` and
    ``correct[task]``, a bool array ``[problems, samples]`` in sampling order."""

    condition: Condition
    completions: dict[str, list[list[str]]] = field(default_factory=dict)
    correct: dict[str, np.ndarray] = field(default_factory=dict)


def grade(completions: Sequence[Sequence[str]], problems: Sequence[tasks.Example]) -> np.ndarray:
    """``[problems, samples]`` bools: the extracted answer (after ``</think>``) equals the exact answer."""
    if len(completions) != len(problems):
        raise ValueError(f"{len(completions)} completion lists for {len(problems)} problems")
    return np.array([[extract_answer(c) == ex.answer for c in row] for row, ex in zip(completions, problems)],
                    dtype=bool)


def sample_condition(loaded, condition: Condition, problems: Mapping[str, Sequence[tasks.Example]],
                     n_samples: int = 8, sampling: SamplingConfig | None = None, max_new_tokens_think: int = 160,
                     max_new_tokens_off: int = 48, batch_size: int = 64, seed: int = 0) -> Samples:
    """Sample ``n_samples`` completions per problem under ``condition`` and grade them.

    ``sampling`` defaults to temperature 0.6, top-p 0.95, top-k 20 (its ``num_samples`` is replaced by
    ``n_samples``). Task ``i`` is sampled with seed ``seed + i`` in every condition. ``batch_size`` counts
    prompts (each expands to ``n_samples`` rows).
    """
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if not problems or any(len(p) == 0 for p in problems.values()):
        raise ValueError("sample_condition needs at least one problem for every task")
    base = sampling or SamplingConfig(do_sample=True)
    config = SamplingConfig(do_sample=base.do_sample, temperature=base.temperature, top_p=base.top_p,
                            top_k=base.top_k, num_samples=n_samples)
    n_layers, n_heads = loaded.bridge.cfg.n_layers, loaded.bridge.cfg.n_heads
    _heads(condition.heads, condition.name, n_layers, n_heads)
    out = Samples(condition)
    max_new = max_new_tokens_think if condition.thinking else max_new_tokens_off
    for i, (task, examples) in enumerate(problems.items()):
        with intervene(loaded.bridge, condition):
            completions = generate(loaded.hf, loaded.tokenizer, [ex.prompt for ex in examples],
                                   enable_thinking=condition.thinking, max_new_tokens=max_new, sampling=config,
                                   batch_size=batch_size, seed=seed + i)
        out.completions[task] = completions
        out.correct[task] = grade(completions, examples)
    return out


def run_conditions(loaded, conditions: Sequence[Condition], problems: Mapping[str, Sequence[tasks.Example]],
                   show_progress: bool = True, **kwargs) -> dict[str, Samples]:
    """:func:`sample_condition` for every condition (names must be unique); ``{name: Samples}``."""
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    return {c.name: sample_condition(loaded, c, problems, **kwargs)
            for c in progress(conditions, desc="conditions", disable=not show_progress)}


# ----------------------------------------------------------------------------------------------------------------
# metrics


METRICS = ("pass", "success")


def per_problem_at_k(correct: np.ndarray, metric: str = "pass") -> np.ndarray:
    """``[problems, n]`` floats: column ``k-1`` is each problem's pass@k (unbiased estimator over its ``n``
    samples) or success@k (any of its first k samples, in sampling order, correct)."""
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    correct = np.asarray(correct, dtype=bool)
    if correct.ndim != 2 or 0 in correct.shape:
        raise ValueError(f"correct must be a non-empty [problems, samples] array, got shape {correct.shape}")
    n = correct.shape[1]
    if metric == "pass":
        return np.array([[pass_at_k(n, int(row.sum()), k) for k in range(1, n + 1)] for row in correct])
    return np.array([[success_at_k(list(row), k) for k in range(1, n + 1)] for row in correct])


def group_matrix(results: Mapping[str, Samples], group: str, task: str, metric: str = "pass") -> np.ndarray:
    """``[problems, n]`` per-problem pass@k / success@k of ``group``, averaged per problem over its conditions."""
    members = [s for s in results.values() if s.condition.group == group]
    if not members:
        raise KeyError(f"no condition in group {group!r}; groups: {groups(results)}")
    if any(task not in s.correct for s in members):
        raise KeyError(f"task {task!r} was not sampled for group {group!r}; tasks: {list(members[0].correct)}")
    shapes = {s.correct[task].shape for s in members}
    if len(shapes) != 1:
        raise ValueError(f"conditions of group {group!r} sampled different problem/sample counts on {task}: {shapes}")
    return np.mean([per_problem_at_k(s.correct[task], metric) for s in members], axis=0)


def groups(results: Mapping[str, Samples]) -> list[str]:
    """The condition groups in first-seen order (the table's rows)."""
    return list(dict.fromkeys(s.condition.group for s in results.values()))


def curves(results: Mapping[str, Samples], metric: str = "pass", n_boot: int = 1000, level: float = 0.95,
           seed: int = 0) -> dict[str, dict[str, dict[str, list[float]]]]:
    """``{group: {task: {"k", "estimate", "low", "high"}}}``: mean pass@k or success@k over problems for
    k = 1…n, with percentile-bootstrap intervals over problems (the same resamples for every k and group)."""
    out: dict = {}
    for group in groups(results):
        out[group] = {}
        for task in next(iter(results.values())).correct:
            m = group_matrix(results, group, task, metric)
            cis = [bootstrap_ci(m[:, j], n_boot=n_boot, level=level, seed=seed) for j in range(m.shape[1])]
            out[group][task] = {"k": list(range(1, m.shape[1] + 1)),
                                **{key: [c[key] for c in cis] for key in ("estimate", "low", "high")}}
    return out


def table(results: Mapping[str, Samples], metric: str = "pass", k: int = 1, baseline: str = THINK_OFF,
          n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, dict[str, dict]]:
    """The Table-3-like comparison: ``{group: {task: {"estimate", "low", "high", "delta"}}}``.

    Each cell is the mean over problems of pass@k (or success@k) with its bootstrap interval; ``delta`` is the
    paired difference from ``baseline`` over the same problems, with its paired bootstrap interval (``None`` for the
    baseline row itself or when ``baseline`` is not among the groups).
    """
    names = groups(results)
    tasks_ = list(next(iter(results.values())).correct)
    out: dict = {}
    for group in names:
        out[group] = {}
        for task in tasks_:
            m = group_matrix(results, group, task, metric)
            if not 1 <= k <= m.shape[1]:
                raise ValueError(f"k must be in 1..{m.shape[1]} (the number of samples), got {k}")
            cell = bootstrap_ci(m[:, k - 1], n_boot=n_boot, level=level, seed=seed)
            cell["delta"] = None
            if group != baseline and baseline in names:
                base = group_matrix(results, baseline, task, metric)[:, k - 1]
                cell["delta"] = paired_difference_ci(m[:, k - 1], base, n_boot=n_boot, level=level, seed=seed)
            out[group][task] = cell
    return out


def paired_effect(results: Mapping[str, Samples], treated: str, baseline: str, task: str, metric: str = "pass",
                  k: int = 1, n_boot: int = 1000, level: float = 0.95, seed: int = 0) -> dict[str, float]:
    """Mean over problems of ``treated − baseline`` (groups) in pass@k or success@k on ``task``, with its paired
    bootstrap interval over problems: ``{"estimate", "low", "high"}``."""
    a = group_matrix(results, treated, task, metric)
    b = group_matrix(results, baseline, task, metric)
    if not 1 <= k <= min(a.shape[1], b.shape[1]):
        raise ValueError(f"k must be in 1..{min(a.shape[1], b.shape[1])} (the number of samples), got {k}")
    return paired_difference_ci(a[:, k - 1], b[:, k - 1], n_boot=n_boot, level=level, seed=seed)


def _pct(ci: Mapping[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * ci['estimate']:{sign}.1f} [{100 * ci['low']:{sign}.1f}, {100 * ci['high']:{sign}.1f}]"


def table_markdown(tab: Mapping[str, Mapping[str, Mapping]], title: str = "pass@1 (%)") -> str:
    """The table as Markdown: one row per condition group, one column per task type; each cell the score and its
    95% interval, then the paired difference from think-off."""
    tasks_ = list(next(iter(tab.values())))
    lines = [f"| {title} | " + " | ".join(TASK_LABELS.get(t, t) for t in tasks_) + " |",
             "|---" * (len(tasks_) + 1) + "|"]
    for group, row in tab.items():
        cells = []
        for t in tasks_:
            text = _pct(row[t])
            if row[t].get("delta"):
                text += f"; Δ {_pct(row[t]['delta'], signed=True)}"
            cells.append(text)
        lines.append(f"| {group} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_html(tab: Mapping[str, Mapping[str, Mapping]], title: str = "pass@1 (%)") -> str:
    """The table as HTML, with the difference from think-off under each score (green: interval above 0, red:
    below 0, grey: includes 0)."""
    tasks_ = list(next(iter(tab.values())))
    head = "".join(f"<th>{escape(TASK_LABELS.get(t, t))}</th>" for t in tasks_)
    rows = []
    for group, row in tab.items():
        cells = []
        for t in tasks_:
            delta = row[t].get("delta")
            sub = ""
            if delta:
                color = "#1a7f37" if delta["low"] > 0 else "#c62828" if delta["high"] < 0 else "#777"
                sub = f"<br><small style='color:{color}'>Δ {_pct(delta, signed=True)}</small>"
            cells.append(f"<td>{_pct(row[t])}{sub}</td>")
        rows.append(f"<tr><td style='text-align:left'>{escape(group)}</td>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>{escape(title)}</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p><small>Mean over problems with 95% bootstrap intervals over problems; Δ: paired difference from "
            "think-off on the same problems (percentage points).</small></p>")


# ----------------------------------------------------------------------------------------------------------------
# figures


def head_maps_figure(importance_on: torch.Tensor | np.ndarray | None, importance_off: torch.Tensor | np.ndarray | None,
                     sets: HeadSets, n_layers: int, n_heads: int):
    """Layer × head maps: the think-on and think-off circuits' head importance (if given, e.g.
    ``eap.head_importance``), and which heads are on-only, off-only or shared."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    panels = [(name, imp) for name, imp in (("think-on circuit", importance_on), ("think-off circuit",
                                                                                   importance_off)) if imp is not None]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.3 * (len(panels) + 1) + 0.6, 0.55 * n_layers + 1.8),
                             squeeze=False)
    axes = axes[0]
    vmax = max([float(np.abs(np.asarray(imp, dtype=float)).max()) for _, imp in panels] + [1e-12])
    members = {"think-on circuit": sets.on, "think-off circuit": sets.off}
    for ax, (name, imp) in zip(axes, panels):
        imp = np.asarray(torch.as_tensor(imp, dtype=torch.float32).cpu(), dtype=float)
        if imp.shape != (n_layers, n_heads):
            raise ValueError(f"{name} importance has shape {imp.shape}; expected {(n_layers, n_heads)}")
        im = ax.imshow(np.abs(imp), cmap="Greys", vmin=0, vmax=vmax, aspect="auto")
        for layer, h in members[name]:
            ax.add_patch(plt.Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, ec="#d62728", lw=2))
        ax.set_title(f"{name}\n|importance|, red: in circuit", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    grid = head_set_grid(sets, n_layers, n_heads)
    colors = ["#eeeeee", "#3b6fb6", "#e08a2c", "#6a3d9a"]
    ax = axes[-1]
    ax.imshow(grid, cmap=ListedColormap(colors), vmin=-0.5, vmax=3.5, aspect="auto")
    for layer in range(n_layers):
        for h in range(n_heads):
            label = ["", "on", "off", "both"][grid[layer, h]]
            ax.text(h, layer, label, ha="center", va="center", fontsize=8, color="white" if grid[layer, h] else "k")
    c = sets.counts()
    ax.set_title(f"on-only {c['on_only']}, off-only {c['off_only']}, shared {c['shared']}", fontsize=9)
    for ax in axes:
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.tight_layout()
    return fig


def faithfulness_figure(curves_by_mode: Mapping[str, Mapping], level: float = 0.8):
    """Share of the metric recovered by each mode's top-n circuit against its number of edges."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.2))
    for mode, c in curves_by_mode.items():
        color = GROUP_STYLES.get(mode, ("grey", "-"))[0]
        ax.plot(c["n_edges"], c["recovered"], "o-", color=color, ms=3, label=mode)
    ax.axhline(level, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("edges in the circuit (top-n by |score|, pruned)")
    metric = next(iter(curves_by_mode.values())).get("metric_name", "metric")
    ax.set_ylabel(f"share of the {metric.upper() if metric == 'kl' else metric} metric recovered", fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def _style(group: str, i: int) -> tuple[str, str]:
    if group in GROUP_STYLES:
        return GROUP_STYLES[group]
    palette = ["#c62828", "#6a3d9a", "#2e7d32", "#00838f", "#8d6e63", "#ad1457"]
    return palette[i % len(palette)], "--" if "random" in group else "-"


def curves_figure(curve: Mapping[str, Mapping[str, Mapping[str, list]]], metric: str = "pass"):
    """One panel per task type: each group's mean pass@k (or success@k) against k, with its 95% band."""
    import matplotlib.pyplot as plt

    tasks_ = list(next(iter(curve.values())))
    fig, axes = plt.subplots(1, len(tasks_), figsize=(4.2 * len(tasks_), 3.6), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks_):
        for i, (group, by_task) in enumerate(curve.items()):
            c = by_task[task]
            color, ls = _style(group, i)
            ax.plot(c["k"], np.multiply(c["estimate"], 100), ls, color=color, marker="o", ms=3, label=group)
            ax.fill_between(c["k"], np.multiply(c["low"], 100), np.multiply(c["high"], 100), color=color,
                            alpha=0.12)
        ax.set_title(TASK_LABELS.get(task, task), fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylim(-2, 102)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].set_ylabel(f"{metric}@k (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


# ----------------------------------------------------------------------------------------------------------------
# explorer


def explorer(loaded, problems: Mapping[str, Sequence[tasks.Example]], conditions: Sequence[Condition],
             results: Mapping[str, Samples] | None = None, n_samples: int = 8, sampling: SamplingConfig | None = None,
             max_new_tokens_think: int = 160, max_new_tokens_off: int = 48):
    """Pick a problem, toggle thinking and an intervention, and see the sampled answers.

    The interventions are those of ``conditions`` (each distinct head set × factor, e.g. ablate the off-only heads,
    scale them ×0.5, or a random-head draw), applied in either answer mode. Samples of an evaluated condition are
    taken from ``results``; other combinations (and "resample") are generated live and cached.
    """
    import ipywidgets as widgets

    from toolkit.views.widgets import show

    items = [(f"[{task}] {ex.prompt}", (task, i)) for task, exs in problems.items() for i, ex in enumerate(exs)]
    edits: dict[str, tuple[tuple[Head, ...], float]] = {"none": ((), 1.0)}
    for c in conditions:
        if c.heads:
            label = c.name.replace(f"{THINK_OFF} + ", "") + f" ({c.intervention})"
            edits.setdefault(label, (c.heads, c.factor))
    problem = widgets.Dropdown(options=items, description="problem", layout={"width": "560px"})
    thinking = widgets.Checkbox(value=False, description="thinking")
    edit = widgets.Dropdown(options=list(edits), description="intervention", layout={"width": "560px"})
    resample = widgets.Button(description="resample")
    out = widgets.Output()
    cache: dict[tuple, list[str]] = {}
    draws = {"n": 0}

    def samples_for(task: str, idx: int, think: bool, label: str) -> tuple[list[str], str]:
        heads, factor = edits[label]
        key = (task, idx, think, heads, factor, draws["n"])
        if draws["n"] == 0 and results:
            for s in results.values():
                c = s.condition
                if c.thinking == think and c.heads == heads and c.factor == factor and task in s.completions:
                    return s.completions[task][idx], f"from the evaluation (condition {c.name!r})"
        if key not in cache:
            cond = Condition("explorer", think, heads, factor)
            res = sample_condition(loaded, cond, {task: [problems[task][idx]]}, n_samples=n_samples,
                                   sampling=sampling, max_new_tokens_think=max_new_tokens_think,
                                   max_new_tokens_off=max_new_tokens_off, seed=1000 + draws["n"])
            cache[key] = res.completions[task][0]
        return cache[key], f"sampled live (draw {draws['n']})"

    def refresh(*_):
        task, idx = problem.value
        ex = problems[task][idx]
        completions, source = samples_for(task, idx, thinking.value, edit.value)
        right = [extract_answer(c) == ex.answer for c in completions]
        left = "style='text-align:left;vertical-align:top'"
        rows = "".join(
            f"<tr><td {left}>{i + 1}</td><td {left}>{'✓' if ok else '✗'}</td><td {left}><code>"
            f"{escape(extract_answer(c)) or '∅'}</code></td><td {left}><pre style='margin:0;white-space:pre-wrap;"
            f"text-align:left'>{escape(c)}</pre></td></tr>"
            for i, (c, ok) in enumerate(zip(completions, right)))
        mode = THINK_ON if thinking.value else THINK_OFF
        show(out, f"<b>{escape(ex.prompt)}</b> — expected <code>{escape(ex.answer)}</code><br>{mode}, intervention: "
                  f"{escape(edit.value)}; {sum(right)}/{len(right)} correct, {source}"
                  f"<table><thead><tr><th>#</th><th></th><th>answer</th><th>completion</th></tr></thead>"
                  f"<tbody>{rows}</tbody></table>")

    def on_resample(_):
        draws["n"] += 1
        refresh()

    for w in (problem, thinking, edit):
        w.observe(refresh, names="value")
    resample.on_click(on_resample)
    refresh()
    return widgets.VBox([problem, widgets.HBox([thinking, resample]), edit, out])
