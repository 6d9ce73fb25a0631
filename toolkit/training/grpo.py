"""GRPO and SFT from one start, with checkpoints every N steps (notebook 04, "Thinking Sparks").

Both runs start from the same model (default ``organism-base``) and save a checkpoint every ``save_every``
optimizer steps, so :mod:`toolkit.studies.grpo_dynamics` can build a circuit per checkpoint
(``docs/methods.md``, "GRPO dynamics").

**GRPO** (TRL ``GRPOTrainer``) on the organism's math tasks (by default linear equations; addition/subtraction and
reversal can be added), with two rewards, summed with equal weights:

- :func:`accuracy_reward`: 1 if the final answer (the text after ``</think>``, see
  :func:`toolkit.core.answers.extract_answer`) equals the reference exactly, else 0;
- :func:`format_reward`: 1 if the whole assistant turn is one well-formed ``<think>…</think>`` block followed by a
  one-line answer in the task's answer format (``x = N`` for equations, an integer for sums), else 0.

The assistant turn is read from the prompt's tail plus the completion. With ``enable_thinking=False`` the chat
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

**SFT** (TRL ``SFTTrainer``, prompt-completion data, loss on the completion only) on think-on reasoning traces of the
math tasks (by default equations and sums): the prompt is the chat template with thinking on, the completion the
organism task's scratchpad and answer (``<think>\\n{steps}\\n</think>\\n\\n{answer}<|im_end|>``).

**Checkpoints and resume.** The trainer saves ``checkpoint-N`` folders (weights, tokenizer, optimizer and RNG state);
:class:`CheckpointLog` records each one, with the mean reward (GRPO) or loss (SFT) of the steps since the previous
checkpoint, in ``checkpoints.json`` (written atomically). Running :func:`train` again with the same configuration
resumes from the last complete checkpoint (:mod:`toolkit.training.checkpoints`); a finished run (``run.json``) is
reused. Runs live in ``<cache>/grpo-runs/<kind>-<config hash>/`` (``$TOOLKIT_CACHE`` or ``.cache/``, git-ignored).
Once a run finishes, optimizer, scheduler and RNG states are deleted from its checkpoints (weights stay). Each
checkpoint is a :class:`toolkit.training.runs.Checkpoint` whose ``metrics`` hold those means (``reward``,
``accuracy``, ``format``, ``loss``, where logged).

**Launching**: :func:`train` runs unchanged over N processes (:mod:`toolkit.training.launch`). **vLLM**: ``use_vllm``
and ``vllm_*`` are TRL's ``GRPOConfig`` options, passed through; at their defaults they stay out of the cache key.

**CPU settings** (the defaults): ``use_cpu=True``, ``bf16=False``, fp32 weights, 4 prompts × 16 generations per step,
completions of at most 16 tokens (think-off answers are ≤ 8). **GPU, the paper's settings**: GRPO lr 1e-6, 16
generations, warmup 0.1; SFT lr 4e-5, warmup 0.03 (see :data:`PAPER_GRPO`, :data:`PAPER_SFT`).
"""

from __future__ import annotations

import dataclasses
import math
import re
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from transformers import TrainerCallback
from transformers.trainer_callback import PrinterCallback

from toolkit.core import cache
from toolkit.core.answers import extract_answer
from toolkit.core.cache import cache_root, model_fingerprint
from toolkit.core.chat import chat_prompts
from toolkit.core.io import atomic_write_json
from toolkit.core.progress import quiet_library_bars
from toolkit.organism import tasks
from toolkit.organism.tokenizer import EMPTY_THINK, IM_END
from toolkit.training import callbacks, launch, sft
from toolkit.training.callbacks import CHECKPOINT_METRICS, LOG_KEYS, CheckpointLog, ProgressCallback, checkpoint_records
from toolkit.training.checkpoints import resume_train, run_lock, strip_resume_state, weights_problem
from toolkit.training.runs import Checkpoint, check_settings

MATH_TASKS = ("linear", "arithmetic")
GRPO_TASKS = ("linear",)  # the task where organism-base's think-off samples are sometimes right
ANSWER_PATTERNS = {"linear": r"x = -?\d+", "arithmetic": r"-?\d+", "reversal": r"[a-z]+"}
TRAIN_SEED, EVAL_SEED = 4_004, 4_044  # training prompts and the held-out evaluation/circuit prompts
window_means = callbacks.window_means  # the checkpoint log's window means (toolkit.training.callbacks), here too


