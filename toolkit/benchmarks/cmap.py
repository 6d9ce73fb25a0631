"""Benchmark of CMAP (``toolkit.methods.cmap``): a full per-layer sweep at 64 new tokens, against the original's scheme.

``python -m toolkit bench cmap`` writes ``bench/results/cmap.json``.

Workload: greedy generation of up to ``--new-tokens`` (64) tokens for ``--prompts`` (8) related-math prompts with
thinking on (the organism's scratchpads are long, so rows generate ~56 tokens on average; with thinking off it answers
in ~6), the residual stream of every layer patched at the current position (``mode="current"``, the original's
semantics). Notebook 02 sweeps 40 prompts per question type (``--prompts 40``: the baseline alone then takes about 10
minutes of one core); the default of 8 keeps ``--skip-big`` within 3 minutes on an idle machine.

- **ours**: :func:`toolkit.methods.cmap.run`, one batched run over all layers with KV caches (rows: prompts × (clean,
  corrupted, one per layer)); the median of ``--repeats`` (3) runs after a warm-up.
- **baseline (original)** (:mod:`toolkit.benchmarks.cmap_baseline`): one run per layer; every step recomputes the
  whole prefix (no cache) four times, as the original did: the corrupted model to record the site, the clean model
  patched at the last position (its greedy token is the next token), and the clean and the corrupted model unpatched
  (their logits for the metrics). Batched over prompts (left padding), stopping when every row has ended.
- **baseline (lean)**: the same with only the two forwards the patched tokens need (record, patched), a lower bound
  for any full-prefix scheme.

On the organism both baselines are timed in full, and the benchmark checks that the original baseline produces the
same patched tokens as ours (``identical_patched_tokens``; exit status 1 when not). On a random-init model of
Qwen3-0.6B's shape (28 layers, d_model 1024, 16 query / 8 KV heads, head_dim 128, d_mlp 3072, vocabulary 151936, tied
embeddings; built locally from a config, never downloaded; the donor is the same weights, which changes no cost) the
full baseline would take hours, so it is **extrapolated**: the probe times one baseline step (all its full-prefix
forwards and hook set-up, on random tokens) at the shortest, middle and longest prefix of the sweep, fits time = a +
b·length by least squares, and sums the fit over the sweep (layers × steps), assuming every row runs all steps. It is
also made on the organism and compared with the measured baseline (``extrapolation_error``; it has missed by −40% to
+90% on a shared machine), so read the Qwen3-shape baseline as an order of magnitude.

Progress and load. Each phase (ours, baselines, extrapolation probe) prints its seconds and the time since the start
as it ends, and the results file is rewritten (atomically) after each phase with ``"partial": true`` until the last.
The legs run one after another (ours, then the baselines in a second process), so every speedup carries the legs'
mean 1-minute load averages and the verdict of :mod:`toolkit.benchmarks.load` (``comparable``; a warning is printed
and the speedup is not a valid figure when false); the file has the load average at the start and end,
``wall_seconds`` and ``cpu_seconds`` (the processor time of the whole run: about its wall time on an idle machine, as
the workers run one thread). ``--skip-big`` takes about 2.5 minutes of processor time; a full run some 10 more (the
Qwen3-shape sweep). ``--skip-big`` and ``--big-only`` update their model's section of an existing results file and
keep the other.

Peak memory. ``tracemalloc`` does not see torch's allocations, so ours and the baselines run in two subprocesses, and
each reports ``resource.getrusage(RUSAGE_SELF).ru_maxrss`` (peak resident set of that process) after its first
measurement (ours; the original baseline: the lean one does the same forwards, fewer of them, and the probe follows
in the same process, so neither has a peak of its own), and the same read once the models are loaded;
``peak_above_load_mb`` is the difference, the memory the method itself adds.
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

from toolkit.benchmarks import load as loadavg
from toolkit.benchmarks.cmap_baseline import (  # noqa: F401  (re-exported: the baseline is part of this benchmark)
    FORWARDS_LEAN,
    FORWARDS_ORIGINAL,
    baseline,
    extrapolate,
    prompt_length,
    step_probe,
)
from toolkit.benchmarks.options import POSITIVE, THREADS, int_range
from toolkit.core.io import REPO_ROOT, atomic_write_json

QWEN3_06B = dict(vocab_size=151936, hidden_size=1024, intermediate_size=3072, num_hidden_layers=28,
                 num_attention_heads=16, num_key_value_heads=8, head_dim=128, max_position_embeddings=4096,
                 tie_word_embeddings=True, rope_theta=1_000_000.0, rms_norm_eps=1e-6)
MODELS = ("organism", "qwen3-0.6b-shape")
MAX_PROMPTS, MAX_NEW_TOKENS = 200, 256


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
    raise SystemExit(f"unknown benchmark model {model!r}; choose one of {', '.join(MODELS)}")


def prompts(n: int) -> list[str]:
    """Related-math prompts of notebook 01's evaluation set."""
    from toolkit.training import corrupt

    records = corrupt.load_data([corrupt.preset("D-250x8ep")], max(n, 1))["related_math"]
    return [r["prompt"] for r in records[:n]]


