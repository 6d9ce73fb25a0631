"""The run's scorecard: ``claims.json`` (every claim of every notebook) and ``REPORT.md`` (one row per claim).

Each notebook writes ``<run_dir>/<notebook>.claims.json`` (:func:`toolkit.run.results.save_claims`). After a run,
:func:`write_report` gathers them into ``claims.json`` and renders ``REPORT.md``, grouped by paper, with links to
the notebook's figures. With ``--seeds N`` every seed has its own folder ``seed-<k>/`` with its own scorecard, and
:func:`aggregate` combines them: per claim the verdict on every seed, the estimates' mean with a t-interval across
seeds, and an overall verdict that is the seeds' common verdict when they all agree and ``inconclusive`` otherwise.
Seeds that did not finish are listed as missing.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from toolkit.core.io import atomic_write_json, atomic_write_text

CLAIMS_SUFFIX = ".claims.json"


def collect(folder: Path) -> list[dict]:
    """Every claim written by the notebooks of one run folder, in notebook order."""
    claims: list[dict] = []
    for path in sorted(Path(folder).glob(f"*{CLAIMS_SUFFIX}")):
        claims.extend(json.loads(path.read_text()))
    return claims


def _across_seeds(estimates: list[float]) -> dict:
    x = np.asarray([e for e in estimates if e is not None and math.isfinite(e)], dtype=float)
    if len(x) == 0:
        return {"mean": None, "ci": [None, None]}
    mean = float(x.mean())
    if len(x) < 2:
        return {"mean": mean, "ci": [None, None]}
    from scipy import stats

    half = float(stats.t.ppf(0.975, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return {"mean": mean, "ci": [mean - half, mean + half]}


def aggregate(per_seed: dict[int, list[dict]], expected: Sequence[int]) -> list[dict]:
    """Combine the claims of several seeds (``{seed: claims}``) into one record per claim with a ``seeds`` field."""
    order: list[tuple[str, str]] = []
    first: dict[tuple[str, str], dict] = {}
    by_seed: dict[tuple[str, str], dict[int, dict]] = {}
    for seed in sorted(per_seed):
        for claim in per_seed[seed]:
            key = (claim["notebook"], claim["id"])
            if key not in first:
                order.append(key)
                first[key] = claim
            by_seed.setdefault(key, {})[seed] = claim
    missing = [s for s in expected if s not in per_seed]
    out = []
    for key in order:
        seen = by_seed[key]
        verdicts = [seen[s]["verdict"] if s in seen else None for s in expected]
        estimates = [seen[s]["estimate"] if s in seen else None for s in expected]
        present = [v for v in verdicts if v is not None]
        overall = present[0] if present and len(set(present)) == 1 and len(present) == len(expected) \
            else "inconclusive"
        record = dict(first[key])
        record["verdict"] = overall
        record["seeds"] = {"n": len(expected), "seeds": list(expected), "shown": min(seen), "verdicts": verdicts,
                           "estimates": estimates, **_across_seeds(estimates), "missing": missing,
                           "held": sum(v == overall for v in present) if overall != "inconclusive" else
                           max((present.count(v) for v in set(present)), default=0)}
        out.append(record)
    return out


def _fmt(v, digits: int = 3) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _null_text(null: dict) -> str:
    s = null.get("summary", {})
    if null["kind"] == "target":
        return f"target {_fmt(s.get('threshold'))}"
    if {"q025", "q975"} <= set(s):
        band = f"mean {_fmt(s.get('mean'))}, 95% [{_fmt(s['q025'])}, {_fmt(s['q975'])}]"
    else:
        band = ", ".join(f"{k} {_fmt(v)}" for k, v in s.items())
    return f"{null['kind']} (n={null['n']}): {band}" if band else f"{null['kind']} (n={null['n']})"


def _figure_links(folder: Path, notebook: str, prefix: str) -> str:
    figures = sorted((folder / prefix / "figures").glob(f"{notebook[:2]}_*.png")) if (folder / prefix).is_dir() \
        else []
    return " ".join(f"[{p.stem}]({prefix}/figures/{p.name})" for p in figures)


VERDICT_MARK = {"reproduces": "✅ reproduces", "contradicts": "❌ contradicts", "inconclusive": "❔ inconclusive"}


def claims_markdown(records: list[dict]) -> str:
    """One notebook's claims as a table (shown where the notebook saves them): id and finding, paper, measurement
    with its interval, null, p and verdict."""
    lines = ["| claim | paper | measurement | null | p | verdict |", "|---|---|---|---|---|---|"]
    for c in records:
        lo, hi = c["ci"]
        lines.append(f"| **{c['id']}**: {c['statement']} | {c['paper']} | {c['measure']}: {_fmt(c['estimate'])} "
                     f"[{_fmt(lo)}, {_fmt(hi)}] | {_null_text(c['null'])} | {_fmt(c['p_value'])} | "
                     f"{VERDICT_MARK.get(c['verdict'], c['verdict'])} |")
    return "\n".join(lines)


def render(claims: list[dict], folder: Path, *, figures_prefix: str = ".", title: str = "Reproduction scorecard",
           missing: Sequence[int] = ()) -> str:
    """``REPORT.md``: a count of verdicts, then one table per paper with one row per claim."""
    counts = {v: sum(c["verdict"] == v for c in claims) for v in ("reproduces", "contradicts", "inconclusive")}
    lines = [f"# {title}", "",
             f"{len(claims)} claims: " + ", ".join(f"{n} {v}" for v, n in counts.items()) + ".", "",
             "Verdicts are computed from the numbers (toolkit.evaluation.claims.verdict): *reproduces* when the "
             "effect is in the paper's direction and significant against its null, *contradicts* when the interval "
             "excludes the paper's direction or shows no effect of the paper's size, else *inconclusive*.", ""]
    seeded = any("seeds" in c for c in claims)
    if seeded and not missing:
        missing = sorted({s for c in claims for s in c["seeds"]["missing"]})
    if seeded:
        lines += ["Across seeds a claim's verdict is the seeds' common verdict, *inconclusive* when they differ; "
                  "the estimate column gives the mean over seeds with a 95% t-interval.", ""]
    if missing:
        lines += [f"**Missing seeds** (did not finish): {', '.join(map(str, missing))}.", ""]
    papers: dict[str, list[dict]] = {}
    for c in claims:
        papers.setdefault(c["paper"].split(",")[0].split(" (")[0].strip(), []).append(c)  # the paper, no section
    for paper, rows in papers.items():
        lines += [f"## {paper}", ""]
        head = "| notebook | claim (paper's finding, our words) | organism measurement | null | p | verdict |"
        lines += [head + (" seeds |" if seeded else ""), "|" + "---|" * (7 if seeded else 6)]
        for c in rows:
            ci = c["ci"]
            first = f"seed {c['seeds']['shown']} " if seeded else ""
            measured = f"{c['measure']}: {first}{_fmt(c['estimate'])} [{_fmt(ci[0])}, {_fmt(ci[1])}]"
            if seeded:
                s = c["seeds"]
                measured += (f"; over seeds {_fmt(s['mean'])} [{_fmt(s['ci'][0])}, {_fmt(s['ci'][1])}]"
                             if s["mean"] is not None else "")
            section = c["paper"].split(",", 1)[1].strip() if "," in c["paper"] else ""
            where = f" ({section})" if section else ""
            statement = f"**{c['id']}**{where}: {c['statement']}"
            if c.get("note"):
                statement += f" *Organism: {c['note']}*"
            row = (f"| {c['notebook']} | {statement} | {measured} | {_null_text(c['null'])} | "
                   f"{_fmt(c.get('p_value'))} | **{c['verdict']}** |")
            if seeded:
                row += " " + " ".join(v or "missing" for v in c["seeds"]["verdicts"]) + " |"
            lines.append(row.replace("\n", " "))
        figures = {c["notebook"] for c in rows}
        links = [f"{nb}: {_figure_links(folder, nb, figures_prefix)}" for nb in sorted(figures)]
        lines += ["", "Figures: " + "; ".join(links), ""]
    return "\n".join(lines) + "\n"


def write_report(folder: Path, claims: list[dict] | None = None, *, figures_prefix: str = ".",
                 missing: Sequence[int] = ()) -> tuple[Path, Path]:
    """Write ``claims.json`` and ``REPORT.md`` into ``folder`` (claims gathered from it unless given)."""
    folder = Path(folder)
    claims = collect(folder) if claims is None else claims
    json_path = atomic_write_json(folder / "claims.json", claims)
    md_path = atomic_write_text(folder / "REPORT.md", render(claims, folder, figures_prefix=figures_prefix,
                                                             missing=missing))
    return json_path, md_path


def write_seeds_report(folder: Path, seeds: Sequence[int]) -> tuple[Path, Path]:
    """Aggregate ``seed-<k>/claims.json`` of the seeds that finished into ``folder``'s scorecard."""
    folder = Path(folder)
    per_seed = {s: json.loads((folder / f"seed-{s}" / "claims.json").read_text()) for s in seeds
                if (folder / f"seed-{s}" / "claims.json").exists()}
    missing = [s for s in seeds if s not in per_seed]
    claims = aggregate(per_seed, list(seeds))
    prefix = f"seed-{min(per_seed)}" if per_seed else "."
    return write_report(folder, claims, figures_prefix=prefix, missing=missing)
