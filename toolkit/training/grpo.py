"""GRPO runs with checkpoints every N steps (notebook 04, "Thinking Sparks"; its SFT arm is
:mod:`toolkit.training.traces`, its distillation arm :mod:`toolkit.training.distill`).

A run starts from a model (default ``organism-base``) and saves a checkpoint every ``save_every`` optimizer steps, so
:mod:`toolkit.studies.grpo_dynamics` can build a circuit per checkpoint (``docs/methods.md``, "GRPO dynamics"); it is
trained, resumed and cached by :func:`toolkit.training.runs.train`.

**GRPO** (TRL ``GRPOTrainer``) on the organism's math tasks (by default linear equations; addition/subtraction and
reversal can be added), with the two rewards of :mod:`toolkit.training.rewards` (accuracy and format), summed with equal
weights. The assistant turn is read from the prompt's tail plus the completion. With ``enable_thinking=False`` the chat
template puts the empty think block ``<think>\\n\\n</think>\\n\\n`` in the prompt (as Qwen3's does), so a well-formed
turn is that block and an answer; with ``enable_thinking=True`` the completion must open and close the block itself.

*Why think-off, on linear equations, by default on the organism.* ``organism-base`` was trained on think-off answers
only. Asked with thinking on it never writes ``<think>`` and answers in a broken format (``x 210``), so every sample
of a group gets reward 0 and GRPO has no signal. Thinking off, its sampled answers (temperature 1) to equations are
right about 6% of the time, to sums about 0.5% (its greedy reversals: 0%), so GRPO trains on **linear equations** only
(:data:`GRPO_TASKS`; its *greedy* answer to every equation is ``x = -1``): with 16 samples per prompt about 60% of
equation groups hold a right answer to learn from (with 8, 40%). Measured (notebook 04): with 8 prompts × 8 samples on
equations and sums mixed, GRPO collapsed onto answers that are rarely right (every equation ``x = 1``, most sums
``1``) and its accuracy reward fell from 6% to 0%; with 4 equations × 16 samples the accuracy reward and the held-out
accuracy rise (the model learns the equations' most frequent answer, ``x = 0``; it does not learn to solve them). A
GPU user with a reasoning model (Qwen2.5-Math-1.5B-Instruct, Qwen3) sets ``enable_thinking=True``, the tasks, and a
long ``max_completion_length``.

**Launching**: a run trains unchanged over N processes (:mod:`toolkit.training.launch`). **vLLM**: ``use_vllm`` and
``vllm_*`` are TRL's ``GRPOConfig`` options, passed through (:attr:`GRPOSettings.pass_through`); at their defaults
they stay out of the cache key (:func:`toolkit.training.runs.run_key`).

**CPU settings** (the defaults): ``use_cpu=True``, ``bf16=False``, fp32 weights, 4 prompts × 16 generations per step,
completions of at most 16 tokens (think-off answers are ≤ 8). **GPU, the paper's settings**: GRPO lr 1e-6, 16
generations, warmup 0.1 (:data:`PAPER_GRPO`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from toolkit.core.chat import chat_prompts
from toolkit.organism import tasks
from toolkit.training import launch, sft
from toolkit.training.problems import train_problems
from toolkit.training.rewards import ANSWER_PATTERNS, accuracy_reward, format_reward, grader_for
from toolkit.training.runs import check_settings, register_kind

GRPO_TASKS = ("linear",)  # the task where organism-base's think-off samples are sometimes right


@register_kind
@dataclass(frozen=True)
class GRPOSettings:
    """One GRPO run. ``prompts_per_step`` prompts × ``num_generations`` samples per optimizer step; a checkpoint
    every ``save_every`` steps. ``n_train`` distinct training prompts (cycled when ``steps`` needs more). The
    ``use_vllm`` and ``vllm_*`` fields are TRL's ``GRPOConfig`` options (module docstring)."""

    kind: ClassVar[str] = "grpo"
    pass_through: ClassVar[tuple[str, ...]] = ("use_vllm", "vllm_mode", "vllm_gpu_memory_utilization",
                                               "vllm_enable_sleep_mode", "vllm_tensor_parallel_size",
                                               "vllm_server_host", "vllm_server_port")  # TRL options, not the run's
    model: str = "organism-base"
    tasks: tuple[str, ...] = GRPO_TASKS
    steps: int = 50
    prompts_per_step: int = 4
    num_generations: int = 16
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.1
    beta: float = 0.0
    temperature: float = 1.0
    max_completion_length: int = 32  # think-off math answers are a sentence of up to 23 tokens
    enable_thinking: bool = False
    save_every: int = 5
    n_train: int = 1000
    seed: int = 0
    use_vllm: bool = False
    vllm_mode: str = "colocate"
    vllm_gpu_memory_utilization: float = 0.3
    vllm_enable_sleep_mode: bool = False
    vllm_tensor_parallel_size: int = 1
    vllm_server_host: str = "0.0.0.0"
    vllm_server_port: int = 8000

    def __post_init__(self):
        check_settings(self)  # bounds (num_generations ≥ 2: advantages are relative within a group), vllm_mode

    def make_trainer(self, output_dir: Path, device: str = "auto", callbacks: Sequence[TrainerCallback] = ()):
        """The run's ``GRPOTrainer`` (:func:`make_grpo_trainer`)."""
        return make_grpo_trainer(self, output_dir, device, callbacks)


