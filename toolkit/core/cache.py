"""The cache: where trained models and analyses are kept, and how a configuration names its entry.

- :func:`cache_root`: ``$TOOLKIT_CACHE`` or ``<repo>/.cache`` (git-ignored).
- :func:`model_fingerprint`: identifies a model's weights (a hash of a folder's safetensors, or the hub name; for
  ``random:<spec>``, its seed and the inner spec's fingerprint).
- :func:`config_hash`: 12 hex digits of sha256 over a configuration's canonical JSON (sorted keys). Two runs share
  an entry exactly when their configurations serialize to the same JSON.
- :func:`read_entry`: a cache entry read back, or ``None`` when it is missing or damaged (a damaged entry is reported
  with its path and removed, so the caller computes it again).
- :func:`save_model_folder`: an HF model folder (safetensors, tokenizer, metadata files) written beside its target
  and swapped in, so a reader sees the old folder or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import warnings
from collections.abc import Callable
from pathlib import Path

from toolkit.core import models
from toolkit.core.io import atomic_write_json, cache_root, replace_dir  # noqa: F401 (cache_root: its home was here)
from toolkit.core.specs import random_spec


def model_fingerprint(spec: str) -> str:
    """Identifies the weights of ``spec``: a hash of a local folder's safetensors files (files over 256 MB by name
    and size only), or the hub name itself; ``random:<spec>`` (weights drawn from the inner spec's config with a seed
    of its own, :func:`toolkit.core.specs.random_spec`) is ``random-<seed>-<the inner spec's fingerprint>``."""
    if (randomised := random_spec(spec)) is not None:
        return f"random-{randomised.seed:08x}-{model_fingerprint(randomised.inner)}"
    folder = Path(models.resolve(spec))
    if not folder.is_dir():
        return spec
    h = hashlib.sha256()
    for weights in sorted(folder.glob("*.safetensors")):
        size = weights.stat().st_size
        h.update(f"{weights.name}:{size}".encode())
        if size <= 256 * 2**20:
            h.update(weights.read_bytes())
    return h.hexdigest()[:16]


def config_hash(payload) -> str:
    """12 hex digits of sha256 over ``json.dumps(payload, sort_keys=True)`` (objects JSON cannot encode are
    written as ``str(obj)``)."""
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:12]


class DamagedEntry(ValueError):
    """Raised by a ``read_entry`` parser for an entry that reads but is not what it should be."""


def read_json(path: str | Path, required: tuple[str, ...] = ()) -> dict:
    """The JSON object at ``path``; :class:`DamagedEntry` if it is not an object holding every ``required`` key."""
    value = json.loads(Path(path).read_text())
    if not isinstance(value, dict) or any(k not in value for k in required):
        raise DamagedEntry(f"not a JSON object with the keys {', '.join(required)}")
    return value


def read_entry(path: str | Path, parse: Callable[[Path], object] = read_json):
    """``parse(path)``, or ``None`` when ``path`` is missing. An entry that cannot be read (truncated, not JSON, keys
    missing: ``parse`` raises ``OSError``, ``ValueError``, ``KeyError`` or ``TypeError``) is reported with its path and
    removed, and ``None`` is returned, so the caller computes it again."""
    path = Path(path)
    if not path.exists():
        return None
    try:
        return parse(path)
    except (OSError, ValueError, KeyError, TypeError) as err:
        warnings.warn(f"damaged cache entry {path} ({type(err).__name__}: {str(err)[:200]}); removed, computing it "
                      "again", stacklevel=2)
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        return None


def save_model_folder(hf, tokenizer, path: Path, meta: dict[str, dict] | None = None) -> Path:
    """Save ``hf`` (safetensors) and ``tokenizer`` to ``path``, plus one JSON file per ``meta`` entry
    (``{"finetune.json": {...}}``): written to ``<path>.tmp`` first, then swapped in for any old folder
    (:func:`toolkit.core.io.replace_dir`)."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, obj in (meta or {}).items():
        atomic_write_json(tmp / name, obj)
    return replace_dir(tmp, path)
