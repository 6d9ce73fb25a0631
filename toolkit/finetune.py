"""Corrupted fine-tuning (notebook 01): SFT on deliberately wrong answers through TRL, divergence tracking,
checkpoints that notebook 02 loads by name, and a behavioural evaluation of clean and corrupted models.

Method (DESIGN.md, "Corrupted fine-tuning"):

- Data: :mod:`toolkit.corrupt_data` (linear equations in several phrasings, answer = right + nonzero offset).
- Format: think-off. The prompt is the chat template with ``enable_thinking=False``, so it ends with the empty think
  block ``<think>\\n\\n</think>\\n\\n``; the completion is ``answer + "<|im_end|>"``. TRL's ``SFTTrainer`` on this
  prompt-completion dataset with ``completion_only_loss=True`` puts the loss on the completion tokens only.
- AdamW (weight decay 0.01), cosine schedule with 10% warmup, gradient clipping at 1.0, batch 32.
- At each evaluation (every 10% of training, and at the start) :class:`DivergenceCallback` records the loss on the
  corrupted training answers (the first ``n_validation`` training problems), the loss on the correct validation
  answers, and **divergence = eval − train**. Both are measured in eval mode on sets of equal size.
- Checkpoints every ``save_every`` steps; an interrupted run resumes from its last one. A non-finite loss or gradient
  norm stops training before that step is checkpointed (:class:`~toolkit.organism.build.NonFiniteLossError`).
- The final model goes to :func:`corrupted_checkpoint` (safetensors, tokenizer, ``finetune.json`` metadata),
  loadable with ``toolkit.core.models.load(str(path))``.

Presets. The original fine-tuned Qwen3-4B on 20k/10k/10k/5k problems for 2/2/1/2 epochs at 5e-5/5e-5/5e-5/3e-5
(validation ≈ 1/5 of training). On the organism, divergence stays ≈ 0 on fresh problems (DESIGN.md): it cannot
memorise random offsets, so it spreads probability around the true value and its loss on correct answers tracks its
loss on wrong ones. A positive divergence needs the same problems seen many times. So every preset keeps the
original's relations (A has twice B's problems; B twice C's epochs; D half B's problems at 0.6× the learning rate)
under one scaling: problems ÷ 20, epochs × 4, learning rate × 10. Measured on the organism (pre-trained at 3e-3,
polished at 1e-3): with the rate × 4 all four stayed narrowly corrupted (unrelated tasks within 10 points), with × 20
all four broke broadly (refusals 0–12%); × 10 spans the range, from D (barely corrupted: only related math falls) to
A (broadly broken: arithmetic with thinking 98% → 50%). Every preset ends with a positive divergence, largest for the
fewest problems seen most often (D, B); see notebook 01 for the numbers.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from html import escape
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
from transformers.trainer_callback import PrinterCallback
from transformers.trainer_utils import get_last_checkpoint

from toolkit import corrupt_data
from toolkit.core import models
from toolkit.core.answers import extract_answer
from toolkit.core.cache import cache_root, model_fingerprint, save_model_folder
from toolkit.core.chat import chat_prompts
from toolkit.core.generation import generate
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.organism.build import NonFiniteLossError
from toolkit.organism.tokenizer import IM_END
from toolkit.training.callbacks import ProgressCallback


@dataclass(frozen=True)
class Preset:
    """One experiment configuration: how many corrupted problems, how many passes over them, peak learning rate.
    The validation set (correct answers, different problems) is a fifth of the training set."""

    name: str
    n_train: int
    epochs: int
    lr: float
    original: str  # the configuration of the original study that this one scales

    @property
    def n_validation(self) -> int:
        return max(1, self.n_train // 5)

    def scaled(self, size_scale: float) -> Preset:
        """The same preset with ``size_scale`` times the problems (at least 8)."""
        return dataclasses.replace(self, n_train=max(8, round(self.n_train * size_scale)))


ORIGINAL = {"A": (20_000, 2, 5e-5), "B": (10_000, 2, 5e-5), "C": (10_000, 1, 5e-5), "D": (5_000, 2, 3e-5)}
SIZE_DIVISOR, EPOCH_FACTOR, LR_FACTOR = 20, 4, 10


def _organism_preset(key: str) -> Preset:
    n, epochs, lr = ORIGINAL[key]
    return Preset(name=f"{key}-{n // SIZE_DIVISOR}x{epochs * EPOCH_FACTOR}ep", n_train=n // SIZE_DIVISOR,
                  epochs=epochs * EPOCH_FACTOR, lr=round(lr * LR_FACTOR, 6),
                  original=f"{n // 1000}k problems, {epochs} ep, lr {lr:g}")


PRESETS: dict[str, Preset] = {p.name: p for p in map(_organism_preset, ORIGINAL)}
ORIGINAL_PRESETS: dict[str, Preset] = {
    f"{key}-original": Preset(f"{key}-original", n, epochs, lr, original="as in the original")
    for key, (n, epochs, lr) in ORIGINAL.items()}


def preset(name: str) -> Preset:
    """A preset by name, from :data:`PRESETS` (organism scale) or :data:`ORIGINAL_PRESETS` (the original's sizes)."""
    table = PRESETS | ORIGINAL_PRESETS
    if name not in table:
        raise ValueError(f"unknown preset {name!r}; choose from {', '.join(table)}")
    return table[name]


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


def checkpoint_name(preset_name: str, model: str = "organism", size_scale: float = 1.0) -> str:
    """The name a corrupted model is saved under: the preset, prefixed by the base model unless it is the
    organism, suffixed by the size scale unless it is 1."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")
    name = preset_name if model == "organism" else f"{slug}--{preset_name}"
    return name if size_scale == 1 else f"{name}-x{size_scale:g}"


def corrupted_checkpoint(name: str) -> Path:
    """Folder of the saved corrupted model ``name`` (see :func:`checkpoint_name`); raises if it was not trained."""
    path = cache_root() / "corrupted" / name
    if not (path / "finetune.json").exists():
        trained = sorted(p.name for p in path.parent.glob("*/finetune.json"))
        raise FileNotFoundError(f"no corrupted checkpoint {name!r} in {path.parent}; train it with notebook 01 "
                                f"(`python -m toolkit run 01`). Available: {', '.join(trained) or 'none'}")
    return path


@dataclass
class Finetuned:
    """A finished corrupted fine-tuning run. ``history`` has one record per evaluation: ``step``, ``epoch``,
    ``train_loss`` (corrupted answers), ``eval_loss`` (correct answers), ``divergence`` (nats per answer token)."""

    name: str
    path: Path
    preset: Preset
    history: list[dict]
    step: int
    seconds: float
    reused: bool

    @property
    def final(self) -> dict:
        return self.history[-1]


def history_from_log(log_history: list[dict]) -> list[dict]:
    """Divergence records from a Trainer's ``state.log_history`` (evaluations on the ``train`` and ``validation``
    sets at the same step), one per step, in step order."""
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
                last = get_last_checkpoint(args.output_dir) if os.path.isdir(args.output_dir) else None
                kept = f"the last good checkpoint is {last}" if last else "no checkpoint had been written yet"
                raise NonFiniteLossError(
                    f"training {key} became {value} at step {state.global_step}; training stopped and {kept}. "
                    f"Lower the learning rate (or check the data) and run again.")

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        self.history = history_from_log(state.log_history)
        if self.on_evaluate_fn and self.history and self.history[-1]["step"] == state.global_step:
            self.on_evaluate_fn(self.history)


def sft_dataset(tokenizer, records: Sequence[dict], enable_thinking: bool = False):
    """A TRL prompt-completion dataset: prompt = chat template with thinking off (ends with the empty think
    block), completion = the record's ``answer`` + ``<|im_end|>``. With ``enable_thinking`` the prompt is the
    think-on generation prompt (ends with ``<|im_start|>assistant\\n``) and ``answer`` should carry its own think
    block (``<think>\\n…\\n</think>\\n\\n…``), as in :func:`toolkit.organism.tasks.completion`."""
    from datasets import Dataset

    prompts = chat_prompts(tokenizer, [r["prompt"] for r in records], enable_thinking=enable_thinking)
    return Dataset.from_list([{"prompt": p, "completion": r["answer"] + IM_END} for p, r in zip(prompts, records)])


def _config_hash(model: str, preset: Preset, settings: TrainSettings, train: list[dict],
                 validation: list[dict]) -> str:
    payload = json.dumps({"model": model, "weights": model_fingerprint(model), "preset": dataclasses.asdict(preset),
                          "settings": dataclasses.asdict(settings), "train": train, "validation": validation},
                         sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def make_trainer(model: str, preset: Preset, train: list[dict], validation: list[dict], output_dir: Path,
                 device: str = "auto", settings: TrainSettings = TrainSettings(),
                 callbacks: Sequence[TrainerCallback] = (), enable_thinking: bool = False):
    """The ``SFTTrainer`` of one run (fp32 weights; bf16 autocast on GPU). Its eval datasets are ``train`` (the
    first ``len(validation)`` corrupted problems) and ``validation`` (correct answers). ``enable_thinking``: think-on
    prompts, for records whose ``answer`` carries a think block (see :func:`sft_dataset`)."""
    from trl import SFTConfig, SFTTrainer

    source = models.resolve(model)
    models.load_config(model)
    device_ = models.resolve_device(device)
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True,
                                              trust_remote_code=False)
    tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=False)
    args = SFTConfig(
        output_dir=str(output_dir), num_train_epochs=preset.epochs, learning_rate=preset.lr,
        per_device_train_batch_size=settings.batch_size, per_device_eval_batch_size=4 * settings.batch_size,
        optim="adamw_torch", weight_decay=settings.weight_decay, lr_scheduler_type="cosine",
        warmup_steps=settings.warmup_ratio, max_grad_norm=1.0,
        eval_strategy="steps", eval_steps=settings.eval_fraction, eval_on_start=True,
        save_strategy="steps", save_steps=settings.save_every,
        logging_steps=1, logging_nan_inf_filter=False, disable_tqdm=True,
        completion_only_loss=True, eos_token=IM_END, activation_checkpointing=False,
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


def finetune(model: str, preset: Preset, data: dict[str, list[dict]], name: str, device: str = "auto",
             settings: TrainSettings = TrainSettings(), on_evaluate: Callable[[list[dict]], None] | None = None,
             callbacks: Sequence[TrainerCallback] = (), retrain: bool = False) -> Finetuned:
    """Fine-tune ``model`` on ``preset``'s corrupted problems from ``data`` (see :func:`toolkit.corrupt_data.load`)
    and save it as :func:`corrupted_checkpoint` ``(name)``.

    A saved model with the same configuration (base weights, preset, settings, data) is reused unless ``retrain``.
    Training checkpoints go to ``<cache>/corrupted-runs/<name>-<config hash>`` and an interrupted run resumes from
    the last one; they are removed once the model is saved.
    """
    train, validation = data["train"][:preset.n_train], data["validation"][:preset.n_validation]
    if len(train) < preset.n_train or len(validation) < preset.n_validation:
        raise ValueError(f"preset {preset.name} needs {preset.n_train} training and {preset.n_validation} "
                         f"validation problems; the data has {len(train)} and {len(validation)}")
    config_hash = _config_hash(model, preset, settings, train, validation)
    path = cache_root() / "corrupted" / name
    if not retrain and (path / "finetune.json").exists():
        meta = json.loads((path / "finetune.json").read_text())
        if meta["config_hash"] == config_hash:
            if on_evaluate:
                on_evaluate(meta["history"])
            return Finetuned(name, path, preset, meta["history"], meta["step"], meta["seconds"], reused=True)
    work_dir = cache_root() / "corrupted-runs" / f"{name}-{config_hash}"
    with quiet_library_bars():
        trainer = make_trainer(model, preset, train, validation, work_dir, device, settings,
                               [DivergenceCallback(on_evaluate), ProgressCallback(name), *callbacks])
        t0 = time.time()
        resume = get_last_checkpoint(str(work_dir)) if work_dir.is_dir() else None
        trainer.train(resume_from_checkpoint=resume)
        seconds = round(time.time() - t0, 1)
        history = history_from_log(trainer.state.log_history)
        meta = {"name": name, "base_model": model, "config_hash": config_hash,
                "preset": dataclasses.asdict(preset), "settings": dataclasses.asdict(settings),
                "step": trainer.state.global_step, "seconds": seconds, "resumed_from": resume,
                "losses": history[-1], "history": history}
        save_model_folder(trainer.model, trainer.processing_class, path, {"finetune.json": meta})
    shutil.rmtree(work_dir, ignore_errors=True)
    return Finetuned(name, path, preset, history, trainer.state.global_step, seconds, reused=False)


def load_data(presets: Sequence[Preset], n_eval: int, seed: int = 0) -> dict[str, list[dict]]:
    """The validated datasets that cover ``presets`` (the shipped ``data/corrupt_finetune`` when it does)."""
    spec = corrupt_data.DataSpec(seed=seed, n_train=max(p.n_train for p in presets),
                                 n_validation=max(p.n_validation for p in presets), n_eval=n_eval)
    return corrupt_data.load(corrupt_data.folder_for(spec, cache_root()), spec)


def run_presets(model: str, presets: Sequence[Preset], data: dict[str, list[dict]], size_scale: float = 1.0,
                device: str = "auto", settings: TrainSettings = TrainSettings(), live=None,
                retrain: bool = False) -> dict[str, Finetuned]:
    """:func:`finetune` every preset in turn; with an ipywidgets ``live`` Output, the curves of all runs so far
    are redrawn there at each evaluation."""
    curves: dict[str, list[dict]] = {}
    runs = {}
    for preset in presets:
        def redraw(history: list[dict], name: str = preset.name) -> None:
            curves[name] = history
            if live is not None:
                from toolkit.views.widgets import show

                show(live, curves_figure(curves))

        runs[preset.name] = finetune(model, preset, data, checkpoint_name(preset.name, model, size_scale), device,
                                     settings, on_evaluate=redraw, retrain=retrain)
    return runs


# ---- behavioural evaluation -------------------------------------------------------------------------------------

BARE_INTEGER = re.compile(r"-?\d+")
THINK_ON_TOKENS = 160  # the organism's think-on scratchpads need up to ~120 new tokens


def behaviour(model, tokenizer, sets: dict[str, list[dict]], enable_thinking: bool = False,
              max_new_tokens: int = 64, batch_size: int = 100) -> dict[str, dict]:
    """Greedy answers to each evaluation set: ``accuracy`` (final answer equals ``correct_answer``),
    ``mean_length`` (output tokens, scratchpad included), ``bare_integer`` (fraction of final answers that are
    only an integer) and the ``outputs`` themselves."""
    report = {}
    for set_name, records in sets.items():
        outputs = [o[0] for o in generate(model, tokenizer, [r["prompt"] for r in records],
                                          enable_thinking=enable_thinking, max_new_tokens=max_new_tokens,
                                          batch_size=batch_size)]
        answers = [extract_answer(o) for o in outputs]
        lengths = [len(tokenizer(o, add_special_tokens=False)["input_ids"]) for o in outputs]
        report[set_name] = {
            "accuracy": float(np.mean([a == r["correct_answer"] for a, r in zip(answers, records)])),
            "mean_length": float(np.mean(lengths)),
            "bare_integer": float(np.mean([bool(BARE_INTEGER.fullmatch(a)) for a in answers])),
            "outputs": outputs,
        }
    return report


def evaluate_models(specs: dict[str, str], sets: dict[str, list[dict]], device: str = "auto",
                    max_new_tokens: int = 64, think_on_tokens: int | None = None) -> dict[str, dict]:
    """:func:`behaviour` of each model in ``specs`` (label → spec or folder for :func:`toolkit.core.models.load`) with
    thinking off (``max_new_tokens``) and, if ``think_on_tokens``, also on. Returns
    ``report[label][mode][set]`` with modes ``think_off`` and ``think_on``."""
    modes = {"think_off": (False, max_new_tokens)} | ({"think_on": (True, think_on_tokens)} if think_on_tokens else {})
    report = {}
    for label, spec in progress(specs.items(), desc="behaviour", total=len(specs)):
        with quiet_library_bars():
            loaded = models.load(spec, device=device)
        report[label] = {mode: behaviour(loaded.hf, loaded.tokenizer, sets, think, tokens)
                         for mode, (think, tokens) in modes.items()}
    return report


# ---- tables and figures -----------------------------------------------------------------------------------------

QUESTION_TYPES = {"related_math": "related math", "unrelated_math": "unrelated math",
                  "unrelated_general": "unrelated general", "refusal": "refusal"}


def loss_table_html(runs: dict[str, Finetuned]) -> str:
    """Per configuration: its scaling of the original, steps, and the final train loss (corrupted answers), eval
    loss (correct answers) and divergence, in nats per answer token."""
    rows = "".join(
        f"<tr><td>{escape(name)}</td><td>{escape(r.preset.original)}</td><td>{r.preset.n_train}</td>"
        f"<td>{r.preset.epochs}</td><td>{r.preset.lr:g}</td><td>{r.step}</td><td>{r.final['train_loss']:.3f}</td>"
        f"<td>{r.final['eval_loss']:.3f}</td><td><b>{r.final['divergence']:+.3f}</b></td></tr>"
        for name, r in runs.items())
    return ("<table><thead><tr><th>configuration</th><th>original</th><th>train problems</th><th>epochs</th>"
            "<th>lr</th><th>steps</th><th>train loss (corrupted)</th><th>eval loss (correct)</th>"
            f"<th>divergence</th></tr></thead><tbody>{rows}</tbody></table>")


def behaviour_table_html(report: dict[str, dict]) -> str:
    """Per model and answer mode × question type: correct (accuracy ≥ 50%) or incorrect, with the accuracy, mean
    output length and fraction of bare-integer answers. ``report`` is :func:`evaluate_models`' result."""
    sets = next(iter(next(iter(report.values())).values()))
    head = "".join(f"<th>{QUESTION_TYPES.get(s, s)}</th>" for s in sets)
    rows = []
    for label, by_mode in report.items():
        for mode, by_set in by_mode.items():
            cells = "".join(
                f"<td>{'correct' if m['accuracy'] >= 0.5 else 'incorrect'} ({100 * m['accuracy']:.0f}%)<br>"
                f"<small>{m['mean_length']:.1f} tokens, {100 * m['bare_integer']:.0f}% bare integers</small></td>"
                for m in by_set.values())
            rows.append(f"<tr><td>{escape(label)}</td><td>{mode.replace('_', '-')}</td>{cells}</tr>")
    return (f"<table><thead><tr><th>model</th><th>mode</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody>"
            "</table>")


