"""Edge attribution patching (EAP) and EAP with integrated gradients (EAP-IG) on a TransformerBridge, with GQA.

The graph (:class:`Graph`)
    Nodes: ``input`` (token embeddings), every attention head ``a{L}.h{H}``, every MLP ``m{L}``, and ``logits``.
    Edges go from every earlier node to each *target*: a head's query input ``a{L}.h{H}<q>``, the key and value
    inputs ``a{L}.kv{G}<k>`` / ``a{L}.kv{G}<v>``, an MLP's input ``m{L}``, and ``logits``.
    **GQA:** keys and values exist per KV head, so k/v targets are per KV-head group ``G`` (query heads
    ``G*r … G*r+r-1`` with ``r = n_heads / n_kv_heads``). A grouped k/v edge score equals the sum of the scores the
    same edge would get into the per-query-head copies of that k/v input (the tests check this against an independent
    ungrouped implementation). A target's input is the sum of its sources' outputs taken *before* the layer norm (the
    residual stream), as in TransformerLens' ``hook_q_input``/``hook_k_input``/``hook_v_input``/``hook_mlp_in``.

Scores (:func:`attribute`)
    ``score(s → t) = Σ_{examples, positions, width} (a_s(corrupted) − a_s(clean)) · ḡ_t / N``, where ``ḡ_t`` is the
    gradient of the metric with respect to target t's input and N the number of examples.

    - ``method="eap"``: ``ḡ_t`` is the gradient on the clean input.
    - ``method="eap-ig"``: ``ḡ_t`` is the mean of the gradients on m inputs whose *token embeddings* are interpolated
      between corrupted and clean: ``e_k = e_corr + (k/m)(e_clean − e_corr)`` for **k = 0 … m−1** (left Riemann sum,
      as in the current hannamw/EAP-IG; older versions used k = 1 … m). k = 0 is the corrupted input itself; the clean
      end k = m is left out, which matters for the KL metric: its gradient is exactly zero at the clean input, so
      plain EAP with ``metric="kl"`` gives all-zero scores (use logit or probability difference for plain EAP).
    - ``method="exact"``: the ground truth for small graphs: for each edge, the metric with only that edge patched to
      its corrupted value, minus the clean metric (one forward pass per edge).

    Fast path: no per-head result tensor is ever built during the gradient passes, parameters get no gradients,
    and logits are computed only at the metric positions. Source differences ``Δa_s`` are computed once per batch,
    from one no-grad forward of the clean input and the k = 0 pass (the corrupted input; for plain EAP the other way
    round). Per IG step one forward+backward gives gradients at the q/k/v projection outputs, the MLP input and the
    final norm's input; the gradient at each target's pre-norm input follows in closed form (per head ``W_Q[h]ᵀ g``
    through the RMSNorm's backward, ``r·w⊙dy − x·r³·(x·w⊙dy)/d``), and is contracted with ``Δa`` at once (per head,
    ``Δa`` is ``Δz_h W_O[h]``, built once per batch), so memory holds ``Δa`` plus one layer's target gradients.
    Supported: RMSNorm decoders with separate q/k/v projections (Qwen2, Qwen3). The bridge computes attention
    softmax in float32, so even a float64 model agrees with an exact float64 reference to about 1e-7.

Faithfulness and exact scores patch through the bridge's split inputs (``use_split_qkv_input``, ``hook_mlp_in``):
target t's input becomes its input in the patched run plus ``Σ_{s missing} (a_s(corrupted) − a_s(patched run))``.

Metrics, read at ``Pairs.positions`` (one position per row; rows are right-padded so positions are exact):
``kl`` = KL(p_clean ‖ p), ``logit_diff`` = logit[clean label] − logit[corrupted label], ``prob_diff`` likewise
with probabilities. Each is summed over examples in a batch; scores are divided by the number of examples.

Selection (:func:`select`), :class:`Circuit`, :func:`faithfulness` (every non-circuit edge patched to its corrupted
value) and :func:`compare_heads` (emergent heads) complete the method.
"""

from __future__ import annotations

import heapq
import json
import math
import random
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch

from toolkit.core.io import atomic_write_text
from toolkit.core.progress import progress

METHODS = ("eap", "eap-ig", "exact")
METRICS = ("kl", "logit_diff", "prob_diff")


class EAPError(ValueError):
    """Bad input to the EAP toolkit (pairs, graph, scores, circuit); the message says what is wrong."""


