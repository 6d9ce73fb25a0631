"""Causal tests: an intervention on a set of sites against its placebos, with paired statistics.

A causal test asks whether editing some sites (heads, neurons, whole attention/MLP outputs, the residual stream)
changes a model's behaviour more than the same edit on *random* sites of the same kind and size does. It has three
parts, each a small function here, so every caller keeps its own seeds, factors, batch sizes and measures:

1. **Conditions** (:class:`Condition`): a name, the sites (:class:`toolkit.core.interventions.Site`), a factor (the
   sites' activations are multiplied by it: 0.0 zero-ablates, 0.5 halves; no sites and factor 1.0 is the
   unedited model), a ``group`` (conditions of one group, e.g. several placebo draws, are pooled per problem), and
   optionally the answer mode (``thinking``) when the condition fixes one. :meth:`Condition.on_heads` and
   :meth:`Condition.on_neurons` build conditions from ``(layer, index)`` pairs.
2. **Placebos** (:func:`placebo_heads`, :func:`placebo_neurons`, :func:`placebo_conditions`): draw ``i`` uses seed
   ``seed + i`` of :func:`toolkit.core.units.random_heads` (as many heads, none of the excluded ones) or
   :func:`toolkit.core.units.random_neurons` (as many neurons per layer, from the same layers).
3. **Running and statistics**: :func:`intervene` applies a condition for the duration of a block
   (:func:`~toolkit.core.interventions.ablate` for factor 0, else :func:`~toolkit.core.interventions.scale`; both stay
   correct under sampled ``generate`` with a KV cache); :func:`run` measures every condition in order;
   :func:`behave_tasks` is the usual measure (generate and keep the completions, per task, with per-task seeds;
   it applies no intervention itself).
   Per-problem scores of a group are pooled by :func:`pool` (mean over draws, per problem), and
   :func:`paired_effects` reports each arm's mean with its bootstrap interval and the paired differences
   treated − baseline, placebo − baseline and treated − placebo over the same problems
   (:func:`toolkit.core.stats.paired_difference_ci`).

4. **Every same-size set at once** (teacher-forced): :func:`unit_set_scores` runs a per-row score with many unit
   sets edited in one forward pass (the inputs tiled along the batch, each tile with its own head or neuron mask,
   :func:`per_row_scale`); :func:`continuation_logprob` is the usual score (a continuation's log-probability after
   its prefix, left-padded). The placebo statistics on top, and the sign-flip null of a paired difference
   (:func:`~toolkit.evaluation.nulls.paired_permutation`), are :mod:`toolkit.evaluation.nulls`.

Every condition of one test generates with the same seeds (common random numbers), so conditions differ only by
their intervention. See ``docs/methods.md`` ("Think on/off" section) for the statistics.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

import numpy as np
import torch

from toolkit.core import interventions as iv
from toolkit.core import units
from toolkit.core.checks import check_int
from toolkit.core.generation import SamplingConfig
from toolkit.core.interventions import Site
from toolkit.core.models import LoadedModel, bridge_of, check_length
from toolkit.core.progress import progress
from toolkit.core.stats import bootstrap_ci, paired_difference_ci
from toolkit.evaluation.behaviour import Behaviour, behave

if TYPE_CHECKING:
    from transformer_lens.model_bridge import TransformerBridge

Head = units.Head
Neuron = units.Neuron
T = TypeVar("T")


# ----------------------------------------------------------------------------------------------------------------
# conditions


@dataclass(frozen=True)
class Condition:
    """One arm of a causal test: the sites whose activations are multiplied by ``factor``.

    ``sites`` holds :class:`~toolkit.core.interventions.Site`\\ s of any component; ``factor`` 0.0 zero-ablates.
    ``group`` defaults to ``name``; conditions sharing a group are pooled per problem (:func:`pool`).
    ``thinking`` is the answer mode the condition fixes (``None``: the caller's).
    """

    name: str
    sites: tuple[Site, ...] = ()
    factor: float = 1.0
    group: str = ""
    thinking: bool | None = None

    def __post_init__(self):
        sites = (self.sites,) if isinstance(self.sites, Site) else tuple(self.sites)
        bad = [s for s in sites if not isinstance(s, Site)]
        if bad:
            raise TypeError(f"condition {self.name!r}: {bad[0]!r} is not a Site; build head or neuron conditions with "
                            "Condition.on_heads / Condition.on_neurons")
        object.__setattr__(self, "sites", sites)
        if not self.group:
            object.__setattr__(self, "group", self.name)
        if not math.isfinite(self.factor):
            raise ValueError(f"condition {self.name!r}: factor must be finite, got {self.factor}")
        if not sites and self.factor != 1.0:
            raise ValueError(f"condition {self.name!r}: a factor of {self.factor} needs sites to act on")

    @classmethod
    def on_heads(cls, name: str, heads: Iterable[Head] = (), factor: float = 1.0, group: str = "",
                 thinking: bool | None = None) -> Condition:
        """A condition on ``(layer, head)`` pairs (``attn.hook_z``), one site per layer, heads sorted."""
        return cls(name, tuple(units.head_sites(sorted(units.as_heads(heads, name)))), factor, group, thinking)

    @classmethod
    def on_neurons(cls, name: str, neurons: Iterable[Neuron] = (), factor: float = 1.0, group: str = "",
                   thinking: bool | None = None) -> Condition:
        """A condition on ``(layer, unit)`` MLP neurons (``mlp.hook_post``), one site per layer."""
        return cls(name, tuple(units.neuron_sites(sorted({(int(a), int(b)) for a, b in neurons}))), factor, group,
                   thinking)

    @property
    def heads(self) -> tuple[Head, ...]:
        """The sorted ``(layer, head)`` pairs of the condition's head sites."""
        return tuple(sorted((s.layer, h) for s in self.sites if s.component == "head" for h in s.units))

    @property
    def neurons(self) -> tuple[Neuron, ...]:
        """The sorted ``(layer, unit)`` pairs of the condition's neuron sites."""
        return tuple(sorted((s.layer, u) for s in self.sites if s.component == "neuron" for u in s.units))

    @property
    def n_units(self) -> int:
        """Heads + neurons + whole-component sites edited."""
        return sum(len(s.units) if s.units else 1 for s in self.sites)

    @property
    def intervention(self) -> str:
        """``"none"``, ``"ablate 3 heads"``, ``"scale ×0.5, 3 heads"``, ``"ablate 40 neurons"``, ``"ablate 2
        sites"``."""
        if not self.sites:
            return "none"
        kinds = {s.component for s in self.sites}
        what = {"head": "head", "neuron": "neuron"}.get(kinds.pop(), "site") if len(kinds) == 1 else "site"
        n = f"{self.n_units} {what}{'s' * (self.n_units != 1)}"
        return f"ablate {n}" if self.factor == 0 else f"scale ×{self.factor:g}, {n}"

    def validate(self, model: LoadedModel | TransformerBridge) -> Condition:
        """Range-check every site on the model (raises :class:`~toolkit.core.interventions.SiteError`)."""
        bridge = bridge_of(model, "Condition.validate: model")
        for s in self.sites:
            s.validate(bridge)
        return self


@contextmanager
def intervene(bridge: TransformerBridge, condition: Condition):
    """Apply ``condition``'s edit (its sites × factor; factor 0 zero-ablates) for the duration of the block; a
    condition without sites changes nothing."""
    if not condition.sites:
        yield
        return
    sites = list(condition.sites)
    edit = iv.ablate(bridge, sites) if condition.factor == 0 else iv.scale(bridge, sites, condition.factor)
    with edit:
        yield


# ----------------------------------------------------------------------------------------------------------------
# placebos


def placebo_heads(heads: Iterable[Head], n_layers: int, n_heads: int, n_draws: int, *, seed: int = 0,
                  k: int | None = None, exclude: Iterable[Head] | None = None) -> list[list[Head]]:
    """``n_draws`` random head sets, draw ``i`` = ``units.random_heads(n_layers, n_heads, k, exclude, seed=seed + i)``.

    ``k`` defaults to the number of ``heads``, ``exclude`` to ``heads`` themselves.
    """
    heads = list(heads)
    if n_draws < 0:
        raise ValueError(f"the number of placebo draws must be >= 0, got {n_draws}")
    k = len(heads) if k is None else k
    exclude = heads if exclude is None else list(exclude)
    return [units.random_heads(n_layers, n_heads, k, exclude=exclude, seed=seed + i) for i in range(n_draws)]


def placebo_neurons(neurons: Sequence[Neuron], d_mlp: int, n_draws: int, *, seed: int = 0) -> list[list[Neuron]]:
    """``n_draws`` random neuron sets, draw ``i`` = ``units.random_neurons(neurons, d_mlp, seed + i)`` (as many per
    layer as ``neurons``, from the same layers, none of them)."""
    if n_draws < 0:
        raise ValueError(f"the number of placebo draws must be >= 0, got {n_draws}")
    return [units.random_neurons(neurons, d_mlp, seed + i) for i in range(n_draws)]


def placebo_conditions(group: str, draws: Sequence[Sequence[tuple[int, int]]], factor: float, *,
                       kind: str = "head", thinking: bool | None = None,
                       names: Sequence[str] | None = None) -> list[Condition]:
    """One condition per draw (``kind`` ``"head"`` or ``"neuron"``), all in ``group``; named ``"{group} #1"``,
    ``"{group} #2"``, … unless ``names`` are given."""
    if kind not in ("head", "neuron"):
        raise ValueError(f"placebo kind must be 'head' or 'neuron', got {kind!r}")
    names = [f"{group} #{i + 1}" for i in range(len(draws))] if names is None else list(names)
    if len(names) != len(draws):
        raise ValueError(f"{len(names)} names for {len(draws)} placebo draws")
    make = Condition.on_heads if kind == "head" else Condition.on_neurons
    return [make(name, d, factor, group, thinking) for name, d in zip(names, draws)]


# ----------------------------------------------------------------------------------------------------------------
# running


def run(model: LoadedModel | TransformerBridge, conditions: Sequence[Condition], measure: Callable[[Condition], T],
        *, show_progress: bool = False, desc: str = "conditions") -> dict[str, T]:
    """``{name: measure(condition)}`` with each condition range-checked on the model and applied
    (:func:`intervene`) during its ``measure``, in order. Names must be unique."""
    bridge = bridge_of(model, "causal.run: model")
    names = [c.name for c in conditions]
    if len(set(names)) != len(names):
        raise ValueError(f"condition names must be unique: {names}")
    for c in conditions:
        c.validate(bridge)
    out = {}
    for c in progress(conditions, desc=desc, disable=not show_progress):
        with intervene(bridge, c):
            out[c.name] = measure(c)
    return out


def behave_tasks(loaded: LoadedModel, prompts: Mapping[str, Sequence[str]], *, enable_thinking: bool = False,
                 max_new_tokens: int = 64, sampling: SamplingConfig | None = None, batch_size: int = 64,
                 seed: int | None = 0, seed_step: int = 1) -> dict[str, Behaviour]:
    """``{task: Behaviour}``: one :func:`toolkit.evaluation.behaviour.behave` call per task, in ``prompts`` order.

    Task ``i`` generates with seed ``seed + seed_step * i`` (``seed_step=0``: the same seed for every task;
    ``seed=None``: no reseeding). It applies no intervention itself: call it inside :func:`intervene`, or as the
    ``measure`` of :func:`run` (``lambda c: behave_tasks(loaded, prompts, enable_thinking=c.thinking, ...)``).
    """
    out = {}
    for i, (task, ps) in enumerate(prompts.items()):
        out[task] = behave(loaded, ps, enable_thinking=enable_thinking,
                           max_new_tokens=max_new_tokens, batch_size=batch_size, sampling=sampling,
                           seed=None if seed is None else seed + seed_step * i)
    return out


# ----------------------------------------------------------------------------------------------------------------
# statistics


def groups(conditions: Iterable[Condition]) -> list[str]:
    """The condition groups in first-seen order."""
    return list(dict.fromkeys(c.group for c in conditions))


def members(conditions: Iterable[Condition], group: str) -> list[Condition]:
    """The conditions of ``group``, in order (``KeyError`` if none)."""
    conditions = list(conditions)
    out = [c for c in conditions if c.group == group]
    if not out:
        raise KeyError(f"no condition in group {group!r}; groups: {groups(conditions)}")
    return out


def pool(per_draw: Sequence[Sequence[float] | np.ndarray]) -> np.ndarray:
    """Per problem, the mean over draws (``np.mean(..., axis=0)`` of the draws' per-problem scores)."""
    arrays = [np.asarray(d, dtype=float) for d in per_draw]
    if not arrays:
        raise ValueError("pool needs at least one draw")
    shapes = {a.shape for a in arrays}
    if len(shapes) != 1:
        raise ValueError(f"pooled draws must score the same problems, got shapes {sorted(shapes)}")
    return np.mean(arrays, axis=0)


def paired_effects(treated: Sequence[float], baseline: Sequence[float],
                   placebo: Sequence[float] | None = None, *, n_boot: int = 2000, level: float = 0.95,
                   seed: int = 0) -> dict[str, dict[str, float]]:
    """Per-problem scores of the treated arm, the baseline and (pooled, optional) the placebo →
    ``{"baseline", "treated", "placebo"`` (means with bootstrap intervals), ``"change_treated"`` (treated −
    baseline), ``"change_placebo"`` (placebo − baseline), ``"treated_minus_placebo"`` (paired intervals)``}``;
    the placebo keys are left out without a placebo. Every interval uses the same ``n_boot``, ``level``, ``seed``."""
    kw = dict(n_boot=n_boot, level=level, seed=seed)
    out = {"baseline": bootstrap_ci(baseline, **kw), "treated": bootstrap_ci(treated, **kw)}
    if placebo is not None:
        out["placebo"] = bootstrap_ci(placebo, **kw)
    out["change_treated"] = paired_difference_ci(treated, baseline, **kw)
    if placebo is not None:
        out["change_placebo"] = paired_difference_ci(placebo, baseline, **kw)
        out["treated_minus_placebo"] = paired_difference_ci(treated, placebo, **kw)
    return out


def effect(treated: Sequence[float], baseline: Sequence[float], *, n_boot: int = 2000, level: float = 0.95,
           seed: int = 0) -> dict[str, float]:
    """Mean of treated − baseline over the same problems with its paired bootstrap interval."""
    return paired_difference_ci(np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float), n_boot=n_boot,
                                level=level, seed=seed)