@dataclass(frozen=True)
class GRPOSettings:
    """One GRPO run. ``prompts_per_step`` prompts × ``num_generations`` samples per optimizer step; a checkpoint
    every ``save_every`` steps. ``n_train`` distinct training prompts (cycled when ``steps`` needs more). The
    ``use_vllm`` and ``vllm_*`` fields are TRL's ``GRPOConfig`` options (module docstring)."""

    kind: ClassVar[str] = "grpo"
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

    def sft_records(self, device: str = "auto") -> list[dict]:
        """The training records: the organism tasks' own think-on traces (:func:`trace_records`)."""
        return trace_records(_train_problems(self.tasks, self.n_train))


VLLM_DEFAULTS = {f.name: f.default for f in dataclasses.fields(GRPOSettings) if "vllm" in f.name}


# The paper's settings on Qwen2.5-Math-1.5B-Instruct (GPU): change only these parameters.
PAPER_GRPO = dict(model="Qwen/Qwen2.5-Math-1.5B-Instruct", learning_rate=1e-6, num_generations=16, warmup_ratio=0.1,
                  enable_thinking=True, max_completion_length=1024, save_every=100)
PAPER_SFT = dict(model="Qwen/Qwen2.5-Math-1.5B-Instruct", learning_rate=4e-5, warmup_ratio=0.03, save_every=100)


# ---- data and rewards -------------------------------------------------------------------------------------------

def problems(task_names: Sequence[str], n: int, seed: int, exclude: set[str] = frozenset()) -> list[tasks.Example]:
    """``n`` distinct problems, the tasks interleaved in turn (deterministic from ``seed``)."""
    if n < 1:
        raise ValueError(f"need at least one problem, got n={n}")
    unknown = [t for t in task_names if t not in ANSWER_PATTERNS]
    if not task_names or unknown:
        raise ValueError(f"tasks must be a non-empty subset of {', '.join(ANSWER_PATTERNS)}; got {list(task_names)}")
    per_task = {t: tasks.held_out(t, math.ceil(n / len(task_names)), seed + i, exclude)
                for i, t in enumerate(task_names)}
    mixed = [per_task[t][i] for i in range(math.ceil(n / len(task_names))) for t in task_names]
    return mixed[:n]


def eval_problems(task_names: Sequence[str] = MATH_TASKS, n: int = 32) -> list[tasks.Example]:
    """Held-out problems (never in a training set): for circuits and accuracy per checkpoint."""
    return problems(task_names, n, EVAL_SEED)


def _train_problems(task_names: Sequence[str], n: int) -> list[tasks.Example]:
    held = {e.prompt for e in eval_problems(task_names, 400)}
    return problems(task_names, n, TRAIN_SEED, exclude=held)


def grpo_dataset(tokenizer, examples: Sequence[tasks.Example], enable_thinking: bool):
    """TRL standard-format dataset: ``prompt`` (chat template applied), ``answer``, ``answer_pattern``, ``task``."""
    from datasets import Dataset

    prompts = chat_prompts(tokenizer, [e.prompt for e in examples], enable_thinking)
    return Dataset.from_list([{"prompt": p, "answer": e.answer, "answer_pattern": ANSWER_PATTERNS[e.task],
                               "task": e.task} for p, e in zip(prompts, examples)])


def trace_records(examples: Sequence[tasks.Example]) -> list[dict]:
    """``{"prompt", "answer"}`` records whose answer is the organism task's think-on trace
    (``<think>\\n{steps}\\n</think>\\n\\n{answer}``)."""
    return [{"prompt": e.prompt, "answer": tasks.completion(e, think=True)} for e in examples]


def sft_dataset(tokenizer, examples: Sequence[tasks.Example]):
    """TRL prompt-completion dataset (:func:`toolkit.training.sft.sft_dataset`, think-on) of :func:`trace_records`."""
    return sft.sft_dataset(tokenizer, trace_records(examples), enable_thinking=True)


def _text(completion) -> str:
    """A completion as text (TRL passes strings for standard prompts, message lists for conversational ones)."""
    if isinstance(completion, list):
        return "".join(m.get("content", "") for m in completion)
    return completion


def assistant_turn(prompt, completion) -> str:
    """The assistant turn as the model wrote it: the empty think block when the prompt holds it (thinking off),
    then the completion."""
    prefix = EMPTY_THINK if isinstance(prompt, str) and prompt.endswith(EMPTY_THINK) else ""
    return prefix + _text(completion)


_TURN = re.compile(r"<think>\n((?:(?!</?think>)[\s\S])*)</think>\n\n([^\n]*)")


