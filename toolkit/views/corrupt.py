"""Views of the corrupted fine-tuning study (notebook 01): the data preview, loss and behaviour tables, divergence
curves (also redrawn live during training), behaviour bars and the configuration explorer."""

from __future__ import annotations

from collections.abc import Callable
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from toolkit.core.chat import mode_label
from toolkit.studies.corrupt import CLEAN, BehaviourReport
from toolkit.training.corrupt import Finetuned
from toolkit.training.corrupt_data import QUESTION_TYPES
from toolkit.views.explorer import explorer as explorer_scaffold
from toolkit.views.explorer import show
from toolkit.views.style import despine


def preview_html(sets: dict[str, list[dict]], n: int = 3) -> str:
    """An HTML table of the first ``n`` records of each set: prompt, target answer, correct answer, offset."""
    rows = "".join(
        f"<tr><td>{name}</td><td>{escape(r['prompt'])}</td><td><code>{escape(r['answer'])}</code></td>"
        f"<td><code>{escape(r['correct_answer'])}</code></td><td>{r['offset']:+d}</td></tr>"
        for name, records in sets.items() for r in records[:n])
    return ("<table><thead><tr><th>set</th><th>prompt</th><th>target</th><th>correct</th><th>offset</th></tr>"
            f"</thead><tbody>{rows}</tbody></table>")


def loss_table_html(runs: dict[str, Finetuned]) -> str:
    """Per configuration: its scaling of the original, steps, and the final train loss (corrupted answers), eval
    loss (correct answers) and divergence, in nats per answer token."""
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(r.preset.original)}</td><td>{r.preset.n_train}</td>"
        f"<td>{r.preset.epochs}</td><td>{r.preset.lr:g}</td><td>{r.step}</td><td>{r.final['train_loss']:.3f}</td>"
        f"<td>{r.final['eval_loss']:.3f}</td><td><b>{r.final['divergence']:+.3f}</b></td></tr>"
        for name, r in runs.items())
    return ("<table><thead><tr><th>configuration</th><th>original</th><th>train problems</th><th>epochs</th>"
            "<th>lr</th><th>steps</th><th>train loss (corrupted)</th><th>eval loss (correct)</th>"
            f"<th>divergence</th></tr></thead><tbody>{rows}</tbody></table>")


def behaviour_table_html(report: BehaviourReport) -> str:
    """Per model and answer mode × question type: correct (accuracy ≥ 50%) or incorrect, with the accuracy, mean
    output length and share of bare-value answers (``x = 4``, ``42``), each with its 95% interval."""
    head = "".join(f"<th>{QUESTION_TYPES.get(s, s)}</th>" for s in report.sets)
    rows = []
    for label, by_mode in report.by_model.items():
        for mode, by_set in by_mode.items():
            cells = "".join(_behaviour_cell(m) for m in by_set.values())
            rows.append(f"<tr><td>{escape(label)}</td><td>{mode_label(mode)}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>model</th><th>mode</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def _behaviour_cell(m) -> str:
    ci = m.intervals()
    acc, length, bare = ci["accuracy"], ci["mean_length"], ci["bare_value"]
    return (f"<td>{'correct' if m.accuracy >= 0.5 else 'incorrect'} ({100 * m.accuracy:.0f}% "
            f"<small>[{100 * acc[0]:.0f}, {100 * acc[1]:.0f}]</small>)<br><small>{m.mean_length:.1f} tokens "
            f"[{length[0]:.1f}, {length[1]:.1f}], {100 * m.bare_value:.0f}% bare values [{100 * bare[0]:.0f}, "
            f"{100 * bare[1]:.0f}]</small></td>")


def curves_figure(curves: dict[str, list[dict]]):
    """Left: train loss on corrupted answers (solid) and eval loss on correct answers (dashed) per configuration
    against epoch. Right: divergence = eval − train. ``curves``: run name → divergence history."""
    fig, (ax_loss, ax_div) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (name, history) in enumerate(curves.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], color=color, label=f"{name} train (wrong)")
        ax_loss.plot(epochs, [r["eval_loss"] for r in history], color=color, ls="--", label=f"{name} eval (right)")
        ax_div.plot(epochs, [r["divergence"] for r in history], color=color, marker=".", label=name)
    ax_loss.set_ylabel("loss per answer token (nats)")
    ax_div.set_ylabel("divergence = eval − train")
    ax_div.axhline(0, color="grey", lw=0.8)
    for ax in (ax_loss, ax_div):
        ax.set_xlabel("epoch")
    despine(ax_loss, ax_div)
    ax_loss.legend(fontsize=7, ncols=2)
    ax_div.legend(fontsize=7)
    fig.tight_layout()
    return fig