# ----------------------------------------------------------------------------------------------------------------
# every same-size unit set at once (teacher-forced measures, batched)


@contextmanager
def per_row_scale(model: LoadedModel | TransformerBridge, masks: Mapping[int, torch.Tensor], *, kind: str = "head"):
    """Multiply each batch row's units by its own factors: ``masks[layer]`` is ``[batch, n_units]`` (heads of
    ``attn.hook_z`` or neurons of ``mlp.hook_post``; 1 leaves a unit alone, 0 ablates it). Layers not in ``masks``
    are untouched. Every forward pass inside the block must have that batch size."""
    bridge = bridge_of(model, "per_row_scale: model")
    if kind not in ("head", "neuron"):
        raise ValueError(f"per-row masks act on 'head' or 'neuron' units, got {kind!r}")
    hook = "blocks.{}.attn.hook_z" if kind == "head" else "blocks.{}.mlp.hook_post"

    def make(mask: torch.Tensor):
        def fn(act: torch.Tensor, hook) -> torch.Tensor:
            if act.shape[0] != mask.shape[0]:
                raise ValueError(f"per-row masks were built for batches of {mask.shape[0]}, the run has "
                                 f"{act.shape[0]} rows")
            m = mask.to(act.device, act.dtype)
            return act * (m[:, None, :, None] if kind == "head" else m[:, None, :])
        return fn

    with bridge.hooks(fwd_hooks=[(hook.format(layer), make(m)) for layer, m in masks.items()]):
        yield


