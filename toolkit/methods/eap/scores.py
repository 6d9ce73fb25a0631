"""Edge scores (:class:`Scores`): the result of :func:`toolkit.methods.eap.attribute`, with per-pair rows when asked
for, saved to and loaded from JSON."""

from __future__ import annotations

import json

import torch

from toolkit.core.io import FileFormatError, atomic_write_text, read_json
from toolkit.methods.eap.graph import EAPError, Graph


class Scores:
    """Edge scores of one model on one set of pairs: a dense ``[n_sources, n_targets]`` tensor (float64, CPU), a
    validity mask (edges that exist), the :class:`Graph` and how they were made (``meta``). ``per_example``
    (``[N, n_sources, n_targets]`` or None): each pair's own scores, whose mean over pairs is ``values``."""

    def __init__(self, values: torch.Tensor, graph: Graph, meta: dict | None = None, valid: torch.Tensor | None = None,
                 per_example: torch.Tensor | None = None):
        valid = graph.valid_mask() if valid is None else valid.bool()
        if tuple(values.shape) != (graph.n_sources, graph.n_targets) or values.shape != valid.shape:
            raise EAPError(f"scores of shape {tuple(values.shape)} do not fit the graph "
                           f"({graph.n_sources} sources × {graph.n_targets} targets)")
        if per_example is not None and (per_example.dim() != 3 or per_example.shape[1:] != values.shape):
            raise EAPError(f"per-example scores of shape {tuple(per_example.shape)} do not fit the graph: expected "
                           f"[N, {graph.n_sources}, {graph.n_targets}]")
        self.values = values.detach().to("cpu", torch.float64).masked_fill(~valid, 0.0)
        self.valid, self.graph, self.meta = valid, graph, dict(meta or {})
        self.per_example = (None if per_example is None else
                            per_example.detach().to("cpu", torch.float64).masked_fill(~valid, 0.0))

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def score(self, source: str, target: str) -> float:
        """The score of the edge ``source → target`` (names as in :class:`Graph`)."""
        s, t = self.graph.source_index(source), self.graph.target_index(target)
        if not self.valid[s, t]:
            raise EAPError(f"there is no edge {source} → {target} (the source is not upstream of the target)")
        return float(self.values[s, t])

    def edges(self, top: int | None = None, absolute: bool = True) -> list[tuple[str, str, float]]:
        """``(source, target, score)`` of valid edges, best first (by |score| if ``absolute``)."""
        s_idx, t_idx = self.valid.nonzero(as_tuple=True)
        vals = self.values[s_idx, t_idx]
        order = torch.argsort(vals.abs() if absolute else vals, descending=True)
        if top is not None:
            order = order[:top]
        src, tgt = self.graph.source_names, self.graph.target_names
        return [(src[int(s_idx[i])], tgt[int(t_idx[i])], float(vals[i])) for i in order]

    def flat(self) -> torch.Tensor:
        """The valid edges' scores as a vector, in a fixed order (for correlations between methods)."""
        return self.values[self.valid]

    def to_dict(self) -> dict:
        # the format tag keeps its old module name: saved score caches (notebook 04) stay readable
        per = {} if self.per_example is None else {"per_example": self.per_example.tolist()}
        return {"format": "toolkit.eap.Scores/1", "graph": self.graph.to_dict(), "meta": self.meta,
                "values": self.values.tolist(), "valid": self.valid.int().tolist(), **per}

    def save(self, path) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path) -> Scores:
        try:
            data = read_json(path, "scores file")
        except (OSError, FileFormatError) as err:
            raise EAPError(f"cannot read scores from {path}: {err}") from err
        if data.get("format") != "toolkit.eap.Scores/1":
            raise EAPError(f"{path} is not a saved Scores file (format {data.get('format')!r})")
        per = data.get("per_example")
        return cls(torch.tensor(data["values"], dtype=torch.float64), Graph(**data["graph"]), data.get("meta"),
                   torch.tensor(data["valid"], dtype=torch.bool), per and torch.tensor(per, dtype=torch.float64))

    def __repr__(self) -> str:
        return (f"Scores({self.meta.get('method', '?')}, metric={self.meta.get('metric', '?')}, "
                f"{self.n_edges} edges, {self.graph.n_layers} layers)")
