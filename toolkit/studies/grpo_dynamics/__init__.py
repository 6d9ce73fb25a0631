"""Notebook 04 ("Thinking Sparks" on the organism): SFT, distillation and GRPO from one start, matched; an EAP-IG
circuit per checkpoint; head dynamics against the start model's circuit; accuracy per checkpoint; head scaling.

Steps, one function each (the notebook calls them in order):

1. :func:`matched_arms`, :func:`check_matched`, :func:`train_runs` (:mod:`toolkit.studies.grpo_dynamics.arms`,
   re-exported here) — the three arms (:data:`ARMS`), matched in tasks, mode (thinking on), training problems,
   steps, checkpoint spacing and completions per step; trained by :mod:`toolkit.training.grpo` /
   :mod:`toolkit.training.distill`, cached by configuration hash.
2. :func:`analyse_checkpoints` — per run, an EAP-IG circuit per checkpoint on its own pairs and on the start model's
   (fixed) pairs (snapshots cached per weights, see :func:`toolkit.evaluation.snapshots.snapshot_scores`; split across
   launched processes: :func:`~toolkit.evaluation.snapshots.distributed_snapshot_scores`), the head
   :class:`~toolkit.methods.dynamics.Dynamics`, and whether each checkpoint's greedy answer to each held-out problem
   is right (:func:`checkpoint_correct`).
3. :func:`reward_series` — what each run's head count is set against: GRPO's accuracy reward (per step, and its mean
   over the steps since the previous checkpoint), the SFT-style runs' mean held-out accuracy;
   :func:`correlations` and :func:`compare_runs` (every pair of runs' final and ever-emergent head sets).
4. :func:`scale_emergent_heads` — a run's emergent heads scaled in the start model (:func:`head_scaling`, built on
   :mod:`toolkit.evaluation.causal`).
5. :func:`to_results` — the numbers the notebook saves.

The nulls and claims are :mod:`toolkit.studies.grpo_dynamics.claims`. Caches:
``<cache>/circuits/<analysis hash>/<weights fingerprint>.scores.json`` (the :class:`toolkit.methods.eap.Scores` JSON;
the analysis hash covers the examples and EAP settings, so an interrupted analysis continues where it stopped and the
start model's circuit is shared by every run from it), and ``<cache>/circuits/accuracy/<fingerprint>-<key>.json``.
See ``docs/methods.md`` ("GRPO dynamics").
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace

import numpy as np

from toolkit.core import models
from toolkit.core.cache import cache_root, config_hash, model_fingerprint, read_entry, read_json
from toolkit.core.generation import SamplingConfig
from toolkit.core.io import atomic_write_json
from toolkit.core.models import LoadedModel
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.core.stats import bootstrap_ci
from toolkit.core.units import Head, HeadComparison, as_heads, compare_heads
from toolkit.evaluation import causal
from toolkit.evaluation.behaviour import behave
from toolkit.evaluation.snapshots import (  # noqa: F401 -- re-exported: the notebook calls them from here
    SnapshotSettings,
    analysis_dir,
    circuit_heads,
    distributed_snapshot_scores,
    dynamics_of,
    make_pairs,
    snapshot_scores,
)
from toolkit.methods import eap
from toolkit.methods.dynamics import Dynamics, reward_correlation
from toolkit.organism.tasks import Example
from toolkit.studies.grpo_dynamics.arms import ARMS, check_matched, completions_per_step, matched_arms, train_runs  # noqa: F401
from toolkit.training import callbacks, problems
from toolkit.training.runs import TrainingRun

SCALE_FACTORS = (1.3, 0.5)  # head scaling: amplify and damp GRPO's emergent heads
HELD_OUT_POOL = 400  # seeds > 0 draw their held-out problems from this many (those training never sees)


# ---- 1. training: the three matched arms are in toolkit.studies.grpo_dynamics.arms (re-exported above) --------------

def checkpoint_specs(run: TrainingRun) -> dict[int, str]:
    """Checkpoint step → model spec (step 0: the start model)."""
    return {c.step: c.spec for c in run.checkpoints}


def checkpoint_records(run: TrainingRun) -> list[dict]:
    """Per checkpoint: ``step`` and the window means ``reward``, ``accuracy``, ``format``, ``loss`` (None if not
    logged)."""
    return [{"step": c.step, **{k: c.metrics.get(k) for k in callbacks.CHECKPOINT_METRICS}} for c in run.checkpoints]


# ---- 2. accuracy per checkpoint (circuits per checkpoint: toolkit.evaluation.snapshots) ------------------------------

def held_out_draw(tasks: Sequence[str], n: int, seed: int = 0) -> list[Example]:
    """``n`` held-out problems of ``tasks`` (never trained on): the first ``n`` for ``seed`` 0, else ``n`` drawn
    with ``seed`` from the first :data:`HELD_OUT_POOL` (order kept)."""
    if seed == 0:
        return problems.eval_problems(tuple(tasks), n)
    pool = problems.eval_problems(tuple(tasks), max(HELD_OUT_POOL, n))
    pick = np.sort(np.random.default_rng(seed).choice(len(pool), size=n, replace=False))
    return [pool[i] for i in pick]


def checkpoint_correct(specs: Mapping[int, str], examples: Sequence[Example], enable_thinking: bool = False,
                       max_new_tokens: int = 16, device: str = "auto") -> dict[int, np.ndarray]:
    """Per checkpoint, whether its greedy answer to each example is right (:func:`toolkit.evaluation.behaviour.behave`,
    batches of 64, seed 0), cached per weights, examples and mode."""
    if not examples:
        raise ValueError("no held-out problems to measure accuracy on; raise n_eval")
    key = config_hash([[e.prompt, e.answer] for e in examples] + [enable_thinking, max_new_tokens])
    out = {}
    for step, spec in progress(sorted(specs.items()), desc="checkpoint accuracy", total=len(specs)):
        path = cache_root() / "circuits" / "accuracy" / f"{model_fingerprint(spec)}-{key}.json"
        cached = read_entry(path, lambda p: np.array(read_json(p, ("correct",))["correct"], bool))
        if cached is not None and len(cached) == len(examples):
            out[step] = cached
            continue
        with quiet_library_bars():
            loaded = models.load(spec, device=device)
        got = behave(loaded, [e.prompt for e in examples], enable_thinking=enable_thinking,
                     max_new_tokens=max_new_tokens, batch_size=64, seed=0)
        out[step] = np.asarray(got.correct([e.answer for e in examples])[:, 0], bool)
        atomic_write_json(path, {"spec": spec, "accuracy": float(out[step].mean()), "correct": out[step].tolist()})
    return out


@dataclass
class Analysis:
    """Step 2 of the study: per run label, the head :class:`Dynamics` of its checkpoints' circuits on their own pairs
    (``dyns``) and on the start model's pairs (``fixed``), the scores behind them (``scores[inputs][label][step]``,
    inputs ``"own"``/``"fixed"``), and ``correct[label][task][step]``: whether each checkpoint's greedy answer to
    each of ``eval_examples[task]`` is right. ``test_examples[task]``: as many held-out problems that the circuits did
    not use, where heads selected on the circuits are tested (selection and evaluation on different prompts)."""

    dyns: dict[str, Dynamics]
    correct: dict[str, dict[str, dict[int, np.ndarray]]]
    eval_examples: dict[str, list[Example]]
    fixed: dict[str, Dynamics]
    scores: dict[str, dict[str, dict[int, eap.Scores]]]
    circuit_examples: list[Example]
    test_examples: dict[str, list[Example]] = field(default_factory=dict)

    @property
    def accuracy(self) -> dict[str, dict[str, dict[int, float]]]:
        """``accuracy[label][task][step]``: the share of right greedy answers."""
        return {label: {t: {s: float(c.mean()) for s, c in by.items()} for t, by in tasks_.items()}
                for label, tasks_ in self.correct.items()}

    @property
    def most_frequent_share(self) -> dict[str, float]:
        """Per task, the share of its held-out problems whose reference answer is the most frequent one: the accuracy
        of a model that always gives that answer."""
        return {t: max(Counter(e.answer for e in ex).values()) / len(ex) for t, ex in self.eval_examples.items()}

    def pooled_correct(self, label: str, step: int, tasks: Iterable[str] | None = None) -> np.ndarray:
        """Right/wrong per problem of ``tasks`` (default: every evaluated task) at one checkpoint, tasks in order."""
        return np.concatenate([self.correct[label][t][step] for t in (tasks or self.correct[label])])

    @property
    def snapshot_seconds(self) -> float | None:
        """Mean seconds of a circuit snapshot when computed (None if every snapshot came from the cache)."""
        computed = [i["snapshot_seconds"] for d in self.dyns.values() for i in d.snapshot_info.values()
                    if i["snapshot_seconds"]]
        return float(np.mean(computed)) if computed else None

    @property
    def pairs_per_snapshot(self) -> dict[str, list[int]]:
        """Per run, the clean/corrupted pairs each checkpoint's circuit was built on (step order)."""
        return {label: [i["n_pairs"] for i in d.snapshot_info.values()] for label, d in self.dyns.items()}


