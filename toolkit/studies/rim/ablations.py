"""RIM study, steps 2 and 3: the refusal heads (span masses at the first response token, the top-k heads by shift,
their zero-ablation against k random heads) and the safety-critical neurons (selection, zero-ablation against random
neurons from the same layers). Heads and neurons are *selected* on one split of the request pairs and *evaluated*
(shift intervals, ablations) on the other (:class:`Split`, :func:`split_pairs`). Placebo loops are
:mod:`toolkit.evaluation.causal`; every change is a paired difference over the same prompts (controls: the
per-prompt mean over draws) with a 95% bootstrap interval. Every same-size placebo set: :mod:`~toolkit.studies.rim
.placebos`."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from toolkit.core.chat import MODES, enable_thinking
from toolkit.core.interventions import attention_patterns
from toolkit.core.models import LoadedModel
from toolkit.core.stats import bootstrap_ci, format_ci
from toolkit.evaluation import causal
from toolkit.methods.rim import (
    FirstResponse,
    NeuronSelection,
    first_response_sequences,
    head_shift,
    head_span_masses,
    neuron_activations,
    pick,
    select_safety_neurons,
    top_heads,
)
from toolkit.studies.rim.probes import (
    FLAGS,
    Probes,
    RefusalBehaviour,
    RequestPair,
    math_accuracy,
    refusal_behaviour,
)


class Split(NamedTuple):
    """Indices of the request pairs that select heads and neurons (``select``) and that evaluate them
    (``evaluate``); disjoint unless both are every pair."""

    select: list[int]
    evaluate: list[int]


def split_pairs(n: int, *, fraction: float = 0.5, seed: int = 0) -> Split:
    """A random split of ``n`` pairs (seeded): ``round(fraction·n)`` select, the rest evaluate (both sorted)."""
    k = int(round(fraction * n))
    if n < 2 or not 1 <= k < n:
        raise ValueError(f"cannot split {n} pairs into a selection of {fraction:.0%} and a non-empty held-out rest; "
                         "use n_pairs >= 2 and a fraction strictly between 0 and 1")
    order = np.random.default_rng(seed).permutation(n)
    return Split(sorted(int(i) for i in order[:k]), sorted(int(i) for i in order[k:]))


def _subset(b: RefusalBehaviour, idx: Sequence[int]) -> RefusalBehaviour:
    return RefusalBehaviour(*([getattr(b, f)[i] for i in idx] for f in
                              ("refused", "complied", "false_refusal", "marked_outputs", "unmarked_outputs")))


# ---- step 2: refusal heads --------------------------------------------------------------------------------------


@dataclass
class HeadAnalysis:
    """Refusal heads in one answer mode: span masses ``[n, L, H, 3]`` at the first response token for refusal
    (marked) and compliance (unmarked) prompts, the per-pair shift ``[n, L, H]`` and its mean, the ``top`` heads,
    the control draws, a bootstrap interval of each top head's shift on the held-out pairs, the ablation ``effects``
    on the held-out pairs (per flag: ``top`` and ``control`` paired changes), the held-out marked outputs with the top
    heads ablated, the sequences measured, ``kept`` (the pair index of each measured row) and the ``split``."""

    mode: str
    masses_refusal: np.ndarray
    masses_compliance: np.ndarray
    shift: np.ndarray
    top: list[tuple[int, int]]
    controls: list[list[tuple[int, int]]]
    top_shift_ci: dict[str, dict]
    effects: dict[str, dict]
    ablated_outputs: list[str]
    refusal_sequences: list[FirstResponse]
    compliance_sequences: list[FirstResponse]
    kept: list[int]
    split: Split

    def rows(self, pairs: Sequence[int]) -> list[int]:
        """The measured rows (into ``shift``, ``refusal_sequences``…) of the given pair indices."""
        wanted = set(pairs)
        return [r for r, i in enumerate(self.kept) if i in wanted]

    @property
    def n_pairs(self) -> int:
        """Pairs with a closed think block in both responses (those measured)."""
        return len(self.refusal_sequences)

    @property
    def mean_shift(self) -> np.ndarray:
        """``[L, H]``: the shift averaged over the held-out pairs."""
        return self.shift[self.rows(self.split.evaluate)].mean(0)

    def to_results(self) -> dict:
        return {"top": [list(h) for h in self.top], "n_pairs": self.n_pairs,
                "mean_shift": np.round(self.mean_shift, 4).tolist(), "top_shift": self.top_shift_ci,
                "effects": self.effects, "controls": [[list(h) for h in c] for c in self.controls]}

    def summary(self) -> str:
        e = self.effects
        shifts = ", ".join(f"{k} {format_ci(v, False)}" for k, v in self.top_shift_ci.items())
        return (f"{self.mode}: top heads {self.top} (shift {shifts})\n"
                f"   refusal change: top {format_ci(e['refused']['top'])} vs random "
                f"{format_ci(e['refused']['control'])}; compliance on marked: top {format_ci(e['complied']['top'])} "
                f"vs random {format_ci(e['complied']['control'])}")


def head_analysis(loaded: LoadedModel, pairs: Sequence[RequestPair], behaviour: dict[str, RefusalBehaviour],
                  mode: str, k: int = 2, n_controls: int = 3, seed: int = 0, split: Split | None = None
                  ) -> HeadAnalysis:
    """Span masses at the first response token for refusal (marked) and compliance (unmarked) prompts in ``mode``,
    the per-head shift, the top-``k`` refusal heads by mean shift over the ``split.select`` pairs, and on the
    ``split.evaluate`` pairs their shift intervals and the behaviour change when they are zero-ablated, against
    ``n_controls`` draws of ``k`` random other heads (seeds ``seed + i``). ``behaviour`` is the unablated
    :func:`~toolkit.studies.rim.probes.refusal_behaviour` of ``pairs`` (its outputs give the think-on CoT).
    Without ``split`` every pair both selects and evaluates."""
    split = split or Split(list(range(len(pairs))), list(range(len(pairs))))
    think = enable_thinking(mode)
    refuse = first_response_sequences(loaded, [p.marked for p in pairs], think, behaviour[mode].marked_outputs)
    comply = first_response_sequences(loaded, [p.unmarked for p in pairs], think, behaviour[mode].unmarked_outputs)
    keep = [i for i in range(len(pairs)) if refuse[i] is not None and comply[i] is not None]
    if not keep:
        raise ValueError(f"{mode}: no pair has a closed think block in both responses")
    masses_r = head_span_masses(loaded, [refuse[i] for i in keep])
    masses_c = head_span_masses(loaded, [comply[i] for i in keep])
    shift = head_shift(masses_r, masses_c)
    sel = [r for r, i in enumerate(keep) if i in set(split.select)]
    held = [r for r, i in enumerate(keep) if i in set(split.evaluate)]
    if not sel or not held:
        raise ValueError(f"{mode}: the selection or the held-out split has no pair with a closed think block; "
                         "raise n_pairs")
    top = top_heads(shift[sel], k)
    cfg = loaded.bridge.cfg
    controls = causal.placebo_heads(top, cfg.n_layers, cfg.n_heads, n_controls, seed=seed, k=k)
    eval_pairs = [pairs[i] for i in split.evaluate]

    def measure(_):
        return refusal_behaviour(loaded, eval_pairs, (mode,))[mode]

    top_b = causal.run(loaded.bridge, [causal.Condition.on_heads("top", top, 0.0)], measure)["top"]
    control_b = list(causal.run(loaded.bridge, causal.placebo_conditions("control", controls, 0.0), measure,
                                show_progress=True, desc=f"control heads ({mode})").values())
    effects = {}
    held_behaviour = _subset(behaviour[mode], split.evaluate)
    for key in FLAGS:
        base = held_behaviour.flags(key)
        effects[key] = {"top": causal.effect(top_b.flags(key), base),
                        "control": causal.effect(causal.pool([d.flags(key) for d in control_b]), base)}
    return HeadAnalysis(mode, masses_r, masses_c, shift, top, controls,
                        {f"L{lay}H{h}": bootstrap_ci(shift[held, lay, h]) for lay, h in top}, effects,
                        top_b.marked_outputs, [refuse[i] for i in keep], [comply[i] for i in keep], keep, split)


@dataclass
class RefusalHeads:
    """:class:`HeadAnalysis` per answer mode (``by_mode``, in :data:`toolkit.core.chat.MODES` order)."""

    by_mode: dict[str, HeadAnalysis]

    def __getitem__(self, mode: str) -> HeadAnalysis:
        return self.by_mode[mode]

    def items(self):
        return self.by_mode.items()

    def values(self):
        return self.by_mode.values()

    def to_results(self) -> dict:
        return {mode: a.to_results() for mode, a in self.by_mode.items()}

    def summary(self) -> str:
        return "\n".join(a.summary() for a in self.by_mode.values())


def refusal_heads(base: LoadedModel, pairs: Sequence[RequestPair], behaviour: dict[str, RefusalBehaviour],
                  k: int, n_controls: int, modes: Sequence[str] = tuple(MODES), *, split: Split | None = None,
                  seed: int = 0) -> RefusalHeads:
    """:func:`head_analysis` in each mode."""
    return RefusalHeads({mode: head_analysis(base, pairs, behaviour, mode, k, n_controls, seed, split)
                         for mode in modes})


def top_head_attention(loaded: LoadedModel, heads: RefusalHeads, mode: str = "think_off"
                       ) -> tuple[list[str], torch.Tensor]:
    """The first refusal sequence of ``mode`` and the attention pattern ``[H, q, k]`` of every head in the layer of
    that mode's top head: ``(tokens, pattern)``."""
    a = heads[mode]
    layer = a.top[0][0]
    example = a.refusal_sequences[0]
    ids = torch.tensor([example.ids], device=next(loaded.hf.parameters()).device)  # (1, T)
    return example.tokens, attention_patterns(loaded.bridge, ids, [layer])[layer][0]


