"""Faults at load that used to be blamed on the wrong cause (issue 32, case 5): a folder with an unknown model_type or
custom code (``auto_map``) was said to fail "while offline"; ``device_map="bogus"`` and ``{"": "cpu"}`` were said to
split the model across CUDA GPUs; ``device="cuda"`` on a machine without one failed deep in torch. Each message must
name the real cause, the value and the fix. Nothing is fetched from the hub; nothing here needs a GPU."""

import json
import shutil

import pytest
import torch
import transformers

from toolkit.core import models
from toolkit.core.models import ModelLoadError, load, load_config
from toolkit.training.sft import load_for_training

CUSTOM_CODE = {"AutoConfig": "configuration_foo.FooConfig", "AutoModelForCausalLM": "modeling_foo.FooForCausalLM"}


@pytest.fixture
def cpu_only(monkeypatch):
    """This machine as a CPU-only one, whatever it really has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 0)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)


def _folder(tmp_path, tiny_dirs, name: str, **config):
    """A copy of the tiny Qwen3 whose config.json is updated with ``config`` (``None`` removes a key)."""
    folder = tmp_path / name
    shutil.copytree(tiny_dirs["qwen3"], folder)
    fields = json.loads((folder / "config.json").read_text())
    fields.update(config)
    (folder / "config.json").write_text(json.dumps({k: v for k, v in fields.items() if v is not None}))
    return folder


def _message(call) -> str:
    with pytest.raises(ModelLoadError) as err:
        call()
    text = str(err.value)
    assert "offline" not in text.lower() and "HF_HUB_OFFLINE" not in text, text
    return text


# ---- wrong causes: the config ------------------------------------------------------------------------------------

def test_an_unknown_model_type_names_the_folder_the_type_and_the_transformers_version(tmp_path, tiny_dirs,
                                                                                      no_loading):
    folder = _folder(tmp_path, tiny_dirs, "unknown", model_type="foo_bar_model")
    text = _message(lambda: load(str(folder)))
    assert f"model folder {folder}" in text and "model_type 'foo_bar_model'" in text
    assert f"transformers {transformers.__version__} does not know" in text
    assert "Qwen2, Qwen2.5 or Qwen3" in text and "qwen2 or qwen3" in text and str(folder / "config.json") in text
    missing = _folder(tmp_path, tiny_dirs, "untyped", model_type=None)
    assert "has no model_type" in _message(lambda: load(str(missing)))


def test_custom_code_is_named_as_the_cause_and_never_run(tmp_path, tiny_dirs, no_loading):
    for name, model_type in (("custom", "foo_bar_model"), ("custom-untyped", None)):
        folder = _folder(tmp_path, tiny_dirs, name, model_type=model_type, auto_map=CUSTOM_CODE)
        (folder / "modeling_foo.py").write_text("raise SystemExit('custom code ran')\n")
        text = _message(lambda folder=folder: load(str(folder)))
        assert f"the config.json of model folder {folder} asks for custom (remote) code" in text
        assert "AutoConfig, AutoModelForCausalLM" in text and "trust_remote_code is never enabled" in text
        assert "Qwen2, Qwen2.5 or Qwen3 checkpoint in transformers' own format" in text and "no auto_map" in text
    # an auto_map beside a model_type transformers knows is ignored: the folder loads with transformers' own classes
    known = _folder(tmp_path, tiny_dirs, "known", auto_map=CUSTOM_CODE)
    assert load_config(str(known)).model_type == "qwen3"


def test_custom_code_of_a_cached_hub_model_is_named_too(tmp_path, tiny_dirs, no_loading, monkeypatch):
    import huggingface_hub

    folder = _folder(tmp_path, tiny_dirs, "cached", model_type="foo_bar_model", auto_map=CUSTOM_CODE)
    monkeypatch.setattr(huggingface_hub, "try_to_load_from_cache", lambda repo, name: str(folder / name))
    text = _message(lambda: load("someone/custom-model"))
    assert f"model 'someone/custom-model' (cached at {folder / 'config.json'})" in text and "custom (remote)" in text


def test_offline_is_blamed_only_for_a_hub_name_missing_from_the_cache(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelLoadError, match=r"while offline \(HF_HUB_OFFLINE=1\), and it is not in the local "
                                             r"Hugging Face cache.*\nUse model='organism'"):
        load("nobody/such-model-xyz")
    text = _message(lambda: load("not a hub name!"))  # neither a folder nor a repo id: not an offline problem
    assert text.startswith("cannot load model 'not a hub name!': ") and "model='organism'" in text


def test_a_config_json_that_does_not_parse_is_named(tmp_path, tiny_dirs, no_loading):
    folder = _folder(tmp_path, tiny_dirs, "garbled")
    (folder / "config.json").write_text("{not json")
    assert f"the config.json of model folder {folder} does not parse" in _message(lambda: load(str(folder)))


# ---- wrong causes: device_map ------------------------------------------------------------------------------------

def test_an_unknown_strategy_is_named_whatever_the_machine(tiny_dirs, no_loading, cpu_only):
    text = _message(lambda: load(str(tiny_dirs["qwen3"]), device_map="bogus"))
    assert text.startswith("device_map='bogus' is not a placement strategy; use one of auto, balanced")
    assert "CUDA" not in text
    for bad in (3, {}):
        assert "must be a strategy" in _message(lambda bad=bad: load(str(tiny_dirs["qwen3"]), device_map=bad))


def test_a_map_of_everything_to_the_cpu_loads_the_whole_model_on_the_cpu(tiny_dirs, cpu_only, monkeypatch):
    real, seen = models.AutoModelForCausalLM.from_pretrained, []

    def recording(source, **kwargs):
        seen.append(kwargs.get("device_map"))
        return real(source, **kwargs)

    monkeypatch.setattr(models.AutoModelForCausalLM, "from_pretrained", recording)
    for device_map in ({"": "cpu"}, {"": torch.device("cpu")}):
        m = load(str(tiny_dirs["qwen3"]), device_map=device_map)
        assert {p.device.type for p in m.hf.parameters()} == {"cpu"} and m.bridge.cfg.device == "cpu"
        assert next(m.hf.parameters()).dtype == torch.float32  # as device="cpu"
        assert getattr(m.hf, "hf_device_map", None) is None
    assert seen == [None, None]  # from_pretrained loads it as any whole model, not dispatched


def test_cpu_or_disk_offload_beside_gpus_is_refused_as_offload(tiny_dirs, no_loading, cpu_only):
    text = _message(lambda: load(str(tiny_dirs["qwen3"]), device_map={"model.embed_tokens": 0, "lm_head": "cpu"}))
    assert text.startswith("device_map['lm_head'] = 'cpu' is not a GPU of this machine (it has none): offloading "
                           "modules to CPU is not supported")
    assert "refuses a model split between GPUs and CPU/disk" in text and "device='cpu'" in text
    assert "offloading modules to disk" in _message(lambda: load(str(tiny_dirs["qwen3"]), device_map={"": "disk"}))
    assert "names no device" in _message(lambda: load(str(tiny_dirs["qwen3"]), device_map={"": "meta"}))


# ---- wrong causes: device ----------------------------------------------------------------------------------------

@pytest.mark.parametrize("device, expected", [
    ("cuda", "device='cuda' names a CUDA GPU, but this machine has no CUDA GPU"),
    ("cuda:0", "device='cuda:0' names a CUDA GPU, but this machine has no CUDA GPU"),
    ("mps", "device='mps' names Apple MPS, which this machine does not have"),
    ("banana", "device='banana' is not a device: use 'auto', 'cpu', 'cuda', 'cuda:N'"),
    ("meta", "device='meta' is not a device the toolkit loads models on"),
])
def test_a_device_this_machine_lacks_is_refused_before_loading(tiny_dirs, no_loading, cpu_only, device, expected):
    text = _message(lambda: load(str(tiny_dirs["qwen3"]), device=device))
    assert text.startswith(expected), text
    if device != "banana":
        assert text.endswith("use device='auto' (a CUDA GPU if there is one, else the CPU) or device='cpu'")
    assert "only the CPU" in text


def test_a_gpu_index_past_the_last_gpu_names_the_gpus(tiny_dirs, no_loading, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    text = _message(lambda: load(str(tiny_dirs["qwen3"]), device="cuda:5"))
    assert "this machine has 2 CUDA GPUs (cuda:0..cuda:1)" in text and text.endswith("or one of cuda:0..cuda:1")


def test_training_resolves_its_device_the_same_way(tiny_dirs, no_loading, cpu_only):
    assert "names a CUDA GPU" in _message(lambda: load_for_training(str(tiny_dirs["qwen3"]), device="cuda"))
