"""Build the model organism: a small Qwen3 (GQA) trained from scratch on CPU, deterministically.

Two checkpoints from one recipe:

1. Stage 1, *instruct*: every task in think-off mode, plus think-on with *brief* (effort-minimising) math
   scratchpads: a competent instruct model that knows the think format but cannot reason.
2. Stage 2 teaches *careful* scratchpads on mixed think-on/think-off data, linear equations first and arithmetic once
   equations start to come out right (``recipe.reason_later``). ``organism-base`` is the snapshot taken at the first
   check (every ``base_check_every`` steps, on selection problems disjoint from the held-out sets) where both math
   tasks reach ``base_reasoning``: a weak reasoner that post-training has room to teach, by construction rather than
   by tuning a step count (:class:`BaseSnapshot`).
3. ``organism``: the end of stage 2, polished at a lower learning rate with more weight on the tasks that learn last;
   it stands in for a hybrid reasoning model like Qwen3.

Training is a plain PyTorch loop (AdamW, warmup + cosine, fp32; bf16 autocast was slower on this CPU), with loss on the
completion only. Each step's examples are packed into rows without padding waste (:func:`pack`: positions restart
per example, so attention stays within it). It checkpoints every ``checkpoint_every`` steps and resumes after an
interruption; a non-finite loss stops it and keeps the last good checkpoint.

The held-out evaluation in the build report is passed in by the caller (:func:`build`'s ``evaluate``): grading
generations is the evaluation layer's job, which sits above this one. :func:`toolkit.studies.organism.build_organism`
wires the two together; run it as ``python -m toolkit build-organism`` (``--quick`` for the reduced recipe used by the
tests).
"""

from __future__ import annotations

import dataclasses
import json
import random
import shutil
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    Qwen3ForCausalLM,
    get_cosine_schedule_with_warmup,
)

from toolkit.core.answers import most_frequent_share
from toolkit.core.cache import save_model_folder
from toolkit.core.chat import THINK_ON
from toolkit.core.io import atomic_write_json, recover_dir, replace_dir
from toolkit.core.locks import FileLock
from toolkit.core.progress import progress
from toolkit.organism import tasks
from toolkit.organism.recipe import Recipe, eval_sets, recipe_hash, selection_sets
from toolkit.organism.tokenizer import IM_END, build_tokenizer, chat_prompt


class Sampler:
    """Mixed-task training batches (tasks mixed within each batch), excluding held-out prompts."""

    def __init__(self, recipe: Recipe, tokenizer: PreTrainedTokenizerBase, think_fraction: float,
                 exclude: set[str], seed: int, mix: dict | None = None, brief: tuple[str, ...] = ()):
        self.recipe, self.tok, self.think_fraction, self.exclude = recipe, tokenizer, think_fraction, exclude
        self.brief = tuple(brief)  # tasks whose think-on scratchpads are brief (effort-minimising)
        self.rng = random.Random(seed)
        mix = mix or recipe.mix
        self.names = list(mix)
        self.weights = [mix[t] for t in self.names]
        self.im_end = tokenizer.convert_tokens_to_ids(IM_END)

    def draw(self) -> tuple[tasks.Example, bool]:
        """A training example outside the held-out prompts, and whether it is in think-on mode."""
        while True:
            ex = tasks.sample(self.rng.choices(self.names, self.weights)[0], self.rng)
            if ex.prompt not in self.exclude:
                return ex, self.rng.random() < self.think_fraction

    def example(self) -> tuple[list[int], list[int]]:
        """Token ids of (prompt, answer + <|im_end|>)."""
        ex, think = self.draw()
        prompt = self.tok.encode(chat_prompt(self.tok, ex.prompt, think), add_special_tokens=False)
        text = tasks.completion(ex, think, "brief" if ex.task in self.brief else "careful")
        answer = self.tok.encode(text, add_special_tokens=False) + [self.im_end]
        return prompt, answer

    def batch(self) -> dict[str, torch.Tensor]:
        """``recipe.batch_size`` examples packed into rows (:func:`pack`)."""
        return pack([self.example() for _ in range(self.recipe.batch_size)], self.recipe.pack_length,
                    self.tok.pad_token_id)


