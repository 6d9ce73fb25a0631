"""Notebook 02's tables, figures and explorer: CMAP behaviour per patched site, output length with intervals, CTS
heatmaps, pooled CTS per layer (with its spread across prompts) and per head, and a side-by-side token diff of clean,
corrupted and patched generations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape
from typing import TYPE_CHECKING

import ipywidgets as widgets
import matplotlib.pyplot as plt
import numpy as np

from toolkit.core.interventions import Site, head
from toolkit.core.models import LoadedModel
from toolkit.core.stats import bootstrap_ci
from toolkit.methods.cmap import MIN_GAP, MODES, CMAPResult, check_compatible, run
from toolkit.views.explorer import explorer as explorer_box
from toolkit.views.style import despine

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerBase


def _fmt(v: float, pct: bool = True) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "–"
    return f"{100 * v:.0f}%" if pct else f"{v:.1f}"


def layer_table_html(summary: dict[str, dict[str, dict]], labels: dict[str, str] | None = None,
                     threshold: float = 0.5) -> str:
    """The original's table: one row per patched site (after the clean and corrupted models), one column per
    question type; each cell gives the final-answer accuracy, the transfer rate (patched output = corrupted output,
    among prompts where the two models differ) and the mean output length. Cells whose transfer rate reaches
    ``threshold`` are marked as carrying the corruption (bold, shaded)."""
    labels = labels or {}
    types = list(summary)
    rows = list(next(iter(summary.values())))
    head = "".join(f"<th>{escape(labels.get(t, t))}</th>" for t in types)
    body = []
    for row in rows:
        cells = []
        for t in types:
            m = summary[t][row]
            carries = row not in ("clean", "corrupted") and not math.isnan(m["transfer"]) and m["transfer"] >= threshold
            style = ' style="background:#fde2c8;font-weight:bold"' if carries else ""
            acc = f"{'correct' if m.get('accuracy', 0) >= 0.5 else 'incorrect'} ({_fmt(m.get('accuracy'))})"
            cells.append(f"<td{style}>{acc}<br><small>transfer {_fmt(m['transfer'])}, "
                         f"{m['length']:.1f} tokens</small></td>")
        body.append(f"<tr><td><b>{escape(row)}</b></td>{''.join(cells)}</tr>")
    return (f"<table><thead><tr><th>patched site</th>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"
            f"<p><small>shaded: transfer ≥ {100 * threshold:.0f}% (the patched output equals the corrupted model's "
            "on most prompts where the two models differ)</small></p>")


def cts_heatmap(result: CMAPResult, title: str = "", min_gap: float = MIN_GAP, max_steps: int | None = None):
    """Site × step heatmap of CTS averaged over prompts (teacher-forced, so step t is the same token in every row);
    grey where no prompt defines CTS. The right panel gives each site's pooled CTS over all defined (prompt, step)
    (:meth:`CMAPResult.pooled_cts`, a ratio of sums)."""
    grid = result.step_cts(min_gap)
    if max_steps:
        grid = grid[:, :max_steps]
    fig, (ax, ax_mean) = plt.subplots(1, 2, figsize=(11, 0.45 * len(result.sites) + 1.6),
                                      gridspec_kw={"width_ratios": [5, 1]}, sharey=True)
    cmap_ = plt.get_cmap("RdBu_r").with_extremes(bad="#dddddd")
    im = ax.imshow(np.ma.masked_invalid(grid), aspect="auto", cmap=cmap_, vmin=-1, vmax=1, interpolation="nearest")
    ax.set_yticks(range(len(result.sites)), [s.label for s in result.sites], fontsize=8)
    ax.set_xlabel(f"generation step ({result.teacher_forcing} trajectory)")
    ax.set_title(title or f"CTS per step ({result.mode} positions)", fontsize=10)
    fig.colorbar(im, ax=ax, fraction=0.03, label="CTS")
    pooled = np.nan_to_num(result.pooled_cts(min_gap))
    ax_mean.barh(range(len(pooled)), pooled, color=["C3" if m > 0.5 else "C0" for m in pooled])
    ax_mean.axvline(0, color="grey", lw=0.8)
    ax_mean.set_xlabel("pooled CTS")
    despine(ax_mean)
    fig.tight_layout()
    return fig


def length_figure(results: dict[str, CMAPResult], sites: Sequence[Site], labels: dict[str, str] | None = None):
    """Mean output length against the patched site with its 95% bootstrap interval over prompts, one line per
    question type (free-running ``results``), with the clean (dashed) and corrupted (dotted) models' lengths."""
    labels = labels or {}
    fig, ax = plt.subplots(figsize=(6.5, 3.4))
    x = np.arange(len(sites))
    for i, (name, result) in enumerate(results.items()):
        lengths = result.lengths()
        cis = [bootstrap_ci(lengths[s.label]) for s in sites]
        means = np.array([ci["estimate"] for ci in cis])
        low, high = np.array([c["low"] for c in cis]), np.array([c["high"] for c in cis])
        ax.errorbar(x + (i - 1) * 0.08, means, yerr=[means - low, high - means], marker="o", ms=4, capsize=2,
                    color=f"C{i}", label=labels.get(name, name))
        ax.axhline(lengths["clean"].mean(), color=f"C{i}", ls="--", lw=0.8)
        ax.axhline(lengths["corrupted"].mean(), color=f"C{i}", ls=":", lw=0.8)
    ax.set_xticks(x, [s.label for s in sites], fontsize=8, rotation=30)
    ax.set_ylabel("mean output length (tokens)")
    ax.set_xlabel("patched site (dashed: clean, dotted: corrupted)")
    ax.legend(fontsize=8)
    despine(ax)
    fig.tight_layout()
    return fig


