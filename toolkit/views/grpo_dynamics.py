"""Views of notebook 04 (GRPO dynamics): training curves, emergent heads by cohort beside the reward, the activation
heatmap, emergent counts against the base-vs-itself band, head scaling, one checkpoint's layer × head map, and the
checkpoint explorer. They take :mod:`toolkit.studies.grpo_dynamics`, :mod:`toolkit.studies.grpo_dynamics.claims` and
:mod:`toolkit.methods.dynamics` results."""

from __future__ import annotations

from collections.abc import Mapping

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from toolkit.core.stats import format_ci, proportion_ci
from toolkit.methods.dynamics import Dynamics, Heatmap, checkpoint_map
from toolkit.studies.grpo_dynamics import Analysis, HeadScaling, RewardSeries, RunComparison
from toolkit.studies.grpo_dynamics.claims import CheckpointTests
from toolkit.training.runs import TrainingRun
from toolkit.views.explorer import explorer as explorer_scaffold
from toolkit.views.style import EMERGENCE_COLORS, despine, head_set_cmap, label_head_grid


def _head_names(heads) -> str:
    return ", ".join(f"L{a}H{b}" for a, b in sorted(heads))


# ---- training ---------------------------------------------------------------------------------------------------

def runs_text(runs: Mapping[str, TrainingRun]) -> str:
    """One line per run: its checkpoints and folder, and whether it was trained now (steps per second) or reused."""
    return "\n".join(f"{label}: {len(run.checkpoints) - 1} checkpoints in {run.path}; "
                     + ("reused from the cache" if run.reused else
                        f"{run.steps_trained} steps in {run.seconds:.0f} s = {run.steps_per_second:.2f} steps/s")
                     for label, run in runs.items())


def curves_figure(runs: Mapping[str, TrainingRun]):
    """Per run, the per-step training signal: GRPO's total, accuracy and format rewards; SFT's loss."""
    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 3.2), squeeze=False)
    for ax, (label, run) in zip(axes[0], runs.items()):
        keys = ("reward", "accuracy", "format") if run.kind == "grpo" else ("loss",)
        for key in keys:
            steps, values = run.curve(key)
            ax.plot(steps, values, label=key, lw=1.2)
        ax.set_title(f"{label}: {'rewards' if run.kind == 'grpo' else 'training loss'} per step", fontsize=10)
        ax.set_xlabel("step")
        ax.legend(fontsize=8)
        despine(ax)
    fig.tight_layout()
    return fig


# ---- circuits per checkpoint ---------------------------------------------------------------------------------------

def analysis_text(analysis: Analysis) -> str:
    """Snapshot count and time, pairs per snapshot, and per run its base circuit and head counts per checkpoint."""
    seconds = analysis.snapshot_seconds
    n = sum(len(d.snapshot_info) for d in analysis.dyns.values())
    lines = [f"circuit snapshots: {n} (the base shared), {seconds:.2f} s each when computed" if seconds is not None
             else "all snapshots from the cache", f"pairs per snapshot: {analysis.pairs_per_snapshot}"]
    lines += [f"{label}: base circuit {sorted(d.base)}; emergent heads per checkpoint {d.n_emergent}; "
              f"maintained {d.n_maintained}" for label, d in analysis.dyns.items()]
    return "\n".join(lines)


def dynamics_figure(dyn: Dynamics, series: RewardSeries, title: str):
    """(A) emergent heads as stacked areas by cohort, with the maintained base heads as a line; (B) the reward (or
    accuracy) curve of ``series``, with its ``marks`` (e.g. the mean since the previous checkpoint) as dots."""
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
    ax_b.plot(series.steps, series.values, color="C3", lw=1, alpha=0.7)
    if series.marks:
        ax_b.plot(list(series.marks), list(series.marks.values()), "o-", color="C3", ms=4, lw=1.5,
                  label="checkpoint mean")
        ax_b.legend(fontsize=7)
    ax_b.set_xlabel("step")
    ax_b.set_ylabel(series.label)
    ax_b.set_title(f"{title}: (B) {series.label}", fontsize=10)
    despine(ax_a, ax_b)
    fig.tight_layout()
    return fig


def cohort_table(dyn: Dynamics, label: str) -> str:
    """HTML: one row per cohort — its birth step, heads, members active at the end, last active step, mean
    lifetime."""
    rows = "".join(f"<tr><td>{c}</td><td>{_head_names(dyn.cohorts[c])}</td>"
                   f"<td>{s['active_at_final']}/{s['size']}</td><td>{s['last_active']}</td>"
                   f"<td>{s['mean_lifetime']:.2f}</td></tr>" for c, s in dyn.cohort_survival.items())
    return (f"<b>{label} cohorts</b><table><tr><th>born at step</th><th>heads</th><th>active at the end</th>"
            f"<th>last active</th><th>mean lifetime (fraction of later checkpoints)</th></tr>{rows}</table>")


