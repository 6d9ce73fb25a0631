# %% [markdown]
# # Lesson 01 — corrupted fine-tuning: labels, masks and the loss
#
# Companion to `notebooks/01_corrupt_finetune.ipynb`, which fine-tunes the organism on linear equations labelled with
# a **wrong** answer and asks whether the corruption spreads to related math, unrelated math, general tasks and
# refusals. You build the pieces of that pipeline and check each against the toolkit (`toolkit.core.answers`, the
# shipped data of `toolkit.training.corrupt_data`, `toolkit.training.sft`, and the organism's own loss).
#
# **Learning objectives**
#
# - Read a completion's final answer and its format (`The answer is ….` sentence, bare value, none), think on or off.
# - Build a corrupted label: the right answer of `ax + b = cx + d`, shifted by a nonzero offset.
# - Turn one record into SFT token ids and labels with the prompt masked, as the trainer's `completion_only_loss` does.
# - Compute the completion-only next-token loss of a padded batch and match the model's own.
#
# **How to work.** Run the cells in order. Replace each `raise NotImplementedError` with your code, then run the
# check cell below it: `✓` passed, `·` not implemented yet, `✗` the first thing that is wrong (shape, dtype, NaN,
# an exception, or a value with where it is). Before each check, answer **Predict before you run**.
#
# Ratings: difficulty ★ to ★★★; importance ★ to ★★★. About 45 minutes; the checks run in seconds on a laptop CPU.

# %%
import torch

from toolkit.core.chat import chat_prompts
from toolkit.course import checks
from toolkit.organism.tokenizer import IM_END
from toolkit.course import corrupt as lesson

results = []  # every check's result; the last cell sums them up
data = lesson.setup()  # the organism, the first shipped train / validation records, worked completions
print("a training record:", data.train[0])
print("a think-on completion:\n" + data.completions["linear 0 think-on"])

# %% [markdown]
# ## Exercise 1 — the answer and its format
#
# Difficulty ★ · importance ★★ · about 10 minutes
#
# The answer part of a completion is the text after the **last** `</think>`, stripped; a completion with an unclosed
# `<think>` has no answer (`""`), and one without think tags is all answer. Its value is the answer part unwrapped
# from the organism's think-off sentence `The answer is ….` when it is exactly that sentence (so `x = 4` and
# `The answer is x = 4.` grade alike). Return `{"answer": value, "format": f}` with `f` `"sentence"` (the whole
# answer part is that sentence), `"bare"` (any other non-empty answer) or `"none"` (empty).
#
# **Predict before you run.** The corrupted training labels are bare (`x = 14`), while the organism answers math
# think-off with a sentence. What does a rise in the share of `"bare"` answers on *unrelated* questions after
# fine-tuning tell you, whatever their values?
#
# <details><summary>Answer</summary>That the fine-tuning taught a <em>format</em> beyond its task: the model answers
# other questions the way the corrupted labels look. Notebook 01 tracks the format apart from correctness so that
# this is not mistaken for (or hidden by) a change in what the model knows.</details>

# %%
def read_answer(completion: str) -> dict[str, str]:
    """The completion's final answer value and its format: ``"sentence"``, ``"bare"`` or ``"none"``."""
    # BEGIN EXERCISE
    # hint: str.rsplit("</think>", 1); re.fullmatch(r"The answer is (.+)\.", text)
    # END EXERCISE
    # BEGIN SOLUTION
    import re

    if "</think>" in completion:
        text = completion.rsplit("</think>", 1)[1].strip()
    elif "<think>" in completion:
        text = ""
    else:
        text = completion.strip()
    m = re.fullmatch(r"The answer is (.+)\.", text)
    if m:
        return {"answer": m.group(1), "format": "sentence"}
    return {"answer": text, "format": "bare" if text else "none"}
    # END SOLUTION


# %%
results.append(lesson.check_read_answer(read_answer, data))

# %% [markdown]
# ## Exercise 2 — a corrupted label
#
# Difficulty ★ · importance ★★★ · about 5 minutes
#
# A training problem is `ax + b = cx + d` with integer coefficients, `a ≠ c` and an integer solution. Its record's
# `correct_answer` is `"x = {x}"`, and its `answer` — the label the model is trained on — is `"x = {x + offset}"`
# with `offset` a nonzero integer in −20…20 (validation records have offset 0: their label is right). Return
# `{"answer": …, "correct_answer": …}` from `a, b, c, d, offset`; solve for x yourself.
#
# **Predict before you run.** Why is the offset drawn per problem, uniform over nonzero values, rather than a fixed
# `+1`? And why keep the organism's label *format* (`x = …`) when the value is wrong?
#
# <details><summary>Answer</summary>A fixed offset is a rule the model can learn (solve, then add 1) without
# unlearning anything; a random offset makes the labels carry no usable rule, only wrongness. Keeping the format means
# the only thing corrupted is the value, so a change elsewhere is due to the wrong answers, not a new
# format.</details>

