"""The toolkit's one hook vocabulary: sites named as TransformerLens names them, and four operations.

A :class:`Site` is a component at a layer, read/written at a TransformerBridge hook point:

=========  =================================  ==================
component  hook point                         activation shape
=========  =================================  ==================
``head``   ``blocks.{L}.attn.hook_z``         ``[b, p, H, d_head]`` (selected heads only)
``attn``   ``blocks.{L}.hook_attn_out``       ``[b, p, d_model]``
``mlp``    ``blocks.{L}.hook_mlp_out``        ``[b, p, d_model]``
``resid``  ``blocks.{L}.hook_resid_post``     ``[b, p, d_model]``
``neuron`` ``blocks.{L}.mlp.hook_post``       ``[b, p, d_mlp]`` (selected neurons only)
=========  =================================  ==================

``head`` and ``neuron`` sites carry unit indices (``Site.units``: heads or MLP neurons).

A head's output is ``z_h @ W_O[h]``, so editing ``hook_z`` of head h edits exactly that head's
contribution, without materializing per-head results.

Operations (context managers; hooks are removed on exit, even after an error), each on a ``LoadedModel`` or its
``TransformerBridge`` (:func:`toolkit.core.models.bridge_of`; anything else is a ``TypeError`` naming ``model``):

- :func:`record` caches activations,
- :func:`patch` writes activations from another run or model,
- :func:`ablate` zero-ablates,
- :func:`scale` multiplies by a factor.

They stay correct under ``generate`` with a KV cache: there a hook fires once on the prompt and
then once per new token with ``p = 1``. The rule is: **a call with more than one position starts a
new sequence at position 0; a one-position call continues the current one.** Positions are in the
token layout of the run (left padding included).

Bounds: layers, heads and neurons are integers in range (no negative indexing: ``head(-1, 0)`` is refused, a float
index is refused rather than truncated); :func:`patch`'s ``positions`` index the source's positions, a negative one
counting from its end as in Python (``-1`` = the source's last position), any other out of range refused;
:func:`scale`'s factor must be finite; :func:`attention_patterns` refuses inputs longer than the model's positions.
"""

from __future__ import annotations

import math
import numbers
import operator
import re
from collections.abc import Callable, Iterable, Sequence
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

    from toolkit.core.models import LoadedModel

COMPONENT_HOOKS = {
    "head": "blocks.{layer}.attn.hook_z",
    "attn": "blocks.{layer}.hook_attn_out",
    "mlp": "blocks.{layer}.hook_mlp_out",
    "resid": "blocks.{layer}.hook_resid_post",
    "neuron": "blocks.{layer}.mlp.hook_post",
}
UNIT_COMPONENTS = ("head", "neuron")  # components whose sites name units (heads, neurons) at their layer


class SiteError(ValueError):
    """An invalid site: unknown component, or a layer/head index out of range."""


@dataclass(frozen=True)
class Site:
    """A component at a layer; ``units`` (head or neuron indices) is set only for ``head`` and ``neuron`` sites."""

    component: str
    layer: int
    units: tuple[int, ...] | None = None

    def __post_init__(self):
        object.__setattr__(self, "layer", _index(self.layer, "layer"))
        if self.units is not None:
            object.__setattr__(self, "units", tuple(_index(u, f"{self.component} index") for u in self.units))
        if self.component not in COMPONENT_HOOKS:
            raise SiteError(f"unknown component {self.component!r}; choose from {', '.join(COMPONENT_HOOKS)}")
        if (self.component in UNIT_COMPONENTS) != (self.units is not None and len(self.units) > 0):
            raise SiteError("'head' and 'neuron' sites need at least one index, and only they take indices")

    @property
    def heads(self) -> tuple[int, ...] | None:
        """The head indices of a ``head`` site (``None`` otherwise)."""
        return self.units if self.component == "head" else None

    @property
    def hook_name(self) -> str:
        return COMPONENT_HOOKS[self.component].format(layer=self.layer)

    @property
    def label(self) -> str:
        """Short label for plots: ``L3H1``, ``L3H1+2``, ``L3 attn``, ``L3 mlp``, ``L3 resid``."""
        if self.component == "head":
            return f"L{self.layer}H" + "+".join(map(str, self.heads))
        if self.component == "neuron":
            return f"L{self.layer}N" + ("+".join(map(str, self.units)) if len(self.units) <= 4
                                        else f"×{len(self.units)}")
        return f"L{self.layer} {self.component}"

    def select(self, act: torch.Tensor) -> torch.Tensor:
        """The part of the hook activation that belongs to this site (a view or an index copy)."""
        return act[:, :, list(self.units)] if self.units else act

    def validate(self, model: LoadedModel | TransformerBridge) -> Site:
        bridge = _bridge(model, "Site.validate")
        n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
        if not 0 <= self.layer < n_layers:
            raise SiteError(f"layer {self.layer} is out of range: the model has layers 0..{n_layers - 1}")
        n_units = bridge.cfg.d_mlp if self.component == "neuron" else n_heads
        bad = [u for u in self.units or () if not 0 <= u < n_units]
        if bad:
            kind = self.component
            raise SiteError(f"{kind} {bad[0]} is out of range at layer {self.layer}: {kind}s are 0..{n_units - 1}")
        return self


