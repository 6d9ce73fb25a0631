"""Faults and bad input (issue 15, items 3 and 8): model folders without a usable tokenizer or with non-finite weights
are refused at load; prompts longer than the model's positions, a string where a list of prompts is expected, and
out-of-range numeric options are refused with errors that name the parameter; the EAP memory guard counts what
``method="exact"`` allocates."""

import ctypes
import json
import re
import shutil
import threading
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from toolkit.core import interventions as iv
from toolkit.core.chat import chat_prompts
from toolkit.core.generation import SamplingConfig, generate
from toolkit.core.models import ModelLoadError, check_loaded, load, load_tokenizer
from toolkit.evaluation import causal
from toolkit.evaluation.behaviour import answer_nll, behave
from toolkit.methods import cmap, eap, rim
from toolkit.methods.eap import memory

LONG = "9" * 300  # the tiny models have max_position_embeddings = 256
PROMPTS = ["What is 1 + 1?", "What is 2 + 3?"]


@pytest.fixture(scope="module")
def m(tiny_dirs):
    """The tiny Qwen3 on the CPU (the memory test measures resident memory)."""
    return load(str(tiny_dirs["qwen3"]), device="cpu")


def _refused(name: str, call, error: type, match: str) -> None:
    """``call()`` raises ``error`` whose message matches ``match``; a failure names the case."""
    try:
        call()
    except error as err:
        assert re.search(match, str(err)), f"{name}: {err}"
        return
    pytest.fail(f"{name}: not refused")


def _copy(tiny_dirs, tmp_path, name="m"):
    folder = tmp_path / name
    shutil.copytree(tiny_dirs["qwen3"], folder)
    return folder


# ------------------------------------------------------------------------------------------- checks at load
def test_folder_without_tokenizer_files_is_refused(tiny_dirs, tmp_path):
    folder = _copy(tiny_dirs, tmp_path)
    for f in ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja"):
        (folder / f).unlink(missing_ok=True)
    with pytest.raises(ModelLoadError, match=f"{folder} has no tokenizer files.*save_pretrained"):
        load(str(folder))


def test_tokenizer_config_without_its_vocabulary_files_is_refused(tiny_dirs, tmp_path):
    folder = _copy(tiny_dirs, tmp_path)
    (folder / "tokenizer.json").unlink()
    with pytest.raises(ModelLoadError, match="has tokenizer_config.json .* but neither tokenizer.json"):
        load(str(folder))
    config = json.loads((folder / "tokenizer_config.json").read_text())
    (folder / "tokenizer_config.json").write_text(json.dumps({**config, "tokenizer_class": "Qwen2Tokenizer"}))
    with pytest.raises(ModelLoadError, match="vocab.json, merges.txt"):
        load(str(folder))


def test_malformed_tokenizer_file_names_the_folder(tiny_dirs, tmp_path):
    folder = _copy(tiny_dirs, tmp_path)
    (folder / "tokenizer.json").write_text('{"model": {"type": "WordLevel", "vocab": {}, "unk_token": null}}')
    with pytest.raises(ModelLoadError, match=f"cannot load the tokenizer from {folder}"):
        load(str(folder))


def test_tokenizer_that_encodes_the_probe_to_nothing_is_refused(tiny_dirs, tmp_path):
    from tokenizers import Tokenizer, normalizers

    folder = _copy(tiny_dirs, tmp_path)
    tok = Tokenizer.from_file(str(folder / "tokenizer.json"))
    # every character of the probe is removed before encoding (one plain Replace per character: tokenizers 0.23.1
    # refuses a regex replaced by nothing)
    tok.normalizer = normalizers.Sequence([normalizers.Replace(c, "") for c in sorted(set("Solve 2x + 3 = 7."))])
    tok.save(str(folder / "tokenizer.json"))
    with pytest.raises(ModelLoadError, match=f"probe 'Solve 2x \\+ 3 = 7.' to no tokens.*into {folder}"):
        load(str(folder))


