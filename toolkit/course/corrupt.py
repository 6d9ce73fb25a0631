"""Lesson 01 (corrupted fine-tuning): the data and the checks of ``notebooks/exercises/01_corrupt_finetune.ipynb``.

The checks run on the shipped corrupted-fine-tuning data (``data/corrupt_finetune``,
:mod:`toolkit.training.corrupt_data`) and the organism's tokenizer and weights. Each compares the learner's function
with the toolkit:

1. :func:`check_read_answer` — a completion's answer value and format, on worked think-on and think-off completions of
   every organism task, the training labels and edge cases, against :func:`toolkit.core.answers.extract_answer` and
   :func:`toolkit.core.answers.answer_format`;
2. :func:`check_corrupted_label` — the wrong training label and the right answer of a linear equation from its
   coefficients and offset, against the shipped ``train`` and ``validation`` records;
3. :func:`check_sft_example` — one record's token ids and labels with the prompt masked (``-100``), from the prompt and
   completion of :func:`toolkit.training.sft.sft_dataset`, masked as TRL's ``completion_only_loss`` masks them (the
   prompt's tokens, i.e. the common prefix of the tokenized prompt and prompt + completion);
4. :func:`check_completion_loss` — the mean next-token cross-entropy over the unmasked labels of a right-padded batch,
   against the loss the organism's Hugging Face model returns for those labels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from toolkit.core import answers
from toolkit.core.models import LoadedModel, load
from toolkit.course.checks import CheckResult, check
from toolkit.organism import tasks
from toolkit.training import corrupt_data
from toolkit.training.sft import sft_dataset

EDGE_CASES = {
    "bare training label": "x = 14",
    "empty": "",
    "unclosed think": "<think>\n3x = 6\nx = 2",
    "two closing tags": "<think>\na\n</think>\n</think>\n\nThe answer is x = 3.",
    "sentence without period": "The answer is x = 3",
    "think then bare": "<think>\n2x = 8\nx = 4\n</think>\n\n  x = 4  ",
}


@dataclass
class Data:
    """The organism, the shipped ``train`` and ``validation`` records and a few worked completions by name."""

    model: LoadedModel
    train: list[dict]
    validation: list[dict]
    completions: dict[str, str]


def worked_completions(n: int = 2, seed: int = 0) -> dict[str, str]:
    """Think-on and think-off completions (:func:`toolkit.organism.tasks.completion`) of ``n`` held-out examples of each
    task, and :data:`EDGE_CASES`."""
    out = {}
    for task in tasks.TASKS:
        for i, ex in enumerate(tasks.held_out(task, n, seed=seed)):
            for think in (False, True):
                out[f"{task} {i} think-{'on' if think else 'off'}"] = tasks.completion(ex, think)
    return out | EDGE_CASES


def setup(n_train: int = 24, n_validation: int = 6) -> Data:
    """The organism and the first records of the shipped data."""
    sets = corrupt_data.load(corrupt_data.SHIPPED)
    return Data(load("organism"), sets["train"][:n_train], sets["validation"][:n_validation], worked_completions())


def check_read_answer(read_answer: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``read_answer(completion)`` → ``{"answer": str, "format": "sentence" | "bare" | "none"}`` on every one of
    :attr:`Data.completions`."""
    def run(fn):
        return lambda cases: {name: fn(text) for name, text in cases.items()}

    def reference(text):
        return {"answer": answers.extract_answer(text), "format": answers.answer_format(text)}

    return check(run(read_answer), run(reference), data.completions, name="read_answer", verbose=verbose)


def check_corrupted_label(corrupted_label: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``corrupted_label(a, b, c, d, offset)`` → ``{"answer", "correct_answer"}`` (``"x = …"``) of ``ax + b = cx + d``
    on the shipped ``train`` records (nonzero offsets) and ``validation`` records (offset 0)."""
    records = data.train + data.validation

    def learner(_):
        return {r["id"]: corrupted_label(*(r["problem"][k] for k in "abcd"), r["offset"]) for r in records}

    def reference(_):
        return {r["id"]: {"answer": r["answer"], "correct_answer": r["correct_answer"]} for r in records}

    return check(learner, reference, None, name="corrupted_label", verbose=verbose)


def reference_sft_example(tokenizer, record: dict) -> dict[str, torch.Tensor]:
    """``{"input_ids", "labels"}`` (int64 ``[T]``) of ``record`` as the toolkit's SFT trains on it: the prompt and
    completion of :func:`~toolkit.training.sft.sft_dataset` (think-off), the prompt's tokens labelled ``-100``."""
    row = sft_dataset(tokenizer, [record])[0]
    prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
    ids = tokenizer(row["prompt"] + row["completion"], add_special_tokens=False)["input_ids"]
    n_prompt = next((i for i, (p, q) in enumerate(zip(prompt, ids)) if p != q), min(len(prompt), len(ids)))
    labels = [-100] * n_prompt + ids[n_prompt:]
    return {"input_ids": torch.tensor(ids, dtype=torch.long), "labels": torch.tensor(labels, dtype=torch.long)}


def check_sft_example(sft_example: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``sft_example(tokenizer, record)`` → ``{"input_ids", "labels"}`` int64 ``[T]`` on the first 4 ``train`` and 2
    ``validation`` records."""
    records = data.train[:4] + data.validation[:2]
    tok = data.model.tokenizer

    def run(fn):
        return lambda _: {r["id"]: fn(tok, dict(r)) for r in records}

    return check(run(sft_example), run(reference_sft_example), None, name="sft_example", verbose=verbose)


def loss_batch(data: Data, n: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(input_ids, attention_mask, labels)`` ``[n, T]`` of the first ``n`` train records, right-padded (pad labels
    ``-100``)."""
    rows = [reference_sft_example(data.model.tokenizer, r) for r in data.train[:n]]
    width = max(len(r["input_ids"]) for r in rows)
    pad = data.model.tokenizer.pad_token_id
    ids = torch.full((n, width), pad, dtype=torch.long)
    labels = torch.full((n, width), -100, dtype=torch.long)
    mask = torch.zeros((n, width), dtype=torch.long)
    for i, r in enumerate(rows):
        t = len(r["input_ids"])
        ids[i, :t], labels[i, :t], mask[i, :t] = r["input_ids"], r["labels"], 1
    return ids, mask, labels


@torch.no_grad()
def check_completion_loss(completion_loss: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``completion_loss(logits, labels)`` (``[B, T, V]`` float32, ``[B, T]`` int64 with ``-100`` where masked) → a
    0-d float32 tensor, on the organism's logits of :func:`loss_batch`, against the model's own loss."""
    ids, mask, labels = loss_batch(data)
    out = data.model.hf(input_ids=ids, attention_mask=mask, labels=labels, use_cache=False)
    logits, loss = out.logits.float(), out.loss.float()
    return check(lambda _: completion_loss(logits.clone(), labels.clone()), lambda _: loss, None,
                 name="completion_loss", atol=1e-5, rtol=1e-5, verbose=verbose)