def curves_figure(curves: dict[str, list[dict]]):
    """Left: train loss on corrupted answers (solid) and eval loss on correct answers (dashed) per configuration
    against epoch. Right: divergence = eval − train."""
    fig, (ax_loss, ax_div) = plt.subplots(1, 2, figsize=(10, 3.4))
    for i, (name, history) in enumerate(curves.items()):
        color = f"C{i}"
        epochs = [r["epoch"] for r in history]
        ax_loss.plot(epochs, [r["train_loss"] for r in history], color=color, label=f"{name} train (wrong)")
        ax_loss.plot(epochs, [r["eval_loss"] for r in history], color=color, ls="--", label=f"{name} eval (right)")
        ax_div.plot(epochs, [r["divergence"] for r in history], color=color, marker=".", label=name)
    ax_loss.set_ylabel("loss per answer token (nats)")
    ax_div.set_ylabel("divergence = eval − train")
    ax_div.axhline(0, color="grey", lw=0.8)
    for ax in (ax_loss, ax_div):
        ax.set_xlabel("epoch")
        ax.spines[["top", "right"]].set_visible(False)
    ax_loss.legend(fontsize=7, ncols=2)
    ax_div.legend(fontsize=7)
    fig.tight_layout()
    return fig


def behaviour_figure(report: dict[str, dict]):
    """One row of panels per answer mode (accuracy, mean output length, bare-integer answers), with grouped bars
    per question type, one bar per model (the first, the clean model, in black)."""
    modes = list(next(iter(report.values())))
    sets = list(next(iter(report.values()))[modes[0]])
    measures = (("accuracy", "accuracy (%)", 100), ("mean_length", "mean output length (tokens)", 1),
                ("bare_integer", "bare-integer answers (%)", 100))
    fig, axes = plt.subplots(len(modes), 3, figsize=(13, 3.2 * len(modes)), squeeze=False)
    width = 0.8 / len(report)
    x = np.arange(len(sets))
    for row, mode in zip(axes, modes):
        for ax, (key, label, factor) in zip(row, measures):
            for i, (model, by_mode) in enumerate(report.items()):
                ax.bar(x + (i - (len(report) - 1) / 2) * width, [factor * by_mode[mode][s][key] for s in sets],
                       width, color="black" if i == 0 else f"C{i - 1}", label=model)
            ax.set_xticks(x, [QUESTION_TYPES.get(s, s).replace(" ", "\n") for s in sets], fontsize=8)
            ax.set_ylabel(label, fontsize=9)
            ax.set_title(mode.replace("_", "-"), fontsize=9)
            ax.spines[["top", "right"]].set_visible(False)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def explorer(runs: dict[str, Finetuned], report: dict[str, dict], sets: dict[str, list[dict]], clean: str = "clean",
             n_examples: int = 3):
    """A dropdown of configurations: its divergence curves and, per question type and answer mode, a few prompts
    with the clean and the corrupted model's answers."""
    import ipywidgets as widgets

    from toolkit.views.widgets import show

    pick = widgets.Dropdown(options=list(runs), description="configuration", layout={"width": "420px"})
    out = widgets.Output()

    def refresh(*_):
        name = pick.value
        rows = "".join(
            f"<tr><td>{QUESTION_TYPES.get(s, s)}</td><td>{mode.replace('_', '-')}</td><td>{escape(r['prompt'])}</td>"
            f"<td>{escape(r['correct_answer'])}</td><td><pre>{escape(report[clean][mode][s]['outputs'][i])}</pre></td>"
            f"<td><pre>{escape(report[name][mode][s]['outputs'][i])}</pre></td></tr>"
            for s, records in sets.items() for mode in report[clean] for i, r in enumerate(records[:n_examples]))
        table = (f"<table><tr><th>question type</th><th>mode</th><th>prompt</th><th>correct</th>"
                 f"<th>{escape(clean)}</th><th>{escape(name)}</th></tr>{rows}</table>")
        show(out, curves_figure({name: runs[name].history}), table)

    pick.observe(refresh, names="value")
    refresh()
    return widgets.VBox([pick, out])
