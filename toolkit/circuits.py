"""Circuits over training checkpoints: emergent heads, cohorts, heatmaps, reward correlation, head scaling.

Method ("Thinking Sparks", DESIGN.md). For every checkpoint of a run (:mod:`toolkit.grpo`), an EAP-IG circuit on one
fixed task set (:mod:`toolkit.eap`: clean/corrupted pairs with the problem changed, KL metric, top-n edges, dead
nodes pruned); its heads are the circuit's attention heads. Against the start model's circuit B, with S_t the heads
of checkpoint t:

- **emergent** (new) heads at t: S_t − B; **maintained** base heads: S_t ∩ B;
- **newly active** at t: emergent heads not active at the previous checkpoint (S_t − S_{t−1} − B, with S_0 = B);
- **cohorts**: emergent heads grouped by the checkpoint where they first appeared; per cohort, how many members are
  active at each later checkpoint, and how long it survives (the last checkpoint with a member active, and the mean
  fraction of checkpoints from its birth on at which each member is active);
- the **heatmap**: one row per head active anywhere (B or any S_t), one column per checkpoint, each cell active or
  not, base heads and emergent heads drawn in different colours, rows of heads active at the final checkpoint marked,
  and each row's activation frequency (fraction of checkpoints at which it is active).

The correlation of the emergent-head count |S_t − B| with the accuracy reward across checkpoints uses
:func:`toolkit.core.stats.correlation` (Pearson and Spearman with p-values).

Snapshots are cached per model: ``<cache>/circuits/<analysis hash>/<weights fingerprint>.scores.json`` (the
:class:`toolkit.eap.Scores` JSON). The analysis hash covers the examples and EAP settings, the fingerprint the
checkpoint's weights, so an interrupted analysis continues where it stopped and the start model's circuit is shared
by every run from it.

Head scaling multiplies a head set's outputs (``attn.hook_z``, :func:`toolkit.core.interventions.scale`) during
generation, in the start model, and reports the accuracy change per task with paired bootstrap intervals
(:func:`toolkit.core.stats.paired_difference_ci`), beside a random head set of the same size as a placebo.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.colors import ListedColormap

from toolkit.core import interventions, models, stats, units
from toolkit.core.answers import extract_answer
from toolkit.core.cache import cache_root, model_fingerprint
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.io import atomic_write_json
from toolkit.core.progress import progress, quiet_library_bars

Head = tuple[int, int]


def _heads(heads: Iterable) -> frozenset[Head]:
    out = set()
    for h in heads:
        if len(h) != 2:
            raise ValueError(f"a head is a (layer, head) pair, got {h!r}")
        out.add((int(h[0]), int(h[1])))
    return frozenset(out)


# ---- dynamics over a sequence of head sets ----------------------------------------------------------------------

@dataclass
class Dynamics:
    """Head-set dynamics of a run against its start model (see the module docstring). Lists are per checkpoint,
    aligned with ``steps``; ``cohort_counts[c][i]`` is the number of cohort-``c`` heads active at ``steps[i]``."""

    steps: list[int]
    base: frozenset[Head]
    sets: list[frozenset[Head]]
    emergent: list[frozenset[Head]]
    maintained: list[frozenset[Head]]
    newly_active: list[frozenset[Head]]
    first_seen: dict[Head, int]
    cohorts: dict[int, frozenset[Head]]
    cohort_counts: dict[int, list[int]]
    cohort_survival: dict[int, dict] = field(default_factory=dict)
    snapshot_info: dict[int, dict] = field(default_factory=dict)  # per step: seconds, n_pairs, cached (if known)

    @property
    def n_emergent(self) -> list[int]:
        return [len(s) for s in self.emergent]

    @property
    def n_maintained(self) -> list[int]:
        return [len(s) for s in self.maintained]

    @property
    def final_emergent(self) -> frozenset[Head]:
        return self.emergent[-1]

    def summary(self) -> dict:
        """JSON-ready numbers: counts per checkpoint, cohorts and their survival, the final emergent set."""
        return {"steps": self.steps, "base_heads": sorted(map(list, self.base)), "n_emergent": self.n_emergent,
                "n_maintained": self.n_maintained, "n_newly_active": [len(s) for s in self.newly_active],
                "final_emergent": sorted(map(list, self.final_emergent)),
                "cohorts": {str(c): {"heads": sorted(map(list, hs)), **self.cohort_survival[c]}
                            for c, hs in self.cohorts.items()}}


def head_dynamics(base: Iterable[Head], snapshots: Mapping[int, Iterable[Head]]) -> Dynamics:
    """:class:`Dynamics` of the head sets ``snapshots`` (checkpoint step → heads, steps > 0) against ``base``."""
    if not snapshots:
        raise ValueError("head_dynamics needs at least one checkpoint")
    steps = sorted(snapshots)
    if steps[0] <= 0:
        raise ValueError(f"checkpoint steps must be positive (step 0 is the base model), got {steps}")
    base = _heads(base)
    sets = [_heads(snapshots[s]) for s in steps]
    emergent = [s - base for s in sets]
    maintained = [s & base for s in sets]
    newly = [e - prev for e, prev in zip(emergent, [base, *sets[:-1]])]
    first_seen: dict[Head, int] = {}
    for step, heads in zip(steps, emergent):
        for h in heads:
            first_seen.setdefault(h, step)
    cohorts = {c: frozenset(h for h, s in first_seen.items() if s == c) for c in steps
               if any(s == c for s in first_seen.values())}
    counts = {c: [len(members & e) if step >= c else 0 for step, e in zip(steps, emergent)]
              for c, members in cohorts.items()}
    survival = {}
    for c, members in cohorts.items():
        later = [(step, e) for step, e in zip(steps, emergent) if step >= c]
        alive = [step for step, e in later if members & e]
        survival[c] = {"size": len(members), "active_at_final": len(members & emergent[-1]),
                       "last_active": max(alive), "checkpoints_alive": len(alive),
                       "mean_lifetime": float(np.mean([sum(h in e for _, e in later) / len(later) for h in members]))}
    return Dynamics(steps, base, sets, emergent, maintained, newly, first_seen, cohorts, counts, survival)


@dataclass
class Heatmap:
    """Rows: heads (sorted by layer, head) active in the base circuit or at any checkpoint; columns: ``steps``.
    ``active[r, c]`` whether head r is in checkpoint c's circuit; ``is_base[r]`` whether it is a base head;
    ``final[r]`` whether it is active at the last checkpoint; ``frequency[r]`` the fraction of checkpoints at which it
    is active."""

    heads: list[Head]
    steps: list[int]
    active: np.ndarray
    is_base: np.ndarray
    final: np.ndarray
    frequency: np.ndarray

    def codes(self) -> np.ndarray:
        """Cell codes for drawing: 0 inactive, 1 active base head, 2 active emergent head."""
        return np.where(self.active, np.where(self.is_base[:, None], 1, 2), 0)


def heatmap(dyn: Dynamics) -> Heatmap:
    """The layer-head × checkpoint activation :class:`Heatmap` of ``dyn``."""
    heads = sorted(dyn.base.union(*dyn.sets))
    active = np.array([[h in s for s in dyn.sets] for h in heads], dtype=bool).reshape(len(heads), len(dyn.steps))
    return Heatmap(heads, list(dyn.steps), active, np.array([h in dyn.base for h in heads], dtype=bool),
                   active[:, -1].copy(), active.mean(axis=1) if len(heads) else np.zeros(0))


def reward_correlation(dyn: Dynamics, rewards: Mapping[int, float]) -> dict:
    """Pearson and Spearman correlation (with p-values, :func:`toolkit.core.stats.correlation`) between the emergent-head
    count and ``rewards`` (checkpoint step → reward) over the checkpoints of ``dyn``."""
    missing = [s for s in dyn.steps if s not in rewards]
    if missing:
        raise ValueError(f"no reward for checkpoint steps {missing}")
    return stats.correlation(dyn.n_emergent, [rewards[s] for s in dyn.steps])


def compare_sets(a: Iterable[Head], b: Iterable[Head]) -> dict:
    """Sizes and overlap of two head sets: ``n_a``, ``n_b``, ``shared``, ``only_a``, ``only_b`` (sorted lists) and
    the Jaccard index (NaN if both are empty)."""
    a, b = _heads(a), _heads(b)
    union = a | b
    return {"n_a": len(a), "n_b": len(b), "shared": sorted(a & b), "only_a": sorted(a - b), "only_b": sorted(b - a),
            "jaccard": len(a & b) / len(union) if union else float("nan")}


# ---- snapshots (EAP-IG per checkpoint, cached) --------------------------------------------------------------------

@dataclass(frozen=True)
class SnapshotSettings:
    """How each checkpoint's circuit is built (:mod:`toolkit.eap`)."""

    enable_thinking: bool = False
    method: str = "eap-ig"
    ig_steps: int = 5
    metric: str = "kl"
    top_n: int = 200
    batch_size: int = 8
    corruption: str = "problem"