def head_figure(results: dict[str, CMAPResult], labels: dict[str, str] | None = None, min_gap: float = MIN_GAP):
    """One layer × head heatmap of pooled CTS per question type (teacher-forced single-head sweeps)."""
    labels = labels or {}
    fig, axes = plt.subplots(1, len(results), figsize=(3.6 * len(results), 2.8), squeeze=False)
    for ax, (name, result) in zip(axes[0], results.items()):
        layers, heads, grid = result.head_grid(min_gap)
        im = ax.imshow(np.ma.masked_invalid(grid), cmap="RdBu_r", vmin=-1, vmax=1, aspect="auto")
        ax.set_xticks(range(len(heads)), [f"H{h}" for h in heads])
        ax.set_yticks(range(len(layers)), [f"L{lay}" for lay in layers])
        for i in range(len(layers)):
            for j in range(len(heads)):
                if np.isfinite(grid[i, j]):
                    ax.text(j, i, f"{grid[i, j]:.2f}", ha="center", va="center", fontsize=7)
        ax.set_title(labels.get(name, name), fontsize=9)
    fig.colorbar(im, ax=list(axes[0]), fraction=0.03, label="pooled CTS")
    return fig


def diff_html(tokenizer: PreTrainedTokenizerBase, clean: Sequence[int], corrupted: Sequence[int],
              patched: Sequence[int], eos: int, titles: Sequence[str] = ("clean", "corrupted", "patched")) -> str:
    """Three generations side by side, token by token; tokens that differ from the clean generation at the same
    step are highlighted (orange), and patched tokens that also equal the corrupted model's are red."""
    seqs = [list(clean), list(corrupted), list(patched)]

    def cell(i: int) -> str:
        parts = []
        for t, tid in enumerate(seqs[i]):
            text = escape(tokenizer.decode([tid], skip_special_tokens=False)).replace("\n", "↵<br>")
            if tid == eos:
                text = "<small>⏎end</small>"
            differs = t >= len(seqs[0]) or seqs[0][t] != tid
            if i == 2 and differs and t < len(seqs[1]) and seqs[1][t] == tid:
                style = "background:#f4a3a3"
            elif i > 0 and differs:
                style = "background:#fdd49e"
            else:
                style = ""
            parts.append(f'<span style="{style}">{text}</span>')
        return "".join(parts)

    head = "".join(f"<th>{escape(t)}</th>" for t in titles)
    row = "".join(f'<td style="font-family:monospace;vertical-align:top;white-space:pre-wrap">{cell(i)}</td>'
                  for i in range(3))
    return (f'<table><thead><tr>{head}</tr></thead><tbody><tr>{row}</tr></tbody></table><p><small>'
            '<span style="background:#fdd49e">differs from clean</span> '
            '<span style="background:#f4a3a3">differs from clean, equals corrupted</span></small></p>')


