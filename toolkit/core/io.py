"""Atomic writes: results are written beside their target, then renamed over it; folders are swapped in the same
way (:func:`replace_dir`), with :func:`recover_dir` finishing a swap that a kill interrupted.

What is published so gets the mode a plainly created file or folder gets under the process's umask (0644 and 0755
under the usual 022; :func:`publish_mode`, :func:`publish_tree`), not the private 0600 / 0700 that ``mkstemp``,
``mkdtemp`` and safetensors' own atomic writes give their temporary files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]  # the checkout: notebooks/, data/, runs/


def cache_root() -> Path:
    """Git-ignored cache: ``$TOOLKIT_CACHE`` or ``<repo>/.cache``."""
    return Path(os.environ.get("TOOLKIT_CACHE") or REPO_ROOT / ".cache")


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (``/proc/self/status``); elsewhere set and
    restored at once (a thread creating a file in between would get the umask 022)."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    old = os.umask(0o022)
    os.umask(old)
    return old


def publish_mode(target: int | str | Path, folder: bool = False) -> None:
    """Give ``target`` (an open file descriptor or a path) the mode a file (``0o666``) or, with ``folder``, a folder
    (``0o777``) created plainly gets under the current umask: ``mkstemp`` makes its files 0600 whatever the umask."""
    mode = (0o777 if folder else 0o666) & ~_umask()
    if isinstance(target, int):
        os.fchmod(target, mode)
    else:
        os.chmod(target, mode)


def publish_tree(path: str | Path) -> Path:
    """Give the folder ``path`` and every folder and file under it the umask's mode (:func:`publish_mode`; a file its
    owner may execute keeps that, as ``0o777 & ~umask``); links are left alone. Called on a folder before it is
    renamed into place: temporary folders (``mkdtemp``: 0700) and files (safetensors' weights: 0600) are private."""
    umask = _umask()
    for root, _, files in os.walk(path):
        os.chmod(root, 0o777 & ~umask)
        for name in files:
            mode = os.lstat(file := os.path.join(root, name)).st_mode
            if stat.S_ISREG(mode):
                os.chmod(file, (0o777 if mode & stat.S_IXUSR else 0o666) & ~umask)
    return Path(path)


def folder_problem(path: str | Path) -> str | None:
    """Why ``path`` cannot be a folder to write into, as a phrase naming the path that is in the way, or ``None`` once
    it exists (created with its parents) and is writable."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError):
        blocker = next((p for p in (path, *path.parents) if p.exists() and not p.is_dir()), path)
        return f"{blocker} exists and is not a folder"
    except OSError as err:
        return f"cannot create {err.filename or path} ({err.strerror or err})"
    if not os.access(path, os.W_OK | os.X_OK):
        return f"{path} is not writable"
    return None


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write ``text`` to ``path`` so readers see the old file or the new one, never half of one. The file gets the
    umask's mode (:func:`publish_mode`), as one written in place would."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            publish_mode(f.fileno())
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
    ``<path>.old``; :func:`recover_dir` puts the old one back if a kill fell between the two renames. ``tmp`` and
    everything in it get the umask's mode first (:func:`publish_tree`)."""
    tmp, path = Path(tmp), Path(path)
    publish_tree(tmp)
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


class FileFormatError(ValueError):
    """A file handed in that is not UTF-8 text or not valid JSON; the message names the file, the line and the fix."""


def _where(path: Path, what: str) -> str:
    return f"{what} {path}" if what else str(path)


def read_text(path: str | Path, what: str = "file") -> str:
    """The UTF-8 text of ``path`` (a leading byte-order mark dropped, line endings kept as written), or
    :class:`FileFormatError` naming the file, the line and byte offset of the first byte that is not UTF-8, and the
    fix. ``what`` says what the file is (``"config file"``): the message starts ``<what> <path>``."""
    path = Path(path)
    data = path.read_bytes()
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        raise FileFormatError(f"{_where(path, what)}, line {line}: not UTF-8 text (byte 0x{data[err.start]:02x} at "
                              f"byte offset {err.start}); re-save the file as UTF-8") from None
    return text.removeprefix("\ufeff")


def text_lines(text: str) -> list[str]:
    """``text`` split at ``"\\n"`` only, a trailing ``"\\r"`` dropped from each line: unlike :meth:`str.splitlines`,
    U+2028, U+0085 and the other Unicode line breaks, which JSON allows inside strings, do not end a line."""
    return [line.removesuffix("\r") for line in text.split("\n")]


def read_json(path: str | Path, what: str = "file"):
    """The JSON value in ``path`` (:func:`read_text`), or :class:`FileFormatError` naming the file, line and column."""
    path = Path(path)
    try:
        return json.loads(read_text(path, what))
    except json.JSONDecodeError as err:
        raise FileFormatError(f"{_where(path, what)}, line {err.lineno}, column {err.colno}: not valid JSON "
                              f"({err.msg}); fix the file or write it again") from None


def read_jsonl(path: str | Path, what: str = "file") -> list[tuple[int, object]]:
    """``[(line number, JSON value)]`` of the JSON Lines file ``path``, blank lines skipped. Lines end at ``"\\n"``
    only (:func:`text_lines`); :class:`FileFormatError` names the file and the line that is not UTF-8 or not JSON."""
    path = Path(path)
    records = []
    for number, line in enumerate(text_lines(read_text(path, what)), start=1):
        if not line.strip():
            continue
        try:
            records.append((number, json.loads(line)))
        except json.JSONDecodeError as err:
            raise FileFormatError(f"{_where(path, what)}, line {number}: not valid JSON ({err.msg})") from None
    return records
