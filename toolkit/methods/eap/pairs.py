"""Stage 2 of EAP / EAP-IG: clean/corrupted input pairs, and the rule that makes them from task examples.

A :class:`Pairs` holds equal-length clean and corrupted rows (right-padded) and one metric position per row: the
graph patches position by position, so both runs need the same positions. :func:`make_pairs` builds them from the
model's own greedy responses (the paper used sampled ones):

1. clean prompt = the chat template of the problem; corrupted prompt = the same for a minimally changed problem of
   the same length (:func:`corrupt_prompt`);
2. the model answers both greedily; j = the first token where the two responses differ;
3. clean = clean prompt + clean response[:j], corrupted = corrupted prompt + *the same* prefix; the metric is read at
   the last position, and the labels are the two responses' tokens at j.

Examples whose responses never differ are dropped and listed in ``Pairs.dropped``.
"""

from __future__ import annotations

import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from toolkit.core.chat import as_prompts
from toolkit.core.checks import check_int
from toolkit.core.models import as_loaded, check_length
from toolkit.methods.eap.graph import EAPError

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel

@dataclass
class Pairs:
    """Clean/corrupted inputs of equal length per row, right-padded, with the position where the metric is read.

    ``clean_ids``/``corrupted_ids`` ``[N, T]`` (pad after ``lengths``), ``positions`` ``[N]`` (the metric reads the
    next-token distribution there), ``clean_label``/``corrupted_label`` ``[N]`` (the next token the model gives on
    the clean / corrupted row: used by ``logit_diff`` and ``prob_diff``). ``records`` holds one dict per row (prompts,
    response prefix, task); ``dropped`` the examples that gave no pair and why.
    """

    clean_ids: torch.Tensor
    corrupted_ids: torch.Tensor
    lengths: torch.Tensor
    positions: torch.Tensor
    clean_label: torch.Tensor
    corrupted_label: torch.Tensor
    records: list[dict] = field(default_factory=list)
    dropped: list[dict] = field(default_factory=list)
    pad_id: int = 0

    def __post_init__(self):
        n = len(self.clean_ids)
        if n == 0:
            raise EAPError("no clean/corrupted pairs: every example was dropped"
                           + (f" (first reason: {self.dropped[0]['reason']})" if self.dropped else ""))
        if self.clean_ids.shape != self.corrupted_ids.shape:
            raise EAPError(f"clean ids {tuple(self.clean_ids.shape)} and corrupted ids "
                           f"{tuple(self.corrupted_ids.shape)} differ in shape")
        for name in ("lengths", "positions", "clean_label", "corrupted_label"):
            if len(getattr(self, name)) != n:
                raise EAPError(f"Pairs.{name} has {len(getattr(self, name))} entries for {n} rows")
        if bool((self.positions >= self.lengths).any()) or bool((self.positions < 0).any()):
            raise EAPError("a metric position lies outside its row")
        same = (self.clean_ids == self.corrupted_ids).all(dim=1)
        if bool(same.all()):
            raise EAPError(f"every one of the {n} pairs has identical clean and corrupted inputs: patching would "
                           "change nothing, every edge would score 0 and faithfulness would be undefined; build "
                           "corrupted inputs that differ from the clean ones (eap.make_pairs does)")
        if bool(same.any()):
            rows = same.nonzero().flatten().tolist()
            warnings.warn(f"{len(rows)} of {n} pairs have identical clean and corrupted inputs (rows {rows[:10]}"
                          f"{' …' if len(rows) > 10 else ''}): they add nothing to the scores; drop them", stacklevel=3)

    def __len__(self) -> int:
        return len(self.clean_ids)

    def subset(self, idx) -> Pairs:
        """The rows ``idx`` (a slice, list or tensor of indices), trimmed to their longest row."""
        idx = list(range(len(self)))[idx] if isinstance(idx, slice) else [int(i) for i in idx]
        if not idx:
            raise EAPError("empty subset of pairs")
        t = int(self.lengths[idx].max())
        return Pairs(self.clean_ids[idx, :t], self.corrupted_ids[idx, :t], self.lengths[idx], self.positions[idx],
                     self.clean_label[idx], self.corrupted_label[idx], [self.records[i] for i in idx]
                     if self.records else [], [], self.pad_id)

    def batches(self, batch_size: int):
        """Sub-``Pairs`` of at most ``batch_size`` rows, in order."""
        if batch_size < 1:
            raise EAPError(f"batch_size must be at least 1, got {batch_size}")
        for start in range(0, len(self), batch_size):
            yield self.subset(slice(start, start + batch_size))

    @classmethod
    def from_token_lists(cls, clean: Sequence[Sequence[int]], corrupted: Sequence[Sequence[int]],
                         clean_label: Sequence[int] | None = None, corrupted_label: Sequence[int] | None = None,
                         pad_id: int = 0, records: list[dict] | None = None) -> Pairs:
        """Pairs from token lists (metric at each row's last token). A pair of unequal lengths is refused with a
        message naming it (the EAP graph patches position by position, so both runs need the same positions)."""
        for name, rows in (("clean", clean), ("corrupted", corrupted)):
            if isinstance(rows, (str, bytes)) or any(isinstance(r, (str, bytes)) for r in rows):
                raise TypeError(f"{name} must be a list of token-id lists, not text; tokenize first (or use "
                                "make_pairs)")
        if len(clean) != len(corrupted):
            raise EAPError(f"{len(clean)} clean rows but {len(corrupted)} corrupted rows")
        for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
            if len(a) != len(b):
                what = (records or [{}] * len(clean))[i]
                raise EAPError(f"pair {i} {what.get('prompt', '')!r} / {what.get('corrupted_prompt', '')!r}: clean "
                               f"has {len(a)} tokens, corrupted {len(b)}; corrupted inputs must tokenize to the "
                               "same length")
            if len(a) == 0:
                raise EAPError(f"pair {i} is empty")
        n, t = len(clean), max(len(a) for a in clean) if clean else 0
        ci = torch.full((n, t), pad_id, dtype=torch.long)
        xi = torch.full((n, t), pad_id, dtype=torch.long)
        for i, (a, b) in enumerate(zip(clean, corrupted, strict=True)):
            ci[i, :len(a)] = torch.as_tensor(list(a))
            xi[i, :len(b)] = torch.as_tensor(list(b))
        lengths = torch.tensor([len(a) for a in clean], dtype=torch.long)
        cl = torch.as_tensor(clean_label if clean_label is not None else [0] * n, dtype=torch.long)
        xl = torch.as_tensor(corrupted_label if corrupted_label is not None else [0] * n, dtype=torch.long)
        return cls(ci, xi, lengths, lengths - 1, cl, xl, list(records or []), [], pad_id)


