"""The untargeted-change null: Gaussian weight noise of the same size as a fine-tune, matched by KL.

**Weight noise.** :func:`add_weight_noise` returns a *copy* of a model with every floating weight tensor ``W`` (by
default matrices only: no norms, no biases) replaced by ``W + σ · rms(W) · ε``, ``ε ~ N(0, 1)`` drawn per tensor
from a generator seeded with ``seed`` and the tensor's position in ``named_parameters()`` — the same ``(σ, seed)``
gives the same model, and for one seed the direction ``ε`` is the same for every σ (only its size changes).
:func:`mean_kl` is the mean over counted positions of KL(a ‖ b) between two models' next-token distributions on
reference batches. :func:`match_noise` finds the σ whose noisy copy has ``mean_kl(original, noisy) ≈ target_kl``:
it doubles σ from ``sigma0`` until the KL brackets the target, then bisects in log σ until the KL is within the
relative tolerance ``tol`` (KL grows with σ along one noise direction). The caller's model is never modified.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import torch


def _noisy_tensors(model: torch.nn.Module, matrices_only: bool):
    for i, (name, p) in enumerate(model.named_parameters()):
        if p.is_floating_point() and (p.ndim >= 2 or not matrices_only):
            yield i, name, p


def _noise_like(p: torch.Tensor, seed: int, index: int) -> torch.Tensor:
    g = torch.Generator(device="cpu").manual_seed(int(seed) * 1_000_003 + index)
    return torch.randn(p.shape, generator=g, dtype=torch.float32)


@torch.no_grad()
def apply_weight_noise(target: torch.nn.Module, source: torch.nn.Module, sigma: float, *, seed: int = 0,
                       matrices_only: bool = True) -> None:
    """Write ``source``'s weights + noise (σ · rms · ε, as :func:`add_weight_noise`) into ``target``, a separate
    model of the same architecture (e.g. a fresh load of the same checkpoint, with its own hooks); ``source`` is
    unchanged."""
    if target is source:
        raise ValueError("apply_weight_noise writes into a separate copy; pass a fresh model as target")
    _write_noise(target, source, sigma, seed, matrices_only)


@torch.no_grad()
def _write_noise(target: torch.nn.Module, source: torch.nn.Module, sigma: float, seed: int,
                 matrices_only: bool) -> None:
    """``target``'s noisy tensors := ``source``'s + σ·rms·ε (the two models share one architecture)."""
    src = dict(source.named_parameters())
    for i, name, p in _noisy_tensors(target, matrices_only):
        w = src[name].detach().float().cpu()
        rms = w.pow(2).mean().sqrt()
        p.copy_((w + sigma * rms * _noise_like(w, seed, i)).to(p.dtype))


def add_weight_noise(model: torch.nn.Module, sigma: float, *, seed: int = 0,
                     matrices_only: bool = True) -> torch.nn.Module:
    """A copy of ``model`` with Gaussian noise of ``sigma`` × each weight tensor's RMS added (module docstring);
    ``model`` itself is unchanged."""
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ValueError(f"noise sigma must be a finite number >= 0, got {sigma}")
    noisy = copy.deepcopy(model)
    noisy.eval()
    _write_noise(noisy, model, sigma, seed, matrices_only)
    return noisy


def _batch_inputs(batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if isinstance(batch, Mapping):
        ids = torch.as_tensor(batch["input_ids"])
        mask = torch.as_tensor(batch.get("attention_mask", torch.ones_like(ids)))
        counted = torch.as_tensor(batch.get("loss_mask", mask))
    else:
        ids = torch.as_tensor(batch)
        mask = counted = torch.ones_like(ids)
    if ids.ndim == 1:
        ids, mask, counted = ids[None], mask[None], counted[None]
    if ids.ndim != 2 or ids.shape != mask.shape or ids.shape != counted.shape:
        raise ValueError(f"a reference batch is token ids [batch, positions] (with masks of the same shape), got "
                         f"{tuple(ids.shape)}, attention mask {tuple(mask.shape)}, loss mask {tuple(counted.shape)}")
    return ids.long(), mask.long(), (counted.long() * mask.long())


def reference_batches(tokenizer, texts: Sequence[str], *, batch_size: int = 32) -> list[dict[str, torch.Tensor]]:
    """Tokenize ``texts`` into padded batches ``{"input_ids", "attention_mask"}`` for :func:`mean_kl`."""
    if not texts:
        raise ValueError("the reference set is empty; pass at least one text")
    encs = [tokenizer(list(texts[i:i + batch_size]), return_tensors="pt", padding=True, add_special_tokens=False)
            for i in range(0, len(texts), batch_size)]
    return [{"input_ids": e["input_ids"], "attention_mask": e["attention_mask"]} for e in encs]


@torch.no_grad()
def _logps(model: torch.nn.Module, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    device = next(model.parameters()).device
    pos = (mask.cumsum(-1) - 1).clamp(min=0)
    logits = model(input_ids=ids.to(device), attention_mask=mask.to(device), position_ids=pos.to(device)).logits
    return torch.log_softmax(logits.float(), dim=-1).cpu()


@torch.no_grad()
def mean_kl(model_a: torch.nn.Module, model_b: torch.nn.Module, reference_batches: Iterable) -> float:
    """Mean over the counted reference positions of KL(a ‖ b) between next-token distributions.

    Each batch is token ids ``[batch, positions]`` (every position counted) or a mapping with ``input_ids``,
    ``attention_mask`` and optionally ``loss_mask`` (the positions counted; default: the attended ones). A position
    holds the distribution of the *next* token.
    """
    batches = [_batch_inputs(b) for b in reference_batches]
    return _kl_to([_logps(model_a, ids, mask) for ids, mask, _ in batches], model_b, batches)


def _kl_to(base_logps: list[torch.Tensor], model: torch.nn.Module, batches: list) -> float:
    total, count = 0.0, 0
    for p, (ids, mask, counted) in zip(base_logps, batches):
        q = _logps(model, ids, mask)
        kl = (p.exp() * (p - q)).sum(-1)
        total += float((kl * counted).sum())
        count += int(counted.sum())
    if count == 0:
        raise ValueError("the reference batches have no positions; pass at least one non-empty batch")
    return total / count


@dataclass
class NoiseMatch:
    """The noise level found by :func:`match_noise`: ``sigma``, the KL its noisy copy reached, whether that KL is
    within the tolerance (``converged``), the number of noisy models evaluated, the seed, every ``(sigma, kl)``
    tried, and the noisy model (``None`` unless kept; :meth:`build` rebuilds it from the original)."""

    sigma: float
    kl: float
    target_kl: float
    converged: bool
    iterations: int
    seed: int
    matrices_only: bool
    trace: list[tuple[float, float]] = field(default_factory=list)
    model: torch.nn.Module | None = field(default=None, repr=False)

    def build(self, original: torch.nn.Module) -> torch.nn.Module:
        """The noisy copy of ``original`` at this match's σ and seed (identical to the one that was measured)."""
        return add_weight_noise(original, self.sigma, seed=self.seed, matrices_only=self.matrices_only)


