"""Lesson 06 (reasoning-induced misalignment): the data and the checks of ``notebooks/exercises/06_rim.ipynb``.

The checks run on the organism: matched marked/unmarked requests (:func:`toolkit.studies.rim.probes.request_pairs`),
the organism's own greedy think-on responses to them, and teacher-forced refusal, compliance and reasoning
sequences (:func:`toolkit.studies.rim.probes.make_probes`). Each compares the learner's function with
:mod:`toolkit.methods.rim` (whose package docstring defines the measures):

1. :func:`check_span_masks` — the CoT / think / rest masks at the first response token from decoded tokens, on
   every think-on refusal and compliance sequence and a think-off one, against :func:`~toolkit.methods.rim.span_masks`;
2. :func:`check_span_masses` — an attention row's mass on each span, on the organism's ``[L, H, keys]`` rows at the
   first response token (and the same rows with zero keys appended), against :func:`~toolkit.methods.rim.span_masses`;
3. :func:`check_refusal_shift` — each head's shift ``(think_r − think_c) − (cot_r − cot_c)`` and the top-k heads by
   mean shift, from :func:`~toolkit.methods.rim.head_span_masses` of the pairs, against
   :func:`~toolkit.methods.rim.head_shift` and :func:`~toolkit.methods.rim.top_heads`;
4. :func:`check_safety_neurons` — the counterfactual selection (top-m per disjoint set of pairs, intersected), on the
   MLP activations under a forced refusal and a forced compliance, against
   :func:`~toolkit.methods.rim.select_safety_neurons`;
5. :func:`check_ras` — drop, rise and RAS of the selected neurons on a common scale, against
   :func:`~toolkit.methods.rim.entanglement` with :func:`~toolkit.methods.rim.common_scale`.

The "tuned" model of 5 is a stand-in that costs seconds: the organism after :data:`TUNE_STEPS` Adam steps on
reasoning traces that are not among the probes (restored afterwards); notebook 06 fine-tunes for real.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import interventions
from toolkit.core.models import LoadedModel, load
from toolkit.course.checks import CheckResult, check
from toolkit.methods import rim
from toolkit.organism import tasks
from toolkit.organism.probes import math_problems, reasoning_probes
from toolkit.organism.tokenizer import IM_END
from toolkit.studies.rim.probes import RequestPair, make_probes, request_pairs

TUNE_STEPS, TUNE_LR, TUNE_SEED = 6, 1e-3, 11  # the stand-in fine-tune of :func:`check_ras`
SELECTIONS = {"top 20 of 2 sets": (20, 2), "top 40 of 4 sets": (40, 4), "top 5 of 1 set": (5, 1)}


@dataclass
class Data:
    """The organism, the request pairs and everything the checks read from it: first-response sequences (think-on
    refusal ``refuse`` and compliance ``comply``, think-off ``refuse_off``), their span masses ``[n, L, H, 3]``,
    MLP activations ``[n, L, d_mlp]`` (float64) under the forced refusal and compliance and on the reasoning traces,
    with the base model's per-neuron ``sd`` ``[L, d_mlp]`` of each probe set, and the stand-in tuned model's."""

    model: LoadedModel
    pairs: list[RequestPair]
    refuse: list[rim.FirstResponse]
    comply: list[rim.FirstResponse]
    refuse_off: list[rim.FirstResponse]
    masses_r: np.ndarray
    masses_c: np.ndarray
    refusal: np.ndarray
    compliance: np.ndarray
    reasoning: np.ndarray
    safety_sd: np.ndarray
    reasoning_sd: np.ndarray
    tuned_safety: np.ndarray
    tuned_reasoning: np.ndarray

    @property
    def sequences(self) -> dict[str, rim.FirstResponse]:
        """Every first-response sequence by name (``"refuse 0"``, ``"comply 0"``, …, ``"think-off 0"``)."""
        named = {f"refuse {i}": s for i, s in enumerate(self.refuse)}
        named |= {f"comply {i}": s for i, s in enumerate(self.comply)}
        return named | {"think-off 0": self.refuse_off[0]}

    @property
    def neurons(self) -> list[tuple[int, int]]:
        """The safety neurons of the first of :data:`SELECTIONS` (the toolkit's selection)."""
        top_m, n_sets = next(iter(SELECTIONS.values()))
        return rim.select_safety_neurons(self.refusal, self.compliance, top_m, n_sets).neurons


def _closed(seqs: list[rim.FirstResponse | None], what: str) -> list[rim.FirstResponse]:
    if any(s is None for s in seqs):
        raise RuntimeError(f"a {what} response of the organism never closes its think block: rebuild the organism")
    return list(seqs)


def _acts(model: LoadedModel, seqs) -> tuple[np.ndarray, np.ndarray]:
    """``([n, L, d_mlp], [L, d_mlp])``: activations averaged over each response, and each neuron's sd (float64)."""
    out = rim.neuron_activations(model, seqs, reduce="response")
    return out.acts.double().numpy(), out.sd.double().numpy()


def _tune(model: LoadedModel, seqs: list[rim.ForcedSequence]) -> None:
    """:data:`TUNE_STEPS` full-batch Adam steps on the response NLL of ``seqs`` (in place)."""
    hf = model.hf
    torch.manual_seed(TUNE_SEED)
    hf.requires_grad_(True)
    opt = torch.optim.Adam(hf.parameters(), lr=TUNE_LR)
    for _ in range(TUNE_STEPS):
        opt.zero_grad()
        for s in seqs:
            ids = torch.tensor([s.ids], device=next(hf.parameters()).device)  # (1, T)
            logp = torch.log_softmax(hf(input_ids=ids).logits[0, s.response_start - 1:-1].float(), -1)
            (-logp.gather(-1, ids[0, s.response_start:, None]).mean() / len(seqs)).backward()
        opt.step()
    hf.requires_grad_(False)


def setup(n_pairs: int = 8, n_reasoning: int = 8) -> Data:
    """The organism, ``n_pairs`` request pairs and ``n_reasoning`` reasoning traces, read as :class:`Data` says (a
    few seconds on a CPU)."""
    model = load("organism", device="cpu")
    pairs = request_pairs(n_pairs)
    refuse = _closed(rim.first_response_sequences(model, [p.marked for p in pairs], True), "marked")
    comply = _closed(rim.first_response_sequences(model, [p.unmarked for p in pairs], True), "unmarked")
    refuse_off = _closed(rim.first_response_sequences(model, [pairs[0].marked], False), "think-off")
    probes = make_probes(model.tokenizer, pairs, [], reasoning_probes(n_reasoning))
    refusal, safety_sd = _acts(model, probes.safety)
    compliance, _ = _acts(model, probes.compliance)
    reasoning, reasoning_sd = _acts(model, probes.reasoning)
    masses_r, masses_c = rim.head_span_masses(model, refuse), rim.head_span_masses(model, comply)
    train = math_problems(n_reasoning, seed=TUNE_SEED)
    state = {k: v.clone() for k, v in model.hf.state_dict().items()}
    try:
        _tune(model, rim.encode(model.tokenizer, [e.prompt for e in train], True,
                                [tasks.completion(e, True) + IM_END for e in train]))
        tuned_safety, _ = _acts(model, probes.safety)
        tuned_reasoning, _ = _acts(model, probes.reasoning)
    finally:
        model.hf.load_state_dict(state)
    return Data(model, pairs, refuse, comply, refuse_off, masses_r, masses_c, refusal, compliance, reasoning,
                safety_sd, reasoning_sd, tuned_safety, tuned_reasoning)


def check_span_masks(span_masks: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``span_masks(tokens, query)`` → ``{"cot", "think", "rest"}`` bool arrays ``[query + 1]``, on every sequence of
    :attr:`Data.sequences`."""
    def run(fn):
        return lambda seqs: {name: fn(list(s.tokens), s.query) for name, s in seqs.items()}

    return check(run(span_masks), run(rim.span_masks), data.sequences, name="span_masks", verbose=verbose)


@torch.no_grad()
def first_response_rows(data: Data, seq: rim.FirstResponse) -> torch.Tensor:
    """``[L, H, keys]``: every head's attention row at the first response token of ``seq``."""
    layers = list(range(data.model.bridge.cfg.n_layers))
    patterns = interventions.attention_patterns(data.model.bridge, torch.tensor([seq.ids]), layers)  # {L: (1,H,q,k)}
    return torch.stack([patterns[layer][0, :, seq.query] for layer in layers])


def check_span_masses(span_masses: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``span_masses(pattern, masks)`` (``pattern`` ``[..., keys]`` float32, ``masks`` the toolkit's span masks) →
    ``[..., 3]`` float64 in the order cot, think, rest, on a refusal, a compliance and a think-off row, and on the
    refusal row with 5 zero keys appended (keys past the query are ignored)."""
    cases = {name: (first_response_rows(data, s), rim.span_masks(s.tokens, s.query))
             for name, s in (("refuse 0", data.refuse[0]), ("comply 0", data.comply[0]),
                             ("think-off 0", data.refuse_off[0]))}
    rows, masks = cases["refuse 0"]
    cases["refuse 0, padded keys"] = (torch.cat([rows, rows.new_zeros(*rows.shape[:-1], 5)], -1), masks)

    def run(fn):
        return lambda _: {name: fn(p.clone(), {k: v.copy() for k, v in m.items()}) for name, (p, m) in cases.items()}

    return check(run(span_masses), run(rim.span_masses), None, name="span_masses", atol=1e-9, rtol=1e-7,
                 verbose=verbose)


def check_refusal_shift(refusal_shift: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``refusal_shift(refuse, comply, k)`` (two ``[n, L, H, 3]`` span-mass arrays) → ``{"shift": [n, L, H],
    "top": [(layer, head), …]}``, for k = 1, 3 and 16, against :func:`~toolkit.methods.rim.head_shift` and
    :func:`~toolkit.methods.rim.top_heads`."""
    def learner(_):
        return {f"k={k}": refusal_shift(data.masses_r.copy(), data.masses_c.copy(), k) for k in (1, 3, 16)}

    def reference(_):
        shift = rim.head_shift(data.masses_r, data.masses_c)
        return {f"k={k}": {"shift": shift, "top": rim.top_heads(shift, k)} for k in (1, 3, 16)}

    return check(learner, reference, None, name="refusal_shift", atol=1e-12, rtol=1e-9, verbose=verbose)


def check_safety_neurons(select_safety_neurons: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``select_safety_neurons(refusal, compliance, top_m, n_sets)`` (``[n, L, d_mlp]`` float64 each) → the list of
    ``(layer, unit)`` in the intersection, largest mean difference first, on every one of :data:`SELECTIONS`."""
    def learner(_):
        return {name: select_safety_neurons(data.refusal.copy(), data.compliance.copy(), m, k)
                for name, (m, k) in SELECTIONS.items()}

    def reference(_):
        return {name: rim.select_safety_neurons(data.refusal, data.compliance, m, k).neurons
                for name, (m, k) in SELECTIONS.items()}

    return check(learner, reference, None, name="select_safety_neurons", verbose=verbose)


def ras_cases(data: Data) -> dict[str, tuple]:
    """The arguments of :func:`check_ras`: the organism and the stand-in tuned model on the selected neurons, and the
    same with the first neuron's safety sd set to 0 (the scale's floor then applies)."""
    args = (data.refusal, data.tuned_safety, data.reasoning, data.tuned_reasoning, data.safety_sd,
            data.reasoning_sd, data.neurons)
    dead = data.safety_sd.copy()
    dead[data.neurons[0]] = 0.0
    return {"organism": args, "a constant neuron": args[:4] + (dead,) + args[5:]}


def reference_ras(base_safety, tuned_safety, base_reasoning, tuned_reasoning, safety_sd, reasoning_sd, neurons):
    """The toolkit's drop, rise and RAS (see :func:`check_ras`)."""
    layers, units = map(list, zip(*neurons))
    e = rim.entanglement(rim.pick(base_safety, neurons), rim.pick(tuned_safety, neurons),
                         rim.pick(base_reasoning, neurons), rim.pick(tuned_reasoning, neurons),
                         safety_scale=rim.common_scale(safety_sd)[layers, units],
                         reasoning_scale=rim.common_scale(reasoning_sd)[layers, units])
    return {"drop": e.drop, "rise": e.rise, "ras": e.ras}


def check_ras(ras_on_common_scale: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``ras_on_common_scale(base_safety, tuned_safety, base_reasoning, tuned_reasoning, safety_sd, reasoning_sd,
    neurons)`` (activations ``[n, L, d_mlp]``, sds ``[L, d_mlp]``, float64) → ``{"drop", "rise", "ras"}``, each
    ``[len(neurons)]`` float64, on :func:`ras_cases`."""
    cases = ras_cases(data)

    def run(fn):
        return lambda _: {name: fn(*[a.copy() if isinstance(a, np.ndarray) else list(a) for a in args])
                          for name, args in cases.items()}

    return check(run(ras_on_common_scale), run(reference_ras), None, name="ras_on_common_scale", atol=1e-9,
                 rtol=1e-7, verbose=verbose)
