"""Benchmark of CMAP (``toolkit.methods.cmap``): a full per-layer sweep at 64 new tokens, against the original's scheme.

``python -m toolkit bench cmap`` writes ``bench/results/cmap.json``.

Workload: greedy generation of up to ``--new-tokens`` (64) tokens for ``--prompts`` (40) related-math prompts with
thinking on (the organism's scratchpads are long, so rows generate ~56 tokens on average; with thinking off it answers
in ~6), the residual stream of every layer patched at the current position (``mode="current"``, the original's
semantics).

- **ours**: :func:`toolkit.methods.cmap.run`, one batched run over all layers with KV caches (rows: prompts × (clean,
  corrupted, one per layer)).
- **baseline (original)**, written here: one run per layer; every step recomputes the whole prefix (no cache) four
  times, as the original did: the corrupted model to record the site, the clean model patched at the last position
  (its greedy token is the next token), and the clean and the corrupted model unpatched (their logits for the
  metrics). Batched over prompts (left padding), stopping when every row has ended.
- **baseline (lean)**: the same with only the two forwards the patched tokens need (record, patched), a lower bound
  for any full-prefix scheme.

On the organism both baselines are timed in full, and the benchmark checks that they produce the same patched tokens
as ours. On a random-init model of Qwen3-0.6B's shape (28 layers, d_model 1024, 16 query / 8 KV heads, head_dim 128,
d_mlp 3072, vocabulary 151936, tied embeddings; built locally from a config, never downloaded; the donor is the same
weights, which changes no cost) the full baseline would take hours, so it is **extrapolated**: a worker times one
baseline step (all its full-prefix forwards and hook set-up, on random tokens) at the shortest, middle and longest
prefix of the sweep, fits time = a + b·length by least squares, and sums the fit over the sweep (layers × steps). The
extrapolation assumes every row runs all steps (the random Qwen3-shape model generated all 64 tokens in every run).
It is also made on the organism and compared with the measured baseline (``extrapolation_error``): on this shared
machine it missed by −40% to +90% between runs (the load changes between the probe and the measured run, and the
organism's tiny forwards are dominated by fixed overheads), so read the Qwen3-shape baseline as an order of magnitude.

Timing noise. On a shared machine the load changes between measurements, and they run one after another; ours is
the median of 3 runs on the organism, and every measurement records the 1-minute load average after it. A full run
takes about 15–20 minutes (most of it the Qwen3-shape sweep, ~8 minutes on one thread); ``--skip-big`` takes ~3.
``--skip-big`` and ``--big-only`` update their model's section of an existing results file and keep the other.

Peak memory. ``tracemalloc`` does not see torch's allocations, so each measurement runs in its own subprocess and
reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set of that process). A worker that only loads
the models gives the baseline footprint; ``peak_above_load_mb`` is the difference, the memory the method itself adds.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from toolkit.core.io import REPO_ROOT, atomic_write_json

FORWARDS_ORIGINAL, FORWARDS_LEAN = 4, 2
QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                 tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6)


# ---- models --------------------------------------------------------------------------------------------------------


def _perturbed_organism(seed: int = 0):
    """A stand-in donor when no corrupted checkpoint exists: the organism with relative noise on its blocks."""
    from toolkit.core.models import load

    m = load("organism")
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in m.hf.named_parameters():
            if "layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * 0.3)
    return m


def load_pair(model: str, donor: str):
    """(clean, corrupted, donor description) for ``model`` in organism / qwen3-0.6b-shape."""
    from toolkit.core.models import LoadedModel, load

    if model == "organism":
        from toolkit.training import corrupt

        try:
            path = corrupt.corrupted_checkpoint(donor)
            return load("organism"), load(str(path)), f"corrupted checkpoint {donor}"
        except FileNotFoundError:
            return load("organism"), _perturbed_organism(), "organism with perturbed blocks (no checkpoint found)"
    if model == "qwen3-0.6b-shape":
        from transformer_lens.model_bridge import TransformerBridge
        from transformers import Qwen3Config, Qwen3ForCausalLM

        from toolkit.organism.tokenizer import build_tokenizer

        config = Qwen3Config(**QWEN3_06B, bos_token_id=None, eos_token_id=2, pad_token_id=0)
        torch.manual_seed(0)
        hf = Qwen3ForCausalLM(config).eval()
        hf.requires_grad_(False)
        tok = build_tokenizer()
        tok.padding_side = "left"
        folder = Path(tempfile.mkdtemp(prefix="qwen3-0.6b-shape-"))
        config.save_pretrained(folder)
        tok.save_pretrained(folder)
        bridge = TransformerBridge.boot_transformers(str(folder), hf_model=hf, tokenizer=tok, device="cpu")
        bridge.eval()
        m = LoadedModel(hf, tok, bridge, "qwen3-0.6b-shape")
        return m, m, "the same random weights (cost does not depend on weight values)"
    raise SystemExit(f"unknown benchmark model {model!r}; choose organism or qwen3-0.6b-shape")


def prompts(n: int) -> list[str]:
    """Related-math prompts of notebook 01's evaluation set."""
    from toolkit.training import corrupt

    records = corrupt.load_data([corrupt.preset("D-250x8ep")], max(n, 1))["related_math"]
    return [r["prompt"] for r in records[:n]]


