"""Notebook 03's saved numbers: every step's result (:mod:`toolkit.studies.emergent`) in one typed record, and
:meth:`EmergentResults.to_results`, the JSON the notebook saves as ``03_eap_ig.results.json``."""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass

from toolkit.core.units import Head
from toolkit.evaluation.claims import Claims
from toolkit.evaluation.placebo_sets import HeadSetTest
from toolkit.evaluation.stability import Convergence
from toolkit.studies.emergent import AblationCheck, CircuitResults, Emergent, ExactComparison, Setup, Stability


@dataclass
class EmergentResults:
    """The study's results in the notebook's order: pairs, circuits and their τ simplification (``simplified``:
    :func:`~toolkit.studies.emergent.simplified_circuits`), the exact comparison and IG convergence, the emergent
    heads with their stability and null, the ablated heads with the ``rule`` that chose them, the generation check
    (``ablation``) and the teacher-forced ``placebo`` sets, the claims; and the run's settings that no result holds."""

    setup: Setup
    found: CircuitResults
    simplified: dict[str, dict]
    exact: ExactComparison
    convergence: Convergence
    emerging: Emergent
    stability: Stability
    ablated_heads: list[Head]
    rule: str
    ablation: AblationCheck
    placebo: HeadSetTest
    claims: Claims
    _: KW_ONLY
    metric: str
    ig_steps: int
    enable_thinking: bool
    seed: int

    def to_results(self) -> dict:
        """The saved JSON: per ``"task: model"`` pairs, circuit sizes and heads, faithfulness and stability; per task
        the emergent heads and their null test; the checks' numbers; each claim's verdict."""
        setup, found, stab, conv = self.setup, self.found, self.stability, self.convergence
        model, base_model = setup.names
        runs = {f"{task}: {name}": (task, name) for task, name in setup.runs}
        return {
            "model": setup.specs.get(model, model), "base_model": setup.specs.get(base_model, base_model),
            "metric": self.metric, "ig_steps": self.ig_steps,
            "top_n": found.top_n, "tasks": setup.tasks, "enable_thinking": self.enable_thinking, "seed": self.seed,
            "n_pairs": {k: len(setup.pairs[t][n]) for k, (t, n) in runs.items()},
            "circuit_edges": {k: found.circuits[t][n].n_edges for k, (t, n) in runs.items()},
            "circuit_heads": {k: sorted(map(list, found.circuits[t][n].heads)) for k, (t, n) in runs.items()},
            "faithfulness_at_top_n": found.faith,
            "faithfulness_curve": found.curves_to_results(),
            "simplified": self.simplified,
            "correlation_with_exact": self.exact.to_results(),
            "ig_convergence": {"steps": list(conv.steps), "spearman": conv.spearman, "pearson": conv.pearson,
                               "jaccard_heads": conv.jaccard_heads},
            "emergent_heads": {task: [list(h) for h in hs] for task, hs in self.emerging.ranked.items()},
            "only_base_heads": {task: sorted(map(list, c.only_b)) for task, c in self.emerging.comparisons.items()},
            "stability": {k: stab.boots[t][n].summary() for k, (t, n) in runs.items()},
            "top_n_sensitivity": {k: s.to_results() for k, s in stab.sensitivity.items()},
            "emergent_against_null": {task: t.summary() for task, t in stab.tests.items()},
            "ablated_heads": [list(h) for h in self.ablated_heads], "ablation_rule": self.rule,
            "ablation": self.ablation.to_results(),
            "ablation_placebo_sets": self.placebo.to_results(),
            "claims": self.claims.verdicts(),
        }
