"""Notebook 06, reasoning-induced misalignment (RIM): does fine-tuning on reasoning erode refusals, which heads and
MLP neurons carry the refusal, and does the entanglement of those neurons with reasoning predict the forgetting?
The measures are :mod:`toolkit.methods.rim`, the training :mod:`toolkit.training.reasoning`; see
``docs/methods.md`` ("RIM").

One call per notebook step, each returning a typed result that :mod:`toolkit.views.rim` draws:

- :func:`setup` — the base model and the fixed :class:`Probes` (:mod:`~toolkit.studies.rim.probes`, with the
  request pairs and the refusal behaviour / math accuracy of a model);
- :func:`fine_tune` — 1: reasoning runs → checkpoints, and the base model's behaviour (:class:`Training`);
- :func:`refusal_heads` — 2: per mode, span masses, top refusal heads, their ablation (:class:`RefusalHeads`);
- :func:`neuron_analysis` — 3: safety-critical neurons and their ablation (:class:`NeuronAnalysis`);
- :func:`entanglement_study` — 4: every checkpoint measured, one row each, and the correlations of forgetting
  with RAS and KL (:class:`EntanglementStudy`; :mod:`~toolkit.studies.rim.checkpoints`).
- :func:`split_pairs` — which request pairs select heads and neurons and which evaluate them (:class:`Split`);
- :func:`head_placebos`, :func:`neuron_placebos` — the selected units against every same-size set
  (:mod:`~toolkit.studies.rim.placebos`); :func:`noise_rows` — KL-matched weight-noise models measured like
  checkpoints (:mod:`~toolkit.studies.rim.noise`); :func:`register_claims` — the claims
  (:mod:`~toolkit.studies.rim.claims`).

Layer rule (as for every study): these modules may import core, organism, training, methods and evaluation, never
views; they do not draw.
"""

from toolkit.studies.rim.ablations import (
    HeadAnalysis,
    NeuronAnalysis,
    RefusalHeads,
    Split,
    head_analysis,
    neuron_analysis,
    refusal_heads,
    split_pairs,
    top_head_attention,
)
from toolkit.studies.rim.checkpoints import (
    EntanglementStudy,
    Measurement,
    Training,
    checkpoint_rows,
    entanglement_study,
    entanglements,
    fine_tune,
    measure_checkpoint,
    measurement_row,
)
from toolkit.studies.rim.claims import register_claims, set_ras
from toolkit.studies.rim.noise import kl_reference, noise_rows
from toolkit.studies.rim.placebos import HeadPlacebos, NeuronPlacebos, head_placebos, neuron_placebos
from toolkit.studies.rim.probes import (
    BATCH_SIZE,
    FLAGS,
    Probes,
    RefusalBehaviour,
    RequestPair,
    make_probes,
    math_accuracy,
    preconditions,
    refusal_behaviour,
    refused_by_mode,
    request_pairs,
    setup,
)

__all__ = ["BATCH_SIZE", "FLAGS", "EntanglementStudy", "HeadAnalysis", "HeadPlacebos", "Measurement",
           "NeuronAnalysis", "NeuronPlacebos", "Probes", "RefusalBehaviour", "RefusalHeads", "RequestPair", "Split",
           "Training", "checkpoint_rows", "entanglement_study", "entanglements", "fine_tune", "head_analysis",
           "head_placebos", "kl_reference", "make_probes", "math_accuracy", "measure_checkpoint", "measurement_row",
           "neuron_analysis", "neuron_placebos", "noise_rows", "preconditions", "refusal_behaviour", "refusal_heads",
           "refused_by_mode", "register_claims", "request_pairs", "set_ras", "setup", "split_pairs",
           "top_head_attention"]