def analyse_checkpoints(runs: Mapping[str, TrainingRun], circuit_tasks: Sequence[str], n_circuit: int,
                        snapshot: SnapshotSettings, eval_tasks: Iterable[str], n_eval: int,
                        max_new_tokens: int = 16, device: str = "auto", seed: int = 0) -> Analysis:
    """Circuits of every checkpoint of every run on ``n_circuit`` held-out problems of ``circuit_tasks`` (each
    checkpoint's own pairs, and the start model's pairs for all), then the greedy accuracy of every checkpoint on
    ``n_eval`` held-out problems of each of ``eval_tasks`` (duplicates dropped, order kept), in the mode
    ``snapshot.enable_thinking``; problems drawn by :func:`held_out_draw` with ``seed``. The circuit problems and
    the accuracy problems are disjoint draws only by chance; neither is ever trained on."""
    if n_circuit < 1 or not circuit_tasks:
        raise ValueError(f"the circuits need problems: n_circuit = {n_circuit}, circuit_tasks = {list(circuit_tasks)}")
    if n_eval < 1:
        raise ValueError(f"n_eval = {n_eval} leaves no held-out problems to measure accuracy on; raise n_eval")
    circuit_examples = held_out_draw(circuit_tasks, n_circuit, seed)
    specs = {label: checkpoint_specs(run) for label, run in runs.items()}
    try:
        scores = {inputs: {label: snapshot_scores(specs[label], circuit_examples, replace(snapshot, inputs=inputs),
                                                  device) for label in runs} for inputs in ("own", "fixed")}
    except eap.EAPError as err:
        raise eap.EAPError(f"{err} (raise n_circuit or pick other tasks for the circuits)") from err
    dyns = {inputs: {label: dynamics_of(by[label], snapshot.top_n) for label in runs} for inputs, by in scores.items()}
    eval_examples = {task: held_out_draw((task,), n_eval, seed) for task in dict.fromkeys(eval_tasks)}
    used = {e.prompt for e in circuit_examples}
    test_examples = {task: [e for e in held_out_draw((task,), n_eval + n_circuit, seed)
                            if e.prompt not in used][:n_eval] for task in eval_examples}
    correct = {label: {task: checkpoint_correct(specs[label], ex, snapshot.enable_thinking, max_new_tokens, device)
                       for task, ex in eval_examples.items()} for label in runs}
    return Analysis(dyns["own"], correct, eval_examples, dyns["fixed"], scores, circuit_examples, test_examples)


