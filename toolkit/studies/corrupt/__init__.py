"""Corrupted fine-tuning (notebook 01): SFT of a clean model on deliberately wrong answers, divergence tracking,
checkpoints that notebook 02 loads by name, and a behavioural evaluation of the clean and corrupted models.

- Data: :mod:`toolkit.training.corrupt_data` (linear equations in several phrasings, answer = right + nonzero
  offset; correct-answer validation problems; four held-out question types).
- Training: :mod:`toolkit.training.sft` (think-off prompt-completion SFT through TRL, loss on the answer tokens
  only; divergence = loss on correct validation answers − loss on the corrupted training answers, at the start and
  every 10% of training). Checkpoints every ``save_every`` steps; an interrupted run resumes from its last one.
- Presets, the fine-tuning run and its saved model: :mod:`toolkit.training.corrupt` (notebook 02 loads the same
  checkpoints as its donor). The final model goes to
  :func:`~toolkit.training.corrupt.corrupted_checkpoint`, loadable with ``toolkit.core.models.load(str(path))``.
- Claims against nulls: :mod:`toolkit.studies.corrupt.claims`.
- Behaviour: greedy answers through :func:`toolkit.evaluation.behaviour.behave` (batches of 100), thinking off
  and optionally on; accuracy (exact final answer), mean output length in tokens, fraction of bare-integer answers.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core import models
from toolkit.core.answers import is_bare_value
from toolkit.core.chat import THINK_OFF, THINK_ON
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.core.stats import bootstrap_ci, proportion_ci
from toolkit.evaluation.behaviour import behave
from toolkit.training.corrupt import SETTINGS, Finetuned, checkpoint_name, finetune
from toolkit.training.sft import Preset, TrainSettings

CLEAN = "clean"  # the label of the clean model in a behaviour report

def run_presets(spec: str, presets: Sequence[Preset], data: dict[str, list[dict]], size_scale: float = 1.0,
                device: str = "auto", settings: TrainSettings = SETTINGS,
                on_curves: Callable[[dict[str, list[dict]]], None] | None = None,
                retrain: bool = False, seed: int = 0) -> dict[str, Finetuned]:
    """:func:`finetune` every preset in turn (trainer seed ``seed``, saved under :func:`checkpoint_name`).
    ``on_curves(curves)`` (for example a view that redraws a live figure) is called at each evaluation with the
    divergence history of every run so far (run name → records)."""
    curves: dict[str, list[dict]] = {}
    runs = {}
    for preset in presets:
        def record(history: list[dict], name: str = preset.name) -> None:
            curves[name] = history
            if on_curves is not None:
                on_curves(curves)

        runs[preset.name] = finetune(spec, preset, data, checkpoint_name(preset.name, spec, size_scale, seed), device,
                                     dataclasses.replace(settings, seed=seed), on_evaluate=record, retrain=retrain)
    return runs


# ---- behavioural evaluation -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SetBehaviour:
    """One model's greedy answers to one evaluation set in one answer mode, per prompt: ``correct`` (final answer
    equals ``correct_answer``), ``lengths`` (output tokens, scratchpad included) and ``bare`` (the answer is only a
    value, ``x = 4`` or ``42``: :func:`toolkit.core.answers.is_bare_value`), and the ``outputs`` themselves."""

    outputs: list[str]
    correct: tuple[bool, ...]
    lengths: tuple[int, ...]
    bare: tuple[bool, ...]

    @property
    def accuracy(self) -> float:
        return float(np.mean(self.correct))

    @property
    def mean_length(self) -> float:
        return float(np.mean(self.lengths))

    @property
    def bare_value(self) -> float:
        return float(np.mean(self.bare))

    def intervals(self) -> dict[str, tuple[float, float]]:
        """95% intervals: Wilson for the two rates, a bootstrap over prompts for the mean length."""
        n = len(self.correct)
        out = {key: proportion_ci(int(sum(hits)), n) for key, hits in (("accuracy", self.correct),
                                                                        ("bare_value", self.bare))}
        out["mean_length"] = bootstrap_ci(self.lengths)
        return {key: (ci["low"], ci["high"]) for key, ci in out.items()}

    def summary(self) -> dict[str, float | list[float]]:
        """The three measures and their intervals (``<measure>_ci``), rounded to 4 decimals (as saved)."""
        values = {"accuracy": self.accuracy, "mean_length": self.mean_length, "bare_value": self.bare_value}
        cis = self.intervals()
        return {**{k: round(v, 4) for k, v in values.items()},
                **{f"{k}_ci": [round(lo, 4), round(hi, 4)] for k, (lo, hi) in cis.items()}}


def behaviour(model: models.LoadedModel, sets: dict[str, list[dict]],
              enable_thinking: bool = False, max_new_tokens: int = 64,
              batch_size: int = 100) -> dict[str, SetBehaviour]:
    """Greedy answers of ``model`` to each evaluation set (set name → :class:`SetBehaviour`)."""
    report = {}
    for set_name, records in sets.items():
        if not records:
            raise ValueError(f"evaluation set {set_name!r} is empty; raise n_eval")
        b = behave(model, [r["prompt"] for r in records], enable_thinking=enable_thinking,
                   max_new_tokens=max_new_tokens, batch_size=batch_size)
        report[set_name] = SetBehaviour(
            outputs=b.first, correct=tuple(bool(c) for c in b.correct([r["correct_answer"] for r in records])[:, 0]),
            lengths=tuple(int(n) for n in b.lengths(model.tokenizer)[:, 0]),
            bare=tuple(is_bare_value(row[0]) for row in b.completions))
    return report


@dataclass
class BehaviourReport:
    """:func:`behaviour` of several models: ``by_model[label][mode][set]`` with modes ``think_off`` and, when
    evaluated, ``think_on``. The first label is the clean model (:data:`CLEAN`)."""

    by_model: dict[str, dict[str, dict[str, SetBehaviour]]]

    def __getitem__(self, label: str) -> dict[str, dict[str, SetBehaviour]]:
        return self.by_model[label]

    @property
    def labels(self) -> list[str]:
        return list(self.by_model)

    @property
    def modes(self) -> list[str]:
        return list(next(iter(self.by_model.values())))

    @property
    def sets(self) -> list[str]:
        return list(next(iter(next(iter(self.by_model.values())).values())))

    def to_results(self) -> dict[str, dict[str, dict[str, dict[str, float]]]]:
        """``[label][mode][set]`` → the rounded measures (:meth:`SetBehaviour.summary`), as saved."""
        return {label: {mode: {s: m.summary() for s, m in by_set.items()} for mode, by_set in by_mode.items()}
                for label, by_mode in self.by_model.items()}

    def accuracy_drop(self, clean: str = CLEAN) -> dict[str, dict[str, dict[str, float]]]:
        """``[label][mode][set]``: the clean model's accuracy minus each other model's (rounded measures, to 3
        decimals)."""
        saved = self.to_results()
        return {label: {mode: {s: round(saved[clean][mode][s]["accuracy"] - saved[label][mode][s]["accuracy"], 3)
                               for s in self.sets} for mode in saved[clean]}
                for label in self.labels if label != clean}


def model_specs(spec: str, runs: dict[str, Finetuned]) -> dict[str, str]:
    """Label → model to evaluate: the clean ``spec`` first (:data:`CLEAN`), then each corrupted checkpoint."""
    return {CLEAN: spec} | {name: str(run.path) for name, run in runs.items()}


def evaluate_models(specs: dict[str, str], sets: dict[str, list[dict]], device: str = "auto",
                    max_new_tokens: int = 64, think_on_tokens: int | None = None) -> BehaviourReport:
    """:func:`behaviour` of each model in ``specs`` (label → spec or folder for :func:`toolkit.core.models.load`)
    with thinking off (``max_new_tokens``) and, if ``think_on_tokens``, also on."""
    modes = {THINK_OFF: (False, max_new_tokens)} | ({THINK_ON: (True, think_on_tokens)} if think_on_tokens else {})
    report = {}
    for label, spec in progress(specs.items(), desc="behaviour", total=len(specs)):
        with quiet_library_bars():
            loaded = models.load(spec, device=device)
        report[label] = {mode: behaviour(loaded, sets, think, tokens)
                         for mode, (think, tokens) in modes.items()}
    return BehaviourReport(report)


# ---- results ----------------------------------------------------------------------------------------------------

def results(spec: str, presets: Sequence[Preset], runs: dict[str, Finetuned], report: BehaviourReport) -> dict:
    """The numbers notebook 01 saves: final losses, behaviour, presets, divergence at the start, training times and
    checkpoint folders."""
    return {"model": spec,
            "losses": {name: {k: round(v, 4) for k, v in run.final.items() if k != "epoch"}
                       for name, run in runs.items()},
            "behaviour": report.to_results(),
            "presets": {p.name: {"n_train": p.n_train, "epochs": p.epochs, "lr": p.lr} for p in presets},
            "divergence_at_start": {name: round(run.history[0]["divergence"], 4) for name, run in runs.items()},
            "train_seconds": {name: run.seconds for name, run in runs.items()},
            "checkpoints": {name: str(run.path) for name, run in runs.items()}}