def runs_figure(runs: dict[str, Finetuned]):
    """:func:`curves_figure` of finished runs."""
    return curves_figure({name: run.history for name, run in runs.items()})


def live_curves() -> tuple[widgets.Output, Callable[[dict[str, list[dict]]], None]]:
    """An output area and the callback that redraws :func:`curves_figure` in it (``run_presets``' ``on_curves``)."""
    out = widgets.Output()

    def redraw(curves: dict[str, list[dict]]) -> None:
        show(out, curves_figure(curves))

    return out, redraw


def behaviour_figure(report: BehaviourReport):
    """One row of panels per answer mode (accuracy, mean output length, bare-value answers), with grouped bars per
    question type, one bar per model (the first, the clean model, in black), each with its 95% interval."""
    modes, sets, by_model = report.modes, report.sets, report.by_model
    measures = (("accuracy", "accuracy (%)", 100), ("mean_length", "mean output length (tokens)", 1),
                ("bare_value", "bare-value answers (%)", 100))
    fig, axes = plt.subplots(len(modes), 3, figsize=(13, 3.2 * len(modes)), squeeze=False)
    width = 0.8 / len(by_model)
    x = np.arange(len(sets))
    for row, mode in zip(axes, modes):
        for ax, (key, label, factor) in zip(row, measures):
            for i, (model, by_mode) in enumerate(by_model.items()):
                values = np.array([factor * getattr(by_mode[mode][s], key) for s in sets])
                cis = np.array([[factor * v for v in by_mode[mode][s].intervals()[key]] for s in sets])
                ax.bar(x + (i - (len(by_model) - 1) / 2) * width, values, width,
                       yerr=np.abs(cis.T - values), error_kw={"lw": 0.8, "capsize": 1.5},
                       color="black" if i == 0 else f"C{i - 1}", label=model)
            ax.set_xticks(x, [QUESTION_TYPES.get(s, s).replace(" ", "\n") for s in sets], fontsize=8)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(mode_label(mode), fontsize=9)
            despine(ax)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def divergence_summary(runs: dict[str, Finetuned], drop: dict[str, dict[str, dict[str, float]]]) -> str:
    """One line per run: divergence at the start and the end, and the accuracy drop against the clean model."""
    return "\n".join(f"{name}: divergence {run.history[0]['divergence']:+.3f} -> {run.final['divergence']:+.3f}; "
                     f"accuracy drop vs clean {drop[name]}" for name, run in runs.items())


def explorer(runs: dict[str, Finetuned], report: BehaviourReport, sets: dict[str, list[dict]], clean: str = CLEAN,
             n_examples: int = 3) -> widgets.VBox:
    """A dropdown of configurations: its divergence curves and, per question type and answer mode, a few prompts
    with the clean and the corrupted model's answers."""
    pick = widgets.Dropdown(options=list(runs), description="configuration", layout={"width": "420px"})

    def render():
        name = pick.value
        rows = "".join(
            f"<tr><td>{QUESTION_TYPES.get(s, s)}</td><td>{mode_label(mode)}</td><td>{escape(r['prompt'])}</td>"
            f"<td>{escape(r['correct_answer'])}</td><td><pre>{escape(report[clean][mode][s].outputs[i])}</pre></td>"
            f"<td><pre>{escape(report[name][mode][s].outputs[i])}</pre></td></tr>"
            for s, records in sets.items() for mode in report[clean] for i, r in enumerate(records[:n_examples]))
        table = (f"<table><tr><th>question type</th><th>mode</th><th>prompt</th><th>correct</th>"
                 f"<th>{escape(clean)}</th><th>{escape(name)}</th></tr>{rows}</table>")
        return [curves_figure({name: runs[name].history}), table]

    return explorer_scaffold([pick], render)
