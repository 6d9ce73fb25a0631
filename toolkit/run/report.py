"""The run's scorecard: ``claims.json`` (every claim of every notebook) and ``REPORT.md``.

Each notebook writes ``<run_dir>/<notebook>.claims.json`` (:func:`toolkit.run.results.save_claims`). After a run,
:func:`write_report` gathers them and

1. with ``--seeds N`` (every seed in its own folder ``seed-<k>/``) pools the seeds into one pre-declared analysis per
   claim (:func:`aggregate`, :func:`toolkit.evaluation.verdicts.pool`: fixed-effect mean and Fisher's p over
   independent seeds; no narrowing where a notebook's seeds are not independent), keeping every seed's estimate and
   verdict for the table; seeds that did not finish are listed as missing;
2. adjusts each paper's findings as one family (:func:`adjust`, Holm);
3. sets each finding's verdict on its controls beside it (:func:`with_controls`: a finding that reproduces on a
   random-weights model is an ``artifact``);
4. renders ``REPORT.md``: the headline counts findings by verdict and reason, then one table per paper, then the
   method checks and the organism targets in their own sections.

Everything here is typed: the files are read with :meth:`toolkit.evaluation.claims.Claim.from_dict`; a claim over
seeds is a :class:`SeededClaim` (the pooled :class:`~toolkit.evaluation.claims.Claim` and its :class:`Seeds`).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from toolkit.core.io import atomic_write_json, atomic_write_text, read_json
from toolkit.evaluation import verdicts as rule
from toolkit.evaluation.claims import Claim, Null
from toolkit.evaluation.preconditions import is_precondition

CLAIMS_SUFFIX = ".claims.json"


def read_claims(path: Path) -> list[Claim]:
    """The claims of one ``*.claims.json`` file (a list of :meth:`~toolkit.evaluation.claims.Claim.to_dict`
    records); :class:`~toolkit.core.io.FileFormatError` names a file that is not UTF-8 or not JSON."""
    return [Claim.from_dict(record) for record in read_json(path, what="claims file")]


def collect(folder: Path) -> list[Claim]:
    """Every claim written by the notebooks of one run folder, in notebook order."""
    claims: list[Claim] = []
    for path in sorted(Path(folder).glob(f"*{CLAIMS_SUFFIX}")):
        claims.extend(read_claims(path))
    return claims


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None


@dataclass(frozen=True)
class Seeds:
    """One claim over the ``seeds`` a run asked for (``n`` of them): each seed's verdict and estimate (``None``
    where the seed is ``missing`` or had no estimate), and the seeds that did not finish."""

    n: int
    seeds: list[int]
    verdicts: list[str | None]
    estimates: list[float | None]
    missing: list[int]

    def to_dict(self) -> dict:
        return {"n": self.n, "seeds": list(self.seeds), "verdicts": list(self.verdicts),
                "estimates": list(self.estimates), "missing": list(self.missing)}


@dataclass(frozen=True)
class SeededClaim:
    """A claim over several seeds: the pooled ``claim`` (one analysis over every seed that has it) and the per-seed
    record ``seeds``."""

    claim: Claim
    seeds: Seeds

    @property
    def verdict(self) -> str:
        return self.claim.verdict

    def to_dict(self) -> dict:
        """The pooled claim's record with a ``seeds`` field."""
        return {**self.claim.to_dict(), "seeds": self.seeds.to_dict()}


