"""Loading: the one path for organism, local folders and hub names, and its errors."""

import json
import shutil

import pytest
import torch

from toolkit.core import models
from toolkit.core.models import ModelLoadError, load


def test_bridge_logits_equal_hf_logits(tiny):
    ids = tiny.tokenizer(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(tiny.bridge(ids), tiny.hf(ids).logits)
    assert tiny.bridge.cfg.n_key_value_heads < tiny.bridge.cfg.n_heads  # GQA is exercised


def test_the_character_tokenizer_survives_both_architectures(tiny):
    ids = tiny.tokenizer.encode("x = -14", add_special_tokens=False)
    assert tiny.tokenizer.decode(ids) == "x = -14" and len(ids) == 7


def test_both_architectures_load(tiny_dirs):
    assert json.loads((tiny_dirs["qwen2"] / "config.json").read_text())["model_type"] == "qwen2"
    assert json.loads((tiny_dirs["qwen3"] / "config.json").read_text())["model_type"] == "qwen3"


def test_unknown_hub_name_offline_suggests_the_organism():
    with pytest.raises(ModelLoadError, match="organism"):
        load("nobody/such-model-xyz")


def test_missing_folder_is_a_clear_error(tmp_path):
    with pytest.raises(ModelLoadError, match="does not exist"):
        load(str(tmp_path / "nowhere"))


def test_folder_without_safetensors_is_refused(tmp_path, tiny_dirs):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dirs["qwen3"], folder)
    (folder / "model.safetensors").rename(folder / "pytorch_model.bin")
    with pytest.raises(ModelLoadError, match="safetensors"):
        load(str(folder))


def test_corrupt_weights_are_a_clear_error(tmp_path, tiny_dirs):
    folder = tmp_path / "m"
    shutil.copytree(tiny_dirs["qwen3"], folder)
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(ModelLoadError, match="cannot load weights"):
        load(str(folder))


def test_unsupported_architecture_is_named(tmp_path):
    from transformers import GPT2Config, GPT2LMHeadModel

    GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=16, n_head=2, vocab_size=50)).save_pretrained(tmp_path)
    with pytest.raises(ModelLoadError, match="architecture 'gpt2'; supported: qwen2, qwen3"):
        load(str(tmp_path))


def test_missing_organism_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_DATA", str(tmp_path))
    with pytest.raises(ModelLoadError, match="build-organism"):
        load("organism")


def test_organism_hash_mismatch_warns(tmp_path, monkeypatch, tiny_dirs):
    folder = tmp_path / "organism"
    shutil.copytree(tiny_dirs["qwen3"], folder)
    (folder / "recipe.json").write_text(json.dumps({"recipe_hash": "0000"}))
    monkeypatch.setenv("TOOLKIT_DATA", str(tmp_path))
    with pytest.warns(UserWarning, match="recipe 0000"):
        models.resolve("organism")


def test_cpu_default_is_fp32():
    assert models.default_dtype(torch.device("cpu")) == torch.float32
    assert models.default_dtype(torch.device("cuda")) == torch.bfloat16