def analysis_dir(examples: Sequence, settings: SnapshotSettings):
    """The cache folder of one analysis (examples and EAP settings; ``top_n`` is applied after caching)."""
    payload = json.dumps({"examples": [getattr(e, "to_dict", lambda e=e: e)() for e in examples],
                          "settings": {k: v for k, v in settings.__dict__.items() if k != "top_n"}},
                         sort_keys=True, default=str)
    return cache_root() / "circuits" / hashlib.sha256(payload.encode()).hexdigest()[:12]


def snapshot_scores(specs: Mapping[int, str], examples: Sequence, settings: SnapshotSettings = SnapshotSettings(),
                    device: str = "auto") -> dict[int, object]:
    """EAP scores (:class:`toolkit.eap.Scores`) of each model in ``specs`` (step → model spec or checkpoint folder),
    computed once per model weights and cached, so an interrupted analysis continues where it stopped. Each
    ``Scores.meta`` holds ``snapshot_seconds`` (load, pairs and attribution), ``n_pairs`` and ``cached``."""
    from toolkit import eap

    if not examples:
        raise ValueError("snapshot_scores needs at least one example")
    folder = analysis_dir(examples, settings)
    out = {}
    for step, spec in progress(sorted(specs.items()), desc="circuit snapshots", total=len(specs)):
        path = folder / f"{model_fingerprint(spec)}.scores.json"
        if path.exists():
            out[step] = eap.Scores.load(path)
            out[step].meta["cached"] = True
            continue
        t0 = time.perf_counter()
        with quiet_library_bars():
            loaded = models.load(spec, device=device)
        try:
            pairs = eap.make_pairs(loaded, examples, enable_thinking=settings.enable_thinking,
                                   corruption=settings.corruption)
        except eap.EAPError as err:
            raise eap.EAPError(f"checkpoint at step {step} ({spec}): {err}") from err
        scores = eap.attribute(loaded, pairs, method=settings.method, steps=settings.ig_steps, metric=settings.metric,
                               batch_size=settings.batch_size, show_progress=False)
        scores.meta.update(snapshot_seconds=round(time.perf_counter() - t0, 3), n_pairs=len(pairs), spec=spec)
        scores.save(path)
        scores.meta["cached"] = False
        out[step] = scores
    return out


