"""CMAP: invariants and equality with a slow no-cache reference, on tiny Qwen2/Qwen3 models and on the organism.

The reference (:mod:`toolkit.reference.cmap`) is deliberately naive: one prompt and one site at a time, no padding,
no KV cache, the whole sequence recomputed at every step.
"""

import numpy as np
import pytest
import torch

from toolkit.core import interventions as iv
from toolkit.core.generation import generate
from toolkit.core.models import load
from toolkit.methods import cmap
from toolkit.reference.cmap import reference
from toolkit.studies import cmap as study
from toolkit.views import cmap as views

PROMPTS = ["What is 12 + 7?", "Reverse the word: abc", "Solve for x: 3x + 4 = 5x + 2"]
STEPS = 6


def sharpen(model, seed: int, std: float = 0.15):
    """Re-draw the matrices of a tiny random model with a larger scale so its greedy outputs vary (the default init
    gives near-uniform logits and the same token every step)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.hf.parameters():
            if p.dim() == 2:
                p.copy_(torch.randn(p.shape, generator=g) * std)
    return model


def perturb_blocks(model, seed: int, scale: float = 0.3):
    """A stand-in corrupted model: the transformer blocks' weights moved by relative noise; the embeddings and final
    norm stay those of the clean model, so the donor's final residual stream fully determines its output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.hf.named_parameters():
            if "layers." in name and p.dim() == 2:
                p.add_(torch.randn(p.shape, generator=g) * p.std() * scale)
    return model


def all_granularities(n_layers: int) -> list[iv.Site]:
    last = n_layers - 1
    return [iv.head(0, 1), iv.head(last, 0, 3), iv.attn(0), iv.mlp(last), iv.resid(0)]


@pytest.fixture(scope="module")
def tiny_pairs(tiny_dirs):
    """(clean, corrupted) per architecture: two tiny models with different sharpened random weights."""
    return {arch: (sharpen(load(str(path)), 0), sharpen(load(str(path)), 1)) for arch, path in tiny_dirs.items()}


@pytest.fixture(scope="module")
def organism_pair():
    return load("organism"), perturb_blocks(load("organism"), 0, scale=1.0)


