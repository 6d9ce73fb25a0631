"""EAP-IG circuits of a run's checkpoints ("snapshots"), cached per weights and, when launched, split across
processes: the circuit step of notebook 04 (:mod:`toolkit.studies.grpo_dynamics`), and of any study that follows a
circuit over training.

- :class:`SnapshotSettings`: how each checkpoint's circuit is built;
- :func:`snapshot_scores`: per-pair EAP scores of every checkpoint, cached in
  ``<cache>/circuits/<analysis hash>/<weights fingerprint>.scores.json`` (an interrupted sweep continues where it
  stopped); ``inputs="fixed"`` scores every checkpoint on the same token sequences (the first checkpoint's pairs);
- :func:`distributed_snapshot_scores`: the same sweep split across the processes of a ``torchrun`` / ``accelerate
  launch`` job (:func:`toolkit.core.distributed.sweep`), bit for bit the one-process result;
- :func:`circuit_heads`, :func:`dynamics_of`: head sets and their dynamics.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from toolkit.core import distributed, models
from toolkit.core.cache import cache_root, config_hash, model_fingerprint, read_entry
from toolkit.core.models import LoadedModel
from toolkit.core.progress import quiet_library_bars
from toolkit.core.units import Head, as_heads
from toolkit.methods import eap
from toolkit.methods.dynamics import Dynamics, head_dynamics
from toolkit.organism.tasks import Example


@dataclass(frozen=True)
class SnapshotSettings:
    """How each checkpoint's circuit is built (:mod:`toolkit.methods.eap`)."""

    enable_thinking: bool = False
    method: str = "eap-ig"
    ig_steps: int = 5
    metric: str = "kl"
    top_n: int = 200
    batch_size: int = 8
    corruption: str = "problem"
    inputs: str = "own"  # "own": each checkpoint's own answers make its pairs; "fixed": the start model's, for all


def analysis_dir(examples: Sequence[Example], settings: SnapshotSettings):
    """The cache folder of one analysis (examples and EAP settings; ``top_n`` is applied after caching)."""
    return cache_root() / "circuits" / config_hash(
        {"examples": [getattr(e, "to_dict", lambda e=e: e)() for e in examples],
         "settings": {k: v for k, v in settings.__dict__.items() if k != "top_n"}})


def make_pairs(loaded: LoadedModel, examples: Sequence[Example], settings: SnapshotSettings, where: str) -> eap.Pairs:
    """:func:`toolkit.methods.eap.make_pairs` of ``loaded`` on ``examples``; errors name ``where``."""
    try:
        return eap.make_pairs(loaded, examples, enable_thinking=settings.enable_thinking,
                              corruption=settings.corruption)
    except eap.EAPError as err:
        raise eap.EAPError(f"{where}: {err}") from err


def snapshot_scores(specs: Mapping[int, str], examples: Sequence[Example],
                    settings: SnapshotSettings = SnapshotSettings(), device: str = "auto", *,
                    procs: distributed.Processes = distributed.SINGLE) -> dict[int, eap.Scores]:
    """EAP scores (:class:`toolkit.methods.eap.Scores`, with per-pair rows) of each model in ``specs`` (step → model
    spec or checkpoint folder), computed once per model weights and cached, so an interrupted analysis continues
    where it stopped. ``settings.inputs == "fixed"``: every model is scored on the pairs of ``specs``' first step's
    model (the same token sequences for all; every process builds them alike: greedy answers, seeded corruptions).
    ``Scores.meta``: ``snapshot_seconds`` (load, pairs, attribution), ``n_pairs``, ``pairs_hash`` (the pair tokens),
    ``rank`` (the process that computed it), ``cached`` (not computed by this call). ``procs``: the weights not yet
    cached are split across processes (:func:`toolkit.core.distributed.sweep`); by default this one alone."""
    if not examples:
        raise ValueError("snapshot_scores needs at least one example")
    if settings.inputs not in ("own", "fixed"):
        raise ValueError(f"inputs must be 'own' or 'fixed', got {settings.inputs!r}")
    first = min(specs)
    folder = analysis_dir(examples, settings)
    if settings.inputs == "fixed":
        folder = folder / f"pairs-of-{model_fingerprint(specs[first])}"
    paths = {step: folder / f"{model_fingerprint(spec)}.scores.json" for step, spec in sorted(specs.items())}
    step_of, fixed = {}, []
    for step, path in paths.items():
        step_of.setdefault(path, step)  # each weights' first step

    def compute(path) -> eap.Scores:
        step, t0 = step_of[path], time.perf_counter()
        with quiet_library_bars():
            loaded = models.load(specs[step], device=device)
            if settings.inputs == "fixed" and not fixed:
                fixed.append(make_pairs(loaded if step == first else models.load(specs[first], device=device),
                                        examples, settings, f"fixed pairs of step {first} ({specs[first]})"))
        pairs = fixed[0] if fixed else make_pairs(loaded, examples, settings,
                                                  f"checkpoint at step {step} ({specs[step]})")
        scores = eap.attribute(loaded, pairs, method=settings.method, steps=settings.ig_steps, metric=settings.metric,
                               batch_size=settings.batch_size, show_progress=False, per_example=True)
        scores.meta.update(snapshot_seconds=round(time.perf_counter() - t0, 3), n_pairs=len(pairs), spec=specs[step],
                           pairs_hash=config_hash([pairs.clean_ids.tolist(), pairs.corrupted_ids.tolist(),
                                                   pairs.positions.tolist()]), rank=procs.rank)
        scores.save(path)
        return scores

    def read(path) -> eap.Scores | None:  # older caches lack the per-pair rows: recompute those
        got = read_entry(path, eap.Scores.load)
        return None if got is None or got.per_example is None else got

    swept = distributed.sweep(list(step_of), read, compute, procs, desc="circuit snapshots")
    for path, scores in swept.values.items():
        scores.meta["cached"] = path not in swept.computed
    return {step: swept.values[path] for step, path in paths.items()}


def distributed_snapshot_scores(specs: Mapping[int, str], examples: Sequence[Example],
                                settings: SnapshotSettings = SnapshotSettings(),
                                device: str = "auto") -> dict[int, eap.Scores]:
    """:func:`snapshot_scores` split across the processes of a ``torchrun`` / ``accelerate launch`` job (each caches
    its share; all return the whole result, as one process gives). Every process calls it with the same arguments
    and one shared cache (``TOOLKIT_CACHE``); ``device="auto"``: each process its own GPU."""
    procs = distributed.processes()
    return snapshot_scores(specs, examples, settings, procs.device(device), procs=procs)


def circuit_heads(scores: eap.Scores, top_n: int) -> frozenset[Head]:
    """The heads of the top-``top_n`` circuit (absolute scores, dead nodes pruned) of ``scores``."""
    return as_heads(eap.select(scores, top_n=top_n, absolute=True, method="top", prune=True).heads)


def dynamics_of(scores: Mapping[int, eap.Scores], top_n: int) -> Dynamics:
    """:class:`Dynamics` of the top-``top_n`` circuits of ``scores`` (step → scores; step 0 is the base), with
    ``snapshot_info`` (per step: ``snapshot_seconds``, ``n_pairs``, ``cached``)."""
    heads = {step: circuit_heads(s, top_n) for step, s in scores.items()}
    dyn = head_dynamics(heads[0], {s: h for s, h in heads.items() if s > 0})
    dyn.snapshot_info = {step: {k: s.meta.get(k) for k in ("snapshot_seconds", "n_pairs", "cached")}
                         for step, s in sorted(scores.items())}
    return dyn