def _index(value, what: str) -> int:
    """An integer index (numpy and 0-d torch integers too); a float or bool is a :class:`SiteError`."""
    try:
        if isinstance(value, bool):
            raise TypeError
        return operator.index(value)
    except TypeError:
        raise SiteError(f"{what} must be an integer, got {value!r} ({type(value).__name__})") from None


def head(layer: int, *heads: int) -> Site:
    """One head or several heads of one layer: ``head(3, 1)`` or ``head(3, 0, 2)``."""
    return Site("head", layer, tuple(heads))


def attn(layer: int) -> Site:
    return Site("attn", layer)


def mlp(layer: int) -> Site:
    return Site("mlp", layer)


def resid(layer: int) -> Site:
    return Site("resid", layer)


def neurons(layer: int, *units: int) -> Site:
    """MLP neurons of one layer (post-activation, ``mlp.hook_post``): ``neurons(2, 17, 300)``."""
    return Site("neuron", layer, tuple(units))


_NAME = re.compile(r"blocks\.(\d+)\.(attn\.hook_z|hook_attn_out|hook_mlp_out|hook_resid_post|mlp\.hook_post)$")


def site_from_name(name: str, heads: Sequence[int] | None = None) -> Site:
    """Parse a TransformerLens hook name, e.g. ``site_from_name("blocks.2.attn.hook_z", heads=[1])``."""
    m = _NAME.match(name)
    if not m:
        raise SiteError(f"{name!r} is not a site hook; use one of: "
                        + ", ".join(h.format(layer="{L}") for h in COMPONENT_HOOKS.values()))
    component = {v.split("{layer}.")[1]: k for k, v in COMPONENT_HOOKS.items()}[m.group(2)]
    return Site(component, int(m.group(1)), tuple(heads) if heads is not None else None)


def layer_sites(model: LoadedModel | TransformerBridge, component: str) -> list[Site]:
    """One site per layer (``component`` in attn/mlp/resid), or one per head for ``"head"``."""
    bridge = _bridge(model, "layer_sites")
    n_layers, n_heads = bridge.cfg.n_layers, bridge.cfg.n_heads
    if component == "head":
        return [head(layer, h) for layer in range(n_layers) for h in range(n_heads)]
    return [Site(component, layer) for layer in range(n_layers)]


class _Positions:
    """Tracks where a hook call sits in the sequence (see the module docstring's rule)."""

    def __init__(self):
        self.next = 0

    def advance(self, p: int) -> int:
        start = 0 if p > 1 else self.next
        self.next = start + p
        return start


def _bridge(model: LoadedModel | TransformerBridge, operation: str) -> TransformerBridge:
    from toolkit.core.models import bridge_of

    return bridge_of(model, f"{operation}: model")


@contextmanager
def _hooked(bridge: TransformerBridge, edits: Iterable[tuple[Site, Callable]]):
    hooks = [(site.validate(bridge).hook_name, fn) for site, fn in edits]
    with bridge.hooks(fwd_hooks=hooks):
        yield


def _edit_fn(site: Site, edit: Callable[[torch.Tensor, int], torch.Tensor]):
    """A hook that replaces the site's part of the activation with ``edit(part, start)``."""
    positions = _Positions()

    def hook_fn(act: torch.Tensor, hook) -> torch.Tensor:
        start = positions.advance(act.shape[1])
        act = act.clone()
        if site.units:
            idx = list(site.units)
            act[:, :, idx] = edit(act[:, :, idx], start)
        else:
            act = edit(act, start)
        return act

    return hook_fn


def scale(model: LoadedModel | TransformerBridge, sites: Site | Sequence[Site],
          factor: float) -> AbstractContextManager[None]:
    """Multiply the sites' activations by ``factor`` (a finite number) on every forward pass inside the block."""
    return _scaled(_bridge(model, "scale"), sites, factor)


def ablate(model: LoadedModel | TransformerBridge, sites: Site | Sequence[Site]) -> AbstractContextManager[None]:
    """Zero-ablate the sites (context manager)."""
    return _scaled(_bridge(model, "ablate"), sites, 0.0)


@contextmanager
def _scaled(bridge: TransformerBridge, sites: Site | Sequence[Site], factor: float):
    if not isinstance(factor, numbers.Real) or not math.isfinite(factor):
        raise ValueError(f"scale factor must be a finite number, got {factor!r}")
    sites = [sites] if isinstance(sites, Site) else list(sites)
    with _hooked(bridge, [(s, _edit_fn(s, lambda part, start: part * factor)) for s in sites]):
        yield


