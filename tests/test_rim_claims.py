"""Notebook 06's claims (toolkit.studies.rim.claims) on hand-made study results: what each claim declares, the run
as the unit of the style comparison, the 2^−runs floor of the claims over checkpoints of a few runs, placebo-set
claims that decide both ways from ranks, and the refusal heads' depth with its selection resampled."""

from __future__ import annotations

from types import SimpleNamespace as NS

import numpy as np
import pytest

from toolkit.evaluation import nulls
from toolkit.studies.rim import claims as rc

MODES = ("think_on", "think_off")


def fake_study(lrs=(1e-3, 2e-3, 3e-3), brief_forgets=0.3, careful_forgets=0.05, n=40, seed=0):
    """A study of one brief and one careful run per learning rate, two checkpoints each, ``n`` marked prompts that
    the base model refuses in both modes, and a KL-matched noise row per checkpoint that forgets nothing."""
    rng = np.random.default_rng(seed)
    yes = NS(refused=[True] * n)
    measured = {"base": NS(behaviour={m: yes for m in MODES}, math=[True] * 8)}
    rows, noise = [{"label": "base", "run": "base", "style": ""}], []
    for style, rate in (("careful", careful_forgets), ("brief", brief_forgets)):
        for k, lr in enumerate(lrs):
            for step in (20, 60):
                label, run = f"{style}-lr{lr:g}-{step}", f"{style}-lr{lr:g}"
                refused = {m: list(rng.random(n) > rate + 0.02 * k) for m in MODES}
                measured[label] = NS(behaviour={m: NS(refused=r) for m, r in refused.items()},
                                     math=list(rng.random(8) > 0.2))
                forgetting = float(np.mean([1 - np.mean(r) for r in refused.values()]))
                rows.append({"label": label, "run": run, "style": style, "forgetting": forgetting,
                             "kl": 0.1 * (k + 1), "ras_safety": forgetting + 0.01 * rng.normal(),
                             "drop_safety": 0.2 + 0.01 * k})
                noise.append({"run": run, "forgetting": 0.01 * rng.random(), "ras_safety": 0.01 * rng.normal(),
                              "drop_safety": 0.0})
    return NS(rows=rows, tuned=rows[1:], measured=measured), noise


def placebo(target_rank: str, direction: int, n_sets: int = 39, n: int = 12, seed: int = 0) -> nulls.PlaceboTest:
    """A placebo test whose target is the most extreme set in the paper's direction ("best"), the least ("worst")
    or in the middle."""
    rng = np.random.default_rng(seed)
    sets = rng.normal(0, 0.05, (n_sets, n)) + np.linspace(-0.2, 0.2, n_sets)[:, None]
    shift = {"best": 0.6, "worst": -0.6, "middle": 0.0}[target_rank] * direction
    return nulls.placebo_test(rng.normal(shift, 0.05, n), sets, direction=direction, n_boot=200)


def register(study, noise, *, heads_rank="best", monkeypatch):
    rng = np.random.default_rng(1)
    shift = rng.normal(0, 0.05, (10, 4, 4))
    shift[:, 0, 1] += 0.3  # L0H1 and, less clearly, L1H2 shift most on the selection pairs
    shift[:, 1, 2] += 0.03
    think_off = NS(top=[(0, 1), (1, 2)], shift=shift, rows=lambda idx: list(idx), split=NS(select=list(range(10))))
    heads = {"think_on": NS(top=[(0, 1), (1, 2)]), "think_off": think_off}
    layer = nulls.placebo_test([0.5], np.array([[np.mean([a for a, _ in s])] for s in nulls.same_size_sets(
        [(a, b) for a in range(4) for b in range(4)], 2, skip=[[(0, 1), (1, 2)]])]), direction=-1, n_boot=200)
    head_nulls = NS(tests={m: {"shift": placebo(heads_rank, 1), "ablation": placebo(heads_rank, -1)} for m in MODES})
    head_nulls.tests["think_off"]["layer"] = layer
    neurons = NS(neurons=[(0, 3), (1, 5)], split=NS(select=[0, 1, 2]),
                 contrast=lambda ns, idx: np.full(len(idx), 0.4))
    neuron_nulls = NS(n_sets=39, tests={"contrast": placebo("best", 1), "refusal": placebo("middle", -1),
                                        "math": placebo("worst", -1)})
    tuned = study.tuned
    sets = np.array([[rng.normal(0.0, 0.01) for _ in range(20)] for _ in tuned])
    monkeypatch.setattr(rc, "set_ras", lambda s, name: sets)
    return rc.register_claims(NS(base_math=[True] * 8), heads, head_nulls, neurons, neuron_nulls, study, noise,
                              n_boot=200)