# organism corruptions: each returns a prompt of the same character length with a changed problem
def _same_width_number(value: int, rng: random.Random, lo: int, hi: int, ok=lambda v: True) -> int | None:
    cands = [v for v in range(lo, hi + 1) if v != value and len(str(v)) == len(str(value)) and ok(v)]
    return rng.choice(cands) if cands else None


def corrupt_prompt(example, rng: random.Random) -> str | None:
    """A minimally changed problem for an organism example, with the same number of characters (one token per
    character): linear — another solution x (d changed, same digit count, or else b changed); arithmetic — one
    operand changed by a same-width number; reversal — one letter changed; request — the object swapped for one of
    the other class (dangerous ↔ harmless) of the same length. Other prompts: one digit changed. None if impossible."""
    meta, prompt = getattr(example, "meta", {}) or {}, example.prompt
    task = getattr(example, "task", "")
    if task == "linear" and meta:
        a, b, c, d = meta["a"], meta["b"], meta["c"], meta["d"]
        new_d = _same_width_number(d, rng, 0, 30, lambda v: (v - b) % (a - c) == 0)
        if new_d is not None:
            return f"Solve for x: {a}x + {b} = {c}x + {new_d}"
        new_b = _same_width_number(b, rng, 0, 30, lambda v: (d - v) % (a - c) == 0)
        if new_b is not None:
            return f"Solve for x: {a}x + {new_b} = {c}x + {d}"
    if task == "arithmetic" and meta:
        a, b, op = meta["a"], meta["b"], meta["op"]
        new_b = _same_width_number(b, rng, 1, 999, lambda v: op == "+" or v <= a)
        if new_b is not None:
            return f"What is {a} {op} {new_b}?"
    if task == "reversal" and meta:
        word = meta["word"]
        i = rng.randrange(len(word))
        letter = rng.choice([ch for ch in "abcdefghijklmnopqrstuvwxyz" if ch != word[i]])
        return prompt.replace(word, word[:i] + letter + word[i + 1:])
    if task == "request" and meta:
        from toolkit.organism.tasks import DANGEROUS_OBJECTS, HARMLESS_OBJECTS

        obj = meta["object"]
        pool = HARMLESS_OBJECTS if meta.get("marked") else DANGEROUS_OBJECTS
        same = [o for o in pool if len(o) == len(obj)]
        if same and obj in prompt:
            return prompt.replace(obj, rng.choice(same))
        return None
    digits = [i for i, ch in enumerate(prompt) if ch.isdigit()]
    if digits:
        i = rng.choice(digits)
        return prompt[:i] + rng.choice([d for d in "0123456789" if d != prompt[i]]) + prompt[i + 1:]
    return None


