"""Views of circuit stability and of effects against their nulls (notebooks 03 and 04): inclusion frequency per head
(layer × head), the top-n sensitivity curve, the change score E(l, h) with its intervals, emergent counts beside their
null bands, and placebo-set histograms. Definitions: :mod:`toolkit.evaluation.stability`,
:mod:`toolkit.evaluation.emergence`, :mod:`toolkit.evaluation.nulls`."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

import matplotlib.pyplot as plt
import numpy as np

from toolkit.evaluation.emergence import EmergentTest
from toolkit.evaluation.nulls import PlaceboTest
from toolkit.evaluation.stability import CircuitBootstrap, Sensitivity
from toolkit.views.style import despine, label_head_grid


def _panels(n: int, width: float = 3.8, height: float = 3.0):
    cols = min(n, 4)
    rows = -(-n // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(width * cols + 0.8, height * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat[:n])


def inclusion_figure(boots: Mapping[str, CircuitBootstrap], title: str = ""):
    """Layer × head inclusion frequency of each bootstrap (one panel per label). Numbers in the cells; a black frame
    marks the all-pairs circuit's heads, bold numbers the stable heads (inclusion ≥ the threshold)."""
    fig, axes = _panels(len(boots))
    for ax, (label, bs) in zip(axes, boots.items(), strict=True):
        f = bs.head_inclusion
        im = ax.imshow(f, cmap="Greens", vmin=0, vmax=1, origin="lower")
        for (layer, h), v in np.ndenumerate(f):
            ax.text(h, layer, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    weight="bold" if v >= bs.threshold else "normal", color="white" if v > 0.6 else "black")
            if bs.full_heads_grid[layer, h]:
                ax.add_patch(plt.Rectangle((h - 0.5, layer - 0.5), 1, 1, fill=False, lw=1.6, ec="black"))
        label_head_grid(ax, *f.shape, f"{label}\n({bs.n_boot} resamples of {bs.n_pairs} pairs)", fontsize=8.5)
    fig.colorbar(im, ax=axes, shrink=0.8, label="inclusion frequency")
    fig.suptitle(title or "How often each head is in the circuit when the pairs are resampled (frame: all pairs)",
                 fontsize=10)
    return fig


def sensitivity_figure(curves: Mapping[str, Sensitivity], title: str = ""):
    """Mean Jaccard (heads) of resampled circuits with the all-pairs circuit against ``top_n``, 5–95% band."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for label, s in curves.items():
        line, = ax.plot(s.top_ns, s.heads, marker="o", ms=3.5, label=label)
        ax.fill_between(s.top_ns, s.heads_low, s.heads_high, color=line.get_color(), alpha=0.15)
    ax.set_xscale("log")
    ax.set_ylim(0, 1.02)
    ax.set_xlabel("edges kept (top-n)")
    ax.set_ylabel("Jaccard of heads with all-pairs circuit")
    ax.set_title(title or "Top-n sensitivity: stability of the circuit's heads under resampling", fontsize=10)
    ax.legend(fontsize=7)
    despine(ax)
    fig.tight_layout()
    return fig


def change_figure(tests: Mapping[str, EmergentTest], title: str = ""):
    """E(l, h) per head (one panel per label): colour = E on all pairs; ``*`` where its bootstrap interval lies
    outside the base-vs-itself band on the same side."""
    fig, axes = _panels(len(tests))
    for ax, (label, t) in zip(axes, tests.items(), strict=True):
        im = ax.imshow(t.change, cmap="RdBu_r", vmin=-1, vmax=1, origin="lower")
        beyond = (t.change_low > t.change_null_high) | (t.change_high < t.change_null_low)
        for (layer, h), v in np.ndenumerate(t.change):
            ax.text(h, layer, f"{v:+.2f}{'*' if beyond[layer, h] else ''}", ha="center", va="center", fontsize=6.5)
        label_head_grid(ax, *t.change.shape, label, fontsize=8.5)
    fig.colorbar(im, ax=axes, shrink=0.8, label="E = (I_post − I_pre) / (I_post + I_pre)")
    fig.suptitle(title or "Change score per head (*: interval outside the base-vs-itself band)", fontsize=10)
    return fig


def _band(x) -> str:
    x = np.asarray(x, dtype=float)
    return f"mean {x.mean():.2f}, 95% ≤ {np.quantile(x, 0.95):.0f}"


def emergent_table(tests: Mapping[str, EmergentTest]) -> str:
    """HTML: per label, the emergent heads beyond the null with the count, its interval, its null band and p; the
    old set-difference heads likewise."""
    rows = []
    for label, t in tests.items():
        lo, hi = t.count_ci()
        slo, shi = t.set_difference_ci()
        rows.append(f"<tr><td>{escape(label)}</td><td>{[f'L{a}H{b}' for a, b in t.heads]}</td>"
                    f"<td>{t.count} [{lo:.0f}, {hi:.0f}]</td><td>{_band(t.null.count)}</td><td>{t.count_p:.3f}</td>"
                    f"<td>{sorted(f'L{a}H{b}' for a, b in t.set_difference)}</td><td>{len(t.set_difference)} "
                    f"[{slo:.0f}, {shi:.0f}]</td><td>{_band(t.null.set_difference)}</td>"
                    f"<td>{t.set_difference_p:.3f}</td><td>{t.margin:.2f}</td></tr>")
    return ("<table><tr><th></th><th>emergent (beyond null)</th><th>count [95% CI]</th><th>null count</th><th>p</th>"
            "<th>set difference</th><th>count [95% CI]</th><th>null count</th><th>p</th><th>margin</th></tr>"
            + "".join(rows) + "</table>")


def placebo_figure(tests: Mapping[str, PlaceboTest], xlabel: str, title: str = ""):
    """Histogram of the placebo sets' mean effects per label, the target set's as a red line (rank and p)."""
    fig, axes = _panels(len(tests), width=3.4, height=2.8)
    for ax, (label, t) in zip(axes, tests.items(), strict=True):
        ax.hist(t.placebo_means, bins=min(30, max(5, t.n_sets // 4)), color="#9a9a9a")
        ax.axvline(t.target_mean, color="#d62728", lw=2)
        ax.set_title(f"{label}: rank {t.rank}/{t.n_sets + 1}, p = {t.p_value:.3f}", fontsize=8.5)
        ax.set_xlabel(xlabel, fontsize=8)
        despine(ax)
    fig.suptitle(title or "Target head set (red) against every other set of its size", fontsize=10)
    fig.tight_layout()
    return fig