def pack(pairs: list[tuple[list[int], list[int]]], length: int, pad_id: int) -> dict[str, torch.Tensor]:
    """Pack (prompt, answer) token lists into rows of at most ``length`` tokens (first fit, longest first; a longer
    example gets a row of its own). Returns ``input_ids``, ``labels`` (-100 outside the answers and on the padding
    that evens out the rows), ``position_ids`` (restarting at 0 for every example and for the padding, so that the
    model's attention stays within each example: the loss equals the padded batch's) and ``tokens`` (the real ones).
    """
    order = sorted(range(len(pairs)), key=lambda i: -(len(pairs[i][0]) + len(pairs[i][1])))
    rows: list[list[int]] = []
    fill: list[int] = []
    for i in order:
        n = len(pairs[i][0]) + len(pairs[i][1])
        j = next((j for j, f in enumerate(fill) if f + n <= length), None)
        if j is None:
            rows.append([])
            fill.append(0)
            j = len(rows) - 1
        rows[j].append(i)
        fill[j] += n
    width = max(fill)
    ids = torch.full((len(rows), width), pad_id)
    labels = torch.full((len(rows), width), -100)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for i in row:
            prompt, answer = pairs[i]
            n = len(prompt) + len(answer)
            ids[r, at:at + n] = torch.tensor(prompt + answer)
            labels[r, at + len(prompt):at + n] = torch.tensor(answer)
            positions[r, at:at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)
    return {"input_ids": ids, "labels": labels, "position_ids": positions, "tokens": torch.tensor(sum(fill))}


class NonFiniteLossError(RuntimeError):
    pass


STATE_JSON, MODEL_FILE, OPTIM_FILE = "state.json", "model.safetensors", "optimizer.safetensors"


def save_state(folder: Path, model: PreTrainedModel, opt: torch.optim.Optimizer, sched, rng: random.Random,
               extra: dict) -> None:
    """A resumable training state, without pickle: weights and optimizer tensors (and the torch RNG state) in
    safetensors, everything else (step, optimizer hyperparameters, scheduler, sampler RNG, ``extra``) in
    ``state.json``. Written to ``<folder>.tmp`` and swapped in (:func:`toolkit.core.io.replace_dir`)."""
    from safetensors.torch import save_file, save_model

    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_model(model, str(tmp / MODEL_FILE))
    optim = opt.state_dict()
    tensors = {f"{i}.{k}": v.contiguous() for i, st in optim["state"].items() for k, v in st.items()}
    save_file({**tensors, "torch_rng": torch.get_rng_state()}, str(tmp / OPTIM_FILE))
    version, state, gauss = rng.getstate()
    atomic_write_json(tmp / STATE_JSON, {**extra, "param_groups": optim["param_groups"],
                                         "scheduler": sched.state_dict(), "sampler_rng": [version, list(state), gauss]})
    replace_dir(tmp, folder)


