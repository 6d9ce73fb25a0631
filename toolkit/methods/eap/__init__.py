"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG) on a TransformerBridge, with GQA.

The stages, one module each (as in the reference hannamw/EAP-IG):

1. :mod:`~toolkit.methods.eap.graph` — :class:`Graph`: input, heads, MLPs and logits as sources; each head's q, k, v
   input (k/v per KV-head group), each MLP's input and the logits as targets; dense ``[n_sources, n_targets]``
   indexing.
2. :mod:`~toolkit.methods.eap.pairs` — :class:`Pairs`, :func:`make_pairs`, :func:`corrupt_prompt`: equal-length
   clean/corrupted inputs cut where the model's own answers to the two problems part; :func:`answer_pairs`: cut at
   the final answer after the teacher-forced reference completion (the same decision in both modes).
3. :mod:`~toolkit.methods.eap.attribute` — :func:`attribute` → :class:`Scores` (:mod:`~toolkit.methods.eap.scores`):
   ``score(s → t) = Σ (a_s(corrupted) − a_s(clean)) · ḡ_t / N``, with ``ḡ_t`` the metric's gradient at target t's
   input on the clean input (EAP) or averaged over embeddings interpolated from corrupted to clean at α = k/m,
   k = 0 … m−1 (EAP-IG). With ``per_example=True`` the scores also keep one ``[sources, targets]`` row per pair
   (``Scores.per_example``; their mean is the score), which :mod:`toolkit.evaluation.stability` resamples to bootstrap
   circuits over pairs without recomputing. :mod:`~toolkit.methods.eap.gradients` runs the gradient passes (on the HF
   modules the bridge wraps) and contracts the scores; :mod:`~toolkit.methods.eap.memory` estimates and checks one
   batch's memory; :mod:`~toolkit.methods.eap.model` is the model as attribute and evaluate both read it (weights,
   metric, logits at the metric positions, the checks before a call).
4. :mod:`~toolkit.methods.eap.circuit` — :func:`select` (top-n / threshold / greedy, then :func:`prune_edges`),
   :class:`Circuit`, :func:`head_importance`, :func:`ranked_heads`.
5. :mod:`~toolkit.methods.eap.evaluate` — :func:`faithfulness` (every non-circuit edge patched to its corrupted
   value), :func:`faithfulness_curve`, exact per-edge scores (``attribute(method="exact")``).

Metrics (``METRICS``): ``kl`` = KL(p_clean ‖ p), ``logit_diff``, ``prob_diff``, read at one position per pair.
The slow float64 reference the tests compare against is :mod:`toolkit.reference.eap`. Emergent heads (in one
circuit and not another) are :func:`toolkit.core.units.compare_heads` of two circuits. See ``docs/methods.md``
("EAP-IG" section).
"""

from toolkit.methods.eap.attribute import attribute
from toolkit.methods.eap.circuit import Circuit, greedy, head_importance, prune_edges, ranked_heads, select
from toolkit.methods.eap.evaluate import edges_for_recovery, exact_scores, faithfulness, faithfulness_curve
from toolkit.methods.eap.graph import METHODS, METRICS, EAPError, Graph
from toolkit.methods.eap.memory import check_memory, estimate_memory
from toolkit.methods.eap.pairs import Pairs, answer_pairs, corrupt_prompt, make_pairs
from toolkit.methods.eap.scores import Scores

__all__ = ["METHODS", "METRICS", "Circuit", "EAPError", "Graph", "Pairs", "Scores", "answer_pairs", "attribute",
           "check_memory", "corrupt_prompt", "edges_for_recovery", "estimate_memory", "exact_scores", "faithfulness",
           "faithfulness_curve", "greedy", "head_importance", "make_pairs", "prune_edges", "ranked_heads", "select"]
