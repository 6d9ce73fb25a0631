"""Stage 1 of EAP / EAP-IG: the computational graph of a decoder-only model, as index arithmetic over dense
``[n_sources, n_targets]`` score matrices.

Nodes: ``input`` (token embeddings), every attention head ``a{L}.h{H}``, every MLP ``m{L}``, and ``logits``.
Edges go from every earlier node to each *target*: a head's query input ``a{L}.h{H}<q>``, the key and value inputs
``a{L}.kv{G}<k>`` / ``a{L}.kv{G}<v>``, an MLP's input ``m{L}``, and ``logits``.

**GQA:** keys and values exist per KV head, so k/v targets are per KV-head group ``G`` (query heads
``G*r … G*r+r-1`` with ``r = n_heads / n_kv_heads``). A grouped k/v edge score equals the sum of the scores the same
edge would get into the per-query-head copies of that k/v input (``tests/test_eap.py`` checks this against the
ungrouped reference in :mod:`toolkit.reference.eap`). A target's input is the sum of its sources' outputs taken
*before* the layer norm (the residual stream), as in TransformerLens' ``hook_q_input``/``hook_k_input``/
``hook_v_input``/``hook_mlp_in``.

An edge ``s → t`` exists (:meth:`Graph.valid_mask`) when ``s`` is strictly upstream of ``t``: an attention target of
layer L reads the input and every node of layers < L; the MLP of layer L also reads the heads of layer L; the logits
read everything. See ``docs/methods.md`` ("EAP-IG" section).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

METHODS = ("eap", "eap-ig", "exact")
METRICS = ("kl", "logit_diff", "prob_diff")


class EAPError(ValueError):
    """Bad input to the EAP toolkit (pairs, graph, scores, circuit); the message says what is wrong."""


# --------------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """The computational graph of a decoder-only model, as index arithmetic over dense score matrices.

    Sources (rows): ``input``, then per layer ``a{L}.h0 … a{L}.h{H-1}``, ``m{L}``.
    Targets (columns): per layer ``a{L}.h{h}<q>`` (H), ``a{L}.kv{g}<k>`` (H_kv), ``a{L}.kv{g}<v>`` (H_kv), ``m{L}``;
    then ``logits``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int = 0
    d_head: int = 0

    def __post_init__(self):
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise EAPError(f"invalid graph shape: {self.n_layers} layers, {self.n_heads} heads, "
                           f"{self.n_kv_heads} KV heads (n_heads must be a multiple of n_kv_heads)")

    @classmethod
    def from_bridge(cls, bridge: TransformerBridge) -> Graph:
        """The graph of a TransformerBridge (``bridge.cfg``: n_layers, n_heads, n_key_value_heads)."""
        cfg = bridge.cfg
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        return cls(int(cfg.n_layers), int(cfg.n_heads), n_kv, int(cfg.d_model), int(cfg.d_head))

    # sizes
    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def per_layer_targets(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_targets(self) -> int:
        return self.n_layers * self.per_layer_targets + 1

    # indices
    def head_source(self, layer: int, h: int) -> int:
        self._check(layer, h)
        return 1 + layer * (self.n_heads + 1) + h

    def mlp_source(self, layer: int) -> int:
        self._check(layer)
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def sources_before(self, layer: int) -> int:
        """Number of sources that feed layer ``layer``'s attention (input and all earlier layers)."""
        return 1 + layer * (self.n_heads + 1)

    def q_target(self, layer: int, h: int) -> int:
        self._check(layer, h)
        return layer * self.per_layer_targets + h

    def k_target(self, layer: int, g: int) -> int:
        self._check(layer, kv=g)
        return layer * self.per_layer_targets + self.n_heads + g

    def v_target(self, layer: int, g: int) -> int:
        self._check(layer, kv=g)
        return layer * self.per_layer_targets + self.n_heads + self.n_kv_heads + g

    def mlp_target(self, layer: int) -> int:
        self._check(layer)
        return layer * self.per_layer_targets + self.n_heads + 2 * self.n_kv_heads

    @property
    def logits_target(self) -> int:
        return self.n_layers * self.per_layer_targets

    def _check(self, layer: int, h: int | None = None, kv: int | None = None) -> None:
        if not 0 <= layer < self.n_layers:
            raise EAPError(f"layer {layer} is out of range: the model has layers 0..{self.n_layers - 1}")
        if h is not None and not 0 <= h < self.n_heads:
            raise EAPError(f"head {h} is out of range: heads are 0..{self.n_heads - 1}")
        if kv is not None and not 0 <= kv < self.n_kv_heads:
            raise EAPError(f"KV head {kv} is out of range: KV heads are 0..{self.n_kv_heads - 1}")

    # names
    @property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @property
    def target_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{layer}.kv{g}<k>" for g in range(self.n_kv_heads)]
            names += [f"a{layer}.kv{g}<v>" for g in range(self.n_kv_heads)]
            names += [f"m{layer}"]
        return names + ["logits"]

    def source_index(self, name: str) -> int:
        try:
            return self.source_names.index(name)
        except ValueError:
            raise EAPError(f"unknown source node {name!r}; sources are 'input', 'a{{L}}.h{{H}}', 'm{{L}}' with "
                           f"L in 0..{self.n_layers - 1}, H in 0..{self.n_heads - 1}") from None

    def target_index(self, name: str) -> int:
        try:
            return self.target_names.index(name)
        except ValueError:
            raise EAPError(f"unknown target {name!r}; targets are 'a{{L}}.h{{H}}<q>', 'a{{L}}.kv{{G}}<k>', "
                           f"'a{{L}}.kv{{G}}<v>', 'm{{L}}', 'logits'") from None

    def source_head(self, s: int) -> tuple[int, int] | None:
        """``(layer, head)`` of a head source index, else None."""
        if s == 0:
            return None
        layer, r = divmod(s - 1, self.n_heads + 1)
        return None if r == self.n_heads else (layer, r)

    def target_owner(self, t: int) -> list[int]:
        """Source indices of the node(s) that read target ``t`` (a k/v target is read by its whole group)."""
        if t == self.logits_target:
            return []
        layer, r = divmod(t, self.per_layer_targets)
        base = 1 + layer * (self.n_heads + 1)
        if r < self.n_heads:
            return [base + r]
        if r < self.n_heads + 2 * self.n_kv_heads:
            g = (r - self.n_heads) % self.n_kv_heads
            return [base + g * self.group_size + i for i in range(self.group_size)]
        return [base + self.n_heads]

    def source_inputs(self, s: int) -> list[int]:
        """Target indices whose inputs flow into source node ``s`` (its q, k, v targets, or its MLP input)."""
        if s == 0:
            return []
        head = self.source_head(s)
        if head is None:
            return [self.mlp_target((s - 1) // (self.n_heads + 1))]
        layer, h = head
        g = h // self.group_size
        return [self.q_target(layer, h), self.k_target(layer, g), self.v_target(layer, g)]

    def valid_mask(self) -> torch.Tensor:
        """``[n_sources, n_targets]`` bool: which edges exist (source strictly upstream of the target)."""
        mask = torch.zeros(self.n_sources, self.n_targets, dtype=torch.bool)
        width = self.per_layer_targets
        for layer in range(self.n_layers):
            s_attn = self.sources_before(layer)
            mask[:s_attn, layer * width:layer * width + width - 1] = True
            mask[:s_attn + self.n_heads, self.mlp_target(layer)] = True
        mask[:, self.logits_target] = True
        return mask

    def to_dict(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "d_model": self.d_model, "d_head": self.d_head}
