"""Claims: every finding of a notebook, stated against its null, with a verdict computed from the numbers.

A :class:`Claim` records a paper's finding (in our own words, with the paper and its ``section``), what the organism
measured (``estimate`` with a confidence interval ``ci``), the :class:`Null` it was compared with, a p-value or an
equivalence ``margin``, and a ``verdict`` that :func:`verdict` computes — it can never be typed in. A notebook keeps
its claims in one :class:`Claims` registry; :func:`toolkit.run.results.save_claims` writes them to
``<run_dir>/<notebook>.claims.json`` (:meth:`Claim.to_dict`) and the runner reads every notebook's back
(:meth:`Claim.from_dict`) into ``claims.json`` and ``REPORT.md``.
The schema and the rule are in ``docs/methods.md`` ("Claims and nulls").

**The verdict rule** (:func:`verdict`). ``direction`` says which way the paper's effect points relative to
``reference`` (the null's value: 0 for a difference, a threshold for a target): +1 above, −1 below, 0 "no effect".
Write ``d`` for the direction and ``[lo, hi]`` for the interval.

- ``d = ±1``:
  ``contradicts`` when the interval lies entirely on the other side of the reference (``d·(hi − ref) < 0`` for
  d = +1, i.e. ``hi < ref``; ``lo > ref`` for d = −1), or when a ``margin`` is given and the interval lies inside
  ``ref ± margin`` (an equivalence test: no effect of the paper's size); else
  ``reproduces`` when the estimate is on the paper's side (``d·(estimate − ref) > 0``) and the evidence is
  significant: ``p_value < alpha`` where a p-value is given, else the interval excludes the reference on the paper's
  side; else ``inconclusive``.
- ``d = 0`` (the paper reports no effect) needs a ``margin``: ``reproduces`` when the interval lies inside
  ``ref ± margin``; ``contradicts`` when the interval excludes ``ref`` and (if given) ``p_value < alpha``; else
  ``inconclusive``.

``alpha`` is 0.05 unless a claim says otherwise. Boundaries: an interval end exactly at the reference does not
exclude it, and a p-value exactly at ``alpha`` is not significant.

**Null kinds** (:data:`NULL_KINDS`): ``bootstrap-resample`` (the same measurement on resampled pairs or prompts),
``base-vs-itself`` (the untrained model compared with itself under resampling), ``placebo-sets`` (every same-size
set of units, or ≥ 200 random ones, under the same intervention), ``weight-noise`` (Gaussian weight noise matched to
the trained model by KL), ``permutation`` (labels or layers permuted), ``closed-form`` and ``target`` (a fixed
threshold: organism targets, exact invariants).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

NULL_KINDS = ("bootstrap-resample", "base-vs-itself", "placebo-sets", "weight-noise", "permutation", "closed-form",
              "target")
VERDICTS = ("reproduces", "contradicts", "inconclusive")


class ClaimError(ValueError):
    """A claim that cannot be registered: no null, an unknown null kind, a duplicate id, a malformed number."""


@dataclass(frozen=True)
class Null:
    """What an estimate was compared with: a ``kind`` from :data:`NULL_KINDS`, how many draws ``n`` it has (0 for
    a fixed threshold), a ``summary`` of its distribution and a short ``description``. The kind is checked when a
    claim is registered, so that the error can name the notebook and the claim."""

    kind: str
    n: int = 0
    summary: dict = field(default_factory=dict)
    description: str = ""

    @classmethod
    def from_samples(cls, kind: str, samples: Sequence[float] | np.ndarray, description: str = "") -> Null:
        """A null summarised by its draws: mean, sd, 2.5% and 97.5% quantiles (non-finite draws are dropped)."""
        x = np.asarray(samples, dtype=float).ravel()
        x = x[np.isfinite(x)]
        if len(x) == 0:
            raise ClaimError(f"a {kind} null needs at least one finite draw")
        summary = {"mean": float(x.mean()), "sd": float(x.std(ddof=1)) if len(x) > 1 else 0.0,
                   "q025": float(np.quantile(x, 0.025)), "q975": float(np.quantile(x, 0.975))}
        return cls(kind, int(len(x)), summary, description)

    @classmethod
    def target(cls, threshold: float, description: str = "") -> Null:
        """A fixed threshold (an organism target)."""
        return cls("target", 0, {"threshold": float(threshold)}, description)

    def to_dict(self) -> dict:
        return {"kind": self.kind, "n": self.n, "summary": dict(self.summary), "description": self.description}

    @classmethod
    def from_dict(cls, record: Mapping) -> Null:
        """The null of a :meth:`to_dict` record (``n``, ``summary`` and ``description`` may be missing)."""
        return cls(record["kind"], int(record.get("n", 0)), dict(record.get("summary", {})),
                   record.get("description", ""))


def empirical_p(estimate: float, null_samples: Sequence[float] | np.ndarray, *, direction: int = 1) -> float:
    """One-sided permutation p-value of ``estimate`` against draws of its null: ``(1 + #{draws at least as extreme in
    the paper's direction}) / (1 + n)``. With ``direction=0`` two-sided, on distance from the null's mean."""
    x = np.asarray(null_samples, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        raise ClaimError("empirical_p needs at least one finite null draw")
    if direction == 0:
        centre = x.mean()
        extreme = np.abs(x - centre) >= abs(estimate - centre)
    else:
        extreme = direction * x >= direction * estimate
    return float((1 + extreme.sum()) / (1 + len(x)))


def bootstrap_p(boot_estimates: Sequence[float] | np.ndarray, *, reference: float = 0.0, direction: int = 1) -> float:
    """One-sided bootstrap p-value: the share of bootstrap estimates on the wrong side of ``reference`` (or on it),
    ``(1 + #{d·(b − ref) ≤ 0}) / (1 + n)``. ``direction=0`` gives twice the smaller side, capped at 1."""
    b = np.asarray(boot_estimates, dtype=float).ravel()
    b = b[np.isfinite(b)]
    if len(b) == 0:
        raise ClaimError("bootstrap_p needs at least one finite bootstrap estimate")
    if direction == 0:
        return float(min(1.0, 2 * min(bootstrap_p(b, reference=reference, direction=1),
                                      bootstrap_p(b, reference=reference, direction=-1))))
    return float((1 + (direction * (b - reference) <= 0).sum()) / (1 + len(b)))


def verdict(estimate: float, ci: Sequence[float], *, direction: int, reference: float = 0.0,
            p_value: float | None = None, margin: float | None = None, alpha: float = 0.05) -> str:
    """``reproduces``, ``contradicts`` or ``inconclusive`` by the rule in the module docstring."""
    if direction not in (-1, 0, 1):
        raise ClaimError(f"direction must be +1, -1 or 0, got {direction!r}")
    lo, hi = float(ci[0]), float(ci[1])
    if not all(math.isfinite(v) for v in (estimate, lo, hi)):
        return "inconclusive"
    significant = None if p_value is None or not math.isfinite(p_value) else p_value < alpha
    inside_margin = margin is not None and reference - margin < lo and hi < reference + margin
    if direction == 0:
        if margin is None:
            raise ClaimError("a 'no effect' claim (direction 0) needs an equivalence margin")
        if inside_margin:
            return "reproduces"
        excludes = lo > reference or hi < reference
        return "contradicts" if excludes and significant is not False else "inconclusive"
    far = hi if direction > 0 else lo  # the interval end on the paper's side
    near = lo if direction > 0 else hi
    if direction * (far - reference) < 0 or inside_margin:
        return "contradicts"
    on_side = direction * (estimate - reference) > 0
    if significant is None:
        significant = direction * (near - reference) > 0
    return "reproduces" if on_side and significant else "inconclusive"


@dataclass(frozen=True)
class Claim:
    """One finding against its null; ``verdict`` is computed in ``__post_init__``, never passed in. ``paper`` names
    the paper (the scorecard groups by it), ``section`` where in it the finding is (``"section 3.1"``; may be empty).
    :meth:`to_dict` gives its JSON record and :meth:`from_dict` reads one back: ``Claim.from_dict(c.to_dict()) == c``
    for every claim with finite numbers."""

    notebook: str
    id: str
    paper: str
    statement: str
    measure: str
    estimate: float
    ci: tuple[float, float]
    null: Null
    direction: int
    reference: float = 0.0
    p_value: float | None = None
    margin: float | None = None
    alpha: float = 0.05
    note: str = ""
    section: str = ""
    verdict: str = field(init=False)

    def __post_init__(self):
        where = f"{self.notebook}: claim {self.id!r}"
        if not isinstance(self.null, Null):
            raise ClaimError(f"{where} has no null (got {self.null!r}); pass null=Null(kind, ...) with a kind from "
                             f"{', '.join(NULL_KINDS)}")
        if self.null.kind not in NULL_KINDS:
            raise ClaimError(f"{where} has an unknown null kind {self.null.kind!r}; the kinds are: "
                             f"{', '.join(NULL_KINDS)}")
        for name in ("paper", "statement", "measure"):
            if not str(getattr(self, name)).strip():
                raise ClaimError(f"{where} needs a non-empty {name}")
        try:
            est, lo, hi = float(self.estimate), float(self.ci[0]), float(self.ci[1])
        except (TypeError, ValueError, IndexError) as e:
            raise ClaimError(f"{where}: estimate and ci=(low, high) must be numbers ({e})") from None
        if lo > hi:
            raise ClaimError(f"{where}: ci low {lo} is above high {hi}")
        if self.p_value is not None and not (0 <= self.p_value <= 1):
            raise ClaimError(f"{where}: p_value {self.p_value} is not in [0, 1]")
        if self.margin is not None and self.margin <= 0:
            raise ClaimError(f"{where}: margin must be positive, got {self.margin}")
        object.__setattr__(self, "estimate", est)
        object.__setattr__(self, "ci", (lo, hi))
        try:
            v = verdict(est, (lo, hi), direction=self.direction, reference=self.reference, p_value=self.p_value,
                        margin=self.margin, alpha=self.alpha)
        except ClaimError as e:
            raise ClaimError(f"{where}: {e}") from None
        object.__setattr__(self, "verdict", v)

    @property
    def citation(self) -> str:
        """``"paper, section"`` (the paper alone when there is no section)."""
        return f"{self.paper}, {self.section}" if self.section else self.paper

    def to_dict(self) -> dict:
        """The claim's JSON record (``docs/methods.md``, "Claims and nulls"; non-finite numbers become ``None``)."""
        def num(v):
            return None if v is None or not math.isfinite(v) else float(v)

        return {"notebook": self.notebook, "id": self.id, "paper": self.paper, "section": self.section,
                "statement": self.statement, "measure": self.measure, "estimate": num(self.estimate),
                "ci": [num(self.ci[0]), num(self.ci[1])], "null": self.null.to_dict(), "p_value": num(self.p_value),
                "direction": self.direction, "reference": self.reference, "margin": self.margin, "alpha": self.alpha,
                "verdict": self.verdict, "note": self.note}

    @classmethod
    def from_dict(cls, record: Mapping) -> Claim:
        """The claim of a :meth:`to_dict` record: ``None`` numbers are read as NaN, and a record written before
        claims had a ``section`` keeps its whole citation in ``paper``. The verdict is computed again and must equal
        the record's (a :class:`ClaimError` otherwise: the record was edited, or written by another verdict rule)."""
        def num(v):
            return float("nan") if v is None else float(v)

        where = f"{record.get('notebook', '?')}: claim {record.get('id', '?')!r}"
        try:
            claim = cls(record["notebook"], record["id"], record["paper"], record["statement"], record["measure"],
                        num(record["estimate"]), (num(record["ci"][0]), num(record["ci"][1])),
                        Null.from_dict(record["null"]), record["direction"], record.get("reference", 0.0),
                        record.get("p_value"), record.get("margin"), record.get("alpha", 0.05),
                        record.get("note", ""), record.get("section", ""))
        except KeyError as e:
            raise ClaimError(f"{where}: the record has no {e.args[0]!r} field") from None
        if "verdict" in record and record["verdict"] != claim.verdict:
            raise ClaimError(f"{where}: the record says {record['verdict']!r} but its numbers give "
                             f"{claim.verdict!r}; verdicts are computed, never edited")
        return claim


class Claims:
    """The claims of one notebook, by id, in registration order."""

    def __init__(self, notebook: str):
        if not notebook or not isinstance(notebook, str):
            raise ClaimError("Claims needs the notebook's name, e.g. Claims('04_grpo_dynamics')")
        self.notebook = notebook
        self._claims: dict[str, Claim] = {}

    def add(self, id: str, *, paper: str, statement: str, measure: str, estimate: float, ci: Sequence[float],
            null: Null | None, direction: int, reference: float = 0.0, p_value: float | None = None,
            margin: float | None = None, alpha: float = 0.05, note: str = "", section: str = "") -> Claim:
        """Register one claim (see :class:`Claim`); its verdict is computed here. Returns the claim."""
        if not id or not isinstance(id, str):
            raise ClaimError(f"{self.notebook}: a claim needs a string id, got {id!r}")
        if id in self._claims:
            raise ClaimError(f"{self.notebook}: duplicate claim id {id!r}; every claim of a notebook needs its own id")
        claim = Claim(self.notebook, id, paper, statement, measure, estimate, tuple(ci), null, direction, reference,
                      None if p_value is None else float(p_value), margin, alpha, note, section)
        self._claims[id] = claim
        return claim

    def __getitem__(self, id: str) -> Claim:
        try:
            return self._claims[id]
        except KeyError:
            raise KeyError(f"{self.notebook} has no claim {id!r}; it has: {', '.join(self._claims)}") from None

    def __iter__(self) -> Iterator[Claim]:
        return iter(self._claims.values())

    def __len__(self) -> int:
        return len(self._claims)

    def __contains__(self, id: str) -> bool:
        return id in self._claims

    def verdicts(self) -> dict[str, str]:
        return {c.id: c.verdict for c in self}

    def to_records(self) -> list[dict]:
        return [c.to_dict() for c in self]
