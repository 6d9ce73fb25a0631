"""The hook vocabulary: sites, record/patch/ablate/scale, and KV-cache correctness."""

import pytest
import torch

from toolkit.core import interventions as iv
from toolkit.core import units

EOS = 2


def prompt_ids(tok, texts=("What is 12 + 7?", "Reverse the word: abc")):
    tok.padding_side = "left"
    return tok(list(texts), return_tensors="pt", padding=True, add_special_tokens=False)


def greedy_no_cache(hf, ids, mask, n):
    """Token-by-token reference: recompute the whole sequence each step, no KV cache."""
    for _ in range(n):
        pos = (mask.cumsum(-1) - 1).clamp(min=0)
        logits = hf(input_ids=ids, attention_mask=mask, position_ids=pos, use_cache=False).logits[:, -1]
        logits[:, EOS] = -torch.inf
        ids = torch.cat([ids, logits.argmax(-1, keepdim=True)], 1)
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], 1)
    return ids


def greedy_cached(hf, ids, mask, n):
    return hf.generate(input_ids=ids, attention_mask=mask, max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0, eos_token_id=EOS)


@pytest.mark.parametrize("bad, message", [
    (lambda: iv.head(9, 0), "layers 0..1"),
    (lambda: iv.head(1, 4), "heads are 0..3"),
    (lambda: iv.mlp(-1), "layers 0..1"),
])
def test_out_of_range_sites_name_the_valid_range(tiny, bad, message):
    with pytest.raises(iv.SiteError, match=message):
        with iv.ablate(tiny.bridge, bad()):
            pass


def test_site_names_follow_transformer_lens():
    assert iv.head(1, 0, 2).hook_name == "blocks.1.attn.hook_z"
    assert iv.attn(0).hook_name == "blocks.0.hook_attn_out"
    assert iv.site_from_name("blocks.3.hook_mlp_out") == iv.mlp(3)
    assert iv.site_from_name("blocks.2.attn.hook_z", heads=[1]) == iv.head(2, 1)
    with pytest.raises(iv.SiteError, match="not a site hook"):
        iv.site_from_name("blocks.2.hook_nonsense")
    with pytest.raises(iv.SiteError, match="unknown component"):
        iv.Site("neurons", 0)


def test_record_matches_run_with_cache(tiny):
    batch = prompt_ids(tiny.tokenizer)
    sites = [iv.head(0, 1, 3), iv.attn(1), iv.mlp(0), iv.resid(1)]
    with iv.record(tiny.bridge, sites) as rec:
        tiny.hf(**batch)
    _, cache = tiny.bridge.run_with_cache(batch["input_ids"], attention_mask=batch["attention_mask"])
    for site in sites:
        torch.testing.assert_close(rec[site], site.select(cache[site.hook_name]))


