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


# ---- one model argument: a LoadedModel (or a spec) everywhere; the hook operations also take its bridge ----------

def test_a_bare_hf_model_given_to_behave_is_a_type_error_naming_the_parameter(tiny):
    from toolkit.evaluation.behaviour import answer_nll, behave

    kind = type(tiny.hf).__name__  # Qwen2ForCausalLM / Qwen3ForCausalLM
    with pytest.raises(TypeError, match=rf"behave: model must be a LoadedModel or a model spec \(str\), got {kind}; "
                                        r"load it with toolkit.load"):
        behave(tiny.hf, ["What is 1 + 1?"], max_new_tokens=2)
    with pytest.raises(TypeError, match=rf"answer_nll: model must be a LoadedModel .* got {kind}"):
        answer_nll(tiny.hf, ["a"], ["b"])
    from toolkit.core.generation import generate

    with pytest.raises(TypeError, match=rf"generate: model must be a LoadedModel .* got {kind}"):
        generate(tiny.hf, ["What is 1 + 1?"], max_new_tokens=2)


def test_a_bridge_where_a_spec_is_expected_is_a_type_error_naming_the_parameter(tiny):
    from toolkit.evaluation.behaviour import behave
    from toolkit.methods import cmap, eap

    calls = {"behave: model": lambda: behave(tiny.bridge, ["What is 1 + 1?"]),
             "eap.attribute: loaded": lambda: eap.attribute(tiny.bridge, None),
             "eap.make_pairs: loaded": lambda: eap.make_pairs(tiny.bridge, []),
             "eap.faithfulness: loaded": lambda: eap.faithfulness(tiny.bridge, None, None),
             "cmap.run: clean": lambda: cmap.run(tiny.bridge, tiny, ["What is 1 + 1?"]),
             "cmap.run: corrupted": lambda: cmap.run(tiny, 7, ["What is 1 + 1?"])}
    for param, call in calls.items():
        with pytest.raises(TypeError, match=rf"^{param} must be a LoadedModel or a model spec \(str\), got "
                                            r"(TransformerBridge|int);"):
            call()


def test_an_int_given_to_a_hook_operation_is_a_type_error_naming_the_parameter(tiny):
    from toolkit.core import interventions as iv

    site = iv.head(1, 0)
    calls = {"ablate": lambda: iv.ablate(3, site), "scale": lambda: iv.scale(3, site, 0.5),
             "record": lambda: iv.record(3, site), "patch": lambda: iv.patch(3, site, lambda part, start: part),
             "attention_patterns": lambda: iv.attention_patterns(3, torch.zeros(1, 2, dtype=torch.long), [0])}
    for op, call in calls.items():
        with pytest.raises(TypeError, match=rf"^{op}: model must be a LoadedModel or a TransformerBridge, got int;"):
            with call():
                pass
    unhooked = models.LoadedModel.unhooked(tiny.hf, tiny.tokenizer)
    with pytest.raises(TypeError, match="ablate: model must be .*, got a LoadedModel without a bridge"):
        iv.ablate(unhooked, site)


def test_the_hook_operations_take_the_loaded_model_as_they_take_its_bridge(tiny):
    from toolkit.core import interventions as iv

    ids = tiny.tokenizer(["What is 12 + 7?"], return_tensors="pt", add_special_tokens=False)["input_ids"]
    site = iv.head(1, 0)
    with iv.record(tiny.bridge, iv.mlp(0)) as by_bridge, iv.ablate(tiny.bridge, site):
        want = tiny.hf(ids).logits
    with iv.record(tiny, iv.mlp(0)) as by_loaded, iv.ablate(tiny, site):
        got = tiny.hf(ids).logits
    torch.testing.assert_close(got, want, rtol=0, atol=0)
    torch.testing.assert_close(by_loaded[iv.mlp(0)], by_bridge[iv.mlp(0)], rtol=0, atol=0)
    assert models.bridge_of(tiny, "x") is tiny.bridge is models.bridge_of(tiny.bridge, "x")