# ---- the original's scheme -----------------------------------------------------------------------------------------


class _Baseline:
    """The original's step: full-prefix forwards (no cache) with the residual stream of one layer patched at the last
    position; ``forwards`` ∈ {2, 4} forward passes per step (see the module docstring)."""

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


# ---- workers (one subprocess per measurement) ----------------------------------------------------------------------


def worker(spec: dict) -> dict:
    """Run one measurement in this process and return its numbers with the process's peak RSS."""
    torch.set_num_threads(spec["threads"])
    from toolkit.methods import cmap

    clean, corrupted, donor = load_pair(spec["model"], spec["donor"])
    texts = prompts(spec["prompts"])
    n_layers = clean.bridge.cfg.n_layers
    layers = list(range(n_layers))
    steps = spec["new_tokens"]
    out: dict = {"kind": spec["kind"], "model": spec["model"], "donor": donor, "n_layers": n_layers}
    t0 = time.perf_counter()
    if spec["kind"] == "ours":
        warm = cmap.layer_sweep(clean.bridge, "resid")[:1]
        cmap.run(clean, corrupted, texts[:1], warm, max_new_tokens=2, enable_thinking=True)  # warm-up
        times = []
        for _ in range(spec["repeats"]):
            t0 = time.perf_counter()
            result = cmap.run(clean, corrupted, texts, cmap.layer_sweep(clean.bridge, "resid"), mode="current",
                              max_new_tokens=steps, enable_thinking=True, batch_size=10_000)
            times.append(time.perf_counter() - t0)
        out["seconds"] = statistics.median(times)
        out["all_seconds"] = times
        out["patched_tokens"] = {str(layer): [row[layer] for row in result.patched_tokens] for layer in layers}
        out["mean_new_tokens"] = sum(len(r[0]) for r in result.patched_tokens) / len(texts)
    elif spec["kind"] in ("baseline", "baseline_lean"):
        forwards = FORWARDS_ORIGINAL if spec["kind"] == "baseline" else FORWARDS_LEAN
        tokens = baseline(clean, corrupted, texts, layers, steps, forwards)
        out["seconds"] = time.perf_counter() - t0
        out["patched_tokens"] = {str(k): v for k, v in tokens.items()}
    elif spec["kind"] == "probe":
        p_len = prompt_length(clean, texts)
        lengths = sorted({p_len, p_len + steps // 2, p_len + steps - 1})
        out["prompt_length"] = p_len
        for kind, forwards in (("baseline", FORWARDS_ORIGINAL), ("baseline_lean", FORWARDS_LEAN)):
            probe = step_probe(clean, corrupted, len(texts), lengths, forwards, repeats=spec["probe_repeats"])
            out[kind] = extrapolate(probe, p_len, steps, n_layers)
    elif spec["kind"] != "load":
        raise SystemExit(f"unknown worker kind {spec['kind']!r}")
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["load_average_after"] = round(os.getloadavg()[0], 2)
    return out


def measure(spec: dict) -> dict:
    """Run :func:`worker` in a fresh subprocess (so its peak RSS is its own) and return its JSON."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    proc = subprocess.run([sys.executable, "-m", "toolkit.benchmarks.cmap", "--worker", json.dumps(spec)],
                          capture_output=True, text=True, env=env, cwd=REPO_ROOT)
    if proc.returncode != 0:
        raise RuntimeError(f"benchmark worker {spec} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _agreement(a: dict, b: dict) -> float:
    pairs = [(x, y) for layer in a for x, y in zip(a[layer], b[layer])]
    return sum(x == y for x, y in pairs) / len(pairs)


def bench_model(model: str, n_prompts: int, new_tokens: int, threads: int, donor: str, full_baseline: bool,
                repeats: int) -> dict:
    base = dict(model=model, prompts=n_prompts, new_tokens=new_tokens, threads=threads, donor=donor, repeats=repeats,
                probe_repeats=2 if full_baseline else 1)
    print(f"[cmap bench] {model}: load", file=sys.stderr)
    load = measure(base | {"kind": "load"})
    print(f"[cmap bench] {model}: ours", file=sys.stderr)
    ours = measure(base | {"kind": "ours"})
    print(f"[cmap bench] {model}: baseline probe", file=sys.stderr)
    probe = measure(base | {"kind": "probe"})
    res = {"donor": ours["donor"], "n_layers": ours["n_layers"], "prompts": n_prompts, "new_tokens": new_tokens,
           "mean_new_tokens_generated": round(ours["mean_new_tokens"], 1),
           "ours": {"seconds": round(ours["seconds"], 2), "all_seconds": [round(t, 2) for t in ours["all_seconds"]],
                    "load_average_after": ours["load_average_after"], "peak_rss_mb": round(ours["peak_rss_mb"]),
                    "peak_above_load_mb": round(ours["peak_rss_mb"] - load["peak_rss_mb"])},
           "load_only_peak_rss_mb": round(load["peak_rss_mb"]),
           "baseline_probe": {k: probe[k] for k in ("prompt_length", "baseline", "baseline_lean")}}
    for kind in ("baseline", "baseline_lean"):
        predicted = probe[kind]["predicted_seconds"]
        entry = {"extrapolated_seconds": round(predicted, 1)}
        if full_baseline:
            print(f"[cmap bench] {model}: {kind}", file=sys.stderr)
            m = measure(base | {"kind": kind})
            entry |= {"seconds": round(m["seconds"], 2), "load_average_after": m["load_average_after"],
                      "peak_rss_mb": round(m["peak_rss_mb"]),
                      "peak_above_load_mb": round(m["peak_rss_mb"] - load["peak_rss_mb"]),
                      "extrapolation_error": round(predicted / m["seconds"] - 1, 3),
                      "patched_token_agreement_with_ours": round(_agreement(m["patched_tokens"],
                                                                            ours["patched_tokens"]), 4)}
            seconds = m["seconds"]
        else:
            seconds = predicted
        entry["speedup_of_ours"] = round(seconds / ours["seconds"], 1)
        entry["speedup_is_extrapolated"] = not full_baseline
        res[kind] = entry
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit bench cmap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--prompts", type=int, default=40,
                        help="prompts on the organism (default 40, as notebook 02 sweeps per question type)")
    parser.add_argument("--big-prompts", type=int, default=1, help="prompts on the Qwen3-0.6B shape (default 1)")
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--donor", default="B-500x8ep", help="corrupted checkpoint for the organism")
    parser.add_argument("--skip-big", action="store_true", help="skip the Qwen3-0.6B-shape model")
    parser.add_argument("--big-only", action="store_true", help="only the Qwen3-0.6B-shape model")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "cmap.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return 0
    if args.prompts < 1 or args.new_tokens < 1:
        raise SystemExit("--prompts and --new-tokens must be at least 1")
    if args.skip_big and args.big_only:
        raise SystemExit("--skip-big and --big-only exclude each other")
    results = {"command": "python -m toolkit bench cmap " + " ".join(argv or []), "torch_threads": args.threads,
               "memory_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss of one subprocess per measurement"}
    if not args.big_only:
        results["organism"] = bench_model("organism", args.prompts, args.new_tokens, args.threads, args.donor, True, 3)
        results["goal_10x_on_organism"] = results["organism"]["baseline"]["speedup_of_ours"] >= 10
    if not args.skip_big:
        results["qwen3_0.6b_shape"] = bench_model("qwen3-0.6b-shape", args.big_prompts, args.new_tokens,
                                                  args.threads, args.donor, False, 1)
    out = Path(args.out)
    if (args.skip_big or args.big_only) and out.exists():  # update this model's section, keep the other one
        previous = json.loads(out.read_text())
        results = previous | results | {"command_" + ("organism" if args.skip_big else "qwen3_0.6b_shape"):
                                        results["command"]}
    atomic_write_json(out, results)
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
