"""Autoregressive cross-model activation patching (CMAP): a corrupted donor's activations at chosen sites replace a
clean receiver's at every generation step (the method, its batching and its KV-cache scheme are described in
:mod:`toolkit.methods.cmap.engine`; the metrics, CTS included, in :mod:`toolkit.methods.cmap.result`).

    from toolkit.methods import cmap
    result = cmap.run(clean, corrupted, prompts, cmap.layer_sweep(clean.bridge, "mlp"), teacher_forcing="clean")
    result.mean_cts()

The slow no-cache reference the tests check :func:`run` against is :mod:`toolkit.reference.cmap`.
"""

from toolkit.methods.cmap.engine import MODES, TEACHER_FORCING, end_token, run
from toolkit.methods.cmap.result import MIN_GAP, CMAPResult, until_eos
from toolkit.methods.cmap.setup import ModelMismatchError, check_compatible, head_sweep, layer_sweep

__all__ = ["MIN_GAP", "MODES", "TEACHER_FORCING", "CMAPResult", "ModelMismatchError", "check_compatible",
           "end_token", "head_sweep", "layer_sweep", "run", "until_eos"]
