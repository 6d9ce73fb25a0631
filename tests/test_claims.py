"""Claims: the verdict rule at its boundaries and monotone in n, bad claims, the inconclusive reasons, p-values, the
JSON round trip of a claim, and the scorecard read from those records (families adjusted, seeds pooled, controls)."""

import json
import math
from dataclasses import replace

import numpy as np
import pytest

from toolkit.evaluation import verdicts
from toolkit.evaluation.claims import Claim, ClaimError, Claims, Null, bootstrap_p, count_ci, empirical_p, percentile_ci
from toolkit.run import report

FINDING = dict(sesoi=0.1, sesoi_reason="half the paper's effect", controls=("random",))


@pytest.mark.parametrize("estimate, ci, kw, expected", [
    # directional, SESOI 0.1 (boundary 0.05): significant with an estimate at least the boundary
    (0.3, (0.1, 0.5), {"direction": 1, "sesoi": 0.1}, ("reproduces", "")),
    (0.3, (0.0, 0.5), {"direction": 1, "sesoi": 0.1}, ("inconclusive", "")),  # an end at the null excludes nothing
    (0.3, (-0.1, 0.5), {"direction": 1, "sesoi": 0.1, "p_value": 0.04}, ("reproduces", "")),  # p decides when given
    (0.3, (0.1, 0.5), {"direction": 1, "sesoi": 0.1, "p_value": 0.05}, ("inconclusive", "")),  # p = α is not < α
    (0.04, (0.02, 0.045), {"direction": 1, "sesoi": 0.1}, ("contradicts", "absent")),  # real but below the boundary
    (0.04, (0.02, 0.2), {"direction": 1, "sesoi": 0.1}, ("inconclusive", "")),  # significant, estimate below it
    (0.05, (0.03, 0.07), {"direction": 1, "sesoi": 0.1}, ("reproduces", "")),  # the estimate reaches the boundary
    (-0.3, (-0.5, -0.1), {"direction": 1, "sesoi": 0.1}, ("contradicts", "opposite")),
    (-0.3, (-0.5, -0.1), {"direction": -1, "sesoi": 0.1}, ("reproduces", "")),
    (0.3, (0.1, 0.5), {"direction": -1, "sesoi": 0.1}, ("contradicts", "opposite")),
    (0.0, (-0.04, 0.04), {"direction": 1, "sesoi": 0.1}, ("contradicts", "absent")),  # a count can be absent
    (0.0, (-0.05, 0.05), {"direction": 1, "sesoi": 0.1}, ("inconclusive", "")),  # the boundary is not excluded
    # rank-based (placebo sets): both ways from the ranks only, never from the interval around the placebo mean
    (-0.3, (-0.5, -0.1), {"direction": 1, "sesoi": 0.1, "rank_based": True, "p_value": 0.6, "p_opposite": 0.4},
     ("inconclusive", "")),
    (-0.3, (-0.5, -0.1), {"direction": 1, "sesoi": 0.1, "rank_based": True, "p_value": 0.99, "p_opposite": 0.01},
     ("contradicts", "opposite")),
    (0.3, (-0.1, 0.5), {"direction": 1, "sesoi": 0.1, "rank_based": True, "p_value": 0.01, "p_opposite": 0.99},
     ("reproduces", "")),
    (0.03, (-0.1, 0.2), {"direction": 1, "sesoi": 0.1, "rank_based": True, "p_value": 0.01, "p_opposite": 0.99},
     ("inconclusive", "")),  # top rank, but a difference below the boundary
    # the paper reports no effect: equivalence both ways
    (0.01, (-0.02, 0.04), {"direction": 0, "sesoi": 0.05}, ("reproduces", "equivalent")),
    (0.04, (0.02, 0.06), {"direction": 0, "sesoi": 0.05}, ("inconclusive", "")),  # excludes 0, inside the margin
    (0.2, (0.1, 0.3), {"direction": 0, "sesoi": 0.05}, ("contradicts", "opposite")),
    # targets: a threshold (no SESOI)
    (0.93, (0.91, 0.95), {"direction": 1, "reference": 0.9}, ("reproduces", "")),
    (0.93, (0.89, 0.95), {"direction": 1, "reference": 0.9}, ("inconclusive", "")),
    (0.85, (0.8, 0.89), {"direction": 1, "reference": 0.9}, ("contradicts", "opposite")),
    # not measured, and a zero-width interval decides nothing
    (float("nan"), (0.1, 0.2), {"direction": 1, "sesoi": 0.1}, ("inconclusive", "not-measured")),
    (3.0, (3.0, 3.0), {"direction": 1, "sesoi": 1.0, "p_value": 0.01}, ("inconclusive", "no-interval")),
])
def test_verdict_rule_at_its_boundaries(estimate, ci, kw, expected):
    assert verdicts.decide(estimate, ci, **kw) == expected


