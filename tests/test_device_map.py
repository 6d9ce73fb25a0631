"""``models.load(device_map=...)`` and the EAP memory check of a model split across devices, on CPU.

No GPU here: the refusals run as they would on a CPU-only machine; the pass-through and the per-device arithmetic run
with CUDA faked (``torch.cuda.is_available``/``device_count`` patched, a fake ``hf_device_map``, fake free memory).
"""

import pytest
import torch

from toolkit.core import models
from toolkit.core.models import ModelLoadError, load
from toolkit.methods.eap import memory
from toolkit.organism.tiny import tiny_model_dir

GIB = 2**30


@pytest.fixture
def fake_cuda(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda i=0: (3 * GIB, 80 * GIB))


def test_device_map_on_a_cpu_only_machine_is_refused_before_loading(tiny_dirs, no_loading, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    for device_map in ("auto", {"": 0}):
        with pytest.raises(ModelLoadError, match=r"device_map=.* splits a model across CUDA GPUs, but this machine has "
                                                 r"none .*drop device_map to load the model whole on the CPU"):
            load(str(tiny_dirs["qwen3"]), device_map=device_map)
    with pytest.raises(ModelLoadError, match="device_map='auto' splits"):  # checked before the spec is even resolved
        load("/no/such/model", device_map="auto")


def test_device_map_with_an_explicit_device_is_refused(tiny_dirs, no_loading):
    for device in ("cpu", "cuda:0"):
        with pytest.raises(ModelLoadError, match=f"device_map='auto' and device='{device}' both say where the model "
                                                 "goes.*pass one of them"):
            load(str(tiny_dirs["qwen3"]), device=device, device_map="auto")


def test_bad_device_maps_are_refused_with_the_fix(tiny_dirs, no_loading, fake_cuda):
    cases = [("fast", "not a placement strategy; use one of auto, balanced"),
             (3, "must be a strategy .* or a non-empty dict"),
             ({}, "must be a strategy .* or a non-empty dict"),
             ({"model.embed_tokens": 0, "model.layers.1": "cpu"},
              r"device_map\['model.layers.1'\] = 'cpu' is not a GPU of this machine \(it has 2: 0..1\)"),
             ({"": 5}, r"device_map\[''\] = 5 is not a GPU of this machine"),
             ({"lm_head": "disk"}, "refuses a model split between GPUs and CPU/disk"),
             ({"lm_head": True}, "is not a GPU")]
    for device_map, message in cases:
        with pytest.raises(ModelLoadError, match=message):
            load(str(tiny_dirs["qwen3"]), device_map=device_map)


def _recording_from_pretrained(monkeypatch, placed: dict | None = None) -> list:
    """Patch from_pretrained to record its device_map, load on the CPU without it, and give the model ``placed`` as
    its ``hf_device_map`` (what accelerate sets on a model it dispatched across devices)."""
    real = models.AutoModelForCausalLM.from_pretrained
    seen = []

    def fake(source, **kwargs):
        seen.append(kwargs.pop("device_map", None))
        hf = real(source, **kwargs)
        if placed is not None:
            hf.hf_device_map = placed
        return hf

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", fake)
    return seen


def test_device_map_reaches_from_pretrained_and_the_model_is_not_moved(tiny_dirs, fake_cuda, monkeypatch):
    seen = _recording_from_pretrained(monkeypatch)
    m = load(str(tiny_dirs["qwen3"]), device_map={"": 0}, dtype=torch.float32)
    assert seen == [{"": 0}]
    # resolve_device("auto") says cuda here (faked); a .to("cuda") would have failed on this CPU-only torch
    assert next(m.hf.parameters()).device.type == "cpu" and m.bridge.cfg.device == "cpu"
    with torch.no_grad():
        assert m.bridge(torch.tensor([[5, 6, 7]])).shape == (1, 3, 128)


def test_a_model_auto_offloaded_to_cpu_is_refused_after_loading(tiny_dirs, fake_cuda, monkeypatch):
    _recording_from_pretrained(monkeypatch, {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": "cpu",
                                             "model.norm": "disk", "lm_head": 0})
    with pytest.raises(ModelLoadError, match=r"device_map='auto' put 2 modules of .* on CPU/disk \(model.layers.1, "
                                             r"model.norm\): it does not fit on the GPUs \(cuda:0 3.0 GiB free; "
                                             r"cuda:1 3.0 GiB free\)"):
        load(str(tiny_dirs["qwen3"]), device_map="auto", dtype=torch.float32)


# ---- the memory estimate of a split model ------------------------------------------------------------------------

SPLIT = {"model.embed_tokens": 0, "model.layers.0": 0, "model.layers.1": 0, "model.layers.2": 1,
         "model.layers.3": "cuda:1", "model.norm": 1, "model.rotary_emb": 1, "lm_head": 1}


@pytest.fixture(scope="module")
def four_layers(tmp_path_factory):
    return load(str(tiny_model_dir("qwen3", tmp_path_factory.mktemp("four") / "m", n_layers=4)))


def _split(m, monkeypatch, placed: dict):
    monkeypatch.setattr(m.hf, "hf_device_map", placed, raising=False)
    return m


def test_estimate_gives_each_device_the_layers_it_holds(four_layers, monkeypatch):
    whole = memory.estimate_memory(four_layers, 4, 60, "eap-ig")
    assert "per_device" not in whole
    m = _split(four_layers, monkeypatch, SPLIT)
    est = memory.estimate_memory(m, 4, 60, "eap-ig")
    dev = est["per_device"]
    assert list(dev) == ["cuda:0", "cuda:1"] and est["total"] == sum(dev.values())
    # both devices hold a layer, so one layer's target gradients are counted twice; everything else once
    assert abs(est["total"] - whole["total"] - 1.25 * whole["target_gradients"]) <= 2
    # two layers each; cuda:0 also holds Δa and the embeddings (b·p·d fp32, clean and corrupted), cuda:1 the logits
    b, p, d, vocab = 4, 60, 64, 128
    expected = 1.25 * (whole["deltas"] + 2 * b * p * d * 4 - 2 * b * vocab * 4)
    assert abs(dev["cuda:0"] - dev["cuda:1"] - expected) <= 2
    # moving one layer moves exactly one layer's share
    moved = memory.estimate_memory(_split(m, monkeypatch, SPLIT | {"model.layers.2": 0}), 4, 60, "eap-ig")
    shift = moved["per_device"]["cuda:0"] - dev["cuda:0"]
    assert shift > 0 and abs(dev["cuda:1"] - moved["per_device"]["cuda:1"] - shift) <= 2
    exact = memory.estimate_memory(_split(m, monkeypatch, SPLIT), 4, 60, "exact")
    # the differences of every source and their permuted copy live with the embeddings (and the repeated and
    # recorded embeddings); the logits with lm_head
    extra = 2 * exact["differences"] + (exact["rows"] + 2 * b) * p * d * 4 - 2 * b * vocab * 4
    assert abs(exact["per_device"]["cuda:0"] - exact["per_device"]["cuda:1"] - 1.5 * extra) <= 2


def _free(monkeypatch, **gib):
    monkeypatch.setattr(memory, "_available_bytes", lambda device: int(gib[str(device).replace(":", "")] * GIB))


def test_check_memory_names_the_device_and_the_batch_size_that_fits(four_layers, monkeypatch):
    m = _split(four_layers, monkeypatch, SPLIT)
    b, p = 64, 200
    need = memory.estimate_memory(m, b, p, "eap-ig")["per_device"]
    _free(monkeypatch, cuda0=need["cuda:0"] / GIB / 0.8, cuda1=need["cuda:1"] / GIB / 0.8)
    memory.check_memory(m, b, p, "eap-ig")  # both fit
    _free(monkeypatch, cuda0=need["cuda:0"] / GIB / 0.8, cuda1=need["cuda:1"] / GIB / 3)
    with pytest.raises(MemoryError, match=r"on cuda:1 \(layers 2-3, lm_head\) but only .* GiB is available "
                                          r"there; use batch_size=(\d+) or less") as err:
        memory.check_memory(m, b, p, "eap-ig")
    fit = int(err.value.args[0].split("batch_size=")[-1].split()[0])
    budget = 0.9 * need["cuda:1"] / 3
    assert memory.estimate_memory(m, fit, p, "eap-ig")["per_device"]["cuda:1"] <= budget
    assert memory.estimate_memory(m, fit + 1, p, "eap-ig")["per_device"]["cuda:1"] > budget
    _free(monkeypatch, cuda0=need["cuda:0"] / GIB / 10, cuda1=100)
    with pytest.raises(MemoryError, match=r"on cuda:0 \(embeddings, layers 0-1\).*device_map='balanced_low_0'"):
        memory.check_memory(m, b, p, "eap-ig")


def test_check_memory_names_the_sequence_length_that_fits_at_batch_size_1(four_layers, monkeypatch):
    p = 200
    one = memory.estimate_memory(four_layers, 1, p, "eap-ig")["total"]  # one device
    monkeypatch.setattr(memory, "_available_bytes", lambda device: int(one / 2))
    with pytest.raises(MemoryError, match=r"even batch_size=1 does not fit: use shorter pairs; at batch_size=1, pairs "
                                          r"of at most (\d+) tokens fit") as err:
        memory.check_memory(four_layers, 8, p, "eap-ig")
    fit = int(err.value.args[0].split("at most ")[-1].split()[0])
    assert 1 <= fit < p
    assert memory.estimate_memory(four_layers, 1, fit, "eap-ig")["total"] <= 0.9 * one / 2
    assert memory.estimate_memory(four_layers, 1, fit + 1, "eap-ig")["total"] > 0.9 * one / 2
