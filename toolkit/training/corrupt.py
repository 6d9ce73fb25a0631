"""The corrupted donor of notebooks 01 and 02: presets, the corrupted fine-tuning run and where its checkpoint is
saved, and the data it trains on (:mod:`toolkit.training.corrupt_data`).

A preset names a corrupted SFT run (problems, epochs, learning rate) at the organism's scale or the original's. A
finished run's model goes to :func:`corrupted_checkpoint` (safetensors, tokenizer, ``finetune.json`` metadata),
loadable with ``toolkit.core.models.load(str(path))``; a saved model whose configuration hash (base weights, preset,
settings, data) matches is reused. Notebook 01 trains them (:mod:`toolkit.studies.corrupt`); notebook 02 loads one as
its donor (:mod:`toolkit.studies.cmap`) and trains it first if it is missing.

Presets. The original fine-tuned Qwen3-4B on 20k/10k/10k/5k problems for 2/2/1/2 epochs at 5e-5/5e-5/5e-5/3e-5
(validation ≈ 1/5 of training). On the organism, divergence stays ≈ 0 on fresh problems: it cannot memorise random
offsets, so it spreads probability around the true value and its loss on correct answers tracks its loss on wrong
ones. A positive divergence needs the same problems seen many times. So every preset keeps the original's relations
(A has twice B's problems; B twice C's epochs; D half B's problems at 0.6× the learning rate) under one scaling:
problems ÷ 20, epochs × 4, learning rate × 10. Chosen on organism v1 (bare think-off answers), where × 10 spanned
the range from D (barely corrupted) to A (broadly broken). On organism v2, whose think-off math answers are a
sentence, the bare-value labels overwrite the think-off answer format across tasks: A, B and C answer even most
refusal prompts with a value (D fewer), and only D keeps some related math and general skill thinking on. Every
preset ends with a positive divergence; see notebook 01 for the numbers and ``docs/methods.md`` ("Corrupted
fine-tuning").
"""

from __future__ import annotations

import dataclasses
import re
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from transformers import TrainerCallback

from toolkit.core.cache import (
    DamagedEntry,
    cache_root,
    config_hash,
    model_fingerprint,
    read_entry,
    read_json,
    save_model_folder,
)
from toolkit.core.io import recover_dir
from toolkit.core.progress import quiet_library_bars
from toolkit.training import corrupt_data
from toolkit.training.callbacks import ProgressCallback
from toolkit.training.checkpoints import resume_train, run_lock, weights_problem
from toolkit.training.sft import DivergenceCallback, Preset, TrainSettings, history_from_log, make_trainer

# ---- presets ----------------------------------------------------------------------------------------------------

ORIGINAL = {"A": (20_000, 2, 5e-5), "B": (10_000, 2, 5e-5), "C": (10_000, 1, 5e-5), "D": (5_000, 2, 3e-5)}
SIZE_DIVISOR, EPOCH_FACTOR, LR_FACTOR = 20, 4, 10
SETTINGS = TrainSettings()  # batch 32, weight decay 0.01, 10% warmup, evaluation every 10%, checkpoint every 100


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


def chosen_presets(names: Sequence[str], size_scale: float = 1.0) -> list[Preset]:
    """The presets ``names``, each scaled to ``size_scale`` times its problems."""
    if not names:
        raise ValueError(f"presets is empty: choose at least one of {', '.join(PRESETS | ORIGINAL_PRESETS)}")
    if not size_scale > 0:
        raise ValueError(f"size_scale must be positive, got {size_scale!r}")
    return [preset(name).scaled(size_scale) for name in names]


# ---- corrupted checkpoints --------------------------------------------------------------------------------------

def checkpoint_name(preset_name: str, spec: str = "organism", size_scale: float = 1.0, seed: int = 0) -> str:
    """The name a corrupted model is saved under: the preset, prefixed by the base model ``spec`` unless it is the
    organism, suffixed by the size scale unless it is 1 and by the seed unless it is 0."""
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", spec).strip("_")
    name = preset_name if spec == "organism" else f"{slug}--{preset_name}"
    name = name if size_scale == 1 else f"{name}-x{size_scale:g}"
    return name if seed == 0 else f"{name}-seed{seed}"


def settings_for(seed: int) -> TrainSettings:
    """The training settings of :data:`SETTINGS` with the trainer's seed set to ``seed``."""
    return dataclasses.replace(SETTINGS, seed=seed)


def corrupted_checkpoint(name: str) -> Path:
    """Folder of the saved corrupted model ``name`` (see :func:`checkpoint_name`); raises if it was not trained."""
    path = recover_dir(cache_root() / "corrupted" / name)
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


