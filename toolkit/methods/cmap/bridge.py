"""Running a CMAP chunk through the TransformerLens bridge (:func:`open_runner`): the general path, for any model
the bridge wraps (:mod:`toolkit.methods.cmap.fast` runs the common case faster, and says when it applies).

Each step is one donor forward, whose record hooks keep the sites' activations, and one receiver forward, whose
patch hooks put them into the site rows. In ``current`` mode the receiver's forward is the twin-token step
(:func:`_twin_forward`). The rows (:mod:`toolkit.methods.cmap.rows`): the receiver runs the site rows then the clean
rows, the donor the site rows then the corrupted rows (or one row per prompt when teacher-forced), so a site row's
donor is the row at the same index.

Cost. The prompt is identical across a prompt's rows and, in ``current`` mode, unpatched, so each model prefills it
once per prompt and copies the cache to the rows. The caches write into preallocated buffers (no concatenation per
step) and store grouped-query keys/values once per query head, so attention reads them as they are
(:func:`_per_query_head`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
from transformers import DynamicCache
from transformers.cache_utils import DynamicLayer

from toolkit.core.interventions import Site
from toolkit.methods.cmap.rows import CLEAN, CORRUPTED, Rows

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel


# ---- KV cache ------------------------------------------------------------------------------------------------------


class _BufferLayer(DynamicLayer):
    """A ``DynamicLayer`` whose keys and values live in buffers allocated once for ``capacity`` positions: an update
    writes the new positions in place and returns views (``DynamicLayer`` concatenates the whole cache every step).
    With ``groups`` > 1 (grouped-query attention) each key/value head is stored once per query head that reads it,
    in ``repeat_kv``'s order, so attention reads the cache as it is (see :func:`_per_query_head`)."""

    def __init__(self, capacity: int, groups: int = 1):
        super().__init__()
        self.capacity, self.groups, self.length = capacity, groups, 0

    def lazy_initialization(self, key_states: torch.Tensor, value_states: torch.Tensor) -> None:
        self.dtype, self.device = key_states.dtype, key_states.device
        b, h, _, d = key_states.shape
        self._k = key_states.new_empty(b, h * self.groups, self.capacity, d)
        self._v = value_states.new_empty(b, h * self.groups, self.capacity, value_states.shape[3])
        self.is_initialized = True

    def _views(self) -> None:
        self.keys, self.values = self._k[:, :, :self.length], self._v[:, :, :self.length]

    def _write(self, buffer: torch.Tensor, states: torch.Tensor, start: int) -> None:
        if self.groups == 1:
            buffer[:, :, start:self.length] = states
        else:
            b, h, c, d = buffer.shape
            buffer.view(b, h // self.groups, self.groups, c, d)[:, :, :, start:self.length] = states[:, :, None]

    def update(self, key_states: torch.Tensor, value_states: torch.Tensor, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        start, self.length = self.length, self.length + key_states.shape[-2]
        self._write(self._k, key_states, start)
        self._write(self._v, value_states, start)
        self._views()
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length

    def crop(self, tokens_to_remove: int) -> None:
        if tokens_to_remove > 0:
            raise ValueError("crop takes a negative number of tokens to remove")
        if self.is_initialized:
            self.length += tokens_to_remove
            self._views()

    def batch_select_indices(self, indices: torch.Tensor) -> None:
        if self.is_initialized:
            self._k, self._v = self._k.index_select(0, indices), self._v.index_select(0, indices)
            self._views()


def _attention_modules(model: LoadedModel) -> list[torch.nn.Module]:
    """The HF attention modules of ``model`` (the bridge keeps them as its components' originals)."""
    return [m for m in model.hf.modules()
            if hasattr(m, "num_key_value_groups") and type(m).__module__.startswith("transformers.")]


@contextlib.contextmanager
def _per_query_head(*models: LoadedModel):
    """While the caches store keys/values per query head (:class:`_BufferLayer` with ``groups``), tell the attention
    modules there is nothing to repeat (``num_key_value_groups`` = 1, restored afterwards): otherwise every step
    would copy the whole cache into a repeated one (``repeat_kv``) in every layer. Yields the groups per model."""
    saved: dict[torch.nn.Module, int] = {}
    groups = []
    try:
        for model in models:
            modules = _attention_modules(model)
            values = {int(saved.get(m, m.num_key_value_groups)) for m in modules}
            layer_types = getattr(model.hf.config, "layer_types", None) or ["full_attention"]
            if len(values) != 1 or set(layer_types) != {"full_attention"}:  # repeat as usual
                groups.append(1)
                continue
            groups.append(values.pop())
            for m in modules:
                saved.setdefault(m, m.num_key_value_groups)
                m.num_key_value_groups = 1
        yield groups
    finally:
        for m, value in saved.items():
            m.num_key_value_groups = value


def _cache(model: LoadedModel, capacity: int, groups: int) -> DynamicCache:
    """A ``DynamicCache`` for ``model`` whose full-attention layers are :class:`_BufferLayer` s of ``capacity``."""
    cache = DynamicCache(config=model.hf.config)
    cache.layers = [_BufferLayer(capacity, groups) if type(layer) is DynamicLayer else layer
                    for layer in cache.layers]
    return cache


def _select(cache: DynamicCache, indices: torch.Tensor) -> None:
    for layer in cache.layers:
        layer.batch_select_indices(indices)


# ---- hooks ---------------------------------------------------------------------------------------------------------


class _Hooks:
    """The donor's record hooks and the receiver's patch hooks, switched by ``phase``."""

    def __init__(self, sites: Sequence[Site]):
        self.sites = list(sites)
        self.phase = "off"  # "donor": record; "patch": patch the receiver; "off": nothing
        self.last_only = False  # patch only the last position of the receiver's input (the twin-token step)
        self.store: dict[str, torch.Tensor] = {}
        self.names = list(dict.fromkeys(s.hook_name for s in self.sites))
        self.groups: dict[str, list[tuple[torch.Tensor, torch.Tensor, list[int] | None]]] = {}

    def assign(self, kinds: torch.Tensor, donor_index: torch.Tensor) -> None:
        """Patch receiver row i (of kind ``kinds[i]``) from donor row ``donor_index[i]``."""
        self.groups = {}
        for i, site in enumerate(self.sites):
            rows = (kinds == i).nonzero().flatten()
            if len(rows):
                self.groups.setdefault(site.hook_name, []).append(
                    (rows, donor_index[rows], list(site.units) if site.units else None))

    def record(self, name: str):
        """The donor's hook at ``name``: keep its latest activation (hooks see canonical names, so close over ours)."""
        def hook_fn(act: torch.Tensor, hook) -> None:
            if self.phase == "donor":
                self.store[name] = act.detach().clone()
        return hook_fn

    def patch(self, name: str):
        """The receiver's hook at ``name``: put the donor's activation into the rows of each site there."""
        def hook_fn(act: torch.Tensor, hook) -> torch.Tensor | None:
            if self.phase != "patch" or name not in self.groups:
                return None
            source = self.store[name]
            new = act.clone()
            first = act.shape[1] - source.shape[1] if self.last_only else 0
            for rows, donor_rows, units in self.groups[name]:
                src = source.index_select(0, donor_rows).to(act.dtype)
                part = new[rows, first:]
                if units is None:
                    part = src
                else:
                    part[:, :, units] = src[:, :, units]
                new[rows, first:] = part
            return new
        return hook_fn


# ---- forwards ------------------------------------------------------------------------------------------------------


def _forward(hf, ids, mask, pos, cache):
    return hf(input_ids=ids, attention_mask=mask, position_ids=pos, past_key_values=cache, use_cache=True,
              logits_to_keep=1).logits[:, -1].float()


def _twin_forward(hf, cur, mask, pos, cache, hooks: _Hooks):
    """One ``current``-mode receiver step in one forward pass: the current token twice at the same position, the
    first copy unpatched (its keys/values are the clean ones the cache must keep), the second patched (its logits
    are returned). A 4-D mask lets each copy attend to the cached prefix and itself only; afterwards the patched
    copy's keys/values are cropped from the cache. Equivalent to a patched pass, a crop and an unpatched pass
    (checked against the no-cache reference in the tests), at the cost of one forward instead of two."""
    past = mask.shape[1] - 1  # cached positions (the mask already covers the current token)
    prefix = mask[:, :past].bool()
    own = torch.eye(2, dtype=torch.bool, device=mask.device).expand(len(mask), 2, 2)
    mask4 = torch.cat([prefix[:, None, :].expand(-1, 2, -1), own], -1)[:, None]  # [R, 1, 2, past + 2]
    hooks.last_only = True
    try:
        logits = hf(input_ids=cur.repeat(1, 2), attention_mask=mask4, position_ids=pos.repeat(1, 2),
                    past_key_values=cache, use_cache=True, logits_to_keep=1).logits[:, -1].float()
    finally:
        hooks.last_only = False
    cache.crop(-1)
    return logits


class _Batch:
    """One model's rows: the output rows they are (``rows``), their attention mask, next position and cache."""

    def __init__(self, model: LoadedModel, rows: torch.Tensor, mask: torch.Tensor, capacity: int, groups: int):
        self.hf, self.rows, self.mask = model.hf, rows, mask
        self.pos = (mask.cumsum(-1) - 1).clamp(min=0)[:, -1:]  # the last prompt position (the first step's)
        self.cache = _cache(model, capacity, groups)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return _forward(self.hf, ids, self.mask, self.pos, self.cache)

    def advance(self) -> None:
        self.mask = torch.cat([self.mask, torch.ones_like(self.mask[:, :1])], 1)
        self.pos = self.pos + 1

    def keep(self, index: torch.Tensor) -> None:
        self.rows, self.mask, self.pos = self.rows[index], self.mask[index], self.pos[index]
        _select(self.cache, index)


class _Runner:
    """The runner interface of :mod:`toolkit.methods.cmap.batch` through the bridge (see the module docstring)."""

    def __init__(self, clean: LoadedModel, corrupted: LoadedModel, rows: Rows, groups: list[int]):
        self.r = rows
        site_rows = (rows.kinds >= 0).nonzero().flatten()
        self.n_site = len(site_rows)
        rec_rows = torch.cat([site_rows, rows.of_kind(CLEAN)])
        self.rec = _Batch(clean, rec_rows, rows.base_mask[rows.prompt_of[rec_rows]], rows.capacity, groups[0])
        if rows.free:
            don_rows = torch.cat([site_rows, rows.of_kind(CORRUPTED)])
            mask = rows.base_mask[rows.prompt_of[don_rows]]
        else:
            don_rows, mask = torch.arange(rows.n_prompts, device=rows.device), rows.base_mask
        self.don = _Batch(corrupted, don_rows, mask, rows.capacity, groups[1])
        self.hooks = _Hooks(rows.sites)

    @property
    def rec_rows(self) -> torch.Tensor:
        return self.rec.rows

    @property
    def don_rows(self) -> torch.Tensor:
        return self.don.rows

    @property
    def corrupted_rows(self) -> torch.Tensor:
        return self.don.rows[self.n_site:]

    def _assign(self) -> None:
        """From here on a site row's donor is the donor row at the same index (free-running) or its prompt's row."""
        r = self.r
        self.hooks.assign(r.kinds[self.rec.rows], torch.arange(len(self.rec.rows), device=r.device) if r.free
                          else r.prompt_of[self.rec.rows])

    def prefill(self) -> None:
        """Both models read all but the last prompt position. The donor reads each prompt once (its activations are
        the same in every row of a prompt); unless the prompt is patched (``all`` mode), so does the receiver. The
        caches are then copied to the rows."""
        r, rec, don, hooks = self.r, self.rec, self.don, self.hooks
        patched = r.patching and r.mode == "all"
        ids, mask = r.base[:, :-1], r.base_mask[:, :-1]
        positions = (mask.cumsum(-1) - 1).clamp(min=0)
        hooks.phase = "donor" if patched else "off"
        don.hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=don.cache,
               use_cache=True, logits_to_keep=1)
        if r.free:
            _select(don.cache, r.prompt_of[don.rows])
        of = r.prompt_of[rec.rows]
        if patched:
            hooks.phase = "patch"
            hooks.assign(r.kinds[rec.rows], of)
            rec.hf(input_ids=ids[of], attention_mask=mask[of], position_ids=positions[of],
                   past_key_values=rec.cache, use_cache=True, logits_to_keep=1)
        else:
            rec.hf(input_ids=ids, attention_mask=mask, position_ids=positions, past_key_values=rec.cache,
                   use_cache=True, logits_to_keep=1)
            _select(rec.cache, of)
        hooks.phase = "off"
        self._assign()

    def step(self, cur: torch.Tensor, d_cur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The receiver's logits [receiver rows, V] and the donor's (its corrupted rows, or every prompt)."""
        hooks, patching = self.hooks, self.r.patching
        hooks.phase = "donor" if patching else "off"
        d_logits = self.don.forward(d_cur) if len(d_cur) else self._empty()
        hooks.phase = "patch" if patching else "off"
        if not len(cur):
            logits = self._empty()
        elif self.r.mode == "current" and patching:
            logits = _twin_forward(self.rec.hf, cur, self.rec.mask, self.rec.pos, self.rec.cache, hooks)
        else:
            logits = self.rec.forward(cur)
        hooks.phase = "off"
        return logits, d_logits[self.n_site:] if self.r.free else d_logits

    def _empty(self) -> torch.Tensor:
        """The logits of a batch whose rows have all ended."""
        return torch.empty(0, self.rec.hf.config.vocab_size, device=self.r.device)

    def advance(self) -> None:
        self.rec.advance()
        self.don.advance()

    def drop(self, finished: torch.Tensor) -> None:
        """Drop the rows that have ended (free-running)."""
        self.rec.keep((~finished[self.rec.rows]).nonzero().flatten())
        self.don.keep((~finished[self.don.rows]).nonzero().flatten())
        self.n_site = int((self.r.kinds[self.rec.rows] >= 0).sum())
        self._assign()


@contextlib.contextmanager
def open_runner(clean: LoadedModel, corrupted: LoadedModel, rows: Rows) -> Iterator[_Runner]:
    with _per_query_head(clean, corrupted) as groups:
        runner = _Runner(clean, corrupted, rows, groups)
        names = runner.hooks.names
        with clean.bridge.hooks(fwd_hooks=[(n, runner.hooks.patch(n)) for n in names]), \
                corrupted.bridge.hooks(fwd_hooks=[(n, runner.hooks.record(n)) for n in names]):
            yield runner