def unit_set_scores(model: LoadedModel | TransformerBridge, sets: Sequence[Sequence[tuple[int, int]]],
                    score: Callable[[int], torch.Tensor], n_rows: int, *, kind: str = "head", factor: float = 0.0,
                    sets_per_batch: int = 16, show_progress: bool = False) -> np.ndarray:
    """``[n_sets, n_rows]``: a teacher-forced per-row score with each unit set edited (× ``factor``), many sets per
    forward pass. ``score(repeat)`` runs the model once on its ``n_rows`` inputs tiled ``repeat`` times along the
    batch (row ``r·n_rows + i`` is input ``i``) and returns ``[repeat · n_rows]`` scores; here row block ``r`` has
    set ``r`` of the chunk applied (:func:`per_row_scale`). An empty set is the unedited model. ``sets_per_batch``
    and ``n_rows`` are integers >= 1 and ``factor`` is finite."""
    bridge = bridge_of(model, "unit_set_scores: model")
    cfg = bridge.cfg
    n_layers, n_units = cfg.n_layers, (cfg.n_heads if kind == "head" else cfg.d_mlp)
    check_int(sets_per_batch, "sets_per_batch"), check_int(n_rows, "n_rows")
    if not math.isfinite(factor):
        raise ValueError(f"factor must be finite, got {factor}")
    sets = [[(int(a), int(b)) for a, b in s] for s in sets]
    for s in sets:
        for layer, unit in s:
            if not (0 <= layer < n_layers and 0 <= unit < n_units):
                raise iv.SiteError(f"{kind} ({layer}, {unit}) is out of range: layers 0..{n_layers - 1}, "
                                   f"units 0..{n_units - 1}")
    out = np.zeros((len(sets), n_rows))
    starts = range(0, len(sets), sets_per_batch)
    for start in progress(starts, desc=f"{kind} sets", disable=not show_progress):
        chunk = sets[start:start + sets_per_batch]
        masks = {layer: torch.ones(len(chunk), n_units) for layer in {a for s in chunk for a, _ in s}}
        for r, s in enumerate(chunk):
            for layer, unit in s:
                masks[layer][r, unit] = factor
        masks = {layer: m.repeat_interleave(n_rows, dim=0) for layer, m in masks.items()}
        with per_row_scale(bridge, masks, kind=kind), torch.no_grad():
            got = score(len(chunk))
        out[start:start + len(chunk)] = np.asarray(got.detach().float().cpu()).reshape(len(chunk), n_rows)
    return out


