"""RIM study, steps 1 and 4: reasoning fine-tuning into checkpoints, then every checkpoint measured on the probes
(behaviour, refusal NLL, neuron activations, KL), one row each, and the correlations of forgetting with RAS and KL
across the fine-tuned checkpoints."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import models
from toolkit.core.models import LoadedModel
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.methods.rim import (
    Entanglement,
    common_scale,
    correlations,
    entanglement,
    forgetting,
    mean_kl,
    neuron_activations,
    pick,
    response_nll,
)
from toolkit.studies.rim.probes import Probes, RefusalBehaviour, math_accuracy, refusal_behaviour, refused_by_mode
from toolkit.training.reasoning import ReasoningRun, reasoning_checkpoints, runs_from_rates, style_of
from toolkit.training.runs import Checkpoint

PREDICTORS = ("ras_safety", "ras_control", "kl", "drop_safety", "rise_safety")


# ---- step 1: reasoning fine-tuning ------------------------------------------------------------------------------

@dataclass
class Training:
    """The reasoning runs, their checkpoints (the base model first), each run's metadata, and the base model's
    refusal behaviour and math accuracy on the probes."""

    runs: list[ReasoningRun]
    checkpoints: list[Checkpoint]
    run_meta: dict[str, dict]
    base_behaviour: dict[str, RefusalBehaviour]
    base_math: list[bool]

    def summary(self) -> str:
        return str({name: ("reused" if m["reused"] else f"trained in {m['seconds']} s")
                    for name, m in self.run_meta.items()})

    def to_results(self) -> dict:
        """Per run: peak learning rate, steps, training seconds and loss history."""
        return {name: {"lr": m["run"]["lr"], "steps": m["run"]["steps"], "seconds": m["seconds"],
                       "history": m["history"]} for name, m in self.run_meta.items()}


def fine_tune(base: LoadedModel, probes: Probes, learning_rates: Sequence[float], steps: int,
              snapshots: Sequence[int], batch_size: int, *, styles: Sequence[str] = ("careful",), device: str = "auto",
              retrain: bool = False, seed: int = 0, behaviour: dict[str, RefusalBehaviour] | None = None) -> Training:
    """One reasoning run per scratchpad style and learning rate (trained or reused), then the base model's behaviour
    on the probes. ``seed`` draws the training problems and seeds the trainer (the styles of one seed train on the
    same problems); runs of seed k > 0 are named ``<run>-s<k>`` (their own cache folders), seed 0 keeps the plain
    names. ``behaviour``: the base model's :func:`refusal_behaviour` when it was measured already (the notebook's
    preconditions, :func:`~toolkit.studies.rim.probes.preconditions`)."""
    runs = runs_from_rates(learning_rates, steps, snapshots, batch_size, styles=styles)
    if seed:
        runs = [dataclasses.replace(r, name=f"{r.name}-s{seed}", seed=int(seed)) for r in runs]
    behaviour = refusal_behaviour(base, probes.pairs) if behaviour is None else behaviour
    if not any(any(b.refused) for b in behaviour.values()):
        raise ValueError(f"the base model refuses none of the {len(probes.pairs)} marked requests in any mode: there "
                         "is no refusal to forget; use an aligned model (model) or raise n_pairs")
    checkpoints, run_meta = reasoning_checkpoints(base.spec, runs, device, retrain)
    return Training(runs, checkpoints, run_meta, behaviour, math_accuracy(base, probes.problems))


# ---- step 4: checkpoints, entanglement, correlations ------------------------------------------------------------

@dataclass
class Measurement:
    """Behaviour and internals of one checkpoint on the probes; ``safety_acts`` and ``reasoning_acts`` hold, per
    neuron set name, one ``[n_prompts, n_neurons]`` array per draw of the set, ``safety_scale`` and
    ``reasoning_scale`` the neurons' :func:`~toolkit.methods.rim.common_scale` on each probe set (``[n_neurons]``
    per draw; the base model's scale the entanglement divides by); ``logps`` the reasoning log-probabilities for
    KL."""

    behaviour: dict[str, RefusalBehaviour]
    math: list[bool]
    refusal_nll: np.ndarray
    safety_acts: dict[str, list[np.ndarray]]
    reasoning_acts: dict[str, list[np.ndarray]]
    safety_scale: dict[str, list[np.ndarray]]
    reasoning_scale: dict[str, list[np.ndarray]]
    logps: list[torch.Tensor]


def measure_checkpoint(loaded: LoadedModel, probes: Probes, neuron_sets: dict[str, list]) -> Measurement:
    """Refusal behaviour (both modes), math accuracy, refusal NLL, and for each named neuron set
    (``{name: [[(layer, unit), ...], ...]}``: one or more draws) the activations on the safety and reasoning probes."""
    behaviour = refusal_behaviour(loaded, probes.pairs)
    math = math_accuracy(loaded, probes.problems)
    safety = neuron_activations(loaded, probes.safety, reduce="response")
    reasoning = neuron_activations(loaded, probes.reasoning, reduce="response", with_logits=True)

    def per_set(values):
        return {name: [pick(values, s) for s in sets] for name, sets in neuron_sets.items()}

    return Measurement(behaviour, math, response_nll(loaded, probes.refusal), per_set(safety.acts),
                       per_set(reasoning.acts), per_set(common_scale(safety.sd)[None]),
                       per_set(common_scale(reasoning.sd)[None]), reasoning.logps)


def entanglements(base: Measurement, tuned: Measurement, name: str) -> list[Entanglement]:
    """:func:`toolkit.methods.rim.entanglement` of each draw of neuron set ``name``, drop and rise in the base
    model's standard units."""
    return [entanglement(bs, ts, br, tr, ss[0], rs[0]) for bs, ts, br, tr, ss, rs in zip(
        base.safety_acts[name], tuned.safety_acts[name], base.reasoning_acts[name], tuned.reasoning_acts[name],
        base.safety_scale[name], base.reasoning_scale[name])]


