"""Atomic writes: results are written beside their target, then renamed over it; folders are swapped in the same
way (:func:`replace_dir`), with :func:`recover_dir` finishing a swap that a kill interrupted."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: notebooks/, data/, runs/


def cache_root() -> Path:
    """Git-ignored cache: ``$TOOLKIT_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("TOOLKIT_CACHE") or REPO_ROOT / ".cache")


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of one."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_json(path: str | Path, obj) -> Path:
    """JSON version of :func:`atomic_write_text` (indent 2, keys kept in order)."""
    return atomic_write_text(path, json.dumps(obj, indent=2) + "\n")


def replace_dir(tmp: str | Path, path: str | Path) -> Path:
    """Swap the finished folder ``tmp`` in as ``path``: the old folder is renamed aside (``<path>.old``), ``tmp``
    renamed to ``path``, then the old one removed. At every moment one complete folder exists under ``path`` or
    ``<path>.old``; :func:`recover_dir` puts the old one back if a kill fell between the two renames."""
    tmp, path = Path(tmp), Path(path)
    old = path.with_name(path.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        path.rename(old)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp.rename(path)
    shutil.rmtree(old, ignore_errors=True)
    return path


def recover_dir(path: str | Path) -> Path:
    """``path``, after finishing a :func:`replace_dir` that was interrupted between its renames."""
    path = Path(path)
    old = path.with_name(path.name + ".old")
    if not path.exists() and old.is_dir():
        old.rename(path)
    return path
