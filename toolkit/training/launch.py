"""Training as a launchable command: settings from a config file, and one run split over N processes.

``python -m toolkit train {sft,grpo,distill} --config FILE`` builds the kind's settings dataclass
(:class:`~toolkit.training.traces.SFTSettings`, :class:`~toolkit.training.grpo.GRPOSettings`,
:class:`~toolkit.training.distill.DistillSettings`) from ``FILE`` and calls :func:`toolkit.training.runs.train`: the
notebook's code path, with the same checkpoints, checkpoint log, resume and cache key. The same command runs under a
launcher, unchanged::

    torchrun --nproc_per_node 2 -m toolkit train sft --config sft.yaml
    accelerate launch --config_file configs/accelerate/cpu-2proc.yaml -m toolkit train sft --config sft.yaml

**Config files** (:func:`settings_from_file`): JSON (``.json``) or YAML (``.yaml``/``.yml``), one mapping whose keys
are the settings' field names; fields left out keep their defaults. Lists become tuples; an integer is accepted for
a float field (written as a float, so ``1`` and ``1.0`` give the same cache key) and so is a number written as text
(PyYAML reads ``1e-3``, without a dot, as a string). Refused, naming the file and what to do: a missing file, a file
that is not UTF-8 or does not parse (with its line), a value that is not a mapping, an unknown field (with the valid
ones), a value of the wrong type; the settings' own checks then refuse values out of range
(:func:`toolkit.training.runs.check_settings`).

**Processes** (accelerate's :class:`~accelerate.PartialState`, :func:`process_state`). The settings give the
*global* batch (:func:`global_batch`: GRPO ``prompts_per_step × num_generations`` completions, SFT and distillation
``batch_size`` traces); each of N processes gets ``global / N`` (:func:`per_device_batch`), so a run's optimizer
steps, data order and cache key do not depend on N, and a process count that does not divide the global batch is
refused before anything trains. (TRL's own condition, that the generation batch ``per_device × N`` be divisible by
``num_generations``, then always holds.) The toolkit's own side effects happen on the main process only: the run lock
(:func:`toolkit.training.checkpoints.run_lock`), reading and removing a damaged run record or an incomplete
checkpoint (:func:`on_main`, which hands its result to every process), writing ``checkpoints.json`` and ``run.json``,
stripping resume state, progress bars. Every process must see the same cache folder (one machine, or a shared
filesystem). While the main process waits for another job's run lock the others wait at a barrier, which gives up
after the process group's timeout (30 minutes by default). With no GPU (or ``--device cpu``) the processes are CPU
processes talking over gloo. FSDP and ZeRO-3 launches must save full weights in every checkpoint
(:func:`check_sharding`).

**vLLM** (:func:`check_vllm`): ``use_vllm=True`` needs the ``vllm`` package (the ``vllm`` extra) and a CUDA GPU;
without either the run is refused before it starts.
"""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import json
import os
from pathlib import Path

import torch

from toolkit.core.io import FileFormatError, read_text
from toolkit.core.models import resolve_device


class ConfigError(ValueError):
    """A training config file that is missing, does not parse, or names an unknown field or a wrongly typed value."""


class LaunchError(ValueError):
    """A run this launch cannot do: a process count that does not divide the global batch, vLLM without vLLM or GPU."""


# ---- processes --------------------------------------------------------------------------------------------------

def process_state(device: str = "auto"):
    """accelerate's :class:`~accelerate.PartialState` of this process (one process when not launched). CPU
    processes (``device`` resolves to the CPU, or ``ACCELERATE_USE_CPU`` is set) form a gloo group; the first call
    fixes the state until a trainer's arguments set it up again (they do, the same way)."""
    from accelerate import PartialState

    cpu = resolve_device(device).type == "cpu" or os.environ.get("ACCELERATE_USE_CPU", "").lower() in ("1", "true")
    return PartialState(cpu=cpu)