def match_noise(hf: torch.nn.Module, target_kl: float, reference: Sequence, *, seed: int = 0, tol: float = 0.1,
                max_iter: int = 30, sigma0: float = 0.01, matrices_only: bool = True,
                keep_model: bool = True) -> NoiseMatch:
    """The σ whose noisy copy of ``hf`` has ``mean_kl(hf, noisy, reference)`` within ``tol`` (relative) of
    ``target_kl``: bracketing by doubling from ``sigma0``, then bisection in log σ (module docstring).

    ``hf`` is not modified. Gives up after ``max_iter`` evaluations and returns the closest level tried
    (``converged`` false)."""
    if not (math.isfinite(target_kl) and target_kl > 0):
        raise ValueError(f"target_kl must be a positive number (the fine-tune's KL to its base), got {target_kl}")
    if not (tol > 0 and max_iter >= 1 and sigma0 > 0):
        raise ValueError(f"need tol > 0, max_iter >= 1 and sigma0 > 0, got {tol}, {max_iter}, {sigma0}")
    batches = [_batch_inputs(b) for b in reference]
    base_logps = [_logps(hf, ids, mask) for ids, mask, _ in batches]
    noisy = copy.deepcopy(hf)
    noisy.eval()
    trace: list[tuple[float, float]] = []

    def kl_at(sigma: float) -> float:
        _write_noise(noisy, hf, sigma, seed, matrices_only)
        kl = _kl_to(base_logps, noisy, batches)
        trace.append((sigma, kl))
        return kl

    def close(kl: float) -> bool:
        return abs(kl - target_kl) <= tol * target_kl

    lo, hi, sigma = None, None, sigma0
    while len(trace) < max_iter:                       # bracket: lo below the target, hi above
        kl = kl_at(sigma)
        if close(kl):
            break
        if kl < target_kl:
            lo, sigma = sigma, sigma * 2 if hi is None else math.sqrt(sigma * hi)
        else:
            hi, sigma = sigma, sigma / 2 if lo is None else math.sqrt(lo * sigma)
    best_sigma, best_kl = min(trace, key=lambda sk: abs(sk[1] - target_kl))
    within = close(best_kl)
    model = None
    if keep_model:
        if trace[-1][0] != best_sigma:
            _write_noise(noisy, hf, best_sigma, seed, matrices_only)
        model = noisy
    return NoiseMatch(best_sigma, best_kl, float(target_kl), within, len(trace), int(seed), matrices_only, trace,
                      model)