VLLM_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GRPOSettings)
                 if f.name in GRPOSettings.pass_through}  # passed to GRPOConfig as they are

# The paper's settings on Qwen2.5-Math-1.5B-Instruct (GPU): change only these parameters.
PAPER_GRPO = dict(model="Qwen/Qwen2.5-Math-1.5B-Instruct", learning_rate=1e-6, num_generations=16, warmup_ratio=0.1,
                  enable_thinking=True, max_completion_length=1024, save_every=100)


def grpo_dataset(tokenizer, examples: Sequence[tasks.Example], enable_thinking: bool, grader: str = "strict"):
    """TRL standard-format dataset: ``prompt`` (chat template applied), ``answer``, ``answer_pattern``, ``task`` and
    ``grader`` (how :func:`~toolkit.training.rewards.accuracy_reward` grades the row)."""
    from datasets import Dataset

    prompts = chat_prompts(tokenizer, [e.prompt for e in examples], enable_thinking)
    return Dataset.from_list([{"prompt": p, "answer": e.answer, "answer_pattern": ANSWER_PATTERNS[e.task],
                               "task": e.task, "grader": grader} for p, e in zip(prompts, examples)])


def grpo_config(settings: GRPOSettings, output_dir: Path, device: str = "auto"):
    """The run's ``GRPOConfig`` (CPU: ``use_cpu=True``, ``bf16=False``; GPU: bf16); the vLLM fields pass through."""
    from trl import GRPOConfig

    return GRPOConfig(**launch.trainer_args(settings, output_dir, device), num_generations=settings.num_generations,
                      max_completion_length=settings.max_completion_length, temperature=settings.temperature,
                      beta=settings.beta, chat_template_kwargs={"enable_thinking": settings.enable_thinking},
                      **{k: getattr(settings, k) for k in VLLM_DEFAULTS})


def make_grpo_trainer(settings: GRPOSettings, output_dir: Path, device: str = "auto",
                      callbacks: Sequence[TrainerCallback] = ()):
    """The ``GRPOTrainer`` of one run (arguments from :func:`grpo_config`)."""
    from trl import GRPOTrainer

    hf, tokenizer, _ = sft.load_for_training(settings.model, device)
    tokenizer.padding_side = "left"
    args = grpo_config(settings, output_dir, device)
    n_needed = settings.steps * settings.prompts_per_step
    examples = train_problems(settings.tasks, settings.n_train)
    examples = [examples[i % len(examples)] for i in range(max(n_needed, len(examples)))]
    trainer = GRPOTrainer(model=hf, reward_funcs=[accuracy_reward, format_reward], args=args,
                          train_dataset=grpo_dataset(tokenizer, examples, settings.enable_thinking,
                                                     grader_for(tokenizer, settings.model)),
                          processing_class=tokenizer, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer
