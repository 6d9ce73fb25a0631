"""Claims: every finding of a notebook, stated against its null, with a verdict computed from the numbers.

A :class:`Claim` records a paper's finding (in our own words, with the paper and its ``section``), what the organism
measured (``estimate`` with a 95% interval ``ci``), the :class:`Null` it was compared with, a p-value, and a
``verdict`` with its ``reason`` that :mod:`toolkit.evaluation.verdicts` computes: it can never be typed in. A notebook
keeps its claims in one :class:`Claims` registry; :func:`toolkit.run.results.save_claims` writes them to
``<run_dir>/<notebook>.claims.json`` (:meth:`Claim.to_dict`) and the runner reads every notebook's back
(:meth:`Claim.from_dict`) into ``claims.json`` and ``REPORT.md``, where each paper's findings are one family
(Holm-adjusted p-values) and the controls' verdicts are set beside each finding. The schema and the rule are in
``docs/methods.md`` ("Claims and nulls").

**Kinds** (:data:`KINDS`): ``target`` (the organism's specification), ``check`` (a method's own sanity or a study's
precondition) and ``finding`` (a paper's statement; the scorecard's headline counts these). A finding must declare

- its smallest effect of interest ``sesoi`` (> 0, in the estimate's units, from ``reference`` in the paper's
  direction) with ``sesoi_reason`` (a fraction of the paper's effect, or a scale argument);
- its ``controls`` (:data:`CONTROLS`: always ``random``, a re-initialised copy of the model, and for findings about
  training ``untrained`` or ``weight-noise``);
- its ``family`` (the paper, unless it says otherwise).

**Null kinds** (:data:`NULL_KINDS`): ``bootstrap-resample`` (the same measurement on resampled pairs or prompts),
``base-vs-itself`` (the untrained model compared with itself under resampling), ``placebo-sets`` (every same-size
set of units, or ≥ 200 random ones, under the same intervention: rank-based, give ``p_opposite`` too; any claim
whose p is a rank among draws, e.g. among KL-matched noise models, gives ``p_opposite`` and is decided the same way),
``weight-noise`` (Gaussian weight noise matched to the trained model by KL), ``permutation`` (labels or layers
permuted), ``closed-form`` and ``target`` (a fixed threshold: organism targets, exact invariants).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from toolkit.evaluation import verdicts as rule

NULL_KINDS = ("bootstrap-resample", "base-vs-itself", "placebo-sets", "weight-noise", "permutation", "closed-form",
              "target")
VERDICTS = rule.VERDICTS
KINDS = ("target", "check", "finding")
CONTROLS = ("random", "untrained", "weight-noise")
RANK_NULLS = ("placebo-sets",)  # decided from ranks; so is any claim that gives p_opposite (e.g. among noise draws)
DRAWN_NULLS = ("placebo-sets", "permutation", "base-vs-itself", "weight-noise")  # p = rank among draws: floor 1/(1+n)


class ClaimError(ValueError):
    """A claim that cannot be registered: no null, an unknown kind, a duplicate id, a malformed interval, a finding
    without a smallest effect of interest, controls or a family."""


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


def percentile_ci(draws: Sequence[float] | np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """The percentile interval of bootstrap ``draws`` (non-finite ones dropped), widened where needed to contain
    ``estimate``: a claim's interval must hold its estimate. NaNs when no draw is finite."""
    x = np.asarray(draws, dtype=float).ravel()
    x = x[np.isfinite(x)]
    if len(x) == 0:
        return math.nan, math.nan
    a = (1 - level) / 2
    lo, hi = float(np.quantile(x, a)), float(np.quantile(x, 1 - a))
    if math.isfinite(estimate):
        lo, hi = min(lo, float(estimate)), max(hi, float(estimate))
    return lo, hi


def count_ci(draws: Sequence[float] | np.ndarray, estimate: float, level: float = 0.95) -> tuple[float, float]:
    """:func:`percentile_ci` of an integer-valued statistic (a count of heads), widened by half a unit on each side
    (a continuity correction, clipped at 0): a count that is 0 in every resample gets ``[0, 0.5]``, an interval that
    can show a count absent, where the bare percentile interval ``[0, 0]`` has zero width and decides nothing."""
    lo, hi = percentile_ci(draws, estimate, level)
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return lo, hi
    return max(0.0, lo - 0.5), hi + 0.5


def _num(v) -> float | None:
    return None if v is None or not math.isfinite(v) else float(v)


@dataclass(frozen=True)
class Claim:
    """One finding against its null; ``verdict``, ``reason``, ``power`` and ``n_needed`` are computed in
    ``__post_init__`` (:mod:`toolkit.evaluation.verdicts`), never passed in. ``paper`` names the paper (the scorecard
    groups by it), ``section`` where in it the finding is (``"section 3.1"``; may be empty), ``paper_effect`` the
    paper's own effect size where it reports one (``"r = 0.89"``). ``n`` is the number of independent units the
    interval rests on and ``unit`` what they are (prompts, runs, edges). ``p_floor`` is the smallest p the test can
    give (``1/(1 + draws)`` for a null of draws unless given), ``p_opposite`` a rank-based test's p from the other
    end. ``independent_seeds`` is False where the notebook's seeds do not give independent replications (they
    draw overlapping prompts from one pool): pooling over seeds then does not narrow the interval
    (:func:`toolkit.evaluation.verdicts.pool`). The scorecard fills ``p_adjusted`` and ``holm_factor`` (the
    family's Holm adjustment), ``control_verdicts`` (the same claim's verdict on each control) and
    ``seeds_disagree``.
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
    sesoi: float | None = None
    alpha: float = 0.05
    note: str = ""
    section: str = ""
    kind: str = "finding"
    sesoi_reason: str = ""
    family: str = ""
    controls: tuple[str, ...] = ()
    n: int | None = None
    unit: str = ""
    paper_effect: str = ""
    p_floor: float | None = None
    p_opposite: float | None = None
    p_adjusted: float | None = None
    holm_factor: int = 1
    control_verdicts: Mapping[str, str] = field(default_factory=dict)
    seeds_disagree: bool = False
    independent_seeds: bool = True
    verdict: str = field(init=False)
    reason: str = field(init=False)
    power: float = field(init=False)
    n_needed: int | None = field(init=False)

    def __post_init__(self):
        where = f"{self.notebook}: claim {self.id!r}"
        set_ = lambda name, value: object.__setattr__(self, name, value)  # noqa: E731 (a frozen dataclass)
        if not isinstance(self.null, Null):
            raise ClaimError(f"{where} has no null (got {self.null!r}); pass null=Null(kind, ...) with a kind from "
                             f"{', '.join(NULL_KINDS)}")
        if self.null.kind not in NULL_KINDS:
            raise ClaimError(f"{where} has an unknown null kind {self.null.kind!r}; the kinds are: "
                             f"{', '.join(NULL_KINDS)}")
        if self.kind not in KINDS:
            raise ClaimError(f"{where} has an unknown kind {self.kind!r}; the kinds are: {', '.join(KINDS)}")
        for name in ("paper", "statement", "measure"):
            if not str(getattr(self, name)).strip():
                raise ClaimError(f"{where} needs a non-empty {name}")
        if self.direction not in (-1, 0, 1):
            raise ClaimError(f"{where}: direction must be +1, -1 or 0, got {self.direction!r}")
        if isinstance(self.ci, (str, bytes)) or not hasattr(self.ci, "__len__") or len(self.ci) != 2:
            raise ClaimError(f"{where}: ci must be a pair (low, high), got {self.ci!r}")
        try:
            est, lo, hi = float(self.estimate), float(self.ci[0]), float(self.ci[1])
        except (TypeError, ValueError) as e:
            raise ClaimError(f"{where}: estimate and ci=(low, high) must be numbers ({e})") from None
        if lo > hi:
            raise ClaimError(f"{where}: ci low {lo} is above high {hi}")
        tol = 1e-9 * max(1.0, abs(est))
        if all(math.isfinite(v) for v in (est, lo, hi)) and not (lo - tol <= est <= hi + tol):
            raise ClaimError(f"{where}: the estimate {est} lies outside its own interval [{lo}, {hi}]; "
                             "use claims.percentile_ci(draws, estimate)")
        for name in ("p_value", "p_floor", "p_opposite", "p_adjusted"):
            v = getattr(self, name)
            if v is not None and not (0 <= v <= 1):
                raise ClaimError(f"{where}: {name} {v} is not in [0, 1]")
        if self.sesoi is not None and not (self.sesoi > 0):
            raise ClaimError(f"{where}: the smallest effect of interest must be positive (a size, in the paper's "
                             f"direction), got sesoi={self.sesoi}")
        controls = tuple(self.controls)
        unknown = [c for c in controls if c not in CONTROLS] + [c for c in self.control_verdicts
                                                                 if c not in controls]
        if unknown:
            raise ClaimError(f"{where}: unknown or undeclared control {unknown[0]!r}; the controls are "
                             f"{', '.join(CONTROLS)}, and a control verdict needs the control declared")
        family = self.family or self.paper
        if self.kind == "finding":
            if self.sesoi is None or not self.sesoi_reason.strip():
                raise ClaimError(f"{where} is a finding without a smallest effect of interest: pass sesoi=<size> "
                                 "and sesoi_reason=<why that size> (a fraction of the paper's effect, or a scale)")
            if "random" not in controls:
                raise ClaimError(f"{where} is a finding without its controls: pass controls=('random', ...) "
                                 "(and 'untrained' or 'weight-noise' where the finding is about training)")
        if self.direction == 0 and self.sesoi is None:
            raise ClaimError(f"{where}: a 'no effect' claim (direction 0) needs sesoi, its equivalence margin")
        p_floor = self.p_floor
        if p_floor is None and self.null.kind in DRAWN_NULLS and self.null.n > 0 and self.p_value is not None:
            p_floor = 1 / (1 + self.null.n)
        set_("estimate", est)
        set_("ci", (lo, hi))
        set_("controls", controls)
        set_("family", family)
        set_("p_floor", p_floor)
        set_("control_verdicts", dict(self.control_verdicts))
        p = self.p_adjusted if self.p_adjusted is not None else self.p_value
        p_opp = self.p_opposite
        if p_opp is not None and self.p_adjusted is not None:
            p_opp = min(1.0, p_opp * self.holm_factor)
        rank = (self.null.kind in RANK_NULLS or self.p_opposite is not None) and self.direction != 0
        verdict, reason = rule.decide(est, (lo, hi), direction=self.direction, reference=self.reference,
                                      sesoi=self.sesoi, p_value=p, p_opposite=p_opp, rank_based=rank,
                                      exact=self.null.kind in ("target", "closed-form"), alpha=self.alpha)
        alpha_eff = self.alpha / max(1, self.holm_factor)
        pw, need = rule.power(self.sesoi, (lo, hi), alpha=alpha_eff, n=self.n) if self.direction else (math.nan, None)
        if verdict == "reproduces" and rule.artifact_of(self.control_verdicts):
            verdict, reason = "artifact", rule.artifact_of(self.control_verdicts)
        elif verdict == "inconclusive" and not reason:
            if self.p_value is not None and p_floor is not None and p_floor * self.holm_factor >= self.alpha:
                reason = "floor"
            elif self.seeds_disagree:
                reason = "seeds-disagree"
            elif math.isfinite(pw) and pw < rule.TARGET_POWER:
                reason = "underpowered"
            else:
                reason = "undecided"
        set_("verdict", verdict)
        set_("reason", reason)
        set_("power", pw)
        set_("n_needed", need)

    @property
    def citation(self) -> str:
        """``"paper, section"`` (the paper alone when there is no section)."""
        return f"{self.paper}, {self.section}" if self.section else self.paper

    def to_dict(self) -> dict:
        """The claim's JSON record (``docs/methods.md``, "Claims and nulls"; non-finite numbers become ``None``)."""
        return {"notebook": self.notebook, "id": self.id, "kind": self.kind, "paper": self.paper,
                "section": self.section, "family": self.family, "statement": self.statement,
                "measure": self.measure, "estimate": _num(self.estimate),
                "ci": [_num(self.ci[0]), _num(self.ci[1])], "null": self.null.to_dict(),
                "p_value": _num(self.p_value), "p_adjusted": _num(self.p_adjusted), "holm_factor": self.holm_factor,
                "p_floor": _num(self.p_floor), "p_opposite": _num(self.p_opposite), "direction": self.direction,
                "reference": self.reference, "sesoi": self.sesoi, "sesoi_reason": self.sesoi_reason,
                "paper_effect": self.paper_effect, "n": self.n, "unit": self.unit, "power": _num(self.power),
                "n_needed": self.n_needed, "alpha": self.alpha, "controls": list(self.controls),
                "control_verdicts": dict(self.control_verdicts), "seeds_disagree": self.seeds_disagree,
                "independent_seeds": self.independent_seeds,
                "verdict": self.verdict, "reason": self.reason, "note": self.note}

    @classmethod
    def from_dict(cls, record: Mapping) -> Claim:
        """The claim of a :meth:`to_dict` record (``None`` numbers are read as NaN). The verdict is computed again and
        must equal the record's (a :class:`ClaimError` otherwise: the record was edited, or written by another
        verdict rule)."""
        def num(v):
            return float("nan") if v is None else float(v)

        where = f"{record.get('notebook', '?')}: claim {record.get('id', '?')!r}"
        try:
            claim = cls(record["notebook"], record["id"], record["paper"], record["statement"], record["measure"],
                        num(record["estimate"]), (num(record["ci"][0]), num(record["ci"][1])),
                        Null.from_dict(record["null"]), record["direction"], record.get("reference", 0.0),
                        record.get("p_value"), record.get("sesoi"), record.get("alpha", 0.05),
                        record.get("note", ""), record.get("section", ""), record.get("kind", "finding"),
                        record.get("sesoi_reason", ""), record.get("family", ""),
                        tuple(record.get("controls", ())), record.get("n"), record.get("unit", ""),
                        record.get("paper_effect", ""), record.get("p_floor"), record.get("p_opposite"),
                        record.get("p_adjusted"), record.get("holm_factor", 1),
                        record.get("control_verdicts", {}), record.get("seeds_disagree", False),
                        record.get("independent_seeds", True))
        except KeyError as e:
            raise ClaimError(f"{where}: the record has no {e.args[0]!r} field") from None
        if "verdict" in record and record["verdict"] != claim.verdict:
            raise ClaimError(f"{where}: the record says {record['verdict']!r} but its numbers give "
                             f"{claim.verdict!r}; verdicts are computed, never edited")
        return claim


class Claims:
    """The claims of one notebook, by id, in registration order."""

    def __init__(self, notebook: str, *, independent_seeds: bool = True):
        if not notebook or not isinstance(notebook, str):
            raise ClaimError("Claims needs the notebook's name, e.g. Claims('04_grpo_dynamics')")
        self.notebook = notebook
        self.independent_seeds = independent_seeds  # the notebook's seeds replicate independently (Claim)
        self._claims: dict[str, Claim] = {}

    def add(self, id: str, *, paper: str, statement: str, measure: str, estimate: float, ci: Sequence[float],
            null: Null | None, direction: int, reference: float = 0.0, p_value: float | None = None,
            sesoi: float | None = None, alpha: float = 0.05, note: str = "", section: str = "",
            kind: str = "finding", **declared) -> Claim:
        """Register one claim (see :class:`Claim`: ``declared`` takes its other fields, e.g. ``sesoi_reason``,
        ``controls``, ``n``, ``unit``, ``paper_effect``, ``p_floor``, ``p_opposite``); its verdict is computed here.
        Returns the claim."""
        if not id or not isinstance(id, str):
            raise ClaimError(f"{self.notebook}: a claim needs a string id, got {id!r}")
        if id in self._claims:
            raise ClaimError(f"{self.notebook}: duplicate claim id {id!r}; every claim of a notebook needs its own id")
        computed = {"verdict", "reason", "power", "n_needed", "notebook", "id"}
        if computed & set(declared) or "margin" in declared:
            bad = sorted(computed & set(declared)) or ["margin"]
            raise ClaimError(f"{self.notebook}: claim {id!r}: {bad[0]!r} cannot be passed"
                             + (" (an equivalence margin is the claim's sesoi)" if bad == ["margin"] else
                                " (it is computed)"))
        try:
            declared.setdefault("independent_seeds", self.independent_seeds)
            claim = Claim(self.notebook, id, paper, statement, measure, estimate, ci, null, direction, reference,
                          None if p_value is None else float(p_value), sesoi, alpha, note, section, kind, **declared)
        except TypeError as e:
            raise ClaimError(f"{self.notebook}: claim {id!r}: {e}") from None
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
