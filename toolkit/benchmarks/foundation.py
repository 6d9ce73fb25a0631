"""Benchmarks of the foundation: organism build time, generation throughput, bridge overhead.

Each speed is reported with a baseline measured in the same run, as a ratio, beside its legs' load average and the
verdict of :mod:`toolkit.benchmarks.load` (``comparable``; not a valid figure when false). Results go to
``bench/results/foundation.json`` (git-ignored), with the load average at the benchmark's start and end. Run
``python -m toolkit bench foundation`` (``make bench``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import tempfile
import time
from pathlib import Path

import torch

from toolkit.benchmarks import load as loadavg
from toolkit.benchmarks.options import THREADS
from toolkit.core.io import REPO_ROOT, atomic_write_json
from toolkit.core.models import load, load_config
from toolkit.core.specs import ModelLoadError, data_dir


def bridge_overhead(spec: str, batch: int = 16, length: int = 128, repeats: int = 15) -> dict:
    """Forward-pass time of the TransformerBridge (hook flags off and on) against the plain HF model."""
    from transformers import AutoModelForCausalLM

    m = load(spec)
    folder = m.hf.name_or_path
    plain_sdpa = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="sdpa").eval()
    plain_eager = AutoModelForCausalLM.from_pretrained(folder, attn_implementation="eager").eval()
    ids = torch.randint(5, 100, (batch, length), generator=torch.Generator().manual_seed(0))

    def flags(on: bool) -> None:
        m.bridge.set_use_attn_result(on)
        m.bridge.set_use_split_qkv_input(on)
        m.bridge.set_use_hook_mlp_in(on)

    loads = loadavg.LegLoads()
    with torch.no_grad():
        flags(False)
        off, _ = loadavg.interleaved({"hf_sdpa": lambda: plain_sdpa(ids), "hf_eager": lambda: plain_eager(ids),
                                      "bridge": lambda: m.bridge(ids)}, repeats, loads=loads)
        flags(True)
        m.bridge(ids)  # warm-up
        on = statistics.median(loads.run("bridge_flags_on", lambda: m.bridge(ids)) for _ in range(repeats))
        flags(False)
    verdict = loads.verdict()
    return {
        "shape": [batch, length], "comparable": verdict["comparable"], "load": verdict,
        "seconds": {**off, "bridge_flags_on": on},
        "ratio_bridge_flags_on_vs_hf_sdpa": round(on / off["hf_sdpa"], 2),
        "ratio_bridge_flags_on_vs_hf_eager": round(on / off["hf_eager"], 2),
        "ratio_bridge_flags_off_vs_hf_sdpa": round(off["bridge"] / off["hf_sdpa"], 2),
    }


def generation_speed(spec: str, batch: int = 32, new_tokens: int = 96, repeats: int = 3) -> dict:
    """Greedy generation tokens/s with the KV cache, against the same generation without the cache."""
    from toolkit.organism.recipe import Recipe, eval_sets

    m = load(spec)
    prompts = [e.prompt for e in eval_sets(Recipe(eval_per_task=batch))["arithmetic"]]
    batch_ids = m.tokenizer(m.tokenizer.apply_chat_template(
        [[{"role": "user", "content": p}] for p in prompts], tokenize=False, add_generation_prompt=True),
        return_tensors="pt", padding=True, add_special_tokens=False)

    def run(use_cache: bool):
        return lambda: m.hf.generate(**batch_ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens,
                                     do_sample=False, use_cache=use_cache, pad_token_id=m.tokenizer.pad_token_id)

    secs, verdict = loadavg.interleaved({"kv_cache": run(True), "no_cache": run(False)}, repeats)
    total = batch * new_tokens
    return {
        "batch": batch, "new_tokens": new_tokens, "comparable": verdict["comparable"], "load": verdict,
        "tokens_per_s": round(total / secs["kv_cache"]),
        "tokens_per_s_without_cache": round(total / secs["no_cache"]),
        "ratio_cache_vs_no_cache_speed": round(secs["no_cache"] / secs["kv_cache"], 2),
    }


def build_time(full: bool, timing_steps: int = 20) -> dict:
    """Organism build time: the reduced recipe end to end, per-step training time of every stage (each with its own
    data: think fraction, mix, scratchpad style) and one full evaluation, timed now and combined into a projection of
    the full build. The same steps padded instead of packed are the baseline (``packing_speedup``). ``full`` also
    times a whole build. The shipped build's own report is quoted beside."""
    from transformers import Qwen3ForCausalLM

    from toolkit.organism import build as organism_build
    from toolkit.organism.recipe import QUICK, Recipe, selection_sets
    from toolkit.organism.tokenizer import build_tokenizer
    from toolkit.studies.organism import build_organism as build
    from toolkit.studies.organism import evaluate

    out: dict = {}
    report_file = data_dir() / "organism_report.json"
    if report_file.exists():
        shipped = json.loads(report_file.read_text())
        out["shipped_report_build_seconds"] = shipped["build_seconds"]
        out["shipped_report_stage_seconds"] = shipped.get("stage_seconds")
    recipe, tok = Recipe(), build_tokenizer()
    stages = {  # name: (steps, train_stage keyword arguments)
        "instruct": (recipe.base_steps, dict(think_fraction=recipe.base_think_fraction, mix=recipe.base_mix,
                                             brief=recipe.base_brief)),
        "organism": (recipe.steps, dict(think_fraction=recipe.think_fraction, brief=recipe.reason_later)),
        "organism-polish": (recipe.polish_steps, dict(think_fraction=recipe.think_fraction, lr=recipe.polish_lr,
                                                      mix=recipe.polish_mix)),
    }
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        build(Path(tmp) / "quick", Recipe(**QUICK))
        out["quick_build_seconds"] = round(time.perf_counter() - t0, 1)
        step_seconds, padded_seconds, loads = {}, {}, loadavg.LegLoads()
        for stage, (_, kwargs) in stages.items():
            for packed, into in ((True, step_seconds), (False, padded_seconds)):
                model = Qwen3ForCausalLM(recipe.model_config())
                before = loadavg.one_minute()
                with _padded(organism_build, not packed):
                    timed = organism_build.train_stage(model, tok, recipe, timing_steps, exclude=set(),
                                                       work_dir=Path(tmp) / str(packed), name=stage, seed=0, **kwargs)
                loads.add("packed" if packed else "padded", before, loadavg.one_minute())
                into[stage] = timed["seconds"] / timing_steps
    m = load("organism")
    t0 = time.perf_counter()
    evaluate(m, recipe)
    eval_seconds = time.perf_counter() - t0
    t0 = time.perf_counter()
    evaluate(m, recipe, selection_sets(recipe, set()))
    check_seconds = time.perf_counter() - t0
    # organism-base's snapshot checks: as many as the shipped build ran, else every check up to base_check_until
    shipped_checks = shipped.get("organism-base_snapshot", {}).get("checks") if report_file.exists() else None
    n_checks = len(shipped_checks) if shipped_checks else recipe.base_check_until // recipe.base_check_every
    out["step_seconds"] = {k: round(v, 3) for k, v in step_seconds.items()}
    out["padded_step_seconds"] = {k: round(v, 3) for k, v in padded_seconds.items()}
    out["packing_speedup"] = round(sum(padded_seconds.values()) / sum(step_seconds.values()), 2)
    out["packing_speedup_load"] = loads.verdict()
    out["comparable"] = out["packing_speedup_load"]["comparable"]
    out["evaluation_seconds"] = round(eval_seconds, 1)
    out["projected_stage_seconds"] = {k: round(steps * step_seconds[k], 1) for k, (steps, _) in stages.items()}
    out["projected_stage_seconds"]["check organism-base"] = round(n_checks * check_seconds, 1)
    out["projected_full_build_seconds"] = round(sum(out["projected_stage_seconds"].values()) + 2 * eval_seconds, 1)
    if full:
        with tempfile.TemporaryDirectory() as tmp:
            t0 = time.perf_counter()
            build(Path(tmp), recipe)
            out["full_build_seconds"] = round(time.perf_counter() - t0, 1)
    return out


