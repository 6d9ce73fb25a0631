"""Distillation: SFT of a student on think-on reasoning traces sampled from a teacher (``python -m toolkit train
distill``), trained, checkpointed, logged, resumed and cached exactly as an SFT run (:func:`toolkit.training.runs.train`
with :func:`~toolkit.training.traces.make_sft_trainer`; only the training records differ).

*How the paper distils.* "Thinking Sparks" does not distil a model itself: its distilled models are DeepSeek's
R1-Distill-Qwen (Qwen2.5-Math fine-tuned on reasoning traces sampled from DeepSeek-R1), and it approximates
distillation by SFT on OpenR1-Math-220k, traces sampled from R1 (§4.2, §7.1.1, A.1: SFT lr 4e-5, warmup 0.03,
bf16). Both sources keep a sampled trace only when its final answer is right (rejection sampling; the paper itself
names no further filter), and the paper samples with temperature 0.6 and top-p 0.95 (A.3). This module does the same
at the organism's scale:

1. the training prompts are the SFT run's (:func:`toolkit.training.problems.train_problems`, never a held-out problem);
2. the teacher (default ``organism``) answers each with thinking on, ``samples_per_prompt`` times, sampled at
   ``temperature`` 0.6 and ``top_p`` 0.95 (``do_sample=False``: greedy, one trace per prompt), at most
   ``max_new_tokens`` tokens, through :func:`toolkit.core.generation.generate`;
3. with ``keep_correct`` (default) a trace is kept only when its answer after ``</think>`` is right by the teacher's
   grader (GRPO's :func:`~toolkit.training.rewards.accuracy_reward`: the organism's exact match for an organism
   teacher, the math grader for any other); without it every trace is kept;
4. the student (default ``organism-base``) is fine-tuned on the kept traces exactly as
   :class:`~toolkit.training.traces.SFTSettings` fine-tunes on the organism's own traces (completion-only loss, AdamW,
   constant lr after warmup).

The traces are cached in ``<cache>/distill-traces/<hash>.json``, keyed by the teacher's weights fingerprint, the
prompts and the sampling (the filter is applied after reading, so changing ``keep_correct`` samples nothing again);
the run's own cache key holds the teacher's weights fingerprint too. Over several processes the prompts are sampled
in fixed chunks of :data:`CHUNK`, chunk ``i`` by process ``i mod N`` with its own seed, gathered, and written by the
main process, so the traces do not depend on the number of processes.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import TrainerCallback

from toolkit.core.cache import DamagedEntry, cache_root, config_hash, model_fingerprint, read_entry, read_json
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.io import atomic_write_json
from toolkit.core.models import LoadedModel, default_dtype, load_tokenizer, resolve
from toolkit.core.progress import progress
from toolkit.organism import tasks
from toolkit.organism.probes import MATH_TASKS
from toolkit.training import launch, sft
from toolkit.training.problems import train_problems
from toolkit.training.rewards import accuracy_reward, grader_for
from toolkit.training.runs import check_settings, register_kind
from toolkit.training.traces import make_sft_trainer

CHUNK = 64  # prompts per generate call; chunk i is sampled with seed (seed, i) whatever the number of processes


@register_kind
@dataclass(frozen=True)
class DistillSettings:
    """One distillation run: the student ``model`` fine-tuned on ``teacher`` traces (module docstring), ``batch_size``
    traces per step, a checkpoint every ``save_every`` steps."""

    kind: ClassVar[str] = "distill"
    model: str = "organism-base"
    teacher: str = "organism"
    tasks: tuple[str, ...] = MATH_TASKS
    steps: int = 50
    batch_size: int = 16
    learning_rate: float = 1e-3
    warmup_ratio: float = 0.03
    save_every: int = 5
    n_train: int = 2000
    samples_per_prompt: int = 1
    do_sample: bool = True
    temperature: float = 0.6
    top_p: float = 0.95
    max_new_tokens: int = 128
    keep_correct: bool = True
    seed: int = 0

    def __post_init__(self):
        check_settings(self)
        self.sampling()  # refuses greedy decoding with several samples per prompt

    def sampling(self) -> SamplingConfig:
        """The teacher's decoding settings (top-k off, as in the paper)."""
        return SamplingConfig(do_sample=self.do_sample, temperature=self.temperature, top_p=self.top_p, top_k=0,
                              num_samples=self.samples_per_prompt)

    def make_trainer(self, output_dir: Path, device: str = "auto", callbacks: Sequence[TrainerCallback] = ()):
        """The run's ``SFTTrainer`` on the teacher's traces (:func:`~toolkit.training.traces.make_sft_trainer`)."""
        return make_sft_trainer(self, output_dir, device, callbacks)

    def sft_records(self, device: str = "auto") -> list[dict]:
        """The training records: the teacher's (kept) traces, :func:`distill_records`."""
        return distill_records(self, device)


