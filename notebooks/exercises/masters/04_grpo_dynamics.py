# %% [markdown]
# # Lesson 04 — GRPO's advantage, emergent heads, cohorts, and a null for the count
#
# Companion to `notebooks/04_grpo_dynamics.ipynb`, which trains the organism with GRPO, finds a circuit at each
# checkpoint and follows which attention heads appear, stay and leave ("Thinking Sparks"). You implement the pieces
# on hand-made and simulated inputs (no training run, no model) and check each against the toolkit or a documented
# closed form (`toolkit.core.units`, `toolkit.methods.dynamics`, `toolkit.evaluation.emergence`).
#
# **Learning objectives**
#
# - Compute GRPO's group-relative advantage and see why a group whose completions all get one reward teaches nothing.
# - Split a post-trained circuit against its base: emergent, maintained and lost heads, and the Jaccard index.
# - Group emergent heads into cohorts by the checkpoint where they first appear, and measure how long each survives.
# - Call a head emergent only when its gain beats the base model's own resampling noise (the base-vs-itself null).
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
from toolkit.course import grpo as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # simulated rewards, a hand-made run of head sets, simulated inclusion frequencies
print("rewards (groups × completions):\n", data.rewards.view(-1, data.group_size))
print("base circuit:", sorted(data.base))
for step, heads in data.snapshots.items():
    print(f"step {step}:", sorted(heads))

# %% [markdown]
# ## Exercise 1 — the group-relative advantage
#
# Difficulty ★ · importance ★★★ · about 10 minutes
#
# GRPO samples a *group* of completions per prompt and needs no value model: a completion's advantage is its reward
# against the other completions of its group, A = (r − mean of the group) / (std + 1e-4). `rewards` is flat and
# group-major (`[groups × group_size]`, group 0's completions first), as TRL lays it out. `scale` chooses the std:
# `"group"` (TRL's default; the std of the group), `"batch"` (the std of all rewards) or `"none"` (no division:
# "Dr. GRPO"). Use the Bessel-corrected std (`torch.std`'s default), as TRL does. Return float32, the shape of
# `rewards`.
#
# The toolkit trains with TRL's `GRPOTrainer` and has no advantage function of its own; the check compares with
# `lesson.reference_advantages`, the closed form of TRL 1.16's (`GRPOTrainer._generate_and_score_completions`).
#
# **Predict before you run.** Group 0's six completions are all wrong and all well formatted (reward 0.1 each). What
# are their advantages? And in group 3, where five of six are right, is the wrong one's advantage larger or smaller
# in size than a right one's?
#
# <details><summary>Answer</summary>All 0: r − mean is 0 and the std is 0, so 0 / 1e-4 = 0. A group with one reward
# gives no gradient at all, which is why notebook 04 needs prompts the model sometimes solves. In group 3 the lone
# wrong completion gets about −2.0 and each right one about +0.4: the advantages of a group sum to 0, so the rare
# outcome carries the large one.</details>

# %%
def group_advantages(rewards: torch.Tensor, group_size: int, scale: str) -> torch.Tensor:
    """GRPO's advantage of each completion (``scale``: ``"group"``, ``"batch"`` or ``"none"``)."""
    # BEGIN EXERCISE
    # hint: rewards.view(-1, group_size) has one row per group; .repeat_interleave(group_size) expands per row
    # END EXERCISE
    # BEGIN SOLUTION
    grouped = rewards.view(-1, group_size)  # (groups, group_size)
    centred = (grouped - grouped.mean(1, keepdim=True)).reshape(-1)
    if scale == "none":
        return centred
    if scale == "group":
        std = grouped.std(1, keepdim=True).expand_as(grouped).reshape(-1)
    else:
        std = rewards.std()
    return centred / (std + 1e-4)
    # END SOLUTION


# %%
results.append(lesson.check_group_advantages(group_advantages, data))

# %% [markdown]
# ## Exercise 2 — emergent, maintained and lost heads
#
# Difficulty ★ · importance ★★ · about 5 minutes
#
# A circuit's heads are a set of `(layer, head)` pairs. Against the base model's circuit B, a post-trained circuit S
# has **emergent** heads S − B, **maintained** heads S ∩ B and **lost** heads B − S; the **Jaccard index** is
# |S ∩ B| / |S ∪ B| (NaN when both are empty). Return the three as sorted lists and the index as a float. The check
# compares with `toolkit.core.units.compare_heads` on the final checkpoint against the base and two edge cases.
#
# **Predict before you run.** From the sets printed above: how many heads are emergent at step 40, and what is the
# Jaccard index? Does a Jaccard of 0.4 say the model "rewired"?
#
# <details><summary>Answer</summary>Three emergent ((0, 3), (1, 2), (2, 0)), two maintained, two lost: J = 2/7 ≈
# 0.29. On its own, no: two circuits of the *same* model found on two resamples of its prompts also overlap
# imperfectly. Exercise 4 asks how much change the base's own noise produces.</details>

# %%
def head_split(post: set, base: set) -> dict:
    """``{"emergent", "maintained", "lost"}`` (sorted lists of heads) and ``"jaccard"`` of ``post`` against ``base``."""
    # BEGIN SOLUTION
    union = post | base
    return {"emergent": sorted(post - base), "maintained": sorted(post & base), "lost": sorted(base - post),
            "jaccard": len(post & base) / len(union) if union else float("nan")}
    # END SOLUTION


# %%
results.append(lesson.check_head_split(head_split, data))

# %% [markdown]
# ## Exercise 3 — cohorts and survival across checkpoints
#
# Difficulty ★★ · importance ★★ · about 15 minutes
#
# Follow the emergent heads through the checkpoints (`snapshots`: step → head set, steps > 0; the base is step 0).
# A head's **cohort** is the first step at which it is emergent (in S_t and not in B). Its **survival** is the
# fraction of the checkpoints *after* that step at which it is still emergent; heads born at the last checkpoint
# have no later checkpoint and get no survival. Return `{"cohorts": {step: sorted heads born there}, "survival":
# {head: fraction}}` (only steps with a newborn head). The check compares with `toolkit.methods.dynamics`
# (`head_dynamics(base, snapshots).cohorts` and `head_survival`).
#
# **Predict before you run.** Head (1, 2) appears at step 10, is gone at 30 and is back at 40. Which cohort is it
# in, and what is its survival? Head (3, 3) is emergent only at step 20?
#
# <details><summary>Answer</summary>Cohort 10 (a head is born once; its return at 40 does not start a new cohort),
# survival 2/3 (emergent at 20 and 40 of 20, 30, 40). (3, 3): cohort 20, survival 0: a head that flickers in for one
# checkpoint. Notebook 04 reads such heads as noise of the circuit search unless the null says otherwise.</details>

# %%
def cohorts_and_survival(base: set, snapshots: dict) -> dict:
    """Cohorts of emergent heads and each head's survival over the later checkpoints."""
    # BEGIN SOLUTION
    steps = sorted(snapshots)
    emergent = {s: snapshots[s] - base for s in steps}
    born = {}
    for s in steps:
        for h in emergent[s]:
            born.setdefault(h, s)
    cohorts = {s: sorted(h for h, b in born.items() if b == s) for s in steps if s in born.values()}
    survival = {}
    for h, b in born.items():
        later = [s for s in steps if s > b]
        if later:
            survival[h] = sum(h in emergent[s] for s in later) / len(later)
    return {"cohorts": cohorts, "survival": survival}
    # END SOLUTION


# %%
results.append(lesson.check_cohorts(cohorts_and_survival, data))

# %% [markdown]
# ## Exercise 4 — emergent heads against the base-vs-itself null
#
# Difficulty ★★★ · importance ★★★ · about 15 minutes
#
# A set difference counts heads that moved by chance. The toolkit instead compares **inclusion frequencies**, the
# share of bootstrap circuits that contain each head: `f_post`, `f_base` `[L, H]`. Its null is the base against
# itself: R replicates, each two independent resamples of the base's prompts, `null_diff[r]` = f₂ − f₁ `[L, H]`.
#
# - the **margin** is the `level` quantile (`np.quantile`) over replicates of the largest difference over heads;
# - a head is **emergent** when f_post − f_base > margin; list them by gain, largest first (ties by `(layer, head)`);
# - the **count p-value** for k = the number of emergent heads (1 when k = 0): compare the k-th largest gain with
#   the null's k-th largest per replicate, p = (1 + #{r: null_(k),r ≥ gain_(k)}) / (1 + R).
#
# The check compares with `toolkit.evaluation.emergence.emergent_test` at levels 0.95 and 0.8.
#
# **Predict before you run.** The simulated post-trained model raised three heads' rates: (1, 2) and (2, 0) a lot,
# (0, 3) by 0.15 only. How many heads do you expect to pass at level 0.95? And at 0.8?
#
# <details><summary>Answer</summary>Two at 0.95, (1, 2) and (2, 0): the margin is 0.18 and (0, 3)'s measured gain
# is 0.18, just not above it. At 0.8 the margin drops to 0.14 and (0, 3) passes too: a lower level is a weaker
# family-wise guard (about 20% of base-vs-itself replicates would call some head emergent). The count p is 0.005,
# the smallest 200 replicates allow, at both levels: even the third-largest gain beats the null's third-largest
# in every replicate, so "three heads" is not chance, though which third head it is may be.</details>

# %%
def emergent_heads(f_post: np.ndarray, f_base: np.ndarray, null_diff: np.ndarray, level: float) -> dict:
    """``{"margin", "heads", "count_p"}`` of the post-trained frequencies against the base and its null."""
    # BEGIN SOLUTION
    n_null = len(null_diff)
    margin = float(np.quantile(null_diff.reshape(n_null, -1).max(1), level))
    gain = f_post - f_base
    heads = sorted(((int(la), int(h)) for la, h in zip(*np.nonzero(gain > margin))), key=lambda lh: (-gain[lh], lh))
    k = len(heads)
    if k == 0:
        return {"margin": margin, "heads": heads, "count_p": 1.0}
    observed = np.sort(gain.ravel())[-k]
    null_k = np.sort(null_diff.reshape(n_null, -1), axis=1)[:, -k]
    return {"margin": margin, "heads": heads, "count_p": float((1 + (null_k >= observed).sum()) / (1 + n_null))}
    # END SOLUTION


# %%
results.append(lesson.check_emergent_test(emergent_heads, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/04_grpo_dynamics.ipynb` builds the head sets from EAP-IG
# circuits of real GRPO checkpoints, draws the cohorts as a heatmap, and correlates the emergent count with the
# reward (`toolkit.methods.dynamics.reward_correlation`).

# %%
statuses = checks.summary(results)