def pooled(claims: Sequence[Claim]) -> Claim:
    """One claim from the same claim on several seeds (:func:`toolkit.evaluation.verdicts.pool`): the first seed's
    record with the pooled estimate, interval and p-values (both ends), ``n`` summed over independent seeds,
    ``seeds_disagree`` when seeds decided opposite ways, and each in-study control's verdict (e.g. notebook 06's
    weight-noise control) *reproduces* where it reproduced on at least half the seeds that ran it. One seed: that
    seed's claim."""
    first = claims[0]
    if len(claims) == 1:
        return first
    independent = all(c.independent_seeds for c in claims)
    est, ci, p = rule.pool([c.estimate for c in claims], [c.ci for c in claims], [c.p_value for c in claims],
                           independent=independent)
    opposite = None
    if all(c.p_opposite is not None for c in claims):
        opposite = rule.pool([c.estimate for c in claims], [c.ci for c in claims],
                             [c.p_opposite for c in claims], independent=independent)[2]
    floor = None
    if p is not None and all(c.p_floor is not None for c in claims):
        floor = rule.pool([c.estimate for c in claims], [c.ci for c in claims], [c.p_floor for c in claims],
                          independent=independent)[2]
    n = sum(c.n for c in claims) if independent and all(c.n for c in claims) else first.n
    decided = {c.verdict for c in claims}
    controls = {}
    for name in dict.fromkeys(k for c in claims for k in c.control_verdicts):
        ran = [c.control_verdicts[name] for c in claims if name in c.control_verdicts]
        controls[name] = "reproduces" if 2 * ran.count("reproduces") >= len(ran) else "inconclusive"
    return replace(first, estimate=est, ci=ci, p_value=p, p_opposite=opposite, p_floor=floor, n=n,
                   p_adjusted=None, holm_factor=1, control_verdicts=controls,
                   seeds_disagree={"reproduces", "contradicts"} <= decided)


def aggregate(per_seed: Mapping[int, Sequence[Claim]], expected: Sequence[int]) -> list[SeededClaim]:
    """Pool the claims of several seeds (``{seed: claims}``) into one :class:`SeededClaim` per claim (:func:`pooled`
    over the seeds that have it), in the order the seeds first show them."""
    order: list[tuple[str, str]] = []
    by_seed: dict[tuple[str, str], dict[int, Claim]] = {}
    for seed in sorted(per_seed):
        for claim in per_seed[seed]:
            key = (claim.notebook, claim.id)
            if key not in by_seed:
                order.append(key)
            by_seed.setdefault(key, {})[seed] = claim
    missing = [s for s in expected if s not in per_seed]
    out = []
    for key in order:
        seen = by_seed[key]
        verdicts = [seen[s].verdict if s in seen else None for s in expected]
        estimates = [_finite(seen[s].estimate) if s in seen else None for s in expected]
        out.append(SeededClaim(pooled([seen[s] for s in sorted(seen)]),
                               Seeds(len(expected), list(expected), verdicts, estimates, missing)))
    return out


def _claim(c: Claim | SeededClaim) -> Claim:
    return c if isinstance(c, Claim) else c.claim


def _with_claim(c: Claim | SeededClaim, claim: Claim) -> Claim | SeededClaim:
    return claim if isinstance(c, Claim) else SeededClaim(claim, c.seeds)


def adjust(claims: Sequence[Claim | SeededClaim]) -> list[Claim | SeededClaim]:
    """Each family's findings (one family per paper) with Holm-adjusted p-values
    (:func:`~toolkit.evaluation.verdicts.holm`; the verdicts use them). Holm rather than Benjamini–Hochberg: each
    finding's verdict is read on its own ("this finding reproduces"), so the family-wise error is the promise, and
    the families are small."""
    out = list(claims)
    families: dict[str, list[int]] = {}
    for i, c in enumerate(out):
        if _claim(c).kind == "finding":
            families.setdefault(_claim(c).family, []).append(i)
    for members in families.values():
        adjusted, factors = rule.holm([_claim(out[i]).p_value for i in members])
        for i, p, k in zip(members, adjusted, factors):
            out[i] = _with_claim(out[i], replace(_claim(out[i]), p_adjusted=p, holm_factor=k))
    return out


