"""The benchmark's measurements run and report ratios against their in-run baselines (no timing asserted)."""

from toolkit.benchmarks import foundation as bench


def test_bridge_overhead_reports_ratios_against_plain_hf(tiny_dirs):
    res = bench.bridge_overhead(str(tiny_dirs["qwen3"]), batch=2, length=16, repeats=2)
    assert set(res["seconds"]) == {"hf_sdpa", "hf_eager", "bridge", "bridge_flags_on"}
    assert res["ratio_bridge_flags_on_vs_hf_sdpa"] > 0


def test_generation_speed_compares_cache_with_no_cache(tiny_dirs):
    res = bench.generation_speed(str(tiny_dirs["qwen2"]), batch=2, new_tokens=4, repeats=1)
    assert res["tokens_per_s"] > 0 and res["ratio_cache_vs_no_cache_speed"] > 0
