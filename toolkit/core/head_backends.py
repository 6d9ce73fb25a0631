"""One head intervention, three backends: the same ``head(L, h…)`` site scaled (or ablated, factor 0) through the
TransformerBridge, the plain HF modules, or nnsight.

A head's contribution to the residual stream is ``z_h @ W_O[h]``: its slice ``[h·d_head, (h+1)·d_head)`` of the
*input* of the attention's output projection ``o_proj``. So:

- ``backend="bridge"`` (:func:`toolkit.core.interventions.scale` / ``ablate``, the hook vocabulary's own):
  edits ``blocks.L.attn.hook_z[:, :, h]``;
- ``backend="hf"`` (:func:`hf_scaled`): a forward pre-hook on ``model.layers[L].self_attn.o_proj`` edits that slice
  of its input; works wherever the HF module runs (``generate``, TRL, a serving engine that keeps the module);
- ``backend="nnsight"`` (:func:`nnsight_scale`): the same edit of ``o_proj.input`` inside an nnsight trace. nnsight
  0.8 can apply it to a model served by vLLM (``nnsight.modeling.vllm.VLLM``), where CUDA graphs run, so sampling
  with a head ablated keeps serving speed (``docs/methods.md``, "Heads in other tools").

With grouped-query attention (Qwen2/Qwen3) ``h`` is a *query* head: key/value heads are shared by groups of query
heads, but every query head has its own slice of ``o_proj``'s input. Slicing ``o_proj``'s *output* instead (a
``d_head``-wide block of the residual stream) edits a slice of every head's contribution, not one head's: it is not a
head ablation (``tests/test_head_backends.py`` shows that it differs).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING

import torch

from toolkit.core.interventions import Site, SiteError, scale

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel

BACKENDS = ("bridge", "hf", "nnsight")


def head_dim(config) -> int:
    """The width of one head in ``o_proj``'s input: ``config.head_dim``, or ``hidden_size // heads`` (Qwen2)."""
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


def head_slices(config, sites: Site | Sequence[Site]) -> dict[int, list[slice]]:
    """``{layer: [slices of o_proj's input]}`` for head sites, checked against an HF ``config`` (layers, query heads);
    any other component is a :class:`SiteError` (these backends edit heads only)."""
    sites = [sites] if isinstance(sites, Site) else list(sites)
    n_layers, n_heads, d_head = config.num_hidden_layers, config.num_attention_heads, head_dim(config)
    slices: dict[int, list[slice]] = {}
    for site in sites:
        if not isinstance(site, Site) or site.component != "head":
            raise SiteError(f"the hf and nnsight backends edit heads only (sites made by head(L, h)), got {site!r}")
        if not 0 <= site.layer < n_layers:
            raise SiteError(f"layer {site.layer} out of range: the model has {n_layers} layers (0..{n_layers - 1})")
        for h in site.units:
            if not 0 <= h < n_heads:
                raise SiteError(f"head {h} out of range: the model has {n_heads} query heads (0..{n_heads - 1})")
            slices.setdefault(site.layer, []).append(slice(h * d_head, (h + 1) * d_head))
    return slices


def _factor(factor) -> float:
    if not isinstance(factor, numbers.Real) or not math.isfinite(factor):
        raise ValueError(f"scale factor must be a finite number, got {factor!r}")
    return float(factor)


def _hf(model):
    from toolkit.core.models import LoadedModel

    return model.hf if isinstance(model, LoadedModel) else model


@contextmanager
def hf_scaled(model: LoadedModel | torch.nn.Module, sites: Site | Sequence[Site], factor: float):
    """Multiply the heads' slices of ``o_proj``'s input by ``factor`` in the HF model (a ``LoadedModel``'s ``hf`` or
    any Qwen2/Qwen3 ``*ForCausalLM``) on every forward pass inside the block; the hooks are removed on exit."""
    hf, factor = _hf(model), _factor(factor)
    slices = head_slices(hf.config, sites)

    def pre_hook(columns):
        def edit(module, args):
            x = args[0].clone()
            for cols in columns:
                x[..., cols] = x[..., cols] * factor
            return (x, *args[1:])
        return edit

    handles = [hf.model.layers[layer].self_attn.o_proj.register_forward_pre_hook(pre_hook(columns))
               for layer, columns in slices.items()]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def nnsight_scale(traced, config, sites: Site | Sequence[Site], factor: float) -> None:
    """Inside an nnsight trace of a Qwen2/Qwen3 model (``traced``: the ``NNsight``/``LanguageModel`` wrapper, or
    vLLM's), multiply the heads' slices of ``o_proj``'s input by ``factor``. ``config`` is the HF config."""
    factor = _factor(factor)
    for layer, columns in head_slices(config, sites).items():
        o_proj = traced.model.layers[layer].self_attn.o_proj
        for cols in columns:
            o_proj.input[..., cols] = o_proj.input[..., cols] * factor


def head_logits(model: LoadedModel, input_ids: torch.Tensor, sites: Site | Sequence[Site], factor: float = 0.0,
                backend: str = "bridge") -> torch.Tensor:
    """The logits ``[b, p, vocab]`` of ``input_ids`` with the head sites scaled by ``factor`` (0: ablated) through
    ``backend`` (:data:`BACKENDS`); the three agree to float precision (``tests/test_head_backends.py``)."""
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    head_slices(model.hf.config, sites)  # the same refusals whatever the backend
    with torch.no_grad():
        if backend == "bridge":
            with scale(model, sites, factor):
                return model.bridge(input_ids)
        if backend == "hf":
            with hf_scaled(model, sites, factor):
                return model.hf(input_ids).logits
        from nnsight import NNsight

        traced = NNsight(model.hf)
        with traced.trace(input_ids):
            nnsight_scale(traced, model.hf.config, sites, factor)
            logits = traced.output.logits.save()
        return logits