def with_controls(claims: Sequence[Claim | SeededClaim], controls: Mapping[str, Sequence[Claim]]
                  ) -> list[Claim | SeededClaim]:
    """Each finding with its verdict on every control that ran (``{control: that run's adjusted claims}``), for the
    controls it declares; a finding that reproduces on one becomes an ``artifact``."""
    by_control = {name: {(c.notebook, c.id): c.verdict for c in cs} for name, cs in controls.items()}
    out = []
    for c in claims:
        claim = _claim(c)
        seen = {name: v[(claim.notebook, claim.id)] for name, v in by_control.items()
                if name in claim.controls and (claim.notebook, claim.id) in v}
        merged = {**claim.control_verdicts, **seen}
        out.append(_with_claim(c, replace(claim, control_verdicts=merged)) if seen else c)
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _null_text(null: Null) -> str:
    s = null.summary
    if null.kind == "target":
        return f"target {_fmt(s.get('threshold'))}"
    if {"q025", "q975"} <= set(s):
        band = f"mean {_fmt(s.get('mean'))}, 95% [{_fmt(s['q025'])}, {_fmt(s['q975'])}]"
    else:
        band = ", ".join(f"{k} {_fmt(v)}" for k, v in s.items())
    return f"{null.kind} (n={null.n}): {band}" if band else f"{null.kind} (n={null.n})"


def _figure_links(folder: Path, notebook: str, prefix: str) -> str:
    figures = sorted((folder / prefix / "figures").glob(f"{notebook[:2]}_*.png")) if (folder / prefix).is_dir() \
        else []
    return " ".join(f"[{p.stem}]({prefix}/figures/{p.name})" for p in figures)


VERDICT_MARK = {"reproduces": "✅ reproduces", "contradicts": "❌ contradicts", "inconclusive": "❔ inconclusive",
                "artifact": "⚠️ artifact"}
KIND_TITLES = {"check": "Method checks and study preconditions", "target": "Organism targets (its specification)"}


PRECONDITION_FAILED = "⛔ precondition failed"


def failed_preconditions(claims: Iterable[Claim]) -> dict[str, list[Claim]]:
    """``{notebook: its unmet preconditions}`` (:mod:`toolkit.evaluation.preconditions`): that notebook stopped, or
    its findings rest on a model without the behaviour, so the scorecard shows no verdict for them."""
    out: dict[str, list[Claim]] = {}
    for c in claims:
        if is_precondition(c) and c.verdict != "reproduces":
            out.setdefault(c.notebook, []).append(c)
    return out


def verdict_text(c: Claim) -> str:
    """The verdict with its reason: ``❔ inconclusive (underpowered: n ≈ 300 would reach 0.8)``."""
    text = VERDICT_MARK.get(c.verdict, c.verdict)
    reason = c.reason
    if c.verdict == "artifact":
        reason = f"reproduces on the {reason} control"
    elif reason == "underpowered" and c.n_needed:
        reason = f"underpowered: n ≈ {c.n_needed} {c.unit or 'units'} would reach power 0.8"
    return f"{text} ({reason})" if reason else text


def claims_markdown(claims: Iterable[Claim]) -> str:
    """One notebook's claims as a table (shown where the notebook saves them): id and finding, paper and section,
    measurement with its interval, SESOI, null, p and verdict with its reason (p before the family's adjustment,
    which the run's scorecard makes)."""
    lines = ["| claim | paper | measurement | SESOI | null | p | verdict |", "|---|---|---|---|---|---|---|"]
    for c in claims:
        lo, hi = c.ci
        lines.append(f"| **{c.id}** ({c.kind}): {c.statement} | {c.citation} | {c.measure}: {_fmt(c.estimate)} "
                     f"[{_fmt(lo)}, {_fmt(hi)}] | {_fmt(c.sesoi)} | {_null_text(c.null)} | {_fmt(c.p_value)} | "
                     f"{verdict_text(c)} |")
    return "\n".join(lines)