# ---- step 3: safety-critical neurons ----------------------------------------------------------------------------

@dataclass
class NeuronAnalysis:
    """Safety-critical neurons: the ``selection`` (on the ``split.select`` pairs), the random ``placebos`` (same
    layers, as many per layer; the first ``n_controls`` are the ``controls`` ablated during generation), the count
    per layer, the per-set size ``top_m``, the ablation ``effects`` on the held-out pairs (``"<mode>/<flag>"`` and
    ``"math"``: ``safety`` and ``control`` paired changes) and the counterfactual activations ``[n_pairs, L, d_mlp]``
    of every request (forced ``refusal`` and forced ``compliance``, averaged over the response)."""

    selection: NeuronSelection
    controls: list[list[tuple[int, int]]]
    per_layer: list[int]
    top_m: int
    effects: dict[str, dict]
    refusal: torch.Tensor
    compliance: torch.Tensor
    placebos: list[list[tuple[int, int]]]
    split: Split

    @property
    def neurons(self) -> list[tuple[int, int]]:
        return self.selection.neurons

    @property
    def n_sets(self) -> int:
        return len(self.selection.per_set)

    def contrast(self, neurons: Sequence[tuple[int, int]], idx: Sequence[int]) -> np.ndarray:
        """Per request in ``idx``: the mean counterfactual difference (refusal − compliance) over ``neurons``."""
        d = pick(self.refusal[list(idx)], neurons) - pick(self.compliance[list(idx)], neurons)
        return d.mean(1)

    def neuron_sets(self) -> dict[str, list[list[tuple[int, int]]]]:
        """The sets whose entanglement step 4 measures: ``safety`` (one draw) and ``control`` (every placebo draw)."""
        return {"safety": [self.neurons], "control": self.placebos}

    def to_results(self) -> dict:
        return {"n": len(self.neurons), "per_layer": self.per_layer, "top_m": self.top_m, "n_sets": self.n_sets,
                "effects": self.effects}

    def summary(self) -> str:
        lines = [f"{len(self.neurons)} safety neurons (per layer {self.per_layer}) from top-{self.top_m} of "
                 f"{self.n_sets} sets"]
        lines += [f"  {key:24s} safety {format_ci(e['safety'])}   control {format_ci(e['control'])}"
                  for key, e in self.effects.items()]
        return "\n".join(lines)


