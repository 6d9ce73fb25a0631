"""Benchmark of EAP-IG: time against m plain HF forward+backward passes, and peak memory.

Goal: ``EAP-IG time / (m × one plain HF forward+backward on the same batch) ≤ 1.5``, measured on the organism and on
a random-init model of Qwen3-0.6B's shape (config built locally, nothing downloaded), plus the peak memory of EAP-IG
on the 0.6B shape at batch 4 × 128 tokens.

The baseline is a separately loaded plain ``AutoModelForCausalLM`` (HF's default SDPA attention, no bridge), running
``loss = LM cross-entropy; loss.backward()`` with trainable parameters, i.e. what one training step costs. The same
baseline with frozen parameters (activation gradients only) is reported beside it. EAP-IG's time includes everything
``toolkit.methods.eap.attribute`` does: the clean and corrupted forwards, m forward+backward passes through the
TransformerBridge, and the score contraction. Timings are medians of interleaved runs.

On the 0.6B shape one forward+backward over 4 × 128 tokens takes about a minute on one CPU thread, so by default
the time ratio is measured at batch 2 × 64 (``--ratio-shape 4 128`` for the full batch) and the peak memory at
4 × 128 with 2 IG steps (the peak does not grow with m). The organism runs first; ``--skip-large`` stops there.

Run: ``python -m toolkit bench eap`` (about 5 minutes on an idle 2-core machine). Results: ``bench/results/eap.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
import tempfile
import threading
import time
from pathlib import Path

import torch

from toolkit.core.io import REPO_ROOT, atomic_write_json
from toolkit.core.models import LoadedModel, load
from toolkit.methods import eap

QWEN3_06B = dict(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                 num_key_value_heads=8, head_dim=128, vocab_size=151936, tie_word_embeddings=True,
                 max_position_embeddings=40960, rms_norm_eps=1e-6, rope_parameters={"rope_type": "default",
                                                                                     "rope_theta": 1000000.0},
                 bos_token_id=None, eos_token_id=2, pad_token_id=0)


def _plain_step(model, ids: torch.Tensor, trainable: bool):
    """One plain forward+backward: LM loss over the batch."""
    def run():
        model.requires_grad_(trainable)
        model.zero_grad(set_to_none=True)
        if trainable:
            logits = model(input_ids=ids).logits
        else:
            emb = model.get_input_embeddings()(ids).detach().requires_grad_(True)
            logits = model(inputs_embeds=emb).logits
        loss = torch.nn.functional.cross_entropy(logits[:, :-1].flatten(0, 1), ids[:, 1:].flatten())
        loss.backward()
        model.zero_grad(set_to_none=True)
    return run


def _timed(fns: dict, repeats: int, warmup: bool) -> dict[str, float]:
    if warmup:
        for fn in fns.values():
            fn()
    times = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


class _PeakRSS:
    """Samples the process's resident memory in a thread; ``peak`` in bytes (CUDA: max allocated)."""

    def __init__(self, device: torch.device, interval: float = 0.005):
        self.device, self.interval, self.peak, self.start = device, interval, 0, 0

    def _rss(self) -> int:
        import psutil

        return psutil.Process().memory_info().rss

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
            self.start = torch.cuda.memory_allocated(self.device)
            return self
        self.start = self.peak = self._rss()
        self._stop = threading.Event()

        def loop():
            while not self._stop.is_set():
                self.peak = max(self.peak, self._rss())
                time.sleep(self.interval)

        self._thread = threading.Thread(target=loop, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.peak = torch.cuda.max_memory_allocated(self.device)
            return
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self._rss())


def compare(loaded: LoadedModel, plain, pairs: eap.Pairs, steps: int, repeats: int, warmup: bool = True) -> dict:
    """EAP-IG on all of ``pairs`` as one batch, against ``steps`` plain forward+backward passes on the same batch."""
    ids = pairs.clean_ids

    def run_eap():
        eap.attribute(loaded, pairs, method="eap-ig", steps=steps, batch_size=len(pairs), show_progress=False)

    plain.train(False)
    secs = _timed({"eap_ig": run_eap, "plain_fwd_bwd": _plain_step(plain, ids, True),
                   "plain_fwd_bwd_frozen": _plain_step(plain, ids, False)}, repeats, warmup)
    return {
        "batch": list(ids.shape), "steps": steps, "repeats": repeats, "seconds": secs,
        "ratio": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd"]), 3),
        "ratio_vs_frozen_baseline": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd_frozen"]), 3),
    }


def organism_case(steps: int, repeats: int, n_pairs: int = 8) -> dict:
    from transformers import AutoModelForCausalLM

    from toolkit.organism.tasks import held_out

    loaded = load("organism")
    pairs = eap.make_pairs(loaded, held_out("linear", 3 * n_pairs, seed=11), unequal="drop")
    pairs = pairs.subset(range(min(n_pairs, len(pairs))))
    plain = AutoModelForCausalLM.from_pretrained(loaded.hf.name_or_path)
    out = compare(loaded, plain, pairs, steps, repeats)
    out["model"] = "organism"
    return out


def qwen3_06b_shape(batch: int = 4, length: int = 128, seed: int = 0) -> tuple[LoadedModel, object]:
    """A random-init model of Qwen3-0.6B's shape behind a TransformerBridge, and a plain copy of it."""
    from transformer_lens.model_bridge import TransformerBridge
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from toolkit.organism.tokenizer import build_tokenizer

    config = Qwen3Config(**QWEN3_06B)
    torch.manual_seed(seed)
    hf = Qwen3ForCausalLM(config).eval()
    plain = copy.deepcopy(hf)
    hf.requires_grad_(False)
    tok = build_tokenizer()
    with tempfile.TemporaryDirectory() as tmp:
        config.save_pretrained(tmp)
        tok.save_pretrained(tmp)
        bridge = TransformerBridge.boot_transformers(tmp, hf_model=hf, tokenizer=tok, device="cpu",
                                                     dtype=torch.float32)
    bridge.eval()
    return LoadedModel(hf, tok, bridge, "random Qwen3-0.6B shape"), plain


def random_pairs(batch: int, length: int, vocab: int, seed: int = 0) -> eap.Pairs:
    """``batch`` pairs of ``length`` random tokens; the corrupted row differs in three positions."""
    gen = torch.Generator().manual_seed(seed)
    clean = torch.randint(10, vocab, (batch, length), generator=gen)
    corr = clean.clone()
    for j in (length // 4, length // 2, 3 * length // 4):
        corr[:, j] = torch.randint(10, vocab, (batch,), generator=gen)
    labels = torch.randint(10, vocab, (2, batch), generator=gen)
    return eap.Pairs.from_token_lists(clean.tolist(), corr.tolist(), labels[0].tolist(), labels[1].tolist())


def large_case(steps: int, ratio_shape: tuple[int, int], memory_shape: tuple[int, int], memory_steps: int,
               repeats: int = 1) -> dict:
    """On the 0.6B shape: the time ratio at ``ratio_shape`` (EAP-IG with ``steps``; a warm-up, then ``repeats``
    interleaved timed runs: a 0.6B forward+backward takes about a minute per 512 tokens on one CPU thread), then
    EAP-IG's peak memory at ``memory_shape`` with ``memory_steps`` steps, measured first, on a fresh process heap
    (the peak does not grow with m: per step only one layer's target gradients are added to what the first step
    holds)."""
    loaded, plain = qwen3_06b_shape()
    n_params = sum(p.numel() for p in loaded.hf.parameters())
    vocab = QWEN3_06B["vocab_size"]
    mb, ml = memory_shape
    pairs = random_pairs(mb, ml, vocab, seed=1)
    estimate = eap.estimate_memory(loaded, mb, ml)["total"]
    with _PeakRSS(torch.device("cpu")) as mem:
        t0 = time.perf_counter()
        eap.attribute(loaded, pairs, method="eap-ig", steps=memory_steps, batch_size=mb, show_progress=False)
        mem_seconds = time.perf_counter() - t0
    rb, rl = ratio_shape
    pairs = random_pairs(rb, rl, vocab)
    plain.train(False)
    secs = _timed({"eap_ig": lambda: eap.attribute(loaded, pairs, method="eap-ig", steps=steps, batch_size=rb,
                                                   show_progress=False),
                   "plain_fwd_bwd": _plain_step(plain, pairs.clean_ids, True)}, repeats, warmup=True)
    del plain
    extra = mem.peak - mem.start
    return {"model": "random Qwen3-0.6B shape", "parameters": n_params, "batch": [rb, rl], "steps": steps,
            "repeats": repeats, "seconds": {k: round(v, 2) for k, v in secs.items()},
            "ratio": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd"]), 3),
            "peak_memory": {"batch": [mb, ml], "steps": memory_steps, "seconds": round(mem_seconds, 2),
                            "extra_peak_gib": round(extra / 2**30, 3), "process_peak_gib": round(mem.peak / 2**30, 3),
                            "weights_gib": round(4 * n_params / 2**30, 3), "estimate_gib": round(estimate / 2**30, 3),
                            "note": "extra = peak resident memory during attribute() minus resident memory before it "
                                    "(the loaded weights)"}}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit bench eap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=5, help="IG steps m (default 5)")
    parser.add_argument("--repeats", type=int, default=7, help="timed repeats on the organism")
    parser.add_argument("--ratio-shape", type=int, nargs=2, default=(2, 64), metavar=("BATCH", "TOKENS"),
                        help="batch for the 0.6B time ratio (default 2 64; 4 128 takes ~4x longer)")
    parser.add_argument("--memory-shape", type=int, nargs=2, default=(4, 128), metavar=("BATCH", "TOKENS"),
                        help="batch for the 0.6B peak memory (default 4 128)")
    parser.add_argument("--memory-steps", type=int, default=2, help="IG steps in the memory run (default 2)")
    parser.add_argument("--large-repeats", type=int, default=1, help="timed repeats on the 0.6B shape (default 1)")
    parser.add_argument("--skip-large", action="store_true", help="only the organism")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (1 is steadier on a shared box)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "eap.json"))
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {"torch_threads": torch.get_num_threads(), "goal_ratio": 1.5,
               "organism": organism_case(args.steps, args.repeats)}
    print(json.dumps(results["organism"], indent=2), flush=True)
    if not args.skip_large:
        results["qwen3_0.6b_shape"] = large_case(args.steps, tuple(args.ratio_shape), tuple(args.memory_shape),
                                                 args.memory_steps, args.large_repeats)
        print(json.dumps(results["qwen3_0.6b_shape"], indent=2))
    atomic_write_json(Path(args.out), results)
    print(f"written to {args.out}")
    return 0
