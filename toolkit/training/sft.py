"""Supervised fine-tuning through TRL: one run's size (:class:`Preset`) and shared settings (:class:`TrainSettings`),
the prompt-completion dataset, the trainer, and divergence tracking.

- Format: think-off by default. The prompt is the chat template with ``enable_thinking=False``, so it ends with the
  empty think block ``<think>\\n\\n</think>\\n\\n``; the completion is ``answer + "<|im_end|>"``. TRL's ``SFTTrainer``
  on this prompt-completion dataset with ``completion_only_loss=True`` puts the loss on the completion tokens only.
  With ``enable_thinking=True`` the prompt is the think-on generation prompt and the answer carries its own think
  block.
- AdamW (weight decay 0.01), cosine schedule with 10% warmup, gradient clipping at 1.0, batch 32; fp32 weights with
  bf16 autocast on GPU. The tokenizer comes from :func:`toolkit.core.models.load_tokenizer`, the one loader used for
  inference too.
- At each evaluation (every ``eval_fraction`` of training, and at the start) the trainer measures the loss on two
  eval sets, ``train`` (the first ``len(validation)`` training problems) and ``validation``;
  :func:`history_from_log` pairs them per step with **divergence = eval − train**.
- :class:`DivergenceCallback` stops training on a non-finite loss or gradient norm before that step is
  checkpointed (:class:`~toolkit.organism.build.NonFiniteLossError`).

See ``docs/methods.md`` ("Corrupted fine-tuning") for the study that uses these.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PreTrainedTokenizerBase, TrainerCallback
from transformers.trainer_callback import PrinterCallback

from toolkit.core import models
from toolkit.core.chat import chat_prompts
from toolkit.organism.build import NonFiniteLossError
from toolkit.organism.tokenizer import IM_END
from toolkit.training.checkpoints import last_good_checkpoint
from toolkit.training.compat import no_activation_checkpointing
from toolkit.training.runs import check_settings


@dataclass(frozen=True)
class Preset:
    """The size of one SFT run: how many training problems, how many passes over them, peak learning rate. The
    validation set (different problems) is a fifth of the training set."""

    name: str
    n_train: int
    epochs: int
    lr: float
    original: str  # what this run's size stands for (e.g. the configuration of an original study it scales)

    def __post_init__(self):
        check_settings(self)

    @property
    def n_validation(self) -> int:
        return max(1, self.n_train // 5)

    def scaled(self, size_scale: float) -> Preset:
        """The same preset with ``size_scale`` times the problems (at least 8)."""
        return dataclasses.replace(self, n_train=max(8, round(self.n_train * size_scale)))


@dataclass(frozen=True)
class TrainSettings:
    """Settings shared by every preset. ``eval_fraction``: evaluate at the start and every this fraction of
    training; ``save_every``: checkpoint interval in optimizer steps."""

    batch_size: int = 32
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    eval_fraction: float = 0.1
    save_every: int = 100
    seed: int = 0

    def __post_init__(self):
        check_settings(self)


def history_from_log(log_history: list[dict]) -> list[dict]:
    """Divergence records from a Trainer's ``state.log_history`` (evaluations on the ``train`` and ``validation``
    sets at the same step), one per step, in step order: ``step``, ``epoch``, ``train_loss``, ``eval_loss``,
    ``divergence`` (``eval_loss − train_loss``, nats per completion token)."""
    by_step: dict[int, dict] = {}
    for entry in log_history:
        record = by_step.setdefault(entry["step"], {"step": entry["step"]})
        for key, name in (("eval_train_loss", "train_loss"), ("eval_validation_loss", "eval_loss")):
            if key in entry:
                record[name] = entry[key]
                record["epoch"] = entry.get("epoch", 0.0)
    complete = [r for _, r in sorted(by_step.items()) if "train_loss" in r and "eval_loss" in r]
    return [{**r, "divergence": r["eval_loss"] - r["train_loss"]} for r in complete]


class DivergenceCallback(TrainerCallback):
    """Tracks divergence at each evaluation and stops on a non-finite loss.

    ``on_evaluate(history)`` is called once an evaluation step has both losses. The history comes from the
    trainer state, so it survives a resume. With ``logging_steps=1`` every step's loss and gradient norm are
    checked in ``on_log``, which runs before the step's checkpoint is written: a non-finite one raises
    :class:`NonFiniteLossError` and the last checkpoint on disk stays the last good one.
    """

    def __init__(self, on_evaluate: Callable[[list[dict]], None] | None = None):
        self.on_evaluate_fn = on_evaluate
        self.history: list[dict] = []

    def on_log(self, args, state, control, logs=None, **kwargs):
        for key in ("loss", "grad_norm"):
            value = (logs or {}).get(key)
            if value is not None and not math.isfinite(value):
                last = last_good_checkpoint(args.output_dir)
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
                raise NonFiniteLossError(
                    f"training {key} became {value} at step {state.global_step}; training stopped and {kept}. "
                    f"Lower the learning rate (or check the data) and run again.")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.history = history_from_log(state.log_history)
        if self.on_evaluate_fn and self.history and self.history[-1]["step"] == state.global_step:
            self.on_evaluate_fn(self.history)


def sft_dataset(tokenizer: PreTrainedTokenizerBase, records: Sequence[dict], enable_thinking: bool = False):
    """A TRL prompt-completion dataset: prompt = chat template with thinking off (ends with the empty think
    block), completion = the record's ``answer`` + ``<|im_end|>``. With ``enable_thinking`` the prompt is the
    think-on generation prompt (ends with ``<|im_start|>assistant\\n``) and ``answer`` should carry its own think
    block (``<think>\\n…\\n</think>\\n\\n…``), as in :func:`toolkit.organism.tasks.completion`."""
    from datasets import Dataset

    prompts = chat_prompts(tokenizer, [r["prompt"] for r in records], enable_thinking=enable_thinking)
    return Dataset.from_list([{"prompt": p, "completion": r["answer"] + IM_END} for p, r in zip(prompts, records)])


def load_for_training(spec: str, device: str = "auto"):
    """``(hf, tokenizer, device)`` for a training run on ``spec``: fp32 weights from safetensors (never remote code),
    the one tokenizer loader (:func:`toolkit.core.models.load_tokenizer`), a pad token (the EOS token if the
    tokenizer has none). A ``random:<spec>`` trains a re-initialised copy (:func:`toolkit.core.models.load_weights`)."""
    source = models.resolve(spec)
    models.load_config(spec)
    device_ = models.resolve_device(device)
    hf = models.load_weights(spec, torch.float32)
    tokenizer = models.load_tokenizer(source)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    models.check_loaded(hf, tokenizer, spec, source)
    return hf, tokenizer, device_


def make_trainer(spec: str, preset: Preset, train: list[dict], validation: list[dict], output_dir: Path,
                 device: str = "auto", settings: TrainSettings = TrainSettings(),
                 callbacks: Sequence[TrainerCallback] = (), enable_thinking: bool = False):
    """The ``SFTTrainer`` of one run on the model ``spec`` (fp32 weights; bf16 autocast on GPU). Its eval datasets
    are ``train`` (the first ``len(validation)`` training problems) and ``validation``. ``enable_thinking``: think-on
    prompts, for records whose ``answer`` carries a think block (see :func:`sft_dataset`)."""
    from trl import SFTConfig, SFTTrainer

    hf, tokenizer, device_ = load_for_training(spec, device)
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=preset.epochs, learning_rate=preset.lr,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=4 * settings.batch_size,
        optim="adamw_torch", weight_decay=settings.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio, max_grad_norm=1.0,
        eval_strategy="steps", eval_steps=settings.eval_fraction, eval_on_start=True,
        save_strategy="steps", save_steps=settings.save_every,
        logging_steps=1, logging_nan_inf_filter=False, disable_tqdm=True,
        completion_only_loss=True, eos_token=IM_END, **no_activation_checkpointing(SFTConfig),
        seed=settings.seed, use_cpu=device_.type == "cpu", bf16=device_.type == "cuda",
        report_to="none",
    )
    trainer = SFTTrainer(
        model=hf, args=args, processing_class=tokenizer,
        train_dataset=sft_dataset(tokenizer, train, enable_thinking),
        eval_dataset={"train": sft_dataset(tokenizer, train[:len(validation)], enable_thinking),
                      "validation": sft_dataset(tokenizer, validation, enable_thinking)},
        callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer
