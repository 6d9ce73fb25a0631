"""Memory of EAP / EAP-IG / exact scores / faithfulness: a rough estimate of one batch's peak, and the check that
refuses a batch that would not fit (with the batch size that would, or what else to change).

Notation: b rows of p tokens, S sources, L layers, H query / H_kv key-value heads of width d_h, model width d, MLP
width d_mlp, V the vocabulary, e the bytes per weight element (``acc`` = max(e, 4), the accumulation dtype).

- ``method="eap"`` / ``"eap-ig"`` (the gradient fast path): peak extra bytes (beyond the weights) ≈ 1.25 × (Δa for
  every source, ``S·b·p·d`` in the accumulation dtype + the activations a forward+backward keeps, eager attention
  + one layer's target gradients + the recorded clean/corrupted activations). On the Qwen3-0.6B shape at 4 × 128
  tokens it says 4.4 GiB; 4.2 GiB was measured (``python -m toolkit bench eap``).
- ``method="exact"`` repeats the pair batch once per edge, :data:`EXACT_ROWS` // b copies (at most one per valid
  edge), so one patched forward runs on ``R = b·min(max(1, EXACT_ROWS // b), edges)`` rows: about 256 *whatever
  the batch size*. ``"faithfulness"`` runs the same patched forward on ``R = b`` rows. With ``n = R·p``, peak extra
  bytes ≈ 1.5 × (``S·n·d·e`` (the differences ``a_corrupted − a_run`` of every source) + ``S·n·d·e`` (einsum's
  permuted copy of the differences a target reads; the logits read all S) + ``n·(d + L·(H·d_h + d))·e`` (the
  corrupted activations, repeated) + ``n·(3·H·d + 3·d_mlp)·e + 2·R·H·p²·4`` (one layer: a split q input, its patch
  and their sum; the MLP's hidden activations; fp32 attention scores and probabilities) + the recorded
  clean/corrupted activations of the b rows). The factor 1.5 is the resident peak over the allocated peak measured
  on CPU for this pattern of large short-lived tensors (1.4–1.5×). Resident peaks measured on CPU: the organism at
  8 pairs × 40 tokens 400 MiB, estimate 586 MiB (the gradient-path formula, used for every method before, said 41
  MiB: 10× low); a tiny 2-layer model at 4 × 60 tokens 230 MiB, estimate 296 MiB (``tests/test_faults_input.py``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from toolkit.methods.eap.graph import Graph

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel

EXACT_ROWS = 256  # rows per patched forward of method="exact" (the pair batch repeated, one edge per copy)
PATCHED = ("exact", "faithfulness")  # methods that run the patched forward (toolkit.methods.eap.evaluate)


def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def _shape(loaded: LoadedModel) -> dict:
    g = Graph.from_bridge(loaded.bridge)
    cfg = loaded.bridge.cfg
    elem = torch.finfo(next(loaded.hf.parameters()).dtype).bits // 8
    return {"g": g, "elem": elem, "acc": max(elem, 4), "d_mlp": int(getattr(cfg, "d_mlp", 4 * g.d_model)
                                                                    or 4 * g.d_model),
            "vocab": int(getattr(cfg, "d_vocab", 0) or 0), "edges": int(g.valid_mask().sum())}


def _estimate(shape: dict, batch_size: int, n_tokens: int, method: str) -> dict:
    g, elem, acc, d_mlp, vocab = shape["g"], shape["elem"], shape["acc"], shape["d_mlp"], shape["vocab"]
    b, p, d = batch_size, n_tokens, g.d_model
    per_token = d + g.n_layers * (g.n_heads * g.d_head + d)  # embeddings, z and MLP output of every layer
    if method in PATCHED:
        rows = b * min(max(1, EXACT_ROWS // b), shape["edges"]) if method == "exact" else b
        n = rows * p
        diffs = g.n_sources * n * d * elem
        parts = {"differences": diffs, "contraction": diffs, "replicated": n * per_token * elem,
                 "layer": n * (3 * g.n_heads * d + 3 * d_mlp) * elem + 2 * rows * g.n_heads * p * p * 4,
                 "recorded": 2 * b * p * per_token * elem + 2 * b * vocab * acc}
        return {"total": int(1.5 * sum(parts.values())), "rows": rows, **{k: int(v) for k, v in parts.items()}}
    n = b * p
    deltas = g.n_sources * n * d * acc
    per_layer = (12 * n * d + 4 * n * d_mlp + 4 * n * g.n_heads * g.d_head + 3 * b * g.n_heads * p * p) * elem
    activations = g.n_layers * per_layer + 2 * b * vocab * 4
    layer_grads = 3 * g.per_layer_targets * n * d * acc
    recorded = 2 * (n * d * (1 + g.n_layers) + n * g.n_heads * g.d_head * g.n_layers) * elem
    total = 1.25 * (deltas + activations + layer_grads + recorded)  # allocator overhead: errs high (measured ~1.2x)
    return {"total": int(total), "deltas": int(deltas), "activations": int(activations),
            "target_gradients": int(layer_grads), "recorded": int(recorded)}


def estimate_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str = "eap-ig") -> dict:
    """Rough peak extra bytes of one batch of ``method`` (``"eap"``, ``"eap-ig"``, ``"exact"`` or
    ``"faithfulness"``) beyond the loaded weights, with its parts; the formulas are in the module docstring."""
    return _estimate(_shape(loaded), batch_size, n_tokens, method)


def check_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str) -> None:
    """Raise :class:`MemoryError` if one batch would need over 90% of the free memory of the model's device, naming
    the largest batch size that fits (or, when none does, what to change instead)."""
    shape = _shape(loaded)
    est = _estimate(shape, batch_size, n_tokens, method)["total"]
    device = next(loaded.hf.parameters()).device
    avail = _available_bytes(device)
    if avail is None or est <= 0.9 * avail:
        return
    lo, hi = 0, batch_size  # the largest batch size that fits, by bisection (a found size is always checked)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if _estimate(shape, mid, n_tokens, method)["total"] <= 0.9 * avail:
            lo = mid
        else:
            hi = mid - 1
    need = f"{method} on batches of {batch_size} × {n_tokens} tokens needs about {est / 2**30:.2f} GiB but only " \
           f"{avail / 2**30:.2f} GiB is available on {device}"
    if lo >= 1:
        raise MemoryError(f"{need}; use batch_size={lo} or less, or shorter pairs")
    why = (f" (exact patches about {EXACT_ROWS} rows per forward pass whatever the batch size)"
           if method == "exact" else "")
    raise MemoryError(f"{need}{why}; even batch_size=1 does not fit: use shorter pairs"
                      + (", or method='eap-ig'" if method == "exact" else ""))