# ---- 3. rewards, correlation, GRPO against SFT --------------------------------------------------------------------

@dataclass
class RewardSeries:
    """What a run's emergent-head count is set against. ``steps``/``values``: the curve to draw; ``marks``: values at
    the checkpoints drawn as dots (or None); ``at_checkpoint``: the value per checkpoint step the correlation uses."""

    label: str
    steps: list[int]
    values: list[float]
    marks: dict[int, float] | None
    at_checkpoint: dict[int, float]


def reward_series(runs: Mapping[str, TrainingRun], analysis: Analysis, tasks: Sequence[str]
                  ) -> dict[str, RewardSeries]:
    """A GRPO run: its accuracy reward per step, and per checkpoint the mean over the steps since the previous one.
    Other runs (no reward): held-out greedy accuracy per checkpoint, averaged over ``tasks``."""
    def mean_accuracy(label: str, step: int) -> float:
        return float(np.mean([analysis.accuracy[label][task][step] for task in tasks]))

    out = {}
    for label, run in runs.items():
        if run.kind == "grpo":
            steps, reward = run.curve("accuracy")
            at = {c.step: c.metrics.get("accuracy") for c in run.checkpoints if c.step > 0}
            out[label] = RewardSeries("accuracy reward (per step)", steps, reward, at, at)
        else:
            steps = [0, *analysis.dyns[label].steps]
            out[label] = RewardSeries("held-out accuracy (greedy)", steps, [mean_accuracy(label, s) for s in steps],
                                      None, {s: mean_accuracy(label, s) for s in analysis.dyns[label].steps})
    return out


def correlations(dyns: Mapping[str, Dynamics], series: Mapping[str, RewardSeries]) -> dict[str, dict]:
    """Per run, :func:`toolkit.methods.dynamics.reward_correlation` of its emergent-head count with its series."""
    return {label: reward_correlation(dyns[label], series[label].at_checkpoint) for label in dyns}


@dataclass
class RunComparison:
    """Every pair of runs' final emergent heads compared (``final[(a, b)]``, run order), and every head ever
    emergent per run."""

    final: dict[tuple[str, str], HeadComparison]
    ever: dict[str, frozenset[Head]]


def compare_runs(dyns: Mapping[str, Dynamics]) -> RunComparison:
    labels = list(dyns)
    return RunComparison({(a, b): compare_heads(dyns[a].final_emergent, dyns[b].final_emergent)
                          for i, a in enumerate(labels) for b in labels[i + 1:]},
                         {label: d.ever_emergent for label, d in dyns.items()})


# ---- 4. head scaling ------------------------------------------------------------------------------------------------