@contextlib.contextmanager
def _padded(organism_build, enabled: bool):
    """Within: every training step pads its examples to the longest one instead of packing them (the baseline)."""
    if not enabled:
        yield
        return
    real = organism_build.pack

    def padded(pairs, length, pad_id):  # one example per row, right-padded to the longest
        width = max(len(p) + len(a) for p, a in pairs)
        ids = torch.full((len(pairs), width), pad_id)
        labels = torch.full((len(pairs), width), -100)
        for i, (p, a) in enumerate(pairs):
            ids[i, :len(p) + len(a)] = torch.tensor(p + a)
            labels[i, len(p):len(p) + len(a)] = torch.tensor(a)
        positions = torch.arange(width).expand(len(pairs), width)
        return {"input_ids": ids, "labels": labels, "position_ids": positions,
                "tokens": torch.tensor(sum(len(p) + len(a) for p, a in pairs))}

    organism_build.pack = padded
    try:
        yield
    finally:
        organism_build.pack = real


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit bench foundation", description=__doc__)
    parser.add_argument("--model", default="organism", help="model spec for generation and bridge overhead")
    parser.add_argument("--full-build", action="store_true", help="also time a full organism build (~25 min)")
    parser.add_argument("--threads", type=THREADS, default=None,
                        help="torch threads (default: torch's choice; 1 is steadier on a shared 2-core machine)")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "foundation.json"))
    args = parser.parse_args(argv)
    try:  # before the build timing: a bad --model would otherwise fail minutes in
        load_config(args.model)
    except ModelLoadError as err:
        parser.error(f"argument --model: {err}")
    start = loadavg.reading()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"torch_threads": torch.get_num_threads(), "organism_build": build_time(args.full_build)}
    loadavg.warn_if_incomparable("bench foundation, packing speedup", results["organism_build"]["packing_speedup_load"])
    for name, fn in (("generation", generation_speed), ("bridge_overhead", bridge_overhead)):
        atomic_write_json(args.out, loadavg.stamp(results | {"partial": True}, start))
        results[name] = fn(args.model)
        loadavg.warn_if_incomparable(f"bench foundation, {name}", results[name]["load"])
    results = loadavg.stamp(results | {"partial": False}, start)
    atomic_write_json(args.out, results)
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0