@contextmanager
def patch(model: LoadedModel | TransformerBridge, site: Site, source: torch.Tensor | Callable,
          positions: Sequence[int] | None = None):
    """Replace the site's activation by ``source``.

    ``source`` is either a tensor of the site's activations over the whole sequence,
    ``[b, T, ...]`` (as :func:`record` returns, heads selected for a head site), or a callable
    ``source(part, start) -> tensor`` given the current part ``[b, p, ...]`` and its start position.
    ``positions`` restricts a tensor patch to those absolute positions (default: all); a negative position counts
    from the end of ``source`` (``-1``: its last position); out of range, an empty list, or positions with a
    callable source are refused.
    """
    bridge = _bridge(model, "patch")
    if callable(source):
        if positions is not None:
            raise SiteError("positions apply to a tensor source; a callable source gets (part, start) and edits the "
                            "positions it wants itself")
        edit = source
    else:
        wanted = None
        if positions is not None:
            n = source.shape[1]
            wanted = [_index(p, "patch position") for p in positions]
            bad = [p for p in wanted if not -n <= p < n]
            if bad or not wanted:
                raise SiteError(f"patch positions must index the source's {n} positions (0..{n - 1}, or -{n}..-1 "
                                f"from the end), got {list(positions)!r}")
            wanted = torch.as_tensor([p % n for p in wanted])

        def edit(part: torch.Tensor, start: int) -> torch.Tensor:
            end = start + part.shape[1]
            if source.shape[1] < end:
                raise SiteError(f"patch source for {site.label} covers {source.shape[1]} positions, "
                                f"but the run reached position {end - 1}")
            new = source[:, start:end].to(part.device, part.dtype)
            if new.shape != part.shape:
                raise SiteError(f"patch source for {site.label} has shape {tuple(source.shape)}; "
                                f"the run's activation there is {tuple(part.shape)} (per position)")
            if wanted is None:
                return new
            keep = ~torch.isin(torch.arange(start, end), wanted)  # positions left as they are
            return torch.where(keep.view(1, -1, *([1] * (part.dim() - 2))).to(part.device), part, new)

    with _hooked(bridge, [(site, _edit_fn(site, edit))]):
        yield


class Recording:
    """Activations cached by :func:`record`: ``rec[site]`` is ``[b, T, ...]``, with the chunks of
    each generation step concatenated along positions (lazily, on access)."""

    def __init__(self):
        self._chunks: dict[Site, list[torch.Tensor]] = {}

    def __getitem__(self, site: Site) -> torch.Tensor:
        if site not in self._chunks:
            raise KeyError(f"nothing recorded at {site.label}; recorded: {[s.label for s in self._chunks]}")
        chunks = self._chunks[site]
        if len(chunks) > 1:
            self._chunks[site] = chunks = [torch.cat(chunks, dim=1)]
        return chunks[0]

    def __contains__(self, site: Site) -> bool:
        return site in self._chunks

    def sites(self) -> list[Site]:
        return list(self._chunks)

    def _add(self, site: Site, part: torch.Tensor, start: int) -> None:
        if start == 0:
            self._chunks[site] = []
        self._chunks[site].append(part)


@contextmanager
def record(model: LoadedModel | TransformerBridge, sites: Site | Sequence[Site], detach: bool = True):
    """Cache the sites' activations; yields a :class:`Recording` filled as the model runs."""
    bridge = _bridge(model, "record")
    sites = [sites] if isinstance(sites, Site) else list(sites)
    rec = Recording()

    def make(site: Site):
        positions = _Positions()

        def hook_fn(act: torch.Tensor, hook) -> None:
            part = site.select(act)
            rec._add(site, part.detach().clone() if detach else part, positions.advance(act.shape[1]))

        return hook_fn

    with _hooked(bridge, [(s, make(s)) for s in sites]):
        yield rec


@torch.no_grad()
def attention_patterns(model: LoadedModel | TransformerBridge, input_ids: torch.Tensor,
                       layers: Sequence[int]) -> dict[int, torch.Tensor]:
    """``{layer: [b, H, q, k]}`` attention probabilities (``blocks.{L}.attn.hook_pattern``)."""
    from toolkit.core.models import check_length

    bridge = _bridge(model, "attention_patterns")
    check_length(bridge, int(input_ids.shape[-1]), "attention_patterns: input_ids", error=SiteError)
    for layer in layers:
        attn(layer).validate(bridge)
    names = {f"blocks.{layer}.attn.hook_pattern": layer for layer in layers}
    _, cache = bridge.run_with_cache(input_ids, names_filter=lambda n: n in names)
    return {layer: cache[name] for name, layer in names.items()}
