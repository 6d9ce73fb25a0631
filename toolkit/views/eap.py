"""Views of EAP-IG circuits (notebook 03): pair and edge tables, the circuit drawn as a graph, head importance and
head maps, faithfulness curves, exact-vs-approximate scatter, the ablation check, and the circuit explorer."""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch
from IPython.display import HTML
from matplotlib.patches import FancyArrowPatch

from toolkit.core.stats import correlation, format_ci
from toolkit.core.units import compare_heads
from toolkit.methods import eap
from toolkit.studies.emergent import AblationCheck, AttentionView, CircuitResults, Emergent, ExactComparison, Setup
from toolkit.views.attention import circuitsvis_attention
from toolkit.views.explorer import explorer
from toolkit.views.style import despine, head_set_cmap, label_head_grid

_KIND_COLORS = {"q": "#3b6fb6", "k": "#2a9d5c", "v": "#e08a2c", "m": "#7a7a7a", "logits": "#7a7a7a"}


# --------------------------------------------------------------------------------------------------- tables
def pairs_summary(setup: Setup, n_examples: int = 4) -> HTML:
    """The graph's size, the number of pairs per task and model, and the first pairs of the post-trained model
    (clean prompt, corrupted prompt, shared response prefix, next token clean / corrupted)."""
    g = setup.graph
    parts = [f"<p>graph: {g.n_layers} layers × {g.n_heads} heads ({g.n_kv_heads} KV heads): {g.n_sources} sources, "
             f"{g.n_targets} targets, {setup.n_edges} edges</p><ul>"]
    for task, name in setup.runs:
        p = setup.pairs[task][name]
        parts.append(f"<li>{escape(task)}, {escape(name)}: {len(p)} pairs from {setup.n_problems} problems "
                     f"({len(p.dropped)} dropped: the answers did not change, or no same-length corruption)</li>")
    parts.append("</ul>")
    model = setup.names[0]
    for task in setup.tasks:
        records = setup.pairs[task][model].records[:n_examples]
        rows = "".join(f"<tr><td>{escape(r['prompt'])}</td><td>{escape(r['corrupted_prompt'])}</td>"
                       f"<td><code>{escape(r['response_prefix'])}</code></td><td>{escape(r['clean_next'])} / "
                       f"{escape(r['corrupted_next'])}</td></tr>" for r in records)
        parts.append(f"<b>{escape(task)}, {escape(model)}</b>: clean prompt, corrupted prompt, shared response prefix, "
                     f"next token clean / corrupted<table>{rows}</table>")
    return HTML("".join(parts))


def top_edges_table(scores: Mapping[str, Mapping[str, eap.Scores]], top: int = 8) -> HTML:
    """The ``top`` edges by |score| of every task and model, side by side."""
    runs = [(task, name) for task in scores for name in scores[task]]
    edges = [scores[task][name].edges(top=top) for task, name in runs]
    body = "".join(f"<tr><td>{i + 1}</td>" + "".join(f"<td>{s}→{t}</td><td>{v:+.3f}</td>" for s, t, v in
                                                      (e[i] for e in edges)) + "</tr>" for i in range(top))
    return HTML("<table><tr><th></th>" + "".join(f"<th colspan=2>{task}: {name}</th>" for task, name in runs)
                + f"</tr>{body}</table>")


def correlation_summary(comparison: ExactComparison) -> HTML:
    """Pearson and Spearman correlation of each approximation with the exact scores."""
    rows = "".join(f"<tr><td>{escape(k)}</td><td>{v['pearson_r']:.3f}</td><td>{v['spearman_r']:.3f}</td>"
                   f"<td>{v['n']}</td></tr>" for k, v in comparison.corr.items())
    return HTML(f"<table><tr><th>scores</th><th>Pearson</th><th>Spearman</th><th>edges</th></tr>{rows}</table>")


def faithfulness_summary(setup: Setup, found: CircuitResults) -> HTML:
    """Each curve's recovered share per requested size, and each top-n circuit's size, heads and faithfulness."""
    curves = "".join(f"<tr><td>{escape(k)}</td>" + "".join(f"<td>{100 * r:.0f}%</td>" for r in c["recovered"])
                     + "</tr>" for k, c in found.curves.items())
    head = "".join(f"<th>{n}</th>" for n in found.sizes)
    items = "".join(f"<li>{escape(task)}, {escape(name)}: top {found.top_n} edges → "
                    f"{found.circuits[task][name].n_edges} after pruning, heads "
                    f"{sorted(found.circuits[task][name].heads)}, recovers "
                    f"{100 * found.faith[f'{task}: {name}']:.1f}%</li>" for task, name in setup.runs)
    return HTML(f"<table><tr><th>top-n requested</th>{head}</tr>{curves}</table><ul>{items}</ul>")


def simplification_table(simple: Mapping[str, dict], top_n: int, tau: float) -> HTML:
    """Per task and model: the top-n circuit and its τ simplification side by side (edges, heads, faithfulness)."""
    def cell(c: dict) -> str:
        heads = ", ".join(f"L{a}H{b}" for a, b in c["heads"])
        return f"<td>{c['edges']}</td><td>{heads}</td><td>{100 * c['recovered']:.0f}%</td>"

    rows = "".join(f"<tr><td>{escape(k)}</td>{cell(v['top_n'])}{cell(v['tau'])}</tr>" for k, v in simple.items())
    return HTML(f"<table><tr><th></th><th colspan=3>top {top_n}</th><th colspan=3>… and |score| ≥ {tau:g} × max"
                f"</th></tr><tr><th>task: model</th>" + "<th>edges</th><th>heads</th><th>recovers</th>" * 2
                + f"</tr>{rows}</table>")


def emergent_summary(setup: Setup, emergent: Emergent) -> HTML:
    """Shared, emergent (ranked) and base-only heads per task."""
    model, base = setup.names
    items = "".join(f"<li>{escape(task)}: shared {sorted(c.shared)}; emergent (only {escape(model)}) "
                    f"{emergent.ranked[task]}; only {escape(base)} {sorted(c.only_b)}</li>"
                    for task, c in emergent.comparisons.items())
    return HTML(f"<ul>{items}</ul><p>emergent in any task: {emergent.all}</p>")


def ablation_table(check: AblationCheck) -> HTML:
    """Accuracy and its changes per task, with 95% intervals (random-head columns only with random draws)."""
    keys = ["baseline", "change_ablated"] + (["change_random", "ablated_minus_random"] if check.random_heads else [])
    names = {"baseline": "accuracy", "change_ablated": "change, ablated heads", "change_random": "change, random heads",
             "ablated_minus_random": "ablated − random"}
    rows = "".join(f"<tr><td>{t}</td>" + "".join(f"<td>{format_ci(r[k])}</td>" for k in keys) + "</tr>"
                   for t, r in check.tasks.items())
    return HTML(f"<p>ablated: {check.chosen}; random draws: {check.random_heads or 'none'}</p><table><tr>"
                "<th>task</th>" + "".join(f"<th>{names[k]}</th>" for k in keys) + f"</tr>{rows}</table>")


# --------------------------------------------------------------------------------------------------- the circuit
def _node_xy(g: eap.Graph) -> dict[int, tuple[float, float]]:
    """Layout: input at the bottom, each layer a row of heads and above it its MLP, logits on top."""
    xy = {0: ((g.n_heads - 1) / 2, 0.0)}
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            xy[g.head_source(layer, h)] = (float(h), 2.0 * layer + 1)
        xy[g.mlp_source(layer)] = ((g.n_heads - 1) / 2, 2.0 * layer + 2)
    return xy


def draw_circuit(circuit: eap.Circuit, scores: eap.Scores | None = None, ax=None, title: str = ""):
    """The circuit as a graph (matplotlib only, works offline): nodes by layer, edges coloured by the target input
    (q blue, k green, v orange, MLP/logits grey), width by |score|. Returns the figure."""
    g = circuit.graph
    xy = _node_xy(g)
    top = 2.0 * g.n_layers + 1
    logits_xy = ((g.n_heads - 1) / 2, top)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 * g.n_heads + 2.5, 0.7 * top + 1.2))
    else:
        fig = ax.figure
    edges = circuit.edges.nonzero().tolist()
    vals = scores.values.abs() if scores is not None else torch.ones_like(circuit.edges, dtype=torch.float64)
    vmax = max((float(vals[s, t]) for s, t in edges), default=1.0) or 1.0
    names = g.target_names
    for s, t in edges:
        kind = "logits" if t == g.logits_target else names[t].split("<")[-1].rstrip(">") if "<" in names[t] else "m"
        owners = g.target_owner(t)
        ends = [logits_xy] if t == g.logits_target else [xy[o] for o in owners]
        if kind in ("k", "v"):  # a grouped k/v input feeds every head of its group that is in the circuit
            live = [xy[o] for o in owners if bool(circuit.edges[o].any())]
            ends = live or ends[:1]
        w = 0.4 + 3.6 * float(vals[s, t]) / vmax
        for end in ends:
            start = xy[s]
            rad = 0.25 if abs(start[0] - end[0]) < 1e-9 and end[1] - start[1] > 1.5 else 0.08
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, lw=w, alpha=0.55,
                                         color=_KIND_COLORS[kind], connectionstyle=f"arc3,rad={rad}",
                                         shrinkA=9, shrinkB=9))
    in_circuit = set(circuit.edges.any(1).nonzero().flatten().tolist())
    src_names = g.source_names
    for s, (x, y) in xy.items():
        on = s in in_circuit
        is_mlp = src_names[s].startswith("m")
        ax.scatter([x], [y], s=420 if on else 160, marker="s" if is_mlp else "o", zorder=3,
                   color=("#c44e52" if is_mlp else "#4c72b0") if on else "#dddddd", edgecolor="black" if on else
                   "#bbbbbb")
        ax.annotate(src_names[s].replace("a", "", 1) if not is_mlp and s else src_names[s], (x, y), ha="center",
                    va="center", fontsize=6.5, zorder=4, color="white" if on else "#888888")
    ax.scatter([logits_xy[0]], [logits_xy[1]], s=520, marker="D", color="#333333", zorder=3)
    ax.annotate("logits", logits_xy, ha="center", va="center", fontsize=6.5, color="white", zorder=4)
    for kind, color in (("q", _KIND_COLORS["q"]), ("k", _KIND_COLORS["k"]), ("v", _KIND_COLORS["v"]),
                        ("MLP / logits", _KIND_COLORS["m"])):
        ax.plot([], [], color=color, lw=2, label=f"→ {kind}")
    ax.legend(loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.8, g.n_heads - 0.2)
    ax.set_ylim(-0.7, top + 0.7)
    ax.set_yticks([2.0 * i + 1 for i in range(g.n_layers)], [f"layer {i}" for i in range(g.n_layers)], fontsize=7)
    ax.set_xticks([])
    despine(ax)
    ax.spines[["bottom", "left"]].set_visible(False)
    ax.set_title(title or f"{circuit.n_edges} edges, {len(circuit.heads)} heads", fontsize=10)
    fig.tight_layout()
    return fig


def circuits_figure(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], found: CircuitResults):
    """Every task's (rows) and model's (columns) top-n circuit, drawn with :func:`draw_circuit`."""
    tasks, names = setup.tasks, setup.names
    fig, axes = plt.subplots(len(tasks), len(names), figsize=(16, 5.8 * len(tasks)), squeeze=False)
    for row, task in enumerate(tasks):
        for col, name in enumerate(names):
            c = found.circuits[task][name]
            draw_circuit(c, scores[task][name], ax=axes[row][col],
                         title=f"{task}, {name}: {c.n_edges} edges, heads {sorted(c.heads)}")
    return fig