def test_tokenizer_ids_beyond_the_vocabulary_are_refused(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from toolkit.organism.tokenizer import build_tokenizer

    config = Qwen3Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=256,
                         tie_word_embeddings=True, bos_token_id=None, eos_token_id=2, pad_token_id=0)
    Qwen3ForCausalLM(config).save_pretrained(tmp_path)
    build_tokenizer().save_pretrained(tmp_path)  # 104 tokens for a 64-row embedding
    with pytest.raises(ModelLoadError, match="64 token embeddings .* does not belong to these weights"):
        load(str(tmp_path))


def test_missing_or_broken_chat_template_is_refused(tiny_dirs, tmp_path):
    folder = _copy(tiny_dirs, tmp_path)
    (folder / "chat_template.jinja").unlink()
    config = json.loads((folder / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (folder / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(ModelLoadError, match="no chat template.*chat_template.jinja"):
        load(str(folder))
    (folder / "chat_template.jinja").write_text("{% for m in messages %}{{ m['content'] }{% endfor %}")
    with pytest.raises(ModelLoadError, match="chat template of .* fails on the probe prompt"):
        load(str(folder))


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_weights_are_named(tiny_dirs, tmp_path, bad):
    folder = _copy(tiny_dirs, tmp_path)
    weights = load_file(folder / "model.safetensors")
    name = "model.layers.1.self_attn.o_proj.weight"
    weights[name][3, 5] = bad
    save_file(weights, folder / "model.safetensors", metadata={"format": "pt"})
    with pytest.raises(ModelLoadError, match=f"{folder}.* not finite: {name} \\(64, 64\\)"):
        load(str(folder))


def test_check_loaded_serves_a_separate_loader(tiny_dirs):
    """The function training's fp32 loader calls: passes on a good model, names a NaN tensor."""
    from transformers import AutoModelForCausalLM

    source = str(tiny_dirs["qwen2"])
    hf = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, use_safetensors=True)
    tok = load_tokenizer(source)
    check_loaded(hf, tok, "qwen2-tiny", source)
    with torch.no_grad():
        hf.model.norm.weight[0] = float("nan")
    with pytest.raises(ModelLoadError, match="'qwen2-tiny' .* not finite: model.norm.weight"):
        check_loaded(hf, tok, "qwen2-tiny", source)


# ------------------------------------------------------------------------------------------- prompts
def test_a_string_where_a_list_of_prompts_is_expected_is_refused(m, tiny_dirs):
    other = load(str(tiny_dirs["qwen3"]), device="cpu")
    calls = {
        "generate": lambda: generate(m, "What is 1?", max_new_tokens=2),
        "chat_prompts": lambda: chat_prompts(m.tokenizer, "abc", False),
        "behave": lambda: behave(m, "What is 1?", max_new_tokens=2),
        "behave_tasks": lambda: causal.behave_tasks(m, {"a": "What?"}, max_new_tokens=1),
        "answer_nll": lambda: answer_nll(m, "ab", "cd"),
        "cmap": lambda: cmap.run(m, other, "What is 1?", max_new_tokens=2),
        "make_pairs": lambda: eap.make_pairs(m, "What is 1 + 1?", max_new_tokens=2),
        "from_token_lists": lambda: eap.Pairs.from_token_lists("abc", "abd"),
        "rim.encode": lambda: rim.encode(m.tokenizer, "ab", False),
        "rim.first_response": lambda: rim.first_response_sequences(m, "ab", False, outputs=["x", "y"]),
    }
    for name, call in calls.items():
        _refused(name, call, TypeError, "list of")
    with pytest.raises(TypeError, match=r"user_prompts\[1\] is a int"):
        generate(m, ["a", 3], max_new_tokens=2)
    for call in (lambda: generate(m, [], max_new_tokens=2),
                 lambda: behave(m, [], max_new_tokens=2),
                 lambda: rim.response_nll(m, [])):
        with pytest.raises(ValueError, match="no (prompts|sequences) given"):
            call()
    with pytest.raises(ValueError, match="completion 0 is empty"):
        answer_nll(m, ["a"], [""])
    with pytest.raises(ValueError, match="1 outputs for 2 prompts"):
        rim.first_response_sequences(m, ["a", "b"], False, outputs=["x"])


def test_prompts_longer_than_the_positions_are_refused(m, tiny_dirs):
    with pytest.raises(ValueError, match=r"prompt 1 .* is 225 tokens, and with max_new_tokens=40 it needs 265 "
                                         r"positions, more than the model's max_position_embeddings=256"):
        generate(m, ["hi", "9" * 200], max_new_tokens=40)
    assert len(generate(m, ["9" * 200], max_new_tokens=31)[0]) == 1  # 225 + 31 = 256 fits
    other = load(str(tiny_dirs["qwen3"]), device="cpu")
    long_ids = [[5] * 300]
    calls = {
        "behave": (ValueError, lambda: behave(m, [LONG], max_new_tokens=2)),
        "answer_nll": (ValueError, lambda: answer_nll(m, [LONG], ["1"])),
        "cmap": (ValueError, lambda: cmap.run(m, other, [LONG], max_new_tokens=2)),
        "cmap trajectories": (ValueError, lambda: cmap.run(m, other, PROMPTS[:1], teacher_forcing="clean",
                                                           trajectories=[[5] * 250])),
        "eap attribute": (eap.EAPError, lambda: eap.attribute(m, eap.Pairs.from_token_lists(long_ids, [[6] * 300]),
                                                              show_progress=False)),
        "eap exact": (eap.EAPError, lambda: eap.attribute(m, eap.Pairs.from_token_lists(long_ids, [[6] * 300]),
                                                          method="exact", show_progress=False)),
        "make_pairs": (eap.EAPError, lambda: eap.make_pairs(m, [type("Ex", (), {"prompt": "9" * 200})()],
                                                            corrupted_prompts=["8" * 200], max_new_tokens=64)),
        "attention_patterns": (iv.SiteError, lambda: iv.attention_patterns(m.bridge, torch.full((1, 300), 5), [0])),
        "rim": (ValueError, lambda: rim.neuron_activations(m, rim.encode(m.tokenizer, [LONG], False))),
        "continuation_logprob": (ValueError, lambda: causal.continuation_logprob(m.hf, [([5] * 300, [7])])),
    }
    for name, (error, call) in calls.items():
        _refused(name, call, error, "max_position_embeddings=256")


# ------------------------------------------------------------------------------------------- numeric options
@pytest.mark.parametrize("kwargs, error, match", [
    ({"max_new_tokens": 0}, ValueError, "max_new_tokens must be >= 1, got 0"),
    ({"max_new_tokens": -1}, ValueError, "max_new_tokens must be >= 1"),
    ({"max_new_tokens": 2.5}, TypeError, "max_new_tokens must be an integer, got 2.5"),
    ({"batch_size": 0}, ValueError, "batch_size must be >= 1, got 0"),
    ({"batch_size": -1}, ValueError, "batch_size must be >= 1"),
    ({"batch_size": 1.5}, TypeError, "batch_size must be an integer"),
    ({"seed": 1.5}, TypeError, "seed must be an integer"),
])
def test_generation_options_are_bounded(m, kwargs, error, match):
    with pytest.raises(error, match=match):
        generate(m, PROMPTS, **{"max_new_tokens": 2, **kwargs})


@pytest.mark.parametrize("kwargs, match", [
    ({"num_samples": 0}, "num_samples must be >= 1"),
    ({"do_sample": True, "num_samples": 0}, "num_samples must be >= 1"),
    ({"num_samples": 3}, "num_samples=3 needs do_sample=True"),
    ({"do_sample": True, "temperature": 0}, "temperature must be a finite number > 0"),
    ({"do_sample": True, "temperature": float("nan")}, "temperature must be a finite number > 0"),
    ({"do_sample": True, "top_p": 0}, r"top_p must be in \(0, 1\]"),
    ({"do_sample": True, "top_p": 1.5}, r"top_p must be in \(0, 1\]"),
    ({"do_sample": True, "top_k": -1}, "top_k must be >= 0"),
])
def test_sampling_settings_are_bounded(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SamplingConfig(**kwargs)
    config = SamplingConfig(do_sample=True)
    for key, value in kwargs.items():  # set after construction: generate validates again
        setattr(config, key, value)
    if kwargs.get("do_sample", False) is False:
        config.do_sample = False
    with pytest.raises(ValueError, match=match):
        config.validate()


def test_intervention_indices_and_factors(m):
    with pytest.raises(iv.SiteError, match="layer must be an integer, got 0.5"):
        iv.head(0.5, 1)
    with pytest.raises(iv.SiteError, match="head index must be an integer"):
        iv.head(0, 1.0)
    assert iv.head(np.int64(1), np.int64(2)) == iv.head(1, 2)
    with pytest.raises(iv.SiteError, match="layer -1 is out of range"):
        iv.head(-1, 0).validate(m.bridge)
    with pytest.raises(ValueError, match="finite"):
        with iv.scale(m.bridge, iv.mlp(0), float("nan")):
            pass
    ids = m.tokenizer(chat_prompts(m.tokenizer, PROMPTS[:1], False), return_tensors="pt")["input_ids"]
    with iv.record(m.bridge, iv.mlp(0)) as rec:
        clean = m.hf(ids).logits
    source = rec[iv.mlp(0)] * 3.0
    t = source.shape[1]
    for bad in ([t], [-t - 1], []):
        with pytest.raises(iv.SiteError, match=f"must index the source's {t} positions"):
            with iv.patch(m.bridge, iv.mlp(0), source, positions=bad):
                pass
    with pytest.raises(iv.SiteError, match="positions apply to a tensor source"):
        with iv.patch(m.bridge, iv.mlp(0), lambda part, start: part, positions=[0]):
            pass
    outs = []
    for positions in ([-1], [t - 1]):  # -1 is the source's last position
        with iv.patch(m.bridge, iv.mlp(0), source, positions=positions):
            outs.append(m.hf(ids).logits)
    torch.testing.assert_close(outs[0], outs[1])
    assert not torch.allclose(outs[0][0, -1], clean[0, -1])


def test_eap_options_are_bounded(m):
    pairs = eap.Pairs.from_token_lists([[5, 6, 7, 8], [5, 6, 9, 9]], [[5, 7, 7, 8], [5, 6, 8, 9]], [10, 11], [12, 13])
    for kwargs, error, match in [({"steps": 0}, eap.EAPError, "steps .* must be >= 1"),
                                 ({"steps": 2.5}, TypeError, "steps .* must be an integer"),
                                 ({"method": "eap", "steps": -1}, eap.EAPError, "steps .* must be >= 1"),
                                 ({"batch_size": 1.5}, TypeError, "batch_size must be an integer"),
                                 ({"batch_size": 0}, eap.EAPError, "batch_size must be >= 1")]:
        with pytest.raises(error, match=match):
            eap.attribute(m, pairs, show_progress=False, **kwargs)
    scores = eap.attribute(m, pairs, method="eap", metric="logit_diff", show_progress=False)
    with pytest.raises(TypeError, match="top_n must be an integer"):
        eap.select(scores, top_n=2.5)
    with pytest.raises(eap.EAPError, match="threshold is NaN"):
        eap.select(scores, threshold=float("nan"))
    with pytest.raises(eap.EAPError, match="n_edges must be a non-empty list"):
        eap.faithfulness_curve(m, pairs, scores, "10")
    with pytest.raises(eap.EAPError, match="level must be a finite"):
        eap.edges_for_recovery({"n_edges": [1], "recovered": [1.0]}, float("nan"))
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        eap.make_pairs(m, [type("Ex", (), {"prompt": "1+1"})()], corrupted_prompts=["1+2"], max_new_tokens=2.5)


def test_cmap_causal_and_rim_options_are_bounded(m, tiny_dirs):
    other = load(str(tiny_dirs["qwen3"]), device="cpu")
    with pytest.raises(ValueError, match="batch_size must be >= 1, got 0"):
        cmap.run(m, other, PROMPTS, max_new_tokens=2, batch_size=0)
    with pytest.raises(TypeError, match="max_new_tokens must be an integer"):
        cmap.run(m, other, PROMPTS, max_new_tokens=2.5)
    score = lambda r: torch.zeros(r * 2)  # noqa: E731
    with pytest.raises(ValueError, match="sets_per_batch must be >= 1, got 0"):
        causal.unit_set_scores(m.bridge, [[(0, 0)]], score, 2, sets_per_batch=0)
    with pytest.raises(ValueError, match="factor must be finite"):
        causal.unit_set_scores(m.bridge, [[(0, 0)]], score, 2, factor=float("nan"))
    with pytest.raises(ValueError, match="repeat must be >= 1, got 0"):
        causal.continuation_logprob(m.hf, [([5, 6], [7])], repeat=0)
    with pytest.raises(TypeError, match="k must be an integer"):
        rim.top_heads(np.zeros((2, 2, 4)), 2.5)
    with pytest.raises(ValueError, match="n_sets must be in 1..2"):
        rim.select_safety_neurons(np.zeros((2, 1, 4)), np.zeros((2, 1, 4)), 1, 3)


# ------------------------------------------------------------------------------------------- exact memory
class _PeakRSS:
    """The process's resident-memory peak above its start, sampled in a thread."""

    def __enter__(self):
        import psutil

        self.proc = psutil.Process()
        try:  # hand freed heap pages back first, so that the run's allocations show in the resident memory
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        except OSError:
            pass
        self.start = self.peak = self.proc.memory_info().rss
        self.stop = threading.Event()

        def loop():
            while not self.stop.is_set():
                self.peak = max(self.peak, self.proc.memory_info().rss)
                time.sleep(0.0005)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()
        return self

    def __exit__(self, *exc):
        self.stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)
        self.extra = self.peak - self.start


def test_exact_memory_estimate_covers_the_measured_peak(m):
    b, p = 4, 60
    gen = torch.Generator().manual_seed(0)
    clean = torch.randint(5, 100, (b, p), generator=gen)
    corrupted = clean.clone()
    corrupted[:, 0] = (corrupted[:, 0] + 7) % 90 + 5
    pairs = eap.Pairs.from_token_lists(clean.tolist(), corrupted.tolist(), [10] * b, [11] * b)
    est = memory.estimate_memory(m, b, p, "exact")
    with _PeakRSS() as peak:
        eap.attribute(m, pairs, method="exact", batch_size=b, show_progress=False)
    assert est["rows"] == 256  # 64 copies of the 4 pairs per patched forward
    assert peak.extra <= est["total"] <= 4 * peak.extra, (peak.extra / 2**20, est["total"] / 2**20)
    assert est["total"] > 10 * memory.estimate_memory(m, b, p, "eap-ig")["total"]  # the old estimate's blind spot


def test_exact_memory_guard_says_what_to_change(m, monkeypatch):
    monkeypatch.setattr(memory, "_available_bytes", lambda device: 200 * 2**20)
    with pytest.raises(MemoryError, match="exact patches about 256 rows .* even batch_size=1 does not fit: use "
                                          "shorter pairs, or method='eap-ig'"):
        memory.check_memory(m, 8, 200, "exact")
    with pytest.raises(MemoryError, match="use batch_size=[0-9]+ or less"):
        memory.check_memory(m, 64, 200, "eap-ig")