def explorer(clean: LoadedModel, corrupted: LoadedModel, prompts: dict[str, Sequence[str]], max_new_tokens: int = 64,
             mode: str = "current") -> widgets.VBox:
    """An ipywidgets explorer: pick a prompt (grouped by question type), a granularity, a layer and heads (for the
    ``head`` granularity) and a position mode; it runs CMAP for that one site and shows the clean, corrupted and
    patched generations side by side with the divergent tokens highlighted."""
    check_compatible(clean, corrupted)
    options = [(f"[{kind}] {p}", p) for kind, ps in prompts.items() for p in ps]
    if not options:
        raise ValueError("the explorer needs at least one prompt")
    n_layers, n_heads = clean.bridge.cfg.n_layers, clean.bridge.cfg.n_heads
    prompt = widgets.Dropdown(options=options, description="prompt", layout={"width": "560px"})
    granularity = widgets.Dropdown(options=["resid", "attn", "mlp", "head"], value="resid", description="granularity")
    layer = widgets.IntSlider(value=n_layers - 1, min=0, max=n_layers - 1, description="layer")
    heads = widgets.SelectMultiple(options=list(range(n_heads)), value=(0,), description="heads", rows=min(n_heads, 6))
    position = widgets.Dropdown(options=list(MODES), value=mode, description="positions")
    cache: dict = {}

    def render():
        if granularity.value == "head":
            if not heads.value:
                return ["<b>choose at least one head</b>"]
            site = head(layer.value, *sorted(heads.value))
        else:
            site = Site(granularity.value, layer.value)
        key = (prompt.value, site, position.value)
        if key not in cache:
            cache[key] = run(clean, corrupted, [prompt.value], [site], position.value, max_new_tokens)
        r = cache[key]
        heads.disabled = granularity.value != "head"
        title = (f"<b>{escape(prompt.value)}</b> · patched site <code>{escape(site.label)}</code> "
                 f"(<code>{escape(site.hook_name)}</code>), {position.value} positions")
        return [title + diff_html(r.tokenizer, r.clean_tokens[0], r.corrupted_tokens[0], r.patched_tokens[0][0],
                                  r.eos, ("clean", "corrupted", f"patched {site.label}"))]

    controls = [prompt, granularity, layer, heads, position]
    layout = [prompt, widgets.HBox([granularity, position]), widgets.HBox([layer, heads])]
    return explorer_box(controls, render, layout)


def cts_by_layer_figure(pooled: dict[str, np.ndarray], per_prompt: dict[str, np.ndarray], sites: Sequence[Site],
                        labels: dict[str, str] | None = None):
    """Pooled CTS (a ratio of sums) against layer, one panel per component (attn/mlp/resid) among ``sites``, one
    line per question type, with the middle half of the prompts' own pooled CTS shaded (``pooled[type]`` and
    ``per_prompt[type]`` are :meth:`CMAPResult.pooled_cts` and :meth:`CMAPResult.prompt_cts`)."""
    labels = labels or {}
    components = list(dict.fromkeys(s.component for s in sites if s.component != "head"))
    fig, axes = plt.subplots(1, len(components), figsize=(4 * len(components), 3), squeeze=False, sharey=True)
    for ax, comp in zip(axes[0], components):
        idx = [i for i, s in enumerate(sites) if s.component == comp]
        layers = [sites[i].layer for i in idx]
        for j, (name, values) in enumerate(pooled.items()):
            ax.plot(layers, np.asarray(values)[idx], marker="o", color=f"C{j}", label=labels.get(name, name))
            spread = per_prompt[name][:, idx]
            if np.isfinite(spread).any(axis=0).all():
                ax.fill_between(layers, np.nanquantile(spread, 0.25, axis=0), np.nanquantile(spread, 0.75, axis=0),
                                color=f"C{j}", alpha=0.15, lw=0)
        ax.axhline(0, color="grey", lw=0.8)
        ax.set_title(comp)
        ax.set_xlabel("layer")
        ax.set_xticks(sorted(set(layers)))
        despine(ax)
    axes[0][0].set_ylabel("pooled CTS (teacher-forced)")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig
