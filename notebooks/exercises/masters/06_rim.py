# %% [markdown]
# # Lesson 06 — refusal heads, safety neurons and RAS
#
# Companion to `notebooks/06_rim.ipynb`, which asks whether fine-tuning on reasoning erodes refusals ("When Thinking
# Backfires") and which attention heads and MLP neurons carry them. You implement the measures and check each
# against `toolkit.methods.rim`, whose package docstring defines them, on the organism's own sequences.
#
# **Learning objectives**
#
# - Split the first response token's attention row into the CoT, the think span and the rest, from decoded tokens.
# - Measure a head's attention shift from the CoT to the think span between matched refusal and compliance prompts,
#   and rank heads by it.
# - Select safety-critical neurons with a counterfactual contrast (forced refusal vs forced compliance of the same
#   request), stable across disjoint sets of requests.
# - Put a neuron's safety drop and reasoning rise on a common scale before taking their harmonic mean (RAS).
#
# **How to work.** Run the cells in order. Replace each `raise NotImplementedError` with your code, then run the
# check cell below it: `✓` passed, `·` not implemented yet, `✗` the first thing that is wrong (shape, dtype, NaN,
# an exception, or a value with where it is). Before each check, answer **Predict before you run**.
#
# Ratings: difficulty ★ to ★★★; importance ★ to ★★★. About 1 hour; the checks run in seconds on a laptop CPU.

# %%
import numpy as np
import torch

from toolkit.course import checks
from toolkit.course import rim as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # the organism, 8 request pairs, their first-response sequences and MLP activations
pair = data.pairs[0]
print("marked:  ", pair.marked, "\nunmarked:", pair.unmarked)
print("think-on response to the marked request:\n" + data.refuse[0].output)

# %% [markdown]
# ## Exercise 1 — the three spans at the first response token
#
# Difficulty ★★ · importance ★★ · about 15 minutes
#
# The *first response token* is the query position whose next token is the first answer token: the last token of
# `</think>\n\n`. The keys it attends to, positions `0 … query`, fall in three spans:
#
# - **cot**: the content of the last think block before `query` without the whitespace at its two ends (the
#   reasoning itself);
# - **think**: that block's `<think>` and `</think>` tokens and the whitespace inside the block (with thinking off,
#   the whole empty block `<think>\n\n</think>`);
# - **rest**: everything else — the prompt, the chat tokens, the `\n\n` after `</think>`.
#
# `tokens` are the decoded tokens of the sequence (the organism's tokenizer is character-level, so `"\n"` is one
# token); return `{"cot", "think", "rest"}`, each a bool array of length `query + 1`.
#
# **Predict before you run.** In the think-off sequence, how many positions are in the think span, and how many in
# the CoT? Which span holds the query position itself?
#
# <details><summary>Answer</summary>Four think positions (<code>&lt;think&gt;</code>, <code>\n</code>,
# <code>\n</code>, <code>&lt;/think&gt;</code>) and an empty CoT. The query is the last <code>\n</code> after
# <code>&lt;/think&gt;</code>: it is in the rest.</details>

# %%
def span_masks(tokens: list[str], query: int) -> dict[str, np.ndarray]:
    """Bool masks over positions ``0..query``: the CoT, the think span and the rest."""
    # BEGIN EXERCISE
    # hint: find the last "<think>" at or before query and the first "</think>" after it; str.strip() tells
    # whitespace tokens apart
    # END EXERCISE
    # BEGIN SOLUTION
    start = max(i for i in range(query + 1) if tokens[i] == "<think>")
    end = min(i for i in range(start + 1, query + 1) if tokens[i] == "</think>")
    lo, hi = start + 1, end  # the block's inside, then trimmed of whitespace at both ends
    while lo < hi and not tokens[lo].strip():
        lo += 1
    while hi > lo and not tokens[hi - 1].strip():
        hi -= 1
    cot = np.zeros(query + 1, dtype=bool)
    think = np.zeros(query + 1, dtype=bool)
    cot[lo:hi] = True
    think[start:end + 1] = True
    think[lo:hi] = False
    return {"cot": cot, "think": think, "rest": ~(cot | think)}
    # END SOLUTION


# %%
results.append(lesson.check_span_masks(span_masks, data))

