"""The run's scorecard: ``claims.json`` (every claim of every notebook) and ``REPORT.md`` (one row per claim).

Each notebook writes ``<run_dir>/<notebook>.claims.json`` (:func:`toolkit.run.results.save_claims`). After a run,
:func:`write_report` gathers them into ``claims.json`` and renders ``REPORT.md``, grouped by paper, with links to
the notebook's figures. With ``--seeds N`` every seed has its own folder ``seed-<k>/`` with its own scorecard, and
:func:`aggregate` combines them: per claim the verdict on every seed, the estimates' mean with a t-interval across
seeds, and an overall verdict that is the seeds' common verdict when they all agree and ``inconclusive`` otherwise.
Seeds that did not finish are listed as missing.

Everything here is typed: the files are read with :meth:`toolkit.evaluation.claims.Claim.from_dict`, a claim over
seeds is a :class:`SeededClaim` (the shown seed's :class:`~toolkit.evaluation.claims.Claim`, the overall verdict and
its :class:`Seeds`), and the tables are grouped by each claim's ``paper`` with its ``section`` beside the claim.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from toolkit.core.io import atomic_write_json, atomic_write_text
from toolkit.evaluation.claims import Claim, Null

CLAIMS_SUFFIX = ".claims.json"


def read_claims(path: Path) -> list[Claim]:
    """The claims of one ``*.claims.json`` file (a list of :meth:`~toolkit.evaluation.claims.Claim.to_dict`
    records)."""
    return [Claim.from_dict(record) for record in json.loads(Path(path).read_text())]


def collect(folder: Path) -> list[Claim]:
    """Every claim written by the notebooks of one run folder, in notebook order."""
    claims: list[Claim] = []
    for path in sorted(Path(folder).glob(f"*{CLAIMS_SUFFIX}")):
        claims.extend(read_claims(path))
    return claims


def _finite(v: float) -> float | None:
    return v if math.isfinite(v) else None


@dataclass(frozen=True)
class Seeds:
    """One claim over the ``seeds`` a run asked for (``n`` of them): each seed's verdict and estimate (``None``
    where the seed is ``missing`` or had no estimate), the estimates' ``mean`` with a 95% t-interval ``ci`` across
    seeds (``None`` with fewer than one or two estimates), the seed whose claim is ``shown`` (the first that has it)
    and how many seeds ``held`` the overall verdict (the largest agreeing group when it is inconclusive)."""

    n: int
    seeds: list[int]
    shown: int
    verdicts: list[str | None]
    estimates: list[float | None]
    mean: float | None
    ci: tuple[float | None, float | None]
    missing: list[int]
    held: int

    def to_dict(self) -> dict:
        return {"n": self.n, "seeds": list(self.seeds), "shown": self.shown, "verdicts": list(self.verdicts),
                "estimates": list(self.estimates), "mean": self.mean, "ci": list(self.ci),
                "missing": list(self.missing), "held": self.held}


@dataclass(frozen=True)
class SeededClaim:
    """A claim over several seeds: the shown seed's ``claim``, the overall ``verdict`` (the seeds' common verdict,
    else ``inconclusive``) and the per-seed record ``seeds``."""

    claim: Claim
    verdict: str
    seeds: Seeds

    def to_dict(self) -> dict:
        """The claim's record with the overall verdict and a ``seeds`` field."""
        return {**self.claim.to_dict(), "verdict": self.verdict, "seeds": self.seeds.to_dict()}


def _across_seeds(estimates: list[float | None]) -> tuple[float | None, tuple[float | None, float | None]]:
    x = np.asarray([e for e in estimates if e is not None and math.isfinite(e)], dtype=float)
    if len(x) == 0:
        return None, (None, None)
    mean = float(x.mean())
    if len(x) < 2:
        return mean, (None, None)
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return mean, (mean - half, mean + half)


def aggregate(per_seed: Mapping[int, Sequence[Claim]], expected: Sequence[int]) -> list[SeededClaim]:
    """Combine the claims of several seeds (``{seed: claims}``) into one :class:`SeededClaim` per claim, in the
    order the seeds first show them."""
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
        present = [v for v in verdicts if v is not None]
        overall = present[0] if present and len(set(present)) == 1 and len(present) == len(expected) \
            else "inconclusive"
        held = sum(v == overall for v in present) if overall != "inconclusive" else \
            max((present.count(v) for v in set(present)), default=0)
        shown = min(seen)
        mean, ci = _across_seeds(estimates)
        out.append(SeededClaim(seen[shown], overall, Seeds(len(expected), list(expected), shown, verdicts, estimates,
                                                           mean, ci, missing, held)))
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


VERDICT_MARK = {"reproduces": "✅ reproduces", "contradicts": "❌ contradicts", "inconclusive": "❔ inconclusive"}