def test_more_data_never_turns_a_verdict_into_its_opposite():
    """Intervals shrinking as 1/√n around a fixed estimate: once decided, a verdict only stays (no R ↔ C flip)."""
    for estimate in np.linspace(-0.3, 0.3, 25):
        seen = []
        for n in (5, 10, 20, 40, 80, 160, 320, 640, 1280, 5000):
            half = 1.0 / math.sqrt(n)
            seen.append(verdicts.decide(estimate, (estimate - half, estimate + half), direction=1, sesoi=0.1)[0])
        decided = [v for v in seen if v != "inconclusive"]
        assert len(set(decided)) <= 1, (estimate, seen)
        assert seen[-1] == ("reproduces" if estimate >= 0.05 else "contradicts") or abs(estimate - 0.05) < 0.02


def _add(claims, id="a", **kw):
    args = dict(paper="P", section="section 1", statement="s", measure="m", estimate=0.5, ci=(0.2, 0.8),
                null=Null.from_samples("bootstrap-resample", [0.1, -0.1, 0.0]), direction=1, **FINDING)
    args.update(kw)
    return claims.add(id, **args)


def test_bad_claims_are_refused_naming_notebook_and_claim():
    claims = Claims("04_grpo_dynamics")
    _add(claims, "x")
    bad = [("x", {}, "duplicate claim id 'x'"),
           ("y", {"null": None}, "claim 'y' has no null"),
           ("z", {"null": Null("vibes")}, "claim 'z' has an unknown null kind 'vibes'"),
           ("k", {"kind": "hunch"}, "claim 'k' has an unknown kind 'hunch'"),
           ("w", {"ci": (0.8, 0.2)}, "claim 'w': ci low"),
           ("t", {"ci": (0.1, 0.5, 0.9)}, r"claim 't': ci must be a pair"),
           ("o", {"estimate": 0.9}, r"claim 'o': the estimate 0.9 lies outside its own interval"),
           ("s", {"sesoi": None}, "claim 's' is a finding without a smallest effect of interest"),
           ("r", {"sesoi_reason": ""}, "claim 'r' is a finding without a smallest effect of interest"),
           ("g", {"sesoi": -0.1}, "claim 'g': the smallest effect of interest must be positive"),
           ("c", {"controls": ()}, "claim 'c' is a finding without its controls"),
           ("u", {"controls": ("random", "vibes")}, "claim 'u': unknown or undeclared control 'vibes'"),
           ("m", {"margin": 0.1}, "claim 'm': 'margin' cannot be passed"),
           ("v", {"verdict": "reproduces"}, "claim 'v': 'verdict' cannot be passed"),
           ("e", {"direction": 0, "kind": "check", "sesoi": None}, "'e'.*direction 0.*sesoi")]
    for id, kw, message in bad:
        with pytest.raises(ClaimError, match=rf"04_grpo_dynamics: .*{message}" if "'" not in message[:1]
                           else message):
            _add(claims, id, **kw)
    assert list(claims.verdicts()) == ["x"]
    check = _add(claims, "checked", kind="check", sesoi=None, sesoi_reason="", controls=())  # checks need neither
    assert check.verdict == "reproduces" and check.family == "P"


def test_inconclusive_says_why():
    claims = Claims("nb")
    floor = _add(claims, "floor", estimate=0.3, ci=(0.1, 0.5), p_value=1 / 17, p_opposite=0.9,
                 null=Null.from_samples("placebo-sets", np.arange(16.0)))
    assert floor.p_floor == pytest.approx(1 / 17) and (floor.verdict, floor.reason) == ("inconclusive", "floor")
    weak = _add(claims, "weak", estimate=0.05, ci=(-0.15, 0.25), n=40, unit="prompts")
    assert (weak.verdict, weak.reason) == ("inconclusive", "underpowered") and weak.power < 0.8
    se = 0.2 / verdicts.Z95  # the n that would reach power 0.8 at the SESOI: (z_α + z_0.8)² se² / sesoi² · n
    assert weak.n_needed == math.ceil(40 * ((1.6449 + 0.8416) * se / 0.1) ** 2) > 40
    nan = _add(claims, "nan", estimate=float("nan"), ci=(float("nan"), float("nan")))
    assert (nan.verdict, nan.reason) == ("inconclusive", "not-measured")
    flat = _add(claims, "flat", estimate=2.0, ci=(2.0, 2.0), p_value=0.01, sesoi=1.0)
    assert (flat.verdict, flat.reason) == ("inconclusive", "no-interval")
    artifact = _add(claims, "art", control_verdicts={"random": "reproduces"})
    assert (artifact.verdict, artifact.reason) == ("artifact", "random")
    assert _add(claims, "ok", control_verdicts={"random": "inconclusive"}).verdict == "reproduces"


