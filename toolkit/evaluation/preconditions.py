"""Study preconditions: before a study interprets a model, it checks that the model has the behaviour under study.

A precondition is a ``check`` claim (:data:`toolkit.evaluation.claims.KINDS`) whose id starts with :data:`PREFIX`
(``"precondition:enough-pairs:arithmetic"``): a count the study needs at least ``threshold`` of (pairs for EAP,
refused marked requests for RIM), exact (the interval is the count itself) against a ``target`` null, so it
*reproduces* when met and *contradicts* when not. The notebook saves its preconditions as soon as they are measured
(:func:`toolkit.run.results.save_claims`) and calls :func:`require`, which stops it with
:class:`PreconditionFailed` naming each unmet one; the scorecard (:mod:`toolkit.run.report`) then says "precondition
failed" for that notebook's findings instead of verdicts built on no behaviour. When they are met the notebook goes
on and registers them with its findings (:func:`merged`).

Thresholds: :func:`share_threshold` (a share of what was offered, at least :data:`MIN_COUNT`).
"""

from __future__ import annotations

import dataclasses
import math

from toolkit.evaluation.claims import Claim, Claims, Null

PREFIX = "precondition:"
MIN_COUNT = 2  # the least count any precondition asks: one unit gives no resample, no interval


class PreconditionFailed(RuntimeError):
    """A study's precondition is not met: the model lacks the behaviour the study interprets. ``claims``: the
    notebook's preconditions (the failed ones have verdict ``contradicts``)."""

    def __init__(self, claims: Claims):
        self.claims = claims
        lines = [f"{c.id}: {c.measure} = {c.estimate:g}, needs at least {math.ceil(c.null.summary['threshold'])}"
                 + (f" ({c.note})" if c.note else "") for c in failed(claims)]
        super().__init__(f"{claims.notebook}: precondition failed, the model lacks the behaviour this study "
                         "interprets; its findings are not measured:\n  " + "\n  ".join(lines))


def is_precondition(claim: Claim) -> bool:
    """True for a precondition claim (a ``check`` whose id starts with :data:`PREFIX`)."""
    return claim.kind == "check" and claim.id.startswith(PREFIX)


def share_threshold(offered: int, share: float) -> int:
    """At least ``share`` of ``offered`` (rounded up), and at least :data:`MIN_COUNT`."""
    return max(MIN_COUNT, math.ceil(share * offered - 1e-9))


def at_least(claims: Claims, name: str, *, count: int, threshold: int, paper: str, section: str, statement: str,
             measure: str, unit: str, note: str = "") -> Claim:
    """Register ``precondition:<name>``: ``count`` (an exact count) at least ``threshold``. Met → *reproduces*,
    unmet → *contradicts*."""
    count, threshold = int(count), int(threshold)
    return claims.add(PREFIX + name, kind="check", paper=paper, section=section, statement=statement,
                      measure=measure, estimate=float(count), ci=(float(count), float(count)), direction=1,
                      reference=threshold - 0.5, n=count, unit=unit, note=note,
                      null=Null.target(threshold - 0.5, f"at least {threshold} {unit} (half a count below, as a "
                                                        "count is exact)"))


def failed(claims: Claims) -> list[Claim]:
    """The preconditions of ``claims`` that are not met."""
    return [c for c in claims if is_precondition(c) and c.verdict != "reproduces"]


def require(claims: Claims) -> Claims:
    """``claims`` when every precondition in it is met, else :class:`PreconditionFailed` naming the unmet ones."""
    if failed(claims):
        raise PreconditionFailed(claims)
    return claims


def merged(first: Claims, then: Claims) -> Claims:
    """One registry: ``first``'s claims (the preconditions), then ``then``'s, under ``then``'s notebook."""
    out = Claims(then.notebook, independent_seeds=then.independent_seeds)
    init = [f.name for f in dataclasses.fields(Claim) if f.init and f.name not in ("notebook", "id")]
    for c in (*first, *then):
        out.add(c.id, **{name: getattr(c, name) for name in init})
    return out
