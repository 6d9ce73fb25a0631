"""Running a CMAP chunk as a layer loop over the HF modules (:func:`open_runner`): the same computation as
:mod:`toolkit.methods.cmap.bridge`, for Qwen2/Qwen3 models on one device with full attention, nothing hooked and
head/attn/mlp/resid sites (:func:`supported`; anything else runs through the bridge).

The loop calls the model's own modules (the bridge wraps them in place; :func:`_orig` unwraps them): norms,
projections, rotary embedding, MLP, unembedding; only the decoder layer's residual structure and eager attention
(the bridge's formula: scores × scaling + additive mask, softmax in float32, grouped-query heads read the shared key
and value heads without copying them) are written here. Sites read the same tensors as the bridge's hooks:
``hook_z`` = the heads' z before ``W_O`` ``[b, p, head, d_head]``, ``hook_attn_out``, ``hook_mlp_out``,
``hook_resid_post``.

Why. On the organism (4 layers, d_model 128) a bridge forward costs ~15 ms of Python before any arithmetic; this
loop a few. And owning the loop lets each row run only the layers it needs:

- the donor runs a site row only up to the site's layer (the corrupted rows, whose tokens it picks, run them all);
- in ``current`` mode the receiver runs every row once unpatched (the keys and values its cache keeps), and a site
  row's patched *branch* only from the site on: below the site the branch equals the unpatched pass; at the site's
  layer it reuses the unpatched pass's z and residual stream; above it, it attends to the cached prefix and its own
  key/value, written to the current slot before the unpatched pass overwrites it. This is the bridge's twin-token
  step without computing the part below the site twice.

Row order makes every subset a prefix. The receiver holds the site rows by (layer, site, row), then the clean rows,
so the branch rows at layer l (sites below l) lead; the donor holds the corrupted rows, then the site rows by
descending layer, so the rows that need layer l lead. The rows of one site are contiguous and in the same order in
both models.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

from toolkit.core.interventions import Site
from toolkit.methods.cmap.rows import CLEAN, CORRUPTED, Rows

if TYPE_CHECKING:
    from toolkit.core.models import LoadedModel

COMPONENTS = ("head", "attn", "mlp", "resid")
ARCHITECTURES = ("qwen2", "qwen3")


def _orig(module: torch.nn.Module) -> torch.nn.Module:
    """The HF module a bridge component wraps (the module itself when it wraps nothing)."""
    while getattr(module, "original_component", None) is not None:
        module = module.original_component
    return module


def supported(clean: LoadedModel, corrupted: LoadedModel, sites: Sequence[Site]) -> bool:
    """Whether :func:`open_runner` computes this run; otherwise the bridge path does."""
    if any(s.component not in COMPONENTS for s in sites):
        return False
    devices = set()
    for model in (clean, corrupted):
        config = model.hf.config
        if getattr(config, "model_type", None) not in ARCHITECTURES:
            return False
        if set(getattr(config, "layer_types", None) or ["full_attention"]) != {"full_attention"}:
            return False
        devices |= {p.device for p in model.hf.parameters()}
        if _foreign_hooks(model.hf):
            return False  # someone patches or offloads these modules: only the bridge path honours that
    return len(devices) == 1


def _foreign_hooks(hf: torch.nn.Module) -> bool:
    """Whether any module has a forward hook other than the capture hooks the bridge's blocks keep for themselves
    (they only feed hook points), or an accelerate hook (offloading)."""
    modules = list(hf.modules())
    own = {handle.id for m in modules for handle in getattr(m, "_capture_hook_handles", ())}
    return any(set(m._forward_hooks) - own or set(m._forward_pre_hooks) - own or hasattr(m, "_hf_hook")
               for m in modules)


class _Layer:
    """One decoder layer's HF modules."""

    def __init__(self, layer: torch.nn.Module):
        layer = _orig(layer)
        attn, mlp = _orig(layer.self_attn), _orig(layer.mlp)
        self.ln1, self.ln2 = _orig(layer.input_layernorm), _orig(layer.post_attention_layernorm)
        self.q, self.k, self.v, self.o = (_orig(getattr(attn, n)) for n in ("q_proj", "k_proj", "v_proj", "o_proj"))
        norms = (getattr(attn, "q_norm", None), getattr(attn, "k_norm", None))
        self.q_norm, self.k_norm = (None if n is None else _orig(n) for n in norms)
        self.gate, self.up, self.down = (_orig(getattr(mlp, n)) for n in ("gate_proj", "up_proj", "down_proj"))
        self.act = _orig(mlp.act_fn)
        self.scaling = attn.scaling

    def mlp(self, x: torch.Tensor) -> torch.Tensor:
        return self.down(self.act(self.gate(x)) * self.up(x))


