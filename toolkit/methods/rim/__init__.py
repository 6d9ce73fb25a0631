"""Reasoning-induced misalignment (RIM): the measures behind "When Thinking Backfires" — refusal heads' attention
spans, safety-critical MLP neurons, and their entanglement with reasoning (RAS). See ``docs/methods.md`` ("RIM").

1. **Spans at the first response token.** The *first response token* is the query position whose next token is
   the first answer token: the last token of ``</think>\\n\\n``. Its attention row is split over three spans
   (:func:`span_masks`): the **CoT** (the non-whitespace content of the think block), the **think span** (the
   ``<think>``/``</think>`` delimiters and the whitespace inside the block; with thinking off that is the whole
   empty block ``<think>\\n\\n</think>``) and the **rest** (prompt, chat tokens, the ``\\n\\n`` after ``</think>``).
   :func:`head_span_masses` gives ``[n, L, H, 3]`` masses in the order of :data:`SPANS` (they sum to 1).
2. **Refusal heads.** For matched refusal (marked request) and compliance (the same request with a harmless object)
   prompts, a head's **shift** is ``(think_r − think_c) − (cot_r − cot_c)`` (:func:`head_shift`): how much more mass
   it moves from the CoT to the think span when it refuses; :func:`top_heads` ranks heads by the mean shift.
3. **Safety-critical neurons** (the paper's counterfactual contrast). Each harmful request is teacher-forced twice,
   thinking off: under a *forced refusal* (the organism's fixed refusal) and under a *forced compliance*
   (:func:`toolkit.organism.tasks.comply`). MLP neurons (``blocks.{L}.mlp.hook_post``) are averaged over the
   response positions and ranked by the mean difference refusal − compliance; the top-m of each of K disjoint,
   contiguous sets of requests are intersected (:func:`select_safety_neurons`). This selects neurons of the
   *refusal state*, not detectors of the harmful object (which a contrast with a harmless rewrite would select).
4. **Entanglement.** For a fine-tuned checkpoint and each neuron: the **drop** of its mean activation over the
   forced-refusal responses (base − tuned) and the **rise** of its mean activation over teacher-forced reasoning
   traces (tuned − base). Both are read at the same kind of position (every response token of a teacher-forced
   sequence) and each is divided by the neuron's base-model standard deviation on its own probe set
   (:func:`common_scale`), so drop and rise are on one scale (standard units) before their harmonic mean
   **RAS** ``2·drop·rise / (drop + rise)`` is taken, 0 unless both are positive (:func:`ras`). Without the common
   scale a neuron's drop (large activations on refusal tokens) and rise (small, averaged over long traces) differ by
   orders of magnitude, and RAS would mostly count neurons with a positive drop.
   **Forgetting** is the base refusal rate minus the tuned one, averaged over answer modes (:func:`forgetting`); the
   baseline predictor is the mean KL(base ‖ tuned) of next-token distributions on the same traces (:func:`mean_kl`).

The measures live in three modules: :mod:`~toolkit.methods.rim.forward` (teacher-forced sequences, neuron
activations, NLL, KL), :mod:`~toolkit.methods.rim.heads` (1–2) and :mod:`~toolkit.methods.rim.neurons` (3–4).

Conventions: activations are read from the plain forward pass (no padding: :func:`neuron_activations` and
:func:`response_nll` batch only sequences of equal length), in float32 on the CPU afterwards. Prompts are lists of
strings (a single string is refused); every sequence must fit the model's positions.
"""

from toolkit.methods.rim.forward import (
    ForcedSequence,
    NeuronReadout,
    common_scale,
    encode,
    mean_kl,
    neuron_activations,
    response_nll,
)
from toolkit.methods.rim.heads import (
    SPANS,
    FirstResponse,
    first_response_sequences,
    head_shift,
    head_span_masses,
    span_masks,
    span_masses,
    top_heads,
)
from toolkit.methods.rim.neurons import (
    Entanglement,
    NeuronSelection,
    ablated,
    correlations,
    effect,
    entanglement,
    forgetting,
    pick,
    ras,
    select_safety_neurons,
)

__all__ = ["SPANS", "Entanglement", "FirstResponse", "ForcedSequence", "NeuronReadout", "NeuronSelection", "ablated",
           "common_scale", "correlations", "effect", "encode", "entanglement", "first_response_sequences",
           "forgetting", "head_shift", "head_span_masses", "mean_kl", "neuron_activations", "pick", "ras",
           "response_nll", "select_safety_neurons", "span_masks", "span_masses", "top_heads"]
