"""Views of notebook 05 (think on/off): layer × head maps of both modes' circuits, faithfulness and pass@k curves,
the Table-3-like table, text summaries, and the explorer of sampled answers (data from
:mod:`toolkit.studies.think_on_off`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np
import torch

from toolkit.core.chat import mode_label
from toolkit.core.generation import SamplingConfig
from toolkit.core.grading import grade, resolve_grader
from toolkit.core.models import LoadedModel
from toolkit.core.units import HeadComparison
from toolkit.evaluation.behaviour import grading_spec
from toolkit.evaluation.causal import Condition
from toolkit.organism import tasks
from toolkit.studies import think_on_off as study
from toolkit.studies.think_on_off import TASK_LABELS, THINK_OFF, THINK_ON, ModeCircuits, Samples
from toolkit.views.explorer import explorer as explorer_scaffold
from toolkit.views.explorer import show
from toolkit.views.style import MODE_COLORS, MODE_SET_COLORS, despine, head_set_cmap

PALETTE = ["#c62828", "#6a3d9a", "#2e7d32", "#00838f", "#8d6e63", "#ad1457"]


# ---------------------------------------------------------------------------------------------------- text


def circuits_summary(circuits: ModeCircuits) -> str:
    """Pairs per mode (with one example), both circuits, head-set sizes and the off-only / on-only heads."""
    lines = []
    for mode, p in circuits.pairs.items():
        r = p.records[0]
        why = "; ".join(sorted({d["reason"] for d in p.dropped}))
        lines.append(f"{mode}: {len(p)} pairs ({len(p.dropped)} problems dropped{': ' + why if why else ''}); "
                     f"e.g. {r['prompt']!r} vs {r['corrupted_prompt']!r}: prefix {r['response_prefix'][-24:]!r} -> "
                     f"{r['clean_next']!r} / {r['corrupted_next']!r}")
    lines.append(str({mode: c for mode, c in circuits.circuits.items()}))
    lines.append(f"head sets: {study.set_counts(circuits.sets)}")
    lines.append(f"off-only heads: {sorted(circuits.sets.only_b)} | on-only: {sorted(circuits.sets.only_a)}")
    return "\n".join(lines)


def sweep_markdown(sweep: Sequence[Mapping]) -> str:
    """The head-set sweep as a Markdown table, one row per circuit size."""
    return ("| top_n | edges on / off | heads on / off | on-only | off-only | shared |\n|---|---|---|---|---|---|\n"
            + "\n".join(f"| {r['top_n']} | {r['on_edges']} / {r['off_edges']} | {r['on_circuit']} / "
                        f"{r['off_circuit']} | {r['on_only']} | {r['off_only']} | {r['shared']} |" for r in sweep))


def _heads(heads) -> str:
    return ", ".join(f"L{a}H{b}" for a, b in sorted(heads)) or "none"


def stable_markdown(stable, edges: Mapping[str, tuple], level: float = 0.8) -> str:
    """Per mode: edges for ``level`` recovery with its bootstrap interval and the stable head set; then the stable
    off-only set (``stable``: :class:`toolkit.studies.think_on_off.sets.StableComparison`, ``edges``:
    ``edges_bootstrap``)."""
    from toolkit.studies.think_on_off.sets import interval

    def size(x):
        return "beyond the sweep" if not np.isfinite(x) else f"{x:g}"

    rows = [f"| mode | edges for {level:.0%} recovery [95% interval over pairs] | stable heads (inclusion ≥ "
            f"{stable.on.threshold:g}) |", "|---|---|---|"]
    for mode, boot in ((THINK_ON, stable.on), (THINK_OFF, stable.off)):
        est, draws = edges[mode]
        lo, hi = interval(draws)
        rows.append(f"| {mode_label(mode)} | {size(est)} [{size(lo)}, {size(hi)}] | {len(boot.stable_heads)}: "
                    f"{_heads(boot.stable_heads)} |")
    rows.append(f"\n**Stable off-only set** (stable in think-off, in the think-on circuit on < {stable.on_max:.0%} of "
                f"resamples): {_heads(stable.off_only)}; stable in both: {_heads(stable.stable_shared)}.")
    return "\n".join(rows)


def orders_markdown(correct: np.ndarray, pass_k: np.ndarray, success_k: np.ndarray, orders_k: np.ndarray,
                    title: str = THINK_OFF) -> str:
    """Mean over problems of pass@k, success@k in sampling order, and success@k averaged over sample orders."""
    head = "| k | " + " | ".join(str(k) for k in range(1, pass_k.shape[1] + 1)) + " |"
    rows = [f"{mode_label(title)}, {correct.shape[0]} problems × {correct.shape[1]} samples", "", head,
            "|---" * (pass_k.shape[1] + 1) + "|"]
    for name, m in (("pass@k", pass_k), ("success@k, sampling order", success_k),
                    ("success@k, mean over orders", orders_k)):
        rows.append(f"| {name} | " + " | ".join(f"{v:.3f}" for v in m.mean(0)) + " |")
    return "\n".join(rows)


def conditions_text(conditions: Sequence[Condition]) -> str:
    """One line per condition: name, mode, intervention, heads."""
    return "\n".join(f"{mode_label(c.name):42s} {mode_label(study.mode_of(c)):9s} {c.intervention:22s} {list(c.heads)}"
                     for c in conditions)


def _pct(ci: Mapping[str, float], signed: bool = False) -> str:
    sign = "+" if signed else ""
    return f"{100 * ci['estimate']:{sign}.1f} [{100 * ci['low']:{sign}.1f}, {100 * ci['high']:{sign}.1f}]"


def effects_markdown(effects: Mapping[str, Mapping[str, Mapping]]) -> str:
    """pass@1 differences (percentage points, paired interval): one row per task, one column per comparison."""
    columns = list(effects[next(iter(effects))])
    return ("pass@1 differences (percentage points, 95% paired bootstrap interval):\n\n"
            + "| task | " + " | ".join(columns) + " |\n" + "|---" * (len(columns) + 1) + "|\n"
            + "\n".join(f"| {task} | " + " | ".join(_pct(e, signed=True) for e in row.values()) + " |"
                        for task, row in effects.items()))


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
        lines.append(f"| {mode_label(group)} | " + " | ".join(cells) + " |")
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
        rows.append(f"<tr><td style='text-align:left'>{escape(mode_label(group))}</td>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>{escape(title)}</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
            "<p><small>Mean over problems with 95% bootstrap intervals over problems; Δ: paired difference from "
            "think-off on the same problems (percentage points).</small></p>")


def tables_html(tables: Mapping[int, Mapping], metric: str = "pass") -> str:
    """Every table of :func:`toolkit.studies.think_on_off.metrics.tables`, one after the other."""
    return "".join(table_html(tab, title=f"{metric}@{k} (%)") for k, tab in tables.items())


# ---------------------------------------------------------------------------------------------------- figures


def head_maps_figure(importance_on: torch.Tensor | np.ndarray | None, importance_off: torch.Tensor | np.ndarray | None,
                     sets: HeadComparison, n_layers: int, n_heads: int):
    """Layer × head maps: the think-on and think-off circuits' head importance (if given, e.g.
    ``eap.head_importance``), and which heads are on-only, off-only or shared."""
    panels = [(name, imp) for name, imp in (("think-on circuit", importance_on), ("think-off circuit",
                                                                                   importance_off)) if imp is not None]
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(3.3 * (len(panels) + 1) + 0.6, 0.55 * n_layers + 1.8),
                             squeeze=False)
    axes = axes[0]
    vmax = max([float(np.abs(np.asarray(imp, dtype=float)).max()) for _, imp in panels] + [1e-12])
    members = {"think-on circuit": sets.a, "think-off circuit": sets.b}
    for ax, (name, imp) in zip(axes, panels):
        imp = np.asarray(torch.as_tensor(imp, dtype=torch.float32).cpu(), dtype=float)
        if imp.shape != (n_layers, n_heads):
            raise ValueError(f"{name} importance has shape {imp.shape}; expected {(n_layers, n_heads)}")
        im = ax.imshow(np.abs(imp), cmap="Greys", vmin=0, vmax=vmax, aspect="auto")
        for layer, h in members[name]:
            ax.add_patch(plt.Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, ec="#d62728", lw=2))
        ax.set_title(f"{name}\n|importance|, red: in circuit", fontsize=9)
        fig.colorbar(im, ax=ax, fraction=0.046)
    grid = study.head_set_grid(sets, n_layers, n_heads)
    ax = axes[-1]
    ax.imshow(grid, cmap=head_set_cmap(MODE_SET_COLORS), vmin=-0.5, vmax=3.5, aspect="auto")
    for layer in range(n_layers):
        for h in range(n_heads):
            label = ["", "on", "off", "both"][grid[layer, h]]
            ax.text(h, layer, label, ha="center", va="center", fontsize=8, color="white" if grid[layer, h] else "k")
    c = study.set_counts(sets)
    ax.set_title(f"on-only {c['on_only']}, off-only {c['off_only']}, shared {c['shared']}", fontsize=9)
    for ax in axes:
        ax.set_xticks(range(n_heads))
        ax.set_yticks(range(n_layers))
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
    fig.tight_layout()
    return fig


def circuit_maps_figure(circuits: ModeCircuits, n_layers: int, n_heads: int):
    """:func:`head_maps_figure` of both modes' circuits."""
    return head_maps_figure(circuits.importance[THINK_ON], circuits.importance[THINK_OFF], circuits.sets, n_layers,
                            n_heads)