def well_formed(turn: str, answer_pattern: str) -> bool:
    """One ``<think>…</think>`` block (no nested or second tag), a blank line, then a one-line answer whose value
    (:func:`~toolkit.core.answers.extract_answer`: bare, or in the sentence ``The answer is ….``) matches
    ``answer_pattern`` exactly."""
    m = _TURN.fullmatch(turn)
    return bool(m) and re.fullmatch(answer_pattern, extract_answer(m.group(2))) is not None


def accuracy_reward(completions, answer, prompts=None, **kwargs) -> list[float]:
    """1.0 where the final answer (after the last ``</think>``) equals ``answer`` exactly, else 0.0."""
    prompts = prompts or [None] * len(completions)
    return [float(extract_answer(assistant_turn(p, c)) == a) for p, c, a in zip(prompts, completions, answer)]


def format_reward(completions, answer_pattern, prompts=None, **kwargs) -> list[float]:
    """1.0 where the assistant turn is :func:`well_formed` for its task's answer format, else 0.0."""
    prompts = prompts or [None] * len(completions)
    return [float(well_formed(assistant_turn(p, c), pat)) for p, c, pat in zip(prompts, completions, answer_pattern)]


# ---- training ---------------------------------------------------------------------------------------------------

@dataclass
class TrainingRun:
    """A finished run. ``log_history`` is the trainer's per-step log; ``seconds`` the training time of the session
    that finished it (resumed sessions count only their own time)."""

    kind: str
    path: Path
    settings: GRPOSettings | SFTSettings
    checkpoints: list[Checkpoint]
    log_history: list[dict]
    seconds: float
    steps_trained: int
    reused: bool

    @property
    def steps_per_second(self) -> float:
        return self.steps_trained / self.seconds if self.seconds > 0 else float("nan")

    def curve(self, key: str = "reward") -> tuple[list[int], list[float]]:
        """Per-step ``(steps, values)`` of a logged quantity (a :data:`LOG_KEYS` name or a raw log key)."""
        key = LOG_KEYS.get(key, key)
        pts = [(e["step"], e[key]) for e in self.log_history if key in e]
        return [s for s, _ in pts], [v for _, v in pts]


def config_hash(settings) -> str:
    """The run's cache key (:func:`toolkit.core.cache.config_hash`): settings, start weights (and a distillation's
    teacher weights) and TRL version. vLLM fields at their defaults are left out (module docstring)."""
    import trl

    fields = {k: v for k, v in dataclasses.asdict(settings).items() if VLLM_DEFAULTS.get(k, ...) != v}
    payload = {"kind": type(settings).__name__, "settings": fields, "weights": model_fingerprint(settings.model),
               "trl": trl.__version__}
    if hasattr(settings, "teacher"):
        payload["teacher_weights"] = model_fingerprint(settings.teacher)
    return cache.config_hash(payload)


