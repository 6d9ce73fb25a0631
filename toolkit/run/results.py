"""Where a notebook run keeps its outputs, and how notebooks save key numbers and figures there.

The runner sets ``TOOLKIT_RUN_DIR`` to ``runs/<stamp>/``; interactive sessions write to
``runs/interactive/``. :func:`save_results` also displays its numbers as a custom mime bundle, so
tests can read them back from an executed notebook with :func:`notebook_results`.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from toolkit.core.io import REPO_ROOT, atomic_write_json, publish_mode

if TYPE_CHECKING:
    from toolkit.evaluation.claims import Claims

RESULTS_MIME = "application/vnd.toolkit.run.results+json"
CLAIMS_MIME = "application/vnd.toolkit.run.claims+json"


def run_dir() -> Path:
    """The current run's folder: ``$TOOLKIT_RUN_DIR`` if set, else ``<repo>/runs/interactive`` (created)."""
    path = Path(os.environ.get("TOOLKIT_RUN_DIR") or REPO_ROOT / "runs" / "interactive")
    path.mkdir(parents=True, exist_ok=True)
    return path


def _jsonable(obj, where: str):
    """``obj`` as plain JSON: numpy/torch scalars become Python numbers, NaN and ±inf become None."""
    if obj is None or isinstance(obj, bool | int | str):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        out = {}
        for key, value in obj.items():
            if not isinstance(key, str):
                raise TypeError(f"{where} has key {key!r} of type {type(key).__name__}; keys must be strings")
            out[key] = _jsonable(value, f"{where}[{key!r}]")
        return out
    if isinstance(obj, list | tuple):
        return [_jsonable(v, f"{where}[{i}]") for i, v in enumerate(obj)]
    if hasattr(obj, "item") and getattr(obj, "ndim", None) == 0:  # numpy scalar, 0-d array or tensor
        return _jsonable(obj.item(), where)
    raise TypeError(f"{where} is a {type(obj).__name__}, which is not JSON-serializable; save numbers, "
                    "strings, bools, None, lists or dicts (convert arrays with .tolist())")


def save_results(name: str, results: dict) -> Path:
    """Write ``results`` to ``<run_dir>/<name>.results.json`` atomically and display them as a
    ``application/vnd.toolkit.run.results+json`` bundle when inside IPython. Returns the file's path."""
    if not isinstance(results, dict):
        raise TypeError(f"results must be a dict, not {type(results).__name__}")
    clean = _jsonable(results, "results")
    path = atomic_write_json(run_dir() / f"{name}.results.json", clean)
    from IPython import get_ipython

    if get_ipython() is not None:
        from IPython.display import display

        display({RESULTS_MIME: clean, "text/plain": f"{name}: results saved to {path}"}, raw=True)
    return path


def save_claims(claims: Claims) -> Path:
    """Write a notebook's claims to ``<run_dir>/<notebook>.claims.json`` atomically (the runner gathers them into
    ``claims.json`` and ``REPORT.md``) and, inside IPython, display them as a scorecard table.

    Refuses an empty registry: a notebook that saves claims must have made at least one."""
    from toolkit.evaluation.claims import ClaimError

    if len(claims) == 0:
        raise ClaimError(f"{claims.notebook} registered no claims; add them with claims.add(...) before saving")
    records = claims.to_records()
    path = atomic_write_json(run_dir() / f"{claims.notebook}.claims.json", records)
    from IPython import get_ipython

    if get_ipython() is not None:
        from IPython.display import display

        from toolkit.run.report import claims_markdown

        display({CLAIMS_MIME: records, "text/markdown": claims_markdown(claims),
                 "text/plain": f"{claims.notebook}: {len(records)} claims saved to {path}"}, raw=True)
    return path


def figure_texts(fig) -> list[str]:
    """Every title, axis label and legend entry a matplotlib figure shows (non-empty, in drawing order)."""
    texts = [fig._suptitle.get_text()] if getattr(fig, "_suptitle", None) is not None else []
    for ax in fig.get_axes():
        texts += [ax.get_title(loc) for loc in ("left", "center", "right")] + [ax.get_xlabel(), ax.get_ylabel()]
        legend = ax.get_legend()
        texts += [t.get_text() for t in legend.get_texts()] if legend is not None else []
    return [t for t in texts if t]


def save_figure(fig, name: str) -> Path:
    """Save a matplotlib figure to ``<run_dir>/figures/<name>.png`` (dpi 120, tight) atomically, with the umask's
    mode. The PNG's ``Description`` text chunk holds the figure's texts (:func:`figure_texts`, one per line), so a
    run's titles and labels can be checked without reading pixels."""
    path = run_dir() / "figures" / f"{name}.png"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        publish_mode(tmp)  # savefig rewrites the file in place, keeping this mode: the umask's, not mkstemp's 0600
        fig.savefig(tmp, format="png", dpi=120, bbox_inches="tight",
                    metadata={"Description": "\n".join(figure_texts(fig))})
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def notebook_results(path: str | Path) -> dict:
    """The results displayed by :func:`save_results` in an executed notebook, merged in output order."""
    import nbformat

    merged: dict = {}
    for cell in nbformat.read(path, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if RESULTS_MIME in data:
                merged.update(data[RESULTS_MIME])
    return merged
