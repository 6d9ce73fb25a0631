"""GPU benchmark: EAP-IG, a CMAP layer sweep and head-ablated sampled generation on models of Qwen3-4B's and
Qwen3-8B's shape.

``python -m toolkit bench gpu [--shape qwen3-4b qwen3-8b tiny] [--out FILE]`` writes ``bench/results/gpu.json``
(default shapes: ``qwen3-4b qwen3-8b`` on CUDA, ``tiny`` on CPU; the two big shapes need CUDA).

Models. Random-init ``Qwen3ForCausalLM`` of the real shape, built from a ``Qwen3Config`` (nothing downloaded), saved
with the organism's tokenizer (:func:`toolkit.organism.tokenizer.build_tokenizer`) into a temporary folder and
loaded through :func:`toolkit.core.models.load`, so the weight checks and the TransformerBridge are exercised; on CUDA
with ``device_map={"": 0}`` (the ``device_map`` pass-through on one GPU), in bf16; ``tiny`` on CPU in fp32. Shapes
(from the ``config.json`` of Qwen/Qwen3-4B and Qwen/Qwen3-8B on the Hugging Face hub): 36 layers, 32 query / 8 KV
heads of width 128, vocabulary 151936, RMSNorm eps 1e-6, RoPE theta 1e6; Qwen3-4B: d_model 2560, d_mlp 9728, tied
embeddings (4.02B parameters); Qwen3-8B: d_model 4096, d_mlp 12288, untied (8.19B). The organism tokenizer has 128
tokens, so every input id is below 128 while the model keeps the real vocabulary (its embedding, lm_head and
softmax cost); generated ids may be anything below 151936, and nothing decodes them.

Measurements (each a ratio against a baseline timed in the same run, where there is one; CUDA timings synchronise;
each ratio carries its legs' load average and the verdict of :mod:`toolkit.benchmarks.load`, ``comparable``, and the
results file the load average at the benchmark's start and end, ``partial`` until the last shape is written):

- **EAP-IG** (:func:`toolkit.methods.eap.attribute`, ``steps`` IG steps, KL metric) on one batch of random pairs:
  seconds per example, against ``steps`` forward+backward passes of the same model with activation gradients only
  (``ratio_vs_fwd_bwd``); and the peak memory of the first call beyond the weights (CUDA:
  ``torch.cuda.max_memory_allocated`` minus the memory allocated before; CPU: peak resident set, sampled, minus the
  resident set before) against :func:`toolkit.methods.eap.estimate_memory`.
- **Sampled generation** (Qwen3's sampling defaults, ``toolkit.core.generation.SamplingConfig(do_sample=True)``, a
  fixed number of new tokens) with a head ablation (:func:`toolkit.evaluation.causal.intervene`, one head in each of
  up to 8 layers zeroed at ``attn.hook_z``): tokens per second, and **the headline**: its ratio to the same
  generation without the hook (``ablation_vs_plain_speed``; 1.0 means the hooks cost nothing).
- **CMAP** (:func:`toolkit.methods.cmap.run`): a per-layer ``resid`` sweep, greedy, the donor the same shape with
  other random weights; seconds, against one plain greedy generation of the same prompts and length.

Running on a GPU machine that reaches no package registry, whose image holds torch, transformers, accelerate and
peft (with their own dependencies: numpy, tokenizers, safetensors, huggingface_hub, psutil, jinja2, ...). On a
connected machine, in the checkout, fetch the wheels of what the benchmark imports beyond that image (the list was
rehearsed on CPU: a fresh venv with torch 2.13.0, transformers 5.17.0, accelerate and peft installed normally, then
only these wheels with ``--no-deps`` and the toolkit with ``--no-deps``, until ``python -m toolkit bench gpu --shape
tiny`` ran)::

    pip download --no-deps -d wheels/ transformer-lens==4.3.0 einops==0.8.2 jaxtyping==0.3.11 \
        datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 xxhash==4.1.0 pyarrow==26.0.1 pandas==3.1.1 \
        python-dateutil==4.0.0 scipy==1.17.1

(``wheels/`` is git-ignored; transformer-lens imports datasets, which imports pandas, pyarrow, dill, multiprocess and
xxhash; the toolkit's statistics import scipy; trl is not imported by the benchmark, add ``trl==1.16.0`` for training).
Five of them are built for one Python version (pandas, pyarrow, scipy and xxhash are binary, multiprocess has one
wheel per Python): when the GPU machine's Python or platform differs from the connected machine's, add
``--only-binary=:all: --python-version 3.X --platform manylinux_2_28_x86_64`` for the GPU machine's. Copy the checkout
with ``wheels/`` to the GPU machine, and there, leaving its torch as it is::

    pip install --no-deps wheels/*.whl && pip install --no-deps -e .
    HF_HUB_OFFLINE=1 python -m toolkit bench gpu            # both big shapes; about 8 + 16 GiB of weights

Transformer-lens declares more (beartype, typeguard, fancy-einsum, protobuf, sentencepiece, wandb,
transformers-stream-generator; jaxtyping declares wadler-lindig) that this path does not import; ``pip check`` lists
them. Each big shape is written once to the temporary folder (``TMPDIR``: 8 GiB for 4B, 16 GiB for 8B) and loaded
twice (clean, donor) for the CMAP sweep. On the tiny CPU shape the peak-memory figures are a few MiB of allocator
noise; compare the estimate on the big shapes.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import torch

from toolkit.benchmarks import load as loadavg
from toolkit.benchmarks.eap import _PeakRSS, _plain_step, random_pairs
from toolkit.benchmarks.options import POSITIVE, THREADS
from toolkit.core.io import REPO_ROOT, atomic_write_json

_QWEN3 = dict(num_hidden_layers=36, num_attention_heads=32, num_key_value_heads=8, head_dim=128, vocab_size=151936,
              max_position_embeddings=40960, rms_norm_eps=1e-6)
SHAPES = {
    "qwen3-4b": dict(_QWEN3, hidden_size=2560, intermediate_size=9728, tie_word_embeddings=True),
    "qwen3-8b": dict(_QWEN3, hidden_size=4096, intermediate_size=12288, tie_word_embeddings=False),
    "tiny": dict(num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=16, vocab_size=151936,
                 max_position_embeddings=512, rms_norm_eps=1e-6, hidden_size=64, intermediate_size=128,
                 tie_word_embeddings=True),
}
# organism tokenizer: pad 0, eos 2 (as toolkit.organism.tiny.tiny_model_dir); RoPE theta of Qwen3
_IDS = dict(bos_token_id=None, eos_token_id=2, pad_token_id=0,
            rope_parameters={"rope_type": "default", "rope_theta": 1_000_000.0})
WORKLOADS = {  # eap: (batch, tokens); generation: (prompts, prompt tokens, new tokens); cmap: (prompts, new tokens)
    "big": {"eap": (4, 128), "generation": (16, 64, 128), "cmap": (4, 32)},
    "tiny": {"eap": (2, 16), "generation": (2, 8, 8), "cmap": (2, 4)},
}
TOKEN_IDS = 128  # inputs stay inside the organism tokenizer's vocabulary


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fns: dict, repeats: int, device: torch.device) -> tuple[dict[str, float], dict]:
    """Median seconds of each function (one warm-up each, then ``repeats`` interleaved rounds, CUDA synchronised),
    and the load verdict on the legs (:func:`toolkit.benchmarks.load.interleaved`)."""
    return loadavg.interleaved(fns, repeats, sync=lambda: _sync(device))


def environment(device: torch.device) -> dict:
    from importlib.metadata import version

    if device.type == "cuda":
        name, memory = torch.cuda.get_device_name(device), torch.cuda.get_device_properties(device).total_memory
    else:
        name, memory = f"CPU ({platform.processor() or platform.machine()}, {os.cpu_count()} cores)", None
    return {"device": str(device), "device_name": name, "device_memory_gib": memory and round(memory / 2**30, 1),
            "cuda_devices": torch.cuda.device_count() if torch.cuda.is_available() else 0,
            "torch": torch.__version__, "torch_cuda": torch.version.cuda, "transformers": version("transformers"),
            "transformer_lens": version("transformer-lens"), "accelerate": version("accelerate"),
            "torch_threads": torch.get_num_threads()}


def build(shape: str, folder: Path, device: torch.device, seed: int = 0) -> dict:
    """Save a random-init model of ``shape`` (built on ``device`` in the benchmark's dtype) with the organism
    tokenizer into ``folder``; returns its parameter count and seconds."""
    from transformers import AutoModelForCausalLM, Qwen3Config

    from toolkit.organism.tokenizer import build_tokenizer

    t0 = time.perf_counter()
    config = Qwen3Config(**SHAPES[shape], **_IDS)
    torch.manual_seed(seed)
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    n_params = sum(p.numel() for p in model.parameters())
    model.save_pretrained(folder, safe_serialization=True)
    build_tokenizer().save_pretrained(folder)
    del model
    _free(device)
    return {"parameters": n_params, "build_seconds": round(time.perf_counter() - t0, 2)}


def _free(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _load(folder: Path, device: torch.device):
    from toolkit.core.models import load

    return load(str(folder), device_map={"": device.index or 0}) if device.type == "cuda" else load(str(folder),
                                                                                                   device="cpu")


@torch.no_grad()
def _rerandomize(hf, seed: int) -> None:
    """Other random weights of the same shape (the donor): every matrix redrawn as the Qwen3 init draws it."""
    torch.manual_seed(seed)
    std = hf.config.initializer_range
    for p in hf.parameters():
        if p.dim() == 2:
            p.normal_(0.0, std)


def eap_case(loaded, batch: int, tokens: int, steps: int, repeats: int, device: torch.device) -> dict:
    from toolkit.methods import eap

    pairs = random_pairs(batch, tokens, TOKEN_IDS, seed=1)
    estimate = eap.estimate_memory(loaded, batch, tokens, "eap-ig")["total"]

    def run():
        eap.attribute(loaded, pairs, method="eap-ig", steps=steps, batch_size=batch, show_progress=False)

    _free(device)
    with _PeakRSS(device) as mem:  # the first call, on a fresh heap: the peak does not grow with repeats
        run()
        _sync(device)
    extra = mem.peak - mem.start
    secs, verdict = _timed({"eap_ig": run, "fwd_bwd": _plain_step(loaded.hf, pairs.clean_ids.to(device), False)},
                           repeats, device)
    return {"batch": [batch, tokens], "steps": steps, "repeats": repeats,
            "seconds": {k: round(v, 4) for k, v in secs.items()},
            "seconds_per_example": round(secs["eap_ig"] / batch, 4),
            "ratio_vs_fwd_bwd": round(secs["eap_ig"] / (steps * secs["fwd_bwd"]), 3),
            "comparable": verdict["comparable"], "load": verdict,
            "peak_extra_gib": round(extra / 2**30, 4), "estimate_gib": round(estimate / 2**30, 4),
            "estimate_over_measured": round(estimate / extra, 2) if extra > 0 else None,
            "peak_method": ("torch.cuda.max_memory_allocated minus memory_allocated before" if device.type == "cuda"
                            else "peak resident set (psutil, sampled every 5 ms) minus the resident set before"),
            "baseline": "fwd_bwd = one forward+backward of the same model over the clean batch, LM loss, activation "
                        "gradients only (parameters frozen); ratio = eap_ig / (steps x fwd_bwd)"}


def ablated_heads(n_layers: int, n_heads: int) -> list[tuple[int, int]]:
    """One head in each of up to 8 layers spread over the depth."""
    return [(layer, layer % n_heads) for layer in range(0, n_layers, max(1, n_layers // 8))][:8]


def generation_case(loaded, prompts: int, prompt_tokens: int, new_tokens: int, repeats: int,
                    device: torch.device) -> dict:
    from toolkit.core.generation import SamplingConfig
    from toolkit.evaluation.causal import Condition, intervene

    ids = torch.randint(10, TOKEN_IDS, (prompts, prompt_tokens), generator=torch.Generator().manual_seed(2))
    ids = ids.to(device)
    sampling = SamplingConfig(do_sample=True)
    cfg = loaded.bridge.cfg
    heads = ablated_heads(int(cfg.n_layers), int(cfg.n_heads))
    condition = Condition.on_heads("ablate", heads, factor=0.0).validate(loaded.bridge)

    def plain():
        torch.manual_seed(0)
        out = loaded.hf.generate(input_ids=ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=0, eos_token_id=2,
                                 **sampling.generate_kwargs())
        assert out.shape[1] == prompt_tokens + new_tokens

    def ablated():
        with intervene(loaded.bridge, condition):
            plain()

    secs, verdict = _timed({"plain": plain, "ablated": ablated}, repeats, device)
    total = prompts * new_tokens
    return {"prompts": prompts, "prompt_tokens": prompt_tokens, "new_tokens": new_tokens, "repeats": repeats,
            "sampling": {k: getattr(sampling, k) for k in ("temperature", "top_p", "top_k")},
            "ablated_heads": heads, "seconds": {k: round(v, 4) for k, v in secs.items()},
            "tokens_per_s": round(total / secs["plain"], 1),
            "tokens_per_s_with_ablation": round(total / secs["ablated"], 1),
            "ablation_vs_plain_speed": round(secs["plain"] / secs["ablated"], 3),
            "comparable": verdict["comparable"], "load": verdict}


def cmap_case(clean, donor, prompts: int, new_tokens: int, repeats: int, device: torch.device) -> dict:
    from toolkit.core.chat import chat_prompts
    from toolkit.methods import cmap

    texts = [f"Solve {a}x + {a + 3} = {2 * a + 9}." for a in range(2, 2 + prompts)]
    sites = cmap.layer_sweep(clean.bridge, "resid")
    tok = clean.tokenizer
    batch = tok(chat_prompts(tok, texts, False), return_tensors="pt", padding=True, add_special_tokens=False)
    batch = batch.to(device)
    result = {}

    def sweep():
        result["r"] = cmap.run(clean, donor, texts, sites, mode="current", max_new_tokens=new_tokens)

    def greedy():
        clean.hf.generate(**batch, max_new_tokens=new_tokens, do_sample=False, pad_token_id=0, eos_token_id=2,
                          temperature=None, top_p=None, top_k=None)

    secs, verdict = _timed({"sweep": sweep, "plain_generation": greedy}, repeats, device)
    generated = sum(len(row[0]) for row in result["r"].patched_tokens) / prompts
    return {"prompts": prompts, "new_tokens": new_tokens, "layers": len(sites), "rows_per_prompt": len(sites) + 2,
            "mean_patched_tokens": round(generated, 1), "repeats": repeats,
            "seconds": {k: round(v, 4) for k, v in secs.items()},
            "sweep_vs_plain_generation": round(secs["sweep"] / secs["plain_generation"], 2),
            "comparable": verdict["comparable"], "load": verdict,
            "donor": "the same shape, every matrix redrawn with another seed"}


def bench_shape(shape: str, device: torch.device, steps: int, repeats: int) -> dict:
    work = WORKLOADS["tiny" if shape == "tiny" else "big"]
    with tempfile.TemporaryDirectory(prefix=f"bench-{shape}-") as tmp:
        out = {"config": SHAPES[shape], **build(shape, Path(tmp), device)}
        t0 = time.perf_counter()
        clean = _load(Path(tmp), device)
        out["load_seconds"] = round(time.perf_counter() - t0, 2)
        out["dtype"] = str(next(clean.hf.parameters()).dtype).removeprefix("torch.")
        out["weights_gib"] = round(sum(p.numel() * p.element_size() for p in clean.hf.parameters()) / 2**30, 3)
        print(f"[gpu bench] {shape}: EAP-IG", flush=True)
        out["eap_ig"] = eap_case(clean, *work["eap"], steps, repeats, device)
        print(f"[gpu bench] {shape}: generation", flush=True)
        out["generation"] = generation_case(clean, *work["generation"], repeats, device)
        print(f"[gpu bench] {shape}: CMAP", flush=True)
        donor = _load(Path(tmp), device)
        _rerandomize(donor.hf, seed=1)
        out["cmap"] = cmap_case(clean, donor, *work["cmap"], repeats, device)
    for case in ("eap_ig", "generation", "cmap"):
        loadavg.warn_if_incomparable(f"bench gpu, {shape}, {case}", out[case]["load"])
    del clean, donor
    _free(device)
    if device.type == "cuda":  # since the EAP-IG measurement reset it: generation, then CMAP with two models loaded
        out["max_memory_allocated_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m toolkit bench gpu", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--shape", nargs="+", choices=sorted(SHAPES), default=None,
                        help="model shapes (default: qwen3-4b qwen3-8b on CUDA, tiny on CPU)")
    parser.add_argument("--steps", type=POSITIVE, default=5, help="EAP-IG steps m (default 5)")
    parser.add_argument("--repeats", type=POSITIVE, default=None, help="timed repeats (default 3 on CUDA, 1 on CPU)")
    parser.add_argument("--threads", type=THREADS, default=None, help="torch threads on CPU")
    parser.add_argument("--out", default=str(REPO_ROOT / "bench" / "results" / "gpu.json"))
    args = parser.parse_args(argv)
    start = loadavg.reading()
    cuda = torch.cuda.is_available()
    device = torch.device("cuda", torch.cuda.current_device()) if cuda else torch.device("cpu")
    shapes = args.shape or (["qwen3-4b", "qwen3-8b"] if cuda else ["tiny"])
    big = [s for s in shapes if s != "tiny"]
    if big and not cuda:
        raise SystemExit(f"--shape {' '.join(big)} needs a CUDA GPU (bf16; on CPU these models take tens of GiB "
                         "and hours), and torch sees none here; use --shape tiny on CPU")
    if args.threads:
        torch.set_num_threads(args.threads)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # nothing is downloaded
    repeats = args.repeats or (3 if cuda else 1)
    results = {"command": "python -m toolkit bench gpu " + " ".join(argv or []), "environment": environment(device),
               "shapes": {}}
    for shape in shapes:
        results["shapes"][shape] = bench_shape(shape, device, args.steps, repeats)
        # written after each shape: a later failure keeps the earlier
        atomic_write_json(Path(args.out), loadavg.stamp(results | {"partial": True}, start))
    results = loadavg.stamp(results | {"partial": False}, start)
    atomic_write_json(Path(args.out), results)
    print(json.dumps(results, indent=2))
    print(f"written to {args.out}")
    return 0
