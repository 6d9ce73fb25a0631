"""A progress bar that is a widget in JupyterLab and plain text when headless.

Under papermill ``tqdm.auto`` stores a frozen widget ("model not found"), so headless runs (the
runner sets ``TOOLKIT_HEADLESS=1``) and terminals get ``tqdm.std``.
"""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager


def progress(iterable=None, **kwargs):
    """``tqdm`` over ``iterable``: the notebook widget interactively, text when headless."""
    if os.environ.get("TOOLKIT_HEADLESS") == "1" or "ipykernel" not in sys.modules:
        from tqdm.std import tqdm
        kwargs.setdefault("file", sys.stderr)
    else:
        from tqdm.auto import tqdm
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)


@contextmanager
def quiet_library_bars():
    """Silence the tqdm bars of ``datasets`` and ``transformers`` (their ``tqdm.auto`` widgets freeze under
    papermill); our own bar is :func:`toolkit.core.progress.progress`."""
    import datasets
    from transformers.utils import logging

    datasets_on, transformers_on = datasets.is_progress_bar_enabled(), logging.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    logging.disable_progress_bar()
    try:
        yield
    finally:
        if datasets_on:
            datasets.enable_progress_bars()
        if transformers_on:
            logging.enable_progress_bar()