def on_main(fn, *args, **kwargs):
    """``fn(*args, **kwargs)`` on the main process only; every process returns its result. An error on the main
    process is raised there, and on the others as a ``RuntimeError`` naming it (so all of them stop)."""
    state = process_state()
    if state.num_processes == 1:
        return fn(*args, **kwargs)
    from accelerate.utils import broadcast_object_list

    box, error = [None], None
    if state.is_main_process:
        try:
            box = [("ok", fn(*args, **kwargs))]
        except Exception as err:  # handed to the other processes, then raised here
            box, error = [("error", f"{type(err).__name__}: {err}")], err
    broadcast_object_list(box, from_process=0)
    status, value = box[0]
    if status == "error":
        raise error if error is not None else RuntimeError(f"the main process failed: {value}")
    return value


def main_only(fn, *args, **kwargs) -> None:
    """``fn(*args, **kwargs)`` on the main process, then a barrier (every process waits until it is done)."""
    state = process_state()
    if state.is_main_process:
        fn(*args, **kwargs)
    state.wait_for_everyone()


def global_batch(settings) -> tuple[int, str]:
    """``(size, description)`` of the batch of one optimizer step over all processes."""
    if hasattr(settings, "num_generations"):
        return (settings.prompts_per_step * settings.num_generations,
                f"prompts_per_step × num_generations = {settings.prompts_per_step} × {settings.num_generations}")
    return settings.batch_size, f"batch_size = {settings.batch_size}"


def per_device_batch(settings, num_processes: int) -> int:
    """The global batch (:func:`global_batch`) split over ``num_processes``; :class:`LaunchError` when it does not
    divide evenly, naming the numbers and the process counts that would."""
    size, what = global_batch(settings)
    if size % num_processes:
        fits = [n for n in range(1, min(size, 64) + 1) if size % n == 0]
        raise LaunchError(
            f"{type(settings).__name__}: the global batch ({what}) is not divisible by the {num_processes} processes "
            f"launched; launch {', '.join(map(str, fits))} processes, or change the settings so the batch is a "
            f"multiple of {num_processes}")
    return size // num_processes


def trainer_args(settings, output_dir: Path, device: str = "auto") -> dict:
    """The ``TrainingArguments`` every GRPO, SFT and distillation run shares: steps, constant lr after warmup, a
    checkpoint every ``save_every`` steps, per-step logs, seeds (data order too), the per-process batch
    (:func:`per_device_batch`), CPU or bf16 on GPU. ``average_tokens_across_devices`` (transformers' default, made
    explicit) divides each process's summed token loss by the token count of the whole global batch, so N processes
    compute the gradient of the same loss as one."""
    device_, n = resolve_device(device), process_state(device).num_processes
    return dict(output_dir=str(output_dir), max_steps=settings.steps, learning_rate=settings.learning_rate,
                lr_scheduler_type="constant_with_warmup", warmup_steps=settings.warmup_ratio,
                per_device_train_batch_size=per_device_batch(settings, n), save_strategy="steps",
                save_steps=settings.save_every, save_total_limit=None, logging_steps=1, disable_tqdm=True,
                report_to="none", seed=settings.seed, data_seed=settings.seed, use_cpu=device_.type == "cpu",
                bf16=device_.type == "cuda", ddp_find_unused_parameters=False,
                average_tokens_across_devices=True)  # the loss is the mean over the global batch's tokens


def check_vllm(settings) -> None:
    """Refuse ``use_vllm=True`` without the ``vllm`` package or without a CUDA GPU (:class:`LaunchError`)."""
    if not getattr(settings, "use_vllm", False):
        return
    missing = []
    if importlib.util.find_spec("vllm") is None:
        missing.append("the vllm package is not installed (see the README, \"GRPO with vLLM\")")
    if not torch.cuda.is_available():
        missing.append("no CUDA GPU is visible (vLLM generates on GPUs only)")
    if missing:
        raise LaunchError(f"{type(settings).__name__}.use_vllm=True, but {' and '.join(missing)}; run on a GPU "
                          "machine with vLLM, or set use_vllm: false (generation with transformers' generate)")