def test_every_claim_declares_its_kind_smallest_effect_and_controls(monkeypatch):
    claims = register(*fake_study(), monkeypatch=monkeypatch)
    assert len(claims) >= 15
    for c in claims:
        if c.id == "reasoning-is-strengthened":
            assert c.kind == "check" and c.sesoi is None  # the study's precondition, a threshold at 0
            continue
        assert c.kind == "finding" and c.sesoi > 0 and c.sesoi_reason and "random" in c.controls, c
        about_training = not c.id.startswith(("refusal-heads", "safety-neurons"))
        assert ("weight-noise" in c.controls) == about_training, c
        assert c.n and c.unit, c
        assert c.ci[0] <= c.estimate <= c.ci[1], c  # every interval holds its estimate
    assert claims["ras-predicts-forgetting"].paper_effect.startswith("r = 0.891")
    assert claims["ras-predicts-forgetting"].sesoi == pytest.approx(0.45)  # half the paper's r


def test_brief_against_careful_runs_has_the_run_as_its_unit(monkeypatch):
    study, noise = fake_study()
    c = register(study, noise, monkeypatch=monkeypatch)["effort-minimising-forgets-more"]
    per_run = {}
    for r in study.tuned:
        per_run.setdefault((r["style"], r["run"]), []).append(r["forgetting"])
    brief = [np.mean(v) for (s, _), v in per_run.items() if s == "brief"]
    careful = [np.mean(v) for (s, _), v in per_run.items() if s == "careful"]
    assert c.estimate == pytest.approx(np.mean(brief) - np.mean(careful)) and (c.n, c.unit) == (6, "runs")
    # 3 runs against 3: the exact permutation p is at best 1/20 = 0.05, so even this clear a gap cannot reproduce
    assert c.p_value == c.p_floor == pytest.approx(0.05) and c.ci[0] > c.sesoi
    assert (c.verdict, c.reason) == ("inconclusive", "floor")
    one, noise1 = fake_study(lrs=(3e-3,))
    c1 = register(one, noise1, monkeypatch=monkeypatch)["effort-minimising-forgets-more"]
    assert (c1.verdict, c1.reason) == ("inconclusive", "not-measured")  # one run per style: no interval over runs


def test_claims_over_checkpoints_of_a_few_runs_declare_the_runs_floor(monkeypatch):
    claims = register(*fake_study(), monkeypatch=monkeypatch)
    for id in ("forgetting-beyond-matched-noise", "effort-minimising-forgets-more-beyond-noise",
               "ras-predicts-forgetting", "ras-beats-kl", "ras-correlation-beyond-matched-noise",
               "safety-drop-beyond-matched-noise"):
        c = claims[id]
        assert (c.n, c.unit) == (6, "runs") and c.p_floor == pytest.approx(0.5 ** 6) and c.p_value >= c.p_floor, c
    forget = claims["forgetting-beyond-matched-noise"]  # every checkpoint forgets more than its noise
    assert forget.verdict == "reproduces" and forget.ci[0] > 0


