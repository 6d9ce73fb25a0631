"""Model profiles (toolkit.run.profiles): valid against the notebooks, selected from the CLI and from a notebook."""

from __future__ import annotations

import pytest

from toolkit.run import cli, profiles, runner
from toolkit.run.params import RunnerError, coerce_param, notebook_parameters

NOTEBOOKS = sorted(runner.NOTEBOOKS_DIR.glob("0*.ipynb"))
BY_NUMBER = {nb.stem[:2]: nb for nb in NOTEBOOKS}


@pytest.mark.parametrize("name", list(profiles.PROFILES))
def test_every_profile_sets_only_declared_parameters_of_the_right_type(name):
    profile = profiles.PROFILES[name]
    assert profile.notes and profile.grader and profile.judge
    assert set(profile.notebooks) | set(profile.skip) <= set(BY_NUMBER), "a profile names a notebook that is not there"
    for number, values in profile.notebooks.items():
        assert number not in profile.skip
        declared = notebook_parameters(BY_NUMBER[number])
        for key, value in values.items():
            assert key in declared, f"{name}: {BY_NUMBER[number].stem} declares no {key}"
            typed = coerce_param(BY_NUMBER[number].stem, key, value, declared[key])
            assert typed == value and type(typed) is type(declared[key]), (name, key, value, declared[key])
    for key, value in profile.common.items():  # model, grader, judge: every notebook that declares them
        for nb in NOTEBOOKS:
            declared = notebook_parameters(nb)
            if key in declared:
                assert isinstance(value, type(declared[key])), (name, nb.stem, key)


def test_the_grading_notebooks_declare_grader_judge_and_every_notebook_profile():
    for nb in NOTEBOOKS:
        declared = notebook_parameters(nb)
        assert declared.get("profile") == "", nb.stem
        if nb.stem[:2] in {"00", "01", "03", "04", "05", "06"}:
            assert declared["grader"] == declared["judge"] == "auto", nb.stem


def test_the_organism_profile_changes_nothing_and_real_models_grade_math():
    for nb in NOTEBOOKS:
        assert profiles.profile_params("organism", nb, {}) == {}
    p = profiles.profile_params("qwen3-8b", BY_NUMBER["05"], {})
    assert p["model"] == "Qwen/Qwen3-8B" and p["grader"] == "math" and p["judge"] == "phrases"
    assert (p["temperature"], p["top_p"], p["top_k"]) == (0.6, 0.95, 20) and p["max_new_tokens_think"] >= 1000


def test_given_parameters_override_the_profile():
    p = profiles.profile_params("qwen3-0.6b", BY_NUMBER["03"], {"top_n": 7, "model": "./mine"})
    assert p["top_n"] == 7 and p["model"] == "./mine" and p["base_model"] == "Qwen/Qwen3-0.6B-Base"
    assert "profile" not in p


def test_a_profile_that_does_not_apply_or_lacks_its_model_is_refused():
    with pytest.raises(RunnerError, match="does not apply to 05_think_on_off"):
        profiles.profile_params("qwen2.5-math-1.5b-instruct", BY_NUMBER["05"], {})
    with pytest.raises(RunnerError, match="-p model="):
        profiles.profile_params("gpu-smoke", BY_NUMBER["03"], {})
    p = profiles.profile_params("gpu-smoke", BY_NUMBER["03"], {"model": "/tmp/smoke"})
    assert p["model"] == p["base_model"] == "/tmp/smoke"


def test_cli_refuses_an_unknown_profile_listing_them_before_any_kernel(no_kernel, capsys):
    assert cli.main(["run", "03", "--profile", "qwen9"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown profile 'qwen9'") and all(name in err for name in profiles.PROFILES)


def test_cli_lists_the_profiles(capsys):
    assert cli.main(["run", "--list-profiles"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in profiles.PROFILES) and "Qwen/Qwen3-0.6B" in out


def test_runner_gives_each_notebook_its_profile_values_with_p_over_them(monkeypatch, tmp_path):
    jobs = []

    def fake_run(these, *args, **kwargs):
        jobs.extend(these)
        return []

    monkeypatch.setattr(runner, "_run_notebooks", fake_run)
    monkeypatch.setattr(runner, "ensure_kernel", lambda *a, **k: "none")
    runner.run(["03", "05"], {"top_n": "9"}, out_root=tmp_path, profile="qwen3-4b")
    by = {nb.stem[:2]: params for nb, params in jobs}
    assert by["03"]["top_n"] == by["05"]["top_n"] == 9 and by["03"]["base_model"] == "Qwen/Qwen3-4B-Base"
    assert by["05"]["max_new_tokens_think"] == 4096 and "profile" not in by["05"]
    jobs.clear()
    runner.run([], {}, out_root=tmp_path, profile="qwen2.5-math-1.5b-instruct")  # all notebooks but 05
    assert [nb.stem[:2] for nb, _ in jobs] == [n for n in BY_NUMBER if n != "05"]


def test_apply_profile_in_a_notebook_keeps_explicit_values(capsys):
    declared = notebook_parameters(BY_NUMBER["03"])
    namespace = {**declared, "profile": "qwen3-1.7b", "top_n": 11}
    changed = profiles.apply_profile("qwen3-1.7b", "03_eap_ig", namespace)
    assert "top_n" not in changed and changed["model"] == "Qwen/Qwen3-1.7B" and changed["max_new_tokens"] == 512
    assert "profile qwen3-1.7b:" in capsys.readouterr().out
    assert profiles.apply_profile("", "03_eap_ig", namespace) == {}
    with pytest.raises(RunnerError, match="unknown profile"):
        profiles.apply_profile("nope", "03_eap_ig", namespace)