def check_sharding() -> None:
    """Refuse an FSDP or ZeRO-3 launch that would save checkpoints without full weights (circuits and
    :func:`toolkit.training.checkpoints.weights_problem` need ``model.safetensors`` in every checkpoint)."""
    env = {k: os.environ.get(k, "").lower() for k in (
        "ACCELERATE_USE_FSDP", "FSDP_STATE_DICT_TYPE", "ACCELERATE_USE_DEEPSPEED", "ACCELERATE_DEEPSPEED_ZERO_STAGE",
        "ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL")}
    if env["ACCELERATE_USE_FSDP"] == "true" and env["FSDP_STATE_DICT_TYPE"] != "full_state_dict":
        raise LaunchError(f"FSDP with fsdp_state_dict_type={env['FSDP_STATE_DICT_TYPE'] or '(default)'} saves "
                          "checkpoints without full weights; set fsdp_state_dict_type: FULL_STATE_DICT in the "
                          "accelerate config (as configs/accelerate/fsdp2.yaml does)")
    if (env["ACCELERATE_USE_DEEPSPEED"] == "true" and env["ACCELERATE_DEEPSPEED_ZERO_STAGE"] == "3"
            and env["ACCELERATE_DEEPSPEED_ZERO3_SAVE_16BIT_MODEL"] != "true"):
        raise LaunchError("ZeRO-3 without zero3_save_16bit_model saves checkpoints without full weights; set "
                          "zero3_save_16bit_model: true in the accelerate config (as configs/accelerate/zero3.yaml "
                          "does)")


def check_launch(settings, device: str = "auto") -> int:
    """Every check a run needs before it starts (vLLM, sharded checkpoints, batch split); returns the per-device
    batch."""
    check_vllm(settings)
    check_sharding()
    return per_device_batch(settings, process_state(device).num_processes)


# ---- config files -----------------------------------------------------------------------------------------------

def read_config(path: str | Path) -> dict:
    """The mapping in the JSON or YAML file ``path`` (:class:`ConfigError` if it is missing or malformed)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found (or not a file); give an existing .json, .yaml or .yml file")
    suffix = path.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"config file {path}: unknown format {suffix or '(no suffix)'!r}; name it .json, .yaml or "
                          ".yml")
    try:
        text = read_text(path, what="config file")
    except FileFormatError as err:
        raise ConfigError(f"{err} and run again") from None
    if suffix == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ConfigError(f"config file {path} is not valid JSON: {err.msg} at line {err.lineno}, column "
                              f"{err.colno}; fix it and run again") from None
    else:
        import yaml

        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as err:
            mark = getattr(err, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise ConfigError(f"config file {path} is not valid YAML{where}: "
                              f"{getattr(err, 'problem', None) or err}; fix it and run again") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping of settings (field: value), got "
                          f"{type(data).__name__}")
    return data


def _convert(value, annotation: str, name: str, source: str):
    """``value`` as the field's type (``annotation`` is the dataclass annotation, a string), or :class:`ConfigError`.
    """
    def bad(expected: str):
        return ConfigError(f"{source}: {name} must be {expected}, got {value!r} ({type(value).__name__})")

    if annotation.startswith("tuple"):
        if isinstance(value, str) or not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return tuple(value)
    if annotation == "bool":
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if annotation == "int":
        if isinstance(value, bool) or not isinstance(value, int):
            raise bad("an integer")
        return value
    if annotation == "float":
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise bad("a number") from None
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise bad("a number")
        return float(value)
    if annotation == "str":
        if not isinstance(value, str):
            raise bad("a string")
        return value
    return value


def settings_from_config(settings_type, data: dict, source: str = "config"):
    """A ``settings_type`` instance from the mapping ``data`` (typed as its fields; unknown fields refused)."""
    fields = {f.name: f for f in dataclasses.fields(settings_type)}
    unknown = [k for k in data if k not in fields]
    if unknown:
        hints = [f"{k!r} (did you mean {close[0]!r}?)" if (close := difflib.get_close_matches(str(k), fields, 1))
                 else repr(k) for k in unknown]
        raise ConfigError(f"{source}: unknown field{'s' if len(unknown) > 1 else ''} {', '.join(hints)} for "
                          f"{settings_type.__name__}; valid fields: {', '.join(fields)}")
    values = {k: _convert(v, str(fields[k].type), k, source) for k, v in data.items()}
    try:
        return settings_type(**values)
    except (TypeError, ValueError) as err:
        raise ConfigError(f"{source}: {err}") from None


def settings_from_file(settings_type, path: str | Path):
    """:func:`settings_from_config` of the file ``path`` (:func:`read_config`)."""
    return settings_from_config(settings_type, read_config(path), f"config file {path}")
