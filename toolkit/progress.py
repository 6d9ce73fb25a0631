"""A progress bar that is a widget in JupyterLab and plain text when headless.

Under papermill ``tqdm.auto`` stores a frozen widget ("model not found"), so headless runs (the
runner sets ``TOOLKIT_HEADLESS=1``) and terminals get ``tqdm.std``.
"""

from __future__ import annotations

import os
import sys


def progress(iterable=None, **kwargs):
    """``tqdm`` over ``iterable``: the notebook widget interactively, text when headless."""
    if os.environ.get("TOOLKIT_HEADLESS") == "1" or "ipykernel" not in sys.modules:
        from tqdm.std import tqdm
        kwargs.setdefault("file", sys.stderr)
    else:
        from tqdm.auto import tqdm
    kwargs.setdefault("mininterval", 1.0)
    return tqdm(iterable, **kwargs)