def _row(c: Claim, seeds: Seeds | None, stopped: bool = False) -> str:
    """One finding's row of ``REPORT.md`` (``stopped``: its notebook's precondition failed, so no verdict)."""
    measured = f"{c.measure}: {_fmt(c.estimate)} [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]"
    if c.n:
        measured += f" (n = {c.n} {c.unit})".rstrip()
    where = f" ({c.section})" if c.section else ""
    statement = f"**{c.id}**{where}: {c.statement}"
    if c.note:
        statement += f" *Organism: {c.note}*"
    sesoi = f"{_fmt(c.sesoi)}: {c.sesoi_reason}" if c.sesoi is not None else "–"
    p = f"{_fmt(c.p_value)} / {_fmt(c.p_adjusted)}" if c.kind == "finding" else _fmt(c.p_value)
    controls = ", ".join(f"{name}: {c.control_verdicts.get(name, 'not run')}" for name in c.controls) or "–"
    row = (f"| {c.notebook} | {statement} | {c.paper_effect or '–'} | {measured} | {sesoi} | {_fmt(c.power, 2)} | "
           f"{_null_text(c.null)} | {p} | {controls} | **{PRECONDITION_FAILED if stopped else verdict_text(c)}** |")
    if seeds:
        row += " " + " ".join(f"{v or 'missing'} ({_fmt(e)})" for v, e in zip(seeds.verdicts, seeds.estimates)) + " |"
    return row.replace("\n", " ")


def headline(claims: Sequence[Claim]) -> str:
    """``N findings: x reproduce, y contradict, z inconclusive (a underpowered, b floor, …); k artifacts caught by
    controls`` (findings only), then the notebooks whose preconditions failed (their findings are not counted)."""
    stopped = failed_preconditions(claims)
    if stopped:
        kept = [c for c in claims if c.notebook not in stopped]
        return headline(kept).removesuffix(".") + f"; {PRECONDITION_FAILED[2:]} in {', '.join(stopped)} (not counted)."
    findings = [c for c in claims if c.kind == "finding"]
    count = {v: sum(c.verdict == v for c in findings) for v in rule.VERDICTS}
    reasons = {r: sum(c.verdict == "inconclusive" and c.reason == r for c in findings) for r in rule.REASONS}
    why = ", ".join(f"{n} {r}" for r, n in reasons.items() if n)
    contra = {r: sum(c.verdict == "contradicts" and c.reason == r for c in findings) for r in rule.CONTRADICT_REASONS}
    how = ", ".join(f"{n} {r}" for r, n in contra.items() if n)
    return (f"{len(findings)} findings: {count['reproduces']} reproduce, {count['contradicts']} contradict"
            + (f" ({how})" if how else "") + f", {count['inconclusive']} inconclusive" + (f" ({why})" if why else "")
            + f"; {count['artifact']} artifact{'s' * (count['artifact'] != 1)} caught by controls.")


RULE_TEXT = ("Verdicts are computed from the numbers (toolkit.evaluation.verdicts; docs/methods.md, \"Claims and "
             "nulls\"): a finding *reproduces* when it is significant against its null in the paper's direction "
             "(Holm-adjusted within its paper's family) with an estimate of at least half its smallest effect of "
             "interest (SESOI); it *contradicts* when its interval lies wholly below that boundary (*absent*) or on "
             "the other side of the null (*opposite*), or, for a placebo-set claim, when its rank from the other end "
             "is significant; else it is *inconclusive*, with the reason. A finding that reproduces on one of its "
             "controls is an *artifact*. The calibration of every path of this rule is in docs/calibration.md.")