def show_cohorts(dyns: Mapping[str, Dynamics]) -> None:
    """Display :func:`cohort_table` of every run."""
    for label, d in dyns.items():
        display(HTML(cohort_table(d, label)))


def heatmap_figure(hm: Heatmap, label: str = ""):
    """(C) rows: heads (``L{l}H{h}``, frequency in brackets, ``★`` when active at the final checkpoint); columns:
    checkpoints; blue = active base head, orange = active emergent head."""
    fig, ax = plt.subplots(figsize=(max(4.0, 0.35 * len(hm.steps) + 2.5), max(2.0, 0.22 * len(hm.heads) + 1)))
    if len(hm.heads):
        ax.imshow(hm.codes(), cmap=head_set_cmap(EMERGENCE_COLORS[:3]), vmin=0, vmax=2, aspect="auto",
                  interpolation="nearest")
    ax.set_xticks(range(len(hm.steps)), [str(s) for s in hm.steps], fontsize=7, rotation=90)
    ax.set_yticks(range(len(hm.heads)),
                  [f"{'★ ' if f else ''}L{lay}H{h} ({q:.0%})" for (lay, h), f, q in zip(hm.heads, hm.final,
                                                                                         hm.frequency)], fontsize=7)
    ax.set_xlabel("checkpoint (step)")
    ax.set_title(f"(C) {label}: heads across checkpoints (blue base, orange emergent, ★ final)" if label else
                 "(C) head activation across checkpoints (blue: base, orange: emergent, ★: final)", fontsize=10)
    fig.tight_layout()
    return fig


def comparison_text(corr: Mapping[str, dict], comparison: RunComparison, dyns: Mapping[str, Dynamics]) -> str:
    """The correlations, every pair of runs' final emergent heads, and the heads ever emergent per run."""
    lines = [f"{label}: emergent heads vs {'accuracy reward' if label == 'GRPO' else 'held-out accuracy'} over "
             f"{c['n']} checkpoints: Pearson r = {c['pearson_r']:.2f} (p = {c['pearson_p']:.3f}), "
             f"Spearman ρ = {c['spearman_r']:.2f} (p = {c['spearman_p']:.3f})" for label, c in corr.items()]
    for (a, b), comp in comparison.final.items():
        final = comp.to_dict()
        lines.append(f"final emergent heads: {a} {final['n_a']}, {b} {final['n_b']}, shared {len(final['shared'])}, "
                     f"Jaccard {final['jaccard']:.2f}")
    lines.append("heads ever emergent: " + ", ".join(f"{label} {len(s)}" for label, s in comparison.ever.items())
                 + "; mean emergent per checkpoint: "
                 + ", ".join(f"{label} {np.mean(d.n_emergent):.2f}" for label, d in dyns.items()))
    return "\n".join(lines)