def test_empirical_bootstrap_and_percentile():
    null = np.arange(99.0)  # 0 … 98
    assert empirical_p(98, null) == pytest.approx(2 / 100)  # only itself and the 98 draw are as extreme
    assert empirical_p(200, null) == pytest.approx(1 / 100)
    assert empirical_p(-1, null, direction=-1) == pytest.approx(1 / 100)
    assert bootstrap_p([1, 2, 3, -1], reference=0, direction=1) == pytest.approx(2 / 5)
    assert bootstrap_p([1, 2, 3, 4], reference=0, direction=-1) == pytest.approx(5 / 5)
    s = Null.from_samples("placebo-sets", [1, 2, 3, float("nan")]).summary
    assert s["mean"] == 2 and s["q025"] < s["q975"]
    assert percentile_ci([1.0, 1.0, 2.0], 0.0) == pytest.approx((0.0, 1.95))  # widened to hold the estimate
    assert count_ci([0, 0, 0], 0) == (0.0, 0.5)  # a count 0 in every resample: not zero width, can be absent
    assert verdicts.decide(0, count_ci([0, 0, 0], 0), direction=1, sesoi=2) == ("contradicts", "absent")
    assert all(math.isnan(v) for v in percentile_ci([float("nan")], 1.0))


def test_claim_round_trips_through_its_json_record():
    claims = Claims("05_x")
    measured = _add(claims, "measured", section="section 6 (Table 3)", p_value=0.01, alpha=0.1, estimate=0.6,
                    reference=0.1, note="on the organism", n=120, unit="prompts", paper_effect="+0.8",
                    controls=("random", "untrained"))
    unmeasured = _add(claims, "unmeasured", estimate=float("nan"), ci=(float("nan"), float("nan")),
                      null=Null("permutation", 0, {}, "not measured"))
    back = Claim.from_dict(json.loads(json.dumps(measured.to_dict())))
    assert back == measured and back.citation == "P, section 6 (Table 3)" and back.controls == ("random", "untrained")
    record = unmeasured.to_dict()
    assert record["estimate"] is None and Claim.from_dict(json.loads(json.dumps(record))).to_dict() == record
    with pytest.raises(ClaimError, match=r"05_x: claim 'measured': the record says 'contradicts' but its numbers"):
        Claim.from_dict({**measured.to_dict(), "verdict": "contradicts"})
    del record["direction"]
    with pytest.raises(ClaimError, match="no 'direction' field"):
        Claim.from_dict(record)


def test_holm_adjustment():
    adjusted, factors = verdicts.holm([0.01, 0.04, None, 0.03])
    assert factors == [3, 1, 1, 2]
    assert adjusted == pytest.approx([0.03, 0.06, None, 0.06])  # 0.03·2 = 0.06, then max(0.06, 0.04·1)


def test_scorecard_adjusts_each_papers_findings_and_groups_kinds(tmp_path):
    claims = Claims("03_x")
    _add(claims, "a", paper="Paper A", p_value=0.02)
    _add(claims, "b", paper="Paper A", p_value=0.03)
    _add(claims, "c", paper="Paper B", p_value=0.03)
    _add(claims, "t", paper="Organism targets", kind="target", null=Null.target(0.1), sesoi=None, controls=(),
         reference=0.1)
    (tmp_path / "03_x.claims.json").write_text(json.dumps(claims.to_records()))
    assert report.collect(tmp_path) == list(claims)
    json_path, md_path = report.write_report(tmp_path)
    final = {r["id"]: r for r in json.loads(json_path.read_text())}
    assert final["a"]["p_adjusted"] == pytest.approx(0.04) and final["a"]["verdict"] == "reproduces"
    assert final["b"]["p_adjusted"] == pytest.approx(0.04) and final["c"]["p_adjusted"] == pytest.approx(0.03)
    assert final["t"]["p_adjusted"] is None  # targets are not a paper's family
    text = md_path.read_text()
    assert "**3 findings: 3 reproduce, 0 contradict, 0 inconclusive; 0 artifacts caught by controls.**" in text
    assert text.index("## Paper A") < text.index("## Paper B") < text.index("## Organism targets")
    claims2 = Claims("03_x")
    for i in range(4):  # four p = 0.02 in one family: Holm makes each 0.08, so none reproduces
        _add(claims2, f"f{i}", paper="Paper A", p_value=0.02)
    assert {c.verdict for c in report.scorecard(list(claims2))} == {"inconclusive"}