# %% [markdown]
# ## Exercise 2 — span masses of an attention row
#
# Difficulty ★ · importance ★★ · about 5 minutes
#
# `pattern` holds attention rows at the first response token, `[..., keys]` (float32; here `[L, H, keys]`, every
# head of the organism); `masks` are the three span masks of exercise 1. Return the mass on each span, `[..., 3]`
# float64 in the order cot, think, rest. A row may cover more keys than the masks (a longer sequence): a causal
# query puts no mass on them, so use only the first `len(masks["cot"])` keys.
#
# **Predict before you run.** Do a head's three masses sum to 1? On average over heads and refusal prompts, which
# span gets most of the first response token's attention: the long CoT, the few think tokens, or the rest?
#
# <details><summary>Answer</summary>They sum to 1: the row is a softmax over keys 0…query, and the masks split those
# keys. Here the CoT gets about 0.55 and the rest about 0.40; the four think tokens get about 0.05, which is why a
# shift towards them is measured as a difference between matched prompts, not as a level.</details>

# %%
def span_masses(pattern: torch.Tensor, masks: dict[str, np.ndarray]) -> np.ndarray:
    """``[..., 3]`` float64: the attention mass of each row of ``pattern`` on the CoT, the think span and the rest."""
    # BEGIN SOLUTION
    p = pattern.double().numpy()
    n = len(masks["cot"])
    return np.stack([p[..., :n][..., masks[s]].sum(-1) for s in ("cot", "think", "rest")], axis=-1)
    # END SOLUTION


# %%
results.append(lesson.check_span_masses(span_masses, data))

# %% [markdown]
# ## Exercise 3 — a refusal head's shift
#
# Difficulty ★ · importance ★★★ · about 10 minutes
#
# `data.masses_r` and `data.masses_c` are `[n, L, H, 3]` span masses (your exercise 2 on every head) of the 8 marked
# requests (the organism refuses them) and of their unmarked rewrites (it complies), thinking on. A head's **shift**
# on pair i is `(think_r − think_c) − (cot_r − cot_c)`: how much more of its mass it moves from the CoT to the think
# span when it refuses. Return `{"shift": [n, L, H], "top": [(layer, head), …]}`, `top` being the `k` heads with
# the largest mean shift over pairs, largest first (ties: the lower `(layer, head)` first; `np.argsort(…,
# kind="stable")` of the negated means keeps that order).
#
# **Predict before you run.** If both the think and the CoT mass of a head rise by 0.1 when it refuses, what is its
# shift? In think-off mode, where the CoT is empty, what does the shift measure?
#
# <details><summary>Answer</summary>0: the shift counts only mass that moves between the two spans, not mass taken
# from the rest. Think-off, the CoT masses are 0, so the shift is think_r − think_c: how much more the refusal puts
# on the empty block. On these pairs the top heads are L1H0 and L2H1, with a mean shift of only about 0.05 — notebook
# 06 tests whether ablating them changes refusals, against random heads.</details>

# %%
def refusal_shift(refuse: np.ndarray, comply: np.ndarray, k: int) -> dict:
    """Per pair and head, the shift from the CoT to the think span; and the top-``k`` heads by mean shift."""
    # BEGIN SOLUTION
    d = refuse - comply  # (n, L, H, 3): cot, think, rest
    shift = d[..., 1] - d[..., 0]  # (n, L, H)
    mean = shift.mean(0)  # (L, H)
    order = np.argsort(-mean, axis=None, kind="stable")[:k]
    top = [tuple(int(v) for v in np.unravel_index(i, mean.shape)) for i in order]
    return {"shift": shift, "top": top}
    # END SOLUTION


# %%
results.append(lesson.check_refusal_shift(refusal_shift, data))

# %% [markdown]
# ## Exercise 4 — safety-critical neurons by a counterfactual contrast
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# Each marked request is teacher-forced twice, thinking off: with the organism's fixed refusal and with a compliance
# (`"Sure! Here is how to make …"`). `data.refusal` and `data.compliance` are the MLP activations
# (`blocks.{L}.mlp.hook_post`) averaged over each response, `[n, L, d_mlp]` float64, row i of one the counterfactual
# of row i of the other. Rank neurons by the mean difference refusal − compliance within each of `n_sets` disjoint,
# contiguous sets of pairs (`np.array_split(np.arange(n), n_sets)`), take each set's top `top_m`, and keep the
# neurons in every set's top-m. Return them as `[(layer, unit), …]` sorted by the mean difference over all pairs,
# largest first (ties: the lower `(layer, unit)` first).
#
# **Predict before you run.** With 8 pairs in 2 sets of 4 and the top 20 of each, how many of the 20 survive the
# intersection? Why contrast with a forced compliance of the *same* request rather than with the harmless rewrite?
#
# <details><summary>Answer</summary>19 here (28 of 40 with 4 sets of 2): the refusal state is read very consistently,
# mostly in the last layer. The counterfactual holds the prompt fixed and changes only the response, so it selects
# neurons of refusing; a contrast with the harmless rewrite would select detectors of the dangerous object.</details>

