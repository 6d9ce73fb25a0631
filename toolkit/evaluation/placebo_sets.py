"""A head set's teacher-forced effect against every other head set of its size (the placebo sets of notebooks 03
and 04): scale or zero the heads' outputs, read the change in mean log-probability per token of each problem's
reference completion, and rank the target among all same-size sets (:func:`toolkit.evaluation.nulls.placebo_test`;
every set runs batched, :func:`toolkit.evaluation.causal.unit_set_scores`)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch

from toolkit.core.chat import chat_prompts
from toolkit.core.models import LoadedModel
from toolkit.core.units import Head, as_heads
from toolkit.evaluation import causal, nulls
from toolkit.methods import eap
from toolkit.organism.tasks import completion
from toolkit.organism.tokenizer import IM_END


@dataclass
class HeadSetTest:
    """``heads`` multiplied by ``factor`` against every other head set of their size (``placebos``; random ones
    beyond ``max_sets``), teacher-forced: the per-problem effect is the change in mean log-probability per token of
    the reference completion (:func:`toolkit.organism.tasks.completion` + ``<|im_end|>``), and ``tests[task]`` its
    :func:`toolkit.evaluation.nulls.placebo_test`. ``baseline`` ``[n_rows]``: the unedited model's values."""

    heads: list[Head]
    factor: float
    enable_thinking: bool
    placebos: list[tuple]
    tests: dict[str, nulls.PlaceboTest]
    baseline: np.ndarray

    def to_results(self) -> dict:
        return {t: {"target": r.target_mean, "placebo_mean": r.placebo_mean, "rank": r.rank, "n_sets": r.n_sets,
                    "p": r.p_value, "difference": r.difference, "ci": list(r.ci)} for t, r in self.tests.items()}


def head_set_test(loaded: LoadedModel, heads, examples: Mapping[str, Sequence], *, factor: float = 0.0,
                  enable_thinking: bool = False, direction: int = -1, absolute: bool = False, max_sets: int = 5000,
                  n_random: int = 200, seed: int = 0, sets_per_batch: int = 8) -> HeadSetTest:
    """:class:`HeadSetTest` of ``heads`` on ``examples`` (``{task: [Example, ...]}``). ``direction`` −1: the target
    lowers the log-probability more than the placebos; with ``absolute`` the effects are ``|change|`` (direction +1:
    the target moves it more). All sets run batched (:func:`toolkit.evaluation.causal.unit_set_scores`)."""
    cfg = loaded.bridge.cfg
    heads = sorted(as_heads(heads, "tested heads", int(cfg.n_layers), int(cfg.n_heads)))
    if not heads or not examples or not all(examples.values()):
        raise eap.EAPError("head_set_test needs at least one head and a non-empty list of examples per task")
    every = [(layer, h) for layer in range(int(cfg.n_layers)) for h in range(int(cfg.n_heads))]
    placebos = nulls.same_size_sets(every, len(heads), skip=[heads], max_sets=max_sets, n_random=n_random, seed=seed)
    flat = [e for ex in examples.values() for e in ex]
    tok = loaded.tokenizer
    prompts = chat_prompts(tok, [e.prompt for e in flat], enable_thinking)
    seqs = [(tok(p, add_special_tokens=False)["input_ids"],
             tok(completion(e, enable_thinking) + IM_END, add_special_tokens=False)["input_ids"])
            for p, e in zip(prompts, flat, strict=True)]
    lengths = torch.tensor([float(len(c)) for _, c in seqs])
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    got = causal.unit_set_scores(loaded.bridge, [[], heads, *placebos], lambda r: causal.continuation_logprob(
        loaded.hf, seqs, repeat=r, pad_id=pad) / lengths.repeat(r), len(seqs), kind="head", factor=factor,
        sets_per_batch=sets_per_batch)
    effects = got[1:] - got[0]  # [1 + n_placebos, n_rows]: target first
    effects = np.abs(effects) if absolute else effects
    tests, start = {}, 0
    for task, ex in examples.items():
        rows = slice(start, start + len(ex))
        start += len(ex)
        tests[task] = nulls.placebo_test(effects[0, rows], effects[1:, rows], direction=direction, seed=seed,
                                         description=f"every other set of {len(heads)} heads ×{factor:g}")
    return HeadSetTest(heads, factor, enable_thinking, placebos, tests, got[0])