@torch.no_grad()
def _greedy_ids(loaded: LoadedModel, prompt_ids: list[list[int]], max_new_tokens: int,
                batch_size: int) -> list[list[int]]:
    """Greedy continuations (token ids, up to and including ``<|im_end|>`` or the eos) of tokenized prompts."""
    tok, hf = loaded.tokenizer, loaded.hf
    device = next(hf.parameters()).device
    stop = tok.convert_tokens_to_ids("<|im_end|>")
    if stop is None or stop == tok.unk_token_id:
        stop = tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else stop
    out = []
    for start in range(0, len(prompt_ids), batch_size):
        chunk = prompt_ids[start:start + batch_size]
        t = max(len(p) for p in chunk)
        ids = torch.full((len(chunk), t), pad, dtype=torch.long)
        mask = torch.zeros((len(chunk), t), dtype=torch.long)
        for i, p in enumerate(chunk):  # left padding for generation
            ids[i, t - len(p):] = torch.as_tensor(p)
            mask[i, t - len(p):] = 1
        gen = hf.generate(input_ids=ids.to(device), attention_mask=mask.to(device), max_new_tokens=max_new_tokens,
                          do_sample=False, temperature=None, top_p=None, top_k=None, eos_token_id=stop,
                          pad_token_id=pad)
        for row in gen[:, t:].tolist():
            out.append(row[:row.index(stop) + 1] if stop in row else row)
    return out


