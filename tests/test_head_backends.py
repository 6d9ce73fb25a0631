"""One head-intervention spec, three backends: ``head(L, h)`` scaled or ablated through the TransformerBridge
(``hook_z``), the HF modules (``o_proj``'s input) and nnsight (an edit of ``o_proj.input``) gives the same logits on
tiny GQA Qwen2 and Qwen3 models; slicing ``o_proj``'s *output* instead does not."""

import pytest
import torch

from toolkit.core.head_backends import BACKENDS, head_dim, head_logits, hf_scaled
from toolkit.core.interventions import SiteError, attn, head

SITES = {"one head": [head(1, 2)], "heads on two layers": [head(0, 0, 3), head(1, 1)]}


@pytest.fixture(scope="module")
def ids():
    return torch.randint(5, 100, (2, 9), generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("factor", [0.0, 0.5])
@pytest.mark.parametrize("which", list(SITES))
def test_the_three_backends_give_identical_logits(tiny, ids, which, factor):
    assert tiny.hf.config.num_key_value_heads < tiny.hf.config.num_attention_heads  # grouped-query attention
    with torch.no_grad():
        plain = tiny.hf(ids).logits
    logits = {backend: head_logits(tiny, ids, SITES[which], factor, backend=backend) for backend in BACKENDS}
    for backend in ("hf", "nnsight"):
        assert (logits[backend] - logits["bridge"]).abs().max() <= 1e-6, backend
    assert (logits["bridge"] - plain).abs().max() > 1e-4  # the edit did something


def test_slicing_o_proj_output_is_not_a_head_ablation(tiny, ids):
    d_head = head_dim(tiny.hf.config)
    columns = slice(2 * d_head, 3 * d_head)

    def out_slice(module, args, output):
        output = output.clone()
        output[..., columns] = 0
        return output

    handle = tiny.hf.model.layers[1].self_attn.o_proj.register_forward_hook(out_slice)
    try:
        with torch.no_grad():
            wrong = tiny.hf(ids).logits
    finally:
        handle.remove()
    right = head_logits(tiny, ids, [head(1, 2)], 0.0, backend="hf")
    assert (wrong - right).abs().max() > 1e-3


def test_bad_head_specs_are_refused_the_same_way_by_every_backend(tiny, ids):
    n_heads, n_layers = tiny.hf.config.num_attention_heads, tiny.hf.config.num_hidden_layers
    for backend in BACKENDS:
        with pytest.raises(SiteError, match="edit heads only"):
            head_logits(tiny, ids, [attn(0)], backend=backend)
        with pytest.raises(SiteError, match=f"head {n_heads} out of range: the model has {n_heads} query heads"):
            head_logits(tiny, ids, [head(0, n_heads)], backend=backend)
        with pytest.raises(SiteError, match=f"layer {n_layers} out of range"):
            head_logits(tiny, ids, [head(n_layers, 0)], backend=backend)
    with pytest.raises(ValueError, match="unknown backend 'vllm'; choose one of bridge, hf, nnsight"):
        head_logits(tiny, ids, [head(0, 0)], backend="vllm")
    with pytest.raises(ValueError, match="finite number"), hf_scaled(tiny, [head(0, 0)], float("nan")):
        pass


def test_the_hf_hooks_are_removed_on_exit_even_after_an_error(tiny, ids):
    with torch.no_grad():
        plain = tiny.hf(ids).logits
    with pytest.raises(RuntimeError, match="boom"), hf_scaled(tiny, [head(0, 1)], 0.0):
        raise RuntimeError("boom")
    with torch.no_grad():
        assert torch.equal(tiny.hf(ids).logits, plain)

