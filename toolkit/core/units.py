"""Units: attention heads and MLP neurons as ``(layer, index)`` pairs — sets of them, comparisons, grids, their
sites in the hook vocabulary, and random picks that serve as placebo controls.

A *head* is ``(layer, head)``; a *neuron* is ``(layer, unit)``. Sets are ``frozenset``s of such pairs.
:func:`as_heads` is the one normaliser (it also takes anything with a ``.heads`` attribute, such as an EAP-IG
circuit); :class:`HeadComparison` is the one comparison of two head sets.

Placebo pickers: :func:`random_heads` draws ``k`` heads outside a set; :func:`random_neurons` matches a neuron set
layer by layer. Both are deterministic in their ``seed``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core.interventions import Site, SiteError, head, neurons

Head = tuple[int, int]
Neuron = tuple[int, int]


def as_heads(heads, what: str = "heads", n_layers: int | None = None, n_heads: int | None = None) -> frozenset[Head]:
    """``heads`` (``(layer, head)`` pairs, or an object with a ``.heads`` attribute) as a frozenset of int pairs.
    With ``n_layers``/``n_heads``, an out-of-range head raises :class:`SiteError` naming ``what``."""
    heads = getattr(heads, "heads", heads)
    out = set()
    for item in heads:
        try:
            layer, h = (int(v) for v in item)
        except (TypeError, ValueError):
            raise ValueError(f"{what}: {item!r} is not a (layer, head) pair") from None
        if n_layers is not None and not 0 <= layer < n_layers:
            raise SiteError(f"{what}: layer {layer} is out of range: the model has layers 0..{n_layers - 1}")
        if n_heads is not None and not 0 <= h < n_heads:
            raise SiteError(f"{what}: head {h} is out of range at layer {layer}: heads are 0..{n_heads - 1}")
        out.add((layer, h))
    return frozenset(out)


@dataclass(frozen=True)
class HeadComparison:
    """Two head sets ``a`` and ``b`` and their split. With a = a post-trained model's circuit and b = its base
    model's, ``only_a`` are the emergent heads."""

    a: frozenset[Head]
    b: frozenset[Head]

    @property
    def shared(self) -> frozenset[Head]:
        return self.a & self.b

    @property
    def only_a(self) -> frozenset[Head]:
        return self.a - self.b

    @property
    def only_b(self) -> frozenset[Head]:
        return self.b - self.a

    @property
    def jaccard(self) -> float:
        """|a ∩ b| / |a ∪ b| (NaN if both are empty)."""
        union = self.a | self.b
        return len(self.shared) / len(union) if union else float("nan")

    def to_dict(self) -> dict:
        """Sizes, sorted ``[layer, head]`` lists of the three parts, and the Jaccard index."""
        return {"n_a": len(self.a), "n_b": len(self.b), "shared": sorted(self.shared), "only_a": sorted(self.only_a),
                "only_b": sorted(self.only_b), "jaccard": self.jaccard}

    def grid(self, n_layers: int, n_heads: int) -> np.ndarray:
        """``[n_layers, n_heads]`` codes: 0 in neither set, 1 shared, 2 only in a, 3 only in b."""
        return head_grid({1: self.shared, 2: self.only_a, 3: self.only_b}, n_layers, n_heads)


def compare_heads(a, b, n_layers: int | None = None, n_heads: int | None = None) -> HeadComparison:
    """Compare two head sets (or circuits); with ``n_layers``/``n_heads`` every head is range-checked."""
    return HeadComparison(as_heads(a, "first head set", n_layers, n_heads),
                          as_heads(b, "second head set", n_layers, n_heads))


def head_grid(parts: Mapping[int, Iterable[Head]], n_layers: int, n_heads: int) -> np.ndarray:
    """``[n_layers, n_heads]`` int codes: each head of ``parts[code]`` gets ``code``; the rest 0."""
    grid = np.zeros((n_layers, n_heads), dtype=int)
    for code, part in parts.items():
        for layer, h in as_heads(part, f"part {code}", n_layers, n_heads):
            grid[layer, h] = code
    return grid


def head_sites(heads: Iterable[Head]) -> list[Site]:
    """``[(layer, head), ...]`` → one ``head`` site per layer holding that layer's heads (sorted)."""
    by_layer: dict[int, set[int]] = {}
    for layer, h in heads:
        by_layer.setdefault(int(layer), set()).add(int(h))
    return [head(layer, *sorted(hs)) for layer, hs in sorted(by_layer.items())]


def neuron_sites(units: Sequence[Neuron]) -> list[Site]:
    """``[(layer, unit), ...]`` → one ``neuron`` site per layer."""
    by_layer: dict[int, list[int]] = {}
    for layer, unit in units:
        by_layer.setdefault(int(layer), []).append(int(unit))
    return [neurons(layer, *sorted(us)) for layer, us in sorted(by_layer.items())]


def random_heads(n_layers: int, n_heads: int, k: int, exclude: Iterable[Head] = (),
                 layers: Iterable[int] | None = None, seed: int = 0) -> list[Head]:
    """``k`` distinct random ``(layer, head)`` pairs, none in ``exclude``, from ``layers`` (default all): the
    placebo control for a head intervention. Raises :class:`SiteError` if fewer than ``k`` heads are left."""
    exclude = {(int(a), int(b)) for a, b in exclude}
    pool = [(lay, h) for lay in (range(n_layers) if layers is None else sorted(set(layers))) for h in range(n_heads)
            if (lay, h) not in exclude]
    if k > len(pool):
        raise SiteError(f"asked for {k} random heads but only {len(pool)} are left after excluding {len(exclude)}")
    rng = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(pool), generator=rng).tolist()
    return sorted(pool[i] for i in order[:k])


def random_neurons(selected: Sequence[Neuron], d_mlp: int, seed: int = 0) -> list[Neuron]:
    """As many random neurons as ``selected`` has in each layer, from the same layers, none of them selected: the
    placebo control for a neuron intervention."""
    rng = np.random.default_rng(seed)
    chosen = set(map(tuple, selected))
    out = []
    for layer in sorted({lay for lay, _ in chosen}):
        k = sum(1 for lay, _ in chosen if lay == layer)
        pool = [u for u in range(d_mlp) if (layer, u) not in chosen]
        if k > len(pool):
            raise ValueError(f"layer {layer}: asked for {k} control neurons but only {len(pool)} are left")
        out += [(layer, int(u)) for u in rng.choice(pool, size=k, replace=False)]
    return sorted(out)
