"""The original CMAP scheme, the baseline of ``bench cmap``: one run per layer, every step recomputing the whole prefix
(no cache), and the probe that extrapolates its time (see :mod:`toolkit.benchmarks.cmap`)."""

from __future__ import annotations

import statistics
import time

import torch

FORWARDS_ORIGINAL, FORWARDS_LEAN = 4, 2


# ---- the original's scheme -----------------------------------------------------------------------------------------


class _Baseline:
    """The original's step: full-prefix forwards (no cache) with the residual stream of one layer patched at the last
    position; ``forwards`` ∈ {2, 4} forward passes per step (see :mod:`toolkit.benchmarks.cmap`)."""

    def __init__(self, clean, corrupted, forwards: int):
        self.clean, self.corrupted, self.forwards = clean, corrupted, forwards
        self.store: dict[str, torch.Tensor] = {}

    def record(self, act, hook):
        self.store["act"] = act[:, -1].clone()

    def patch(self, act, hook):
        act = act.clone()
        act[:, -1] = self.store["act"]
        return act

    @torch.no_grad()
    def step(self, ids: torch.Tensor, mask: torch.Tensor, layer: int) -> torch.Tensor:
        """The patched clean model's next-token logits after ``ids``."""
        from toolkit.core.interventions import resid

        name = resid(layer).hook_name
        kw = dict(attention_mask=mask, position_ids=(mask.cumsum(-1) - 1).clamp(min=0), use_cache=False)
        with self.corrupted.bridge.hooks(fwd_hooks=[(name, self.record)]):
            self.corrupted.hf(ids, **kw)
        with self.clean.bridge.hooks(fwd_hooks=[(name, self.patch)]):
            logits = self.clean.hf(ids, **kw).logits[:, -1]
        if self.forwards == FORWARDS_ORIGINAL:  # the clean and corrupted logits, for the metrics
            self.clean.hf(ids, **kw)
            self.corrupted.hf(ids, **kw)
        return logits


@torch.no_grad()
def baseline(clean, corrupted, texts: list[str], layers: list[int], new_tokens: int, forwards: int,
             enable_thinking: bool = True) -> dict[int, list[list[int]]]:
    """One run per layer, full-prefix recompute every step (no cache), ``forwards`` forward passes per step, batched
    over prompts, stopping when every row has ended. Returns ``{layer: [new tokens per prompt]}``."""
    from toolkit.core.chat import chat_prompts
    from toolkit.methods.cmap import end_token, until_eos

    tok = clean.tokenizer
    eos, pad = end_token(tok), tok.pad_token_id
    batch = tok(chat_prompts(tok, texts, enable_thinking), return_tensors="pt", padding=True, add_special_tokens=False)
    runner = _Baseline(clean, corrupted, forwards)
    out = {}
    for layer in layers:
        ids, mask = batch["input_ids"], batch["attention_mask"]
        finished = torch.zeros(len(texts), dtype=torch.bool)
        for _ in range(new_tokens):
            nxt = runner.step(ids, mask, layer).argmax(-1).masked_fill(finished, pad)
            finished |= nxt == eos
            ids = torch.cat([ids, nxt[:, None]], 1)
            mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
            if bool(finished.all()):
                break
        new = ids[:, batch["input_ids"].shape[1]:]
        out[layer] = [until_eos(row.tolist(), eos, keep_eos=True) for row in new]
    return out


@torch.no_grad()
def step_probe(clean, corrupted, n_rows: int, lengths: list[int], forwards: int, repeats: int = 2) -> dict[int, float]:
    """Median seconds of one baseline step (all its forwards and hooks) on ``n_rows`` rows of each prefix length."""
    runner = _Baseline(clean, corrupted, forwards)
    out = {}
    for length in lengths:
        ids = torch.randint(5, 100, (n_rows, length), generator=torch.Generator().manual_seed(length))
        mask = torch.ones_like(ids)
        runner.step(ids[:, :8], mask[:, :8], 0)  # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            runner.step(ids, mask, 0)
            times.append(time.perf_counter() - t0)
        out[length] = statistics.median(times)
    return out


def prompt_length(clean, texts: list[str], enable_thinking: bool = True) -> int:
    from toolkit.core.chat import chat_prompts

    tok = clean.tokenizer
    return max(len(tok(t, add_special_tokens=False)["input_ids"]) for t in chat_prompts(tok, texts, enable_thinking))


def extrapolate(probe: dict[int, float], prompt_len: int, steps: int, n_layers: int) -> dict:
    """Least-squares fit of step time = a + b·length over ``probe``, summed over the sweep's steps and layers."""
    import numpy as np

    x, y = np.array(list(probe), float), np.array(list(probe.values()))
    b, a = np.polyfit(x, y, 1)
    per_layer = sum(a + b * (prompt_len + t) for t in range(steps))
    return {"fit_seconds_per_step": {"a": float(a), "b_per_token": float(b)},
            "probe_seconds": {str(k): v for k, v in probe.items()},
            "predicted_seconds": float(n_layers * per_layer)}