# --------------------------------------------------------------------------------------------------- the graph
@dataclass(frozen=True)
class Graph:
    """The computational graph of a decoder-only model, as index arithmetic over dense score matrices.

    Sources (rows): ``input``, then per layer ``a{L}.h0 … a{L}.h{H-1}``, ``m{L}``.
    Targets (columns): per layer ``a{L}.h{h}<q>`` (H), ``a{L}.kv{g}<k>`` (H_kv), ``a{L}.kv{g}<v>`` (H_kv), ``m{L}``;
    then ``logits``.
    """

    n_layers: int
    n_heads: int
    n_kv_heads: int
    d_model: int = 0
    d_head: int = 0

    def __post_init__(self):
        if self.n_layers < 1 or self.n_heads < 1 or self.n_kv_heads < 1 or self.n_heads % self.n_kv_heads:
            raise EAPError(f"invalid graph shape: {self.n_layers} layers, {self.n_heads} heads, "
                           f"{self.n_kv_heads} KV heads (n_heads must be a multiple of n_kv_heads)")

    @classmethod
    def from_bridge(cls, bridge) -> Graph:
        """The graph of a TransformerBridge (``bridge.cfg``: n_layers, n_heads, n_key_value_heads)."""
        cfg = bridge.cfg
        n_kv = int(getattr(cfg, "n_key_value_heads", None) or cfg.n_heads)
        return cls(int(cfg.n_layers), int(cfg.n_heads), n_kv, int(cfg.d_model), int(cfg.d_head))

    # sizes
    @property
    def group_size(self) -> int:
        """Query heads per KV head."""
        return self.n_heads // self.n_kv_heads

    @property
    def per_layer_targets(self) -> int:
        return self.n_heads + 2 * self.n_kv_heads + 1

    @property
    def n_sources(self) -> int:
        return 1 + self.n_layers * (self.n_heads + 1)

    @property
    def n_targets(self) -> int:
        return self.n_layers * self.per_layer_targets + 1

    # indices
    def head_source(self, layer: int, h: int) -> int:
        self._check(layer, h)
        return 1 + layer * (self.n_heads + 1) + h

    def mlp_source(self, layer: int) -> int:
        self._check(layer)
        return 1 + layer * (self.n_heads + 1) + self.n_heads

    def sources_before(self, layer: int) -> int:
        """Number of sources that feed layer ``layer``'s attention (input and all earlier layers)."""
        return 1 + layer * (self.n_heads + 1)

    def q_target(self, layer: int, h: int) -> int:
        self._check(layer, h)
        return layer * self.per_layer_targets + h

    def k_target(self, layer: int, g: int) -> int:
        self._check(layer, kv=g)
        return layer * self.per_layer_targets + self.n_heads + g

    def v_target(self, layer: int, g: int) -> int:
        self._check(layer, kv=g)
        return layer * self.per_layer_targets + self.n_heads + self.n_kv_heads + g

    def mlp_target(self, layer: int) -> int:
        self._check(layer)
        return layer * self.per_layer_targets + self.n_heads + 2 * self.n_kv_heads

    @property
    def logits_target(self) -> int:
        return self.n_layers * self.per_layer_targets

    def _check(self, layer: int, h: int | None = None, kv: int | None = None) -> None:
        if not 0 <= layer < self.n_layers:
            raise EAPError(f"layer {layer} is out of range: the model has layers 0..{self.n_layers - 1}")
        if h is not None and not 0 <= h < self.n_heads:
            raise EAPError(f"head {h} is out of range: heads are 0..{self.n_heads - 1}")
        if kv is not None and not 0 <= kv < self.n_kv_heads:
            raise EAPError(f"KV head {kv} is out of range: KV heads are 0..{self.n_kv_heads - 1}")

    # names
    @property
    def source_names(self) -> list[str]:
        names = ["input"]
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}" for h in range(self.n_heads)] + [f"m{layer}"]
        return names

    @property
    def target_names(self) -> list[str]:
        names = []
        for layer in range(self.n_layers):
            names += [f"a{layer}.h{h}<q>" for h in range(self.n_heads)]
            names += [f"a{layer}.kv{g}<k>" for g in range(self.n_kv_heads)]
            names += [f"a{layer}.kv{g}<v>" for g in range(self.n_kv_heads)]
            names += [f"m{layer}"]
        return names + ["logits"]

    def source_index(self, name: str) -> int:
        try:
            return self.source_names.index(name)
        except ValueError:
            raise EAPError(f"unknown source node {name!r}; sources are 'input', 'a{{L}}.h{{H}}', 'm{{L}}' with "
                           f"L in 0..{self.n_layers - 1}, H in 0..{self.n_heads - 1}") from None

    def target_index(self, name: str) -> int:
        try:
            return self.target_names.index(name)
        except ValueError:
            raise EAPError(f"unknown target {name!r}; targets are 'a{{L}}.h{{H}}<q>', 'a{{L}}.kv{{G}}<k>', "
                           f"'a{{L}}.kv{{G}}<v>', 'm{{L}}', 'logits'") from None

    def source_head(self, s: int) -> tuple[int, int] | None:
        """``(layer, head)`` of a head source index, else None."""
        if s == 0:
            return None
        layer, r = divmod(s - 1, self.n_heads + 1)
        return None if r == self.n_heads else (layer, r)

    def target_owner(self, t: int) -> list[int]:
        """Source indices of the node(s) that read target ``t`` (a k/v target is read by its whole group)."""
        if t == self.logits_target:
            return []
        layer, r = divmod(t, self.per_layer_targets)
        base = 1 + layer * (self.n_heads + 1)
        if r < self.n_heads:
            return [base + r]
        if r < self.n_heads + 2 * self.n_kv_heads:
            g = (r - self.n_heads) % self.n_kv_heads
            return [base + g * self.group_size + i for i in range(self.group_size)]
        return [base + self.n_heads]

    def source_inputs(self, s: int) -> list[int]:
        """Target indices whose inputs flow into source node ``s`` (its q, k, v targets, or its MLP input)."""
        if s == 0:
            return []
        head = self.source_head(s)
        if head is None:
            return [self.mlp_target((s - 1) // (self.n_heads + 1))]
        layer, h = head
        g = h // self.group_size
        return [self.q_target(layer, h), self.k_target(layer, g), self.v_target(layer, g)]

    def valid_mask(self) -> torch.Tensor:
        """``[n_sources, n_targets]`` bool: which edges exist (source strictly upstream of the target)."""
        mask = torch.zeros(self.n_sources, self.n_targets, dtype=torch.bool)
        width = self.per_layer_targets
        for layer in range(self.n_layers):
            s_attn = self.sources_before(layer)
            mask[:s_attn, layer * width:layer * width + width - 1] = True
            mask[:s_attn + self.n_heads, self.mlp_target(layer)] = True
        mask[:, self.logits_target] = True
        return mask

    def to_dict(self) -> dict:
        return {"n_layers": self.n_layers, "n_heads": self.n_heads, "n_kv_heads": self.n_kv_heads,
                "d_model": self.d_model, "d_head": self.d_head}


# --------------------------------------------------------------------------------------------------- pairs
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
def _greedy_ids(loaded, prompt_ids: list[list[int]], max_new_tokens: int, batch_size: int) -> list[list[int]]:
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


def make_pairs(loaded, examples, enable_thinking: bool = False, corruption: str = "problem",
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
    naming it (``unequal="refuse"``) or dropped with a warning (``unequal="drop"``).
    """
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


# --------------------------------------------------------------------------------------------------- model access
class _Model:
    """Weights and hook names of a Qwen2/Qwen3 TransformerBridge, read once."""

    def __init__(self, loaded):
        self.hf, self.bridge = loaded.hf, loaded.bridge
        self.graph = Graph.from_bridge(self.bridge)
        g = self.graph
        blocks = self.bridge.blocks
        self.dtype = next(self.hf.parameters()).dtype
        self.device = next(self.hf.parameters()).device
        self.acc_dtype = torch.promote_types(self.dtype, torch.float32)
        dh = g.d_head
        self.w_q, self.w_k, self.w_v, self.w_o, self.ln1, self.ln2 = [], [], [], [], [], []
        for layer in range(g.n_layers):
            attn = blocks[layer].attn
            self.w_q.append(attn.q.original_component.weight.view(g.n_heads, dh, -1))
            self.w_k.append(attn.k.original_component.weight.view(g.n_kv_heads, dh, -1))
            self.w_v.append(attn.v.original_component.weight.view(g.n_kv_heads, dh, -1))
            # o_proj weight [d, H*dh] -> per head [H, dh, d]
            self.w_o.append(attn.o.original_component.weight.view(-1, g.n_heads, dh).permute(1, 2, 0))
            self.ln1.append(self._norm(blocks[layer].ln1, f"blocks.{layer}.ln1"))
            self.ln2.append(self._norm(blocks[layer].ln2, f"blocks.{layer}.ln2"))

    @staticmethod
    def _norm(module, where: str):
        norm = getattr(module, "original_component", module)
        weight, eps = getattr(norm, "weight", None), getattr(norm, "variance_epsilon", None)
        if weight is None or eps is None or "RMSNorm" not in type(norm).__name__:
            raise EAPError(f"{where} is a {type(norm).__name__}; the EAP fast path supports RMSNorm models "
                           "(Qwen2, Qwen3)")
        return weight, float(eps)

    def head_results(self, layer: int, z: torch.Tensor) -> torch.Tensor:
        """Per-head outputs ``[H, b, p, d]`` from ``z`` ``[b, p, H, dh]``."""
        return torch.einsum("bphe,hed->hbpd", z, self.w_o[layer])


def _metric(logits: torch.Tensor, metric: str, clean_logp: torch.Tensor | None, clean_label: torch.Tensor,
            corrupted_label: torch.Tensor) -> torch.Tensor:
    """Per-row metric ``[b]`` from logits ``[b, V]`` at the metric positions."""
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    rows = torch.arange(len(logits), device=logits.device)
    if metric == "kl":
        logp = torch.log_softmax(logits, -1)
        ref = clean_logp.to(logp.dtype)
        return (ref.exp() * (ref - logp)).sum(-1)
    if metric == "logit_diff":
        return logits[rows, clean_label] - logits[rows, corrupted_label]
    if metric == "prob_diff":
        p = torch.softmax(logits, -1)
        return p[rows, clean_label] - p[rows, corrupted_label]
    raise EAPError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")


def _logits_at(model: _Model, ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Run the decoder on ``ids`` and return the logits ``[b, V]`` at ``positions`` only."""
    hidden = model.hf.model(input_ids=ids, use_cache=False).last_hidden_state
    picked = hidden[torch.arange(len(ids), device=ids.device), positions]
    return model.hf.lm_head(picked[:, None])[:, 0]


@torch.no_grad()
def _record_sources(model: _Model, ids: torch.Tensor, positions: torch.Tensor):
    """One no-grad forward: token embeddings ``[b,p,d]``, ``z`` per layer, MLP outputs per layer, logits at
    positions."""
    g = model.graph
    store: dict[str, torch.Tensor] = {}

    def keep(act, hook):
        store[hook.name] = act

    names = ["hook_embed"] + [f"blocks.{i}.attn.hook_z" for i in range(g.n_layers)] + \
        [f"blocks.{i}.hook_mlp_out" for i in range(g.n_layers)]
    with model.bridge.hooks(fwd_hooks=[(n, keep) for n in names]):
        logits = _logits_at(model, ids, positions)
    emb = store["embed.hook_out"]
    z = [store[f"blocks.{i}.attn.o.hook_in"].reshape(*ids.shape, g.n_heads, g.d_head) for i in range(g.n_layers)]
    mlp = [store[f"blocks.{i}.mlp.hook_out"] for i in range(g.n_layers)]
    return emb, z, mlp, logits


class _FastPath:
    """The gradient passes of EAP / EAP-IG with one set of hooks for a whole :func:`attribute` call.

    Per batch, one no-grad forward records the *other* end of the path (the clean input for EAP-IG, whose k = 0
    pass is the corrupted input; the corrupted input for EAP, whose one pass is the clean input): token embeddings,
    each layer's ``z`` and MLP output. Then each pass (mode ``"grad"``) replaces the token embeddings by the
    interpolated ones and keeps the tensors whose gradients are needed (q/k/v projection outputs, the MLP input, the
    final norm's input) and the norms' inputs; its first pass also yields Δa."""

    def __init__(self, model: _Model):
        self.model, g = model, model.graph
        self.mode, self.embeds, self.store = "record", None, {}
        acc = model.acc_dtype
        # q/k/v weights per head, stacked, with ln1's weight folded in: [H + 2 H_kv, dh, d]
        self.w_qkv = [torch.cat([model.w_q[i], model.w_k[i], model.w_v[i]], 0).to(acc) * model.ln1[i][0].to(acc)
                      for i in range(g.n_layers)]
        names = ["hook_embed"]
        for i in range(g.n_layers):
            names += [f"blocks.{i}.ln1.hook_in", f"blocks.{i}.attn.q.hook_out", f"blocks.{i}.attn.k.hook_out",
                      f"blocks.{i}.attn.v.hook_out", f"blocks.{i}.attn.hook_z", f"blocks.{i}.ln2.hook_in",
                      f"blocks.{i}.mlp.hook_in", f"blocks.{i}.hook_mlp_out"]
        names.append("ln_final.hook_in")
        self.hooks = [(n, self._keep) for n in names]
        self.wanted = [f"blocks.{i}.{h}" for i in range(g.n_layers) for h in ("attn.q.hook_out", "attn.k.hook_out",
                                                                               "attn.v.hook_out", "mlp.hook_in")]
        self.wanted.append("ln_final.hook_in")

    def _keep(self, act, hook):
        name = hook.name
        if name == "embed.hook_out" and self.mode == "grad":
            return self.embeds
        self.store[name] = act
        return act  # returned so that this tensor (not a converted copy of it) is what flows on

    @torch.no_grad()
    def embed(self, ids):
        """Token embeddings of ``ids`` (no grad)."""
        self.mode = "record"
        return self.model.hf.get_input_embeddings()(ids)

    @torch.no_grad()
    def record(self, ids, pos):
        """One no-grad forward: ``(embeddings, [z per layer], [MLP output per layer], logits at pos)``."""
        self.mode, self.store = "record", {}
        logits = _logits_at(self.model, ids, pos)
        acts = self._acts(len(ids), detach=False)
        self.store = {}
        return (*acts, logits)

    def _acts(self, b: int, detach: bool):
        g, st = self.model.graph, self.store
        emb = st["embed.hook_out"] if "embed.hook_out" in st else self.embeds
        p = emb.shape[1]
        z = [st[f"blocks.{i}.attn.o.hook_in"].reshape(b, p, g.n_heads, g.d_head) for i in range(g.n_layers)]
        mlp = [st[f"blocks.{i}.mlp.hook_out"] for i in range(g.n_layers)]
        if detach:
            emb, z, mlp = emb.detach(), [t.detach() for t in z], [t.detach() for t in mlp]
        return emb, z, mlp

    @torch.no_grad()
    def deltas(self, clean, corrupted) -> torch.Tensor:
        """``Δa = a(corrupted) − a(clean)`` for every source: ``[n_sources, b*p*d]`` (accumulation dtype)."""
        model, g = self.model, self.model.graph
        (emb_c, z_c, mlp_c), (emb_x, z_x, mlp_x) = clean[:3], corrupted[:3]
        b, p, d = emb_c.shape
        out = torch.empty(g.n_sources, b, p, d, dtype=model.acc_dtype, device=emb_c.device)
        out[0] = emb_x - emb_c
        for i in range(g.n_layers):
            s = g.head_source(i, 0)
            out[s:s + g.n_heads] = model.head_results(i, z_x[i] - z_c[i])
            out[g.mlp_source(i)] = mlp_x[i] - mlp_c[i]
        return out.view(g.n_sources, -1)

    def grad_pass(self, ids, pos, embeds, metric, clean_logp, labels, deltas, scores, reference=None,
                  this_run: str = "corrupted") -> torch.Tensor:
        """One forward+backward at ``embeds``; adds ``Δa · ∂M/∂(target input)`` to ``scores`` and returns ``Δa``.

        With ``deltas=None``, this pass *is* the ``this_run`` input (corrupted at k = 0 of EAP-IG, clean for EAP):
        its activations and the recorded ``reference`` (the other input) give ``Δa``, so no separate forward is
        needed. ``clean_logp=None`` (EAP's pass on the clean input) takes the clean distribution from this pass."""
        model, g = self.model, self.model.graph
        self.mode, self.embeds, self.store = "grad", embeds, {}
        logits = _logits_at(model, ids, pos)
        if clean_logp is None:
            clean_logp = torch.log_softmax(logits.detach().to(model.acc_dtype), -1)
        total = _metric(logits, metric, clean_logp, *labels).sum()
        st = self.store
        grads = torch.autograd.grad(total, [st[n] for n in self.wanted])
        if deltas is None:
            mine = self._acts(len(ids), detach=True)
            deltas = self.deltas(reference, mine) if this_run == "corrupted" else self.deltas(mine, reference)
        self.embeds = None
        b, p = ids.shape
        n = b * p
        acc = model.acc_dtype
        t_attn = g.n_heads + 2 * g.n_kv_heads
        width = g.per_layer_targets
        for i in range(g.n_layers):
            gq, gk, gv, gm = grads[4 * i:4 * i + 4]
            g_heads = torch.cat([gq.reshape(n, g.n_heads, g.d_head), gk.reshape(n, g.n_kv_heads, g.d_head),
                                 gv.reshape(n, g.n_kv_heads, g.d_head)], 1).to(acc).transpose(0, 1)
            dy = torch.bmm(g_heads, self.w_qkv[i])  # [T_attn, n, d]: γ ⊙ (W^T g) per target
            x1 = st[f"blocks.{i}.ln1.hook_in"].detach().reshape(1, n, -1).to(acc)
            g_attn = _rms_backward_folded(x1, model.ln1[i][1], dy)
            n_attn = g.sources_before(i)
            t0 = i * width
            scores[:n_attn, t0:t0 + t_attn] += deltas[:n_attn] @ g_attn.view(t_attn, -1).T
            w2, eps2 = model.ln2[i]
            x2 = st[f"blocks.{i}.ln2.hook_in"].detach().reshape(1, n, -1).to(acc)
            g_mlp = _rms_backward_folded(x2, eps2, (gm.reshape(1, n, -1).to(acc) * w2.to(acc)))
            n_mlp = n_attn + g.n_heads  # the MLP also reads this layer's heads
            scores[:n_mlp, t0 + t_attn] += deltas[:n_mlp] @ g_mlp.reshape(-1)
        scores[:, g.logits_target] += deltas @ grads[-1].to(acc).reshape(-1)
        self.store = {}
        return deltas


def _rms_backward_folded(x: torch.Tensor, eps: float, gdy: torch.Tensor) -> torch.Tensor:
    """Gradient at the input ``x`` ``[1, n, d]`` of ``y = w ⊙ x · rsqrt(mean(x²) + eps)``, given ``gdy = w ⊙ dy``
    ``[T, n, d]`` (one cotangent per target): ``r·gdy − x·r³·(x·gdy)/d`` with ``r = rsqrt(mean(x²) + eps)``."""
    r = torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps)  # [1, n, 1]
    coef = (gdy * x).sum(-1, keepdim=True).mul_(r.pow(2) / x.shape[-1])  # [T, n, 1]
    return torch.addcmul(gdy, x, coef, value=-1.0).mul_(r)


# --------------------------------------------------------------------------------------------------- memory
def _available_bytes(device: torch.device) -> int | None:
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:
        return None


def estimate_memory(loaded, batch_size: int, n_tokens: int, method: str = "eap-ig") -> dict:
    """Rough peak extra bytes of one :func:`attribute` batch (beyond the loaded weights): the source differences,
    the activations a forward+backward keeps (eager attention), and one layer's target gradients, times 1.25.
    On the Qwen3-0.6B shape at 4 × 128 tokens it says 4.4 GiB; 4.2 GiB was measured (``toolkit bench eap``)."""
    g = Graph.from_bridge(loaded.bridge)
    cfg = loaded.bridge.cfg
    dtype = next(loaded.hf.parameters()).dtype
    elem = torch.finfo(dtype).bits // 8
    acc = max(elem, 4)
    n = batch_size * n_tokens
    d_mlp = int(getattr(cfg, "d_mlp", 4 * g.d_model) or 4 * g.d_model)
    vocab = int(getattr(cfg, "d_vocab", 0) or 0)
    deltas = g.n_sources * n * g.d_model * acc
    per_layer = (12 * n * g.d_model + 4 * n * d_mlp + 4 * n * g.n_heads * g.d_head
                 + 3 * batch_size * g.n_heads * n_tokens * n_tokens) * elem
    activations = g.n_layers * per_layer + 2 * batch_size * vocab * 4
    layer_grads = 3 * g.per_layer_targets * n * g.d_model * acc
    recorded = 2 * (n * g.d_model * (1 + g.n_layers) + n * g.n_heads * g.d_head * g.n_layers) * elem
    total = 1.25 * (deltas + activations + layer_grads + recorded)  # allocator overhead: errs high (measured ~1.2x)
    return {"total": int(total), "deltas": int(deltas), "activations": int(activations),
            "target_gradients": int(layer_grads), "recorded": int(recorded)}


def _check_memory(loaded, batch_size: int, n_tokens: int, method: str) -> None:
    est = estimate_memory(loaded, batch_size, n_tokens, method)["total"]
    device = next(loaded.hf.parameters()).device
    avail = _available_bytes(device)
    if avail is not None and est > 0.9 * avail:
        fit = max(1, int(batch_size * 0.9 * avail / est))
        raise MemoryError(f"{method} on batches of {batch_size} × {n_tokens} tokens needs about {est / 2**30:.2f} GiB "
                          f"but only {avail / 2**30:.2f} GiB is available on {device}; use batch_size={fit} or less, "
                          "or shorter pairs")


# --------------------------------------------------------------------------------------------------- scores
class Scores:
    """Edge scores of one model on one set of pairs: a dense ``[n_sources, n_targets]`` tensor (float64, CPU), a
    validity mask (edges that exist), the :class:`Graph` and how they were made (``meta``)."""

    def __init__(self, values: torch.Tensor, graph: Graph, meta: dict | None = None, valid: torch.Tensor | None = None):
        valid = graph.valid_mask() if valid is None else valid.bool()
        if tuple(values.shape) != (graph.n_sources, graph.n_targets) or values.shape != valid.shape:
            raise EAPError(f"scores of shape {tuple(values.shape)} do not fit the graph "
                           f"({graph.n_sources} sources × {graph.n_targets} targets)")
        self.values = values.detach().to("cpu", torch.float64).masked_fill(~valid, 0.0)
        self.valid, self.graph, self.meta = valid, graph, dict(meta or {})

    @property
    def n_edges(self) -> int:
        return int(self.valid.sum())

    def score(self, source: str, target: str) -> float:
        """The score of the edge ``source → target`` (names as in :class:`Graph`)."""
        s, t = self.graph.source_index(source), self.graph.target_index(target)
        if not self.valid[s, t]:
            raise EAPError(f"there is no edge {source} → {target} (the source is not upstream of the target)")
        return float(self.values[s, t])

    def edges(self, top: int | None = None, absolute: bool = True) -> list[tuple[str, str, float]]:
        """``(source, target, score)`` of valid edges, best first (by |score| if ``absolute``)."""
        s_idx, t_idx = self.valid.nonzero(as_tuple=True)
        vals = self.values[s_idx, t_idx]
        order = torch.argsort(vals.abs() if absolute else vals, descending=True)
        if top is not None:
            order = order[:top]
        src, tgt = self.graph.source_names, self.graph.target_names
        return [(src[int(s_idx[i])], tgt[int(t_idx[i])], float(vals[i])) for i in order]

    def flat(self) -> torch.Tensor:
        """The valid edges' scores as a vector, in a fixed order (for correlations between methods)."""
        return self.values[self.valid]

    def to_dict(self) -> dict:
        return {"format": "toolkit.eap.Scores/1", "graph": self.graph.to_dict(), "meta": self.meta,
                "values": self.values.tolist(), "valid": self.valid.int().tolist()}

    def save(self, path) -> None:
        """Write as JSON, atomically."""
        atomic_write_text(path, json.dumps(self.to_dict()))

    @classmethod
    def load(cls, path) -> Scores:
        try:
            data = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as err:
            raise EAPError(f"cannot read scores from {path}: {err}") from err
        if data.get("format") != "toolkit.eap.Scores/1":
            raise EAPError(f"{path} is not a saved Scores file (format {data.get('format')!r})")
        return cls(torch.tensor(data["values"], dtype=torch.float64), Graph(**data["graph"]), data.get("meta"),
                   torch.tensor(data["valid"], dtype=torch.bool))

    def __repr__(self) -> str:
        return (f"Scores({self.meta.get('method', '?')}, metric={self.meta.get('metric', '?')}, "
                f"{self.n_edges} edges, {self.graph.n_layers} layers)")


def _prepare(loaded, pairs: Pairs, metric: str, batch_size: int, method: str) -> _Model:
    if metric not in METRICS:
        raise EAPError(f"unknown metric {metric!r}; choose from {', '.join(METRICS)}")
    if not isinstance(pairs, Pairs):
        raise EAPError(f"pairs must be a toolkit.eap.Pairs (from make_pairs), not {type(pairs).__name__}")
    if batch_size < 1:
        raise EAPError(f"batch_size must be at least 1, got {batch_size}")
    model = _Model(loaded)
    vocab = int(loaded.hf.config.vocab_size)
    for name in ("clean_ids", "corrupted_ids", "clean_label", "corrupted_label"):
        bad = getattr(pairs, name)
        if bool((bad < 0).any()) or bool((bad >= vocab).any()):
            raise EAPError(f"Pairs.{name} holds token ids outside the model's vocabulary (0..{vocab - 1}); were the "
                           "pairs made with another tokenizer?")
    _check_memory(loaded, min(batch_size, len(pairs)), int(pairs.lengths.max()), method)
    return model


class _Frozen:
    """Parameters frozen (activation gradients only) and eval mode inside; restored on exit."""

    def __init__(self, hf):
        self.hf = hf

    def __enter__(self):
        self.flags = [(p, p.requires_grad) for p in self.hf.parameters()]
        self.training = self.hf.training
        for p, _ in self.flags:
            p.requires_grad_(False)
        if self.training:
            self.hf.eval()

    def __exit__(self, *exc):
        for p, flag in self.flags:
            p.requires_grad_(flag)
        if self.training:
            self.hf.train(True)


def attribute(loaded, pairs: Pairs, method: str = "eap-ig", steps: int = 5, metric: str = "kl",
              batch_size: int = 8, show_progress: bool = True) -> Scores:
    """Score every edge of the model's graph on ``pairs`` (see the module docstring for the definitions).

    ``method``: ``"eap-ig"`` (``steps`` interpolation steps, k = 0…m−1), ``"eap"`` (gradient on the clean input) or
    ``"exact"`` (one patched forward per edge: the ground truth, for small graphs). Refuses a batch that would not
    fit in memory. Returns :class:`Scores`.
    """
    if method not in METHODS:
        raise EAPError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    if method == "eap-ig" and steps < 1:
        raise EAPError(f"eap-ig needs steps >= 1, got {steps}")
    if method == "exact":
        return _exact_scores(loaded, pairs, metric, batch_size, show_progress)
    model = _prepare(loaded, pairs, metric, batch_size, method)
    g = model.graph
    scores = torch.zeros(g.n_sources, g.n_targets, dtype=model.acc_dtype, device=model.device)
    alphas = [k / steps for k in range(steps)] if method == "eap-ig" else [1.0]
    batches = list(pairs.batches(batch_size))
    bar = progress(total=len(batches) * len(alphas), desc=f"{method} ({metric})", disable=not show_progress)
    fast = _FastPath(model)
    with _Frozen(model.hf), model.bridge.hooks(fwd_hooks=fast.hooks):
        for batch in batches:
            ids_c = batch.clean_ids.to(model.device)
            ids_x = batch.corrupted_ids.to(model.device)
            pos = batch.positions.to(model.device)
            labels = (batch.clean_label.to(model.device), batch.corrupted_label.to(model.device))
            if method == "eap-ig":  # record the clean run; the k = 0 pass is the corrupted run
                reference = fast.record(ids_c, pos)
                emb_c, emb_x = reference[0], fast.embed(ids_x)
                clean_logp = torch.log_softmax(reference[3].to(model.acc_dtype), -1)
                this_run = "corrupted"
            else:  # plain EAP: record the corrupted run; the one pass is the clean run
                reference = fast.record(ids_x, pos)
                emb_c, emb_x, clean_logp, this_run = fast.embed(ids_c), reference[0], None, "clean"
            deltas = None
            for alpha in alphas:
                mixed = emb_x if alpha == 0 else emb_c if alpha == 1 else emb_x + alpha * (emb_c - emb_x)
                embeds = mixed.detach().clone().requires_grad_(True)
                deltas = fast.grad_pass(ids_c, pos, embeds, metric, clean_logp, labels, deltas, scores,
                                        reference, this_run)
                reference = None  # no longer needed once Δa exists
                bar.update(1)
            del deltas, emb_c, emb_x
    bar.close()
    scores /= len(alphas) * len(pairs)
    return Scores(scores, g, {"method": method, "steps": len(alphas), "metric": metric, "n_examples": len(pairs),
                              "model": getattr(loaded, "spec", "")})


# --------------------------------------------------------------------------------------------------- patching
_SPLIT_FLAGS = ("use_split_qkv_input", "use_hook_mlp_in", "use_attn_result")


class _SplitInputs:
    """Turn on the bridge's per-head q/k/v inputs and ``hook_mlp_in`` (required *before* hooks are added)."""

    def __init__(self, bridge):
        self.bridge = bridge

    def __enter__(self):
        cfg = self.bridge.cfg
        self.old = {f: bool(getattr(cfg, f, False)) for f in _SPLIT_FLAGS}
        self.old_attn_in = bool(getattr(cfg, "use_attn_in", False))
        if self.old_attn_in:
            self.bridge.set_use_attn_in(False)
        self.bridge.set_use_split_qkv_input(True)
        self.bridge.set_use_hook_mlp_in(True)

    def __exit__(self, *exc):
        self.bridge.set_use_split_qkv_input(self.old["use_split_qkv_input"])
        self.bridge.set_use_hook_mlp_in(self.old["use_hook_mlp_in"])
        if self.old_attn_in:
            self.bridge.set_use_attn_in(True)


@torch.no_grad()
def _patched_logits(model: _Model, ids_c, pos, corrupted, missing: torch.Tensor) -> torch.Tensor:
    """Logits at ``pos`` of the clean run in which every edge marked in ``missing`` carries its corrupted value.

    ``missing`` is ``[n_sources, n_targets]`` (one pattern for the batch) or ``[b, n_sources, n_targets]`` (one per
    row). Target t's input becomes its clean-run input plus ``Σ_{s missing} (a_s(corrupted) − a_s(this run))``,
    where "this run" is the patched run itself (so effects propagate, as in faithfulness evaluation).
    Needs the bridge's split inputs (:class:`_SplitInputs`)."""
    g = model.graph
    emb_x, z_x, mlp_x, _ = corrupted
    b, p, d = emb_x.shape
    diffs = torch.zeros(g.n_sources, b, p, d, dtype=model.dtype, device=emb_x.device)  # a_corr − a_run
    miss = missing.to(model.device, model.dtype)
    per_row = miss.dim() == 3

    def add(act: torch.Tensor, n_src: int, t0: int, t1: int) -> torch.Tensor:
        """act [b, p, T, d] (or [b, p, d] for one target) += Σ_s diffs[s] * miss[s, t]."""
        m = miss[..., :n_src, t0:t1]
        if per_row:
            delta = torch.einsum("sbpd,bst->bptd", diffs[:n_src], m)
        else:
            delta = torch.einsum("sbpd,st->bptd", diffs[:n_src], m)
        if act.dim() == 3:
            return act + delta[:, :, 0]
        return act + delta

    def embed(act, hook):
        diffs[0] = emb_x - act

    hooks = [("hook_embed", embed)]
    for layer in range(g.n_layers):
        n_attn = g.sources_before(layer)
        qs, ks, vs = g.q_target(layer, 0), g.k_target(layer, 0), g.v_target(layer, 0)

        def q_in(act, hook, n=n_attn, t=qs):
            return add(act, n, t, t + g.n_heads)

        def k_in(act, hook, n=n_attn, t=ks):
            return add(act, n, t, t + g.n_kv_heads)

        def v_in(act, hook, n=n_attn, t=vs):
            return add(act, n, t, t + g.n_kv_heads)

        def z_hook(act, hook, layer=layer):
            s = g.head_source(layer, 0)
            z = act.reshape(b, p, g.n_heads, g.d_head)
            diffs[s:s + g.n_heads] = model.head_results(layer, z_x[layer] - z)

        def mlp_in(act, hook, n=n_attn + g.n_heads, t=qs + g.per_layer_targets - 1):
            return add(act, n, t, t + 1)

        def mlp_out(act, hook, layer=layer):
            diffs[g.mlp_source(layer)] = mlp_x[layer] - act

        hooks += [(f"blocks.{layer}.attn.hook_q_input", q_in), (f"blocks.{layer}.attn.hook_k_input", k_in),
                  (f"blocks.{layer}.attn.hook_v_input", v_in), (f"blocks.{layer}.attn.hook_z", z_hook),
                  (f"blocks.{layer}.hook_mlp_in", mlp_in), (f"blocks.{layer}.hook_mlp_out", mlp_out)]

    def final(act, hook):
        return add(act, g.n_sources, g.logits_target, g.logits_target + 1)

    hooks.append(("ln_final.hook_in", final))
    with model.bridge.hooks(fwd_hooks=hooks):
        return _logits_at(model, ids_c, pos)


def _batch_refs(model: _Model, batch: Pairs, metric: str):
    ids_c = batch.clean_ids.to(model.device)
    ids_x = batch.corrupted_ids.to(model.device)
    pos = batch.positions.to(model.device)
    labels = (batch.clean_label.to(model.device), batch.corrupted_label.to(model.device))
    clean = _record_sources(model, ids_c, pos)
    corrupted = _record_sources(model, ids_x, pos)
    clean_logp = torch.log_softmax(clean[3].to(model.acc_dtype), -1)
    return ids_c, pos, labels, clean, corrupted, clean_logp


def _exact_scores(loaded, pairs: Pairs, metric: str, batch_size: int, show_progress: bool) -> Scores:
    """Ground truth: for each valid edge, metric(only that edge corrupted) − metric(clean), averaged over rows.
    Edges are batched by repeating the pair batch, one edge per copy."""
    model = _prepare(loaded, pairs, metric, batch_size, "exact")
    g = model.graph
    valid = g.valid_mask()
    edges = valid.nonzero().tolist()
    scores = torch.zeros(g.n_sources, g.n_targets, dtype=torch.float64)
    batches = list(pairs.batches(batch_size))
    per_pass = max(1, 256 // min(batch_size, len(pairs)))  # edges per forward pass (about 256 rows)
    bar = progress(total=len(batches) * math.ceil(len(edges) / per_pass), desc=f"exact ({metric})",
                   disable=not show_progress)
    with _Frozen(model.hf), _SplitInputs(model.bridge), torch.no_grad():
        for batch in batches:
            ids_c, pos, labels, clean, corrupted, clean_logp = _batch_refs(model, batch, metric)
            base = _metric(clean[3], metric, clean_logp, *labels)
            b = len(ids_c)
            for start in range(0, len(edges), per_pass):
                chunk = edges[start:start + per_pass]
                e = len(chunk)
                miss = torch.zeros(e, b, g.n_sources, g.n_targets, dtype=torch.bool)
                for j, (s, t) in enumerate(chunk):
                    miss[j, :, s, t] = True
                def rep(x, e=e):
                    return x.repeat(e, *([1] * (x.dim() - 1)))

                corr_rep = (rep(corrupted[0]), [rep(z) for z in corrupted[1]], [rep(m) for m in corrupted[2]], None)
                logits = _patched_logits(model, rep(ids_c), rep(pos), corr_rep, miss.view(e * b, *miss.shape[2:]))
                vals = _metric(logits, metric, rep(clean_logp), rep(labels[0]), rep(labels[1]))
                vals = (vals.view(e, b) - base).sum(1).double().cpu()
                for j, (s, t) in enumerate(chunk):
                    scores[s, t] += vals[j]
                bar.update(1)
    bar.close()
    scores /= len(pairs)
    return Scores(scores, g, {"method": "exact", "steps": 0, "metric": metric, "n_examples": len(pairs),
                              "model": getattr(loaded, "spec", "")})


# --------------------------------------------------------------------------------------------------- circuits
@dataclass(frozen=True, eq=False)
class Circuit:
    """A set of edges (``edges``: ``[n_sources, n_targets]`` bool) of a :class:`Graph`."""

    edges: torch.Tensor
    graph: Graph

    @property
    def n_edges(self) -> int:
        return int(self.edges.sum())

    @property
    def heads(self) -> frozenset[tuple[int, int]]:
        """``(layer, head)`` nodes with at least one outgoing edge in the circuit."""
        out = self.edges.any(1)
        return frozenset(h for s in out.nonzero().flatten().tolist() if (h := self.graph.source_head(s)))

    @property
    def nodes(self) -> set[str]:
        names = self.graph.source_names
        nodes = {names[s] for s in self.edges.any(1).nonzero().flatten().tolist()}
        return nodes | ({"logits"} if bool(self.edges[:, self.graph.logits_target].any()) else set())

    def edge_list(self) -> list[tuple[str, str]]:
        src, tgt = self.graph.source_names, self.graph.target_names
        return [(src[s], tgt[t]) for s, t in self.edges.nonzero().tolist()]

    @classmethod
    def full(cls, graph: Graph) -> Circuit:
        return cls(graph.valid_mask(), graph)

    @classmethod
    def empty(cls, graph: Graph) -> Circuit:
        return cls(torch.zeros(graph.n_sources, graph.n_targets, dtype=torch.bool), graph)

    def __repr__(self) -> str:
        return f"Circuit({self.n_edges} edges, {len(self.heads)} heads)"


def prune_edges(graph: Graph, edges: torch.Tensor) -> torch.Tensor:
    """Remove dead nodes' edges until nothing changes: an edge survives only if its source has an input (the input
    node, or a node with an incoming edge) and its target is read by a node with an outgoing edge (or is logits)."""
    e = edges.clone().bool()
    owners = [graph.target_owner(t) for t in range(graph.n_targets)]
    inputs = [graph.source_inputs(s) for s in range(graph.n_sources)]
    while True:
        before = int(e.sum())
        has_out = e.any(1)
        alive_t = torch.tensor([t == graph.logits_target or any(bool(has_out[s]) for s in owners[t])
                                for t in range(graph.n_targets)])
        e &= alive_t[None, :]
        has_in_t = e.any(0)
        alive_s = torch.tensor([s == 0 or any(bool(has_in_t[t]) for t in inputs[s]) for s in range(graph.n_sources)])
        e &= alive_s[:, None]
        if int(e.sum()) == before:
            return e


def select(scores: Scores, top_n: int | None = None, threshold: float | None = None, absolute: bool = True,
           method: str = "top", prune: bool = True) -> Circuit:
    """A circuit from scores.

    - ``method="top"``: the ``top_n`` best edges, and/or every edge whose score is at least ``threshold`` (τ);
    - ``method="greedy"``: grow from the logits, each time adding the best edge whose target is read by a node
      already in the circuit, until ``top_n`` edges;

    ranking by |score| (``absolute``) or by signed score; then dead nodes are pruned (``prune``).
    """
    g, key = scores.graph, (scores.values.abs() if absolute else scores.values)
    key = key.masked_fill(~scores.valid, -math.inf)
    if method not in ("top", "greedy"):
        raise EAPError(f"unknown selection method {method!r}; choose 'top' or 'greedy'")
    if top_n is None and threshold is None:
        raise EAPError("select needs top_n, threshold, or both")
    if top_n is not None and top_n < 0:
        raise EAPError(f"top_n must be >= 0, got {top_n}")
    chosen = torch.zeros_like(scores.valid)
    if method == "top":
        if top_n is not None:
            k = min(top_n, scores.n_edges)
            if k:
                idx = torch.topk(key.flatten(), k).indices
                chosen.view(-1)[idx] = True
            if threshold is not None:
                chosen &= key >= threshold
        else:
            chosen = key >= threshold
    else:
        if top_n is None:
            raise EAPError("greedy selection needs top_n")
        chosen = _greedy(g, key, top_n, threshold)
    chosen &= scores.valid
    return Circuit(prune_edges(g, chosen) if prune else chosen, g)


def _greedy(g: Graph, key: torch.Tensor, top_n: int, threshold: float | None) -> torch.Tensor:
    chosen = torch.zeros(key.shape, dtype=torch.bool)
    heap: list[tuple[float, int, int]] = []
    opened: set[int] = set()
    k_np = key.tolist()

    def open_target(t: int) -> None:
        if t in opened:
            return
        opened.add(t)
        for s in range(g.n_sources):
            v = k_np[s][t]
            if v != -math.inf:
                heapq.heappush(heap, (-v, s, t))

    in_circuit: set[int] = set()
    open_target(g.logits_target)
    count = 0
    while heap and count < top_n:
        neg, s, t = heapq.heappop(heap)
        if threshold is not None and -neg < threshold:
            break
        chosen[s, t] = True
        count += 1
        if s not in in_circuit and s != 0:
            in_circuit.add(s)
            for tt in g.source_inputs(s):
                open_target(tt)
    return chosen


def head_importance(scores: Scores, circuit: Circuit) -> torch.Tensor:
    """``I(l, h) = Σ |score|`` over the circuit's edges leaving head (l, h), normalized to sum to 1: ``[L, H]``."""
    g = scores.graph
    if circuit.graph != g:
        raise EAPError(f"the circuit's graph {circuit.graph} is not the scores' graph {g}")
    per_source = (scores.values.abs() * circuit.edges).sum(1)
    out = torch.zeros(g.n_layers, g.n_heads, dtype=torch.float64)
    for layer in range(g.n_layers):
        s = g.head_source(layer, 0)
        out[layer] = per_source[s:s + g.n_heads]
    total = out.sum()
    return out / total if total > 0 else out


def _heads(x) -> set[tuple[int, int]]:
    if isinstance(x, Circuit):
        return set(x.heads)
    return {(int(a), int(b)) for a, b in x}


def compare_heads(a, b) -> dict:
    """Heads of two circuits (or sets of ``(layer, head)``): ``{"shared", "only_a", "only_b"}``. With a = the
    post-trained model and b = the base model, ``only_a`` are the emergent heads."""
    ha, hb = _heads(a), _heads(b)
    return {"shared": ha & hb, "only_a": ha - hb, "only_b": hb - ha}


def head_map(a, b, n_layers: int, n_heads: int) -> torch.Tensor:
    """``[L, H]`` ints: 0 in neither circuit, 1 shared, 2 only in a, 3 only in b (for a layer × head map)."""
    cmp = compare_heads(a, b)
    out = torch.zeros(n_layers, n_heads, dtype=torch.long)
    for code, key in ((1, "shared"), (2, "only_a"), (3, "only_b")):
        for layer, h in cmp[key]:
            out[layer, h] = code
    return out


# --------------------------------------------------------------------------------------------------- faithfulness
def _metric_values(loaded, pairs: Pairs, circuits: Sequence[Circuit], metric: str, batch_size: int) -> dict:
    model = _prepare(loaded, pairs, metric, batch_size, "faithfulness")
    g = model.graph
    for c in circuits:
        if c.graph != g:
            raise EAPError(f"circuit graph {c.graph} does not match the model's graph {g}")
    sums = {"clean": 0.0, "corrupted": 0.0, "circuits": [0.0] * len(circuits)}
    valid = g.valid_mask()
    with _Frozen(model.hf), _SplitInputs(model.bridge), torch.no_grad():
        for batch in pairs.batches(batch_size):
            ids_c, pos, labels, clean, corrupted, clean_logp = _batch_refs(model, batch, metric)
            sums["clean"] += float(_metric(clean[3], metric, clean_logp, *labels).sum())
            sums["corrupted"] += float(_metric(corrupted[3], metric, clean_logp, *labels).sum())
            for i, c in enumerate(circuits):
                logits = _patched_logits(model, ids_c, pos, corrupted, valid & ~c.edges)
                sums["circuits"][i] += float(_metric(logits, metric, clean_logp, *labels).sum())
    n = len(pairs)
    return {"clean": sums["clean"] / n, "corrupted": sums["corrupted"] / n,
            "circuits": [v / n for v in sums["circuits"]]}


def _recovered(value: float, clean: float, corrupted: float) -> float:
    span = clean - corrupted
    return (value - corrupted) / span if abs(span) > 1e-12 else float("nan")


def faithfulness(loaded, pairs: Pairs, circuit: Circuit, metric: str = "kl", batch_size: int = 8) -> dict:
    """Run the model with every edge outside ``circuit`` patched to its corrupted value and report the metric.

    Returns ``{"metric", "clean", "corrupted", "recovered", "n_edges"}``: the circuit's metric, the clean model's,
    the corrupted input's (= the empty circuit's), and ``(metric − corrupted) / (clean − corrupted)`` (1 = the
    circuit does all the model does; for KL the clean value is 0).
    """
    vals = _metric_values(loaded, pairs, [circuit], metric, batch_size)
    value = vals["circuits"][0]
    return {"metric": value, "clean": vals["clean"], "corrupted": vals["corrupted"],
            "recovered": _recovered(value, vals["clean"], vals["corrupted"]), "n_edges": circuit.n_edges,
            "metric_name": metric}


def faithfulness_curve(loaded, pairs: Pairs, scores: Scores, n_edges: Sequence[int], metric: str = "kl",
                       method: str = "top", absolute: bool = True, prune: bool = True, batch_size: int = 8) -> dict:
    """Faithfulness of the circuits selected at each size in ``n_edges``: ``{"requested", "n_edges", "metric",
    "recovered", "clean", "corrupted"}`` (lists aligned with ``n_edges``)."""
    circuits = [select(scores, top_n=int(n), absolute=absolute, method=method, prune=prune) for n in n_edges]
    vals = _metric_values(loaded, pairs, circuits, metric, batch_size)
    return {"requested": [int(n) for n in n_edges], "n_edges": [c.n_edges for c in circuits],
            "metric": vals["circuits"], "recovered": [_recovered(v, vals["clean"], vals["corrupted"])
                                                      for v in vals["circuits"]],
            "clean": vals["clean"], "corrupted": vals["corrupted"], "metric_name": metric}


# --------------------------------------------------------------------------------------------------- convenience
def find_circuit(loaded, examples, top_n: int, enable_thinking: bool = False, steps: int = 5, metric: str = "kl",
                 method: str = "eap-ig", selection: str = "top", batch_size: int = 8, show_progress: bool = True,
                 **pair_kw) -> tuple[Pairs, Scores, Circuit]:
    """``make_pairs`` → ``attribute`` → ``select(top_n)`` in one call; returns ``(pairs, scores, circuit)``."""
    pairs = make_pairs(loaded, examples, enable_thinking=enable_thinking, **pair_kw)
    scores = attribute(loaded, pairs, method=method, steps=steps, metric=metric, batch_size=batch_size,
                       show_progress=show_progress)
    return pairs, scores, select(scores, top_n=top_n, method=selection)


def ranked_heads(heads, importance: torch.Tensor) -> list[tuple[int, int]]:
    """``heads`` sorted by ``importance[layer, head]``, most important first."""
    return sorted(_heads(heads), key=lambda lh: (-float(importance[lh[0], lh[1]]), lh))


# --------------------------------------------------------------------------------------------------- causal check
def ablation_check(loaded, heads, examples: dict, n_random: int = 5, enable_thinking: bool = False,
                   max_new_tokens: int = 32, seed: int = 0, batch_size: int = 64, show_progress: bool = True) -> dict:
    """Zero-ablate ``heads`` during greedy generation, and as a control ``n_random`` draws of as many random heads
    (none of ``heads``); accuracy per task (``examples``: ``{task: [Example, ...]}``, exact final answers).

    Returns ``{"heads", "random_heads", "tasks": {task: {"baseline", "ablated", "random" (accuracy with bootstrap
    CI), "change_ablated", "change_random", "ablated_minus_random" (paired bootstrap CIs over problems)}}}``.
    """
    from toolkit.core.answers import extract_answer
    from toolkit.core.generation import generate
    from toolkit.core.interventions import ablate
    from toolkit.core.stats import bootstrap_ci, paired_difference_ci
    from toolkit.core.units import head_sites, random_heads

    heads = sorted(_heads(heads))
    if not heads:
        raise EAPError("ablation_check needs at least one head to ablate")
    if not examples or not all(examples.values()):
        raise EAPError("ablation_check needs a non-empty list of examples for every task")
    g = Graph.from_bridge(loaded.bridge)
    for layer, h in heads:
        g._check(layer, h)
    controls = [random_heads(g.n_layers, g.n_heads, len(heads), exclude=heads, seed=seed + r) for r in range(n_random)]

    def correct(exs) -> list[float]:
        outs = generate(loaded.hf, loaded.tokenizer, [e.prompt for e in exs], enable_thinking=enable_thinking,
                        max_new_tokens=max_new_tokens, batch_size=batch_size)
        return [float(extract_answer(o[0]) == e.answer) for o, e in zip(outs, exs, strict=True)]

    runs = [("baseline", None)] + [("ablated", heads)] + [(f"random{r}", c) for r, c in enumerate(controls)]
    bar = progress(total=len(runs) * len(examples), desc="ablation check", disable=not show_progress)
    raw: dict = {task: {} for task in examples}
    for name, hs in runs:
        for task, exs in examples.items():
            if hs is None:
                raw[task][name] = correct(exs)
            else:
                with ablate(loaded.bridge, head_sites(hs)):
                    raw[task][name] = correct(exs)
            bar.update(1)
    bar.close()
    out = {"heads": heads, "random_heads": controls, "enable_thinking": enable_thinking, "tasks": {}}
    for task, res in raw.items():
        base, abl = res["baseline"], res["ablated"]
        rnd = [sum(res[f"random{r}"][i] for r in range(n_random)) / n_random for i in range(len(base))] \
            if n_random else base
        out["tasks"][task] = {
            "n": len(base), "baseline": bootstrap_ci(base), "ablated": bootstrap_ci(abl), "random": bootstrap_ci(rnd),
            "change_ablated": paired_difference_ci(abl, base), "change_random": paired_difference_ci(rnd, base),
            "ablated_minus_random": paired_difference_ci(abl, rnd)}
    return out


# --------------------------------------------------------------------------------------------------- figures
_KIND_COLORS = {"q": "#3b6fb6", "k": "#2a9d5c", "v": "#e08a2c", "m": "#7a7a7a", "logits": "#7a7a7a"}


def _node_xy(g: Graph) -> dict[int, tuple[float, float]]:
    """Layout: input at the bottom, each layer a row of heads and above it its MLP, logits on top."""
    xy = {0: ((g.n_heads - 1) / 2, 0.0)}
    for layer in range(g.n_layers):
        for h in range(g.n_heads):
            xy[g.head_source(layer, h)] = (float(h), 2.0 * layer + 1)
        xy[g.mlp_source(layer)] = ((g.n_heads - 1) / 2, 2.0 * layer + 2)
    return xy


def draw_circuit(circuit: Circuit, scores: Scores | None = None, ax=None, title: str = ""):
    """The circuit as a graph (matplotlib only, works offline): nodes by layer, edges coloured by the target input
    (q blue, k green, v orange, MLP/logits grey), width by |score|. Returns the figure."""
    import matplotlib.pyplot as plt
    from matplotlib.patches import FancyArrowPatch

    g = circuit.graph
    xy = _node_xy(g)
    top = 2.0 * g.n_layers + 1
    logits_xy = ((g.n_heads - 1) / 2, top)
    if ax is None:
        fig, ax = plt.subplots(figsize=(1.5 * g.n_heads + 2.5, 0.7 * top + 1.2))
    else:
        fig = ax.figure
    edges = circuit.edges.nonzero().tolist()
    vals = scores.values.abs() if scores is not None else torch.ones_like(circuit.edges, dtype=torch.float64)
    vmax = max((float(vals[s, t]) for s, t in edges), default=1.0) or 1.0
    names = g.target_names
    for s, t in edges:
        kind = "logits" if t == g.logits_target else names[t].split("<")[-1].rstrip(">") if "<" in names[t] else "m"
        owners = g.target_owner(t)
        ends = [logits_xy] if t == g.logits_target else [xy[o] for o in owners]
        if kind in ("k", "v"):  # a grouped k/v input feeds every head of its group that is in the circuit
            live = [xy[o] for o in owners if bool(circuit.edges[o].any())]
            ends = live or ends[:1]
        w = 0.4 + 3.6 * float(vals[s, t]) / vmax
        for end in ends:
            start = xy[s]
            rad = 0.25 if abs(start[0] - end[0]) < 1e-9 and end[1] - start[1] > 1.5 else 0.08
            ax.add_patch(FancyArrowPatch(start, end, arrowstyle="-|>", mutation_scale=8, lw=w, alpha=0.55,
                                         color=_KIND_COLORS[kind], connectionstyle=f"arc3,rad={rad}",
                                         shrinkA=9, shrinkB=9))
    in_circuit = set(circuit.edges.any(1).nonzero().flatten().tolist())
    src_names = g.source_names
    for s, (x, y) in xy.items():
        on = s in in_circuit
        is_mlp = src_names[s].startswith("m")
        ax.scatter([x], [y], s=420 if on else 160, marker="s" if is_mlp else "o", zorder=3,
                   color=("#c44e52" if is_mlp else "#4c72b0") if on else "#dddddd", edgecolor="black" if on else
                   "#bbbbbb")
        ax.annotate(src_names[s].replace("a", "", 1) if not is_mlp and s else src_names[s], (x, y), ha="center",
                    va="center", fontsize=6.5, zorder=4, color="white" if on else "#888888")
    ax.scatter([logits_xy[0]], [logits_xy[1]], s=520, marker="D", color="#333333", zorder=3)
    ax.annotate("logits", logits_xy, ha="center", va="center", fontsize=6.5, color="white", zorder=4)
    for kind, color in (("q", _KIND_COLORS["q"]), ("k", _KIND_COLORS["k"]), ("v", _KIND_COLORS["v"]),
                        ("MLP / logits", _KIND_COLORS["m"])):
        ax.plot([], [], color=color, lw=2, label=f"→ {kind}")
    ax.legend(loc="upper left", fontsize=7, frameon=False, bbox_to_anchor=(1.0, 1.0))
    ax.set_xlim(-0.8, g.n_heads - 0.2)
    ax.set_ylim(-0.7, top + 0.7)
    ax.set_yticks([2.0 * i + 1 for i in range(g.n_layers)], [f"layer {i}" for i in range(g.n_layers)], fontsize=7)
    ax.set_xticks([])
    ax.spines[["top", "right", "bottom", "left"]].set_visible(False)
    ax.set_title(title or f"{circuit.n_edges} edges, {len(circuit.heads)} heads", fontsize=10)
    fig.tight_layout()
    return fig


def importance_figure(importances: dict, title: str = "Head importance (share of |score| on circuit edges)"):
    """Layer × head heatmaps of :func:`head_importance`, one panel per model."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(importances), figsize=(3.4 * len(importances) + 0.8, 3.0), squeeze=False)
    vmax = max(float(v.max()) for v in importances.values()) or 1.0
    for ax, (name, imp) in zip(axes[0], importances.items(), strict=True):
        im = ax.imshow(imp.numpy(), cmap="Purples", vmin=0, vmax=vmax, origin="lower")
        for (layer, h), v in zip(((i, j) for i in range(imp.shape[0]) for j in range(imp.shape[1])),
                                 imp.flatten().tolist(), strict=True):
            ax.text(h, layer, f"{v:.2f}", ha="center", va="center", fontsize=7,
                    color="white" if v > 0.6 * vmax else "black")
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("head")
        ax.set_ylabel("layer")
        ax.set_xticks(range(imp.shape[1]))
        ax.set_yticks(range(imp.shape[0]))
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    fig.suptitle(title, fontsize=10)
    return fig


def head_map_figure(a, b, n_layers: int, n_heads: int, labels: tuple[str, str] = ("A", "B")):
    """Layer × head map: shared heads, heads only in A's circuit (emergent when A is post-trained), only in B's."""
    import matplotlib.pyplot as plt
    from matplotlib.colors import ListedColormap

    m = head_map(a, b, n_layers, n_heads)
    colors = ["#f2f2f2", "#8c8c8c", "#d62728", "#1f77b4"]
    fig, ax = plt.subplots(figsize=(1.0 * n_heads + 2.8, 0.75 * n_layers + 1.2))
    ax.imshow(m.numpy(), cmap=ListedColormap(colors), vmin=0, vmax=3, origin="lower")
    for layer in range(n_layers):
        for h in range(n_heads):
            ax.text(h, layer, ["", "shared", f"only\n{labels[0]}", f"only\n{labels[1]}"][int(m[layer, h])],
                    ha="center", va="center", fontsize=6.5, color="white" if m[layer, h] >= 1 else "black")
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(f"Circuit heads: {labels[0]} vs {labels[1]}", fontsize=10)
    fig.tight_layout()
    return fig


def faithfulness_figure(curves: dict, title: str = "Faithfulness: share of the clean−corrupted gap recovered"):
    """Recovered fraction against the number of circuit edges (after pruning), one line per model."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.2, 3.6))
    for name, c in curves.items():
        ax.plot(c["n_edges"], [100 * r for r in c["recovered"]], marker="o", ms=3.5, label=name)
    ax.axhline(100, color="grey", lw=0.8, ls="--")
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("symlog", linthresh=10)
    ax.set_xlabel("edges in the circuit (after pruning)")
    ax.set_ylabel(f"recovered ({next(iter(curves.values()))['metric_name']}), %")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def correlation_figure(exact: Scores, approx: dict):
    """Scatter of approximate scores (e.g. ``{"EAP": s1, "EAP-IG": s2}``) against exact per-edge patching."""
    import matplotlib.pyplot as plt

    from toolkit.core.stats import correlation

    fig, axes = plt.subplots(1, len(approx), figsize=(3.6 * len(approx), 3.4), squeeze=False)
    x = exact.flat().numpy()
    for ax, (name, sc) in zip(axes[0], approx.items(), strict=True):
        y = sc.flat().numpy()
        r = correlation(x, y)
        ax.scatter(x, y, s=8, alpha=0.6)
        lim = [min(x.min(), y.min()), max(x.max(), y.max())]
        ax.plot(lim, lim, color="grey", lw=0.8, ls="--")
        ax.set_title(f"{name}: Pearson {r['pearson_r']:.2f}, Spearman {r['spearman_r']:.2f}", fontsize=9)
        ax.set_xlabel("exact (patch one edge)")
        ax.set_ylabel(f"{name} score")
    fig.tight_layout()
    return fig


def ablation_figure(result: dict, title: str = "Zero-ablation during generation: accuracy change"):
    """Accuracy change (points, 95% CI) per task: the chosen heads vs random heads of the same number."""
    import matplotlib.pyplot as plt

    tasks = list(result["tasks"])
    fig, ax = plt.subplots(figsize=(1.6 * len(tasks) + 2.4, 3.4))
    for j, (key, label, color) in enumerate((("change_ablated", f"{len(result['heads'])} circuit heads", "#d62728"),
                                             ("change_random", "random heads (mean of draws)", "#7f7f7f"))):
        xs = [i + (j - 0.5) * 0.3 for i in range(len(tasks))]
        est = [100 * result["tasks"][t][key]["estimate"] for t in tasks]
        lo = [100 * (result["tasks"][t][key]["estimate"] - result["tasks"][t][key]["low"]) for t in tasks]
        hi = [100 * (result["tasks"][t][key]["high"] - result["tasks"][t][key]["estimate"]) for t in tasks]
        ax.bar(xs, est, 0.3, color=color, label=label)
        ax.errorbar(xs, est, yerr=[lo, hi], fmt="none", ecolor="black", capsize=3, lw=0.8)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(tasks)), tasks)
    ax.set_ylabel("accuracy change (points)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8)
    ax.spines[["top", "right"]].set_visible(False)
    fig.tight_layout()
    return fig


def circuit_explorer(scores: dict, curves: dict | None = None, max_edges: int | None = None):
    """Widget: pick a model and a number of edges; see its circuit drawn and, if given, where that size sits on
    its faithfulness curve. Needs no model runs (the scores are already computed)."""
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    from toolkit.views.widgets import show

    names = list(scores)
    total = max(s.n_edges for s in scores.values())
    model = widgets.Dropdown(options=names, description="model")
    edges = widgets.IntSlider(value=min(30, total), min=1, max=max_edges or total, description="edges",
                              continuous_update=False)
    out = widgets.Output()

    def redraw(*_):
        sc = scores[model.value]
        circuit = select(sc, top_n=edges.value)
        fig = draw_circuit(circuit, sc, title=f"{model.value}: top {edges.value} edges → {circuit.n_edges} after "
                                              f"pruning, heads {sorted(circuit.heads)}")
        items = [fig]
        if curves and model.value in curves:
            c = curves[model.value]
            fig2, ax = plt.subplots(figsize=(4.6, 2.6))
            ax.plot(c["requested"], [100 * r for r in c["recovered"]], marker="o", ms=3)
            ax.axvline(edges.value, color="#d62728", lw=1)
            ax.set_xscale("symlog", linthresh=10)
            ax.set_xlabel("top-n edges requested")
            ax.set_ylabel("recovered %")
            fig2.tight_layout()
            items.append(fig2)
        show(out, *items)

    model.observe(redraw, names="value")
    edges.observe(redraw, names="value")
    redraw()
    return widgets.VBox([widgets.HBox([model, edges]), out])