def check_against_reference(clean, corrupted, sites, mode, steps, prompts=PROMPTS[:2]):
    free = cmap.run(clean, corrupted, prompts, sites, mode=mode, max_new_tokens=steps)
    forced = cmap.run(clean, corrupted, prompts, sites, mode=mode, max_new_tokens=steps, teacher_forcing="corrupted")
    differs = 0
    for b, prompt in enumerate(prompts):
        for s, site in enumerate(sites):
            want, _ = reference(clean, corrupted, prompt, site, mode, steps)
            assert free.patched_tokens[b][s] == want, (site.label, mode, b)
            differs += want != free.clean_tokens[b]
            traj = forced.trajectory[b]
            _, ref_delta = reference(clean, corrupted, prompt, site, mode, steps, forced=traj)
            n = len(traj)
            torch.testing.assert_close(torch.from_numpy(forced.delta_patched[b, s, :n]), ref_delta[:, 0],
                                       atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(torch.from_numpy(forced.delta_clean[b, :n]), ref_delta[:, 1],
                                       atol=2e-4, rtol=1e-4)
            torch.testing.assert_close(torch.from_numpy(forced.delta_corrupted[b, :n]), ref_delta[:, 2],
                                       atol=2e-4, rtol=1e-4)
    assert differs >= len(prompts), "too few patched generations differ from the clean one for the test to bite"
    return free


@pytest.mark.parametrize("mode", cmap.MODES)
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_cached_batched_run_equals_no_cache_reference_on_tiny_models(tiny_pairs, arch, mode):
    clean, corrupted = tiny_pairs[arch]
    check_against_reference(clean, corrupted, all_granularities(clean.bridge.cfg.n_layers), mode, STEPS)


@pytest.mark.parametrize("mode", cmap.MODES)
def test_cached_batched_run_equals_no_cache_reference_on_the_organism(organism_pair, mode):
    clean, corrupted = organism_pair
    sites = [iv.head(1, 2), iv.head(3, 0, 1), iv.attn(2), iv.mlp(3), iv.resid(1)]
    check_against_reference(clean, corrupted, sites, mode, 5, prompts=PROMPTS[1:])


@pytest.mark.parametrize("mode", cmap.MODES)
@pytest.mark.parametrize("arch", ["qwen2", "qwen3"])
def test_the_bridge_fallback_equals_the_reference_too(tiny_pairs, arch, mode, monkeypatch):
    """The hook-based path (neuron sites, several devices, user hooks attached) computes the same as the fast one."""
    from toolkit.methods.cmap import fast

    monkeypatch.setattr(fast, "supported", lambda *args: False)
    clean, corrupted = tiny_pairs[arch]
    check_against_reference(clean, corrupted, all_granularities(clean.bridge.cfg.n_layers), mode, STEPS)


def test_modes_differ(tiny_pairs):
    """'current' and 'all' are different computations (else one of them would be wrongly implemented)."""
    clean, corrupted = tiny_pairs["qwen3"]
    sites = [iv.resid(0), iv.attn(0), iv.mlp(0)]
    a = cmap.run(clean, corrupted, PROMPTS, sites, mode="current", max_new_tokens=STEPS)
    b = cmap.run(clean, corrupted, PROMPTS, sites, mode="all", max_new_tokens=STEPS)
    assert a.patched_tokens != b.patched_tokens


def _pairs(tiny_pairs, organism_pair):
    return [("qwen2", *tiny_pairs["qwen2"]), ("qwen3", *tiny_pairs["qwen3"]), ("organism", *organism_pair)]


def test_patching_nothing_gives_the_clean_and_corrupted_generations(tiny_pairs, organism_pair):
    for name, clean, corrupted in _pairs(tiny_pairs, organism_pair):
        for mode in cmap.MODES:
            result = cmap.run(clean, corrupted, PROMPTS, [], mode=mode, max_new_tokens=16)
            for model, got in ((clean, result.clean_texts()), (corrupted, result.corrupted_texts())):
                want = [o[0] for o in generate(model, PROMPTS, max_new_tokens=16)]
                assert got == want, (name, mode)


@pytest.fixture(scope="module")
def shared_head_pairs(tiny_dirs, organism_pair):
    """(name, clean, corrupted) where the corrupted model shares the clean one's embeddings and final norm."""
    pairs = [(arch, sharpen(load(str(tiny_dirs[arch])), 0),
              perturb_blocks(sharpen(load(str(tiny_dirs[arch])), 0), 1, scale=1.0)) for arch in tiny_dirs]
    return pairs + [("organism", *organism_pair)]


@pytest.mark.parametrize("mode", cmap.MODES)
def test_last_residual_stream_gives_exactly_the_corrupted_generation(shared_head_pairs, mode):
    for name, clean, corrupted in shared_head_pairs:
        last = iv.resid(clean.bridge.cfg.n_layers - 1)
        result = cmap.run(clean, corrupted, PROMPTS, [last, iv.resid(0)], mode=mode, max_new_tokens=16)
        assert [row[0] for row in result.patched_tokens] == result.corrupted_tokens, (name, mode)
        assert result.clean_tokens != result.corrupted_tokens, f"{name}: the donor must behave differently"
        forced = cmap.run(clean, corrupted, PROMPTS, [last], mode=mode, max_new_tokens=16, teacher_forcing="clean")
        cts = forced.cts()[:, 0]
        defined = np.isfinite(cts)
        assert defined.any(), name
        np.testing.assert_allclose(cts[defined], 1.0, atol=1e-4)


@pytest.mark.parametrize("mode", cmap.MODES)
def test_self_patching_changes_nothing(tiny_pairs, organism_pair, mode):
    for name, clean, _ in _pairs(tiny_pairs, organism_pair):
        sites = all_granularities(clean.bridge.cfg.n_layers)
        result = cmap.run(clean, clean, PROMPTS, sites, mode=mode, max_new_tokens=12)
        for b in range(len(PROMPTS)):
            assert result.patched_tokens[b] == [result.clean_tokens[b]] * len(sites), (name, mode, b)
        forced = cmap.run(clean, clean, PROMPTS, sites, mode=mode, max_new_tokens=12, teacher_forcing="clean")
        assert (forced.delta_patched == forced.delta_clean[:, None]).all()
        assert forced.cts_coverage() == 0  # a model agrees with itself: CTS is undefined everywhere


def test_batching_and_chunking_do_not_change_results(tiny_pairs):
    clean, corrupted = tiny_pairs["qwen2"]
    sites = cmap.head_sweep(clean.bridge, [0, 1]) + cmap.layer_sweep(clean.bridge, "mlp")
    whole = cmap.run(clean, corrupted, PROMPTS, sites, max_new_tokens=STEPS)
    pieces = cmap.run(clean, corrupted, PROMPTS, sites, max_new_tokens=STEPS, batch_size=1)
    assert whole.patched_tokens == pieces.patched_tokens
    single = [cmap.run(clean, corrupted, PROMPTS, [s], max_new_tokens=STEPS) for s in sites[:3]]
    for i, r in enumerate(single):
        assert [row[0] for row in r.patched_tokens] == [row[i] for row in whole.patched_tokens]


def test_metrics(tiny_pairs):
    clean, corrupted = tiny_pairs["qwen3"]
    sites = [iv.resid(1), iv.mlp(0)]
    result = cmap.run(clean, corrupted, PROMPTS, sites, max_new_tokens=STEPS)
    texts = result.patched_texts()
    answers = [texts[0][1], "no", texts[2][1]]  # site mlp(0) right on prompts 0 and 2
    summary = result.summary(answers)
    assert summary["L0 mlp"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["clean"]["length"] == pytest.approx(
        sum(len(t) - (t[-1] == result.eos) for t in result.clean_tokens) / 3)
    assert summary["corrupted"]["equals_corrupted"] == 1.0
    lengths = result.lengths()
    assert all(lengths[k].mean() == pytest.approx(v["length"]) for k, v in summary.items())
    with pytest.raises(ValueError, match="3 prompts"):
        result.summary(["x"])
    with pytest.raises(ValueError, match="teacher-forced"):
        result.cts()


def test_cts_guard_and_closed_form():
    """CTS = (ΔL_p − ΔL_c)/(ΔL_x − ΔL_c) where defined; NaN past the trajectory and where the gap is small."""
    r = cmap.CMAPResult(["p"], [iv.resid(0)], "current", "clean", [[1, 2, 3]], [], None, None, 2,
                        valid=np.array([[True, True, True, False]]),
                        delta_clean=np.array([[-2.0, 0.0, -0.1, -1.0]]), delta_corrupted=np.array([[2.0, 0.0, 0.2, 1]]),
                        delta_patched=np.array([[[1.0, 5.0, 0.0, 0.0]]]))
    score = r.cts(min_gap=0.5)[0, 0]
    assert score[0] == pytest.approx(0.75) and np.isnan(score[1:]).all()
    assert r.cts_coverage(min_gap=0.5) == pytest.approx(1 / 3)
    assert r.cts(min_gap=0.25)[0, 0, 2] == pytest.approx(1 / 3)


def test_study_parameters_without_data_are_named():
    with pytest.raises(ValueError, match="n_prompts"):
        study.setup("organism", "B-500x8ep", 1.0, "cpu", 0, ["resid"])
    with pytest.raises(ValueError, match="components is empty"):
        study.setup("organism", "B-500x8ep", 1.0, "cpu", 10, [])


def test_pooled_cts_is_a_ratio_of_sums_and_small_gaps_cannot_dominate_it():
    """Two prompts; prompt 0 has a wide gap (4 logits) the patch crosses by 1/4, prompt 1 a narrow one (0.5) it
    overshoots 4 times: the mean of ratios is 2.125, the ratio of sums (1 + 2) / 4.5 = 2/3."""
    r = cmap.CMAPResult(["p", "q"], [iv.resid(0)], "current", "clean", [[1], [1]], [], None, None, 2,
                        valid=np.array([[True, False], [True, False]]),
                        delta_clean=np.array([[-2.0, 0.0], [0.0, 0.0]]),
                        delta_corrupted=np.array([[2.0, 0.0], [0.5, 0.0]]),
                        delta_patched=np.array([[[-1.0, 9.0]], [[2.0, 9.0]]]))
    assert r.mean_cts(min_gap=0.25)[0] == pytest.approx((0.25 + 4.0) / 2)
    assert r.pooled_cts(min_gap=0.25)[0] == pytest.approx(3.0 / 4.5)
    assert r.median_cts(min_gap=0.25)[0] == pytest.approx((0.25 + 4.0) / 2)
    np.testing.assert_allclose(r.prompt_cts(min_gap=0.25)[:, 0], [0.25, 4.0])
    assert r.pooled_cts(min_gap=1.0)[0] == pytest.approx(0.25)  # prompt 1's gap no longer counts
    assert np.isnan(r.pooled_cts(min_gap=10.0)).all() and np.isnan(r.prompt_cts(min_gap=10.0)).all()


def test_mismatched_models_and_bad_input_are_named(tiny_pairs, tmp_path):
    from toolkit.organism.tiny import tiny_model_dir

    q2, q3 = tiny_pairs["qwen2"][0], tiny_pairs["qwen3"][0]
    with pytest.raises(cmap.ModelMismatchError, match="architecture qwen2 vs qwen3"):
        cmap.run(q2, q3, PROMPTS, [])
    three = load(str(tiny_model_dir("qwen3", tmp_path / "three", n_layers=3)))
    with pytest.raises(cmap.ModelMismatchError, match="layers 2 vs 3"):
        cmap.check_compatible(q3, three)
    with pytest.raises(iv.SiteError, match="layers 0..1"):
        cmap.run(q3, q3, PROMPTS, [iv.resid(2)])
    with pytest.raises(iv.SiteError, match="heads are 0..3"):
        cmap.run(q3, q3, PROMPTS, [iv.head(1, 7)])
    with pytest.raises(ValueError, match="mode must be one of"):
        cmap.run(q3, q3, PROMPTS, [], mode="last")
    with pytest.raises(ValueError, match="no prompts"):
        cmap.run(q3, q3, [], [])
    with pytest.raises(iv.SiteError, match="listed twice"):
        cmap.run(q3, q3, PROMPTS, [iv.mlp(0), iv.mlp(0)])
    with pytest.raises(iv.SiteError, match="attn, mlp or resid"):
        cmap.layer_sweep(q3.bridge, "head")


def test_tables_figures_and_explorer(tiny_pairs):
    import matplotlib.pyplot as plt

    clean, corrupted = tiny_pairs["qwen3"]
    sets = {"a": [{"prompt": p, "correct_answer": "x"} for p in PROMPTS[:2]],
            "b": [{"prompt": PROMPTS[2], "correct_answer": "y"}]}
    sites = cmap.layer_sweep(clean.bridge, "mlp")
    free = study.sweep_question_types(clean, corrupted, sets, sites, max_new_tokens=4)
    summary = study.summaries(free, sets)
    html = views.layer_table_html(summary)
    assert html.count("<tr>") == 1 + 2 + len(sites) and "transfer" in html
    forced = study.sweep_question_types(clean, corrupted, sets, sites, max_new_tokens=4, teacher_forcing="clean")
    for fig in (views.cts_heatmap(forced["a"]), views.length_figure(free, sites),
                views.cts_by_layer_figure({k: r.pooled_cts() for k, r in forced.items()},
                                          {k: r.prompt_cts() for k, r in forced.items()}, sites)):
        assert fig.axes
        plt.close(fig)
    heads = cmap.head_sweep(clean.bridge, [1])
    forced_heads = study.sweep_question_types(clean, corrupted, sets, heads, max_new_tokens=4, teacher_forcing="clean")
    layers, head_ids, grid = forced_heads["a"].head_grid()
    assert layers == [1] and head_ids == list(range(clean.bridge.cfg.n_heads))
    np.testing.assert_array_equal(grid[0], forced_heads["a"].pooled_cts())
    fig = views.head_figure(forced_heads)
    assert fig.axes
    plt.close(fig)
    r = free["a"]
    diff = views.diff_html(clean.tokenizer, [5, 6, 7], [5, 9, 8], [5, 9, 7], r.eos)
    assert diff.count("#f4a3a3") == 2 and diff.count("#fdd49e") == 3  # legend + patched 9 / corrupted 9, 8
    box = views.explorer(clean, corrupted, {"a": PROMPTS[:2]}, max_new_tokens=4)
    granularity, heads, out = box.children[1].children[0], box.children[2].children[1], box.children[3]
    first = out.outputs
    granularity.value = "head"
    heads.value = (0, 2)
    assert out.outputs != first and "L1H0+2" in out.outputs[0]["data"]["text/html"]
    with pytest.raises(cmap.ModelMismatchError):
        views.explorer(clean, tiny_pairs["qwen2"][0], {"a": PROMPTS})


def test_benchmark_baseline_agrees_and_extrapolation_is_exact_on_a_line(tiny_pairs):
    """The benchmark's original-scheme baseline (full-prefix recompute, one run per layer) gives the same patched
    tokens as the batched cached run; the extrapolation sums a straight line exactly."""
    from toolkit.benchmarks import cmap as bench

    clean, corrupted = tiny_pairs["qwen2"]
    tokens = bench.baseline(clean, corrupted, PROMPTS, [0, 1], 5, bench.FORWARDS_ORIGINAL, enable_thinking=False)
    ours = cmap.run(clean, corrupted, PROMPTS, cmap.layer_sweep(clean.bridge, "resid"), max_new_tokens=5)
    assert tokens == {layer: [row[layer] for row in ours.patched_tokens] for layer in (0, 1)}
    fit = bench.extrapolate({10: 1.0 + 0.5 * 10, 20: 1.0 + 0.5 * 20}, prompt_len=10, steps=3, n_layers=2)
    assert fit["predicted_seconds"] == pytest.approx(2 * sum(1.0 + 0.5 * (10 + t) for t in range(3)))


def test_head_layers_ranks_attention_cts_and_puts_nan_last():
    sites = [iv.attn(0), iv.mlp(0), iv.attn(1), iv.attn(2), iv.attn(3)]
    means = np.array([0.3, 5.0, np.nan, 0.9, 0.1])
    assert study.head_layers(sites, means, 2, 4) == [0, 2]
    assert study.head_layers(sites, means, 4, 4) == [0, 1, 2, 3]
    assert study.head_layers([iv.mlp(0)], np.array([1.0]), 2, 4) == [2, 3]
