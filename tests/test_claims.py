"""Claims: the verdict rule at its boundaries, bad claims, p-values, the JSON round trip of a claim, and the
scorecard read from those records (grouped by paper, aggregated over seeds)."""

import json

import numpy as np
import pytest

from toolkit.evaluation.claims import Claim, ClaimError, Claims, Null, bootstrap_p, empirical_p, verdict
from toolkit.run import report


@pytest.mark.parametrize("estimate, ci, kw, expected", [
    (0.3, (0.1, 0.5), {"direction": 1}, "reproduces"),                        # interval excludes 0 on the paper's side
    (0.3, (0.0, 0.5), {"direction": 1}, "inconclusive"),  # an end at the reference excludes nothing
    (0.3, (-0.1, 0.5), {"direction": 1, "p_value": 0.04}, "reproduces"),      # a p-value decides when given
    (0.3, (0.1, 0.5), {"direction": 1, "p_value": 0.05}, "inconclusive"),     # p exactly at alpha is not significant
    (-0.3, (-0.5, -0.1), {"direction": 1}, "contradicts"),                    # interval on the other side
    (-0.3, (-0.5, 0.0), {"direction": 1}, "inconclusive"),
    (-0.3, (-0.5, -0.1), {"direction": -1}, "reproduces"),
    (0.3, (0.1, 0.5), {"direction": -1}, "contradicts"),
    (0.01, (-0.02, 0.04), {"direction": 1, "margin": 0.05}, "contradicts"),   # equivalence: no effect of that size
    (0.01, (-0.02, 0.05), {"direction": 1, "margin": 0.05}, "inconclusive"),  # the margin's end is not inside it
    (0.93, (0.91, 0.95), {"direction": 1, "reference": 0.9}, "reproduces"),   # a target
    (0.93, (0.89, 0.95), {"direction": 1, "reference": 0.9}, "inconclusive"),
    (0.85, (0.8, 0.89), {"direction": 1, "reference": 0.9}, "contradicts"),
    (0.01, (-0.02, 0.04), {"direction": 0, "margin": 0.05}, "reproduces"),    # the paper reports no effect
    (0.2, (0.1, 0.3), {"direction": 0, "margin": 0.05}, "contradicts"),
    (0.2, (0.1, 0.3), {"direction": 0, "margin": 0.05, "p_value": 0.2}, "inconclusive"),
    (0.02, (-0.1, 0.2), {"direction": 0, "margin": 0.05}, "inconclusive"),
    (float("nan"), (0.1, 0.2), {"direction": 1}, "inconclusive"),
])
def test_verdict_rule_at_its_boundaries(estimate, ci, kw, expected):
    assert verdict(estimate, ci, **kw) == expected


def test_no_effect_claim_needs_a_margin():
    with pytest.raises(ClaimError, match="margin"):
        verdict(0.0, (-1, 1), direction=0)


def _add(claims, id="a", **kw):
    args = dict(paper="P", section="section 1", statement="s", measure="m", estimate=0.5, ci=(0.2, 0.8),
                null=Null.from_samples("bootstrap-resample", [0.1, -0.1, 0.0]), direction=1)
    args.update(kw)
    return claims.add(id, **args)


def test_bad_claims_are_refused_naming_notebook_and_claim():
    claims = Claims("04_grpo_dynamics")
    _add(claims, "x")
    with pytest.raises(ClaimError, match=r"04_grpo_dynamics: duplicate claim id 'x'"):
        _add(claims, "x")
    with pytest.raises(ClaimError, match=r"04_grpo_dynamics: claim 'y' has no null"):
        _add(claims, "y", null=None)
    with pytest.raises(ClaimError, match=r"04_grpo_dynamics: claim 'z' has an unknown null kind 'vibes'"):
        _add(claims, "z", null=Null("vibes"))
    with pytest.raises(ClaimError, match="ci low"):
        _add(claims, "w", ci=(0.8, 0.2))
    with pytest.raises(ClaimError, match="'v'.*margin"):
        _add(claims, "v", direction=0)
    assert list(claims.verdicts()) == ["x"]


def test_verdict_is_computed_not_passed():
    claims = Claims("nb")
    c = _add(claims, estimate=0.5, ci=(0.2, 0.8))
    assert c.verdict == "reproduces" and c.to_dict()["verdict"] == "reproduces"
    with pytest.raises(TypeError):
        claims.add("b", paper="p", statement="s", measure="m", estimate=0.5, ci=(0, 1), null=Null.target(0),
                   direction=1, verdict="reproduces")
    json.dumps(claims.to_records())