def circuit_heads(scores, top_n: int) -> frozenset[Head]:
    """The heads of the top-``top_n`` circuit (absolute scores, dead nodes pruned) of ``scores``."""
    from toolkit import eap

    return _heads(eap.select(scores, top_n=top_n, absolute=True, method="top", prune=True).heads)


def run_dynamics(specs: Mapping[int, str], examples: Sequence, settings: SnapshotSettings = SnapshotSettings(),
                 device: str = "auto") -> Dynamics:
    """Circuits of every checkpoint in ``specs`` (which must include step 0, the start model) → :class:`Dynamics`."""
    if 0 not in specs:
        raise ValueError("specs must include step 0, the start model, whose circuit is the base")
    scores = snapshot_scores(specs, examples, settings, device)
    heads = {step: circuit_heads(s, settings.top_n) for step, s in scores.items()}
    dyn = head_dynamics(heads[0], {s: h for s, h in heads.items() if s > 0})
    dyn.snapshot_info = {step: {k: s.meta.get(k) for k in ("snapshot_seconds", "n_pairs", "cached")}
                         for step, s in scores.items()}
    return dyn


# ---- accuracy per checkpoint and head scaling ---------------------------------------------------------------------

def answers(model, tokenizer, examples: Sequence, enable_thinking: bool = False, max_new_tokens: int = 16,
            samples: int = 1, batch_size: int = 64, seed: int = 0) -> list[list[str]]:
    """Final answers per example: one greedy answer (``samples=1``), or ``samples`` answers sampled at temperature 1
    (no top-k/top-p) from a fixed ``seed``, so two calls that differ only by a hook share their random numbers."""
    sampling = (SamplingConfig() if samples == 1 else
                SamplingConfig(do_sample=True, temperature=1.0, top_p=1.0, top_k=0, num_samples=samples))
    outs = generate(model, tokenizer, [e.prompt for e in examples], enable_thinking=enable_thinking,
                    max_new_tokens=max_new_tokens, sampling=sampling, batch_size=batch_size, seed=seed)
    return [[extract_answer(o) for o in row] for row in outs]