# ---- workers (subprocesses; each phase's numbers one JSON line on stdout) ------------------------------------------


def _mb(rss_kb: float) -> float:
    return round(rss_kb / 1024, 1)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


def worker(spec: dict, emit=lambda out: print(json.dumps(out), flush=True)) -> None:
    """Run the phases ``spec["phases"]`` (ours, baseline, baseline_lean, probe) in this process, emitting each one's
    numbers (seconds, load, peak RSS after the process's first phase, processor seconds) as it ends."""
    torch.set_num_threads(spec["threads"])
    from toolkit.methods import cmap

    clean, corrupted, donor = load_pair(spec["model"], spec["donor"])
    texts = prompts(spec["prompts"])
    n_layers = clean.bridge.cfg.n_layers
    layers, steps = list(range(n_layers)), spec["new_tokens"]
    load_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    for i, phase in enumerate(spec["phases"]):
        loads, cpu0 = loadavg.LegLoads(), _cpu()
        out: dict = {"phase": phase, "model": spec["model"], "donor": donor, "n_layers": n_layers}
        if phase == "ours":
            warm = cmap.layer_sweep(clean.bridge, "resid")[:1]
            cmap.run(clean, corrupted, texts[:1], warm, max_new_tokens=2, enable_thinking=True)  # warm-up
            times, result = [], {}

            def run(result=result):
                result["r"] = cmap.run(clean, corrupted, texts, cmap.layer_sweep(clean.bridge, "resid"),
                                       mode="current", max_new_tokens=steps, enable_thinking=True, batch_size=10_000)

            for _ in range(spec["repeats"]):
                times.append(loads.run(phase, run))
            patched = result["r"].patched_tokens
            out |= {"seconds": statistics.median(times), "all_seconds": times,
                    "patched_tokens": {str(layer): [row[layer] for row in patched] for layer in layers},
                    "mean_new_tokens": sum(len(r[0]) for r in patched) / len(texts)}
        elif phase in ("baseline", "baseline_lean"):
            t0 = time.perf_counter()
            with loads.during(phase):
                tokens = baseline(clean, corrupted, texts, layers, steps,
                                  FORWARDS_ORIGINAL if phase == "baseline" else FORWARDS_LEAN)
            out |= {"seconds": time.perf_counter() - t0, "patched_tokens": {str(k): v for k, v in tokens.items()}}
        elif phase == "probe":
            t0 = time.perf_counter()
            p_len = prompt_length(clean, texts)
            lengths = sorted({p_len, p_len + steps // 2, p_len + steps - 1})
            out["prompt_length"] = p_len
            with loads.during(phase):
                for kind, forwards in (("baseline", FORWARDS_ORIGINAL), ("baseline_lean", FORWARDS_LEAN)):
                    probe = step_probe(clean, corrupted, len(texts), lengths, forwards, repeats=spec["probe_repeats"])
                    out[kind] = extrapolate(probe, p_len, steps, n_layers)
            out["seconds"] = time.perf_counter() - t0
        else:
            raise SystemExit(f"unknown worker phase {phase!r}")
        leg = loads.verdict()
        out |= {"load_1min": leg["legs_load_1min"][phase], "cpu_seconds": round(_cpu() - cpu0, 2),
                "load_1min_start_end": leg["legs_load_1min_start_end"][phase]}
        if i == 0:  # ru_maxrss is the process's peak so far: it belongs to its first measurement only
            peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            out |= {"peak_rss_mb": _mb(peak), "rss_after_load_mb": _mb(load_rss),
                    "peak_above_load_mb": _mb(peak - load_rss)}
        emit(out)


def measure(spec: dict, on_phase) -> None:
    """Run :func:`worker` in a fresh subprocess (so its peak RSS is its own), calling ``on_phase`` with each phase's
    numbers as they arrive."""
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), HF_HUB_OFFLINE="1",
               TRANSFORMERS_VERBOSITY="error")
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen([sys.executable, "-m", "toolkit.benchmarks.cmap", "--worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=err, text=True, env=env, cwd=REPO_ROOT)
        for line in proc.stdout:
            if line.startswith('{"phase"'):
                on_phase(json.loads(line))
        if proc.wait() != 0:
            err.seek(0)
            raise RuntimeError(f"benchmark worker {spec} failed:\n{err.read()[-3000:]}")


def _identical(a: dict, b: dict) -> tuple[bool, float]:
    pairs = [(x, y) for layer in a for x, y in zip(a[layer], b[layer], strict=True)]
    return a.keys() == b.keys() and all(x == y for x, y in pairs), sum(x == y for x, y in pairs) / len(pairs)


def _leg(m: dict) -> dict:
    keep = ("seconds", "load_1min", "load_1min_start_end", "cpu_seconds", "peak_rss_mb", "peak_above_load_mb")
    return {k: round(m[k], 2) if k == "seconds" else m[k] for k in keep if k in m}


class Progress:
    """Prints a line per phase with the seconds since the benchmark started."""

    def __init__(self):
        self.t0 = time.perf_counter()

    def __call__(self, text: str) -> None:
        print(f"[cmap bench +{time.perf_counter() - self.t0:5.0f} s] {text}", file=sys.stderr, flush=True)


def bench_model(model: str, n_prompts: int, new_tokens: int, threads: int, donor: str, full_baseline: bool,
                repeats: int, progress, save) -> dict:
    """ours, then the baselines (measured in full, or extrapolated by the probe); ``save(section)`` after each
    phase."""
    base = dict(model=model, prompts=n_prompts, new_tokens=new_tokens, threads=threads, donor=donor, repeats=repeats,
                probe_repeats=2 if full_baseline else 1)
    res: dict = {"prompts": n_prompts, "new_tokens": new_tokens, "complete": False}
    got: dict = {}

    def on_phase(m: dict) -> None:
        got[m["phase"]] = m
        phase = m["phase"]
        if phase == "ours":
            res.update({"donor": m["donor"], "n_layers": m["n_layers"],
                        "mean_new_tokens_generated": round(m["mean_new_tokens"], 1),
                        "ours": _leg(m) | {"repeats": repeats, "all_seconds": [round(t, 2) for t in m["all_seconds"]]}})
            progress(f"{model}: ours {m['seconds']:.2f} s (median of {repeats}; 1-minute load {m['load_1min']})")
        elif phase == "probe":
            res["baseline_probe"] = {k: m[k] for k in ("prompt_length", "baseline", "baseline_lean")}
            res["baseline_probe"]["leg"] = _leg(m)
            progress(f"{model}: extrapolation probe {m['seconds']:.1f} s; predicted baseline "
                     f"{m['baseline']['predicted_seconds']:.1f} s, lean {m['baseline_lean']['predicted_seconds']:.1f}"
                     f" s (1-minute load {m['load_1min']})")
        else:
            same, agreement = _identical(m["patched_tokens"], got["ours"]["patched_tokens"])
            res[phase] = _leg(m) | {"identical_patched_tokens": same, "patched_token_agreement_with_ours":
                                    round(agreement, 4)}
            progress(f"{model}: {phase} {m['seconds']:.1f} s; patched tokens identical to ours: "
                     f"{'yes' if same else f'NO ({agreement:.1%} agree)'} (1-minute load {m['load_1min']})")
        save(res)

    progress(f"{model}: ours ({n_prompts} prompts x {new_tokens} new tokens, {repeats} timed runs)")
    measure(base | {"phases": ["ours"]}, on_phase)
    if full_baseline:  # one process: the lean baseline's peak memory is the original's (the same forwards, fewer)
        progress(f"{model}: baseline (original, 4 forwards per step), then baseline_lean (2), measured in full, then "
                 "the extrapolation probe")
        measure(base | {"phases": ["baseline", "baseline_lean", "probe"]}, on_phase)
    else:
        progress(f"{model}: extrapolation probe (the baselines are extrapolated)")
        measure(base | {"phases": ["probe"]}, on_phase)
    for kind in ("baseline", "baseline_lean"):
        predicted = got["probe"][kind]["predicted_seconds"]
        entry = res.setdefault(kind, {}) | {"extrapolated_seconds": round(predicted, 1)}
        measured = got.get(kind)
        other = (kind, measured) if measured else ("probe", got["probe"])
        legs = {"ours": got["ours"]["load_1min"], other[0]: other[1]["load_1min"]}
        if measured:
            entry["extrapolation_error"] = round(predicted / measured["seconds"] - 1, 3)
            entry["extrapolation_load"] = loadavg.comparability({"probe": got["probe"]["load_1min"],
                                                                 kind: measured["load_1min"]})
        entry["speedup_of_ours"] = round((measured["seconds"] if measured else predicted) / got["ours"]["seconds"], 1)
        entry["speedup_is_extrapolated"] = measured is None
        entry["load"] = loadavg.comparability(legs)
        entry["comparable"] = entry["load"]["comparable"]
        res[kind] = entry
        loadavg.warn_if_incomparable(f"bench cmap, {model}, speedup over {kind}", entry["load"])
        progress(f"{model}: speedup of ours over {kind}: {entry['speedup_of_ours']}x"
                 f"{' (extrapolated)' if measured is None else ''}"
                 f"{'' if entry['comparable'] else ' -- NOT comparable: ' + entry['load']['reason']}")
    res["complete"] = True
    save(res)
    return res


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit bench cmap", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    prompts_range = int_range(1, MAX_PROMPTS)
    parser.add_argument("--prompts", type=prompts_range, default=8,
                        help=f"prompts on the organism (default 8; notebook 02 sweeps 40; 1 to {MAX_PROMPTS})")
    parser.add_argument("--big-prompts", type=prompts_range, default=1,
                        help="prompts on the Qwen3-0.6B shape (default 1)")
    parser.add_argument("--new-tokens", type=int_range(1, MAX_NEW_TOKENS), default=64,
                        help=f"new tokens per row (default 64; 1 to {MAX_NEW_TOKENS})")
    parser.add_argument("--repeats", type=POSITIVE, default=3, help="timed runs of ours on the organism (default 3)")
    parser.add_argument("--threads", type=THREADS, default=1, help="torch threads per worker (default 1)")
    parser.add_argument("--donor", default="B-500x8ep", help="corrupted checkpoint for the organism")
    which = parser.add_mutually_exclusive_group()
    which.add_argument("--skip-big", action="store_true", help="skip the Qwen3-0.6B-shape model")
    which.add_argument("--big-only", action="store_true", help="only the Qwen3-0.6B-shape model")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "cmap.json"))
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(json.loads(args.worker))
        return 0
    start, progress, out = loadavg.reading(), Progress(), Path(args.out)
    # --skip-big / --big-only update this model's section of an existing file and keep the other one
    previous = json.loads(out.read_text()) if (args.skip_big or args.big_only) and out.exists() else {}
    command = "python -m toolkit bench cmap " + " ".join(argv or [])
    results = {"command": command, "torch_threads": args.threads,
               "memory_method": "resource.getrusage(RUSAGE_SELF).ru_maxrss of the subprocess after its first "
                                "measurement (ours; the original baseline)"}
    if args.skip_big or args.big_only:
        results["command_" + ("organism" if args.skip_big else "qwen3_0.6b_shape")] = command

    def save(partial: bool = True) -> dict:
        children = resource.getrusage(resource.RUSAGE_CHILDREN)
        final = previous | results | {"partial": partial, "wall_seconds": round(time.perf_counter() - progress.t0, 1),
                                      "cpu_seconds": round(_cpu() + children.ru_utime + children.ru_stime, 1)}
        atomic_write_json(out, loadavg.stamp(final, start))
        return final

    plan = [] if args.big_only else [("organism", "organism", args.prompts, True, args.repeats)]
    plan += [] if args.skip_big else [("qwen3_0.6b_shape", "qwen3-0.6b-shape", args.big_prompts, False, 1)]
    for key, model, n, full, repeats in plan:
        def section(res, key=key):
            results[key] = res
            save()
        bench_model(model, n, args.new_tokens, args.threads, args.donor, full, repeats, progress, section)
    identical = True
    if "organism" in results:
        org = results["organism"]
        identical = org["baseline"]["identical_patched_tokens"]
        results["goal_10x_on_organism"] = org["baseline"]["speedup_of_ours"] >= 10 if org["baseline"]["comparable"] \
            else None
    final = save(partial=False)
    print(json.dumps(final, indent=2))
    progress(f"done; written to {args.out}")
    if not identical:
        print("ERROR: the original baseline's patched tokens differ from ours: the speedup compares different work",
              file=sys.stderr)
    return 0 if identical else 1


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
