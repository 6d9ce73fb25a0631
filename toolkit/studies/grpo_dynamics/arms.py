"""The three post-training arms of notebook 04 ("Thinking Sparks"): SFT, distillation and GRPO from one start model,
matched in what the comparison holds fixed (:func:`check_matched`), and trained, resumed or reused from the cache
(:func:`train_runs`; :mod:`toolkit.training.grpo`, :mod:`toolkit.training.distill`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from toolkit.core.specs import derive_teacher
from toolkit.organism import probes
from toolkit.training import runs
from toolkit.training.distill import DistillSettings
from toolkit.training.grpo import GRPOSettings
from toolkit.training.runs import TrainingRun
from toolkit.training.traces import SFTSettings

ARMS = ("SFT", "Distill", "GRPO")  # the paper's three kinds of post-training, in notebook order


def matched_arms(model: str = "organism-base", tasks: Sequence[str] = probes.MATH_TASKS, steps: int = 100,
                 save_every: int = 10, seed: int = 0, *, prompts_per_step: int = 4, num_generations: int = 16,
                 n_train: int = 1000, teacher: str = "", grpo_lr: float = 1e-4, sft_lr: float = 1e-3,
                 distill_lr: float = 1e-3, grpo_warmup: float = 0.1, sft_warmup: float = 0.03,
                 max_completion_length: int = 128, temperature: float = 1.0, keep_correct: bool = True
                 ) -> dict[str, GRPOSettings | SFTSettings | DistillSettings]:
    """The settings of the three arms (:data:`ARMS`) from one start ``model``, matched as :func:`check_matched`
    requires: the same ``tasks`` (thinking on), training problems (the first ``n_train``), ``steps``, checkpoint
    spacing and seed, and as many completions per optimizer step (``prompts_per_step × num_generations`` sampled
    completions in GRPO = the SFT and distillation batch).

    - **SFT**: the generator's think-on traces (:meth:`SFTSettings.sft_records`);
    - **Distill**: traces *sampled from* ``teacher`` (temperature 0.6, top-p 0.95, at most
      ``max_completion_length`` tokens), only those with the right answer when ``keep_correct``, as the paper's
      distilled models were made (:mod:`toolkit.training.distill`);
    - **GRPO**: TRL's GRPOTrainer with the exact-answer and format rewards, thinking on, ``temperature``.

    Learning rates differ by method, as in the paper (GRPO's is far below SFT's there too). An empty ``teacher`` is
    derived from ``model`` (:func:`toolkit.core.specs.derive_teacher`: the organism for its base, else refused)."""
    teacher = derive_teacher(model, teacher)
    batch = prompts_per_step * num_generations
    arms = {
        "SFT": SFTSettings(model=model, tasks=tuple(tasks), steps=steps, batch_size=batch, learning_rate=sft_lr,
                           warmup_ratio=sft_warmup, save_every=save_every, n_train=n_train, seed=seed),
        "Distill": DistillSettings(model=model, teacher=teacher, tasks=tuple(tasks), steps=steps, batch_size=batch,
                                   learning_rate=distill_lr, warmup_ratio=sft_warmup, save_every=save_every,
                                   n_train=n_train, max_new_tokens=max_completion_length, keep_correct=keep_correct,
                                   seed=seed),
        "GRPO": GRPOSettings(model=model, tasks=tuple(tasks), steps=steps, prompts_per_step=prompts_per_step,
                             num_generations=num_generations, learning_rate=grpo_lr, warmup_ratio=grpo_warmup,
                             temperature=temperature, enable_thinking=True,
                             max_completion_length=max_completion_length, save_every=save_every, n_train=n_train,
                             seed=seed),
    }
    check_matched(arms)
    return arms


def completions_per_step(settings) -> int:
    """Sequences the loss sees per optimizer step: GRPO's prompts × generations, SFT's and distillation's batch."""
    if isinstance(settings, GRPOSettings):
        return settings.prompts_per_step * settings.num_generations
    return settings.batch_size


def check_matched(arms: Mapping[str, GRPOSettings | SFTSettings | DistillSettings]) -> None:
    """Refuse arms that differ in what the comparison holds fixed, naming the setting: the labels must be
    :data:`ARMS` with the right settings types; start model, tasks, ``steps``, ``save_every``, ``n_train`` and
    ``seed`` equal; GRPO thinking on (SFT and distillation train think-on traces); as many completions per step
    (:func:`completions_per_step`); distillation's teacher another model than the student."""
    kinds = {"SFT": SFTSettings, "Distill": DistillSettings, "GRPO": GRPOSettings}
    if tuple(arms) != ARMS or any(type(arms[a]) is not kinds[a] for a in ARMS):
        raise ValueError(f"the arms must be {', '.join(f'{a}: {k.__name__}' for a, k in kinds.items())} in this "
                         f"order; got {', '.join(f'{a}: {type(s).__name__}' for a, s in arms.items())}")
    if any(not s.tasks for s in arms.values()):
        raise ValueError("tasks is empty: the arms need at least one training task (linear, arithmetic, reversal)")
    for name in ("model", "tasks", "steps", "save_every", "n_train", "seed"):
        values = {a: getattr(s, name) for a, s in arms.items()}
        if len(set(values.values())) > 1:
            raise ValueError(f"the arms differ in {name} ({values}); matched arms share it")
    if not arms["GRPO"].enable_thinking:
        raise ValueError("GRPO must run with enable_thinking=True: SFT and distillation train think-on traces, so a "
                         "think-off GRPO arm differs from them in mode")
    per_step = {a: completions_per_step(s) for a, s in arms.items()}
    if len(set(per_step.values())) > 1:
        raise ValueError(f"the arms see different numbers of completions per step ({per_step}); set the SFT and "
                         "distillation batch_size to GRPO's prompts_per_step × num_generations")
    if arms["Distill"].teacher == arms["Distill"].model:
        raise ValueError(f"distillation's teacher is its student ({arms['Distill'].teacher!r}); pass the stronger "
                         "model as teacher")


def train_runs(arms: Mapping[str, GRPOSettings | SFTSettings | DistillSettings], device: str = "auto",
               retrain: bool = False) -> dict[str, TrainingRun]:
    """Each arm's run (:data:`ARMS` order), trained, resumed or reused from the cache, once :func:`check_matched`
    accepts the arms."""
    check_matched(arms)
    return {label: runs.train(settings, device, retrain=retrain) for label, settings in arms.items()}