def correct(model, tokenizer, examples: Sequence, enable_thinking: bool = False, max_new_tokens: int = 16,
            batch_size: int = 64) -> list[bool]:
    """Greedy exact-answer correctness per example (the accuracy reward of :mod:`toolkit.grpo`)."""
    got = answers(model, tokenizer, examples, enable_thinking, max_new_tokens, batch_size=batch_size)
    return [row[0] == e.answer for row, e in zip(got, examples)]


def checkpoint_accuracy(specs: Mapping[int, str], examples: Sequence, enable_thinking: bool = False,
                        max_new_tokens: int = 16, device: str = "auto") -> dict[int, float]:
    """Greedy held-out accuracy of each checkpoint, cached beside the snapshots (per weights, examples, mode)."""
    key = hashlib.sha256(json.dumps([[e.prompt, e.answer] for e in examples] + [enable_thinking, max_new_tokens])
                         .encode()).hexdigest()[:12]
    out = {}
    for step, spec in progress(sorted(specs.items()), desc="checkpoint accuracy", total=len(specs)):
        path = cache_root() / "circuits" / "accuracy" / f"{model_fingerprint(spec)}-{key}.json"
        if path.exists():
            out[step] = json.loads(path.read_text())["accuracy"]
            continue
        with quiet_library_bars():
            loaded = models.load(spec, device=device)
        out[step] = float(np.mean(correct(loaded.hf, loaded.tokenizer, examples, enable_thinking, max_new_tokens)))
        atomic_write_json(path, {"spec": spec, "accuracy": out[step]})
    return out


def head_scaling(loaded, heads: Iterable[Head], examples: Sequence, factors: Sequence[float] = (1.3, 0.5),
                 enable_thinking: bool = False, max_new_tokens: int = 16, samples: int = 1,
                 control_seed: int | None = 0) -> dict:
    """Accuracy per task with ``heads`` scaled by each factor during generation, against the unscaled model.

    Each problem's accuracy is the fraction of its ``samples`` answers that are right (greedy when ``samples=1``;
    sampled answers use the same seed in every arm, so arms differ only by the scaling). Also reports ``changed``:
    the fraction of answers that differ from the unscaled model's (same sample index).

    Returns ``{"heads", "baseline": {task: ci}, "scaled": {label: {task: {"accuracy": ci, "change": ci,
    "changed": ci}}}}`` with labels like ``"×1.3"`` and, when ``control_seed`` is set, ``"random ×1.3"`` for a random
    head set of the same size (none of ``heads``). Intervals: bootstrap over problems; changes are paired.
    """
    heads = sorted(_heads(heads))
    if not heads:
        raise ValueError("head_scaling needs at least one head")
    if not examples:
        raise ValueError("head_scaling needs at least one example")
    cfg = loaded.bridge.cfg
    sites = units.head_sites(heads)
    for site in sites:
        site.validate(loaded.bridge)
    by_task: dict[str, list[int]] = {}
    for i, e in enumerate(examples):
        by_task.setdefault(e.task, []).append(i)

    def run(site_list, factor) -> list[list[str]]:
        if site_list is None:
            return answers(loaded.hf, loaded.tokenizer, examples, enable_thinking, max_new_tokens, samples)
        with interventions.scale(loaded.bridge, site_list, factor):
            return answers(loaded.hf, loaded.tokenizer, examples, enable_thinking, max_new_tokens, samples)

    def accuracy(got: list[list[str]]) -> np.ndarray:
        return np.array([np.mean([a == e.answer for a in row]) for row, e in zip(got, examples)])

    base_answers = run(None, 1.0)
    base = accuracy(base_answers)
    arms = {f"×{f:g}": (sites, f) for f in factors}
    if control_seed is not None:
        placebo = units.head_sites(units.random_heads(cfg.n_layers, cfg.n_heads, len(heads),
                                                                       exclude=heads, seed=control_seed))
        arms |= {f"random ×{f:g}": (placebo, f) for f in factors}
    result = {"heads": [list(h) for h in heads], "samples": samples,
              "baseline": {t: stats.bootstrap_ci(base[idx]) for t, idx in by_task.items()}, "scaled": {}}
    for label, (site_list, factor) in progress(arms.items(), desc="head scaling", total=len(arms)):
        got = run(site_list, factor)
        treated = accuracy(got)
        changed = np.array([np.mean([a != b for a, b in zip(r, r0)]) for r, r0 in zip(got, base_answers)])
        result["scaled"][label] = {t: {"accuracy": stats.bootstrap_ci(treated[idx]),
                                       "change": stats.paired_difference_ci(treated[idx], base[idx]),
                                       "changed": stats.bootstrap_ci(changed[idx])}
                                   for t, idx in by_task.items()}
    return result