def accuracy_figure(analysis: Analysis):
    """Per task, each run's greedy held-out accuracy per checkpoint with its 95% Wilson interval (step 0: the start
    model, shared by every run), and the accuracy of always giving the most frequent answer (dotted)."""
    tasks = list(next(iter(analysis.correct.values())))
    fig, axes = plt.subplots(1, len(tasks), figsize=(4.6 * len(tasks), 3.2), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks):
        for i, (label, by) in enumerate(analysis.correct.items()):
            steps = sorted(by[task])
            ci = [proportion_ci(int(by[task][s].sum()), len(by[task][s])) for s in steps]
            ax.plot(steps, [100 * c["estimate"] for c in ci], marker="o", ms=3, color=f"C{i}", label=label)
            ax.fill_between(steps, [100 * c["low"] for c in ci], [100 * c["high"] for c in ci], color=f"C{i}",
                            alpha=0.15, lw=0)
        ax.axhline(100 * analysis.most_frequent_share[task], color="grey", ls=":", lw=1,
                   label="always the most frequent answer")
        ax.set_title(f"{task}: held-out accuracy ({len(analysis.eval_examples[task])} problems)", fontsize=10)
        ax.set_xlabel("checkpoint (step)")
        despine(ax)
    axes[0][0].set_ylabel("greedy accuracy, % (95% Wilson)")
    axes[0][-1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def null_band_figure(tests: CheckpointTests, analysis: Analysis):
    """Per kind of inputs (own pairs, fixed pairs): each run's count of heads not in the start model's circuit per
    checkpoint (lines), its count of heads beyond the base-vs-itself null (dots), and the null's band for the first
    count (grey: between its 5% and 95% quantiles, dashed: its mean)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.4), sharey=True)
    for ax, (inputs, dyns) in zip(axes, (("own", analysis.dyns), ("fixed", analysis.fixed)), strict=True):
        band = tests.nulls[inputs].set_difference
        lo, hi = np.quantile(band, [0.05, 0.95])
        steps = sorted({s for d in dyns.values() for s in d.steps})
        ax.fill_between(steps, lo, hi, color="#d9d9d9", step="mid", label="base-vs-itself 5–95%")
        ax.axhline(np.mean(band), color="grey", ls="--", lw=0.8)
        for i, (label, d) in enumerate(dyns.items()):
            ax.plot(d.steps, d.n_emergent, marker="o", ms=3, color=f"C{i}", label=f"{label}: not in start circuit")
            null_counts = [tests.tests[inputs][label][s].count for s in d.steps]
            ax.plot(d.steps, null_counts, ls="none", marker="s", ms=5, mfc="none", color=f"C{i}",
                    label=f"{label}: beyond the null")
        ax.set_title(f"{inputs} pairs", fontsize=10)
        ax.set_xlabel("checkpoint (step)")
        despine(ax)
    axes[0].set_ylabel("heads")
    axes[1].legend(fontsize=7)
    fig.suptitle("Emergent heads per checkpoint against what resampling the start model gives", fontsize=10)
    fig.tight_layout()
    return fig


# ---- head scaling -------------------------------------------------------------------------------------------------

def scaling_table(result: HeadScaling | None) -> str:
    """HTML: the scaled heads, and per arm and task the accuracy with its change and the share of answers changed
    (a sentence when there was nothing to scale)."""
    if result is None:
        return "the run produced no emergent heads: nothing to scale"

    def cell(by: dict) -> str:
        ch = by["change"]
        return (f"<td>{format_ci(by['accuracy'])}<br><small>change {100 * ch['estimate']:+.1f} "
                f"[{100 * ch['low']:+.1f}, {100 * ch['high']:+.1f}] points; "
                f"{100 * by['changed']['estimate']:.0f}% of answers changed</small></td>")

    rows = "".join(f"<tr><td>{arm}</td>" + "".join(cell(by[t]) for t in result.baseline) + "</tr>"
                   for arm, by in result.scaled.items())
    head = "".join(f"<th>{t}</th>" for t in result.baseline)
    base_row = "".join(f"<td>{format_ci(ci)}</td>" for ci in result.baseline.values())
    return (f"Scaled heads: {_head_names(result.heads)}<table><tr><th>arm</th>{head}</tr>"
            f"<tr><td>unscaled</td>{base_row}</tr>{rows}</table>")


# ---- one checkpoint, and the explorer ----------------------------------------------------------------------------

def checkpoint_map_figure(dyn: Dynamics, index: int, n_layers: int, n_heads: int, title: str = ""):
    """The :func:`toolkit.methods.dynamics.checkpoint_map` of one checkpoint as a layer × head grid."""
    grid = checkpoint_map(dyn, index, n_layers, n_heads)
    fig, ax = plt.subplots(figsize=(0.5 * n_heads + 2.5, 0.4 * n_layers + 1.2))
    ax.imshow(grid, cmap=head_set_cmap(EMERGENCE_COLORS), vmin=0, vmax=3, aspect="auto")
    label_head_grid(ax, n_layers, n_heads,
                    title or f"step {dyn.steps[index]}: blue base kept, orange emergent, grey base lost", fontsize=9)
    fig.tight_layout()
    return fig


def explorer(dyns: Mapping[str, Dynamics], n_layers: int, n_heads: int) -> widgets.VBox:
    """A ``run`` dropdown and a ``checkpoint`` slider: that checkpoint's circuit heads against the base circuit
    (layer × head grid) and the emergent heads with the checkpoint where each first appeared."""
    run = widgets.Dropdown(options=list(dyns), description="run")
    longest = max(len(d.steps) for d in dyns.values())
    index = widgets.IntSlider(value=0, min=0, max=longest - 1, description="checkpoint")

    def render():
        dyn = dyns[run.value]
        i = min(index.value, len(dyn.steps) - 1)
        step = dyn.steps[i]
        rows = "".join(f"<li>L{lay}H{h}: first at step {dyn.first_seen[(lay, h)]}</li>"
                       for lay, h in sorted(dyn.emergent[i]))
        text = (f"<b>{run.value}, step {step}</b> (checkpoint {i + 1} of {len(dyn.steps)}): "
                f"{len(dyn.emergent[i])} emergent heads, {len(dyn.maintained[i])} of {len(dyn.base)} base heads kept"
                f"<ul>{rows}</ul>")
        return [checkpoint_map_figure(dyn, i, n_layers, n_heads, f"{run.value} step {step}"), text]

    return explorer_scaffold([run, index], render, layout=[widgets.HBox([run, index])])
