"""Compare the numbers of two run folders (``python -m toolkit compare BEFORE AFTER``): a refactoring that should
change nothing is shown to change nothing.

Every ``*.results.json`` and ``*.claims.json`` of each folder (and of its ``seed-<k>/`` folders), and the top-level
``claims.json``, is flattened to ``{file: {json path: value}}`` and the two are compared value by value. Left out:
timings and paths (:data:`IGNORED_KEYS`, any key ending in ``seconds`` or ``per_s``), and the two folders' own locations
inside strings (each run folder and its repository are replaced by ``<run>`` and ``<repo>``), and any key named with
``--ignore`` (a text field whose format changed on purpose, e.g. ``paper``). A mode written before think mode had one
spelling (``"think-on"``, in keys and names) is read as today's (``"think_on"``). Numbers and verdicts must be equal,
not close.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

from toolkit.core.io import FileFormatError, read_json

IGNORED_KEYS = {"seconds", "elapsed", "time", "timings", "path", "paths", "folder", "run_folder", "stamp", "started",
                "finished", "figures", "figure", "kernel", "python", "build_seconds"}
OLD_SPELLING = re.compile(r"\bthink-(on|off)\b")  # a mode in keys and names before it had one spelling


def _flatten(value, prefix: str, out: dict, anchors: dict[str, str], ignore: frozenset[str]) -> None:
    if isinstance(value, dict):
        for key, item in value.items():
            key = OLD_SPELLING.sub(r"think_\1", key)
            if key not in IGNORED_KEYS and key not in ignore and not key.endswith(("seconds", "per_s")):
                _flatten(item, f"{prefix}/{key}", out, anchors, ignore)
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _flatten(item, f"{prefix}[{i}]", out, anchors, ignore)
    else:
        if isinstance(value, str):
            for anchor, name in anchors.items():
                value = value.replace(anchor, name)
            value = OLD_SPELLING.sub(r"think_\1", value)
        out[prefix] = value


def numbers(run: str | Path, ignore: frozenset[str] = frozenset()) -> dict[str, dict[str, object]]:
    """``{file relative to the run folder: {json path: value}}`` of every results and claims file of ``run``, keys in
    ``ignore`` left out; :class:`~toolkit.core.io.FileFormatError` names a file that is not UTF-8 or not JSON."""
    run = Path(run).resolve()
    repo = next((p for p in run.parents if (p / "toolkit").is_dir()), run.parent)
    anchors = {str(run): "<run>", str(repo): "<repo>"}
    files = sorted(run.rglob("*.results.json")) + sorted(run.rglob("*claims.json"))
    out = {}
    for file in files:
        flat: dict[str, object] = {}
        _flatten(read_json(file, what="run file"), "", flat, anchors, ignore)
        out[str(file.relative_to(run))] = flat
    return out


def differences(before: str | Path, after: str | Path, ignore: frozenset[str] = frozenset()) -> list[str]:
    """One line per file or value that differs between the run folders ``before`` and ``after`` (keys in ``ignore``
    left out)."""
    a, b = numbers(before, ignore), numbers(after, ignore)
    out = [f"only in {before}: {f}" for f in sorted(set(a) - set(b))]
    out += [f"only in {after}: {f}" for f in sorted(set(b) - set(a))]
    for file in sorted(set(a) & set(b)):
        x, y = a[file], b[file]
        out += [f"{file}: {k} only before ({x[k]!r})" for k in sorted(set(x) - set(y))]
        out += [f"{file}: {k} only after ({y[k]!r})" for k in sorted(set(y) - set(x))]
        out += [f"{file}: {k}: {x[k]!r} → {y[k]!r}" for k in sorted(set(x) & set(y)) if x[k] != y[k]]
    return out


def main(before: str | Path, after: str | Path, ignore: frozenset[str] = frozenset()) -> int:
    """Print the differences (or how many values agree); exit status 1 when there are any, 2 (``error: …`` on
    stderr) when a results or claims file is not UTF-8 or not JSON."""
    for folder in (before, after):
        if not Path(folder).is_dir():
            raise SystemExit(f"no run folder {folder}")
    try:
        found = differences(before, after, ignore)
    except FileFormatError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    for line in found:
        print(line)
    if found:
        print(f"{len(found)} differences")
        return 1
    files = numbers(before, ignore)
    print(f"identical: {sum(len(v) for v in files.values())} values in {len(files)} files")
    return 0
