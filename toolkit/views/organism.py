"""Views of notebook 00 (the model organism): the model's one-line summary, the build's loss curves, the table of
answers in both modes, and held-out accuracy as a table and as bars. They take :mod:`toolkit.studies.organism`
results."""

from __future__ import annotations

from html import escape

import matplotlib.pyplot as plt
import numpy as np
from IPython.display import HTML, display

from toolkit.core.chat import mode_label
from toolkit.studies.organism import HeldOut, ModeExample, Subject
from toolkit.views.style import MODE_COLORS, despine


def model_summary(subject: Subject, label: str = "") -> str:
    """One line: the model's label (``label``, else its short label: never a path), layers, widths, query and
    KV heads, parameters."""
    cfg = subject.loaded.bridge.cfg
    return (f"{label or subject.loaded.label}: {cfg.n_layers} layers, d_model {cfg.d_model}, {cfg.n_heads} query "
            f"heads / {cfg.n_key_value_heads} KV heads (GQA), head_dim {cfg.d_head}, d_mlp {cfg.d_mlp}, "
            f"{subject.parameters:,} parameters")


def loss_curves(history: dict[str, list[dict]], title: str = ""):
    """Training loss per stage against step (the organism report's ``loss_history``)."""
    fig, ax = plt.subplots(figsize=(6, 3))
    offset = 0
    for stage, points in history.items():
        steps = [offset + p["step"] for p in points]
        ax.plot(steps, [p["loss"] for p in points], label=stage)
        offset = steps[-1] + 1 if steps else offset
    ax.set_xlabel("step (stages back to back)")
    ax.set_ylabel("loss on answer tokens")
    ax.set_yscale("log")
    ax.set_title(title, fontsize=10)
    ax.legend()
    despine(ax)
    fig.tight_layout()
    return fig


def training_loss(build_report: dict | None):
    """The build's loss curves, titled with its time and recipe hash; ``None`` when there is no build report
    (a model other than the organism)."""
    if not build_report:
        return None
    return loss_curves(build_report["loss_history"],
                       title=f"build: {build_report['build_seconds'] / 60:.1f} min on this kind of machine, "
                             f"recipe {build_report['recipe_hash']}")


def examples_table(examples: list[ModeExample]) -> HTML:
    """One row per task: prompt, think-on answer, think-off answer, expected answer."""
    rows = "".join(f"<tr><td>{escape(e.task)}</td><td><code>{escape(e.prompt)}</code></td>"
                   f"<td><pre>{escape(e.think_on)}</pre></td><td><pre>{escape(e.think_off)}</pre></td>"
                   f"<td><code>{escape(e.expected)}</code></td></tr>" for e in examples)
    return HTML("<table><tr><th>task</th><th>prompt</th><th>think-on</th><th>think-off</th><th>expected</th></tr>"
                f"{rows}</table>")


def accuracy_table_html(reports: dict[str, dict]) -> str:
    """An HTML table: one row per (model, mode), one column per measure, as percentages.

    ``reports`` maps a model name to ``{"think_on": {measure: rate}, "think_off": {...}}``.
    """
    measures = list(next(iter(next(iter(reports.values())).values())))
    head = "".join(f"<th>{m.replace('_', ' ')}</th>" for m in measures)
    rows = []
    for model, by_mode in reports.items():
        for mode, res in by_mode.items():
            cells = "".join(f"<td>{100 * res[m]:.1f}%</td>" for m in measures)
            rows.append(f"<tr><td>{escape(model)}</td><td>{mode_label(mode)}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>model</th><th>mode</th>{head}</tr></thead>"
            f"<tbody>{''.join(rows)}</tbody></table>")


def accuracy_bars(reports: dict[str, dict], title: str = "Held-out accuracy (greedy)"):
    """Grouped bars per measure: one bar per (model, mode); hatched bars for all but the first model."""
    measures = list(next(iter(next(iter(reports.values())).values())))
    series = [(model, mode, res) for model, by_mode in reports.items() for mode, res in by_mode.items()]
    fig, ax = plt.subplots(figsize=(1.6 * len(measures) + 2, 3.6))
    width = 0.8 / len(series)
    x = np.arange(len(measures))
    for i, (model, mode, res) in enumerate(series):
        ax.bar(x + (i - (len(series) - 1) / 2) * width, [100 * res[m] for m in measures], width,
               color=MODE_COLORS.get(mode, "grey"), hatch="" if model == series[0][0] else "//",
               edgecolor="white", label=f"{model}, {mode_label(mode)}")
    ax.set_xticks(x, [m.replace("_", " ") for m in measures])
    ax.set_ylabel("% of held-out prompts")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    despine(ax)
    fig.tight_layout()
    return fig


def show_accuracy(held_out: HeldOut):
    """Display the accuracy table and return the bar figure (for ``save_figure``)."""
    display(HTML(accuracy_table_html(held_out.reports)))
    return accuracy_bars(held_out.reports)