def claims_markdown(claims: Iterable[Claim]) -> str:
    """One notebook's claims as a table (shown where the notebook saves them): id and finding, paper and section,
    measurement with its interval, null, p and verdict."""
    lines = ["| claim | paper | measurement | null | p | verdict |", "|---|---|---|---|---|---|"]
    for c in claims:
        lo, hi = c.ci
        lines.append(f"| **{c.id}**: {c.statement} | {c.citation} | {c.measure}: {_fmt(c.estimate)} "
                     f"[{_fmt(lo)}, {_fmt(hi)}] | {_null_text(c.null)} | {_fmt(c.p_value)} | "
                     f"{VERDICT_MARK.get(c.verdict, c.verdict)} |")
    return "\n".join(lines)


def _row(c: Claim, verdict: str, seeds: Seeds | None) -> str:
    """One claim's row of ``REPORT.md``: ``verdict`` is the overall one, ``seeds`` its record over seeds."""
    first = f"seed {seeds.shown} " if seeds else ""
    measured = f"{c.measure}: {first}{_fmt(c.estimate)} [{_fmt(c.ci[0])}, {_fmt(c.ci[1])}]"
    if seeds and seeds.mean is not None:
        measured += f"; over seeds {_fmt(seeds.mean)} [{_fmt(seeds.ci[0])}, {_fmt(seeds.ci[1])}]"
    where = f" ({c.section})" if c.section else ""
    statement = f"**{c.id}**{where}: {c.statement}"
    if c.note:
        statement += f" *Organism: {c.note}*"
    row = (f"| {c.notebook} | {statement} | {measured} | {_null_text(c.null)} | {_fmt(c.p_value)} | "
           f"**{verdict}** |")
    if seeds:
        row += " " + " ".join(v or "missing" for v in seeds.verdicts) + " |"
    return row.replace("\n", " ")


def render(claims: Sequence[Claim] | Sequence[SeededClaim], folder: Path, *, figures_prefix: str = ".",
           title: str = "Reproduction scorecard", missing: Sequence[int] = ()) -> str:
    """``REPORT.md``: a count of verdicts, then one table per paper (``Claim.paper``) with one row per claim."""
    rows = [(c, c.verdict, None) if isinstance(c, Claim) else (c.claim, c.verdict, c.seeds) for c in claims]
    counts = {v: sum(verdict == v for _, verdict, _ in rows) for v in ("reproduces", "contradicts", "inconclusive")}
    lines = [f"# {title}", "",
             f"{len(rows)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             "Verdicts are computed from the numbers (toolkit.evaluation.claims.verdict): *reproduces* when the "
             "effect is in the paper's direction and significant against its null, *contradicts* when the interval "
             "excludes the paper's direction or shows no effect of the paper's size, else *inconclusive*.", ""]
    seeded = any(seeds is not None for _, _, seeds in rows)
    if seeded and not missing:
        missing = sorted({s for _, _, seeds in rows if seeds for s in seeds.missing})
    if seeded:
        lines += ["Across seeds a claim's verdict is the seeds' common verdict, *inconclusive* when they differ; "
                  "the estimate column gives the mean over seeds with a 95% t-interval.", ""]
    if missing:
        lines += [f"**Missing seeds** (did not finish): {', '.join(map(str, missing))}.", ""]
    papers: dict[str, list] = {}
    for row in rows:
        papers.setdefault(row[0].paper, []).append(row)
    for paper, group in papers.items():
        lines += [f"## {paper}", ""]
        head = "| notebook | claim (paper's finding, our words) | organism measurement | null | p | verdict |"
        lines += [head + (" seeds |" if seeded else ""), "|" + "---|" * (7 if seeded else 6)]
        lines += [_row(*row) for row in group]
        figures = {c.notebook for c, _, _ in group}
        links = [f"{nb}: {_figure_links(folder, nb, figures_prefix)}" for nb in sorted(figures)]
        lines += ["", "Figures: " + "; ".join(links), ""]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, claims: Sequence[Claim] | Sequence[SeededClaim] | None = None, *,
                 figures_prefix: str = ".", missing: Sequence[int] = ()) -> tuple[Path, Path]:
    """Write ``claims.json`` (every claim's record) and ``REPORT.md`` into ``folder`` (claims gathered from it unless
    given)."""
    folder = Path(folder)
    claims = collect(folder) if claims is None else claims
    json_path = atomic_write_json(folder / "claims.json", [c.to_dict() for c in claims])
    md_path = atomic_write_text(folder / "REPORT.md", render(claims, folder, figures_prefix=figures_prefix,
                                                             missing=missing))
    return json_path, md_path


def write_seeds_report(folder: Path, seeds: Sequence[int]) -> tuple[Path, Path]:
    """Aggregate ``seed-<k>/claims.json`` of the seeds that finished into ``folder``'s scorecard."""
    folder = Path(folder)
    per_seed = {s: read_claims(folder / f"seed-{s}" / "claims.json") for s in seeds
                if (folder / f"seed-{s}" / "claims.json").exists()}
    missing = [s for s in seeds if s not in per_seed]
    claims = aggregate(per_seed, list(seeds))
    prefix = f"seed-{min(per_seed)}" if per_seed else "."
    return write_report(folder, claims, figures_prefix=prefix, missing=missing)
