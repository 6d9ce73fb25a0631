"""The cache: where trained models and analyses are kept, and how a configuration names its entry.

- :func:`cache_root`: ``$TOOLKIT_CACHE`` or ``<repo>/.cache`` (git-ignored).
- :func:`model_fingerprint`: identifies a model's weights (a hash of a folder's safetensors, or the hub name).
- :func:`config_hash`: 12 hex digits of sha256 over a configuration's canonical JSON (sorted keys). Two runs share
  an entry exactly when their configurations serialize to the same JSON.
- :func:`cached_json`: a JSON file computed once and read back afterwards.
- :func:`save_model_folder`: an HF model folder (safetensors, tokenizer, metadata files) written beside its target
  and swapped in, so a reader sees the old folder or the new one, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from toolkit.core import models
from toolkit.core.io import REPO_ROOT, atomic_write_json


def cache_root() -> Path:
    """Git-ignored cache: ``$TOOLKIT_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("TOOLKIT_CACHE") or REPO_ROOT / ".cache")


def model_fingerprint(spec: str) -> str:
    """Identifies the weights of ``spec``: a hash of a local folder's safetensors files (files over 256 MB by name
    and size only), or the hub name itself."""
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


def cached_json(path: Path, compute: Callable[[], dict]) -> dict:
    """The JSON object at ``path``; computed by ``compute()`` and written atomically if the file is missing."""
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    value = compute()
    atomic_write_json(path, value)
    return value


def save_model_folder(hf, tokenizer, path: Path, meta: dict[str, dict] | None = None) -> Path:
    """Save ``hf`` (safetensors) and ``tokenizer`` to ``path``, plus one JSON file per ``meta`` entry
    (``{"finetune.json": {...}}``): written to ``<path>.tmp`` first, then swapped in for any old folder."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    hf.save_pretrained(tmp, safe_serialization=True)
    tokenizer.save_pretrained(tmp)
    for name, obj in (meta or {}).items():
        atomic_write_json(tmp / name, obj)
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    return path