def continuation_logprob(hf, sequences: Sequence[tuple[Sequence[int], Sequence[int]]], *, repeat: int = 1,
                         pad_id: int = 0) -> torch.Tensor:
    """``[repeat · n]``: for each ``(prefix ids, continuation ids)`` the summed log-probability of the continuation
    given the prefix, teacher-forced in one left-padded forward pass (positions counted from the first real token),
    the inputs tiled ``repeat`` times along the batch (for :func:`unit_set_scores`)."""
    if not sequences or any(len(p) == 0 or len(c) == 0 for p, c in sequences):
        raise ValueError("every sequence needs a non-empty prefix and continuation")
    check_int(repeat, "repeat")
    for i, (p, c) in enumerate(sequences):
        check_length(hf, len(p) + len(c), f"sequence {i} (prefix + continuation)")
    width = max(len(p) + len(c) for p, c in sequences)
    ids = torch.full((len(sequences), width), int(pad_id), dtype=torch.long)
    mask = torch.zeros_like(ids)
    target = torch.zeros_like(ids, dtype=torch.bool)
    for i, (p, c) in enumerate(sequences):
        row = list(p) + list(c)
        ids[i, width - len(row):] = torch.tensor(row)
        mask[i, width - len(row):] = 1
        target[i, width - len(c):] = True
    ids, mask, target = (t.repeat(repeat, 1) for t in (ids, mask, target))
    device = next(hf.parameters()).device
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        logits = hf(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits
    logp = torch.log_softmax(logits[:, :-1].float(), -1).cpu()
    tok = logp.gather(-1, ids[:, 1:, None])[..., 0]
    return (tok * target[:, 1:]).sum(-1)
