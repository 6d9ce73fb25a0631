"""Faults of the organism build and its recipe check: the hash covers the training loop, a stale-recipe warning is
printed once per load, and a damaged stage checkpoint is reported, removed and trained again."""

import json
import shutil
import warnings

import pytest
import torch

from toolkit.core import models
from toolkit.organism import recipe as recipe_module
from toolkit.organism.build import MODEL_FILE, OPTIM_FILE, STATE_JSON, train_stage
from toolkit.organism.recipe import QUICK, Recipe, recipe_hash
from toolkit.organism.tokenizer import build_tokenizer

SMALL = {**QUICK, "checkpoint_every": 3, "d_model": 32, "d_mlp": 64, "head_dim": 8, "n_layers": 2}


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _fresh(recipe):
    from transformers import Qwen3ForCausalLM

    torch.manual_seed(recipe.seed)
    return Qwen3ForCausalLM(recipe.model_config())


@pytest.mark.parametrize("old, new, changes", [
    ("betas=(0.9, 0.95)", "betas=(0.9, 0.99)", True),                      # AdamW's betas
    ("clip_grad_norm_(model.parameters(), 1.0)", "clip_grad_norm_(model.parameters(), 0.5)", True),  # clipping
    ("        loss.backward()\n", "        # a note\n        loss.backward()  \n", False),  # a comment, spaces
    ('STATE_JSON, MODEL_FILE, OPTIM_FILE = "state.json"', 'STATE_JSON, MODEL_FILE, OPTIM_FILE = "st.json"', False),
])
def test_the_recipe_hash_covers_the_training_loop_not_its_comments_or_saving(tmp_path, monkeypatch, old, new,
                                                                              changes):
    source = recipe_module.BUILD_FILE.read_text()
    assert source.count(old) == 1, old
    edited = tmp_path / "build.py"
    edited.write_text(source.replace(old, new))
    before = recipe_hash(Recipe())
    monkeypatch.setattr(recipe_module, "BUILD_FILE", edited)
    assert (recipe_hash(Recipe()) != before) is changes


def test_a_renamed_training_definition_is_an_error_not_a_silent_gap(tmp_path, monkeypatch):
    edited = tmp_path / "build.py"
    edited.write_text(recipe_module.BUILD_FILE.read_text().replace("def train_stage(", "def train_one_stage("))
    monkeypatch.setattr(recipe_module, "BUILD_FILE", edited)
    with pytest.raises(RuntimeError, match=r"no longer defines \['train_stage'\]; update recipe.TRAINING_CODE"):
        recipe_hash(Recipe())


def test_a_stale_recipe_warns_once_per_load_not_once_per_lookup(tmp_path, monkeypatch, tiny_dirs):
    folder = tmp_path / "organism"
    shutil.copytree(tiny_dirs["qwen3"], folder)
    (folder / "recipe.json").write_text(json.dumps({"recipe_hash": "0000"}))
    monkeypatch.setenv("TOOLKIT_DATA", str(tmp_path))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        models.load("organism", device="cpu")
    stale = [str(w.message) for w in caught if "built by recipe 0000" in str(w.message)]
    assert len(stale) == 1, stale
    assert "training code" in stale[0] and "build-organism" in stale[0]


@pytest.mark.parametrize("damage", ["truncated-weights", "bad-json", "missing-optimizer", "other-model"])
def test_a_damaged_stage_checkpoint_is_reported_removed_and_trained_again(tmp_path, tok, damage):
    """The build repairs its own stage checkpoint like the other caches: the damaged state is named, removed, and the
    stage trains from its start to the same weights as a run that was never interrupted."""
    recipe = Recipe(**SMALL)
    straight = _fresh(recipe)
    train_stage(straight, tok, recipe, 6, 0.5, set(), tmp_path / "a", "s", seed=5)

    work = tmp_path / "b"
    train_stage(_fresh(recipe), tok, recipe, 3, 0.5, set(), work, "s", seed=5)  # leaves the state of step 3
    state = work / "s"
    if damage == "truncated-weights":
        (state / MODEL_FILE).write_bytes((state / MODEL_FILE).read_bytes()[:100])
    elif damage == "bad-json":
        (state / STATE_JSON).write_text("{")
    elif damage == "missing-optimizer":
        (state / OPTIM_FILE).unlink()
    else:  # a state left by a build of another shape
        other = Recipe(**{**SMALL, "d_model": 16, "head_dim": 4})
        shutil.rmtree(state)
        train_stage(_fresh(other), tok, other, 3, 0.5, set(), work, "s", seed=5)

    again = _fresh(recipe)
    with pytest.warns(UserWarning, match=rf"the build checkpoint {state} is damaged .*removed it, so this stage "
                                         "trains again from its start"):
        train_stage(again, tok, recipe, 6, 0.5, set(), work, "s", seed=5)
    for (name, p), q in zip(straight.named_parameters(), again.parameters()):
        assert torch.equal(p, q), f"{name} differs after the repair"
    assert json.loads((state / STATE_JSON).read_text())["step"] == 6
