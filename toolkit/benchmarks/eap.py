"""Benchmark of EAP-IG: time against m plain HF forward+backward passes, and peak memory.

Goal: ``EAP-IG time / (m × one plain HF forward+backward on the same batch) ≤ 1.5``, measured on the organism and on
a random-init model of Qwen3-0.6B's shape (config built locally, nothing downloaded), plus the peak memory of EAP-IG
on the 0.6B shape at batch 4 × 128 tokens.

The baseline is a separately loaded plain ``AutoModelForCausalLM`` (HF's default SDPA attention, no bridge), running
``loss = LM cross-entropy; loss.backward()`` with trainable parameters, i.e. what one training step costs. The same
baseline with frozen parameters (activation gradients only) is reported beside it. EAP-IG's time includes everything
``toolkit.methods.eap.attribute`` does: the clean and corrupted forwards, m forward+backward passes through the
TransformerBridge, and the score contraction. Timings are medians of interleaved runs.

The organism's batch is ``--pairs`` (8) real pairs of :func:`toolkit.methods.eap.make_pairs`: held-out linear
equations with thinking **on** (with thinking off the organism gives the same answer to nearly every clean and
corrupted problem, and ``make_pairs`` drops those, which left one pair), each row the prompt plus the scratchpad up to
where the two responses part. Fewer pairs than asked is an error, not a smaller batch. The batch shape (pairs ×
tokens) is recorded and printed beside the ratio. Every ratio carries the load average of its legs and the verdict
of :mod:`toolkit.benchmarks.load` (``comparable``; not a valid figure when false); the results file has the load
average at the benchmark's start and end.

On the 0.6B shape one forward+backward over 4 × 128 tokens takes about a minute on one CPU thread, so by default
the time ratio is measured at batch 2 × 64 (``--ratio-shape 4 128`` for the full batch) and the peak memory at
4 × 128 with 2 IG steps (the peak does not grow with m). The organism runs first; ``--skip-large`` stops there.

Run: ``python -m toolkit bench eap`` (about 5 minutes on an idle 2-core machine). Results: ``bench/results/eap.json``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import tempfile
import threading
import time
from pathlib import Path

import torch

from toolkit.benchmarks import load as loadavg
from toolkit.benchmarks.options import POSITIVE, THREADS, int_range
from toolkit.core.io import REPO_ROOT, atomic_write_json
from toolkit.core.models import LoadedModel, load
from toolkit.methods import eap

PAIRS_TASK, PAIRS_SEED = "linear", 11  # held-out problems the organism's pairs come from (thinking on)

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
    secs, verdict = loadavg.interleaved({"eap_ig": run_eap, "plain_fwd_bwd": _plain_step(plain, ids, True),
                                         "plain_fwd_bwd_frozen": _plain_step(plain, ids, False)}, repeats, warmup)
    return {
        "batch": list(ids.shape), "batch_shape": f"{ids.shape[0]} pairs x {ids.shape[1]} tokens", "steps": steps,
        "repeats": repeats, "seconds": secs,
        "ratio": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd"]), 3),
        "ratio_vs_frozen_baseline": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd_frozen"]), 3),
        "comparable": verdict["comparable"], "load": verdict,
    }


def organism_pairs(loaded: LoadedModel, n_pairs: int) -> tuple[eap.Pairs, dict]:
    """``n_pairs`` pairs of :func:`toolkit.methods.eap.make_pairs` on held-out linear equations, thinking on, and a
    description of where they came from; raises ``SystemExit`` when fewer come out."""
    from toolkit.organism.tasks import held_out

    problems = held_out(PAIRS_TASK, 2 * n_pairs, seed=PAIRS_SEED)
    pairs = eap.make_pairs(loaded, problems, enable_thinking=True, unequal="drop")
    if len(pairs) < n_pairs:
        reasons = sorted({d["reason"] for d in pairs.dropped})
        raise SystemExit(f"bench eap: only {len(pairs)} of the {n_pairs} requested pairs came out of "
                         f"{len(problems)} held-out {PAIRS_TASK} problems (thinking on; dropped: "
                         f"{'; '.join(reasons) or 'none'}); ask for fewer with --pairs")
    source = {"task": PAIRS_TASK, "problems": len(problems), "seed": PAIRS_SEED, "enable_thinking": True,
              "usable_pairs": len(pairs), "dropped": len(pairs.dropped), "used": n_pairs}
    return pairs.subset(range(n_pairs)), source


def organism_case(steps: int, repeats: int, n_pairs: int = 8) -> dict:
    from transformers import AutoModelForCausalLM

    loaded = load("organism")
    pairs, source = organism_pairs(loaded, n_pairs)
    plain = AutoModelForCausalLM.from_pretrained(loaded.hf.name_or_path)
    out = {"model": "organism", "pairs": len(pairs), "pairs_source": source}
    return out | compare(loaded, plain, pairs, steps, repeats)


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
    secs, verdict = loadavg.interleaved({"eap_ig": lambda: eap.attribute(loaded, pairs, method="eap-ig", steps=steps,
                                                                         batch_size=rb, show_progress=False),
                                         "plain_fwd_bwd": _plain_step(plain, pairs.clean_ids, True)}, repeats)
    del plain
    extra = mem.peak - mem.start
    return {"model": "random Qwen3-0.6B shape", "parameters": n_params, "batch": [rb, rl],
            "batch_shape": f"{rb} pairs x {rl} tokens", "steps": steps,
            "repeats": repeats, "seconds": {k: round(v, 2) for k, v in secs.items()},
            "ratio": round(secs["eap_ig"] / (steps * secs["plain_fwd_bwd"]), 3),
            "comparable": verdict["comparable"], "load": verdict,
            "peak_memory": {"batch": [mb, ml], "steps": memory_steps, "seconds": round(mem_seconds, 2),
                            "extra_peak_gib": round(extra / 2**30, 3), "process_peak_gib": round(mem.peak / 2**30, 3),
                            "weights_gib": round(4 * n_params / 2**30, 3), "estimate_gib": round(estimate / 2**30, 3),
                            "note": "extra = peak resident memory during attribute() minus resident memory before it "
                                    "(the loaded weights)"}}


def summary(name: str, res: dict, goal: float) -> str:
    """One printed line: the batch shape, the ratio against the goal, and whether it is a valid comparison."""
    valid = "comparable" if res["comparable"] else f"NOT comparable: {res['load']['reason']}"
    return (f"[eap bench] {name}: batch {res['batch_shape']}, EAP-IG {res['seconds']['eap_ig']:.2f} s, plain "
            f"fwd+bwd {res['seconds']['plain_fwd_bwd']:.3f} s, ratio {res['ratio']} (goal <= {goal}); legs' 1-minute "
            f"load {res['load']['legs_load_1min']} ({valid})")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m toolkit bench eap", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pairs", type=POSITIVE, default=8, help="pairs in the organism's batch (default 8)")
    p.add_argument("--steps", type=POSITIVE, default=5, help="IG steps m (default 5)")
    p.add_argument("--repeats", type=POSITIVE, default=7, help="timed repeats on the organism (default 7)")
    p.add_argument("--ratio-shape", type=int_range(1), nargs=2, default=(2, 64), metavar=("BATCH", "TOKENS"),
                   help="batch for the 0.6B time ratio (default 2 64; 4 128 takes ~4x longer)")
    p.add_argument("--memory-shape", type=int_range(1), nargs=2, default=(4, 128), metavar=("BATCH", "TOKENS"),
                   help="batch for the 0.6B peak memory (default 4 128)")
    p.add_argument("--memory-steps", type=POSITIVE, default=2, help="IG steps in the memory run (default 2)")
    p.add_argument("--large-repeats", type=POSITIVE, default=1, help="timed repeats on the 0.6B shape (default 1)")
    p.add_argument("--skip-large", action="store_true", help="only the organism")
    p.add_argument("--threads", type=THREADS, default=None, help="torch threads (1 is steadier on a shared box)")
    p.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "eap.json"))
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    for flag in ("ratio_shape", "memory_shape"):
        if getattr(args, flag)[1] < 4:
            p.error(f"argument --{flag.replace('_', '-')}: TOKENS must be at least 4 (the corrupted rows differ "
                    "from the clean ones at three positions)")
    start = loadavg.reading()
    if args.threads:
        torch.set_num_threads(args.threads)
    goal = 1.5
    results = {"command": "python -m toolkit bench eap " + " ".join(argv or []),
               "torch_threads": torch.get_num_threads(), "goal_ratio": goal,
               "organism": organism_case(args.steps, args.repeats, args.pairs)}
    print(json.dumps(results["organism"], indent=2), flush=True)
    print(summary("organism", results["organism"], goal), flush=True)
    loadavg.warn_if_incomparable("bench eap, organism", results["organism"]["load"])
    if not args.skip_large:
        atomic_write_json(Path(args.out), loadavg.stamp(results | {"partial": True}, start))
        results["qwen3_0.6b_shape"] = large_case(args.steps, tuple(args.ratio_shape), tuple(args.memory_shape),
                                                 args.memory_steps, args.large_repeats)
        print(json.dumps(results["qwen3_0.6b_shape"], indent=2))
        print(summary("qwen3-0.6b shape", results["qwen3_0.6b_shape"], goal), flush=True)
        loadavg.warn_if_incomparable("bench eap, Qwen3-0.6B shape", results["qwen3_0.6b_shape"]["load"])
    atomic_write_json(Path(args.out), loadavg.stamp(results | {"partial": False}, start))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
