"""Organism replicates (the same recipe built with another seed): their specs, where they are built, loading them,
and notebook 00's targets for them."""

from __future__ import annotations

import pytest

from toolkit.core import models, specs
from toolkit.core.specs import ModelLoadError, organism_dir, organism_spec
from toolkit.organism.recipe import QUICK, Recipe, eval_sets, recipe_hash
from toolkit.run import cli
from toolkit.studies import organism


@pytest.mark.parametrize("spec,expected", [("organism", ("organism", 0)), ("organism-base", ("organism-base", 0)),
                                           ("organism@0", ("organism", 0)), ("organism-base@3", ("organism-base", 3)),
                                           ("Qwen/Qwen3-4B", None), ("other@2", None), ("./organism@2", None)])
def test_organism_specs(spec, expected):
    assert organism_spec(spec) == expected


@pytest.mark.parametrize("spec", ["organism@x", "organism@-1", "organism@", "organism@1.5", "organism-base@²"])
def test_a_malformed_replicate_spec_lists_the_valid_forms(spec):
    with pytest.raises(ModelLoadError, match=r"organism@N.*organism-base@N"):
        organism_spec(spec)
    with pytest.raises(ModelLoadError, match="not an organism spec"):
        models.load(spec)


def test_a_missing_replicate_says_how_to_build_it(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    assert organism_dir(7) == tmp_path / "organism-replicates" / "seed-7" and organism_dir(0) == specs.data_dir()
    with pytest.raises(ModelLoadError, match=r"build-organism --seed 7"):
        models.resolve("organism@7")


def test_a_negative_seed_is_refused_by_the_build_command(capsys):
    assert cli.main(["build-organism", "--seed", "-1"]) == 2
    assert "--seed must be a whole number >= 0" in capsys.readouterr().err


def test_a_replicate_builds_into_the_cache_and_loads_by_its_spec(tmp_path, monkeypatch):
    monkeypatch.setenv("TOOLKIT_CACHE", str(tmp_path))
    assert cli.main(["build-organism", "--quick", "--seed", "2"]) == 0
    folder = tmp_path / "organism-replicates" / "seed-2"
    assert {p.name for p in folder.iterdir()} >= {"organism", "organism-base", "organism_report.json"}
    stored = (folder / "organism" / "recipe.json").read_text()
    assert recipe_hash(Recipe(**QUICK, seed=2)) in stored and recipe_hash(Recipe(**QUICK)) not in stored
    with pytest.warns(UserWarning, match=r"build-organism --seed 2"):  # a quick build is not the full recipe
        loaded = models.load("organism-base@2", device="cpu")
    assert loaded.spec == "organism-base@2" and loaded.hf.config.model_type == "qwen3"
    assert cli.main(["build-organism", "--quick", "--seed", "2", "--if-missing"]) == 0  # found, not rebuilt


def test_a_replicate_is_held_to_its_checkpoints_targets():
    sets = eval_sets(Recipe(eval_per_task=4))
    rates = {"linear": 1.0, "arithmetic": 1.0, "reversal": 1.0, "refusal": 1.0, "false_refusal": 0.0,
             "compliance": 1.0, "format": 1.0}
    report = {"think_on": dict(rates), "think_off": dict(rates, linear=0.0)}
    held = organism.HeldOut("organism@2", {"organism@2": report, "organism-base@2": report}, sets)
    claims = organism.claims(held)
    assert len(claims) == len(organism.TARGETS) + 2
    assert {c.id.split("-think")[0] for c in claims} >= {"organism@2", "organism-base@2"}
    assert organism.checkpoint_name("organism-base@2") == "organism-base"
