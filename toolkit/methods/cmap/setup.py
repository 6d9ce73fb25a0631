"""What a CMAP run needs before it starts: two models that can be patched into each other
(:func:`check_compatible`), and the sites to sweep (:func:`layer_sweep`, :func:`head_sweep`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from toolkit.core.interventions import Site, SiteError, head, layer_sites
from toolkit.core.models import LoadedModel, bridge_of

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge


class ModelMismatchError(ValueError):
    """The clean and corrupted models cannot be patched into each other; the message lists what differs."""


def check_compatible(clean: LoadedModel, corrupted: LoadedModel) -> None:
    """Raise :class:`ModelMismatchError` unless ``clean`` and ``corrupted`` have the same architecture, layers,
    widths, heads and tokenizer vocabulary."""
    differences = []
    a, b = clean.bridge.cfg, corrupted.bridge.cfg
    ta, tb = getattr(clean.hf.config, "model_type", None), getattr(corrupted.hf.config, "model_type", None)
    if ta != tb:
        differences.append(f"architecture {ta} vs {tb}")
    for attr, label in (("n_layers", "layers"), ("d_model", "d_model"), ("n_heads", "query heads"),
                        ("n_key_value_heads", "key/value heads"), ("d_head", "head dim"), ("d_mlp", "d_mlp"),
                        ("d_vocab", "vocabulary size")):
        va, vb = getattr(a, attr, None), getattr(b, attr, None)
        if va != vb:
            differences.append(f"{label} {va} vs {vb}")
    va, vb = clean.tokenizer.get_vocab(), corrupted.tokenizer.get_vocab()
    if va != vb:
        changed = sorted(set(va.items()) ^ set(vb.items()), key=lambda kv: kv[1])
        example = ", ".join(repr(tok) for tok, _ in changed[:3])
        differences.append(f"tokenizer vocabularies ({len(va)} vs {len(vb)} tokens; {len(changed)} (token, id) "
                           f"pairs differ, e.g. {example})")
    if differences:
        raise ModelMismatchError("the clean and corrupted models differ: " + "; ".join(differences))


def layer_sweep(model: LoadedModel | TransformerBridge, component: str = "resid") -> list[Site]:
    """One site per layer: ``attn``, ``mlp`` or ``resid`` (all heads of a layer: use :func:`head_sweep`)."""
    if component not in ("attn", "mlp", "resid"):
        raise SiteError(f"a layer sweep takes attn, mlp or resid, not {component!r} (heads: head_sweep)")
    return layer_sites(model, component)


def head_sweep(model: LoadedModel | TransformerBridge, layers: Sequence[int]) -> list[Site]:
    """One ``head(L, h)`` site per head of each layer in ``layers``."""
    bridge = bridge_of(model, "head_sweep: model")
    sites = [head(layer, h) for layer in layers for h in range(bridge.cfg.n_heads)]
    return [s.validate(bridge) for s in sites]
