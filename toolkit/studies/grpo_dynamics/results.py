"""What notebook 04 saves: :class:`GRPODynamicsResults` gathers every step's typed result and writes the notebook's
results JSON (``save_results("04_grpo_dynamics", GRPODynamicsResults(...).to_results())``)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from toolkit.evaluation.claims import Claims
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.methods.dynamics import Dynamics
from toolkit.studies.grpo_dynamics import Analysis, HeadScaling, RunComparison, checkpoint_records
from toolkit.studies.grpo_dynamics.claims import CheckpointTests, NoiseNull
from toolkit.training.runs import TrainingRun


@dataclass(frozen=True)
class GRPODynamicsResults:
    """The arms' runs, their checkpoint circuits and dynamics (``analysis``; ``stable``: on stable heads), the
    correlations with reward, the arms compared, head scaling and its placebo sets, the emergent-head tests, the
    weight-noise null and the claims' verdicts."""

    model: str
    seed: int
    runs: Mapping[str, TrainingRun]
    analysis: Analysis
    corr: Mapping[str, dict]
    comparison: RunComparison
    scaling: Mapping[str, HeadScaling | None]
    stable: Mapping[str, Dynamics]
    tests: CheckpointTests
    noise: NoiseNull
    scale_placebos: Mapping[str, Mapping[float, HeadSetTest]]
    claims: Claims

    def to_results(self) -> dict:
        runs, analysis, comparison, noise = self.runs, self.analysis, self.comparison, self.noise
        return {
            "model": self.model,
            "steps_per_s": {label: None if run.reused else round(run.steps_per_second, 3)
                            for label, run in runs.items()},
            "snapshot_seconds": analysis.snapshot_seconds,
            "checkpoints": {label: checkpoint_records(run) for label, run in runs.items()},
            "dynamics": {label: d.summary() for label, d in analysis.dyns.items()},
            "accuracy": {label: {t: {str(s): a for s, a in acc.items()} for t, acc in by.items()}
                         for label, by in analysis.accuracy.items()},
            "most_frequent_answer_share": analysis.most_frequent_share,
            "correlation": dict(self.corr),
            "final_emergent": {f"{a} vs {b}": {"n_a": c.to_dict()["n_a"], "n_b": c.to_dict()["n_b"],
                                               "shared": len(c.to_dict()["shared"]), "jaccard": c.to_dict()["jaccard"]}
                               for (a, b), c in comparison.final.items()},
            "ever_emergent": {label: len(s) for label, s in comparison.ever.items()},
            "pairs_per_snapshot": analysis.pairs_per_snapshot,
            "head_scaling": {label: None if s is None else s.to_results() for label, s in self.scaling.items()},
            "seed": self.seed,
            "fixed_dynamics": {label: d.summary() for label, d in analysis.fixed.items()},
            "stable_dynamics": {label: d.summary() for label, d in self.stable.items()},
            "emergent_against_null": {inputs: {label: {str(s): t.summary() for s, t in by.items()}
                                               for label, by in d.items()}
                                      for inputs, d in self.tests.tests.items()},
            "weight_noise": {"sigma": noise.sigma, "kl": noise.kl, "target_kl": noise.target_kl,
                             "counts": noise.counts},
            "head_scaling_placebo_sets": {label: {f: t.to_results() for f, t in by.items()}
                                          for label, by in self.scale_placebos.items()},
            "claims": self.claims.verdicts(),
        }
