"""Each study's typed result writes its notebook's results JSON (``to_results``): the keys notebooks 00, 04 and 06
save, each read from the step result it belongs to."""

from __future__ import annotations

from types import SimpleNamespace

from toolkit.studies.grpo_dynamics.results import GRPODynamicsResults
from toolkit.studies.organism import HeldOut, OrganismResults, Subject
from toolkit.studies.rim.ablations import Split
from toolkit.studies.rim.results import RIMResults


class _Result(SimpleNamespace):
    def to_results(self):
        return {"from": self.name}

    def summary(self):
        return {"summary of": self.name}


def test_organism_results_add_the_build_time_only_for_a_built_organism():
    reports = {"organism": {"think_on": {"linear": 0.9}, "think_off": {"linear": 0.1}}}
    held_out = HeldOut("organism", reports, {})
    built = Subject("organism", None, 1000, {"build_seconds": 12.5})
    saved = OrganismResults("organism", built, held_out, 200).to_results()
    assert saved == {"model": "organism", "parameters": 1000, "n_eval": 200, "accuracy": reports,
                     "linear_think_gap": 0.8, "build_seconds": 12.5}
    assert "build_seconds" not in OrganismResults("organism", Subject("x", None, 1, None), held_out, 1).to_results()


def test_rim_results_gather_every_step():
    claims = SimpleNamespace(verdicts=lambda: {"a": "reproduces"})
    study = SimpleNamespace(rows=[{"label": "base"}], corr=0.5, corr_nll=-0.25)
    saved = RIMResults("organism", _Result(name="training"), study, _Result(name="heads"), _Result(name="neurons"),
                       Split([0, 1], [2]), _Result(name="head nulls"), _Result(name="neuron nulls"), [{"kl": 0.1}],
                       claims).to_results()
    assert saved == {"model": "organism", "runs": {"from": "training"}, "checkpoints": [{"label": "base"}],
                     "heads": {"from": "heads"}, "neurons": {"from": "neurons"}, "correlation_forgetting": 0.5,
                     "correlation_refusal_nll": -0.25, "split": {"select": [0, 1], "evaluate": [2]},
                     "head_placebos": {"from": "head nulls"}, "neuron_placebos": {"from": "neuron nulls"},
                     "weight_noise": [{"kl": 0.1}], "verdicts": {"a": "reproduces"}}


def test_grpo_dynamics_results_gather_every_step():
    run = SimpleNamespace(reused=False, steps_per_second=2.0, checkpoints=[])
    analysis = SimpleNamespace(snapshot_seconds=1.0, dyns={"GRPO": _Result(name="own")},
                               fixed={"GRPO": _Result(name="fixed")}, accuracy={"GRPO": {"linear": {5: 0.25}}},
                               most_frequent_share={"linear": 0.5}, pairs_per_snapshot={"GRPO": 8})
    final = SimpleNamespace(to_dict=lambda: {"n_a": 2, "n_b": 3, "shared": [(0, 1)], "jaccard": 0.25})
    comparison = SimpleNamespace(final={("GRPO", "SFT"): final}, ever={"GRPO": {(0, 1), (1, 2)}})
    tests = SimpleNamespace(tests={"fixed": {"GRPO": {5: _Result(name="test")}}})
    noise = SimpleNamespace(sigma=0.1, kl=0.02, target_kl=0.021, counts=[1, 2])
    saved = GRPODynamicsResults("organism-base", 3, {"GRPO": run}, analysis, {"GRPO": {"r": 0.5}}, comparison,
                                {"GRPO": None}, {"GRPO": _Result(name="stable")}, tests, noise,
                                {"GRPO": {1.5: _Result(name="placebo")}},
                                SimpleNamespace(verdicts=lambda: {"c": "inconclusive"})).to_results()
    assert saved["steps_per_s"] == {"GRPO": 2.0} and saved["checkpoints"] == {"GRPO": []} and saved["seed"] == 3
    assert saved["accuracy"] == {"GRPO": {"linear": {"5": 0.25}}}
    assert saved["final_emergent"] == {"GRPO vs SFT": {"n_a": 2, "n_b": 3, "shared": 1, "jaccard": 0.25}}
    assert saved["ever_emergent"] == {"GRPO": 2} and saved["head_scaling"] == {"GRPO": None}
    assert saved["dynamics"] == {"GRPO": {"summary of": "own"}}
    assert saved["fixed_dynamics"] == {"GRPO": {"summary of": "fixed"}}
    assert saved["stable_dynamics"] == {"GRPO": {"summary of": "stable"}}
    assert saved["emergent_against_null"] == {"fixed": {"GRPO": {"5": {"summary of": "test"}}}}
    assert saved["weight_noise"] == {"sigma": 0.1, "kl": 0.02, "target_kl": 0.021, "counts": [1, 2]}
    assert saved["head_scaling_placebo_sets"] == {"GRPO": {1.5: {"from": "placebo"}}}
    assert saved["claims"] == {"c": "inconclusive"}
