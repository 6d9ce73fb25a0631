"""Memory of EAP / EAP-IG: a rough estimate of one :func:`~toolkit.methods.eap.attribute` batch's peak, and the
check that refuses a batch that would not fit (with the batch size that would).

Peak extra bytes (beyond the weights) ≈ 1.25 × (Δa for every source, ``n_sources · b · p · d`` in the accumulation
dtype + the activations a forward+backward keeps, eager attention + one layer's target gradients + the recorded
clean/corrupted activations). On the Qwen3-0.6B shape at 4 × 128 tokens it says 4.4 GiB; 4.2 GiB was measured
(``python -m toolkit bench eap``).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import torch

from toolkit.methods.eap.graph import Graph

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel


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


def estimate_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str = "eap-ig") -> dict:
    """Rough peak extra bytes of one :func:`attribute` batch (beyond the loaded weights): the source differences,
    the activations a forward+backward keeps (eager attention), and one layer's target gradients, times 1.25.
    On the Qwen3-0.6B shape at 4 × 128 tokens it says 4.4 GiB; 4.2 GiB was measured (``toolkit bench eap``)."""
    g = Graph.from_bridge(loaded.bridge)
    cfg = loaded.bridge.cfg
    dtype = next(loaded.hf.parameters()).dtype
    elem = torch.finfo(dtype).bits // 8
    acc = max(elem, 4)
    n = batch_size * n_tokens
    d_mlp = int(getattr(cfg, "d_mlp", 4 * g.d_model) or 4 * g.d_model)
    vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    deltas = g.n_sources * n * g.d_model * acc
    per_layer = (12 * n * g.d_model + 4 * n * d_mlp + 4 * n * g.n_heads * g.d_head
                 + 3 * batch_size * g.n_heads * n_tokens * n_tokens) * elem
    activations = g.n_layers * per_layer + 2 * batch_size * vocab * 4
    layer_grads = 3 * g.per_layer_targets * n * g.d_model * acc
    recorded = 2 * (n * g.d_model * (1 + g.n_layers) + n * g.n_heads * g.d_head * g.n_layers) * elem
    total = 1.25 * (deltas + activations + layer_grads + recorded)  # allocator overhead: errs high (measured ~1.2x)
    return {"total": int(total), "deltas": int(deltas), "activations": int(activations),
            "target_gradients": int(layer_grads), "recorded": int(recorded)}


def check_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str) -> None:
    """Raise :class:`MemoryError` naming a batch size that fits if one batch would need over 90% of the free
    memory of the model's device."""
    est = estimate_memory(loaded, batch_size, n_tokens, method)["total"]
    device = next(loaded.hf.parameters()).device
    avail = _available_bytes(device)
    if avail is not None and est > 0.9 * avail:
        fit = max(1, int(batch_size * 0.9 * avail / est))
        raise MemoryError(f"{method} on batches of {batch_size} × {n_tokens} tokens needs about {est / 2**30:.2f} GiB "
                          f"but only {avail / 2**30:.2f} GiB is available on {device}; use batch_size={fit} or less, "
                          "or shorter pairs")
