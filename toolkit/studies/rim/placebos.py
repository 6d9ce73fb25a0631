"""RIM study: the refusal heads and the safety neurons against *every* same-size unit set (heads: all ``C(16, k)``
sets) or many random ones (neurons: ≥ 200 draws of as many neurons per layer), on the held-out pairs.

Measures are teacher-forced, so hundreds of sets run batched (:func:`toolkit.evaluation.causal.unit_set_scores`):

- **Refusal probability** at the decision position: ``P(first refusal token)`` after the think-off prompt (which ends
  with the empty think block) and, thinking on, after the model's own greedy think block (the first response token
  of :func:`toolkit.methods.rim.first_response_sequences`). A set's effect on a prompt is ``P_ablated − P``. Neurons
  are tested thinking off only (where they were selected).
- **Held-out contrast** (neurons only; no model call): the counterfactual difference refusal − compliance of a set on
  the held-out requests, which did not select it.
- **Reasoning log-likelihood**: the mean log-probability per token of the reference think-on completion of the
  held-out math problems (``Probes.reasoning``); a set's effect is the change.
- **Shift** (heads only; no model call): a head set's held-out shift on a pair is the mean shift of its heads.
- **Layer** (heads only): the mean layer of the set's heads.

Each is :func:`toolkit.evaluation.nulls.placebo_test` of the selected set against the others (rank, permutation p,
two-level interval).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from toolkit.core.models import LoadedModel
from toolkit.evaluation import causal, nulls
from toolkit.methods.rim import ForcedSequence, encode
from toolkit.organism import tasks
from toolkit.studies.rim.ablations import HeadAnalysis, NeuronAnalysis, RefusalHeads, Split
from toolkit.studies.rim.probes import RequestPair

Rows = list[tuple[list[int], list[int]]]


def refusal_rows(loaded: LoadedModel, pairs: Sequence[RequestPair], heads: RefusalHeads, mode: str,
                 idx: Sequence[int]) -> Rows:
    """``(prefix ids, first refusal token)`` of the marked prompts ``idx`` in ``mode`` (thinking on: only pairs
    whose think block closed, with the model's own block as prefix)."""
    first = loaded.tokenizer(tasks.REFUSAL, add_special_tokens=False)["input_ids"][:1]
    if mode == "think_off":
        return [(s.ids, first) for s in encode(loaded.tokenizer, [pairs[i].marked for i in idx], False)]
    a = heads[mode]
    return [(a.refusal_sequences[r].ids, first) for r in a.rows(idx)]


def forced_rows(seqs: Sequence[ForcedSequence]) -> Rows:
    """``(prompt ids, response ids)`` of teacher-forced sequences."""
    return [(s.ids[:s.response_start], s.ids[s.response_start:]) for s in seqs]


def _scores(loaded: LoadedModel, sets, rows: Rows, kind: str, per_token: bool, sets_per_batch: int) -> np.ndarray:
    """``[1 + n_sets, n_rows]``: the unedited model then each set zero-ablated; P(continuation), or with
    ``per_token`` the mean log-probability per continuation token. Rows run in groups of similar length (less
    padding)."""
    pad = loaded.tokenizer.pad_token_id or 0
    order = sorted(range(len(rows)), key=lambda i: len(rows[i][0]) + len(rows[i][1]))
    out = np.zeros((1 + len(sets), len(rows)))
    for g in np.array_split(np.array(order), max(1, len(rows) // 16)):
        group = [rows[i] for i in g]
        out[:, g] = causal.unit_set_scores(loaded.bridge, [[]] + [list(s) for s in sets],
                                           lambda r, group=group: causal.continuation_logprob(
                                               loaded.hf, group, repeat=r, pad_id=pad),
                                           len(group), kind=kind, factor=0.0, sets_per_batch=sets_per_batch)
    lengths = np.array([len(c) for _, c in rows], dtype=float)
    return out / lengths[None] if per_token else np.exp(out)


@dataclass
class HeadPlacebos:
    """Per mode: the selected heads' held-out ``shift``, refusal-probability change (``ablation``) and mean
    ``layer`` against every other same-size head set (:class:`toolkit.evaluation.nulls.PlaceboTest` each)."""

    sets: dict[str, list[tuple]]
    tests: dict[str, dict[str, nulls.PlaceboTest]]

    def summary(self) -> str:
        return "\n".join(f"{mode} {name}: {t.summary()}" for mode, ts in self.tests.items() for name, t in ts.items())

    def to_results(self) -> dict:
        return {mode: {name: _test_dict(t) for name, t in ts.items()} for mode, ts in self.tests.items()}


def _test_dict(t: nulls.PlaceboTest) -> dict:
    return {"target_mean": t.target_mean, "placebo_mean": t.placebo_mean, "rank": t.rank, "n_sets": t.n_sets,
            "p_value": t.p_value, "difference": t.difference, "ci": list(t.ci)}


def _head_tests(loaded: LoadedModel, pairs, heads: RefusalHeads, mode: str, a: HeadAnalysis, split: Split,
                sets_per_batch: int, n_boot: int, seed: int) -> tuple[list[tuple], dict[str, nulls.PlaceboTest]]:
    cfg = loaded.bridge.cfg
    every = [(lay, h) for lay in range(cfg.n_layers) for h in range(cfg.n_heads)]
    target = tuple(sorted(a.top))
    sets = nulls.same_size_sets(every, len(target), skip=[target])
    held = a.rows(split.evaluate)
    shift = a.shift[held]                                                        # [n, L, H]

    def set_shift(s):
        return np.mean([shift[:, lay, h] for lay, h in s], axis=0)

    kw = dict(n_boot=n_boot, seed=seed)
    tests = {"shift": nulls.placebo_test(set_shift(target), np.stack([set_shift(s) for s in sets]), direction=1,
                                         description=f"held-out shift of each of the other {len(sets)} head sets",
                                         **kw)}
    rows = refusal_rows(loaded, pairs, heads, mode, split.evaluate)
    p = _scores(loaded, [target] + sets, rows, "head", False, sets_per_batch)
    change = p[1:] - p[0]
    tests["ablation"] = nulls.placebo_test(change[0], change[1:], direction=-1, **kw,
                                           description=f"refusal-probability change when each of the other "
                                                       f"{len(sets)} head sets is zero-ablated")
    layers = np.array([[np.mean([lay for lay, _ in s])] for s in [target] + sets])
    tests["layer"] = nulls.placebo_test(layers[0], layers[1:], direction=-1, **kw,
                                        description=f"mean layer of each of the other {len(sets)} head sets")
    return sets, tests


def head_placebos(loaded: LoadedModel, pairs: Sequence[RequestPair], heads: RefusalHeads, *, sets_per_batch: int = 16,
                  n_boot: int = 2000, seed: int = 0) -> HeadPlacebos:
    """:class:`HeadPlacebos` of every mode's selected refusal heads on its held-out pairs (module docstring)."""
    out_sets, out_tests = {}, {}
    for mode, a in heads.items():
        out_sets[mode], out_tests[mode] = _head_tests(loaded, pairs, heads, mode, a, a.split, sets_per_batch,
                                                      n_boot, seed)
    return HeadPlacebos(out_sets, out_tests)


@dataclass
class NeuronPlacebos:
    """The safety neurons against the random same-layer placebo sets: ``contrast`` (the counterfactual difference
    refusal − compliance on the held-out requests: does the selection hold out of sample?), ``refusal``
    (refusal-probability change on the held-out marked prompts, thinking off) and ``math`` (reasoning
    log-likelihood change on the first ``n_math`` reasoning traces)."""

    n_sets: int
    tests: dict[str, nulls.PlaceboTest]

    def summary(self) -> str:
        return "\n".join(f"neurons {name}: {t.summary()}" for name, t in self.tests.items())

    def to_results(self) -> dict:
        return {name: _test_dict(t) for name, t in self.tests.items()}


def neuron_placebos(loaded: LoadedModel, pairs: Sequence[RequestPair], heads: RefusalHeads, neurons: NeuronAnalysis,
                    reasoning: Sequence[ForcedSequence], *, n_math: int = 12, sets_per_batch: int = 8,
                    n_boot: int = 2000, seed: int = 0) -> NeuronPlacebos:
    """:class:`NeuronPlacebos`: the safety neurons and every placebo draw of ``neurons`` zero-ablated, teacher-forced
    on the held-out marked prompts (thinking off) and the first ``n_math`` reasoning traces."""
    if not neurons.placebos:
        raise ValueError("no placebo neuron sets: run neuron_analysis with n_placebos >= 1 (200 or more for a claim)")
    sets = [neurons.neurons] + neurons.placebos
    n, kw = len(neurons.placebos), dict(n_boot=n_boot, seed=seed)
    refusal = _scores(loaded, sets, refusal_rows(loaded, pairs, heads, "think_off", neurons.split.evaluate),
                      "neuron", False, sets_per_batch)
    math = _scores(loaded, sets, forced_rows(reasoning[:n_math]), "neuron", True, sets_per_batch)
    held = neurons.split.evaluate
    tests = {"contrast": nulls.placebo_test(neurons.contrast(neurons.neurons, held),
                                            np.stack([neurons.contrast(p, held) for p in neurons.placebos]),
                                            direction=1, **kw, description=f"held-out counterfactual contrast of each "
                                                                           f"of {n} random same-layer neuron sets")}
    for name, scores, what in (("refusal", refusal, "refusal-probability"), ("math", math,
                                                                             "reasoning log-likelihood")):
        change = scores[1:] - scores[0]
        tests[name] = nulls.placebo_test(change[0], change[1:], direction=-1, **kw,
                                         description=f"{what} change with each of {n} random same-layer neuron "
                                                     "sets zero-ablated")
    return NeuronPlacebos(n, tests)