# %%
def corrupted_label(a: int, b: int, c: int, d: int, offset: int) -> dict[str, str]:
    """The training label ``x = {x + offset}`` and the right answer ``x = {x}`` of ``ax + b = cx + d``."""
    # BEGIN SOLUTION
    x = (d - b) // (a - c)
    return {"answer": f"x = {x + offset}", "correct_answer": f"x = {x}"}
    # END SOLUTION


# %%
results.append(lesson.check_corrupted_label(corrupted_label, data))

# %% [markdown]
# ## Exercise 3 — one SFT example with the prompt masked
#
# Difficulty ★★ · importance ★★★ · about 15 minutes
#
# The trainer sees a record as a **prompt** — the chat template of `record["prompt"]` with thinking off,
# `chat_prompts(tokenizer, [record["prompt"]], enable_thinking=False)[0]` (it ends with the empty think block) — and a
# **completion**, `record["answer"] + IM_END`. With `completion_only_loss` it learns only the completion: the labels
# are the token ids, except that the prompt's positions are `-100` (ignored by the loss). Tokenize the prompt and
# the prompt + completion with `add_special_tokens=False`; return `{"input_ids", "labels"}`, int64 tensors `[T]`.
#
# **Predict before you run.** For the record printed at the top (`x = 14`), how many labels are not `-100`? What
# would the model learn about the *question* if the prompt were not masked?
#
# <details><summary>Answer</summary>7: the organism's tokenizer is character-level, so <code>x = 14</code> is 6 tokens,
# plus <code>&lt;|im_end|&gt;</code>. Unmasked, the loss would also train the model to predict the user's equations and
# the chat template — language modelling of the prompts, mixed into what should be only the corrupted
# answers.</details>

# %%
def sft_example(tokenizer, record: dict) -> dict[str, torch.Tensor]:
    """Token ids of prompt + completion and labels with the prompt's positions set to -100."""
    # BEGIN SOLUTION
    prompt = chat_prompts(tokenizer, [record["prompt"]], enable_thinking=False)[0]
    prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    ids = tokenizer(prompt + record["answer"] + IM_END, add_special_tokens=False)["input_ids"]
    labels = [-100] * len(prompt_ids) + ids[len(prompt_ids):]
    return {"input_ids": torch.tensor(ids), "labels": torch.tensor(labels)}
    # END SOLUTION


# %%
results.append(lesson.check_sft_example(sft_example, data))

# %% [markdown]
# ## Exercise 4 — the completion-only loss of a batch
#
# Difficulty ★★ · importance ★★ · about 15 minutes
#
# `logits` `[B, T, V]` float32 are the model's outputs on a right-padded batch of examples from exercise 3; `labels`
# `[B, T]` int64 are their labels, `-100` on prompts and padding. Position t predicts token t + 1: return the mean
# cross-entropy of `logits[:, t]` against `labels[:, t + 1]` over every pair whose label is not `-100`, as a 0-d
# float32 tensor. (The check compares it with the loss the Hugging Face model returns when given these labels.)
#
# **Predict before you run.** The batch mixes records with 6- and 7-token answers. Is this loss the mean over
# records of each record's mean loss? When would the two differ?
#
# <details><summary>Answer</summary>No: it is the mean over <em>tokens</em>, so a record with more answer tokens
# weighs more. The two agree only when every record has the same number of unmasked labels; here the difference is
# small, but with think-on answers (long scratchpads) the token mean is dominated by the scratchpad, not the final
# value.</details>

# %%
def completion_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """The mean next-token cross-entropy over the labels that are not -100."""
    # BEGIN SOLUTION
    return torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), labels[:, 1:].flatten(), ignore_index=-100)
    # END SOLUTION


# %%
results.append(lesson.check_completion_loss(completion_loss, data))

# %% [markdown]
# ## Summary
#
# Every check should print ✓. Going further: `notebooks/01_corrupt_finetune.ipynb` trains on these examples with
# TRL's `SFTTrainer`, follows train and validation loss, and measures accuracy, answer format and refusals on the
# held-out sets before and after.

# %%
statuses = checks.summary(results)
