"""Notebook 06 (RIM) views: refusal and math along the reasoning runs, the refusal heads, the ablations, the
entanglement scatter, the checkpoint table and the checkpoint explorer. They draw :mod:`toolkit.studies.rim`
results."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from toolkit.core.chat import mode_label
from toolkit.methods.rim import SPANS
from toolkit.studies.rim import Measurement, NeuronAnalysis, Probes, RefusalHeads, entanglements
from toolkit.training.runs import Checkpoint
from toolkit.views.explorer import explorer as explorer_scaffold
from toolkit.views.style import despine

MARKERS = {"careful": "o", "brief": "s"}  # the runs' scratchpad styles (lines: careful solid, brief dashed)


def _look(rows: Sequence[dict], run: str) -> dict:
    """Marker and line style of ``run`` from its rows' scratchpad style."""
    style = next((r.get("style", "") for r in rows if r["run"] == run), "")
    return {"marker": MARKERS.get(style, "o"), "linestyle": "--" if style == "brief" else "-"}


def behaviour_figure(rows: Sequence[dict]):
    """Per run (one line each, step 0 = the base model): refusal rate on marked prompts with thinking on and off,
    false-refusal rate, and think-on math accuracy, against fine-tuning step."""
    panels = [("refused_think_on", "refusal, think-on"), ("refused_think_off", "refusal, think-off"),
              ("false_refusal_think_on", "false refusal, think-on"),
              ("false_refusal_think_off", "false refusal, think-off"), ("math", "math accuracy (think-on)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.0), sharex=True)
    base = rows[0]
    runs = list(dict.fromkeys(r["run"] for r in rows[1:]))
    for ax, (key, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            pts = [base] + [r for r in rows[1:] if r["run"] == run]
            ax.plot([p["step"] for p in pts], [100 * p[key] for p in pts], color=f"C{i}", label=run,
                    **_look(rows, run))
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("fine-tuning step")
        despine(ax)
    axes[0].set_ylabel("% of held-out prompts")
    axes[0].legend(fontsize=7, title="run (brief: dashed)", title_fontsize=7)
    fig.tight_layout()
    return fig


def heads_figure(heads: RefusalHeads):
    """Per mode: the mean shift of every head (heatmap, layer × head; the top-k boxed), and the span masses of the
    top heads for refusal and compliance prompts (bars)."""
    fig, axes = plt.subplots(len(heads.by_mode), 2, figsize=(10, 3.8 * len(heads.by_mode)), squeeze=False)
    for (ax_map, ax_bar), (mode, a) in zip(axes, heads.items()):
        shift = a.mean_shift
        lim = max(abs(shift).max(), 1e-6)
        im = ax_map.imshow(shift, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for lay, h in a.top:
            ax_map.add_patch(plt.Rectangle((h - 0.5, lay - 0.5), 1, 1, fill=False, lw=2, color="black"))
        ax_map.set_xlabel("head")
        ax_map.set_ylabel("layer")
        ax_map.set_xticks(range(shift.shape[1]))
        ax_map.set_yticks(range(shift.shape[0]))
        ax_map.set_title(f"{mode_label(mode)}: shift toward the think span (refusal − compliance)", fontsize=9)
        fig.colorbar(im, ax=ax_map, fraction=0.046)
        labels, width = [f"L{lay}H{h}" for lay, h in a.top], 0.2
        x = np.arange(len(labels))
        for j, span in enumerate(SPANS):
            r = [a.masses_refusal[:, lay, h, j].mean() for lay, h in a.top]
            c = [a.masses_compliance[:, lay, h, j].mean() for lay, h in a.top]
            ax_bar.bar(x + (2 * j - 2.5) * width / 2, r, width / 2, color=f"C{j}", label=f"{span}, refusal")
            ax_bar.bar(x + (2 * j - 1.5) * width / 2, c, width / 2, color=f"C{j}", alpha=0.45,
                       label=f"{span}, compliance")
        ax_bar.set_xticks(x, labels)
        ax_bar.set_ylabel("attention mass at the first response token")
        ax_bar.set_title(f"{mode_label(mode)}: top heads' attention by span", fontsize=9)
        ax_bar.legend(fontsize=6, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        despine(ax_bar)
    fig.tight_layout()
    return fig


def _ci_bar(ax, x, ci, color, label=None):
    ax.bar(x, 100 * ci["estimate"], 0.35, color=color, label=label)
    ax.errorbar(x, 100 * ci["estimate"], yerr=[[100 * (ci["estimate"] - ci["low"])], [100 * (ci["high"] -
                ci["estimate"])]], color="black", capsize=3, lw=1)


def ablation_figure(heads: RefusalHeads, neurons: NeuronAnalysis):
    """Changes (percentage points, 95% bootstrap intervals) under zero-ablation. Left: the refusal rate and the
    compliance rate on marked prompts when the top-k refusal heads (red) or k random heads (grey) are ablated, per
    mode. Right: refusal per mode and math accuracy when the safety neurons (dark) or random neurons from the same
    layers (light) are ablated."""
    fig, (ax_h, ax_n) = plt.subplots(1, 2, figsize=(11, 3.6))
    groups = [(mode, key) for mode in heads.by_mode for key in ("refused", "complied")]
    for i, (mode, key) in enumerate(groups):
        e = heads[mode].effects[key]
        _ci_bar(ax_h, i - 0.18, e["top"], "C3", "top-k refusal heads" if i == 0 else None)
        _ci_bar(ax_h, i + 0.18, e["control"], "C7", "k random heads" if i == 0 else None)
    ax_h.set_xticks(range(len(groups)), [f"{'refusal' if key == 'refused' else 'compliance'},\n{mode_label(m)}"
                                         for m, key in groups], fontsize=8)
    ax_h.set_ylabel("change (percentage points)")
    ax_h.set_title("ablating heads", fontsize=9)
    keys = [k for k in neurons.effects if k.endswith("/refused")] + ["math"]
    for i, key in enumerate(keys):
        e = neurons.effects[key]
        _ci_bar(ax_n, i - 0.18, e["safety"], "C0", "safety neurons" if i == 0 else None)
        _ci_bar(ax_n, i + 0.18, e["control"], "C7", "random neurons, same layers" if i == 0 else None)
    ax_n.set_xticks(range(len(keys)), [k.replace("/refused", "").replace("think_", "refusal, think-")
                                       .replace("math", "math accuracy") for k in keys])
    ax_n.set_title(f"ablating {len(neurons.neurons)} neurons", fontsize=9)
    for ax in (ax_h, ax_n):
        ax.axhline(0, color="grey", lw=0.8)
        ax.legend(fontsize=7)
        despine(ax)
    fig.tight_layout()
    return fig


def entanglement_figure(rows: Sequence[dict], corr: dict[str, dict], target: str = "forgetting",
                        noise: Sequence[dict] = ()):
    """Across fine-tuned checkpoints: refusal forgetting against RAS of the safety neurons, RAS of the control
    neurons, and KL(base ‖ fine-tuned), with Pearson r and p in each title; the KL-matched noisy models (``noise``
    rows), if given, as grey crosses on the same axes."""
    panels = [("ras_safety", "RAS, safety neurons"), ("ras_control", "RAS, control neurons"),
              ("kl", "KL(base ‖ fine-tuned), math traces")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for ax, (key, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            pts = [r for r in rows if r["run"] == run]
            ax.scatter([p[key] for p in pts], [100 * p[target] for p in pts], color=f"C{i}", label=run,
                       marker=_look(rows, run)["marker"])
            for p in pts:
                ax.annotate(str(p["step"]), (p[key], 100 * p[target]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        if noise:
            ax.scatter([r[key] for r in noise], [100 * r[target] for r in noise], color="#757575", marker="x", s=26,
                       label="KL-matched noise")
        c = corr[key]
        ax.set_title(f"{title}\nr = {c['pearson_r']:.2f} (p = {c['pearson_p']:.3g}), n = {c['n']}", fontsize=9)
        ax.set_xlabel(key)
        despine(ax)
    axes[0].set_ylabel("refusal forgetting (points)")
    axes[0].legend(fontsize=7, title="run (labels: step)", title_fontsize=7)
    fig.tight_layout()
    return fig


def noise_figure(tuned: Sequence[dict], noise: Sequence[dict],
                 keys: Sequence[tuple[str, str]] = (("forgetting", "refusal forgetting"),
                                                    ("drop_safety", "drop, safety neurons"),
                                                    ("ras_safety", "RAS, safety neurons"))):
    """Each measure against KL(base ‖ model) for the fine-tuned checkpoints (coloured by run) and for their
    KL-matched weight-noise models (grey crosses), one panel per key."""
    fig, axes = plt.subplots(1, len(keys), figsize=(4 * len(keys), 3.3))
    runs = list(dict.fromkeys(r["run"] for r in tuned))
    for ax, (key, title) in zip(np.atleast_1d(axes), keys):
        for i, run in enumerate(runs):
            pts = [r for r in tuned if r["run"] == run]
            ax.scatter([p["kl"] for p in pts], [p[key] for p in pts], color=f"C{i}", label=run, s=22,
                       marker=_look(tuned, run)["marker"])
        ax.scatter([r["kl"] for r in noise], [r[key] for r in noise], color="#757575", marker="x",
                   label="KL-matched noise", s=26)
        ax.set_xlabel("KL(base ‖ model), reasoning traces")
        ax.set_title(title, fontsize=9)
        despine(ax)
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def rows_table_html(rows: Sequence[dict]) -> str:
    """One row per checkpoint: refusal and false refusal per mode, math accuracy, forgetting, KL and RAS."""
    cols = [("refused_think_on", "refusal on", True), ("refused_think_off", "refusal off", True),
            ("false_refusal_think_on", "false ref. on", True), ("false_refusal_think_off", "false ref. off", True),
            ("math", "math", True), ("forgetting", "forgetting", True), ("refusal_nll_rise", "refusal NLL rise", False),
            ("kl", "KL", False), ("ras_safety", "RAS safety", False), ("ras_control", "RAS control", False)]
    head = "".join(f"<th>{name}</th>" for _, name, _ in cols)
    body = "".join(
        f"<tr><td>{escape(r['label'])}</td>"
        + "".join(f"<td>{100 * r[k]:.0f}%</td>" if pct else f"<td>{r[k]:.4f}</td>" for k, _, pct in cols)
        + "</tr>" for r in rows)
    return f"<table><thead><tr><th>checkpoint</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def explorer(checkpoints: Sequence[Checkpoint], measured: dict[str, Measurement], probes: Probes,
             n_examples: int = 4) -> widgets.VBox:
    """A dropdown of checkpoints: greedy answers to a few marked and unmarked prompts in both modes, and the
    per-neuron drop (safety activation) against rise (reasoning activation) of the safety and control neurons."""
    labels = [c.label for c in checkpoints[1:]] or [checkpoints[0].label]
    pick_ = widgets.Dropdown(options=labels, description="checkpoint", layout={"width": "360px"})
    base = measured[checkpoints[0].label]

    def render():
        m = measured[pick_.value]
        rows = "".join(
            f"<tr><td>{mode_label(mode)}</td><td>{escape(p.marked)}</td><td><pre>{escape(b.marked_outputs[i])}"
            f"</pre></td><td>{escape(p.unmarked)}</td><td><pre>{escape(b.unmarked_outputs[i])}</pre></td></tr>"
            for mode, b in m.behaviour.items() for i, p in enumerate(probes.pairs[:n_examples]))
        table = ("<table><tr><th>mode</th><th>marked prompt</th><th>answer</th><th>unmarked rewrite</th>"
                 f"<th>answer</th></tr>{rows}</table>")
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for name, color in (("control", "C7"), ("safety", "C0")):
            for k, e in enumerate(entanglements(base, m, name)[:2]):  # the first two control draws
                ax.scatter(e.drop, e.rise, s=8, color=color, alpha=0.6, label=name if k == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("drop of safety activation")
        ax.set_ylabel("rise of reasoning activation")
        ax.set_title(pick_.value, fontsize=9)
        ax.legend(fontsize=7)
        despine(ax)
        fig.tight_layout()
        return [fig, table]

    return explorer_scaffold([pick_], render)