def test_as_loaded_loads_a_spec_and_passes_a_loaded_model_through(tiny_dirs):
    from toolkit.evaluation.behaviour import behave

    spec = str(tiny_dirs["qwen3"])
    loaded = models.as_loaded(spec, "x")  # the default device, as behave(spec) loads it
    assert isinstance(loaded, models.LoadedModel) and loaded.spec == spec
    assert models.as_loaded(loaded, "x") is loaded
    unhooked = models.LoadedModel.unhooked(loaded.hf, loaded.tokenizer)  # a model in training: behave needs no bridge
    prompts = ["What is 1 + 1?", "Reverse the word: cat"]
    assert behave(unhooked, prompts, max_new_tokens=4).completions == \
        behave(loaded, prompts, max_new_tokens=4).completions == behave(spec, prompts, max_new_tokens=4).completions


def test_site_helpers_take_a_loaded_model_or_its_bridge_and_refuse_anything_else(tiny):
    from toolkit.core.interventions import head, layer_sites
    from toolkit.evaluation import causal
    from toolkit.methods import cmap

    assert layer_sites(tiny, "attn") == layer_sites(tiny.bridge, "attn")
    assert cmap.head_sweep(tiny, [0]) == cmap.head_sweep(tiny.bridge, [0]) == [head(0, h) for h in range(4)]
    assert head(0, 1).validate(tiny) == head(0, 1)
    for call, name in ((lambda: layer_sites(3, "attn"), "layer_sites: model"),
                       (lambda: cmap.layer_sweep(tiny.hf, "mlp"), "layer_sites: model"),
                       (lambda: causal.run(tiny.hf, [], lambda c: 0), "causal.run: model")):
        with pytest.raises(TypeError, match=f"{name} must be a LoadedModel or a TransformerBridge"):
            call()


@pytest.mark.parametrize("spec, label", [
    ("/home/u/ckpt/qwen3-1.7b-sft", "qwen3-1.7b-sft"), ("/home/u/ckpt/qwen3-1.7b-sft/", "qwen3-1.7b-sft"),
    ("./runs/my-model", "my-model"), ("Qwen/Qwen3-8B", "Qwen3-8B"), ("organism-base", "organism-base"),
    ("organism@3", "organism@3"), ("random:organism", "random:organism"), ("random:/a/b/qwen", "random:qwen"),
    ("random:Qwen/Qwen3-8B", "random:Qwen3-8B")])
def test_short_label_drops_paths_and_owners(spec, label):
    assert models.short_label(spec) == label and "/" not in label


def test_label_and_repr_of_a_loaded_model(tiny, tiny_dirs):
    arch = tiny.hf.config.model_type
    assert tiny.label == tiny_dirs[arch].name and "/" not in tiny.label
    cfg, n = tiny.hf.config, sum(p.numel() for p in tiny.hf.parameters())
    line = repr(tiny)
    assert "\n" not in line and str(tiny_dirs[arch]) not in line  # one line, the label and not the path
    assert line == (f"LoadedModel({tiny.label}: {arch}, {cfg.num_hidden_layers} layers, {cfg.num_attention_heads}/"
                    f"{cfg.num_key_value_heads} heads (q/kv), {n / 1e3:.1f}K parameters, cpu, float32)")


def test_paired_models_are_derived_only_for_the_organism():
    from toolkit.core.specs import derive_base_model, derive_teacher
    assert derive_base_model("organism") == "organism-base" and derive_base_model("organism@3") == "organism-base@3"
    assert derive_base_model("random:organism") == "random:organism-base"
    assert derive_base_model("/ckpt/sft", "/ckpt/base") == "/ckpt/base"
    assert derive_teacher("organism-base@2") == "organism@2" and derive_teacher("random:organism-base") == "organism"
    assert derive_teacher("Qwen/Qwen3-0.6B", "Qwen/Qwen3-8B") == "Qwen/Qwen3-8B"
    with pytest.raises(ModelLoadError, match=r"model='/ckpt/sft' is not the organism, so base_model cannot be "
                                             r"derived: pass base_model="):
        derive_base_model("/ckpt/sft")
    with pytest.raises(ModelLoadError, match="is not the organism, so base_model"):
        derive_base_model("organism-base")
    with pytest.raises(ModelLoadError, match=r"model='Qwen/Qwen3-0.6B' is not the organism's base, so teacher"):
        derive_teacher("Qwen/Qwen3-0.6B")
