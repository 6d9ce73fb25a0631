"""Lesson 05 (sampling metrics and head ablation): the data and the checks of
``notebooks/exercises/05_think_on_off.ipynb``.

1. :func:`check_pass_at_k` — the unbiased pass@k, 1 − C(n−c, k)/C(n, k), on every (n, c, k) with n ≤ 10, against
   :func:`toolkit.core.answers.pass_at_k`;
2. :func:`check_success_over_orders` — success@k for k = 1…n averaged over all n! orders of one problem's samples,
   against :func:`toolkit.studies.think_on_off.metrics.success_over_orders` (which equals pass@k exactly);
3. :func:`check_bootstrap` — a percentile-bootstrap interval of the mean over problems, resampling problems with
   ``numpy.random.default_rng(seed).integers(0, n, size=(n_boot, n))``, against
   :func:`toolkit.core.stats.bootstrap_ci`;
4. :func:`check_zero_heads_hook` — a hook at ``blocks.{L}.attn.hook_z`` that zeroes some heads, against the logits of
   the organism under :func:`toolkit.core.interventions.ablate`.

The samples of 1–3 are simulated (each problem has its own success rate, drawn uniformly), so the lesson runs in
seconds; notebook 05 draws them from the organism.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core import answers, interventions, stats
from toolkit.core.chat import chat_prompts
from toolkit.core.models import LoadedModel, load
from toolkit.course.checks import CheckResult, check
from toolkit.organism import tasks
from toolkit.studies.think_on_off.metrics import success_over_orders

ABLATIONS = ((1, (0, 2)), (3, (1,)))  # (layer, heads) zeroed by the hook check


@dataclass
class Data:
    """``correct`` ``[problems, n]`` bool samples in sampling order; the organism and a batch of its prompts."""

    correct: np.ndarray
    model: LoadedModel
    input_ids: torch.Tensor
    attention_mask: torch.Tensor


def simulated_samples(n_problems: int = 12, n_samples: int = 6, seed: int = 0) -> np.ndarray:
    """``[n_problems, n_samples]`` bool: sample j of problem i is right with probability p_i ~ U(0, 1)."""
    rng = np.random.default_rng(seed)
    return rng.random((n_problems, n_samples)) < rng.random((n_problems, 1))


def setup(n_problems: int = 12, n_samples: int = 6, n_prompts: int = 4, seed: int = 0) -> Data:
    """Simulated samples and a left-padded batch of ``n_prompts`` organism equation prompts (think-off)."""
    model = load("organism")
    prompts = [p.prompt for p in tasks.held_out("linear", n_prompts, seed=seed)]
    batch = model.tokenizer(chat_prompts(model.tokenizer, prompts, enable_thinking=False), return_tensors="pt",
                            padding=True)
    return Data(simulated_samples(n_problems, n_samples, seed), model, batch["input_ids"], batch["attention_mask"])


def check_pass_at_k(pass_at_k: Callable, data: Data | None = None, *, verbose: bool = True) -> CheckResult:
    """``pass_at_k(n, c, k)`` → a number, on every 1 ≤ k ≤ n ≤ 10, 0 ≤ c ≤ n."""
    grid = [(n, c, k) for n in range(1, 11) for c in range(n + 1) for k in range(1, n + 1)]

    def run(fn):
        return lambda _: {f"n={n}, c={c}, k={k}": fn(n, c, k) for n, c, k in grid}

    return check(run(pass_at_k), run(answers.pass_at_k), None, name="pass_at_k", atol=1e-12, rtol=1e-9,
                 verbose=verbose)


def check_success_over_orders(success_over_all_orders: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``success_over_all_orders(correct_row)`` (``[n]`` bool, one problem) → ``[n]`` float64, success@k for
    k = 1…n averaged over all orders, on every simulated problem."""
    def learner(correct):
        return {f"problem {i}": success_over_all_orders(row.copy()) for i, row in enumerate(correct)}

    def reference(correct):
        return {f"problem {i}": row for i, row in enumerate(success_over_orders(correct))}

    return check(learner, reference, data.correct, name="success_over_all_orders", atol=1e-12, rtol=1e-9,
                 verbose=verbose)


def check_bootstrap(bootstrap_interval: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``bootstrap_interval(values, n_boot, level, seed)`` → ``{"estimate", "low", "high"}`` on the per-problem
    pass@1 of the simulated samples (and on its first 5 problems, with another level and seed)."""
    values = answers.per_problem_at_k(data.correct, "pass")[:, 0]
    cases = {"all problems": (values, 1000, 0.95, 0), "5 problems, 80%": (values[:5].copy(), 500, 0.8, 3)}

    def run(fn):
        return lambda _: {name: fn(v.copy(), n_boot, level, seed) for name, (v, n_boot, level, seed) in cases.items()}

    return check(run(bootstrap_interval), run(lambda v, b, lv, s: stats.bootstrap_ci(v, n_boot=b, level=lv, seed=s)),
                 None, name="bootstrap_interval", atol=1e-12, rtol=1e-9, verbose=verbose)


@torch.no_grad()
def _logits(data: Data) -> torch.Tensor:
    """``[b, vocab]`` next-token logits at each prompt's last position."""
    return data.model.bridge(data.input_ids, attention_mask=data.attention_mask)[:, -1]


def check_zero_heads_hook(zero_heads_hook: Callable, data: Data, *, verbose: bool = True) -> CheckResult:
    """``zero_heads_hook(heads)`` → ``hook(z, hook)`` for ``blocks.{L}.attn.hook_z`` (``z``: ``[b, p, H, d_head]``),
    on :data:`ABLATIONS`, against the logits under :func:`toolkit.core.interventions.ablate`."""
    bridge = data.model.bridge

    def learner(_):
        out = {}
        for layer, heads in ABLATIONS:
            with bridge.hooks(fwd_hooks=[(f"blocks.{layer}.attn.hook_z", zero_heads_hook(list(heads)))]):
                out[interventions.head(layer, *heads).label] = _logits(data)
        return out

    def reference(_):
        out = {}
        for layer, heads in ABLATIONS:
            site = interventions.head(layer, *heads)
            with interventions.ablate(bridge, site):
                out[site.label] = _logits(data)
        return out

    return check(learner, reference, None, name="zero_heads_hook", atol=1e-5, rtol=1e-5, verbose=verbose)