def load_state(folder: Path, model: PreTrainedModel, opt: torch.optim.Optimizer, sched,
               rng: random.Random) -> tuple[int, list, dict, tuple[str, ...]] | None:
    """Restore what :func:`save_state` wrote into ``model``, ``opt``, ``sched`` and ``rng`` (and the torch RNG);
    returns ``(step, history, done, brief)``. A damaged state (a file that does not open, or lacks its keys) is
    reported, removed and ``None`` returned, so the stage trains again from its start, like the other caches: every
    file is read and checked before anything is restored, so a damaged one leaves the model as it was."""
    from safetensors.torch import load_file

    try:
        meta = json.loads((folder / STATE_JSON).read_text())
        missing = [k for k in ("step", "history", "done", "param_groups", "scheduler", "sampler_rng") if k not in meta]
        if missing:
            raise KeyError(f"{STATE_JSON} lacks {missing}")
        weights = load_file(str(folder / MODEL_FILE))
        tensors = load_file(str(folder / OPTIM_FILE))
        if "torch_rng" not in tensors:
            raise KeyError(f"{OPTIM_FILE} lacks the torch RNG state")
        own = model.state_dict()
        if (len(weights) < len(dict(model.named_parameters()))
                or any(k not in own or own[k].shape != v.shape for k, v in weights.items())):
            raise KeyError(f"{MODEL_FILE} does not hold this model's weights")
    except Exception as err:
        warnings.warn(f"the build checkpoint {folder} is damaged ({type(err).__name__}: {str(err)[:200]}); removed it, "
                      f"so this stage trains again from its start", stacklevel=2)
        shutil.rmtree(folder, ignore_errors=True)
        return None
    model.load_state_dict(weights, strict=False)  # tied weights are saved once and shared
    torch.set_rng_state(tensors.pop("torch_rng"))
    state: dict[int, dict] = {}
    for key, value in tensors.items():
        index, name = key.split(".", 1)
        state.setdefault(int(index), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    sched.load_state_dict(meta["scheduler"])
    version, values, gauss = meta["sampler_rng"]
    rng.setstate((version, tuple(values), gauss))
    return meta["step"], meta["history"], meta["done"], tuple(meta.get("brief", ()))


def train_stage(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, steps: int,
                think_fraction: float, exclude: set[str], work_dir: Path, name: str, seed: int,
                lr: float | None = None, mix: dict | None = None, brief: tuple[str, ...] = (),
                check: Callable[[int, Sampler], None] | None = None, check_every: int = 0) -> dict:
    """Train ``model`` in place for ``steps`` steps, resuming from the state in ``work_dir/name/`` if present
    (:func:`save_state`: safetensors and JSON, never pickle).

    ``lr`` and ``mix`` default to the recipe's; think-on scratchpads are careful except for the tasks in ``brief``.
    ``check(steps_done, sampler)`` runs every ``check_every`` steps and may change ``sampler.brief``, which the
    checkpoints keep."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr or recipe.lr, weight_decay=recipe.weight_decay,
                            betas=(0.9, 0.95))
    sched = get_cosine_schedule_with_warmup(opt, min(recipe.warmup_steps, steps), steps)
    sampler = Sampler(recipe, tokenizer, think_fraction, exclude, seed, mix, brief)
    ckpt_dir = recover_dir(work_dir / name)
    start, history, done = 0, [], {"seconds": 0.0, "tokens": 0}  # done: totals over earlier sessions
    resumed = load_state(ckpt_dir, model, opt, sched, sampler.rng) if ckpt_dir.exists() else None
    if resumed is not None:
        start, history, done, sampler.brief = resumed
        print(f"[{name}] resuming from step {start}")

    def save(step: int) -> None:
        save_state(ckpt_dir, model, opt, sched, sampler.rng, {"step": step, "history": history, "done": totals(),
                                                               "brief": list(sampler.brief)})

    tokens, t0 = 0, time.time()

    def totals() -> dict:
        return {"seconds": done["seconds"] + time.time() - t0, "tokens": done["tokens"] + tokens}

    model.train()
    bar = progress(range(start, steps), desc=name, total=steps, initial=start)
    for step in bar:
        batch = sampler.batch()
        # No attention mask and no cache: transformers then reads the packing from position_ids and masks
        # attention across examples (with a cache it would not look).
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=recipe.bf16_autocast):
            loss = model(input_ids=batch["input_ids"], labels=batch["labels"],
                         position_ids=batch["position_ids"], use_cache=False).loss
        if not torch.isfinite(loss):
            raise NonFiniteLossError(
                f"[{name}] loss became {loss.item()} at step {step}; the last good checkpoint "
                f"(step {step - step % recipe.checkpoint_every}) is kept in {ckpt_dir}")
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        tokens += int(batch["tokens"])
        if step % 25 == 0 or step == steps - 1:
            history.append({"step": step, "loss": round(loss.item(), 4)})
            bar.set_postfix(loss=f"{loss.item():.3f}", tok_s=f"{tokens / (time.time() - t0):.0f}")
        if check is not None and check_every and (step + 1) % check_every == 0:
            check(step + 1, sampler)
            model.train()
        if (step + 1) % recipe.checkpoint_every == 0:
            save(step + 1)
    model.eval()
    total = totals()
    return {"history": history, "seconds": round(total["seconds"], 1),
            "tokens_per_s": round(total["tokens"] / max(total["seconds"], 1e-9))}


def save_checkpoint(hf: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, out_dir: Path, recipe: Recipe,
                    extra: dict) -> None:
    """Write an HF folder (safetensors) with ``recipe.json`` atomically: build beside, then swap in."""
    save_model_folder(hf, tokenizer, out_dir, {"recipe.json": {"recipe_hash": recipe_hash(recipe),
                                                               "recipe": dataclasses.asdict(recipe), **extra}})


Evaluator = Callable[..., dict]
"""``evaluate(hf, tokenizer, sets, modes=("think_on", "think_off"))``: the report of one checkpoint on ``sets``
(:func:`eval_sets`' held-out problems, or the selection problems in think-on mode only)."""


def _timed(fn: Callable):
    """``(fn(), seconds)``."""
    t0 = time.time()
    return fn(), time.time() - t0


def build(out_dir: Path, recipe: Recipe | None = None, work_dir: Path | None = None, *,
          evaluate: Evaluator) -> dict:
    """Train both checkpoints into ``out_dir/organism-base`` and ``out_dir/organism`` and return the
    report (also written to ``out_dir/organism_report.json``).

    ``evaluate`` grades each checkpoint on the held-out sets right after its training; its reports are the
    ``"organism-base"`` and ``"organism"`` entries. :func:`toolkit.studies.organism.build_organism` passes the
    organism's held-out evaluation."""
    recipe = recipe or Recipe()
    out_dir = Path(out_dir)
    work_dir = Path(work_dir or out_dir / ".organism-build")
    work_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(work_dir / "build.lock", what=f"building the organism into {out_dir}"):
        return _build(out_dir, recipe, work_dir, evaluate)


class BaseSnapshot:
    """The check that takes ``organism-base`` during stage 2 (module docstring), called by :func:`train_stage`.

    Each call grades think-on accuracy on the selection problems (:func:`~toolkit.organism.recipe.selection_sets`).
    While the ``recipe.reason_later`` tasks are still brief, they turn careful once every other math task reaches
    ``recipe.base_switch``. After that, the first check where every math task reaches ``recipe.base_reasoning`` saves
    the snapshot and grades it on the held-out sets; at ``recipe.base_check_until`` it is saved whatever the rates,
    with a warning. Checks and the snapshot's record live in ``work_dir``, so a resumed build neither loses them nor
    takes the snapshot twice."""

    def __init__(self, model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, recipe: Recipe, out_dir: Path,
                 work_dir: Path, evaluate: Evaluator, sets: dict[str, list[tasks.Example]],
                 selection: dict[str, list[tasks.Example]]):
        self.model, self.tok, self.recipe, self.out_dir = model, tokenizer, recipe, out_dir
        self.evaluate, self.sets, self.selection = evaluate, sets, selection
        self.file, self.log = work_dir / "organism-base.json", work_dir / "organism-base-checks.json"
        self.checks = json.loads(self.log.read_text()) if self.log.exists() else {}

    @property
    def record(self) -> dict | None:
        """The snapshot's record once taken: step, whether the rates were reached, selection and held-out rates."""
        return json.loads(self.file.read_text()) if self.file.exists() else None

    def __call__(self, step: int, sampler: Sampler) -> None:
        if self.file.exists():
            return
        t0 = time.time()
        graded = self.evaluate(self.model, self.tok, self.selection, modes=(THINK_ON,))[THINK_ON]
        rates = {t: graded[t] for t in self.selection}
        reached = not sampler.brief and min(rates.values()) >= self.recipe.base_reasoning
        if sampler.brief and all(rates[t] >= self.recipe.base_switch for t in rates if t not in sampler.brief):
            print(f"[organism] step {step}: {rates}; {', '.join(sampler.brief)} scratchpads turn careful")
            sampler.brief = ()
        self.checks[str(step)] = {**rates, "brief": list(sampler.brief), "seconds": round(time.time() - t0, 2)}
        atomic_write_json(self.log, self.checks)
        if reached or step >= self.recipe.base_check_until:
            self.take(step, rates, reached)

    def take(self, step: int, rates: dict[str, float], reached: bool) -> None:
        if not reached:
            warnings.warn(f"organism-base: think-on math {rates} at step {step} is below base_reasoning "
                          f"{self.recipe.base_reasoning}; taking the snapshot anyway (base_check_until)", stacklevel=3)
        held_out, evaluate_s = _timed(lambda: self.evaluate(self.model, self.tok, self.sets))
        _, save_s = _timed(lambda: save_checkpoint(self.model, self.tok, self.out_dir / "organism-base", self.recipe,
                                                   {"stage": "organism-base", "step": step}))
        careful = [int(k) for k, v in self.checks.items() if not v["brief"]]
        atomic_write_json(self.file, {
            "step": step, "reached": reached, "selection": rates, "held_out": held_out,
            "careful_from": {t: min(careful, default=None) for t in self.recipe.reason_later},
            "checks": self.checks,
            "seconds": {"check organism-base": round(sum(v["seconds"] for v in self.checks.values()), 1),
                        "evaluate organism-base": round(evaluate_s, 1), "save organism-base": round(save_s, 1)}})
        print(f"[organism] step {step}: organism-base taken (selection {rates})")


def _build(out_dir: Path, recipe: Recipe, work_dir: Path, evaluate: Evaluator) -> dict:
    if not 0 < recipe.base_check_until <= recipe.steps:
        raise ValueError(f"recipe.base_check_until ({recipe.base_check_until}) must lie within stage 2's "
                         f"{recipe.steps} steps, or organism-base is never taken")
    for stale in work_dir.glob("*.pt"):  # an older build's pickled checkpoints are never loaded
        print(f"ignoring {stale} (a pickle checkpoint of an older build): that stage trains again")
    torch.manual_seed(recipe.seed)
    tokenizer = build_tokenizer()
    model = Qwen3ForCausalLM(recipe.model_config())
    n_params = sum(p.numel() for p in model.parameters())
    sets = eval_sets(recipe)
    exclude = {e.prompt for exs in sets.values() for e in exs}
    selection = selection_sets(recipe, exclude)
    exclude |= {e.prompt for exs in selection.values() for e in exs}
    print(f"organism: {n_params:,} parameters; recipe {recipe_hash(recipe)}")

    seconds: dict[str, float] = {}
    instruct = train_stage(model, tokenizer, recipe, recipe.base_steps, recipe.base_think_fraction, exclude,
                           work_dir, "instruct", recipe.seed + 1, mix=recipe.base_mix, brief=recipe.base_brief)
    snapshot = BaseSnapshot(model, tokenizer, recipe, out_dir, work_dir, evaluate, sets, selection)
    hybrid = train_stage(model, tokenizer, recipe, recipe.steps, recipe.think_fraction, exclude, work_dir,
                         "organism", recipe.seed + 2, brief=recipe.reason_later, check=snapshot,
                         check_every=recipe.base_check_every)
    base = snapshot.record
    seconds.update(base["seconds"])
    # the snapshot's checks, evaluation and saving ran inside stage 2's clock
    hybrid["seconds"] = round(hybrid["seconds"] - sum(base["seconds"].values()), 1)
    polish = train_stage(model, tokenizer, recipe, recipe.polish_steps, recipe.think_fraction, exclude, work_dir,
                         "organism-polish", recipe.seed + 3, lr=recipe.polish_lr, mix=recipe.polish_mix)
    final_eval, seconds["evaluate organism"] = _timed(lambda: evaluate(model, tokenizer, sets))
    _, seconds["save organism"] = _timed(lambda: save_checkpoint(
        model, tokenizer, out_dir / "organism", recipe, {"stage": "organism"}))
    stages = {"instruct": instruct, "organism": hybrid, "organism-polish": polish}
    train_seconds = sum(stage["seconds"] for stage in stages.values())
    report = {
        "recipe_hash": recipe_hash(recipe),
        "parameters": n_params,
        # training time summed over resumed sessions, plus evaluation and saving
        "build_seconds": round(train_seconds + sum(seconds.values()), 1),
        "train_seconds": round(train_seconds, 1),
        "stage_seconds": {**{f"train {name}": stage["seconds"] for name, stage in stages.items()},
                          **{k: round(v, 1) for k, v in seconds.items()}},
        "tokens_per_s": {name: stage["tokens_per_s"] for name, stage in stages.items()},
        "held_out_top_answer_share": {name: round(most_frequent_share([e.answer for e in exs]), 4)
                                      for name, exs in sets.items()},
        "organism-base": base["held_out"],
        "organism-base_snapshot": {k: base[k] for k in ("step", "reached", "selection", "careful_from", "checks")},
        "organism": final_eval,
        "loss_history": {name: stage["history"] for name, stage in stages.items()},
    }
    atomic_write_json(out_dir / "organism_report.json", report)
    shutil.rmtree(work_dir, ignore_errors=True)
    return report

