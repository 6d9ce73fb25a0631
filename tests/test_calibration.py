"""The calibration of the verdict rule (:mod:`toolkit.evaluation.calibration`): the fast version of every path stays
within the 5% bound, the legacy rules (checkpoints pooled and permuted; a placebo claim decided from the placebos'
mean) are caught exceeding it, and the report, its pass rule, its files and the command line behave."""

from __future__ import annotations

import json

import pytest

from toolkit.evaluation import calibration as cal
from toolkit.evaluation.claims import VERDICTS
from toolkit.evaluation.verdicts import CONTRADICT_REASONS, REASONS

CURRENT = [name for name, spec in cal.PATHS.items() if not spec.legacy]
LEGACY = [name for name, spec in cal.PATHS.items() if spec.legacy]
# paths the current rule fails in the full calibration (docs/calibration.md), as {name: why}; at 200 replicates they
# show as marginal. Strict: once the rule is fixed the fast version passes them and the entry must go
KNOWN: dict[str, str] = {}


pytestmark = pytest.mark.xdist_group("calibration")  # under -n 2, one worker computes the module's fixture once


@pytest.fixture(scope="module")
def fast() -> dict:
    """The fast calibration (200 replicates per condition) of every path, once for the module."""
    return cal.calibrate(cal.FAST_REPS, seed=0, progress=False)


def _row(report: dict, name: str) -> dict:
    return next(row for row in report["paths"] if row["name"] == name)


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.xfail(reason=KNOWN[n], strict=True))
                                  if n in KNOWN else n for n in CURRENT])
def test_fast_path_is_within_the_bound(fast, name):
    """No path fails the pass rule (a known failure must not even be marginal to pass: see KNOWN)."""
    row = _row(fast, name)
    r = {k: v["rate"] for k, v in row["rates"].items() if v}
    assert row["status"] in (("pass",) if name in KNOWN else ("pass", "marginal")), f"{name}: {r}"


@pytest.mark.parametrize("name", LEGACY)
def test_broken_rules_are_caught(fast, name):
    """A rule we know to be wrong must fail the bound: the calibration can fail."""
    row = _row(fast, name)
    assert row["legacy"] and row["status"] == "fail", row["rates"]
    assert name in fast["legacy_detected"] and name not in fast["failed"]


def test_every_family_of_the_rule_is_simulated():
    families = {spec.family for spec in cal.PATHS.values() if not spec.legacy}
    assert families == {"paired-difference", "no-effect", "count", "rank-among-sets", "weight-noise",
                        "base-vs-itself", "correlation-over-checkpoints", "runs-difference", "seeds-pooled"}
    assert {cal.PATHS[n].direction for n in CURRENT} == {0, 1}


def test_simulators_return_a_verdict_with_its_reason():
    import numpy as np

    rng = np.random.default_rng(0)
    reasons = set(REASONS) | set(CONTRADICT_REASONS) | {"", "equivalent"}
    for spec in cal.PATHS.values():
        for effect in (0.0, spec.sesoi):
            verdict, reason = spec.simulate(rng, effect, spec)
            assert verdict in VERDICTS and reason in reasons, (spec.name, verdict, reason)


def _rates(**rate):
    full = {"false_reproduces": None, "false_contradicts": None, "false_opposite": None, "power": None}
    return full | {k: {"rate": v, "lo": max(0.0, v - 0.02), "hi": v + 0.02} for k, v in rate.items()}


def test_pass_rule():
    tol = cal.tolerance(1000)
    assert tol == pytest.approx(2 * (0.05 * 0.95 / 1000) ** 0.5)
    assert cal.status(_rates(false_reproduces=0.05, false_contradicts=0.0), 1000) == "pass"
    assert cal.status(_rates(false_reproduces=0.051, false_contradicts=0.0), 1000) == "marginal"
    assert cal.status(_rates(false_reproduces=0.05 + tol + 0.001, false_contradicts=0.0), 1000) == "fail"
    lower_above = _rates(false_reproduces=0.0, false_contradicts=0.0)
    lower_above["false_opposite"] = {"rate": 0.055, "lo": 0.051, "hi": 0.06}
    assert cal.status(lower_above, 1000) == "fail"


def test_rates_of_a_no_effect_claim_swap_the_conditions():
    spec = cal.PATHS["no-effect:binary-120"]
    outcomes = {"null": [("reproduces", "equivalent")] * 9 + [("contradicts", "opposite")],
                "sesoi": [("reproduces", "equivalent")] + [("inconclusive", "underpowered")] * 9}
    r = cal.rates(spec, outcomes)
    assert r["power"]["rate"] == 0.9 and r["false_contradicts"]["rate"] == 0.1
    assert r["false_reproduces"]["rate"] == 0.1 and r["false_opposite"] is None
    assert 0 <= r["power"]["lo"] <= 0.9 <= r["power"]["hi"] <= 1


def test_report_is_written_as_json_and_a_table(tmp_path):
    report = cal.calibrate(10, paths=["runs-difference:3v3", "no-effect"], progress=False)
    assert [row["name"] for row in report["paths"]] == ["runs-difference:3v3", "no-effect:binary-40",
                                                        "no-effect:binary-120"]
    cal.write(report, tmp_path / "calibration.json", tmp_path / "calibration.md")
    assert json.loads((tmp_path / "calibration.json").read_text()) == json.loads(json.dumps(report))
    table = (tmp_path / "calibration.md").read_text()
    assert "| runs-difference:3v3 | permutation | 6 runs |" in table and "Pass rule" in table
    with pytest.raises(KeyError, match="no calibration path"):
        cal.calibrate(10, paths=["no-such-path"], progress=False)


def test_command_line(tmp_path, capsys):
    from toolkit.run.cli import main

    assert main(["calibrate", "--reps", "10", "--path", "correlation-over-checkpoints:3x12",
                 "--out", str(tmp_path)]) == 0
    assert json.loads((tmp_path / "calibration.json").read_text())["reps"] == 10
    assert "--reps 10" in (tmp_path / "calibration.md").read_text()
    assert "correlation-over-checkpoints:3x12" in capsys.readouterr().out
    assert main(["calibrate", "--reps", "50", "--path", "correlation-over-checkpoints:5x10:legacy",
                 "--out", str(tmp_path)]) == 0  # a legacy row failing is expected, not an error
    assert main(["calibrate", "--path", "nope", "--out", str(tmp_path)]) == 2
