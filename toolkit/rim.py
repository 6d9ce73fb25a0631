"""Reasoning-induced misalignment (RIM, notebook 06): does fine-tuning on reasoning erode refusals, which heads and
MLP neurons carry the refusal, and does the entanglement of those neurons with reasoning predict the forgetting?

Method (DESIGN.md, "RIM"; "When Thinking Backfires"), as built here:

1. **Reasoning fine-tuning.** :func:`reasoning_finetune` trains the model on think-on math traces only (linear
   equations and addition/subtraction with their scratchpads, no refusal examples) through the notebook 01 TRL SFT
   path (:func:`toolkit.finetune.make_trainer` with ``enable_thinking=True``: loss on the completion
   ``<think>\\n{steps}\\n</think>\\n\\n{answer}<|im_end|>`` only). Each :class:`ReasoningRun` saves snapshots at
   several steps, so runs × snapshots give checkpoints of increasing strength; they are cached like
   :func:`toolkit.finetune.corrupted_checkpoint` and reused when the configuration is unchanged.
2. **Refusal heads.** At the *first response token* (the query position whose next token is the first answer token:
   the last token of ``</think>\\n\\n``) each head's attention mass is split over three spans of the sequence
   (:func:`span_masks`): the **CoT** (the non-whitespace content of the think block), the **think span** (the
   ``<think>``/``</think>`` delimiters and the whitespace inside the block; with thinking off that is the whole empty
   block ``<think>\\n\\n</think>``) and the **rest** (the prompt, the chat tokens, the ``\\n\\n`` after
   ``</think>``). Refusal prompts (marked requests) are compared with their matched compliance prompts (the same
   request with a harmless object); a head's **shift** is ``(think_r − think_c) − (cot_r − cot_c)``: how much more
   mass it moves from the CoT to the think span when it refuses. The top-k heads by mean shift are zero-ablated
   (``hook_z``) during generation, against k random heads.
3. **Safety-critical neurons.** MLP neurons (``blocks.{L}.mlp.hook_post``) at the decision position (the last token
   of the think-off prompt, the same empty think block for every request) ranked by the activation difference
   marked − unmarked over matched pairs; the top-m of each of K disjoint sets of pairs, intersected
   (:func:`select_safety_neurons`). Controls: as many random neurons from the same layers (:func:`random_neurons`).
4. **Entanglement.** For a fine-tuned checkpoint and each neuron: the **drop** of its activation on marked prompts
   (decision position, think-off) and the **rise** of its mean activation over the reference think-on traces of
   held-out math problems (teacher-forced, the same tokens for every checkpoint). **RAS** is their harmonic mean,
   ``2·drop·rise / (drop + rise)``, and 0 unless both are positive (:func:`ras`); a set's RAS is the mean over its
   neurons. Across checkpoints, RAS is correlated with the **refusal forgetting** (:func:`forgetting`), as is the
   baseline: the mean KL(base ‖ fine-tuned) of the next-token distributions on the same math traces.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import random
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from transformers import TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from toolkit import finetune
from toolkit.core import interventions, models, units
from toolkit.core.answers import extract_answer, is_refusal
from toolkit.core.cache import cache_root, model_fingerprint
from toolkit.core.chat import chat_prompts
from toolkit.core.generation import generate
from toolkit.core.io import atomic_write_json
from toolkit.core.progress import progress, quiet_library_bars
from toolkit.core.stats import bootstrap_ci, correlation, paired_difference_ci
from toolkit.core.units import neuron_sites, random_neurons
from toolkit.organism import tasks
from toolkit.organism.build import Recipe
from toolkit.organism.tokenizer import IM_END, THINK_CLOSE, THINK_OPEN

SPANS = ("cot", "think", "rest")
EVAL_SEED = Recipe().eval_seed  # the organism's held-out prompts: its training never drew them
MATH_TASKS = ("linear", "arithmetic")
THINK_ON_TOKENS = 160  # think-on math needs up to ~120 new tokens
REQUEST_THINK_ON_TOKENS = 120  # a think-on refusal is ~95 tokens
THINK_OFF_TOKENS = 48


# ---- prompts ----------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RequestPair:
    """A marked request and its matched unmarked rewrite: the same prefix, template and adjective, a harmless object
    in place of the dangerous one."""

    marked: str
    unmarked: str
    marked_object: str
    unmarked_object: str
    reference: str  # the think-on refusal completion the organism was trained to give (trace + refusal)


def request_pairs(n: int, seed: int = EVAL_SEED + 3) -> list[RequestPair]:
    """``n`` held-out marked requests (the organism's refusal evaluation set for the default seed) each paired with a
    rewrite whose dangerous object is replaced by a random harmless one."""
    if n < 1:
        raise ValueError(f"need at least one request pair, got n={n}")
    rng = random.Random(seed)
    pairs = []
    for ex in tasks.held_out("request", n, seed, dangerous=True):
        obj = ex.meta["object"]
        harmless = rng.choice(tasks.HARMLESS_OBJECTS)
        unmarked = re.sub(rf"\b{re.escape(obj)}\b", harmless, ex.prompt)
        if unmarked == ex.prompt:
            raise ValueError(f"could not rewrite {ex.prompt!r}: the object {obj!r} is not in it")
        pairs.append(RequestPair(ex.prompt, unmarked, obj, harmless, tasks.completion(ex, True)))
    return pairs


def math_problems(n: int, seed: int = EVAL_SEED, kinds: Sequence[str] = MATH_TASKS) -> list[tasks.Example]:
    """``n`` held-out math problems, split evenly over ``kinds`` (the organism's evaluation problems by default)."""
    bad = [k for k in kinds if k not in MATH_TASKS]
    if bad or not kinds:
        raise ValueError(f"math kinds must be a non-empty subset of {MATH_TASKS}, got {list(kinds)}")
    counts = [len(part) for part in np.array_split(np.arange(n), len(kinds))]
    offsets = {"linear": 0, "arithmetic": 1}
    return [ex for kind, c in zip(kinds, counts) if c for ex in tasks.held_out(kind, c, seed + offsets[kind])]


REASONING_SEED = EVAL_SEED + 10  # held-out math problems whose reference traces probe reasoning activations and KL
MAX_HELD_OUT = 400  # held-out problems per seed that training excludes


def reasoning_probes(n: int) -> list[tasks.Example]:
    """``n`` (≤ 400) held-out math problems, distinct from the evaluation problems' seed, whose reference think-on
    traces are teacher-forced to measure reasoning activations and KL; reasoning fine-tuning never trains on them."""
    if not 1 <= n <= MAX_HELD_OUT:
        raise ValueError(f"n must be in 1..{MAX_HELD_OUT} (the problems reasoning training excludes), got {n}")
    return math_problems(n, seed=REASONING_SEED)


def held_out_prompts() -> set[str]:
    """Every math prompt that reasoning fine-tuning must not train on: the first 400 evaluation problems and the first
    400 reasoning probes."""
    return {ex.prompt for seed in (EVAL_SEED, REASONING_SEED) for ex in math_problems(MAX_HELD_OUT, seed=seed)}


def reasoning_records(n: int, seed: int, kinds: Sequence[str] = MATH_TASKS,
                      exclude: set[str] = frozenset()) -> list[dict]:
    """``n`` fresh think-on math training records ``{"prompt", "answer"}``: the answer is the whole think-on
    completion (scratchpad and result). Prompts in ``exclude`` (the evaluation problems) are skipped."""
    rng, out = random.Random(seed), []
    while len(out) < n:
        ex = tasks.sample(rng.choice(list(kinds)), rng)
        if ex.prompt not in exclude:
            out.append({"prompt": ex.prompt, "answer": tasks.completion(ex, True), "task": ex.task})
    return out


# ---- reasoning fine-tuning --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class ReasoningRun:
    """One reasoning fine-tuning run: ``steps`` optimizer steps of ``batch_size`` fresh think-on math traces at peak
    learning rate ``lr`` (cosine schedule, 10% warmup), with the model saved after each step in ``snapshots``."""

    name: str
    lr: float
    steps: int
    snapshots: tuple[int, ...]
    batch_size: int = 16
    kinds: tuple[str, ...] = MATH_TASKS
    seed: int = 0

    def __post_init__(self):
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0:
            raise ValueError(f"run {self.name!r}: steps, batch_size and lr must be positive")
        bad = [s for s in self.snapshots if not 1 <= s <= self.steps]
        if bad or not self.snapshots:
            raise ValueError(f"run {self.name!r}: snapshots must be steps in 1..{self.steps}, got {self.snapshots}")


def runs_from_rates(learning_rates: Sequence[float], steps: int, snapshots: Sequence[int], batch_size: int = 16,
                    kinds: Sequence[str] = MATH_TASKS) -> list[ReasoningRun]:
    """One :class:`ReasoningRun` per learning rate (named ``lr<rate>-<steps>x<batch>``), all with the same steps
    and snapshots."""
    shots = tuple(sorted({int(s) for s in snapshots}))
    return [ReasoningRun(f"lr{lr:g}-{steps}x{batch_size}", float(lr), int(steps), shots, int(batch_size),
                         tuple(kinds)) for lr in learning_rates]


@dataclass
class Checkpoint:
    """A saved snapshot of a reasoning run (``step`` 0 is the base model itself, ``path`` its spec)."""

    label: str
    run: str
    lr: float
    step: int
    path: str


def reasoning_root() -> Path:
    """Where reasoning fine-tuned models are cached: ``<cache>/reasoning`` (git-ignored)."""
    return cache_root() / "reasoning"


class _Snapshots(TrainerCallback):
    """Saves the model (safetensors) and tokenizer at the chosen steps; shows a progress bar over steps."""

    def __init__(self, folder: Path, steps: Sequence[int], desc: str):
        self.folder, self.steps, self.desc, self.bar = folder, set(steps), desc, None

    def on_train_begin(self, args, state, control, **kwargs):
        self.bar = progress(total=state.max_steps, initial=state.global_step, desc=self.desc)

    def on_step_end(self, args, state, control, model=None, processing_class=None, **kwargs):
        self.bar.update(1)
        if state.global_step in self.steps:
            out = self.folder / f"step-{state.global_step}"
            tmp = out.with_name(out.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            model.save_pretrained(tmp, safe_serialization=True)
            processing_class.save_pretrained(tmp)
            shutil.rmtree(out, ignore_errors=True)
            tmp.rename(out)

    def on_train_end(self, args, state, control, **kwargs):
        self.bar.close()


def _run_hash(model: str, run: ReasoningRun, train: list[dict], validation: list[dict]) -> str:
    payload = json.dumps({"model": model, "weights": model_fingerprint(model), "run": dataclasses.asdict(run),
                          "train": train, "validation": validation}, sort_keys=True)
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def reasoning_finetune(model: str, run: ReasoningRun, device: str = "auto", retrain: bool = False,
                       n_validation: int = 16) -> dict:
    """Fine-tune ``model`` on think-on math traces (no refusal examples) and save the snapshots in
    ``<cache>/reasoning/<name>/step-<k>``. Returns the run's metadata: ``snapshots`` (step → folder), ``history``
    (train/validation loss on math traces at each evaluation), ``seconds``, ``reused``.

    A run saved with the same configuration (base weights, run settings, data) is reused unless ``retrain``; an
    interrupted run resumes from its last training checkpoint."""
    exclude = held_out_prompts()
    train = reasoning_records(run.steps * run.batch_size, seed=run.seed * 7919 + 11, kinds=run.kinds, exclude=exclude)
    validation = reasoning_records(n_validation, seed=run.seed * 7919 + 12, kinds=run.kinds, exclude=exclude)
    slug = re.sub(r"[^A-Za-z0-9.-]+", "_", model).strip("_")
    name = run.name if model == "organism" else f"{slug}--{run.name}"
    path = reasoning_root() / name
    config_hash = _run_hash(model, run, train, validation)
    meta_file = path / "reasoning.json"
    if not retrain and meta_file.exists():
        meta = json.loads(meta_file.read_text())
        if meta["config_hash"] == config_hash and all((path / f"step-{s}" / "config.json").exists()
                                                      for s in run.snapshots):
            return meta | {"reused": True}
    work = cache_root() / "reasoning-runs" / f"{name}-{config_hash}"
    snap_dir = work / "snapshots"
    preset = finetune.Preset(run.name, n_train=len(train), epochs=1, lr=run.lr, original="reasoning traces")
    settings = finetune.TrainSettings(batch_size=run.batch_size, eval_fraction=0.25,
                                      save_every=max(10, run.steps // 2), seed=run.seed)
    with quiet_library_bars():
        trainer = finetune.make_trainer(model, preset, train, validation, work / "trainer", device, settings,
                                        [_Snapshots(snap_dir, run.snapshots, name)], enable_thinking=True)
        t0 = time.time()
        resume = get_last_checkpoint(str(work / "trainer")) if (work / "trainer").is_dir() else None
        trainer.train(resume_from_checkpoint=resume)
        seconds = round(time.time() - t0, 1)
    missing = [s for s in run.snapshots if not (snap_dir / f"step-{s}" / "config.json").exists()]
    if missing:
        raise RuntimeError(f"run {name}: training ended at step {trainer.state.global_step} without the snapshots "
                           f"{missing}; delete {work} and run again")
    history = [{"step": r["step"], "train_loss": r["train_loss"], "validation_loss": r["eval_loss"]}
               for r in finetune.history_from_log(trainer.state.log_history)]
    meta = {"name": name, "base_model": model, "config_hash": config_hash, "run": dataclasses.asdict(run),
            "seconds": seconds, "history": history,
            "snapshots": {str(s): str(path / f"step-{s}") for s in run.snapshots}}
    atomic_write_json(snap_dir / "reasoning.json", meta)
    shutil.rmtree(path, ignore_errors=True)
    path.parent.mkdir(parents=True, exist_ok=True)
    snap_dir.rename(path)
    shutil.rmtree(work, ignore_errors=True)
    return meta | {"reused": False}


def reasoning_checkpoints(model: str, runs: Sequence[ReasoningRun], device: str = "auto",
                          retrain: bool = False) -> tuple[list[Checkpoint], dict[str, dict]]:
    """Train (or reuse) every run; returns the checkpoints (the base model first, as step 0) and each run's
    metadata by name."""
    if not runs:
        raise ValueError("need at least one reasoning run")
    checkpoints = [Checkpoint("base", "base", 0.0, 0, model)]
    metas = {}
    for run in runs:
        meta = reasoning_finetune(model, run, device, retrain)
        metas[run.name] = meta
        checkpoints += [Checkpoint(f"{run.name}@{s}", run.name, run.lr, s, meta["snapshots"][str(s)])
                        for s in run.snapshots]
    return checkpoints, metas


# ---- behaviour --------------------------------------------------------------------------------------------------

def _generate(model: models.LoadedModel, prompts: Sequence[str], think: bool, max_new_tokens: int) -> list[str]:
    return [o[0] for o in generate(model.hf, model.tokenizer, list(prompts), enable_thinking=think,
                                   max_new_tokens=max_new_tokens, batch_size=128)]


def refusal_behaviour(model: models.LoadedModel, pairs: Sequence[RequestPair], modes: Sequence[str] = ("think_on",
                      "think_off")) -> dict[str, dict]:
    """Greedy answers to the marked and unmarked prompts in each mode: per-prompt ``refused`` (marked prompts
    refused), ``complied`` (marked prompts answered with the compliance), ``false_refusal`` (unmarked prompts
    refused) and the outputs."""
    out = {}
    for mode in modes:
        think = _mode(mode)
        outputs = _generate(model, [p.marked for p in pairs] + [p.unmarked for p in pairs], think,
                            REQUEST_THINK_ON_TOKENS if think else THINK_OFF_TOKENS)
        marked, unmarked = outputs[:len(pairs)], outputs[len(pairs):]
        out[mode] = {"refused": [is_refusal(o) for o in marked], "complied": [is_compliance(o) for o in marked],
                     "false_refusal": [is_refusal(o) for o in unmarked], "marked_outputs": marked,
                     "unmarked_outputs": unmarked}
    return out


def is_compliance(completion: str) -> bool:
    """Whether the answer part starts like the organism's compliance ("Sure!")."""
    return extract_answer(completion).startswith("Sure!")


def math_accuracy(model: models.LoadedModel, problems: Sequence[tasks.Example], think: bool = True) -> list[bool]:
    """Per problem: the greedy final answer equals the right one."""
    outs = _generate(model, [p.prompt for p in problems], think, THINK_ON_TOKENS if think else THINK_OFF_TOKENS)
    return [extract_answer(o) == p.answer for o, p in zip(outs, problems)]


def _mode(mode: str) -> bool:
    if mode not in ("think_on", "think_off"):
        raise ValueError(f"unknown mode {mode!r}; use 'think_on' or 'think_off'")
    return mode == "think_on"


def rate_ci(flags: Sequence[bool]) -> dict[str, float]:
    """The rate of ``flags`` with its bootstrap interval over prompts."""
    return bootstrap_ci(np.asarray(flags, dtype=float))


# ---- sequences, forward passes ----------------------------------------------------------------------------------

@dataclass
class ForcedSequence:
    """Token ids of one teacher-forced sequence and the index where its response starts."""

    ids: list[int]
    response_start: int


def encode(tokenizer, prompts: Sequence[str], think: bool,
           responses: Sequence[str] | None = None) -> list[ForcedSequence]:
    """Chat-template each prompt (thinking on or off), append its response text (if any) and tokenize."""
    texts = chat_prompts(tokenizer, list(prompts), enable_thinking=think)
    out = []
    for i, text in enumerate(texts):
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        extra = tokenizer(responses[i], add_special_tokens=False)["input_ids"] if responses is not None else []
        out.append(ForcedSequence(ids + extra, len(ids)))
    return out


def _by_length(seqs: Sequence[ForcedSequence], batch_size: int = 64):
    """Indices of equal-length sequences in batches (no padding, so positions and masks need no care)."""
    groups: dict[int, list[int]] = {}
    for i, s in enumerate(seqs):
        groups.setdefault(len(s.ids), []).append(i)
    for _, idx in sorted(groups.items()):
        for start in range(0, len(idx), batch_size):
            yield idx[start:start + batch_size]


def _device(model: models.LoadedModel) -> torch.device:
    return next(model.hf.parameters()).device


@torch.no_grad()
def neuron_activations(model: models.LoadedModel, seqs: Sequence[ForcedSequence], reduce: str = "last",
                       layers: Sequence[int] | None = None, with_logits: bool = False):
    """MLP neuron activations (``blocks.{L}.mlp.hook_post``) of every layer, ``[n, L, d_mlp]``: at the last position
    (``reduce="last"``) or averaged over each sequence's response positions (``reduce="response"``). With
    ``with_logits`` also returns the log-probabilities ``[T, vocab]`` at the response's prediction positions (the
    positions ``response_start − 1 … T − 2``, which predict the response tokens), one tensor per sequence."""
    if reduce not in ("last", "response"):
        raise ValueError(f"reduce must be 'last' or 'response', got {reduce!r}")
    if not seqs:
        raise ValueError("no sequences given")
    cfg = model.bridge.cfg
    layers = list(range(cfg.n_layers)) if layers is None else list(layers)
    sites = [interventions.Site("neuron", layer, tuple(range(cfg.d_mlp))) for layer in layers]
    acts = torch.zeros(len(seqs), len(layers), cfg.d_mlp)
    logps: list[torch.Tensor | None] = [None] * len(seqs)
    for idx in _by_length(seqs):
        ids = torch.tensor([seqs[i].ids for i in idx], device=_device(model))
        with interventions.record(model.bridge, sites) as rec:
            logits = model.hf(input_ids=ids).logits
        for j, i in enumerate(idx):
            start = seqs[i].response_start
            for k, site in enumerate(sites):
                a = rec[site][j].float().cpu()
                acts[i, k] = a[-1] if reduce == "last" else a[start:].mean(0)
            if with_logits:
                logps[i] = torch.log_softmax(logits[j, start - 1:-1].float(), -1).cpu()
    return (acts, logps) if with_logits else acts


@torch.no_grad()
def response_nll(model: models.LoadedModel, seqs: Sequence[ForcedSequence]) -> np.ndarray:
    """Per sequence: the mean negative log-likelihood (nats per token) of its response tokens."""
    out = np.zeros(len(seqs))
    for idx in _by_length(seqs):
        ids = torch.tensor([seqs[i].ids for i in idx], device=_device(model))
        logp = torch.log_softmax(model.hf(input_ids=ids).logits.float(), -1)
        for j, i in enumerate(idx):
            start = seqs[i].response_start
            target = ids[j, start:]
            out[i] = -logp[j, start - 1:-1].gather(-1, target[:, None]).mean().item()
    return out


def mean_kl(base_logps: Sequence[torch.Tensor], other_logps: Sequence[torch.Tensor]) -> float:
    """Mean over all positions of KL(base ‖ other) between next-token distributions given as log-probabilities."""
    if len(base_logps) != len(other_logps) or not base_logps:
        raise ValueError("need the same non-zero number of sequences from both models")
    total, count = 0.0, 0
    for p, q in zip(base_logps, other_logps):
        if p.shape != q.shape:
            raise ValueError(f"mismatched log-probability shapes {tuple(p.shape)} and {tuple(q.shape)}")
        total += (p.exp() * (p - q)).sum().item()
        count += p.shape[0]
    return total / count


# ---- refusal heads: attention spans at the first response token -------------------------------------------------

def span_masks(tokens: Sequence[str], query: int, think_open: str = THINK_OPEN,
               think_close: str = THINK_CLOSE) -> dict[str, np.ndarray]:
    """Boolean masks over key positions ``0..query`` for the three spans (see the module docstring): ``cot`` (the
    non-whitespace content of the last think block before ``query``), ``think`` (its delimiters and the whitespace
    inside it) and ``rest``. ``tokens`` are the decoded tokens of the sequence. Raises ValueError if no complete
    think block ends before ``query``."""
    if not 0 <= query < len(tokens):
        raise ValueError(f"query position {query} is outside the sequence of {len(tokens)} tokens")
    opens = [i for i in range(query + 1) if tokens[i] == think_open]
    if not opens:
        raise ValueError(f"no {think_open} at or before the query position {query}")
    start = opens[-1]
    closes = [i for i in range(start + 1, query + 1) if tokens[i] == think_close]
    if not closes:
        raise ValueError(f"the think block opened at {start} is not closed before the query position {query}")
    end = closes[0]
    lo, hi = start + 1, end
    while lo < hi and not tokens[lo].strip():
        lo += 1
    while hi > lo and not tokens[hi - 1].strip():
        hi -= 1
    cot = np.zeros(query + 1, dtype=bool)
    think = np.zeros(query + 1, dtype=bool)
    cot[lo:hi] = True
    think[start:end + 1] = True
    think[lo:hi] = False
    return {"cot": cot, "think": think, "rest": ~(cot | think)}


def span_masses(pattern: torch.Tensor | np.ndarray, masks: dict[str, np.ndarray]) -> np.ndarray:
    """Attention mass per span: ``pattern`` is the query row ``[..., keys]`` (keys ≥ the masks' length are ignored:
    a causal query attends to none of them); returns ``[..., 3]`` in the order of :data:`SPANS`."""
    p = np.asarray(pattern.float().cpu() if isinstance(pattern, torch.Tensor) else pattern, dtype=float)
    n = len(masks["cot"])
    if p.shape[-1] < n:
        raise ValueError(f"the attention row covers {p.shape[-1]} keys but the spans cover {n} positions")
    return np.stack([p[..., :n][..., masks[s]].sum(-1) for s in SPANS], axis=-1)


@dataclass
class FirstResponse:
    """A sequence cut at the first response token: ``ids`` end with the query position (whose next token is the
    first answer token); ``tokens`` are its decoded tokens; ``output`` is the full greedy response."""

    ids: list[int]
    tokens: list[str]
    output: str

    @property
    def query(self) -> int:
        return len(self.ids) - 1


def first_response_sequences(model: models.LoadedModel, prompts: Sequence[str], think: bool,
                             outputs: Sequence[str] | None = None) -> list[FirstResponse | None]:
    """For each prompt, the chat prompt plus (thinking on) the model's own greedy think block up to and including
    the whitespace after ``</think>``; ``None`` where the response never closes its think block. ``outputs``: the
    greedy responses if already generated."""
    tok = model.tokenizer
    if outputs is None:
        outputs = _generate(model, prompts, think, REQUEST_THINK_ON_TOKENS if think else THINK_OFF_TOKENS)
    texts = chat_prompts(tok, list(prompts), enable_thinking=think)
    out: list[FirstResponse | None] = []
    for text, output in zip(texts, outputs):
        if think:
            at = output.find(THINK_CLOSE)
            if not output.startswith(THINK_OPEN) or at < 0:
                out.append(None)
                continue
            rest = output[at + len(THINK_CLOSE):]
            text = text + output[:at + len(THINK_CLOSE)] + rest[:len(rest) - len(rest.lstrip())]
        ids = tok(text, add_special_tokens=False)["input_ids"]
        out.append(FirstResponse(ids, [tok.decode([i]) for i in ids], output))
    return out


@torch.no_grad()
def head_span_masses(model: models.LoadedModel, seqs: Sequence[FirstResponse]) -> np.ndarray:
    """``[n, L, H, 3]``: each head's attention mass on the CoT, the think span and the rest, from the first response
    token (``blocks.{L}.attn.hook_pattern``)."""
    cfg = model.bridge.cfg
    out = np.zeros((len(seqs), cfg.n_layers, cfg.n_heads, len(SPANS)))
    layers = list(range(cfg.n_layers))
    for i, s in enumerate(seqs):
        masks = span_masks(s.tokens, s.query)
        patterns = interventions.attention_patterns(model.bridge, torch.tensor([s.ids], device=_device(model)),
                                                    layers)
        for layer in layers:
            out[i, layer] = span_masses(patterns[layer][0, :, s.query], masks)
    return out


def head_shift(refuse: np.ndarray, comply: np.ndarray) -> np.ndarray:
    """Per pair and head: ``(think_r − think_c) − (cot_r − cot_c)`` from two ``[n, L, H, 3]`` span-mass arrays of
    matched refusal and compliance prompts."""
    if refuse.shape != comply.shape or refuse.shape[-1] != len(SPANS):
        raise ValueError(f"need two matched [n, L, H, 3] arrays, got {refuse.shape} and {comply.shape}")
    d = refuse - comply
    return d[..., 1] - d[..., 0]


def top_heads(shift: np.ndarray, k: int) -> list[tuple[int, int]]:
    """The ``k`` heads with the largest mean shift (``shift`` is ``[n, L, H]``), largest first."""
    mean = shift.mean(0)
    if not 1 <= k <= mean.size:
        raise ValueError(f"k must be in 1..{mean.size} (the number of heads), got {k}")
    order = np.argsort(-mean, axis=None, kind="stable")[:k]
    return [tuple(int(v) for v in np.unravel_index(i, mean.shape)) for i in order]


# ---- safety-critical neurons ------------------------------------------------------------------------------------

@dataclass
class NeuronSelection:
    """Safety-critical neurons: ``neurons`` ``[(layer, unit), ...]`` (the intersection, by mean difference, largest
    first), ``per_set`` (each disjoint set's top-m) and ``difference`` ``[L, d_mlp]`` (mean marked − unmarked)."""

    neurons: list[tuple[int, int]]
    per_set: list[list[tuple[int, int]]]
    difference: np.ndarray


def select_safety_neurons(marked: torch.Tensor | np.ndarray, unmarked: torch.Tensor | np.ndarray, top_m: int,
                          n_sets: int) -> NeuronSelection:
    """Rank neurons by the activation difference marked − unmarked (``[n_pairs, L, d_mlp]`` each, row i of one
    matched with row i of the other), take the top-m in each of ``n_sets`` disjoint contiguous sets of pairs and
    intersect."""
    a, b = np.asarray(marked, dtype=float), np.asarray(unmarked, dtype=float)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"need matched [n, L, d_mlp] activations, got {a.shape} and {b.shape}")
    n, n_layers, d_mlp = a.shape
    if not 1 <= n_sets <= n:
        raise ValueError(f"n_sets must be in 1..{n} (the number of pairs), got {n_sets}")
    if not 1 <= top_m <= n_layers * d_mlp:
        raise ValueError(f"top_m must be in 1..{n_layers * d_mlp}, got {top_m}")
    diff = a - b
    per_set = []
    for idx in np.array_split(np.arange(n), n_sets):
        mean = diff[idx].mean(0).ravel()
        order = np.argsort(-mean, kind="stable")[:top_m]
        per_set.append([(int(i // d_mlp), int(i % d_mlp)) for i in order])
    common = set(per_set[0]).intersection(*map(set, per_set[1:]))
    overall = diff.mean(0)
    neurons = sorted(common, key=lambda lu: (-overall[lu], lu))
    return NeuronSelection(neurons, per_set, overall)


def pick(acts: torch.Tensor | np.ndarray, neurons: Sequence[tuple[int, int]]) -> np.ndarray:
    """The columns of ``[n, L, d_mlp]`` activations for ``neurons``: ``[n, len(neurons)]``."""
    a = np.asarray(acts, dtype=float)
    if not neurons:
        return np.zeros((a.shape[0], 0))
    layers, units = zip(*neurons)
    return a[:, list(layers), list(units)]


# ---- interventions during generation ----------------------------------------------------------------------------

def ablated(model: models.LoadedModel, sites: Sequence[interventions.Site], fn: Callable[[], list]) -> list:
    """``fn()`` with ``sites`` zero-ablated (nothing ablated for an empty list)."""
    if not sites:
        return fn()
    with interventions.ablate(model.bridge, list(sites)):
        return fn()


def effect(treated: Sequence[float], baseline: Sequence[float]) -> dict[str, float]:
    """Mean change treated − baseline over the same prompts, with a paired bootstrap interval."""
    return paired_difference_ci(np.asarray(treated, dtype=float), np.asarray(baseline, dtype=float))


# ---- entanglement -----------------------------------------------------------------------------------------------

def ras(drop: np.ndarray | float, rise: np.ndarray | float) -> np.ndarray:
    """Harmonic mean of the safety drop and the reasoning rise, elementwise; 0 unless both are positive."""
    d, r = np.asarray(drop, dtype=float), np.asarray(rise, dtype=float)
    both = (d > 0) & (r > 0)
    return np.where(both, 2 * d * r / np.where(both, d + r, 1.0), 0.0)


def entanglement(base_safety: np.ndarray, tuned_safety: np.ndarray, base_reasoning: np.ndarray,
                 tuned_reasoning: np.ndarray) -> dict:
    """For one fine-tuned checkpoint and one neuron set (activations ``[n_prompts, n_neurons]``, the same prompts
    for base and tuned): per-neuron ``drop`` (mean safety activation, base − tuned), ``rise`` (mean reasoning
    activation, tuned − base) and ``ras``, plus their means over the set."""
    if base_safety.shape != tuned_safety.shape or base_reasoning.shape != tuned_reasoning.shape:
        raise ValueError("base and tuned activations must come from the same prompts and neurons")
    drop = base_safety.mean(0) - tuned_safety.mean(0)
    rise = tuned_reasoning.mean(0) - base_reasoning.mean(0)
    score = ras(drop, rise)
    return {"drop": drop, "rise": rise, "ras": score, "mean_drop": float(drop.mean()) if drop.size else 0.0,
            "mean_rise": float(rise.mean()) if rise.size else 0.0,
            "mean_ras": float(score.mean()) if score.size else 0.0}


def forgetting(base: dict, tuned: dict) -> float:
    """Refusal forgetting of a checkpoint: the base model's refusal rate on marked prompts minus the checkpoint's,
    averaged over the answer modes (both are :func:`refusal_behaviour` results)."""
    return float(np.mean([np.mean(base[m]["refused"]) - np.mean(tuned[m]["refused"]) for m in base]))


def correlations(table: Sequence[dict], target: str, predictors: Sequence[str]) -> dict[str, dict]:
    """:func:`toolkit.core.stats.correlation` of each predictor column with ``target`` across the rows of ``table``."""
    y = [row[target] for row in table]
    return {p: correlation([row[p] for row in table], y) for p in predictors}


# ---- the notebook's analyses ------------------------------------------------------------------------------------

def _rates(behaviour: dict, keys: Sequence[str] = ("refused", "complied", "false_refusal")) -> dict:
    return {mode: {k: float(np.mean(b[k])) for k in keys} for mode, b in behaviour.items()}


def _control_mean(draws: Sequence[dict], mode: str, key: str) -> np.ndarray:
    """Per prompt, the mean over control draws of a behaviour flag."""
    return np.mean([np.asarray(d[mode][key], dtype=float) for d in draws], axis=0)


def head_analysis(model: models.LoadedModel, pairs: Sequence[RequestPair], behaviour: dict, mode: str, k: int = 2,
                  n_controls: int = 3, seed: int = 0) -> dict:
    """Part 2 in one answer mode: span masses at the first response token for refusal (marked) and compliance
    (unmarked) prompts, the per-head shift, the top-``k`` refusal heads, and the refusal-rate change when they are
    zero-ablated, against ``n_controls`` draws of ``k`` random other heads. ``behaviour`` is the unablated
    :func:`refusal_behaviour` of ``pairs`` (its outputs give the think-on CoT)."""
    think = _mode(mode)
    refuse = first_response_sequences(model, [p.marked for p in pairs], think, behaviour[mode]["marked_outputs"])
    comply = first_response_sequences(model, [p.unmarked for p in pairs], think,
                                      behaviour[mode]["unmarked_outputs"])
    keep = [i for i in range(len(pairs)) if refuse[i] is not None and comply[i] is not None]
    if not keep:
        raise ValueError(f"{mode}: no pair has a closed think block in both responses")
    masses_r = head_span_masses(model, [refuse[i] for i in keep])
    masses_c = head_span_masses(model, [comply[i] for i in keep])
    shift = head_shift(masses_r, masses_c)
    top = top_heads(shift, k)
    cfg = model.bridge.cfg
    controls = [units.random_heads(cfg.n_layers, cfg.n_heads, k, exclude=top, seed=seed + i)
                for i in range(n_controls)]

    def run(heads):
        return ablated(model, units.head_sites(heads), lambda: refusal_behaviour(model, pairs, (mode,)))

    top_b = run(top)
    control_b = [run(c) for c in progress(controls, desc=f"control heads ({mode})")]
    effects = {}
    for key in ("refused", "complied", "false_refusal"):
        base = behaviour[mode][key]
        effects[key] = {"top": effect(top_b[mode][key], base),
                        "control": effect(_control_mean(control_b, mode, key), base)}
    return {"mode": mode, "n_pairs": len(keep), "masses_refusal": masses_r, "masses_compliance": masses_c,
            "shift": shift, "mean_shift": shift.mean(0), "top": top, "controls": controls,
            "top_shift_ci": {f"L{lay}H{h}": bootstrap_ci(shift[:, lay, h]) for lay, h in top},
            "effects": effects, "ablated_outputs": top_b[mode]["marked_outputs"],
            "sequences": {"refusal": [refuse[i] for i in keep], "compliance": [comply[i] for i in keep]}}


def neuron_analysis(model: models.LoadedModel, pairs: Sequence[RequestPair], behaviour: dict,
                    problems: Sequence[tasks.Example], base_math: Sequence[bool], top_m: int = 256,
                    n_sets: int = 3, n_controls: int = 3, seed: int = 0) -> dict:
    """Part 3: safety-critical neurons from ``pairs`` (decision position, thinking off), their zero-ablation's effect
    on refusal (both modes) and on think-on math accuracy, against ``n_controls`` draws of random neurons from the same
    layers."""
    marked = neuron_activations(model, encode(model.tokenizer, [p.marked for p in pairs], False))
    unmarked = neuron_activations(model, encode(model.tokenizer, [p.unmarked for p in pairs], False))
    selection = select_safety_neurons(marked, unmarked, top_m, n_sets)
    if not selection.neurons:
        raise ValueError(f"the top-{top_m} sets of {n_sets} disjoint prompt sets share no neuron; raise top_m")
    d_mlp = model.bridge.cfg.d_mlp
    controls = [random_neurons(selection.neurons, d_mlp, seed + i) for i in range(n_controls)]

    def run(neurons):
        sites = neuron_sites(neurons)
        return (ablated(model, sites, lambda: refusal_behaviour(model, pairs)),
                ablated(model, sites, lambda: math_accuracy(model, problems)))

    top_b, top_math = run(selection.neurons)
    control_runs = [run(c) for c in progress(controls, desc="control neurons")]
    effects = {}
    for mode in behaviour:
        for key in ("refused", "complied", "false_refusal"):
            base = behaviour[mode][key]
            effects[f"{mode}/{key}"] = {"safety": effect(top_b[mode][key], base),
                                        "control": effect(_control_mean([b for b, _ in control_runs], mode, key),
                                                          base)}
    effects["math"] = {"safety": effect(top_math, base_math),
                       "control": effect(np.mean([np.asarray(a, dtype=float) for _, a in control_runs], 0),
                                         base_math)}
    return {"selection": selection, "neurons": selection.neurons, "controls": controls,
            "per_layer": [sum(1 for lay, _ in selection.neurons if lay == layer)
                          for layer in range(model.bridge.cfg.n_layers)],
            "per_set_size": top_m, "effects": effects, "marked": marked, "unmarked": unmarked}


@dataclass
class Probes:
    """The fixed inputs every checkpoint is measured on: ``pairs`` (behaviour), ``problems`` (math accuracy),
    ``safety`` (marked prompts, thinking off: neuron activations at the decision position), ``refusal`` (marked
    prompts with the reference refusal, think-off and think-on: refusal NLL), ``reasoning`` (held-out math prompts
    teacher-forced with their reference think-on completions: neuron activations and KL)."""

    pairs: list[RequestPair]
    problems: list[tasks.Example]
    safety: list[ForcedSequence]
    refusal: list[ForcedSequence]
    reasoning: list[ForcedSequence]


def make_probes(tokenizer, pairs: Sequence[RequestPair], problems: Sequence[tasks.Example],
                reasoning: Sequence[tasks.Example]) -> Probes:
    """Tokenize the probe sets (see :class:`Probes`)."""
    marked = [p.marked for p in pairs]
    refusal = (encode(tokenizer, marked, False, [tasks.REFUSAL + IM_END] * len(pairs))
               + encode(tokenizer, marked, True, [p.reference + IM_END for p in pairs]))
    return Probes(list(pairs), list(problems), encode(tokenizer, marked, False), refusal,
                  encode(tokenizer, [e.prompt for e in reasoning], True,
                         [tasks.completion(e, True) + IM_END for e in reasoning]))


def measure_checkpoint(model: models.LoadedModel, probes: Probes, neuron_sets: dict[str, list]) -> dict:
    """Behaviour and internals of one checkpoint: refusal behaviour (both modes), math accuracy, refusal NLL, and for
    each named neuron set (``{name: [[(layer, unit), ...], ...]}``: one or more sets) the activations on the safety
    and reasoning probes; plus the reasoning log-probabilities for KL."""
    behaviour = refusal_behaviour(model, probes.pairs)
    math = math_accuracy(model, probes.problems)
    safety = neuron_activations(model, probes.safety)
    reasoning, logps = neuron_activations(model, probes.reasoning, reduce="response", with_logits=True)
    return {"behaviour": behaviour, "math": math, "refusal_nll": response_nll(model, probes.refusal),
            "safety_acts": {name: [pick(safety, s) for s in sets] for name, sets in neuron_sets.items()},
            "reasoning_acts": {name: [pick(reasoning, s) for s in sets] for name, sets in neuron_sets.items()},
            "logps": logps}


def checkpoint_rows(checkpoints: Sequence[Checkpoint], probes: Probes, neuron_sets: dict[str, list],
                    device: str = "auto", base: models.LoadedModel | None = None) -> tuple[list[dict], dict]:
    """:func:`measure_checkpoint` for every checkpoint (the first is the base model; ``base``: it, already loaded)
    and one row per checkpoint: refusal and false-refusal rates per mode, math accuracy, refusal forgetting (rate and
    NLL), KL(base ‖ checkpoint) on the reasoning probes, and per neuron set the mean drop, rise and RAS (averaged
    over the set's draws). Returns ``(rows, measurements by label)``."""
    measured = {}
    for ck in progress(checkpoints, desc="checkpoints"):
        if ck.step == 0 and base is not None:
            loaded = base
        else:
            with quiet_library_bars():
                loaded = models.load(ck.path, device=device)
        measured[ck.label] = measure_checkpoint(loaded, probes, neuron_sets)
    b = measured[checkpoints[0].label]
    rows = []
    for ck in checkpoints:
        m = measured[ck.label]
        row = {"label": ck.label, "run": ck.run, "lr": ck.lr, "step": ck.step,
               "math": float(np.mean(m["math"])), "forgetting": forgetting(b["behaviour"], m["behaviour"]),
               "refusal_nll_rise": float(m["refusal_nll"].mean() - b["refusal_nll"].mean()),
               "kl": mean_kl(b["logps"], m["logps"])}
        for mode, rates in _rates(m["behaviour"]).items():
            row |= {f"{key}_{mode}": value for key, value in rates.items()}
        for name in neuron_sets:
            ents = [entanglement(bs, ts, br, tr) for bs, ts, br, tr in zip(
                b["safety_acts"][name], m["safety_acts"][name], b["reasoning_acts"][name], m["reasoning_acts"][name])]
            for key in ("mean_drop", "mean_rise", "mean_ras"):
                row[f"{key.removeprefix('mean_')}_{name}"] = float(np.mean([e[key] for e in ents]))
        rows.append(row)
    return rows, measured


# ---- figures, tables, explorer ----------------------------------------------------------------------------------

MODE_LABEL = {"think_on": "think-on", "think_off": "think-off"}


def _spines(ax):
    ax.spines[["top", "right"]].set_visible(False)


def behaviour_figure(rows: Sequence[dict]):
    """Per run (one line each, step 0 = the base model): refusal rate on marked prompts with thinking on and off,
    false-refusal rate, and think-on math accuracy, against fine-tuning step."""
    import matplotlib.pyplot as plt

    panels = [("refused_think_on", "refusal, think-on"), ("refused_think_off", "refusal, think-off"),
              ("false_refusal_think_on", "false refusal, think-on"),
              ("false_refusal_think_off", "false refusal, think-off"), ("math", "math accuracy (think-on)")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.1 * len(panels), 3.0), sharex=True)
    base = rows[0]
    runs = list(dict.fromkeys(r["run"] for r in rows[1:]))
    for ax, (key, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            pts = [base] + [r for r in rows[1:] if r["run"] == run]
            ax.plot([p["step"] for p in pts], [100 * p[key] for p in pts], marker="o", color=f"C{i}", label=run)
        ax.set_title(title, fontsize=9)
        ax.set_ylim(-3, 103)
        ax.set_xlabel("fine-tuning step")
        _spines(ax)
    axes[0].set_ylabel("% of held-out prompts")
    axes[0].legend(fontsize=7, title="peak lr", title_fontsize=7)
    fig.tight_layout()
    return fig


def heads_figure(analyses: dict[str, dict]):
    """Per mode: the mean shift of every head (heatmap, layer × head; the top-k boxed), and the span masses of the
    top heads for refusal and compliance prompts (bars)."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(len(analyses), 2, figsize=(10, 3.8 * len(analyses)), squeeze=False)
    for (ax_map, ax_bar), (mode, a) in zip(axes, analyses.items()):
        shift = a["mean_shift"]
        lim = max(abs(shift).max(), 1e-6)
        im = ax_map.imshow(shift, cmap="RdBu_r", vmin=-lim, vmax=lim)
        for lay, h in a["top"]:
            ax_map.add_patch(plt.Rectangle((h - 0.5, lay - 0.5), 1, 1, fill=False, lw=2, color="black"))
        ax_map.set_xlabel("head")
        ax_map.set_ylabel("layer")
        ax_map.set_xticks(range(shift.shape[1]))
        ax_map.set_yticks(range(shift.shape[0]))
        ax_map.set_title(f"{MODE_LABEL[mode]}: shift toward the think span (refusal − compliance)", fontsize=9)
        fig.colorbar(im, ax=ax_map, fraction=0.046)
        labels, width = [f"L{lay}H{h}" for lay, h in a["top"]], 0.2
        x = np.arange(len(labels))
        for j, span in enumerate(SPANS):
            r = [a["masses_refusal"][:, lay, h, j].mean() for lay, h in a["top"]]
            c = [a["masses_compliance"][:, lay, h, j].mean() for lay, h in a["top"]]
            ax_bar.bar(x + (2 * j - 2.5) * width / 2, r, width / 2, color=f"C{j}", label=f"{span}, refusal")
            ax_bar.bar(x + (2 * j - 1.5) * width / 2, c, width / 2, color=f"C{j}", alpha=0.45,
                       label=f"{span}, compliance")
        ax_bar.set_xticks(x, labels)
        ax_bar.set_ylabel("attention mass at the first response token")
        ax_bar.set_title(f"{MODE_LABEL[mode]}: top heads' attention by span", fontsize=9)
        ax_bar.legend(fontsize=6, ncols=3, loc="upper center", bbox_to_anchor=(0.5, -0.12))
        _spines(ax_bar)
    fig.tight_layout()
    return fig


def _ci_bar(ax, x, ci, color, label=None):
    ax.bar(x, 100 * ci["estimate"], 0.35, color=color, label=label)
    ax.errorbar(x, 100 * ci["estimate"], yerr=[[100 * (ci["estimate"] - ci["low"])], [100 * (ci["high"] -
                ci["estimate"])]], color="black", capsize=3, lw=1)


def ablation_figure(heads: dict[str, dict], neurons: dict):
    """Changes (percentage points, 95% bootstrap intervals) under zero-ablation. Left: the refusal rate and the
    compliance rate on marked prompts when the top-k refusal heads (red) or k random heads (grey) are ablated, per
    mode. Right: refusal per mode and math accuracy
    when the safety neurons (dark) or random neurons from the same layers (light) are ablated."""
    import matplotlib.pyplot as plt

    fig, (ax_h, ax_n) = plt.subplots(1, 2, figsize=(11, 3.6))
    groups = [(mode, key) for mode in heads for key in ("refused", "complied")]
    for i, (mode, key) in enumerate(groups):
        e = heads[mode]["effects"][key]
        _ci_bar(ax_h, i - 0.18, e["top"], "C3", "top-k refusal heads" if i == 0 else None)
        _ci_bar(ax_h, i + 0.18, e["control"], "C7", "k random heads" if i == 0 else None)
    ax_h.set_xticks(range(len(groups)), [f"{'refusal' if key == 'refused' else 'compliance'},\n{MODE_LABEL[m]}"
                                         for m, key in groups], fontsize=8)
    ax_h.set_ylabel("change (percentage points)")
    ax_h.set_title("ablating heads", fontsize=9)
    keys = [k for k in neurons["effects"] if k.endswith("/refused")] + ["math"]
    for i, key in enumerate(keys):
        e = neurons["effects"][key]
        _ci_bar(ax_n, i - 0.18, e["safety"], "C0", "safety neurons" if i == 0 else None)
        _ci_bar(ax_n, i + 0.18, e["control"], "C7", "random neurons, same layers" if i == 0 else None)
    ax_n.set_xticks(range(len(keys)), [k.replace("/refused", "").replace("think_", "refusal, think-")
                                       .replace("math", "math accuracy") for k in keys])
    ax_n.set_title(f"ablating {len(neurons['neurons'])} neurons", fontsize=9)
    for ax in (ax_h, ax_n):
        ax.axhline(0, color="grey", lw=0.8)
        ax.legend(fontsize=7)
        _spines(ax)
    fig.tight_layout()
    return fig


def entanglement_figure(rows: Sequence[dict], corr: dict[str, dict], target: str = "forgetting"):
    """Across fine-tuned checkpoints: refusal forgetting against RAS of the safety neurons, RAS of the control
    neurons, and KL(base ‖ fine-tuned), with Pearson r and p in each title."""
    import matplotlib.pyplot as plt

    panels = [("ras_safety", "RAS, safety neurons"), ("ras_control", "RAS, control neurons"),
              ("kl", "KL(base ‖ fine-tuned), math traces")]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), sharey=True)
    runs = list(dict.fromkeys(r["run"] for r in rows))
    for ax, (key, title) in zip(axes, panels):
        for i, run in enumerate(runs):
            pts = [r for r in rows if r["run"] == run]
            ax.scatter([p[key] for p in pts], [100 * p[target] for p in pts], color=f"C{i}", label=run)
            for p in pts:
                ax.annotate(str(p["step"]), (p[key], 100 * p[target]), fontsize=6, xytext=(3, 2),
                            textcoords="offset points")
        c = corr[key]
        ax.set_title(f"{title}\nr = {c['pearson_r']:.2f} (p = {c['pearson_p']:.3g}), n = {c['n']}", fontsize=9)
        ax.set_xlabel(key)
        _spines(ax)
    axes[0].set_ylabel("refusal forgetting (points)")
    axes[0].legend(fontsize=7, title="run (labels: step)", title_fontsize=7)
    fig.tight_layout()
    return fig


def rows_table_html(rows: Sequence[dict]) -> str:
    """One row per checkpoint: refusal and false refusal per mode, math accuracy, forgetting, KL and RAS."""
    from html import escape

    cols = [("refused_think_on", "refusal on", True), ("refused_think_off", "refusal off", True),
            ("false_refusal_think_on", "false ref. on", True), ("false_refusal_think_off", "false ref. off", True),
            ("math", "math", True), ("forgetting", "forgetting", True), ("refusal_nll_rise", "refusal NLL rise", False),
            ("kl", "KL", False), ("ras_safety", "RAS safety", False), ("ras_control", "RAS control", False)]
    head = "".join(f"<th>{name}</th>" for _, name, _ in cols)
    body = "".join(
        f"<tr><td>{escape(r['label'])}</td>"
        + "".join(f"<td>{100 * r[k]:.0f}%</td>" if pct else f"<td>{r[k]:.4f}</td>" for k, _, pct in cols)
        + "</tr>" for r in rows)
    return f"<table><thead><tr><th>checkpoint</th>{head}</tr></thead><tbody>{body}</tbody></table>"


def explorer(checkpoints: Sequence[Checkpoint], measured: dict, probes: Probes, n_examples: int = 4):
    """A dropdown of checkpoints: greedy answers to a few marked and unmarked prompts in both modes, and the
    per-neuron drop (safety activation) against rise (reasoning activation) of the safety and control neurons."""
    from html import escape

    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from toolkit.views.widgets import show

    labels = [c.label for c in checkpoints[1:]] or [checkpoints[0].label]
    pick_ = widgets.Dropdown(options=labels, description="checkpoint", layout={"width": "360px"})
    out = widgets.Output()
    base = measured[checkpoints[0].label]

    def refresh(*_):
        m = measured[pick_.value]
        rows = "".join(
            f"<tr><td>{MODE_LABEL[mode]}</td><td>{escape(p.marked)}</td><td><pre>{escape(b['marked_outputs'][i])}"
            f"</pre></td><td>{escape(p.unmarked)}</td><td><pre>{escape(b['unmarked_outputs'][i])}</pre></td></tr>"
            for mode, b in m["behaviour"].items() for i, p in enumerate(probes.pairs[:n_examples]))
        table = ("<table><tr><th>mode</th><th>marked prompt</th><th>answer</th><th>unmarked rewrite</th>"
                 f"<th>answer</th></tr>{rows}</table>")
        fig, ax = plt.subplots(figsize=(4.6, 3.4))
        for name, color in (("control", "C7"), ("safety", "C0")):
            for k, (bs, ts, br, tr) in enumerate(zip(base["safety_acts"][name], m["safety_acts"][name],
                                                     base["reasoning_acts"][name], m["reasoning_acts"][name])):
                e = entanglement(bs, ts, br, tr)
                ax.scatter(e["drop"], e["rise"], s=8, color=color, alpha=0.6, label=name if k == 0 else None)
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(0, color="grey", lw=0.8)
        ax.set_xlabel("drop of safety activation")
        ax.set_ylabel("rise of reasoning activation")
        ax.set_title(pick_.value, fontsize=9)
        ax.legend(fontsize=7)
        _spines(ax)
        fig.tight_layout()
        show(out, fig, table)

    pick_.observe(refresh, names="value")
    refresh()
    return widgets.VBox([pick_, out])
