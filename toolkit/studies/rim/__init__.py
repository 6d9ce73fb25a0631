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

Layer rule (as for every study): these modules may import core, organism, training, methods and evaluation, never
views; they do not draw.
"""

from toolkit.studies.rim.ablations import (
    HeadAnalysis,
    NeuronAnalysis,
    RefusalHeads,
    head_analysis,
    neuron_analysis,
    refusal_heads,
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
)
from toolkit.studies.rim.probes import (
    BATCH_SIZE,
    FLAGS,
    Probes,
    RefusalBehaviour,
    RequestPair,
    make_probes,
    math_accuracy,
    refusal_behaviour,
    refused_by_mode,
    request_pairs,
    setup,
)

__all__ = ["BATCH_SIZE", "FLAGS", "EntanglementStudy", "HeadAnalysis", "Measurement", "NeuronAnalysis", "Probes",
           "RefusalBehaviour", "RefusalHeads", "RequestPair", "Training", "checkpoint_rows", "entanglement_study",
           "entanglements", "fine_tune", "head_analysis", "make_probes", "math_accuracy", "measure_checkpoint",
           "neuron_analysis", "refusal_behaviour", "refusal_heads", "refused_by_mode", "request_pairs", "setup",
           "top_head_attention"]
