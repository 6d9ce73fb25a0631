"""SFT on think-on reasoning traces: notebook 04's SFT arm (the organism tasks' own traces, :class:`SFTSettings`),
and the trainer that distillation shares (:func:`make_sft_trainer`, fed :mod:`toolkit.training.distill`'s records).

TRL ``SFTTrainer``, prompt-completion data, loss on the completion only: the prompt is the chat template with thinking
on, the completion the organism task's scratchpad and answer (``<think>\\n{steps}\\n</think>\\n\\n{answer}<|im_end|>``).
Trained, checkpointed, resumed and cached by :func:`toolkit.training.runs.train`. **GPU, the paper's settings**: lr
4e-5, warmup 0.03 (:data:`PAPER_SFT`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from toolkit.organism import tasks
from toolkit.organism.probes import MATH_TASKS
from toolkit.organism.tokenizer import IM_END
from toolkit.training import launch, sft
from toolkit.training.compat import no_activation_checkpointing
from toolkit.training.problems import train_problems
from toolkit.training.runs import check_settings, register_kind

# The paper's settings on Qwen2.5-Math-1.5B-Instruct (GPU): change only these parameters.
PAPER_SFT = dict(model="Qwen/Qwen2.5-Math-1.5B-Instruct", learning_rate=4e-5, warmup_ratio=0.03, save_every=100)


def trace_records(examples: Sequence[tasks.Example]) -> list[dict]:
    """``{"prompt", "answer"}`` records whose answer is the organism task's think-on trace
    (``<think>\\n{steps}\\n</think>\\n\\n{answer}``)."""
    return [{"prompt": e.prompt, "answer": tasks.completion(e, think=True)} for e in examples]


def make_sft_trainer(settings, output_dir: Path, device: str = "auto", callbacks: Sequence[TrainerCallback] = (),
                     records: Sequence[dict] | None = None):
    """The ``SFTTrainer`` of one SFT or distillation run on think-on ``records`` (``{"prompt", "answer"}``, default
    ``settings.sft_records(device)``): completion-only loss, AdamW, constant lr after warmup."""
    from trl import SFTConfig, SFTTrainer

    records = settings.sft_records(device) if records is None else records
    hf, tokenizer, _ = sft.load_for_training(settings.model, device)
    args = SFTConfig(**launch.trainer_args(settings, output_dir, device), optim="adamw_torch", max_grad_norm=1.0,
                     completion_only_loss=True, eos_token=IM_END, **no_activation_checkpointing(SFTConfig))
    trainer = SFTTrainer(model=hf, args=args, processing_class=tokenizer,
                         train_dataset=sft.sft_dataset(tokenizer, records, enable_thinking=True),
                         callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


@register_kind
@dataclass(frozen=True)
class SFTSettings:
    """One SFT run on think-on reasoning traces, ``batch_size`` traces per step, a checkpoint every ``save_every``."""

    kind: ClassVar[str] = "sft"
    model: str = "organism-base"
    tasks: tuple[str, ...] = MATH_TASKS
    steps: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    save_every: int = 5
    n_train: int = 2000
    seed: int = 0

    def __post_init__(self):
        check_settings(self)

    def make_trainer(self, output_dir: Path, device: str = "auto", callbacks: Sequence[TrainerCallback] = ()):
        """The run's ``SFTTrainer`` (:func:`make_sft_trainer`)."""
        return make_sft_trainer(self, output_dir, device, callbacks)

    def sft_records(self, device: str = "auto") -> list[dict]:
        """The training records: the organism tasks' own think-on traces (:func:`trace_records`)."""
        return trace_records(train_problems(self.tasks, self.n_train))