def render(claims: Sequence[Claim] | Sequence[SeededClaim], folder: Path, *, figures_prefix: str = ".",
           title: str = "Reproduction scorecard", missing: Sequence[int] = ()) -> str:
    """``REPORT.md``: the headline over findings, one table per paper, then checks and targets."""
    rows = [(c, None) if isinstance(c, Claim) else (c.claim, c.seeds) for c in claims]
    lines = [f"# {title}", "", "**" + headline([c for c, _ in rows]) + "**", "", RULE_TEXT, ""]
    stopped = failed_preconditions(c for c, _ in rows)
    for notebook, unmet in stopped.items():
        what = "; ".join(f"{c.id} ({c.measure}: {_fmt(c.estimate)}, needs at least "
                         f"{_fmt(c.null.summary.get('threshold', math.nan) + 0.5)})" for c in unmet)
        lines += [f"**{PRECONDITION_FAILED[2:].capitalize()} — {notebook}**: {what}. The model lacks the behaviour "
                  "this study interprets: its findings are shown without verdicts.", ""]
    seeded = any(seeds is not None for _, seeds in rows)
    if seeded and not missing:
        missing = sorted({s for _, seeds in rows if seeds for s in seeds.missing})
    if seeded:
        lines += ["Seeds are pooled into one analysis per claim (fixed-effect mean and Fisher's p over independent "
                  "seeds; the mean interval and twice the mean p where a notebook's seeds overlap); the last "
                  "column gives each seed's own verdict and estimate.", ""]
    if missing:
        lines += [f"**Missing seeds** (did not finish): {', '.join(map(str, missing))}.", ""]
    groups: dict[str, list] = {}
    for row in rows:
        c = row[0]
        groups.setdefault(c.paper if c.kind == "finding" else KIND_TITLES[c.kind], []).append(row)
    order = [g for g in groups if g not in KIND_TITLES.values()] + [t for t in KIND_TITLES.values() if t in groups]
    for name in order:
        group = groups[name]
        lines += [f"## {name}", ""]
        if name not in KIND_TITLES.values():
            lines += [headline([c for c, _ in group]), ""]
        head = ("| notebook | claim (paper's finding, our words) | paper's effect | measurement | SESOI | "
                "power | null | p / adjusted | controls | verdict |")
        lines += [head + (" seeds |" if seeded else ""), "|" + "---|" * (11 if seeded else 10)]
        lines += [_row(c, seeds, stopped=c.notebook in stopped and c.kind == "finding") for c, seeds in group]
        notebooks = sorted({c.notebook for c, _ in group})
        links = [f"{nb}: {_figure_links(folder, nb, figures_prefix)}" for nb in notebooks]
        lines += ["", "Figures: " + "; ".join(links), ""]
    return "\n".join(lines) + "\n"


def scorecard(claims: Sequence[Claim] | Sequence[SeededClaim],
              controls: Mapping[str, Sequence[Claim]] | None = None) -> list[Claim | SeededClaim]:
    """The claims as the scorecard shows them: families adjusted, then the controls' verdicts set beside each
    finding (the controls' own claims adjusted the same way)."""
    out = adjust(claims)
    if controls:
        out = with_controls(out, {name: [_claim(c) for c in adjust(cs)] for name, cs in controls.items()})
    return out


def write_report(folder: Path, claims: Sequence[Claim] | Sequence[SeededClaim] | None = None, *,
                 figures_prefix: str = ".", missing: Sequence[int] = (),
                 controls: Mapping[str, Path] | None = None) -> tuple[Path, Path]:
    """Write ``claims.json`` (every claim's record) and ``REPORT.md`` into ``folder`` (claims gathered from it unless
    given); ``controls`` names the run folders of the controls (``{"random": folder / "control-random"}``)."""
    folder = Path(folder)
    claims = collect(folder) if claims is None else claims
    ran = {name: collect(Path(path)) for name, path in (controls or {}).items() if Path(path).is_dir()}
    final = scorecard(claims, ran)
    stopped = failed_preconditions(_claim(c) for c in final)
    json_path = atomic_write_json(folder / "claims.json", [
        {**c.to_dict(), **({"precondition_failed": True} if _claim(c).kind == "finding" and _claim(c).notebook in
                           stopped else {})} for c in final])
    md_path = atomic_write_text(folder / "REPORT.md", render(final, folder, figures_prefix=figures_prefix,
                                                             missing=missing))
    return json_path, md_path


def write_seeds_report(folder: Path, seeds: Sequence[int], *,
                       controls: Mapping[str, Path] | None = None) -> tuple[Path, Path]:
    """Pool ``seed-<k>/<notebook>.claims.json`` of the seeds that finished into ``folder``'s scorecard."""
    folder = Path(folder)
    per_seed = {s: collect(folder / f"seed-{s}") for s in seeds if (folder / f"seed-{s}").is_dir()}
    per_seed = {s: cs for s, cs in per_seed.items() if cs}
    missing = [s for s in seeds if s not in per_seed]
    claims = aggregate(per_seed, list(seeds))
    prefix = f"seed-{min(per_seed)}" if per_seed else "."
    return write_report(folder, claims, figures_prefix=prefix, missing=missing, controls=controls)