# ---- figures ----------------------------------------------------------------------------------------------------

def dynamics_figure(dyn: Dynamics, reward_steps: Sequence[int], rewards: Sequence[float], title: str,
                    reward_label: str = "accuracy reward", marks: Mapping[int, float] | None = None):
    """(A) emergent heads as stacked areas by cohort, with the maintained base heads as a line; (B) the reward (or
    accuracy) curve, with ``marks`` (checkpoint step → value, e.g. the mean since the previous checkpoint) as dots."""
    fig, (ax_a, ax_b) = plt.subplots(1, 2, figsize=(11, 3.4))
    x = [0, *dyn.steps]
    cohorts = sorted(dyn.cohorts)
    if cohorts:
        ax_a.stackplot(x, [[0, *dyn.cohort_counts[c]] for c in cohorts],
                       labels=[f"cohort @ {c}" for c in cohorts], alpha=0.8,
                       colors=plt.cm.viridis(np.linspace(0.1, 0.9, len(cohorts))))
    ax_a.plot(x, [len(dyn.base), *dyn.n_maintained], color="black", lw=1.5, label="base heads maintained")
    ax_a.set_xlabel("checkpoint (step)")
    ax_a.set_ylabel("heads in circuit")
    ax_a.set_title(f"{title}: (A) emergent heads by cohort", fontsize=10)
    ax_a.legend(fontsize=7, ncols=2)
    ax_b.plot(reward_steps, rewards, color="C3", lw=1, alpha=0.7)
    if marks:
        ax_b.plot(list(marks), list(marks.values()), "o-", color="C3", ms=4, lw=1.5, label="checkpoint mean")
        ax_b.legend(fontsize=7)
    ax_b.set_xlabel("step")
    ax_b.set_ylabel(reward_label)
    ax_b.set_title(f"{title}: (B) {reward_label}", fontsize=10)
    for ax in (ax_a, ax_b):
        ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


HEATMAP_COLORS = ListedColormap(["#f2f2f2", "#4c72b0", "#dd8452"])  # inactive, base head, emergent head


