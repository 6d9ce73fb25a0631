"""What a model spec names, before anything is loaded: the embedded organism (``"organism"``, ``"organism-base"``,
replicates ``"organism@N"``), and where its checkpoints live; a re-initialised copy of any spec (``"random:<spec>"``,
:func:`random_spec`). Light (no torch), so the organism can register with it.

The organism package registers its checks here (:func:`register_organism_check`: the recipe-hash check, which needs
the organism's recipe), so core never imports the organism: :func:`toolkit.core.models.resolve` calls
:func:`check_organism` on every organism folder it resolves. ``import toolkit`` imports ``toolkit.organism``, so the
check is registered in every process that loads a model.
"""

from __future__ import annotations

import os
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from toolkit.core.io import REPO_ROOT, cache_root

ORGANISMS = ("organism", "organism-base")
_ORGANISM_CHECKS: list[Callable[[Path, int], None]] = []


class ModelLoadError(ValueError):
    """A model spec that cannot be loaded; the message says why and what to do instead."""


def data_dir() -> Path:
    """Where the organism checkpoints live (``$TOOLKIT_DATA`` or the repository's ``data/``)."""
    return Path(os.environ.get("TOOLKIT_DATA", REPO_ROOT / "data"))


ORGANISM_FORMS = "'organism', 'organism-base', 'organism@N', 'organism-base@N' (N: a replicate's seed, a whole number)"


def organism_spec(spec: str) -> tuple[str, int] | None:
    """``(checkpoint, seed)`` of an organism spec — ``"organism"`` → ``("organism", 0)``, ``"organism-base@3"`` →
    ``("organism-base", 3)`` — or ``None`` for any other spec. A replicate is the same recipe built with another
    seed (initialisation and data order); seed 0 is the shipped build. A malformed replicate spec
    (``organism@x``, ``organism@-1``) is a :class:`ModelLoadError` listing the valid forms."""
    if spec in ORGANISMS:
        return spec, 0
    name, sep, seed = spec.partition("@")
    if not sep or name not in ORGANISMS:
        return None
    if not seed.isdigit() or not seed.isascii():
        raise ModelLoadError(f"{spec!r} is not an organism spec: after '@' comes a replicate's seed, a whole number "
                             f">= 0; valid forms: {ORGANISM_FORMS}")
    return name, int(seed)


RANDOM_PREFIX = "random:"


class RandomSpec(NamedTuple):
    """``random:<inner>``: the architecture, config and tokenizer of ``inner``, with weights drawn with ``seed``."""

    inner: str
    seed: int


def random_spec(spec: str) -> RandomSpec | None:
    """The re-initialised copy a ``"random:<spec>"`` names — the same architecture and tokenizer as ``<spec>`` (any
    other spec form), with random weights drawn with the seed ``zlib.crc32(<spec>)``, so ``random:organism`` and
    ``random:organism-base`` differ and each is the same on every load — or ``None`` for any other spec.
    :func:`toolkit.core.models.load_weights` draws the weights. ``random:`` with nothing after it, or a nested
    ``random:random:...``, is a :class:`ModelLoadError`."""
    if not spec.startswith(RANDOM_PREFIX):
        return None
    inner = spec[len(RANDOM_PREFIX):]
    if not inner.strip():
        raise ModelLoadError(f"{spec!r} names no model: write random:<spec>, e.g. 'random:organism' or "
                             "'random:/path/to/folder' (that model's architecture and tokenizer, random weights)")
    if inner.startswith(RANDOM_PREFIX):
        base = inner
        while base.startswith(RANDOM_PREFIX):
            base = base[len(RANDOM_PREFIX):]
        raise ModelLoadError(f"{spec!r} nests 'random:' (a re-initialised copy of a re-initialised copy is just one); "
                             f"write it once: {RANDOM_PREFIX + base!r}")
    return RandomSpec(inner, zlib.crc32(inner.encode()))


def organism_dir(seed: int = 0) -> Path:
    """The folder of organism build ``seed``: :func:`data_dir` for the shipped build (seed 0), else
    ``<cache>/organism-replicates/seed-<seed>`` (built by ``python -m toolkit build-organism --seed N``)."""
    return data_dir() if seed == 0 else cache_root() / "organism-replicates" / f"seed-{seed}"


def register_organism_check(check: Callable[[Path, int], None]) -> None:
    """Run ``check(folder, seed)`` on every organism checkpoint folder :func:`toolkit.core.models.resolve` resolves
    (registered once, however often it is called)."""
    if check not in _ORGANISM_CHECKS:
        _ORGANISM_CHECKS.append(check)


def check_organism(path: Path, seed: int = 0) -> None:
    """Run the registered organism checks on the checkpoint folder ``path`` of build ``seed``."""
    for check in _ORGANISM_CHECKS:
        check(path, seed)


def short_label(spec: str) -> str:
    """A model's short name for titles, legends and claims (never a path): a folder's name
    (``/home/u/ckpt/qwen3-1.7b-sft`` → ``qwen3-1.7b-sft``), a hub name's part after the owner (``Qwen/Qwen3-8B`` →
    ``Qwen3-8B``), an organism spec itself (``organism-base@3``), ``random:`` + the label of a ``random:<spec>``."""
    if spec.startswith(RANDOM_PREFIX):
        return RANDOM_PREFIX + short_label(spec[len(RANDOM_PREFIX):])
    if organism_spec_or_none(spec) is not None:
        return spec
    name = spec.rstrip("/\\").replace("\\", "/").rsplit("/", 1)[-1]
    return name or spec


def organism_spec_or_none(spec: str) -> tuple[str, int] | None:
    """:func:`organism_spec`, with a malformed replicate spec read as no organism spec."""
    try:
        return organism_spec(spec)
    except ModelLoadError:
        return None


def _paired(model: str, given: str | None, param: str, stage: str, other: str, what: str) -> str:
    """``given`` when set, else the organism checkpoint ``other`` of the build ``model`` (organism checkpoint ``stage``)
    names; a model that is not that refuses, naming ``param``."""
    if given:
        return given
    randomised = random_spec(model)
    organism = organism_spec_or_none(randomised.inner if randomised else model)
    if organism is None or organism[0] != stage:
        who = stage.replace("-", "'s ")  # organism-base: the organism's base
        raise ModelLoadError(f"model={model!r} is not the {who}, so {param} cannot be derived: "
                             f"pass {param}=... ({what})")
    return other + (f"@{organism[1]}" if organism[1] else "")


def derive_base_model(model: str, base_model: str | None = "") -> str:
    """The model ``model`` was post-trained from: ``base_model`` when given, else, for the organism, its base
    (``organism`` → ``organism-base``, a replicate's own: ``organism@3`` → ``organism-base@3``; a control run's
    ``random:organism`` → ``random:organism-base``). Any other ``model`` without a ``base_model`` is a
    :class:`ModelLoadError` saying to pass one (raised before any work starts)."""
    derived = _paired(model, base_model, "base_model", "organism", "organism-base",
                      f"the model {model} was trained from")
    return RANDOM_PREFIX + derived if not base_model and random_spec(model) else derived


def derive_teacher(model: str, teacher: str | None = "") -> str:
    """Distillation's teacher for the start model ``model``: ``teacher`` when given, else, for the organism's base,
    the organism of the same build (``organism-base@3`` → ``organism@3``; a control run's ``random:organism-base`` →
    ``organism``: the control keeps the trained teacher). Any other ``model`` without a ``teacher`` is a
    :class:`ModelLoadError` saying to pass one."""
    return _paired(model, teacher, "teacher", "organism-base", "organism",
                   f"a stronger model whose traces {model} is distilled on")