def make_pairs(loaded: LoadedModel | str, examples, *, enable_thinking: bool = False, corruption: str = "problem",
               corrupted_prompts: Sequence[str] | None = None, max_new_tokens: int = 64, seed: int = 0,
               unequal: str = "refuse", batch_size: int = 32) -> Pairs:
    """Clean/corrupted pairs from task examples (anything with ``.prompt``; organism ``Example``s get task-aware
    corruptions, see :func:`corrupt_prompt`).

    The rule (the paper used the model's own sampled responses; we use its greedy ones):

    1. clean prompt = the chat template of ``example.prompt`` (``enable_thinking`` as given); corrupted prompt = the
       same for a minimally changed problem (``corruption="problem"``), or ``corrupted_prompts[i]`` if given.
    2. The model answers both greedily. Let j be the first token where the two responses differ.
    3. clean = clean prompt + the model's clean response up to j; corrupted = corrupted prompt + *the same* response
       prefix. The metric is read at the last position; the labels are the two responses' tokens at j.

    So the pair differs only in the problem, and the metric asks how the problem decides the model's next token
    where its answers part. Examples whose responses do not differ (within ``max_new_tokens``) are dropped and
    listed in ``Pairs.dropped``. A pair whose prompts tokenize to different lengths is refused with a message
    naming it (``unequal="refuse"``) or dropped with a warning (``unequal="drop"``). ``examples`` is a list (a single
    string is refused); each chat-formatted prompt plus ``max_new_tokens`` must fit the model's positions.
    """
    loaded = as_loaded(loaded, "eap.make_pairs: loaded")
    if isinstance(examples, (str, bytes)):
        raise TypeError("make_pairs needs a list of examples (objects with .prompt), not a single string")
    if corrupted_prompts is not None:
        corrupted_prompts = as_prompts(corrupted_prompts, "corrupted_prompts", allow_empty=True)
    check_int(max_new_tokens, "max_new_tokens", error=EAPError)
    check_int(batch_size, "batch_size", error=EAPError)
    if corruption != "problem":
        raise EAPError(f"unknown corruption {corruption!r}; 'problem' is implemented (or pass corrupted_prompts)")
    if unequal not in ("refuse", "drop"):
        raise EAPError(f"unequal must be 'refuse' or 'drop', got {unequal!r}")
    examples = list(examples)
    if not examples:
        raise EAPError("make_pairs needs at least one example")
    if corrupted_prompts is not None and len(corrupted_prompts) != len(examples):
        raise EAPError(f"{len(corrupted_prompts)} corrupted prompts for {len(examples)} examples")
    tok = loaded.tokenizer
    rng = random.Random(seed)

    def encode(text: str) -> list[int]:
        chat = tok.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=enable_thinking)
        return tok(chat, add_special_tokens=False)["input_ids"]

    dropped, kept = [], []
    for i, ex in enumerate(examples):
        corr = corrupted_prompts[i] if corrupted_prompts is not None else corrupt_prompt(ex, rng)
        rec = {"index": i, "task": getattr(ex, "task", ""), "prompt": ex.prompt, "corrupted_prompt": corr}
        if corr is None:
            dropped.append({**rec, "reason": "no same-length corruption for this problem"})
            continue
        a, b = encode(ex.prompt), encode(corr)
        if len(a) != len(b):
            msg = (f"pair {i}: {ex.prompt!r} is {len(a)} tokens but its corruption {corr!r} is {len(b)}; EAP "
                   "needs equal lengths (positions are patched one to one)")
            if unequal == "refuse":
                raise EAPError(msg + "; pass unequal='drop' to skip such pairs")
            warnings.warn(msg + "; dropped", stacklevel=2)
            dropped.append({**rec, "reason": "unequal token lengths"})
            continue
        check_length(loaded.hf, len(a), f"pair {i} ({ex.prompt[:40]!r}, chat-formatted)", max_new_tokens, EAPError)
        kept.append((rec, a, b))
    if not kept:
        raise EAPError(f"no usable pairs out of {len(examples)} examples"
                       + (f" (first reason: {dropped[0]['reason']})" if dropped else ""))
    responses = _greedy_ids(loaded, [a for _, a, _ in kept] + [b for _, _, b in kept], max_new_tokens, batch_size)
    clean_rows, corr_rows, cl, xl, records = [], [], [], [], []
    for k, (rec, a, b) in enumerate(kept):
        ra, rb = responses[k], responses[len(kept) + k]
        j = next((i for i, (x, y) in enumerate(zip(ra, rb, strict=False)) if x != y), min(len(ra), len(rb)))
        if j >= len(ra) or j >= len(rb):
            dropped.append({**rec, "reason": "the model's responses to clean and corrupted do not differ"})
            continue
        clean_rows.append(a + ra[:j])
        corr_rows.append(b + ra[:j])
        cl.append(ra[j])
        xl.append(rb[j])
        records.append({**rec, "response_prefix": tok.decode(ra[:j]), "clean_response": tok.decode(ra),
                        "corrupted_response": tok.decode(rb), "clean_next": tok.decode([ra[j]]),
                        "corrupted_next": tok.decode([rb[j]])})
    if not clean_rows:
        raise EAPError(f"no usable pairs out of {len(examples)} examples: the model's responses never changed "
                       "under corruption")
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    pairs = Pairs.from_token_lists(clean_rows, corr_rows, cl, xl, pad_id=pad, records=records)
    pairs.dropped = dropped
    return pairs


ANSWER_READS = ("answer", "key_step")  # where answer_pairs reads the metric


