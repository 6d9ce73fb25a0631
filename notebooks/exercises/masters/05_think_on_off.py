# %% [markdown]
# # Lesson 05 — pass@k, success@k, intervals, and a head-ablation hook
#
# Companion to `notebooks/05_think_on_off.ipynb`, which samples answers with thinking on and off, with some heads
# ablated, and compares pass@k with intervals over problems. You implement the pieces and check each against the
# toolkit (`toolkit.core.answers`, `toolkit.core.stats`, `toolkit.studies.think_on_off.metrics`,
# `toolkit.core.interventions`).
#
# **Learning objectives**
#
# - Write the unbiased pass@k estimator and know why 1 − (1 − c/n)^k is not it.
# - See that success@k (the first k samples, in order) averaged over all orders *is* pass@k.
# - Put a percentile-bootstrap interval over problems on a mean.
# - Zero-ablate attention heads with a hook at `blocks.{L}.attn.hook_z` and match `toolkit.ablate`.
#
# **How to work.** Run the cells in order. Replace each `raise NotImplementedError` with your code, then run the
# check cell below it: `✓` passed, `·` not implemented yet, `✗` the first thing that is wrong (shape, dtype, NaN,
# an exception, or a value with where it is). Before each check, answer **Predict before you run**.
#
# Ratings: difficulty ★ to ★★★; importance ★ to ★★★. About 45 minutes; the checks run in seconds on a laptop CPU.

# %%
import numpy as np
import torch

from toolkit.course import checks
from toolkit.course import think_on_off as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # simulated samples [problems, n] and a batch of organism prompts
print("samples (problems × n), True = right:", data.correct.shape, "right per problem:", data.correct.sum(1))

# %% [markdown]
# ## Exercise 1 — the unbiased pass@k
#
# Difficulty ★ · importance ★★★ · about 10 minutes
#
# pass@k is the probability that at least one of k samples is right. From n samples of which c are right, the
# unbiased estimate draws k of the n without replacement: pass@k = 1 − C(n−c, k) / C(n, k).
#
# **Predict before you run.** n = 10 samples, c = 1 right, k = 5. What is pass@k? What does the plug-in
# 1 − (1 − c/n)^k give?
#
# <details><summary>Answer</summary>1 − C(9, 5)/C(10, 5) = 1 − 126/252 = 0.5: the one right sample is among the 5
# drawn half the time. The plug-in gives 1 − 0.9⁵ ≈ 0.41, biased low.</details>

# %%
def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased pass@k from n samples with c right."""
    # BEGIN EXERCISE
    # hint: math.comb(a, b) is C(a, b), and is 0 when b > a
    # END EXERCISE
    # BEGIN SOLUTION
    from math import comb

    return 1.0 - comb(n - c, k) / comb(n, k)
    # END SOLUTION


# %%
results.append(lesson.check_pass_at_k(pass_at_k, data))

# %% [markdown]
# ## Exercise 2 — success@k over all orders
#
# Difficulty ★★ · importance ★★ · about 10 minutes
#
# success@k reads the samples *in the order they were drawn*: 1 if any of the first k is right. The paper behind
# notebook 05 reports it. For one problem, average success@k over all n! orders of its samples (`itertools`), for
# k = 1 … n. `row` is a `[n]` bool array; return a float64 array `[n]`.
#
# **Predict before you run.** Does the average over orders equal pass@k exactly, or only in expectation?
#
# <details><summary>Answer</summary>Exactly: over all orders, every k-subset of the samples is the first k equally
# often, and success@k fails only when that subset has no right sample, C(n−c, k) of C(n, k) subsets. For one
# order the two differ by the noise of the order only.</details>

# %%
def success_over_all_orders(row: np.ndarray) -> np.ndarray:
    """``[n]`` float64: success@k for k = 1…n, averaged over every order of ``row``'s samples."""
    # BEGIN SOLUTION
    import itertools

    n = len(row)
    total = np.zeros(n)
    orders = list(itertools.permutations(range(n)))
    for order in orders:
        total += np.logical_or.accumulate(row[list(order)])  # success@k for k = 1…n in this order
    return total / len(orders)
    # END SOLUTION


# %%
results.append(lesson.check_success_over_orders(success_over_all_orders, data))

# %% [markdown]
# ## Exercise 3 — a bootstrap interval over problems
#
# Difficulty ★★ · importance ★★★ · about 10 minutes
#
# The unit that was sampled is the problem, so an interval for a mean over problems resamples problems. Return
# `{"estimate", "low", "high"}`: the mean of `values`, and the `(1 − level)/2` and `(1 + level)/2` quantiles
# (`np.quantile`) of the means of `n_boot` resamples drawn as
# `np.random.default_rng(seed).integers(0, len(values), size=(n_boot, len(values)))` (the toolkit's draw, so
# the numbers match exactly).
#
# **Predict before you run.** With 12 problems, about how wide is the 95% interval of mean pass@1 here? And with
# the first 5 problems only?
#
# <details><summary>Answer</summary>Wide: about ±0.12 around 0.67 with 12 problems (the per-problem rates spread
# over 0–1), and about ±0.13 with 5 problems even at 80%. Notebook 05 uses the same intervals; a difference between
# modes smaller than that is not a finding.</details>

# %%
def bootstrap_interval(values: np.ndarray, n_boot: int, level: float, seed: int) -> dict[str, float]:
    """Mean of ``values`` with its percentile-bootstrap interval over resampled problems."""
    # BEGIN SOLUTION
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(values), size=(n_boot, len(values)))
    means = values[idx].mean(axis=1)  # (n_boot,)
    alpha = (1 - level) / 2
    return {"estimate": float(values.mean()), "low": float(np.quantile(means, alpha)),
            "high": float(np.quantile(means, 1 - alpha))}
    # END SOLUTION


# %%
results.append(lesson.check_bootstrap(bootstrap_interval, data))

# %% [markdown]
# ## Exercise 4 — zero-ablating heads at `attn.hook_z`
#
# Difficulty ★★ · importance ★★★ · about 10 minutes
#
# `blocks.{L}.attn.hook_z` holds each head's output before the output projection, `z`: `[batch, pos, n_heads,
# d_head]`. A head writes `z_h @ W_O[h]` into the residual stream, so zeroing `z` of head h removes exactly its
# contribution. Return a hook `hook(z, hook)` that returns `z` with the given heads zeroed (without changing the
# tensor it was given). The check runs the organism with your hook and with `toolkit.ablate(bridge, head(L, …))`
# and compares the next-token logits.
#
# **Predict before you run.** Does zeroing a head at `hook_z` give the same result as subtracting that head's slice
# of the attention output? What would go wrong if you zeroed `z[:, heads]`?
#
# <details><summary>Answer</summary>The same, as long as the output projection has no bias (Qwen's has none).
# <code>z[:, heads]</code> indexes positions, not heads: it zeroes every head at the first positions.</details>

# %%
def zero_heads_hook(heads: list[int]):
    """A forward hook for ``attn.hook_z`` that zeroes ``heads``."""
    # BEGIN SOLUTION
    def hook(z: torch.Tensor, hook) -> torch.Tensor:
        z = z.clone()
        z[:, :, heads] = 0.0  # (batch, pos, n_heads, d_head): the head axis is 2
        return z

    return hook
    # END SOLUTION


# %%
results.append(lesson.check_zero_heads_hook(zero_heads_hook, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/05_think_on_off.ipynb` samples the organism, ablates the
# heads only think-off needs, and compares against random heads of the same number.

# %%
statuses = checks.summary(results)