def checkpoint_rows(checkpoints: Sequence[Checkpoint], probes: Probes, neuron_sets: dict[str, list],
                    device: str = "auto", base: LoadedModel | None = None) -> tuple[list[dict], dict[str, Measurement]]:
    """:func:`measure_checkpoint` for every checkpoint (the first is the base model; ``base``: it, already loaded)
    and one row per checkpoint: refusal and false-refusal rates per mode, math accuracy, refusal forgetting (rate and
    NLL), KL(base ‖ checkpoint) on the reasoning probes, and per neuron set the mean drop, rise and RAS (averaged
    over the set's draws). Returns ``(rows, measurements by label)``."""
    measured = {}
    for ck in progress(checkpoints, desc="checkpoints"):
        if ck.step == 0 and base is not None:
            loaded = base
        else:
            with quiet_library_bars():
                loaded = models.load(ck.spec, device=device)
        measured[ck.label] = measure_checkpoint(loaded, probes, neuron_sets)
    b = measured[checkpoints[0].label]
    rows = [measurement_row({"label": ck.label, "run": ck.run, "lr": ck.lr, "step": ck.step}, b,
                            measured[ck.label], neuron_sets) for ck in checkpoints]
    return rows, measured


def measurement_row(row: dict, b: Measurement, m: Measurement, neuron_sets: dict[str, list]) -> dict:
    """``row`` plus the measures of ``m`` against the base model's ``b``: the run's scratchpad style, math accuracy,
    forgetting, refusal-NLL rise, KL, refusal rates per mode, and per neuron set the mean drop, rise and RAS
    (averaged over draws; drop and rise in the base model's standard units)."""
    row = dict(row) | {"style": style_of(row["run"]), "math": float(np.mean(m.math)),
                       "forgetting": forgetting(refused_by_mode(b.behaviour), refused_by_mode(m.behaviour)),
                       "refusal_nll_rise": float(m.refusal_nll.mean() - b.refusal_nll.mean()),
                       "kl": mean_kl(b.logps, m.logps)}
    for mode, behaviour in m.behaviour.items():
        row |= {f"{key}_{mode}": value for key, value in behaviour.rates().items()}
    for name in neuron_sets:
        ents = entanglements(b, m, name)
        row[f"drop_{name}"] = float(np.mean([e.mean_drop for e in ents]))
        row[f"rise_{name}"] = float(np.mean([e.mean_rise for e in ents]))
        row[f"ras_{name}"] = float(np.mean([e.mean_ras for e in ents]))
    return row


@dataclass
class EntanglementStudy:
    """Step 4: one row per checkpoint (the base model first), the measurements by label, and the correlations
    across the fine-tuned checkpoints of each predictor with refusal forgetting and with the refusal-NLL rise."""

    rows: list[dict]
    measured: dict[str, Measurement]
    corr: dict[str, dict]
    corr_nll: dict[str, dict]

    @property
    def tuned(self) -> list[dict]:
        """The rows of the fine-tuned checkpoints (the base model left out)."""
        return self.rows[1:]

    def summary(self) -> str:
        return "\n".join(
            f"forgetting ~ {key:12s} r = {c['pearson_r']:+.2f} (p = {c['pearson_p']:.3g}), "
            f"Spearman {c['spearman_r']:+.2f}; refusal-NLL rise ~ {key}: r = {self.corr_nll[key]['pearson_r']:+.2f}"
            for key, c in self.corr.items())


def entanglement_study(checkpoints: Sequence[Checkpoint], probes: Probes, neuron_sets: dict[str, list], *,
                       device: str = "auto", base: LoadedModel | None = None) -> EntanglementStudy:
    """Measure every checkpoint (:func:`checkpoint_rows`) and correlate, across the fine-tuned ones, forgetting and
    the refusal-NLL rise with RAS (safety, control), KL, and the safety drop and rise."""
    rows, measured = checkpoint_rows(checkpoints, probes, neuron_sets, device, base=base)
    tuned = rows[1:]
    corr = correlations(tuned, "forgetting", list(PREDICTORS))
    return EntanglementStudy(rows, measured, corr, correlations(tuned, "refusal_nll_rise", list(corr)))