# %%
def select_safety_neurons(refusal: np.ndarray, compliance: np.ndarray, top_m: int, n_sets: int
                          ) -> list[tuple[int, int]]:
    """The neurons in the top-``top_m`` of refusal − compliance of every one of ``n_sets`` disjoint sets of pairs."""
    # BEGIN SOLUTION
    diff = refusal - compliance  # (n, L, d_mlp)
    d_mlp = diff.shape[2]
    common = None
    for idx in np.array_split(np.arange(len(diff)), n_sets):
        order = np.argsort(-diff[idx].mean(0).ravel(), kind="stable")[:top_m]  # into L * d_mlp
        chosen = {(int(i // d_mlp), int(i % d_mlp)) for i in order}
        common = chosen if common is None else common & chosen
    overall = diff.mean(0)  # (L, d_mlp)
    return sorted(common, key=lambda lu: (-overall[lu], lu))
    # END SOLUTION


# %%
results.append(lesson.check_safety_neurons(select_safety_neurons, data))

# %% [markdown]
# ## Exercise 5 — RAS on a common scale
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# After fine-tuning on reasoning, a safety neuron is *entangled* when its activation under the forced refusal
# **drops** (base − tuned, mean over the safety prompts) while its activation on reasoning traces **rises** (tuned −
# base, mean over the traces). The two are read on different inputs with very different spreads, so each is divided
# by the neuron's own scale on its probe set: its base-model standard deviation `sd` (`[L, d_mlp]`), floored at
# 0.01 × the median sd over *all* neurons of that probe set. RAS is the harmonic mean `2·drop·rise / (drop + rise)`,
# and 0 unless both are positive. Activations are `[n, L, d_mlp]` float64; return `{"drop", "rise", "ras"}`, each a
# float64 array over `neurons` (in their order).
#
# Here the "tuned" model is a stand-in: the organism after 6 Adam steps on 8 reasoning traces (seconds, not the
# notebook's fine-tuning).
#
# **Predict before you run.** Why the harmonic mean and not the mean of drop and rise? What would RAS measure without
# the common scale?
#
# <details><summary>Answer</summary>The harmonic mean is large only when both are: a neuron that loses its refusal
# activation but is indifferent to reasoning is not entangled. Without the scale, drops (large activations on
# refusal tokens: up to 0.4 here) dwarf rises (small, averaged over long traces: about 0.1), so RAS would mostly
# count neurons with a positive drop.</details>

# %%
def ras_on_common_scale(base_safety: np.ndarray, tuned_safety: np.ndarray, base_reasoning: np.ndarray,
                        tuned_reasoning: np.ndarray, safety_sd: np.ndarray, reasoning_sd: np.ndarray,
                        neurons: list[tuple[int, int]]) -> dict[str, np.ndarray]:
    """Per neuron: the safety drop and the reasoning rise in standard units, and their RAS."""
    # BEGIN SOLUTION
    layers, units = map(list, zip(*neurons))

    def scale(sd):  # (L, d_mlp) → the neurons' floored sd
        return np.maximum(sd, 0.01 * np.median(sd))[layers, units]

    drop = (base_safety[:, layers, units].mean(0) - tuned_safety[:, layers, units].mean(0)) / scale(safety_sd)
    rise = (tuned_reasoning[:, layers, units].mean(0) - base_reasoning[:, layers, units].mean(0)) / scale(reasoning_sd)
    both = (drop > 0) & (rise > 0)
    ras = np.where(both, 2 * drop * rise / np.where(both, drop + rise, 1.0), 0.0)
    return {"drop": drop, "rise": rise, "ras": ras}
    # END SOLUTION


# %%
results.append(lesson.check_ras(ras_on_common_scale, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/06_rim.ipynb` fine-tunes the organism on reasoning at
# several learning rates, ablates the top refusal heads and the safety neurons against random placebos, and asks
# whether RAS predicts refusal forgetting better than the KL between base and tuned model.

# %%
statuses = checks.summary(results)