def faithfulness_figure(curves_by_mode: Mapping[str, Mapping], level: float = 0.8):
    """Share of the metric recovered by each mode's top-n circuit against its number of edges."""
    fig, ax = plt.subplots(figsize=(5, 3.2))
    for mode, c in curves_by_mode.items():
        ax.plot(c["n_edges"], c["recovered"], "o-", color=MODE_COLORS.get(mode, "grey"), ms=3, label=mode_label(mode))
    ax.axhline(level, color="grey", lw=0.8, ls=":")
    ax.set_xlabel("edges in the circuit (top-n by |score|, pruned)")
    metric = next(iter(curves_by_mode.values())).get("metric_name", "metric")
    ax.set_ylabel(f"share of the {metric.upper() if metric == 'kl' else metric} metric recovered", fontsize=9)
    ax.set_ylim(-0.05, 1.05)
    ax.legend()
    despine(ax)
    fig.tight_layout()
    return fig


def placebo_figure(tests: Mapping[str, object], xlabel: str = "mean effect per set"):
    """One panel per placebo test (:class:`toolkit.evaluation.nulls.PlaceboTest`): the histogram of the placebo sets'
    mean effects, the target set's mean as a red line, and its rank and permutation p."""
    fig, axes = plt.subplots(1, len(tests), figsize=(4.2 * len(tests), 3.0), squeeze=False)
    for ax, (name, t) in zip(axes[0], tests.items()):
        ax.hist(t.placebo_means, bins=min(40, max(10, t.n_sets // 8)), color="#9e9e9e")
        ax.axvline(t.target_mean, color="#c62828", lw=2, label="target set")
        ax.set_title(f"{name}\nrank {t.rank}/{t.n_sets + 1}, p = {t.p_value:.3g}", fontsize=10)
        ax.set_xlabel(xlabel)
        despine(ax)
    axes[0][0].set_ylabel("placebo sets")
    axes[0][0].legend(frameon=False, fontsize=8)
    fig.tight_layout()
    return fig


def _style(group: str, i: int) -> tuple[str, str]:
    if group in (THINK_ON, THINK_OFF):
        return MODE_COLORS[group], "-"
    return PALETTE[i % len(PALETTE)], "--" if "random" in group else "-"


def curves_figure(curve: Mapping[str, Mapping[str, Mapping[str, list]]], metric: str = "pass"):
    """One panel per task type: each group's mean pass@k (or success@k) against k, with its 95% band."""
    tasks_ = list(next(iter(curve.values())))
    fig, axes = plt.subplots(1, len(tasks_), figsize=(4.2 * len(tasks_), 3.6), squeeze=False, sharey=True)
    for ax, task in zip(axes[0], tasks_):
        for i, (group, by_task) in enumerate(curve.items()):
            c = by_task[task]
            color, ls = _style(group, i)
            ax.plot(c["k"], np.multiply(c["estimate"], 100), ls, color=color, marker="o", ms=3, label=mode_label(group))
            ax.fill_between(c["k"], np.multiply(c["low"], 100), np.multiply(c["high"], 100), color=color,
                            alpha=0.12)
        ax.set_title(TASK_LABELS.get(task, task), fontsize=10)
        ax.set_xlabel("k")
        ax.set_ylim(-2, 102)
        despine(ax)
    axes[0][0].set_ylabel(f"{metric}@k (%)")
    axes[0][-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))
    fig.tight_layout()
    return fig


# ---------------------------------------------------------------------------------------------------- explorer


def explorer(loaded: LoadedModel, problems: Mapping[str, Sequence[tasks.Example]], conditions: Sequence[Condition],
             results: Mapping[str, Samples] | None = None, n_samples: int = 8, sampling: SamplingConfig | None = None,
             max_new_tokens_think: int = 160, max_new_tokens_off: int = 48):
    """Pick a problem, toggle thinking and an intervention, and see the sampled answers.

    The interventions are those of ``conditions`` (each distinct head set × factor), applied in either answer mode.
    Samples of an evaluated condition come from ``results``; other combinations (and "resample") are generated
    live (:func:`toolkit.studies.think_on_off.sample_condition`, seed ``1000 + draw``) and cached.
    """
    items = [(f"[{task}] {ex.prompt}", (task, i)) for task, exs in problems.items() for i, ex in enumerate(exs)]
    grader = resolve_grader("auto", grading_spec(loaded))  # the grader behave() uses for this model
    edits: dict[str, tuple[tuple, float]] = {"none": ((), 1.0)}
    for c in conditions:
        if c.heads:
            label = c.name.replace(f"{THINK_OFF} + ", "") + f" ({c.intervention})"
            edits.setdefault(label, (c.heads, c.factor))
    problem = widgets.Dropdown(options=items, description="problem", layout={"width": "560px"})
    thinking = widgets.Checkbox(value=False, description="thinking")
    edit = widgets.Dropdown(options=list(edits), description="intervention", layout={"width": "560px"})
    resample = widgets.Button(description="resample")
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
            cond = study.condition("explorer", think, heads, factor)
            res = study.sample_condition(loaded, cond, {task: [problems[task][idx]]}, n_samples=n_samples,
                                         sampling=sampling, max_new_tokens_think=max_new_tokens_think,
                                         max_new_tokens_off=max_new_tokens_off, seed=1000 + draws["n"])
            cache[key] = res.completions[task][0]
        return cache[key], f"sampled live (draw {draws['n']})"

    def render() -> list[str]:
        task, idx = problem.value
        ex = problems[task][idx]
        completions, source = samples_for(task, idx, thinking.value, edit.value)
        grades = [grade(ex, c, grader) for c in completions]
        left = "style='text-align:left;vertical-align:top'"
        rows = "".join(
            f"<tr><td {left}>{i + 1}</td><td {left}>{'✓' if g.correct else '✗'}</td><td {left}><code>"
            f"{escape(g.value or '') or '∅'}</code></td><td {left}><pre style='margin:0;white-space:pre-wrap;"
            f"text-align:left'>{escape(c)}</pre></td></tr>"
            for i, (c, g) in enumerate(zip(completions, grades)))
        mode = THINK_ON if thinking.value else THINK_OFF
        return [f"<b>{escape(ex.prompt)}</b> — expected <code>{escape(ex.answer)}</code><br>{mode_label(mode)}, "
                f"intervention: "
                f"{escape(edit.value)}; {sum(g.correct for g in grades)}/{len(grades)} correct, {source}"
                f"<table><thead><tr><th>#</th><th></th><th>answer</th><th>completion</th></tr></thead>"
                f"<tbody>{rows}</tbody></table>"]

    box = explorer_scaffold([problem, thinking, edit], render,
                            layout=[problem, widgets.HBox([thinking, resample]), edit])

    def on_resample(_):
        draws["n"] += 1
        show(box.children[-1], *render())

    resample.on_click(on_resample)
    return box
