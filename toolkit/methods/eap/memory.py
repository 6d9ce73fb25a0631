"""Memory of EAP / EAP-IG / exact scores / faithfulness: a rough estimate of one batch's peak, and the check that
refuses a batch that would not fit (with the batch size that would, or what else to change).

Notation: b rows of p tokens, S sources, L layers, H query / H_kv key-value heads of width d_h, model width d, MLP
width d_mlp, V the vocabulary, e the bytes per weight element (``acc`` = max(e, 4), the accumulation dtype).

- ``method="eap"`` / ``"eap-ig"`` (the gradient fast path): peak extra bytes (beyond the weights) ≈ 1.25 × (Δa for
  every source, ``S·b·p·d`` in the accumulation dtype + the activations a forward+backward keeps, eager attention
  + the step sums the IG steps accumulate per layer, ``b·p·((H + 2·H_kv)·d_h + d)`` in the accumulation dtype +
  one layer's target gradients (the final contraction works a chunk of tokens at a time within that) + the recorded
  clean/corrupted activations). None of it grows with m. A batch cheap enough to pack its reference and IG steps
  into one pass (under ``toolkit.methods.eap.gradients.PACK_MACS`` multiply-adds) holds that pass's activations
  instead: about 9/d bytes per multiply-add, under 100 MiB even at d = 64. On the Qwen3-0.6B shape at 4 × 128
  tokens (m = 2) it says 4.77 GiB; 4.72 GiB was measured (as ``toolkit/benchmarks/eap.py`` does; 0.50 GiB above the
  4.23 GiB of the per-step contraction this replaced, mostly the step sums).
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

A model split across devices (``toolkit.core.models.load(..., device_map=...)``, read from ``hf.hf_device_map``): each
term goes to the device that allocates it. The embeddings' device holds what is per source (Δa, or the differences
and their permuted copy) and the embeddings; each device holds the per-layer terms of the layers it holds (their
activations, recorded activations, the repeated corrupted activations) and one layer's worth of the one-layer terms
(target gradients, or the patched layer's tensors), which the embeddings' device also holds (the gradients are
contracted with Δa there); ``lm_head``'s device holds the logits. ``check_memory`` checks every device against its
own free memory (``_available_bytes``), and names the device that overflows and what it holds.
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


def _as_device(target) -> torch.device:
    """A ``device_map`` value as a device (an int is a GPU index; ``"disk"`` offload is staged through the CPU)."""
    if isinstance(target, int):
        return torch.device("cuda", target)
    return torch.device("cpu") if str(target) == "disk" else torch.device(target)


def _placement(hf, n_layers: int) -> dict | None:
    """Where a model split by ``device_map`` keeps its embeddings, each layer and its head (``lm_head``), read from
    ``hf.hf_device_map`` (a module goes where its longest listed prefix goes); ``None`` for a model on one device."""
    placed = getattr(hf, "hf_device_map", None) or {}
    if len({str(_as_device(t)) for t in placed.values()}) < 2:
        return None

    def where(module: str):
        keys = [k for k in placed if k == "" or module == k or module.startswith(k + ".")]
        return _as_device(placed[max(keys, key=len)]) if keys else None

    embed = where("model.embed_tokens") or next(hf.parameters()).device
    return {"embed": embed, "head": where("lm_head") or embed,
            "layers": [where(f"model.layers.{i}") or embed for i in range(n_layers)]}


def _split(shape: dict, batch_size: int, n_tokens: int, method: str) -> dict:
    """The estimate's bytes by where they live: ``shared`` (the embedding's device: Δa / the differences of every
    source, the embeddings), ``per_layer`` (each layer's activations, on the layer's device), ``one_layer`` (one
    layer's worth at a time, on every device that holds a layer or the embeddings), ``head`` (the logits, on
    ``lm_head``'s device), ``factor`` (allocator overhead) and the named ``parts`` of the module docstring."""
    g, elem, acc, d_mlp, vocab = shape["g"], shape["elem"], shape["acc"], shape["d_mlp"], shape["vocab"]
    b, p, d, L = batch_size, n_tokens, g.d_model, g.n_layers
    layer_width = g.n_heads * g.d_head + d  # z and MLP output of one layer, per token
    if method in PATCHED:
        rows = b * min(max(1, EXACT_ROWS // b), shape["edges"]) if method == "exact" else b
        n = rows * p
        diffs = g.n_sources * n * d * elem
        one_layer = n * (3 * g.n_heads * d + 3 * d_mlp) * elem + 2 * rows * g.n_heads * p * p * 4
        split = {"shared": 2 * diffs + n * d * elem + 2 * b * p * d * elem,
                 "per_layer": n * layer_width * elem + 2 * b * p * layer_width * elem,
                 "one_layer": one_layer, "head": 2 * b * vocab * acc, "factor": 1.5, "rows": rows}
        per_token = d + L * layer_width
        split["parts"] = {"differences": diffs, "contraction": diffs, "replicated": n * per_token * elem,
                          "layer": one_layer, "recorded": 2 * b * p * per_token * elem + 2 * b * vocab * acc}
        return split
    n = b * p
    deltas = g.n_sources * n * d * acc
    per_layer = (12 * n * d + 4 * n * d_mlp + 4 * n * g.n_heads * g.d_head + 3 * b * g.n_heads * p * p) * elem
    layer_grads = 3 * g.per_layer_targets * n * d * acc + n * d * acc  # and the logits' step sum
    step_sums = n * ((g.n_heads + 2 * g.n_kv_heads) * g.d_head + d) * acc  # per layer: Σ r·g at q/k/v, Σ G at the MLP
    recorded = 2 * (n * d * (1 + L) + n * g.n_heads * g.d_head * L) * elem
    split = {"shared": deltas + 2 * n * d * elem, "per_layer": per_layer + step_sums + 2 * n * layer_width * elem,
             "one_layer": layer_grads, "head": 2 * b * vocab * 4, "factor": 1.25}  # allocator overhead: measured ~1.2x
    split["parts"] = {"deltas": deltas, "activations": L * per_layer + 2 * b * vocab * 4,
                      "target_gradients": layer_grads, "step_sums": L * step_sums, "recorded": recorded}
    return split


def _per_device(split: dict, placement: dict | None, n_layers: int, device: torch.device) -> dict[str, int]:
    """Peak extra bytes on each device (one entry, ``device``, for a model on one device)."""
    if placement is None:
        return {str(device): int(split["factor"] * (split["shared"] + n_layers * split["per_layer"]
                                                    + split["one_layer"] + split["head"]))}
    devices = dict.fromkeys(map(str, [placement["embed"], *placement["layers"], placement["head"]]))
    out = {}
    for dev in devices:
        layers = sum(str(d) == dev for d in placement["layers"])
        is_embed = dev == str(placement["embed"])
        need = (split["shared"] * is_embed + layers * split["per_layer"]
                + split["one_layer"] * (layers > 0 or is_embed) + split["head"] * (dev == str(placement["head"])))
        out[dev] = int(split["factor"] * need)
    return out


def _estimate(shape: dict, batch_size: int, n_tokens: int, method: str, placement: dict | None = None,
              device: torch.device | str = "cpu") -> dict:
    split = _split(shape, batch_size, n_tokens, method)
    per_device = _per_device(split, placement, shape["g"].n_layers, device)
    out = {"total": sum(per_device.values()), **({"rows": split["rows"]} if "rows" in split else {}),
           **{k: int(v) for k, v in split["parts"].items()}}
    if placement is not None:
        out["per_device"] = per_device
    return out


def estimate_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str = "eap-ig") -> dict:
    """Rough peak extra bytes of one batch of ``method`` (``"eap"``, ``"eap-ig"``, ``"exact"`` or
    ``"faithfulness"``) beyond the loaded weights, with its parts; the formulas are in the module docstring. For a
    model split across devices (``models.load(..., device_map=...)``) ``per_device`` gives each device's share and
    ``total`` their sum."""
    shape = _shape(loaded)
    return _estimate(shape, batch_size, n_tokens, method, _placement(loaded.hf, shape["g"].n_layers),
                     next(loaded.hf.parameters()).device)


def _holds(placement: dict | None, device: str) -> str:
    """What a device of a split model holds, e.g. ``" (embeddings, layers 0-17)"``; empty for one device."""
    if placement is None:
        return ""
    layers = [i for i, d in enumerate(placement["layers"]) if str(d) == device]
    what = ["embeddings"] if str(placement["embed"]) == device else []
    if layers:
        what.append(f"layers {layers[0]}-{layers[-1]}" if len(layers) > 1 else f"layer {layers[0]}")
    if str(placement["head"]) == device:
        what.append("lm_head")
    return f" ({', '.join(what)})"


def check_memory(loaded: LoadedModel, batch_size: int, n_tokens: int, method: str) -> None:
    """Raise :class:`MemoryError` if one batch would need over 90% of the free memory of a device the model is on
    (each device of a model split by ``device_map``, for the layers it holds), naming the largest batch size that
    fits, or when none does the longest pairs that fit at batch size 1."""
    shape = _shape(loaded)
    placement = _placement(loaded.hf, shape["g"].n_layers)
    device = next(loaded.hf.parameters()).device
    per_device = _estimate(shape, batch_size, n_tokens, method, placement, device).get("per_device")
    avail = {dev: _available_bytes(torch.device(dev)) for dev in (per_device or {str(device): 0})}

    def over(b: int, p: int) -> list[tuple[str, int]]:
        need = _per_device(_split(shape, b, p, method), placement, shape["g"].n_layers, device)
        return [(dev, n) for dev, n in need.items() if avail.get(dev) is not None and n > 0.9 * avail[dev]]

    def largest(hi: int, fits) -> int:  # the largest x in 0..hi with fits(x), by bisection (fits is monotone)
        lo = 0
        while lo < hi:
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if fits(mid) else (lo, mid - 1)
        return lo

    failing = over(batch_size, n_tokens)
    if not failing:
        return
    dev, est = max(failing, key=lambda item: item[1] / avail[item[0]])
    there = f"on {dev}{_holds(placement, dev)}"
    need = f"{method} on batches of {batch_size} × {n_tokens} tokens needs about {est / 2**30:.2f} GiB {there} but " \
           f"only {avail[dev] / 2**30:.2f} GiB is available there"
    lighter = (" (or device_map='balanced_low_0', which keeps the embeddings' GPU light: it holds the differences of "
               "every source)" if placement is not None and dev == str(placement["embed"]) else "")
    b_fit = largest(batch_size, lambda b: b >= 1 and not over(b, n_tokens))
    if b_fit >= 1:
        raise MemoryError(f"{need}; use batch_size={b_fit} or less, or shorter pairs{lighter}")
    p_fit = largest(n_tokens, lambda p: p >= 1 and not over(1, p))
    shorter = (f"; at batch_size=1, pairs of at most {p_fit} tokens fit" if p_fit >= 1 else
               "; not even 1-token pairs fit at batch_size=1: free memory on that device")
    why = (f" (exact patches about {EXACT_ROWS} rows per forward pass whatever the batch size)"
           if method == "exact" else "")
    raise MemoryError(f"{need}{why}; even batch_size=1 does not fit: use shorter pairs"
                      + (", or method='eap-ig'" if method == "exact" else "") + shorter + lighter)