class _Model:
    """A model's HF modules, its shapes, and its caches (keys/values ``[rows, kv heads, capacity, d_head]`` per
    layer; a layer holds only the rows that run it)."""

    def __init__(self, model: LoadedModel):
        hf, config = model.hf, model.hf.config
        self.embed, self.norm, self.head = (_orig(m) for m in (hf.model.embed_tokens, hf.model.norm, hf.lm_head))
        self.rotary = _orig(hf.model.rotary_emb)
        self.layers = [_Layer(layer) for layer in hf.model.layers]
        self.n_heads, self.n_kv = config.num_attention_heads, config.num_key_value_heads
        self.d_head = _orig(_orig(hf.model.layers[0]).self_attn).head_dim
        weight = next(hf.parameters())
        self.dtype, self.device = weight.dtype, weight.device
        self.keys: list[torch.Tensor] = []
        self.values: list[torch.Tensor] = []
        self.pos = self.mask = None  # [rows, 1] next position; [rows, 1, 1, capacity] additive attention mask

    def new_caches(self, rows: list[int], capacity: int) -> None:
        shape = (self.n_kv, capacity, self.d_head)
        self.keys = [torch.empty(n, *shape, dtype=self.dtype, device=self.device) for n in rows]
        self.values = [torch.empty(n, *shape, dtype=self.dtype, device=self.device) for n in rows]

    def select(self, index: list[torch.Tensor]) -> None:
        """Keep the cache rows ``index[l]`` of each layer l, in that order."""
        for caches in (self.keys, self.values):
            for i, cache in enumerate(caches):
                caches[i] = cache.index_select(0, index[i])

    def additive(self, mask: torch.Tensor) -> torch.Tensor:
        """0 where ``mask`` is true, the dtype's minimum elsewhere (HF's eager mask)."""
        zero = torch.zeros((), dtype=self.dtype, device=self.device)
        return torch.where(mask, zero, torch.finfo(self.dtype).min)

    def attend(self, layer: _Layer, i: int, x: torch.Tensor, cos, sin, n: int, mask: torch.Tensor) -> torch.Tensor:
        """z ``[rows, q, heads, d_head]`` of ``x`` ``[rows, q, d_model]`` at cache slots n..n+q-1 (written first)."""
        rows, q, _ = x.shape
        h, kv, d = self.n_heads, self.n_kv, self.d_head
        qs, ks = layer.q(x).view(rows, q, h, d), layer.k(x).view(rows, q, kv, d)
        if layer.q_norm is not None:
            qs, ks = layer.q_norm(qs), layer.k_norm(ks)
        qs, ks = apply_rotary_pos_emb(qs.transpose(1, 2), ks.transpose(1, 2), cos, sin)
        keys, values, end = self.keys[i][:rows], self.values[i][:rows], n + q
        keys[:, :, n:end] = ks
        values[:, :, n:end] = layer.v(x).view(rows, q, kv, d).transpose(1, 2)
        scores = torch.matmul(qs.reshape(rows, kv, h // kv * q, d), keys[:, :, :end].transpose(2, 3)) * layer.scaling
        weights = F.softmax(scores.view(rows, h, q, end) + mask, dim=-1, dtype=torch.float32).to(qs.dtype)
        z = torch.matmul(weights.view(rows, kv, h // kv * q, end), values[:, :, :end])
        return z.view(rows, h, q, d).transpose(1, 2)

    def layer(self, i: int, hidden: torch.Tensor, cos, sin, n: int, mask: torch.Tensor, patch=None):
        """One decoder layer: (z, attn_out, residual after attention, mlp_out, resid_post); ``patch(component,
        activation)`` may change each activation in place (``all`` mode)."""
        layer = self.layers[i]
        z = self.attend(layer, i, layer.ln1(hidden), cos, sin, n, mask)
        if patch:
            patch("head", z)
        a = layer.o(z.reshape(*hidden.shape[:2], -1))
        if patch:
            patch("attn", a)
        mid = hidden + a
        m = layer.mlp(layer.ln2(mid))
        if patch:
            patch("mlp", m)
        out = mid + m
        if patch:
            patch("resid", out)
        return z, a, mid, m, out

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(hidden[:, -1:]))[:, -1].float()


def _graft(layer: _Layer, site: Site, source: torch.Tensor, z, hidden, mid) -> torch.Tensor:
    """The patched branch of one site's rows after the site's layer, from the unpatched pass's z, residual stream
    before (``hidden``) and after attention (``mid``) at that layer and the donor's activation ``source``."""
    source = source.to(hidden.dtype)
    if site.component == "resid":
        return source
    if site.component == "mlp":
        return mid + source
    if site.component == "head":
        z = z.clone()
        z[:, :, list(site.units)] = source[:, :, list(site.units)]
        source = layer.o(z.reshape(*z.shape[:2], -1))
    mid = hidden + source
    return mid + layer.mlp(layer.ln2(mid))


class _Runner:
    """The runner interface of :mod:`toolkit.methods.cmap.batch` as a layer loop (see the module docstring)."""

    def __init__(self, clean: LoadedModel, corrupted: LoadedModel, rows: Rows):
        self.r, self.rec, self.don = rows, _Model(clean), _Model(corrupted)
        self.kinds, self.n_layers = rows.kinds.tolist(), len(self.rec.layers)
        self.store: dict[int, torch.Tensor] = {}
        kinds, sites = self.kinds, rows.sites
        site_rows = [g for g, k in enumerate(kinds) if k >= 0]
        rec = sorted(site_rows, key=lambda g: (sites[kinds[g]].layer, kinds[g], g))
        rec += [g for g, k in enumerate(kinds) if k == CLEAN]
        if rows.free:
            don = [g for g, k in enumerate(kinds) if k == CORRUPTED]
            don += sorted(site_rows, key=lambda g: (-sites[kinds[g]].layer, kinds[g], g))
        else:
            don = list(range(rows.n_prompts))
        self._layout(rec, don)
        self.length = 0  # cache positions filled (the same in every row: prompts are left-padded)
        for model, index, layer_rows in ((self.rec, self.rec_rows, [len(rec)] * self.n_layers),
                                         (self.don, self.don_rows, self.don_layer_rows)):
            model.new_caches(layer_rows, rows.capacity)
            mask = torch.ones(len(index), rows.capacity, dtype=torch.bool, device=rows.device)
            prompt = rows.prompt_of[index] if rows.free or model is self.rec else index
            mask[:, :rows.width] = rows.base_mask[prompt].bool()
            model.mask = model.additive(mask)[:, None, None]
            model.pos = (rows.base_mask[prompt].cumsum(-1) - 1).clamp(min=0)[:, -1:]

    def _layout(self, rec: list[int], don: list[int]) -> None:
        """Row orders and the subsets they imply (module docstring)."""
        kinds, sites, r = self.kinds, self.r.sites, self.r
        self.rec_list, self.don_list = rec, don
        self.rec_rows = torch.tensor(rec, dtype=torch.long, device=r.device)
        self.don_rows = torch.tensor(don, dtype=torch.long, device=r.device)
        self.n_site = sum(kinds[g] >= 0 for g in rec)
        site_layers = [sites[kinds[g]].layer for g in rec[:self.n_site]]
        self.cont = [sum(x < i for x in site_layers) for i in range(self.n_layers)]  # branch rows entering layer i
        self.groups = [[] for _ in range(self.n_layers)]  # (site, lo, hi): receiver rows of a site at its layer
        self.by_prompt = [[] for _ in range(self.n_layers)]  # (site, the donor's prompt rows for those rows)
        for s, lo, hi in _runs([kinds[g] for g in rec[:self.n_site]]):
            self.groups[sites[s].layer].append((s, lo, hi))
            self.by_prompt[sites[s].layer].append((s, r.prompt_of[self.rec_rows[lo:hi]]))
        if r.free:
            n_corr = sum(kinds[g] == CORRUPTED for g in don)
            layers = [sites[kinds[g]].layer for g in don[n_corr:]]
            self.don_layer_rows = [n_corr + sum(x >= i for x in layers) for i in range(self.n_layers)]
            self.record = [[] for _ in range(self.n_layers)]  # (site, donor rows) recorded at each layer
            for s, lo, hi in _runs([kinds[g] for g in don[n_corr:]]):
                self.record[sites[s].layer].append((s, slice(n_corr + lo, n_corr + hi)))
            self.n_logits, self.corrupted_rows = n_corr, self.don_rows[:n_corr]
        else:
            self.don_layer_rows = [len(don)] * self.n_layers
            self.record, self.n_logits, self.corrupted_rows = self.by_prompt, len(don), self.don_rows[:0]

    def _donor(self, ids, pos, n: int, mask, layer_rows: list[int], record) -> torch.Tensor:
        """The donor's pass: layer i runs the first ``layer_rows[i]`` rows and records the sites there."""
        model = self.don
        hidden = model.embed(ids)
        cos, sin = model.rotary(hidden, pos)
        for i in range(self.n_layers):
            d = layer_rows[i]
            if d < len(hidden):
                hidden, cos, sin, mask = hidden[:d], cos[:d], sin[:d], mask[:d]
            if d == 0:
                break
            z, a, _, m, hidden = model.layer(i, hidden, cos, sin, n, mask)
            for s, rows in record[i]:
                self.store[s] = {"head": z, "attn": a, "mlp": m, "resid": hidden}[self.r.sites[s].component][rows]
        return hidden

    def _receiver(self, ids, pos, n: int, mask, branch: bool, patching: bool = True) -> torch.Tensor:
        """The receiver's pass: unpatched with patched branches (``branch``, ``current`` mode), or patched in
        place (``all`` mode). Returns the final residual stream of every receiver row."""
        model, sites = self.rec, self.r.sites
        hidden = model.embed(ids)
        cos, sin = model.rotary(hidden, pos)
        patched = None  # the branch rows' residual stream
        for i in range(self.n_layers):
            groups = self.groups[i] if patching else []
            if branch:
                c = self.cont[i]
                if c:
                    patched = model.layer(i, patched, cos[:c], sin[:c], n, mask[:c])[-1]
                z, _, mid, _, out = model.layer(i, hidden, cos, sin, n, mask)
                if groups:
                    new = [_graft(model.layers[i], sites[s], self.store[s], z[lo:hi], hidden[lo:hi], mid[lo:hi])
                           for s, lo, hi in groups]
                    patched = torch.cat(([] if patched is None else [patched]) + new)
            else:
                def patch(component, act, groups=groups):
                    _patch(component, act, groups, self.store, sites)

                out = model.layer(i, hidden, cos, sin, n, mask, patch if groups else None)[-1]
            hidden = out
        return hidden if patched is None else torch.cat([patched, hidden[self.n_site:]])

    def prefill(self) -> None:
        """Both models read all but the last prompt position, each prompt once (then the caches are copied to the
        rows); in ``all`` mode the receiver reads the patched prompt in every row."""
        r = self.r
        ids, pos = r.base[:, :-1], (r.base_mask[:, :-1].cumsum(-1) - 1).clamp(min=0)
        q, seen = ids.shape[1], r.base_mask[:, :-1].bool()
        allowed = seen[:, None, None, :] & torch.ones(q, q, dtype=torch.bool, device=r.device).tril()
        patched = r.patching and r.mode == "all"
        prompts = [r.n_prompts] * self.n_layers
        self.don.new_caches(prompts, r.capacity)
        record = self.by_prompt if patched else [[]] * self.n_layers
        self._donor(ids, pos, 0, self.don.additive(allowed), prompts, record)
        if r.free:
            index = r.prompt_of[self.don_rows]
            self.don.select([index[:d] for d in self.don_layer_rows])
        of = r.prompt_of[self.rec_rows]
        if patched:
            self._receiver(ids[of], pos[of], 0, self.rec.additive(allowed[of]), branch=False)
        else:
            self.rec.new_caches(prompts, r.capacity)
            self._receiver(ids, pos, 0, self.rec.additive(allowed), branch=False, patching=False)
            self.rec.select([of] * self.n_layers)
        self.length = q

    def step(self, cur: torch.Tensor, d_cur: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The receiver's logits [receiver rows, V] and the donor's (its corrupted rows, or every prompt)."""
        n, rec, don = self.length, self.rec, self.don
        empty = torch.empty(0, rec.head.out_features, device=rec.device)  # a batch whose rows have all ended
        if len(d_cur):
            hidden = self._donor(d_cur, don.pos, n, don.mask[..., :n + 1], self.don_layer_rows, self.record)
            d_logits = don.logits(hidden[:self.n_logits])
        else:
            d_logits = empty
        if not len(cur):
            return empty, d_logits
        hidden = self._receiver(cur, rec.pos, n, rec.mask[..., :n + 1], branch=self.r.mode == "current")
        return rec.logits(hidden), d_logits

    def advance(self) -> None:
        self.length += 1
        self.rec.pos, self.don.pos = self.rec.pos + 1, self.don.pos + 1

    def drop(self, finished: torch.Tensor) -> None:
        """Drop the rows that have ended (free-running); the orders, and so the prefixes, are kept."""
        ended = finished.tolist()
        keep_r = [i for i, g in enumerate(self.rec_list) if not ended[g]]
        keep_d = [i for i, g in enumerate(self.don_list) if not ended[g]]
        device = self.r.device
        index_r = torch.tensor(keep_r, dtype=torch.long, device=device)
        self.rec.select([index_r] * self.n_layers)
        self.don.select([torch.tensor([i for i in keep_d if i < d], dtype=torch.long, device=device)
                         for d in self.don_layer_rows])
        index_d = torch.tensor(keep_d, dtype=torch.long, device=device)
        for model, index in ((self.rec, index_r), (self.don, index_d)):
            model.mask, model.pos = model.mask[index], model.pos[index]
        self._layout([self.rec_list[i] for i in keep_r], [self.don_list[i] for i in keep_d])


def _runs(kinds: list[int]) -> list[tuple[int, int, int]]:
    """(value, start, end) of each run of equal values."""
    out, start = [], 0
    for i in range(1, len(kinds) + 1):
        if i == len(kinds) or kinds[i] != kinds[start]:
            out.append((kinds[start], start, i))
            start = i
    return out


def _patch(component: str, act: torch.Tensor, groups, store, sites: list[Site]) -> None:
    """Patch ``act`` in place at ``component`` for the rows ``lo:hi`` of each site there."""
    for s, lo, hi in groups:
        site = sites[s]
        if site.component == component:
            source = store[s].to(act.dtype)
            if site.units:
                act[lo:hi, :, list(site.units)] = source[:, :, list(site.units)]
            else:
                act[lo:hi] = source


@contextlib.contextmanager
def open_runner(clean: LoadedModel, corrupted: LoadedModel, rows: Rows) -> Iterator[_Runner]:
    yield _Runner(clean, corrupted, rows)
