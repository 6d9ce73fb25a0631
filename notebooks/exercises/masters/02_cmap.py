# %% [markdown]
# # Lesson 02 — cross-model activation patching, step by step
#
# Companion to `notebooks/02_cmap.ipynb`, which patches a corrupted model's activations into the clean organism at
# every generation step to find where the corruption lives. You write one patched step, the autoregressive loop and
# the corruption transfer score (CTS), and check each against the slow reference (`toolkit.reference.cmap`) and the
# fast, cached `toolkit.methods.cmap.run`.
#
# Here the donor is `organism-base`, an earlier snapshot of the organism's own training run (same architecture, other
# weights): a stand-in for notebook 01's corrupted checkpoint that needs no fine-tuning.
#
# **Learning objectives**
#
# - Patch one site of a receiver with a donor's activation: record, then replace, at the current position or at all.
# - Run CMAP autoregressively: a fresh donor activation at every step, on the patched model's own tokens.
# - Score a site on a shared trajectory with ΔL = logit[c*] − logit[k*] and CTS, and know when CTS is undefined.
#
# **How to work.** Run the cells in order. Replace each `raise NotImplementedError` with your code, then run the
# check cell below it: `✓` passed, `·` not implemented yet, `✗` the first thing that is wrong (shape, dtype, NaN,
# an exception, or a value with where it is). Before each check, answer **Predict before you run**.
#
# Ratings: difficulty ★ to ★★★; importance ★ to ★★★. About 45 minutes; the checks run in seconds on a laptop CPU.

# %%
import numpy as np
import torch

from toolkit.core import interventions as iv
from toolkit.course import checks
from toolkit.course import cmap as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # clean = organism, corrupted = organism-base, 3 held-out sums, thinking off
clean, corrupted = data.clean, data.corrupted
print("prompts:", data.prompts, "\nsites:", [s.label for s in lesson.SITES])
print("clean:", data.forced.clean_texts(), "\ncorrupted:", data.forced.corrupted_texts())

# %% [markdown]
# ## Exercise 1 — one patched step
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# `ids` are the token ids of a sequence so far (the chat-formatted prompt, maybe followed by generated tokens).
# Run the corrupted model on them and record `site` (`iv.record(corrupted.bridge, [site])` yields a recording; after
# the forward pass `rec[site]` is the site's activation over the whole sequence). Then run the clean model on the same
# ids with that activation patched in — `iv.patch(clean.bridge, site, activation, positions=…)` — at the last
# position only (`mode == "current"`) or at every position (`mode == "all"`, `positions=None`). Return the clean
# model's next-token logits at the last position, `[vocab]` (run the models as `model.hf(x, use_cache=False)` under
# `torch.no_grad()`, `x` `[1, T]`).
#
# **Predict before you run.** In `current` mode, which model's activations does the clean model see at the site on
# the *earlier* positions? So can a patch at step t influence step t + 1's logits?
#
# <details><summary>Answer</summary>The clean model's own: only the last position is replaced. Step t's patch changes
# step t's token, and that token is part of every later input — so it influences later steps through the text, not
# through the earlier positions' activations. In <code>all</code> mode it also acts through attention to the earlier
# positions.</details>

# %%
@torch.no_grad()
def patched_logits(ids: list[int], site: iv.Site, mode: str) -> torch.Tensor:
    """``[vocab]``: the clean model's next-token logits with ``site`` taken from the corrupted model."""
    # BEGIN SOLUTION
    x = torch.tensor([ids])  # (1, T)
    with iv.record(corrupted.bridge, [site]) as rec:
        corrupted.hf(x, use_cache=False)
    positions = [len(ids) - 1] if mode == "current" else None
    with iv.patch(clean.bridge, site, rec[site], positions=positions):
        return clean.hf(x, use_cache=False).logits[0, -1]  # (vocab,)
    # END SOLUTION


# %%
results.append(lesson.check_patched_logits(patched_logits, data))

# %% [markdown]
# ## Exercise 2 — autoregressive CMAP
#
# Difficulty ★ · importance ★★ · about 10 minutes
#
# Starting from the prompt's ids, take the patched model's greedy token (your exercise 1, argmax), append it, and
# repeat for up to `steps` tokens, stopping right after the end token `data.eos` (keep it). Both models see the
# *patched* model's tokens, and the donor's activation is recomputed on them at every step. Return the new token
# ids as a list of ints.
#
# **Predict before you run.** For the first prompt the clean model answers "The answer is 1414." and the donor
# "The answer is 1455.". What does the clean model answer with the residual stream after layer 2 (`L2 resid`) patched
# at each current position?
#
# <details><summary>Answer</summary>"The answer is 1506." — neither model's answer. A single site's activation, put
# into another model's context, can produce tokens neither model would; free-running outputs alone do not say how
# far the patch moved the clean model toward the donor (exercise 3 does).</details>

# %%
def cmap_generate(prompt_ids: list[int], site: iv.Site, mode: str, steps: int) -> list[int]:
    """Greedy generation of the clean model with ``site`` patched from the corrupted model at every step."""
    # BEGIN SOLUTION
    out: list[int] = []
    for _ in range(steps):
        nxt = int(patched_logits(prompt_ids + out, site, mode).argmax())
        out.append(nxt)
        if nxt == data.eos:
            break
    return out
    # END SOLUTION


# %%
results.append(lesson.check_cmap_generate(cmap_generate, data))

# %% [markdown]
# ## Exercise 3 — ΔL and the corruption transfer score
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# To score a site, every run follows one shared trajectory (here the clean model's greedy tokens). At step t let c*
# and k* be the corrupted and the clean model's top tokens. ΔL = logit[c*] − logit[k*] measures how much a model
# prefers the donor's token: ΔL_clean ≤ 0 (k* is the clean model's top token) and ΔL_corrupted ≥ 0.
# CTS = (ΔL_patched − ΔL_clean) / (ΔL_corrupted − ΔL_clean): 0 when the patch changes nothing, 1 when the patched
# model prefers the donor's token as much as the donor does. Where the denominator is below `min_gap` the step says
# nothing about the site: CTS is NaN there.
#
# The three arguments are `[T, vocab]` logits at every step (patched, clean, corrupted); return `{"delta_patched",
# "delta_clean", "delta_corrupted", "cts"}`, each `[T]` float64.
#
# **Predict before you run.** On the trajectory "The answer is 1414." (20 tokens with the end token), at which steps
# is CTS defined?
#
# <details><summary>Answer</summary>Only at steps 16 and 17, the last two digits, where 1414 and 1455 part: on the
# template both models pick the same token, so the denominator is 0. Over all prompts about 9% of steps count, which
# is why notebook 02 reports CTS's coverage next to it.</details>

# %%
def delta_and_cts(patched: torch.Tensor, clean_logits: torch.Tensor, corrupted_logits: torch.Tensor,
                  min_gap: float) -> dict[str, np.ndarray]:
    """Per step: ΔL of the patched, clean and corrupted logits, and CTS (NaN where the gap is below min_gap)."""
    # BEGIN SOLUTION
    c_star = corrupted_logits.argmax(-1)[:, None]  # (T, 1)
    k_star = clean_logits.argmax(-1)[:, None]

    def delta(logits):  # (T, vocab) → (T,)
        return (logits.gather(-1, c_star) - logits.gather(-1, k_star))[:, 0].double().numpy()

    out = {"delta_patched": delta(patched), "delta_clean": delta(clean_logits),
           "delta_corrupted": delta(corrupted_logits)}
    denom = out["delta_corrupted"] - out["delta_clean"]
    with np.errstate(invalid="ignore", divide="ignore"):
        out["cts"] = np.where(denom >= min_gap, (out["delta_patched"] - out["delta_clean"]) / denom, np.nan)
    return out
    # END SOLUTION


# %%
results.append(lesson.check_cts(delta_and_cts, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/02_cmap.ipynb` sweeps every layer's attention, MLP and
# residual stream (and then single heads) with the batched, KV-cached `cmap.run` on notebook 01's corrupted model.

# %%
statuses = checks.summary(results)