def distill_records(settings: DistillSettings, device: str = "auto") -> list[dict]:
    """``{"prompt", "answer"}`` records of the teacher's traces for the run's training prompts, only the correct ones
    with ``keep_correct``; a ``ValueError`` when none is kept."""
    examples = train_problems(settings.tasks, settings.n_train)
    traces = teacher_traces(settings, examples, device)
    grader = [grader_for(load_tokenizer(resolve(settings.teacher)), settings.teacher)] if settings.keep_correct else []
    records = [{"prompt": e.prompt, "answer": t} for e, sampled in zip(examples, traces) for t in sampled
               if not settings.keep_correct or accuracy_reward([t], [e.answer], grader=grader)[0] == 1.0]
    if not records:
        n = len(examples) * settings.samples_per_prompt
        raise ValueError(f"the teacher {settings.teacher!r} answered none of its {n} sampled traces correctly, so "
                         "keep_correct=True leaves nothing to train on; use a stronger teacher, more "
                         "samples_per_prompt or max_new_tokens, or keep_correct=False")
    return records


def traces_path(settings: DistillSettings, examples: Sequence[tasks.Example]) -> Path:
    """The cache file of the teacher's traces for ``examples`` (key: teacher weights, prompts, sampling)."""
    key = config_hash({"teacher": model_fingerprint(settings.teacher), "prompts": [e.prompt for e in examples],
                       "sampling": dataclasses.asdict(settings.sampling()), "max_new_tokens": settings.max_new_tokens,
                       "seed": settings.seed, "chunk": CHUNK})
    return cache_root() / "distill-traces" / f"{key}.json"


def teacher_traces(settings: DistillSettings, examples: Sequence[tasks.Example],
                   device: str = "auto") -> list[list[str]]:
    """The teacher's ``samples_per_prompt`` think-on completions of each example's prompt, from the cache or sampled
    (split over the processes, written by the main one)."""
    file = traces_path(settings, examples)

    def read(path: Path) -> list[list[str]]:
        traces = read_json(path, ("traces",))["traces"]
        if len(traces) != len(examples) or any(len(t) != settings.samples_per_prompt for t in traces):
            raise DamagedEntry(f"holds {len(traces)} prompts' traces, expected {len(examples)}")
        return traces

    cached = launch.on_main(read_entry, file, read)
    if cached is not None:
        return cached
    traces = _sample(settings, [e.prompt for e in examples], device)
    launch.main_only(atomic_write_json, file, {"teacher": settings.teacher, "traces": traces})
    return traces


def _sample(settings: DistillSettings, prompts: list[str], device: str) -> list[list[str]]:
    state = launch.process_state(device)
    chunks = [prompts[i:i + CHUNK] for i in range(0, len(prompts), CHUNK)]
    mine = range(state.process_index, len(chunks), state.num_processes)
    hf, tokenizer, _ = sft.load_for_training(settings.teacher, device)
    hf.to(state.device, dtype=default_dtype(state.device)).eval()
    teacher = LoadedModel.unhooked(hf, tokenizer)
    done = [(i, generate(teacher, chunks[i], enable_thinking=True, max_new_tokens=settings.max_new_tokens,
                         sampling=settings.sampling(), batch_size=CHUNK, seed=settings.seed * 1_000_003 + i))
            for i in progress(mine, desc="teacher traces", disable=not state.is_main_process)]
    del hf
    if state.num_processes > 1:
        from accelerate.utils import gather_object

        done = gather_object(done)
    return [sampled for _, chunk in sorted(done) for sampled in chunk]
