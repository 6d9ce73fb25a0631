# %% [markdown]
# # Lesson 03 — EAP and EAP-IG, by hand
#
# Companion to `notebooks/03_eap_ig.ipynb`. You implement the core of edge attribution patching on the model
# organism and check each piece against the toolkit: the slow float64 reference (`toolkit.reference.eap`) and the
# fast path (`toolkit.methods.eap`).
#
# **Learning objectives**
#
# - Write the EAP score of one edge: (corrupted − clean source activation) · gradient at the target's input.
# - Write EAP-IG's Riemann sum and know which end of the path it includes.
# - Know why, under grouped-query attention, a k/v edge score is a *sum* over the query heads of its group.
# - Measure a circuit's faithfulness, and know what the full and the empty graph must give.
#
# **How to work.** Run the cells in order. Each exercise is a function with `raise NotImplementedError` in its
# body: replace it with your code, then run the check cell below it. A check prints `✓` (passed), `·` (not
# implemented yet) or `✗` with the first thing that is wrong: a shape, a dtype, a NaN, an exception, or a value
# with its index. Before each check, write down your answer to **Predict before you run**.
#
# Ratings: difficulty ★ (a few lines) to ★★★; importance ★ (a detail) to ★★★ (the heart of the method). The whole
# lesson takes about an hour; the checks take a few seconds each on a laptop CPU.

# %%
import torch

from toolkit.course import checks
from toolkit.course import eap_ig as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # the organism in float64, 4 clean/corrupted pairs of its own sums
print(f"{len(data.pairs)} pairs of {data.pairs.lengths.tolist()} tokens; graph: {data.graph}")
print("edges the checks score:", ", ".join(lesson.EDGES))

# %% [markdown]
# ## Exercise 1 — the EAP score of one edge
#
# Difficulty ★ · importance ★★★ · about 10 minutes
#
# An edge s → t carries source s's output into target t's input (a head's q, k or v input, an MLP's input, the
# logits). EAP approximates the effect on the metric m of patching that edge to its corrupted value by a first-order
# Taylor step:
#
# $$\text{score}(s \to t) = \frac{1}{N} \sum_{\text{pairs}} \sum_{\text{pos}, \text{width}}
# \big(a_s(\text{corrupted}) - a_s(\text{clean})\big) \cdot \frac{\partial m}{\partial\, \text{input}_t}$$
#
# You get, for each of the N pairs, the source's activation on the clean and on the corrupted input and the metric's
# gradient at the target's input on the clean input, each `[positions, d_model]` (float64). Return one 0-d tensor.
#
# **Predict before you run.** With the metric `kl` = KL(p_clean ‖ p), plain EAP (the gradient on the *clean*
# input) gives every edge the same score. Which one, and why?
#
# <details><summary>Answer</summary>Zero: KL(p_clean ‖ p) has its minimum at p = p_clean, so its gradient on the
# clean input vanishes. That is one reason to integrate the gradient along a path (EAP-IG). The lesson uses
# <code>logit_diff</code>.</details>

# %%
def edge_score(clean: list[torch.Tensor], corrupted: list[torch.Tensor], grads: list[torch.Tensor]) -> torch.Tensor:
    """Mean over pairs of Σ (corrupted − clean) · grad; each list holds one ``[p, d]`` tensor per pair."""
    # BEGIN SOLUTION
    return sum(((x - c) * g).sum() for c, x, g in zip(clean, corrupted, grads, strict=True)) / len(clean)
    # END SOLUTION


# %%
results.append(lesson.check_edge_score(edge_score, data))

# %% [markdown]
# ## Exercise 2 — the Riemann sum of EAP-IG
#
# Difficulty ★★ · importance ★★★ · about 10 minutes
#
# EAP-IG replaces the gradient on the clean input by its average along the straight path of token embeddings from
# the corrupted (α = 0) to the clean (α = 1) input, with m steps. The toolkit (like the reference EAP-IG) takes the
# **left** Riemann sum, α = k/m for k = 0 … m−1.
#
# `gradient_at(alpha)` returns the metric's gradient at the target's input, `[p, d]`, with the embeddings at
# corrupted + α·(clean − corrupted). Return the averaged gradient, `[p, d]`. The check scores every edge with it
# and compares with the reference's EAP-IG scores (m = 4).
#
# **Predict before you run.** With m = 1, is EAP-IG the same as plain EAP? And if you sum α = k/m for k = 1 … m
# instead, will the check notice?
#
# <details><summary>Answer</summary>No: with m = 1 the only point is α = 0, the gradient on the <i>corrupted</i>
# input, while plain EAP takes it on the clean one. Yes: the two sums differ by (g(0) − g(1))/m, which is not
# small at m = 4 (try it).</details>

# %%
def integrated_gradient(gradient_at, steps: int) -> torch.Tensor:
    """Mean of ``gradient_at(k / steps)`` over k = 0 … steps−1 (``[p, d]``)."""
    # BEGIN SOLUTION
    return sum(gradient_at(k / steps) for k in range(steps)) / steps
    # END SOLUTION


# %%
results.append(lesson.check_integrated_gradient(integrated_gradient, data))

# %% [markdown]
# ## Exercise 3 — grouping k/v scores under GQA
#
# Difficulty ★ · importance ★★ · about 5 minutes
#
# The organism has 4 query heads and 2 KV heads: query heads 0–1 share KV head 0, heads 2–3 share KV head 1
# (`group_size = 2`). The graph therefore has one k and one v target per *KV head* (`a{L}.kv{G}<k>`). If every
# query head had its own copy of the k input, an edge into the shared input would be scored once per copy.
#
# You get, for one layer and one of k/v, the scores of the edges into each query head's copy,
# `[n_sources, n_heads]`. Return the grouped scores `[n_sources, n_kv_heads]`.
#
# **Predict before you run.** Is the grouped score the sum, the mean or the max of its query heads' scores?
#
# <details><summary>Answer</summary>The sum: the shared input feeds every query head of the group, so the gradient
# at it is the sum of the gradients at the copies, and the score is linear in the gradient.</details>

# %%
def group_kv(per_query_head: torch.Tensor, group_size: int) -> torch.Tensor:
    """``[S, n_heads]`` → ``[S, n_heads // group_size]``: query heads g·r … g·r+r−1 form KV group g."""
    # BEGIN SOLUTION
    n_sources, n_heads = per_query_head.shape
    return per_query_head.reshape(n_sources, n_heads // group_size, group_size).sum(-1)  # (S, G, r) → (S, G)
    # END SOLUTION


# %%
results.append(lesson.check_group_kv(group_kv, data))

# %% [markdown]
# ## Exercise 4 — faithfulness, with the full and the empty graph
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# A circuit is a set of edges. Its faithfulness runs the clean input with every edge *outside* the circuit patched
# to its corrupted value, and reports how much of the clean behaviour is left:
# recovered = (metric − corrupted) / (clean − corrupted).
#
# You get `patched_metric(missing)`, the mean metric with the edges of the bool mask `missing` `[S, T]` patched to
# their corrupted values, the mask of edges that exist (`valid`) and the circuit's edges. Return a dict with
# `metric`, `clean`, `corrupted` and `recovered` (floats). The check tries the full graph, the empty graph and the
# 40 top EAP-IG edges, against `toolkit.methods.eap.faithfulness`.
#
# **Predict before you run.** What must `recovered` be for the full graph? For the empty graph? Can a circuit
# recover more than 1?
#
# <details><summary>Answer</summary>1 and 0, by definition: the full graph patches nothing (the clean run), the
# empty graph patches every edge (the corrupted run). Yes: edges left out can work <i>against</i> the clean
# answer, so a circuit without them can beat the whole model.</details>

# %%
def faithfulness(patched_metric, valid: torch.Tensor, edges: torch.Tensor) -> dict[str, float]:
    """``{"metric", "clean", "corrupted", "recovered"}`` of the circuit ``edges`` (bool ``[S, T]``)."""
    # BEGIN SOLUTION
    clean = patched_metric(torch.zeros_like(valid))
    corrupted = patched_metric(valid)
    metric = patched_metric(valid & ~edges)
    return {"metric": metric, "clean": clean, "corrupted": corrupted,
            "recovered": (metric - corrupted) / (clean - corrupted)}
    # END SOLUTION


# %%
results.append(lesson.check_faithfulness(faithfulness, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/03_eap_ig.ipynb` builds circuits for the organism and its
# base model and compares their heads against a resampling null.

# %%
statuses = checks.summary(results)
