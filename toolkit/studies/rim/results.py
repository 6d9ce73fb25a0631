"""What notebook 06 saves: :class:`RIMResults` gathers every step's typed result and writes the notebook's results
JSON (``save_results("06_rim", RIMResults(...).to_results())``)."""

from __future__ import annotations

from dataclasses import dataclass

from toolkit.evaluation.claims import Claims
from toolkit.studies.rim.ablations import NeuronAnalysis, RefusalHeads, Split
from toolkit.studies.rim.checkpoints import EntanglementStudy, Training
from toolkit.studies.rim.placebos import HeadPlacebos, NeuronPlacebos


@dataclass(frozen=True)
class RIMResults:
    """The reasoning fine-tuning runs, the refusal heads and safety neurons (selected on ``split.select``, tested on
    ``split.evaluate``) with their placebo sets, the entanglement study over checkpoints, the KL-matched noise rows
    (:func:`~toolkit.studies.rim.noise.noise_rows`) and the claims' verdicts."""

    model: str
    training: Training
    study: EntanglementStudy
    heads: RefusalHeads
    neurons: NeuronAnalysis
    split: Split
    head_nulls: HeadPlacebos
    neuron_nulls: NeuronPlacebos
    noise: list[dict]
    claims: Claims

    def to_results(self) -> dict:
        return {
            "model": self.model,
            "runs": self.training.to_results(),
            "checkpoints": self.study.rows,
            "heads": self.heads.to_results(),
            "neurons": self.neurons.to_results(),
            "correlation_forgetting": self.study.corr,
            "correlation_refusal_nll": self.study.corr_nll,
            "split": self.split._asdict(),
            "head_placebos": self.head_nulls.to_results(),
            "neuron_placebos": self.neuron_nulls.to_results(),
            "weight_noise": self.noise,
            "verdicts": self.claims.verdicts(),
        }