def answer_pairs(loaded: LoadedModel | str, examples, *, enable_thinking: bool, seed: int = 0,
                 at: str = "answer") -> Pairs:
    """Clean/corrupted pairs read at the *final answer*, in either mode: the matched positions of a think-on/think-off
    comparison (organism equations and sums only).

    For each example and its minimally changed problem (:func:`corrupt_prompt`, rebuilt with its own scratchpad and
    answer by :func:`toolkit.organism.rebuild.from_prompt`):

    1. each row is its chat prompt followed by its own *reference* completion (teacher-forced, not the model's):
       thinking on, the generator's scratchpad ``<think>\\n{steps}\\n</think>\\n\\n``; thinking off, the answer
       sentence's opening ``The answer is ``; then the answer (``x = 4``, ``1087``);
    2. j = the first answer token where the clean and corrupted answers differ; clean = clean row up to it, corrupted
       = corrupted prompt and completion + *the clean answer's* tokens before j (as :func:`make_pairs` does), so both
       modes read the metric at the token that decides the answer; the labels are the two answers' tokens at j.

    ``at="key_step"`` (thinking on only) reads the scratchpad's *own key step* instead: the result it writes on its
    last line before ``</think>`` (``x = 4`` of a linear equation's ``x = 8 / 2\nx = 4``, ``1087`` of a sum's
    ``598 + 489 = 1087``; every organism scratchpad ends with the answer), so the row is the chat prompt, ``<think>\n``
    and the scratchpad up to that result, and the metric is read at the result's first differing token.

    Pairs whose rows tokenize to different lengths (thinking on, the two scratchpads can differ) or whose answers
    do not differ are dropped and listed in ``Pairs.dropped``; the rest record ``answer_token`` (the metric
    position's index within the answer) and ``at``."""
    from toolkit.organism import tasks
    from toolkit.organism.rebuild import from_prompt

    loaded = as_loaded(loaded, "eap.answer_pairs: loaded")
    if isinstance(examples, (str, bytes)):
        raise TypeError("answer_pairs needs a list of organism examples, not a single string")
    examples = list(examples)
    if not examples:
        raise EAPError("answer_pairs needs at least one example")
    if at not in ANSWER_READS:
        raise EAPError(f"at must be one of {', '.join(ANSWER_READS)}, got {at!r}")
    if at == "key_step" and not enable_thinking:
        raise EAPError("at='key_step' reads the think-on scratchpad; it needs enable_thinking=True")
    unsupported = sorted({getattr(e, "task", "?") for e in examples} - {"linear", "arithmetic"})
    if unsupported:
        raise EAPError(f"answer_pairs rebuilds the corrupted problem's reference answer, which it can do for linear "
                       f"equations and sums only, not {', '.join(unsupported)}")
    tok, rng = loaded.tokenizer, random.Random(seed)

    def ids(text: str) -> list[int]:
        return tok(text, add_special_tokens=False)["input_ids"]

    def row(ex) -> tuple[list[int], list[int], str]:
        chat = tok.apply_chat_template([{"role": "user", "content": ex.prompt}], tokenize=False,
                                       add_generation_prompt=True, enable_thinking=enable_thinking)
        full = tasks.completion(ex, think=enable_thinking)
        if at == "key_step":  # the scratchpad's last line ends with the result it writes
            if not ex.steps.endswith(ex.answer):
                raise EAPError(f"the scratchpad of {ex.prompt!r} does not end with its answer {ex.answer!r}")
            full = f"<think>\n{ex.steps}"
        lead = full[:full.rindex(ex.answer)]
        return ids(chat) + ids(lead), ids(ex.answer), lead

    dropped, clean_rows, corr_rows, cl, xl, records = [], [], [], [], [], []
    for i, ex in enumerate(examples):
        corr_prompt = corrupt_prompt(ex, rng)
        corr = None if corr_prompt is None else from_prompt(ex.task, corr_prompt)
        rec = {"index": i, "task": ex.task, "prompt": ex.prompt, "corrupted_prompt": corr_prompt,
               "enable_thinking": enable_thinking}
        if corr is None:
            dropped.append({**rec, "reason": "no same-length corruption for this problem" if corr_prompt is None
                            else "the corrupted problem is not one the task generator poses"})
            continue
        (lead_a, ans_a, text_a), (lead_b, ans_b, _) = row(ex), row(corr)
        if len(lead_a) != len(lead_b):
            dropped.append({**rec, "reason": "clean and corrupted rows up to the answer differ in length"})
            continue
        j = next((k for k, (x, y) in enumerate(zip(ans_a, ans_b, strict=False)) if x != y), None)
        if j is None:
            dropped.append({**rec, "reason": "the clean and corrupted answers do not differ"})
            continue
        check_length(loaded.hf, len(lead_a) + j, f"pair {i} ({ex.prompt[:40]!r})", 1, EAPError)
        clean_rows.append(lead_a + ans_a[:j])
        corr_rows.append(lead_b + ans_a[:j])
        cl.append(ans_a[j])
        xl.append(ans_b[j])
        records.append({**rec, "answer": ex.answer, "corrupted_answer": corr.answer, "answer_token": j, "at": at,
                        "response_prefix": text_a + tok.decode(ans_a[:j]),
                        "clean_next": tok.decode([ans_a[j]]), "corrupted_next": tok.decode([ans_b[j]])})
    if not clean_rows:
        raise EAPError(f"no usable pairs out of {len(examples)} examples"
                       + (f" (first reason: {dropped[0]['reason']})" if dropped else ""))
    pad = tok.pad_token_id if tok.pad_token_id is not None else 0
    pairs = Pairs.from_token_lists(clean_rows, corr_rows, cl, xl, pad_id=pad, records=records)
    pairs.dropped = dropped
    return pairs