def test_placebo_set_claims_decide_both_ways_from_ranks(monkeypatch):
    best = register(*fake_study(), monkeypatch=monkeypatch)
    worst = register(*fake_study(), heads_rank="worst", monkeypatch=monkeypatch)
    for id in ("refusal-heads-shift-think_on", "refusal-heads-carry-refusal-think_off"):
        assert best[id].verdict == "reproduces" and best[id].p_value == pytest.approx(1 / 40)
        assert worst[id].p_opposite == pytest.approx(1 / 40) and worst[id].p_value == 1.0
        assert (worst[id].verdict, worst[id].reason) == ("contradicts", "opposite")
    assert best["safety-neurons-cost-reasoning"].verdict == "contradicts"  # cheaper than every random set
    assert best["safety-neurons-carry-refusal"].verdict == "inconclusive"  # in the middle of the sets
    assert best["safety-neurons-hold-out"].sesoi == pytest.approx(0.2)  # half the in-sample contrast, 0.4


def test_the_refusal_heads_depth_interval_resamples_their_selection(monkeypatch):
    c = register(*fake_study(), monkeypatch=monkeypatch)["refusal-heads-in-lower-layers"]
    draws = rc.layer_selection_draws(np.zeros((3, 2, 2)) + [[1, 0], [0, 0.5]], 2, 0.25, n_boot=5)
    assert np.allclose(draws, 0.5 * (0 + 1) - 0.25)  # one selection whatever the resample: L0H0 and L1H1
    assert c.ci[0] <= c.estimate < c.ci[1]  # L1H2 is not always picked (a deeper head is): the interval has width
    assert c.unit == "selection pairs" and c.n == 10 and c.p_opposite is not None


def test_two_runs_cannot_contradict_through_a_narrow_cluster_bootstrap():
    from toolkit.evaluation.claims import Claims, Null

    # two runs that forget 0.28 and 0 beyond their noise: the cluster bootstrap only ever sees {a, a}, {a, b}, {b, b}
    draws = np.array([-0.28, -0.14, -0.14, 0.0] * 50)
    c = nulls.ClusteredCorrelation(-0.14, (-0.28, 0.0), 0.75, draws, 4, 2)
    fields = rc._over_runs(c)
    half = 12.7062 * draws.std(ddof=1)  # t(0.975, 1 degree of freedom)
    assert fields["ci"] == pytest.approx((-0.14 - half, -0.14 + half), abs=1e-3) and fields["p_floor"] == 0.25

    def verdict(ci):
        return Claims("06_rim").add("c", paper="P", statement="s", measure="m", null=Null("weight-noise", 4),
                                    direction=1, **(fields | {"ci": ci}), **rc.finding(*rc.FORGET))

    assert verdict(c.ci).verdict == "contradicts"  # the percentile interval alone: 'absent' on two runs
    assert (verdict(fields["ci"]).verdict, verdict(fields["ci"]).reason) == ("inconclusive", "floor")
    many = nulls.ClusteredCorrelation(0.5, (0.4, 0.6), 0.01, np.linspace(0.4, 0.6, 200), 24, 12)
    assert rc._over_runs(many)["ci"][0] == pytest.approx(0.5 - 2.201 * np.linspace(0.4, 0.6, 200).std(ddof=1),
                                                         abs=1e-3)  # t(0.975, 11)


def test_ras_predicts_forgetting_is_an_artifact_when_noise_alone_reproduces_it(monkeypatch):
    """Its weight-noise control is the same claim on the KL-matched noisy models: noise that forgets nothing leaves
    the finding standing; noisy models on the fine-tuned models' own curve make it an artifact."""
    study, noise = fake_study()
    claims = register(study, noise, monkeypatch=monkeypatch)
    c = claims["ras-predicts-forgetting"]
    assert c.control_verdicts["weight-noise"] != "reproduces" and c.verdict != "artifact", c
    copied = [{**z, "forgetting": r["forgetting"], "ras_safety": r["ras_safety"]} for z, r in zip(noise, study.tuned)]
    c = register(study, copied, monkeypatch=monkeypatch)["ras-predicts-forgetting"]
    assert c.control_verdicts == {"weight-noise": "reproduces"}
    assert (c.verdict, c.reason) == ("artifact", "weight-noise"), c


def test_claim_texts_never_state_organism_facts(monkeypatch):
    for c in register(*fake_study(), monkeypatch=monkeypatch):
        assert "/" not in c.statement, c
        assert not any("organism" in t.lower() for t in (c.statement, c.measure, c.note, c.sesoi_reason)), c