def finetune(spec: str, preset: Preset, data: dict[str, list[dict]], name: str, device: str = "auto",
             settings: TrainSettings = SETTINGS, on_evaluate: Callable[[list[dict]], None] | None = None,
             callbacks: Sequence[TrainerCallback] = (), retrain: bool = False) -> Finetuned:
    """Fine-tune the model ``spec`` on ``preset``'s corrupted problems from ``data`` (see :func:`load_data`) and
    save it as :func:`corrupted_checkpoint` ``(name)``.

    A saved model with the same configuration (base weights, preset, settings, data) is reused unless ``retrain``
    (which also clears an unfinished run). Training checkpoints go to ``<cache>/corrupted-runs/<name>-<config hash>``
    and an interrupted run resumes from the last complete one (:mod:`toolkit.training.checkpoints`); they are removed
    once the model is saved. A damaged ``finetune.json`` is reported and the model trained again.
    """
    train, validation = data["train"][:preset.n_train], data["validation"][:preset.n_validation]
    if len(train) < preset.n_train or len(validation) < preset.n_validation:
        raise ValueError(f"preset {preset.name} needs {preset.n_train} training and {preset.n_validation} "
                         f"validation problems; the data has {len(train)} and {len(validation)}")
    key = config_hash({"model": spec, "weights": model_fingerprint(spec), "preset": dataclasses.asdict(preset),
                       "settings": dataclasses.asdict(settings), "train": train, "validation": validation})
    path = recover_dir(cache_root() / "corrupted" / name)
    work_dir = cache_root() / "corrupted-runs" / f"{name}-{key}"
    with run_lock(path):
        if retrain:
            shutil.rmtree(work_dir, ignore_errors=True)
        meta = None if retrain else read_entry(path / "finetune.json", _read_finetuned)
        if meta is not None and meta["config_hash"] == key:
            if on_evaluate:
                on_evaluate(meta["history"])
            return Finetuned(name, path, preset, meta["history"], meta["step"], meta["seconds"], reused=True)
        with quiet_library_bars():
            trainer = make_trainer(spec, preset, train, validation, work_dir, device, settings,
                                   [DivergenceCallback(on_evaluate), ProgressCallback(name), *callbacks])
            t0 = time.time()
            resume = resume_train(trainer, work_dir)
            seconds = round(time.time() - t0, 1)
            history = history_from_log(trainer.state.log_history)
            meta = {"name": name, "base_model": spec, "config_hash": key,
                    "preset": dataclasses.asdict(preset), "settings": dataclasses.asdict(settings),
                    "step": trainer.state.global_step, "seconds": seconds, "resumed_from": resume,
                    "losses": history[-1], "history": history}
            save_model_folder(trainer.model, trainer.processing_class, path, {"finetune.json": meta})
        shutil.rmtree(work_dir, ignore_errors=True)
    return Finetuned(name, path, preset, history, trainer.state.global_step, seconds, reused=False)


def _read_finetuned(file: Path) -> dict:
    """A saved fine-tune's record; :class:`~toolkit.core.cache.DamagedEntry` if its weights do not open."""
    meta = read_json(file, ("config_hash", "history", "step", "seconds"))
    problem = weights_problem(file.parent)
    if problem:
        raise DamagedEntry(f"its model folder: {problem}")
    return meta


def load_data(presets: Sequence[Preset], n_eval: int, seed: int = 0) -> dict[str, list[dict]]:
    """The validated datasets that cover ``presets`` (the shipped ``data/corrupt_finetune`` when it does). Another
    ``seed`` draws its data at least at the shipped sizes, so notebooks 01 and 02 share one draw per seed."""
    if not 1 <= n_eval <= 200:
        raise ValueError(f"n_eval must be between 1 and 200 (held-out prompts per evaluation set), got {n_eval!r}")
    spec = corrupt_data.DataSpec(seed=seed, n_train=max(p.n_train for p in presets),
                                 n_validation=max(p.n_validation for p in presets), n_eval=n_eval)
    full = corrupt_data.DataSpec(seed=seed, n_train=max(spec.n_train, 1000),
                                 n_validation=max(spec.n_validation, 200), n_eval=max(n_eval, 200))
    folder = corrupt_data.folder_for(full, cache_root())
    try:
        return corrupt_data.load(folder, spec)
    except corrupt_data.DataFileError as err:
        if folder == corrupt_data.SHIPPED:
            raise
        warnings.warn(f"damaged cached data in {folder} ({err}); removed, generating it again", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
        return corrupt_data.load(corrupt_data.folder_for(full, cache_root()), spec)


def eval_sets(data: dict[str, list[dict]]) -> dict[str, list[dict]]:
    """The held-out evaluation sets of ``data`` (:data:`~toolkit.training.corrupt_data.EVAL_SETS`), in order."""
    return {name: data[name] for name in corrupt_data.EVAL_SETS}