@dataclass
class HeadScaling:
    """Accuracy per task with ``heads`` scaled. ``baseline[task]``: the unscaled model's accuracy (bootstrap CI);
    ``scaled[arm][task]``: ``accuracy`` (CI), ``change`` against the baseline (paired CI) and ``changed`` (the
    fraction of answers that differ from the unscaled model's, CI). Arms are ``"×1.3"`` and, with a placebo,
    ``"random ×1.3"``."""

    heads: list[Head]
    samples: int
    baseline: dict[str, dict]
    scaled: dict[str, dict[str, dict]]

    def to_results(self) -> dict:
        """Point estimates (the change with its interval) per arm and task, and the scaled heads."""
        return {arm: {t: {"accuracy": by[t]["accuracy"]["estimate"], "change": by[t]["change"],
                          "changed": by[t]["changed"]["estimate"]} for t in by}
                for arm, by in self.scaled.items()} | {"heads": self.heads}


def head_scaling(loaded: LoadedModel, heads: Iterable[Head], examples: Sequence[Example],
                 factors: Sequence[float] = SCALE_FACTORS, enable_thinking: bool = False, max_new_tokens: int = 16,
                 samples: int = 1, control_seed: int | None = 0) -> HeadScaling:
    """Accuracy per task with ``heads`` scaled by each factor during generation (``attn.hook_z``), against the
    unscaled model and, when ``control_seed`` is set, a random head set of the same size (none of ``heads``).

    Each problem's accuracy is the fraction of its ``samples`` answers that are right (greedy when ``samples=1``;
    sampled answers at temperature 1 use the same seed in every arm, so arms differ only by the scaling). Intervals:
    bootstrap over problems; changes are paired (:mod:`toolkit.evaluation.causal`).
    """
    heads = sorted(as_heads(heads))
    if not heads:
        raise ValueError("head_scaling needs at least one head")
    if not examples:
        raise ValueError("head_scaling needs at least one example")
    cfg = loaded.bridge.cfg
    conditions = [causal.Condition("unscaled")]
    conditions += [causal.Condition.on_heads(f"×{f:g}", heads, f).validate(loaded.bridge) for f in factors]
    if control_seed is not None:
        (placebo,) = causal.placebo_heads(heads, cfg.n_layers, cfg.n_heads, 1, seed=control_seed)
        conditions += [causal.Condition.on_heads(f"random ×{f:g}", placebo, f) for f in factors]
    sampling = (SamplingConfig() if samples == 1 else
                SamplingConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_samples=samples))
    got = causal.run(loaded.bridge, conditions, lambda c: behave(
        loaded, [e.prompt for e in examples], enable_thinking=enable_thinking,
        max_new_tokens=max_new_tokens, batch_size=64, sampling=sampling, seed=0).answers,
        show_progress=True, desc="head scaling")
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.task, []).append(i)

    def accuracy(answers: list[list[str]]) -> np.ndarray:
        return np.array([np.mean([a == e.answer for a in row]) for row, e in zip(answers, examples)])

    base_answers = got.pop("unscaled")
    base = accuracy(base_answers)
    scaled = {}
    for arm, answers in got.items():
        treated = accuracy(answers)
        changed = np.array([np.mean([a != b for a, b in zip(r, r0)]) for r, r0 in zip(answers, base_answers)])
        scaled[arm] = {t: {"accuracy": bootstrap_ci(treated[idx]), "change": causal.effect(treated[idx], base[idx]),
                           "changed": bootstrap_ci(changed[idx])} for t, idx in by_task.items()}
    return HeadScaling(heads, samples, {t: bootstrap_ci(base[idx]) for t, idx in by_task.items()}, scaled)


def heads_to_scale(dyn: Dynamics) -> list[Head]:
    """The run's final emergent heads, or if none every head ever emergent (sorted)."""
    return sorted(dyn.final_emergent or dyn.ever_emergent)


def scale_emergent_heads(loaded: LoadedModel, dyn: Dynamics, eval_examples: Mapping[str, Sequence[Example]],
                         factors: Sequence[float] = SCALE_FACTORS, enable_thinking: bool = False,
                         max_new_tokens: int = 16, samples: int = 1,
                         control_seed: int | None = 0) -> HeadScaling | None:
    """:func:`head_scaling` of :func:`heads_to_scale` in ``loaded`` (the start model) on every held-out problem;
    None when the run never had an emergent head. ``control_seed=None``: no random-head arm (notebook 04 compares
    with every same-size head set instead, :func:`toolkit.studies.grpo_dynamics.claims.scaling_tests`)."""
    heads = heads_to_scale(dyn)
    if not heads:
        return None
    return head_scaling(loaded, heads, [e for ex in eval_examples.values() for e in ex], factors=factors,
                        enable_thinking=enable_thinking, max_new_tokens=max_new_tokens, samples=samples,
                        control_seed=control_seed)