def test_controls_turn_a_reproducing_finding_into_an_artifact(tmp_path):
    real, control = Claims("05_x"), Claims("05_x")
    _add(real, "a", p_value=0.01)
    _add(real, "b", p_value=0.01)
    _add(control, "a", p_value=0.01)  # reproduces on random weights too
    _add(control, "b", p_value=0.5)
    for folder, claims in ((tmp_path, real), (tmp_path / "control-random", control)):
        folder.mkdir(exist_ok=True)
        (folder / "05_x.claims.json").write_text(json.dumps(claims.to_records()))
    json_path, md_path = report.write_report(tmp_path, controls={"random": tmp_path / "control-random"})
    final = {r["id"]: r for r in json.loads(json_path.read_text())}
    assert (final["a"]["verdict"], final["a"]["reason"]) == ("artifact", "random")
    assert final["b"]["verdict"] == "reproduces" and final["b"]["control_verdicts"] == {"random": "inconclusive"}
    assert "1 artifact caught by controls" in md_path.read_text()


def _seed_claim(id, estimate, half, p, independent=True):
    claims = Claims("nb")
    return _add(claims, id, estimate=estimate, ci=(estimate - half, estimate + half), p_value=p,
                independent_seeds=independent)


def test_seeds_are_pooled_into_one_analysis(tmp_path):
    per_seed = {k: [_seed_claim("a", 0.2, 0.25, 0.08), _seed_claim("dep", 0.2, 0.25, 0.08, independent=False),
                    _seed_claim("mixed", (0.5, -0.5)[k], 0.2, (0.001, 0.999)[k])] for k in (0, 1)}
    per_seed[2] = [_seed_claim("a", 0.2, 0.25, 0.08), _seed_claim("dep", 0.2, 0.25, 0.08, independent=False)]
    agg = {c.claim.id: c for c in report.aggregate(per_seed, [0, 1, 2, 3])}
    a = agg["a"]  # three inconclusive seeds pool into a decided verdict: the seeds gain power together
    assert a.seeds.verdicts == ["inconclusive"] * 3 + [None] and a.seeds.missing == [3]
    assert a.claim.estimate == pytest.approx(0.2) and a.claim.ci[1] - a.claim.ci[0] == pytest.approx(0.5 / math.sqrt(3))
    assert a.claim.p_value == pytest.approx(verdicts.fisher([0.08] * 3)) and a.verdict == "reproduces"
    dep = agg["dep"].claim  # overlapping seeds: no narrowing, twice the mean p
    assert dep.ci == pytest.approx((-0.05, 0.45)) and dep.p_value == pytest.approx(0.16)
    mixed = agg["mixed"].claim
    assert mixed.seeds_disagree and (mixed.verdict, mixed.reason) == ("inconclusive", "seeds-disagree")
    record = agg["a"].to_dict()
    assert record["seeds"] == {"n": 4, "seeds": [0, 1, 2, 3], "verdicts": ["inconclusive"] * 3 + [None],
                               "estimates": [0.2, 0.2, 0.2, None], "missing": [3]}
    text = report.render(agg.values(), tmp_path)
    assert "Missing seeds" in text and "inconclusive (0.2) inconclusive (0.2) inconclusive (0.2) missing" in text


def test_pooled_seeds_keep_an_in_study_control():
    """A control that reproduced on at least half the seeds makes the pooled finding an artifact."""
    def seed(verdict):
        return _seed_claim("a", 0.2, 0.25, 0.01) if verdict is None else replace(
            _seed_claim("a", 0.2, 0.25, 0.01), controls=("random", "weight-noise"),
            control_verdicts={"weight-noise": verdict})
    two_of_three = report.aggregate({0: [seed("reproduces")], 1: [seed("reproduces")], 2: [seed("inconclusive")]},
                                    [0, 1, 2])[0].claim
    assert (two_of_three.verdict, two_of_three.reason) == ("artifact", "weight-noise")
    one_of_three = report.aggregate({0: [seed("reproduces")], 1: [seed("inconclusive")], 2: [seed("inconclusive")]},
                                    [0, 1, 2])[0].claim
    assert one_of_three.verdict == "reproduces" and one_of_three.control_verdicts == {"weight-noise": "inconclusive"}