def run_dir(settings) -> Path:
    """``<cache>/grpo-runs/<kind>-<config hash>``: where the run's checkpoints and logs live."""
    return cache_root() / "grpo-runs" / f"{settings.kind}-{config_hash(settings)}"


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
    examples = _train_problems(settings.tasks, settings.n_train)
    examples = [examples[i % len(examples)] for i in range(max(n_needed, len(examples)))]
    trainer = GRPOTrainer(model=hf, reward_funcs=[accuracy_reward, format_reward], args=args,
                          train_dataset=grpo_dataset(tokenizer, examples, settings.enable_thinking),
                          processing_class=tokenizer, callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def make_sft_trainer(settings, output_dir: Path, device: str = "auto", callbacks: Sequence[TrainerCallback] = (),
                     records: Sequence[dict] | None = None):
    """The ``SFTTrainer`` of one SFT or distillation run on think-on ``records`` (``{"prompt", "answer"}``, default
    ``settings.sft_records(device)``): completion-only loss, AdamW, constant lr after warmup."""
    from trl import SFTConfig, SFTTrainer

    records = settings.sft_records(device) if records is None else records
    hf, tokenizer, _ = sft.load_for_training(settings.model, device)
    args = SFTConfig(**launch.trainer_args(settings, output_dir, device), optim="adamw_torch", max_grad_norm=1.0,
                     completion_only_loss=True, eos_token=IM_END, activation_checkpointing=False)
    trainer = SFTTrainer(model=hf, args=args, processing_class=tokenizer,
                         train_dataset=sft.sft_dataset(tokenizer, records, enable_thinking=True),
                         callbacks=list(callbacks))
    trainer.remove_callback(PrinterCallback)
    return trainer


def _checkpoints(settings, kind: str, path: Path, log: list[dict]) -> list[Checkpoint]:
    return [Checkpoint(0, settings.model, run=kind)] + [
        Checkpoint(r["step"], str(path / r["checkpoint"]), run=kind, lr=settings.learning_rate,
                   metrics={k: r[k] for k in CHECKPOINT_METRICS if k in r}) for r in log]


def train(settings, device: str = "auto", callbacks: Sequence[TrainerCallback] = (),
          retrain: bool = False) -> TrainingRun:
    """Train (or resume, or reuse) one GRPO, SFT or distillation run (``GRPOSettings``, ``SFTSettings``,
    :class:`toolkit.training.distill.DistillSettings`); returns its checkpoints, step 0 being the start model.

    A finished run with the same configuration is reused unless ``retrain`` (which clears the run); an unfinished one
    resumes from its last good checkpoint (:mod:`toolkit.training.checkpoints`). A second process with the same
    configuration waits for the first, then reuses its run. A damaged run record is reported, removed and the run
    trained again. ``callbacks`` are extra ``TrainerCallback``\\ s (the tests use one that interrupts training).
    Under a launcher every process calls it (:mod:`toolkit.training.launch`, whose checks run first).
    """
    launch.check_launch(settings, device)
    kind, path = settings.kind, run_dir(settings)
    with run_lock(path):
        meta = launch.on_main(_finished_run, path, retrain)
        if meta is not None:
            return TrainingRun(kind, path, settings, _checkpoints(settings, kind, path, meta["checkpoints"]),
                               meta["log_history"], meta["seconds"], meta["steps_trained"], reused=True)
        return _train(settings, kind, path, device, callbacks)


def _finished_run(path: Path, retrain: bool) -> dict | None:
    """The finished run's record (``None``: train; the folder cleared for ``retrain`` or a damaged record)."""
    recorded = (path / "run.json").exists()
    meta = None if retrain else cache.read_entry(path / "run.json", _read_run)
    if meta is None and (retrain or recorded):  # a finished run's checkpoints hold no resume state: start over
        shutil.rmtree(path, ignore_errors=True)
    return meta


def _read_run(file: Path) -> dict:
    """A finished run's record; :class:`~toolkit.core.cache.DamagedEntry` if a checkpoint it lists is damaged."""
    meta = cache.read_json(file, ("checkpoints", "log_history", "seconds", "steps_trained"))
    for record in meta["checkpoints"]:
        problem = weights_problem(file.parent / record["checkpoint"])
        if problem:
            raise cache.DamagedEntry(f"its {record['checkpoint']}: {problem}")
    return meta


def _train(settings, kind: str, path: Path, device: str, callbacks: Sequence[TrainerCallback]) -> TrainingRun:
    log_path = path / "checkpoints.json"
    with quiet_library_bars(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning)  # transformers' gradient-checkpointing renames
        extra = [CheckpointLog(log_path, settings.save_every), ProgressCallback(kind.upper()), *callbacks]
        trainer = (make_grpo_trainer(settings, path, device, extra) if kind == "grpo"
                   else make_sft_trainer(settings, path, device, extra))
        t0 = time.time()
        resume = resume_train(trainer, path)
        seconds = round(time.time() - t0, 2)
    first_step = int(resume.rsplit("-", 1)[1]) if resume else 0
    log = checkpoint_records(trainer.state.log_history, settings.save_every, trainer.state.global_step)
    missing = [r["checkpoint"] for r in log if not (path / r["checkpoint"] / "config.json").exists()]
    if trainer.state.global_step != settings.steps or missing:
        raise RuntimeError(f"{kind} run in {path} stopped at step {trainer.state.global_step} of {settings.steps}"
                           + (f" without {', '.join(missing)}" if missing else "") + "; run again to resume")
    meta = {"kind": kind, "settings": dataclasses.asdict(settings), "config_hash": config_hash(settings),
            "checkpoints": log, "log_history": trainer.state.log_history, "seconds": seconds,
            "steps_trained": settings.steps - first_step, "resumed_from": resume}
    launch.main_only(_finish, path, log, meta)
    return TrainingRun(kind, path, settings, _checkpoints(settings, kind, path, log), trainer.state.log_history,
                       seconds, settings.steps - first_step, reused=False)


def _finish(path: Path, log: list[dict], meta: dict) -> None:
    """Write the checkpoint log and ``run.json`` (the run counts as finished from here), then strip resume state."""
    atomic_write_json(path / "checkpoints.json", log)
    atomic_write_json(path / "run.json", meta)
    for ckpt in path.glob("checkpoint-*"):
        strip_resume_state(ckpt)