def test_empirical_and_bootstrap_p():
    null = np.arange(99.0)  # 0 … 98
    assert empirical_p(98, null) == pytest.approx(2 / 100)  # only itself and the 98 draw are as extreme
    assert empirical_p(200, null) == pytest.approx(1 / 100)
    assert empirical_p(-1, null, direction=-1) == pytest.approx(1 / 100)
    assert bootstrap_p([1, 2, 3, -1], reference=0, direction=1) == pytest.approx(2 / 5)
    assert bootstrap_p([1, 2, 3, 4], reference=0, direction=-1) == pytest.approx(5 / 5)
    s = Null.from_samples("placebo-sets", [1, 2, 3, float("nan")]).summary
    assert s["mean"] == 2 and s["q025"] < s["q975"]


def test_claim_round_trips_through_its_json_record():
    claims = Claims("05_x")
    measured = _add(claims, "measured", section="section 6 (Table 3)", p_value=0.01, margin=0.05, alpha=0.1,
                    reference=0.1, note="on the organism")
    unmeasured = _add(claims, "unmeasured", estimate=float("nan"), ci=(float("nan"), float("nan")),
                      null=Null("permutation", 0, {}, "not measured"))
    back = Claim.from_dict(json.loads(json.dumps(measured.to_dict())))
    assert back == measured and back.section == "section 6 (Table 3)" and back.citation == "P, section 6 (Table 3)"
    record = unmeasured.to_dict()
    assert record["estimate"] is None and Claim.from_dict(json.loads(json.dumps(record))).to_dict() == record


def test_old_records_without_a_section_are_read_and_edited_verdicts_refused():
    record = {**_add(Claims("nb"), "a").to_dict(), "paper": "P, section 1"}  # as written before claims had sections
    del record["section"]
    old = Claim.from_dict(record)
    assert old.paper == "P, section 1" and old.section == "" and old.citation == "P, section 1"
    with pytest.raises(ClaimError, match=r"nb: claim 'a': the record says 'contradicts' but its numbers give"):
        Claim.from_dict({**record, "verdict": "contradicts"})
    del record["direction"]
    with pytest.raises(ClaimError, match="no 'direction' field"):
        Claim.from_dict(record)


def _claim(notebook, id, estimate, verdict_):
    """A claim against the target 0 whose interval gives ``verdict_`` (it touches 0 when inconclusive)."""
    low = estimate - 0.5 if verdict_ == "reproduces" else -1.0
    claim = Claim(notebook, id, "Paper A", "s", "m", estimate, (low, estimate + 0.5), Null.target(0), 1,
                  section="section 2")
    assert claim.verdict == verdict_
    return claim


def test_scorecard_reads_the_claims_files_and_groups_by_paper(tmp_path):
    claims = Claims("03_x")
    _add(claims, "a", paper="Paper A", section="section 2")
    _add(claims, "b", paper="Paper B", section="")
    (tmp_path / "03_x.claims.json").write_text(json.dumps(claims.to_records()))
    assert report.collect(tmp_path) == list(claims)
    json_path, md_path = report.write_report(tmp_path)
    assert json.loads(json_path.read_text()) == claims.to_records()
    text = md_path.read_text()
    assert "## Paper A" in text and "**a** (section 2): s" in text and "## Paper B" in text and "**b**: s" in text


def test_seeds_aggregation_unanimous_else_inconclusive_and_missing_seeds(tmp_path):
    per_seed = {0: [_claim("nb", "a", 1.0, "reproduces"), _claim("nb", "b", 1.0, "reproduces")],
                1: [_claim("nb", "a", 3.0, "reproduces"), _claim("nb", "b", 3.0, "inconclusive")]}
    agg = {c.claim.id: c for c in report.aggregate(per_seed, [0, 1])}
    assert agg["a"].verdict == "reproduces" and agg["a"].seeds.held == 2 and agg["a"].claim == per_seed[0][0]
    assert agg["b"].verdict == "inconclusive" and agg["b"].seeds.verdicts == ["reproduces", "inconclusive"]
    mean, (lo, hi) = agg["a"].seeds.mean, agg["a"].seeds.ci
    assert mean == 2.0 and lo < 2.0 < hi and hi - 2.0 == pytest.approx(12.706 * 1.0, rel=1e-3)  # t(0.975, 1)·sd/√2
    record = agg["b"].to_dict()
    assert record == {**per_seed[0][1].to_dict(), "verdict": "inconclusive", "seeds": record["seeds"]}
    assert list(record["seeds"]) == ["n", "seeds", "shown", "verdicts", "estimates", "mean", "ci", "missing", "held"]
    agg3 = report.aggregate(per_seed, [0, 1, 2])  # seed 2 never finished: no unanimity, and it is named
    assert all(c.verdict == "inconclusive" and c.seeds.missing == [2] for c in agg3)
    text = report.render(agg3, tmp_path)
    assert "Missing seeds" in text and "## Paper A" in text and "reproduces reproduces missing" in text