def neuron_analysis(loaded: LoadedModel, probes: Probes, behaviour: dict[str, RefusalBehaviour],
                    base_math: Sequence[bool], top_m: int = 256, n_sets: int = 3, n_controls: int = 3, seed: int = 0,
                    *, split: Split | None = None, n_placebos: int = 0) -> NeuronAnalysis:
    """Safety-critical neurons from the counterfactuals of the ``split.select`` requests (forced refusal against
    forced compliance, thinking off, averaged over the response: ``probes.safety`` and ``probes.compliance``), their
    zero-ablation's effect on refusal of the held-out pairs (both modes) and on think-on math accuracy, against
    ``n_controls`` draws of random neurons from the same layers (seeds ``seed + i``; ``max(n_controls, n_placebos)``
    draws are kept as ``placebos``). ``behaviour`` and ``base_math`` are the unablated model's."""
    pairs, problems = probes.pairs, probes.problems
    split = split or Split(list(range(len(pairs))), list(range(len(pairs))))
    if not split.select or not split.evaluate:
        raise ValueError("the selection or the evaluation split of the request pairs is empty; raise n_pairs or "
                         "move select_fraction away from 0 and 1")
    refusal = neuron_activations(loaded, probes.safety, reduce="response").acts
    compliance = neuron_activations(loaded, probes.compliance, reduce="response").acts
    selection = select_safety_neurons(refusal[split.select], compliance[split.select], top_m, n_sets)
    if not selection.neurons:
        raise ValueError(f"the top-{top_m} sets of {n_sets} disjoint prompt sets share no neuron; raise top_m")
    cfg = loaded.bridge.cfg
    placebos = causal.placebo_neurons(selection.neurons, cfg.d_mlp, max(n_controls, n_placebos), seed=seed)
    controls = placebos[:n_controls]
    eval_pairs = [pairs[i] for i in split.evaluate]

    def measure(_):
        return refusal_behaviour(loaded, eval_pairs), math_accuracy(loaded, problems)

    top_b, top_math = causal.run(loaded.bridge, [causal.Condition.on_neurons("safety", selection.neurons, 0.0)],
                                 measure)["safety"]
    control_runs = list(causal.run(loaded.bridge, causal.placebo_conditions("control", controls, 0.0, kind="neuron"),
                                   measure, show_progress=True, desc="control neurons").values())
    effects = {}
    for mode in behaviour:
        for key in FLAGS:
            base = _subset(behaviour[mode], split.evaluate).flags(key)
            effects[f"{mode}/{key}"] = {
                "safety": causal.effect(top_b[mode].flags(key), base),
                "control": causal.effect(causal.pool([b[mode].flags(key) for b, _ in control_runs]), base)}
    effects["math"] = {"safety": causal.effect(top_math, base_math),
                       "control": causal.effect(causal.pool([a for _, a in control_runs]), base_math)}
    per_layer = [sum(1 for lay, _ in selection.neurons if lay == layer) for layer in range(cfg.n_layers)]
    return NeuronAnalysis(selection, controls, per_layer, top_m, effects, refusal, compliance, placebos, split)