def heatmap_figure(hm: Heatmap, title: str = ""):
    """(C) rows: heads (``L{l}H{h}``, frequency in brackets, ``★`` when active at the final checkpoint); columns:
    checkpoints; blue = active base head, orange = active emergent head."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(hm.steps) + 2.5), max(2.0, 0.22 * len(hm.heads) + 1)))
    if len(hm.heads):
        ax.imshow(hm.codes(), cmap=HEATMAP_COLORS, vmin=0, vmax=2, aspect="auto", interpolation="nearest")
    ax.set_xticks(range(len(hm.steps)), [str(s) for s in hm.steps], fontsize=7, rotation=90)
    ax.set_yticks(range(len(hm.heads)),
                  [f"{'★ ' if f else ''}L{lay}H{h} ({q:.0%})" for (lay, h), f, q in zip(hm.heads, hm.final,
                                                                                         hm.frequency)], fontsize=7)
    ax.set_xlabel("checkpoint (step)")
    ax.set_title(title or "(C) head activation across checkpoints (blue: base, orange: emergent, ★: final)",
                 fontsize=10)
    fig.tight_layout()
    return fig


def scaling_figure(result: dict):
    """Per task and scaling arm: the accuracy change (percentage points, 95% paired interval) and the share of answers
    that changed (95% interval); hatched bars are the random-head placebo."""
    arms = list(result["scaled"])
    task_names = list(result["baseline"])
    fig, axes = plt.subplots(1, 2, figsize=(2.4 * len(task_names) + 6, 3.2))
    width = 0.8 / len(arms)
    panels = ((axes[0], "change", "accuracy change (points)"), (axes[1], "changed", "answers changed (%)"))
    for ax, key, label in panels:
        for i, arm in enumerate(arms):
            ci = [result["scaled"][arm][t][key] for t in task_names]
            xs = np.arange(len(task_names)) + (i - (len(arms) - 1) / 2) * width
            est = np.array([100 * c["estimate"] for c in ci])
            err = np.array([[100 * (c["estimate"] - c["low"]) for c in ci],
                            [100 * (c["high"] - c["estimate"]) for c in ci]])
            ax.bar(xs, est, width, yerr=err, capsize=3, label=arm, hatch="//" if arm.startswith("random") else "",
                   color=f"C{i % (len(arms) // 2 or 1)}", edgecolor="white")
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_xticks(range(len(task_names)), task_names)
        ax.set_ylabel(label)
        ax.spines[["top", "right"]].set_visible(False)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    return fig


MAP_COLORS = ListedColormap(["#f2f2f2", "#4c72b0", "#dd8452", "#b0b0b0"])  # none, base kept, emergent, base lost


def checkpoint_map(dyn: Dynamics, index: int, n_layers: int, n_heads: int) -> np.ndarray:
    """Layer × head codes at checkpoint ``dyn.steps[index]``: 0 in neither circuit, 1 base head kept, 2 emergent
    head, 3 base head absent at this checkpoint."""
    grid = np.zeros((n_layers, n_heads), dtype=int)
    for (lay, h) in dyn.base - dyn.sets[index]:
        grid[lay, h] = 3
    for (lay, h) in dyn.maintained[index]:
        grid[lay, h] = 1
    for (lay, h) in dyn.emergent[index]:
        grid[lay, h] = 2
    return grid


def checkpoint_map_figure(dyn: Dynamics, index: int, n_layers: int, n_heads: int, title: str = ""):
    """The :func:`checkpoint_map` of one checkpoint as a layer × head grid."""
    grid = checkpoint_map(dyn, index, n_layers, n_heads)
    fig, ax = plt.subplots(figsize=(0.5 * n_heads + 2.5, 0.4 * n_layers + 1.2))
    ax.imshow(grid, cmap=MAP_COLORS, vmin=0, vmax=3, aspect="auto")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title or f"step {dyn.steps[index]}: blue base kept, orange emergent, grey base lost", fontsize=9)
    fig.tight_layout()
    return fig


def explorer(dyns: Mapping[str, Dynamics], n_layers: int, n_heads: int):
    """A ``run`` dropdown and a ``checkpoint`` slider: that checkpoint's circuit heads against the base circuit
    (layer × head grid) and the emergent heads with the checkpoint where each first appeared."""
    import ipywidgets as widgets

    from toolkit.views.widgets import show

    run = widgets.Dropdown(options=list(dyns), description="run")
    longest = max(len(d.steps) for d in dyns.values())
    index = widgets.IntSlider(value=0, min=0, max=longest - 1, description="checkpoint")
    out = widgets.Output()

    def refresh(*_):
        dyn = dyns[run.value]
        i = min(index.value, len(dyn.steps) - 1)
        step = dyn.steps[i]
        rows = "".join(f"<li>L{lay}H{h}: first at step {dyn.first_seen[(lay, h)]}</li>"
                       for lay, h in sorted(dyn.emergent[i]))
        text = (f"<b>{run.value}, step {step}</b> (checkpoint {i + 1} of {len(dyn.steps)}): "
                f"{len(dyn.emergent[i])} emergent heads, {len(dyn.maintained[i])} of {len(dyn.base)} base heads kept"
                f"<ul>{rows}</ul>")
        show(out, checkpoint_map_figure(dyn, i, n_layers, n_heads, f"{run.value} step {step}"), text)

    run.observe(refresh, names="value")
    index.observe(refresh, names="value")
    refresh()
    return widgets.VBox([widgets.HBox([run, index]), out])
