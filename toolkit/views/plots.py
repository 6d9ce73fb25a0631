"""Figures and tables shared by the notebooks (cells stay short: they call these and show)."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import torch

MODE_COLORS = {"think_on": "#3b6fb6", "think_off": "#e08a2c"}


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
            rows.append(f"<tr><td>{model}</td><td>{mode.replace('_', '-')}</td>{cells}</tr>")
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
               edgecolor="white", label=f"{model}, {mode.replace('_', '-')}")
    ax.set_xticks(x, [m.replace("_", " ") for m in measures])
    ax.set_ylabel("% of held-out prompts")
    ax.set_ylim(0, 105)
    ax.set_title(title)
    ax.legend(fontsize=8, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.15))
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def loss_curves(history: dict[str, list[dict]]):
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
    ax.legend()
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def short_token(t: str) -> str:
    """A token made visible in a tick label (newline as ⏎, space as ·)."""
    return {"\n": "⏎", " ": "·", "<|im_start|>": "<s>", "<|im_end|>": "</s>"}.get(t, t)


def attention_heads(pattern: torch.Tensor, tokens: Sequence[str], query_start: int = 0, title: str = ""):
    """Heatmaps of one layer's attention, one panel per head.

    ``pattern`` is ``[H, q, k]``; rows from ``query_start`` on are shown (e.g. the generated part).
    """
    n_heads = pattern.shape[0]
    fig, axes = plt.subplots(1, n_heads, figsize=(3.2 * n_heads, 3.4), squeeze=False)
    rows = pattern[:, query_start:].float().cpu().numpy()
    for h, ax in enumerate(axes[0]):
        ax.imshow(rows[h], aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("attended token (key)", fontsize=8)
        ax.set_yticks([])
        ax.set_xticks([])
    axes[0][0].set_ylabel("generated token (query)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def circuitsvis_attention(tokens: Sequence[str], pattern: torch.Tensor):
    """circuitsvis attention view, self-contained (``local_src``: no CDN, works offline)."""
    import circuitsvis as cv
    from IPython.display import HTML

    view = cv.attention.attention_patterns(tokens=[short_token(t) for t in tokens], attention=pattern.float().cpu())
    return HTML(view.local_src)