def test_head_ablation_removes_exactly_that_heads_output(tiny):
    """attn_out(ablated head h) = attn_out - z_h @ W_O[h], the head's own contribution."""
    bridge, batch = tiny.bridge, prompt_ids(tiny.tokenizer)
    with iv.record(bridge, [iv.attn(1), iv.head(1, 2)]) as clean:
        tiny.hf(**batch)
    with iv.ablate(bridge, iv.head(1, 2)), iv.record(bridge, iv.attn(1)) as ablated:
        tiny.hf(**batch)
    w_o = tiny.hf.model.layers[1].self_attn.o_proj.weight  # (d_model, H * d_head)
    d_head = bridge.cfg.d_head
    head_out = clean[iv.head(1, 2)][:, :, 0] @ w_o[:, 2 * d_head:3 * d_head].T
    torch.testing.assert_close(ablated[iv.attn(1)], clean[iv.attn(1)] - head_out, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("make_context", [
    lambda b: iv.ablate(b, [iv.head(0, 1), iv.head(1, 0, 3)]),
    lambda b: iv.scale(b, iv.head(1, 2), 0.5),
    lambda b: iv.scale(b, iv.mlp(0), 1.3),
    lambda b: iv.ablate(b, iv.attn(1)),
], ids=["ablate-heads", "scale-head", "scale-mlp", "ablate-attn"])
def test_interventions_under_kv_cache_match_no_cache_reference(tiny, make_context):
    batch = prompt_ids(tiny.tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    plain = greedy_cached(tiny.hf, ids, mask, 12)
    with make_context(tiny.bridge):
        cached = greedy_cached(tiny.hf, ids, mask, 12)
    with make_context(tiny.bridge):
        reference = greedy_no_cache(tiny.hf, ids, mask, 12)
    assert torch.equal(cached, reference)
    with make_context(tiny.bridge):
        logits = tiny.hf(**batch).logits
    assert not torch.allclose(logits, tiny.hf(**batch).logits), "the intervention changed nothing"
    assert plain.shape == cached.shape


def test_patch_under_kv_cache_matches_no_cache_reference(tiny, tiny_dirs):
    """Patch layer-0 MLP output from a fixed donor sequence, with and without the cache."""
    batch = prompt_ids(tiny.tokenizer)
    ids, mask = batch["input_ids"], batch["attention_mask"]
    n_new = 10
    donor_ids = torch.randint(3, 100, (ids.shape[0], ids.shape[1] + n_new), generator=torch.Generator().manual_seed(0))
    with iv.record(tiny.bridge, iv.mlp(0)) as donor:
        tiny.hf(donor_ids)
    source = donor[iv.mlp(0)]
    with iv.patch(tiny.bridge, iv.mlp(0), source):
        cached = greedy_cached(tiny.hf, ids, mask, n_new)
    with iv.patch(tiny.bridge, iv.mlp(0), source):
        reference = greedy_no_cache(tiny.hf, ids, mask, n_new)
    assert torch.equal(cached, reference)


def test_patching_the_whole_residual_stream_transplants_the_run(tiny):
    """Patch resid_post of layer 0 at all positions from run B into run A: the logits become B's."""
    tok = tiny.tokenizer
    a = tok(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    b = tok(["What is 98 - 4?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    assert a.shape == b.shape
    with iv.record(tiny.bridge, iv.resid(0)) as rec:
        logits_b = tiny.hf(b).logits
    with iv.patch(tiny.bridge, iv.resid(0), rec[iv.resid(0)]):
        patched = tiny.hf(a).logits
    torch.testing.assert_close(patched, logits_b)
    with iv.patch(tiny.bridge, iv.resid(0), rec[iv.resid(0)], positions=[a.shape[1] - 1]):
        last_only = tiny.hf(a).logits
    torch.testing.assert_close(last_only[:, :-1], tiny.hf(a).logits[:, :-1])
    assert not torch.allclose(last_only[:, -1], tiny.hf(a).logits[:, -1])


def test_patch_source_too_short_is_a_clear_error(tiny):
    a = tiny.tokenizer(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    with iv.record(tiny.bridge, iv.mlp(1)) as rec:
        tiny.hf(a[:, :5])
    with pytest.raises(iv.SiteError, match="covers 5 positions"):
        with iv.patch(tiny.bridge, iv.mlp(1), rec[iv.mlp(1)]):
            tiny.hf(a)


def test_hooks_are_removed_after_an_error(tiny):
    a = tiny.tokenizer(["What is 1 + 2?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    before = tiny.hf(a).logits
    with pytest.raises(RuntimeError):
        with iv.ablate(tiny.bridge, iv.attn(0)):
            raise RuntimeError("boom")
    torch.testing.assert_close(tiny.hf(a).logits, before)


def test_neuron_sites_ablate_exactly_the_chosen_mlp_neurons(tiny):
    ids = prompt_ids(tiny.tokenizer)["input_ids"]
    d_mlp = tiny.bridge.cfg.d_mlp
    site = iv.neurons(1, 0, 5)
    assert site.label == "L1N0+5" and site.hook_name == "blocks.1.mlp.hook_post"
    assert iv.site_from_name("blocks.1.mlp.hook_post", heads=[0, 5]) == site
    whole = iv.Site("neuron", 1, tuple(range(d_mlp)))
    with iv.record(tiny.bridge, whole) as before:
        tiny.bridge(ids)
    with iv.ablate(tiny.bridge, site), iv.record(tiny.bridge, whole) as after:
        tiny.bridge(ids)
    assert (after[whole][:, :, [0, 5]] == 0).all()
    keep = [u for u in range(d_mlp) if u not in (0, 5)]
    torch.testing.assert_close(after[whole][:, :, keep], before[whole][:, :, keep])
    with pytest.raises(iv.SiteError, match=f"neurons are 0..{d_mlp - 1}"):
        with iv.ablate(tiny.bridge, iv.neurons(0, d_mlp)):
            pass
    with pytest.raises(iv.SiteError, match="need at least one index"):
        iv.Site("neuron", 0)


def test_head_sites_and_random_heads():
    assert units.head_sites([(2, 1), (0, 3), (2, 0)]) == [iv.head(0, 3), iv.head(2, 0, 1)]
    picked = units.random_heads(4, 4, 5, exclude=[(0, 0), (1, 1)], seed=3)
    assert len(set(picked)) == 5 and not {(0, 0), (1, 1)} & set(picked)
    assert picked == units.random_heads(4, 4, 5, exclude=[(0, 0), (1, 1)], seed=3)
    assert all(layer in (2, 3) for layer, _ in units.random_heads(4, 4, 3, layers=[2, 3]))
    with pytest.raises(iv.SiteError, match="only 2 are left"):
        units.random_heads(1, 4, 3, exclude=[(0, 0), (0, 1)])