# --------------------------------------------------------------------------------------------------- heads
def importance_figure(importances: Mapping[str, torch.Tensor],
                      title: str = "Head importance (share of |score| on circuit edges)"):
    """Layer × head heatmaps of :func:`toolkit.methods.eap.head_importance`, one panel per model."""
    fig, axes = plt.subplots(1, len(importances), figsize=(3.4 * len(importances) + 0.8, 3.0), squeeze=False)
    vmax = max(float(v.max()) for v in importances.values()) or 1.0
    for ax, (name, imp) in zip(axes[0], importances.items(), strict=True):
        im = ax.imshow(imp.numpy(), cmap="Purples", vmin=0, vmax=vmax, origin="lower")
        for (layer, h), v in zip(((i, j) for i in range(imp.shape[0]) for j in range(imp.shape[1])),
                                 imp.flatten().tolist(), strict=True):
            ax.text(h, layer, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * vmax else "black")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(imp.shape[1]))
        ax.set_yticks(range(imp.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def importance_figures(setup: Setup, found: CircuitResults):
    """:func:`importance_figure` of every task's and model's circuit."""
    return importance_figure({f"{task}: {name}": found.importance[task][name] for task, name in setup.runs})


def head_map_figure(a, b, n_layers: int, n_heads: int, labels: tuple[str, str] = ("A", "B"), title: str = ""):
    """Layer × head map: shared heads, heads only in A's circuit (emergent when A is post-trained), only in B's
    (codes of :meth:`toolkit.core.units.HeadComparison.grid`)."""
    m = compare_heads(a, b).grid(n_layers, n_heads)
    fig, ax = plt.subplots(figsize=(1.0 * n_heads + 2.8, 0.75 * n_layers + 1.2))
    ax.imshow(m, cmap=head_set_cmap(), vmin=0, vmax=3, origin="lower")
    for layer in range(n_layers):
        for h in range(n_heads):
            ax.text(h, layer, ["", "shared", f"only\n{labels[0]}", f"only\n{labels[1]}"][int(m[layer, h])],
                    ha="center", va="center", fontsize=6.5, color="white" if m[layer, h] >= 1 else "black")
    label_head_grid(ax, n_layers, n_heads, title or f"Circuit heads: {labels[0]} vs {labels[1]}")
    fig.tight_layout()
    return fig


def head_maps(setup: Setup, found: CircuitResults) -> dict:
    """``{task: figure}``: :func:`head_map_figure` of the post-trained vs the base model's circuit per task."""
    model, base = setup.names
    g = setup.graph
    return {task: head_map_figure(found.circuits[task][model], found.circuits[task][base], g.n_layers, g.n_heads,
                                  labels=(model, base), title=f"{task}: circuit heads, {model} vs {base}")
            for task in setup.tasks}


def attention_view(view: AttentionView):
    """circuitsvis view of the chosen heads' attention (self-contained, works offline), with a caption."""
    caption = HTML(f"<p>{escape(view.task)} pair; heads shown in order: "
                   f"{[f'L{layer}H{h}' for layer, h in view.heads]}</p>")
    return caption, circuitsvis_attention(view.tokens, view.patterns)


# --------------------------------------------------------------------------------------------------- curves
def faithfulness_figure(curves: Mapping[str, dict],
                        title: str = "Faithfulness: share of the clean−corrupted gap recovered"):
    """Recovered fraction against the number of circuit edges (after pruning), one line per model."""
    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for name, c in curves.items():
        ax.plot(c["n_edges"], [100 * r for r in c["recovered"]], marker="o", ms=3.5, label=name)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("edges in the circuit (after pruning)")
    ax.set_ylabel(f"recovered ({next(iter(curves.values()))['metric_name']}), %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    despine(ax)
    fig.tight_layout()
    return fig


def correlation_figure(exact: eap.Scores, approx: Mapping[str, eap.Scores]):
    """Scatter of approximate scores (e.g. ``{"EAP": s1, "EAP-IG": s2}``) against exact per-edge patching."""
    fig, axes = plt.subplots(1, len(approx), figsize=(3.6 * len(approx), 3.4), squeeze=False)
    x = exact.flat().numpy()
    for ax, (name, sc) in zip(axes[0], approx.items(), strict=True):
        y = sc.flat().numpy()
        r = correlation(x, y)
        ax.scatter(x, y, s=8, alpha=0.6)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}: Pearson {r['pearson_r']:.2f}, Spearman {r['spearman_r']:.2f}", fontsize=9)
        ax.set_xlabel("exact (patch one edge)")
        ax.set_ylabel(f"{name} score")
    fig.tight_layout()
    return fig


def exact_figure(comparison: ExactComparison):
    """:func:`correlation_figure` of EAP and EAP-IG against exact scores, all with the logit difference."""
    return correlation_figure(comparison.exact["logit_diff"], comparison.approx)


def ablation_figure(check: AblationCheck, title: str = ""):
    """Accuracy change (points, 95% CI) per task: the chosen heads vs random heads of the same number."""
    tasks = list(check.tasks)
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2.4, 3.4))
    arms = (("change_ablated", f"{len(check.heads)} circuit heads", "#d62728"),
            ("change_random", "random heads (mean of draws)", "#7f7f7f"))[:2 if check.random_heads else 1]
    for j, (key, label, color) in enumerate(arms):
        xs = [i + (j - 0.5) * 0.3 for i in range(len(tasks))]
        est = [100 * check.tasks[t][key]["estimate"] for t in tasks]
        lo = [100 * (check.tasks[t][key]["estimate"] - check.tasks[t][key]["low"]) for t in tasks]
        hi = [100 * (check.tasks[t][key]["high"] - check.tasks[t][key]["estimate"]) for t in tasks]
        ax.bar(xs, est, 0.3, color=color, label=label)
        ax.errorbar(xs, est, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(title or f"Zero-ablating {check.chosen} during generation", fontsize=10)
    ax.legend(fontsize=8)
    despine(ax)
    fig.tight_layout()
    return fig


# --------------------------------------------------------------------------------------------------- explorer
def circuit_explorer(scores: Mapping[str, eap.Scores], curves: Mapping[str, dict] | None = None,
                     max_edges: int | None = None) -> widgets.VBox:
    """Widget: pick a model and a number of edges; see its circuit drawn and, if given, where that size sits on
    its faithfulness curve. Needs no model runs (the scores are already computed)."""
    names = list(scores)
    total = max(s.n_edges for s in scores.values())
    model = widgets.Dropdown(options=names, description="model")
    edges = widgets.IntSlider(value=min(30, total), min=1, max=max_edges or total, description="edges",
                              continuous_update=False)

    def render():
        sc = scores[model.value]
        circuit = eap.select(sc, top_n=edges.value)
        fig = draw_circuit(circuit, sc, title=f"{model.value}: top {edges.value} edges → {circuit.n_edges} after "
                                              f"pruning, heads {sorted(circuit.heads)}")
        items = [fig]
        if curves and model.value in curves:
            c = curves[model.value]
            fig2, ax = plt.subplots(figsize=(4.6, 2.6))
            ax.plot(c["requested"], [100 * r for r in c["recovered"]], marker="o", ms=3)
            ax.axvline(edges.value, color="#d62728", lw=1)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("top-n edges requested")
            ax.set_ylabel("recovered %")
            fig2.tight_layout()
            items.append(fig2)
        return items

    return explorer([model, edges], render, layout=[widgets.HBox([model, edges])])


def study_explorer(setup: Setup, scores: Mapping[str, Mapping[str, eap.Scores]], found: CircuitResults):
    """:func:`circuit_explorer` over every task's and model's scores and faithfulness curves."""
    return circuit_explorer({f"{task}: {name}": scores[task][name] for task, name in setup.runs}, found.curves)
