"""Faults at the edges of the command line: file modes of what the toolkit publishes (the umask's, not mkstemp's
0600), ``--out`` paths that cannot be written, a second build while the first holds the lock, and model specs that
name no model, each refused with one ``error:`` line and exit 2 before any kernel starts or any work is done."""

import os
import stat
import tempfile
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import matplotlib
import nbformat
import pytest

from toolkit.core.io import atomic_write_json, atomic_write_text, folder_problem, replace_dir
from toolkit.core.locks import FileLock
from toolkit.run import cli, params, results, runner

matplotlib.use("Agg")


def _mode(path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.fixture
def umask():
    """``umask(value)`` sets the process's umask for the test; the old one is restored after it."""
    old = os.umask(0o022)
    yield os.umask
    os.umask(old)


@pytest.fixture
def nbdir(tmp_path, monkeypatch):
    d = tmp_path / "notebooks"
    d.mkdir()
    nb = nbformat.v4.new_notebook()
    nb.cells = [nbformat.v4.new_code_cell("model = 'organism'\nbase_model = 'organism-base'\nn = 2",
                                          metadata={"tags": ["parameters"]})]
    nbformat.write(nb, d / "00_models.ipynb")
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", d)
    return d


# file modes ------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask, file_mode", [(0o022, 0o644), (0o027, 0o640)], ids=["umask-022", "umask-027"])
def test_atomic_writes_get_the_umask_mode_not_mkstemps(tmp_path, umask, mask, file_mode):
    umask(mask)
    text = atomic_write_text(tmp_path / "REPORT.md", "# report\n")
    data = atomic_write_json(tmp_path / "sub" / "index.json", [{"status": "ok"}])
    assert (_mode(text), _mode(data)) == (file_mode, file_mode)
    atomic_write_text(text, "again\n")  # rewriting an existing file too
    assert _mode(text) == file_mode and text.read_text() == "again\n"
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["REPORT.md", "index.json", "sub"]  # no temporary left


def test_saved_figures_get_the_umask_mode(tmp_path, umask, monkeypatch):
    import matplotlib.pyplot as plt

    monkeypatch.setenv("TOOLKIT_RUN_DIR", str(tmp_path))
    fig, ax = plt.subplots()
    ax.plot([0, 1], [1, 0])
    path = results.save_figure(fig, "curve")
    plt.close(fig)
    assert path.read_bytes()[:4] == b"\x89PNG" and _mode(path) == 0o644
    assert [p.name for p in path.parent.iterdir()] == ["curve.png"]


def test_a_folder_swapped_in_gets_the_umask_modes(tmp_path, umask):
    import torch
    from safetensors.torch import save_file

    work = Path(tempfile.mkdtemp(dir=tmp_path))  # mkdtemp: 0700
    save_file({"w": torch.zeros(2)}, str(work / "model.safetensors"))  # safetensors writes its file 0600
    fd, private = tempfile.mkstemp(dir=work, suffix=".json")  # mkstemp: 0600
    os.close(fd)
    (work / "nested").mkdir(mode=0o700)
    (work / "nested" / "run.sh").write_text("#!/bin/sh\n")
    os.chmod(work / "nested" / "run.sh", 0o700)
    os.symlink(work / "model.safetensors", work / "link")
    folder = replace_dir(work, tmp_path / "organism")
    assert _mode(folder) == 0o755 and _mode(folder / "nested") == 0o755
    assert _mode(folder / "model.safetensors") == 0o644 and _mode(folder / Path(private).name) == 0o644
    assert _mode(folder / "nested" / "run.sh") == 0o755  # executable by its owner: stays executable
    assert (folder / "link").is_symlink()


def test_model_folders_saved_for_the_cache_get_the_umask_modes(tmp_path, umask):
    """The organism's checkpoints, reasoning snapshots and fine-tuned models all go through save_model_folder."""
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from toolkit.core.cache import save_model_folder
    from toolkit.organism.tokenizer import build_tokenizer

    hf = Qwen3ForCausalLM(Qwen3Config(vocab_size=128, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                      num_attention_heads=2, num_key_value_heads=1, head_dim=8))
    folder = save_model_folder(hf, build_tokenizer(), tmp_path / "organism", {"recipe.json": {"recipe_hash": "x"}})
    modes = {p.name: _mode(p) for p in folder.iterdir()}
    assert _mode(folder) == 0o755 and "model.safetensors" in modes and "recipe.json" in modes
    assert set(modes.values()) == {0o644}, modes


# --out that cannot be written --------------------------------------------------------------------------------------
def test_folder_problem_names_what_is_in_the_way(tmp_path):
    file = tmp_path / "file"
    file.write_text("x")
    assert folder_problem(tmp_path / "new" / "deeper") is None and (tmp_path / "new" / "deeper").is_dir()
    assert folder_problem(file) == f"{file} exists and is not a folder"
    assert folder_problem(file / "sub") == f"{file} exists and is not a folder"
    assert folder_problem("/sys/x").startswith("cannot create /sys/x (")


@pytest.mark.parametrize("where", ["unwritable", "file", "under a file"])
def test_run_out_that_cannot_be_written_is_refused_before_any_kernel(where, nbdir, tmp_path, no_kernel, capsys):
    file = tmp_path / "taken"
    file.write_text("x")
    out = {"unwritable": Path("/sys/x"), "file": file, "under a file": file / "runs"}[where]
    assert cli.main(["run", "00", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot write run folders under {out}: ") and "Traceback" not in err
    assert "give --out a folder you can write to" in err
    assert ("Operation not permitted" in err or "Permission denied" in err) if where == "unwritable" else \
        f"{file} exists and is not a folder" in err
    assert file.read_text() == "x"


def test_runner_refuses_an_out_file_from_python_too(nbdir, tmp_path, no_kernel):
    (tmp_path / "taken").write_text("x")
    with pytest.raises(runner.RunnerError, match="taken exists and is not a folder; give --out a folder"):
        runner.run(["00"], {}, out_root=tmp_path / "taken")


def test_other_commands_refuse_an_out_they_cannot_write(tmp_path, capsys):
    file = tmp_path / "taken"
    file.write_text("x")
    assert cli.main(["build-organism", "--quick", "--seed", "3", "--out", str(file)]) == 2
    assert cli.main(["calibrate", "--reps", "10", "--out", str(file / "cal")]) == 2
    assert cli.main(["bench", "foundation", "--out", str(file / "bench.json")]) == 2
    assert cli.main(["bench", "foundation", "--out", str(tmp_path)]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[0] == (f"error: cannot write the organism into {file}: {file} exists and is not a folder; give "
                        "--out a folder you can write to")
    assert lines[1].startswith(f"error: cannot write the calibration report into {file / 'cal'}: {file} exists")
    assert lines[2].startswith(f"error: cannot write the benchmark results into {file}: {file} exists")
    assert lines[3] == f"error: --out {tmp_path} is a folder; give the path of the results file (.json)"
    assert len(lines) == 4 and file.read_text() == "x"


def test_compare_of_a_missing_folder_exits_2(tmp_path, capsys):
    assert cli.main(["compare", str(tmp_path), str(tmp_path / "nope")]) == 2
    assert capsys.readouterr().err == f"error: no run folder {tmp_path / 'nope'}; give two run folders (runs/<stamp>)\n"


# a second build ------------------------------------------------------------------------------------------------------
def test_a_second_build_while_the_lock_is_held_exits_2_naming_the_holder(tmp_path, capsys):
    out = tmp_path / "data"
    lock = out / ".organism-build" / "build.lock"  # toolkit.organism.build.build's lock for this output folder
    with FileLock(lock, what="building the organism (the first build)"):
        assert cli.main(["build-organism", "--quick", "--out", str(out)]) == 2
        captured = capsys.readouterr()
    assert captured.err.startswith(f"error: pid {os.getpid()} building the organism (the first build) holds {lock}; "
                                   "wait for it to finish or stop it, then run again")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err and captured.out == ""
    assert not (out / "organism").exists()


# model specs ---------------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("value, says", [
    ("organism@x", "after '@' comes a replicate's seed"),
    ("organism-base@-1", "after '@' comes a replicate's seed"),
    ("random:", "names no model"),
    ("random:random:organism", "nests 'random:'"),
    ("random:organism@x", "after '@' comes a replicate's seed"),
    ("/no/such/model", "the model folder /no/such/model does not exist"),
    ("Qwen/Qwen3 0.6B", "is not an organism spec, an existing folder or a hub name"),
    ("", "an empty spec names no model"),
])
def test_a_model_spec_that_names_no_model_is_refused_before_any_kernel(value, says, nbdir, tmp_path, no_kernel,
                                                                        capsys):
    out = tmp_path / "runs"
    assert cli.main(["run", "00", "-p", f"model={value}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: refusing to run, model parameters that name no model:\n")
    assert f"model={value!r}: " in err and says in err
    assert "(a model spec is one of: 'organism', 'organism-base', 'organism@N'" in err and "'random:<spec>'" in err
    assert not out.exists()


def test_every_model_parameter_is_checked_and_named(nbdir, tmp_path, no_kernel, capsys):
    assert cli.main(["run", "00", "-p", "model=organism@2", "-p", "base_model=organism-bse@x",
                     "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "base_model='organism-bse@x': " in err and "model='organism@2'" not in err


def test_well_formed_specs_pass_the_check(tmp_path):
    (tmp_path / "local").mkdir()
    for spec in ("organism", "organism-base", "organism@3", "organism-base@12", "random:organism",
                 "random:organism-base@2", "Qwen/Qwen3-0.6B", "gpt2", str(tmp_path / "local"), "./local", "local",
                 f"random:{tmp_path / 'local'}"):
        assert params.model_spec_problem(spec, tmp_path) is None, spec


def test_a_control_run_of_good_specs_still_gets_past_the_checks(nbdir, tmp_path, monkeypatch):
    """``--control random`` with ``-p model=…``: the checks pass and the rewritten specs reach the kernel step."""
    seen = []

    def stop(*args, **kwargs):
        seen.append(True)
        raise KeyboardInterrupt

    monkeypatch.setattr(runner, "ensure_kernel", stop)
    with pytest.raises(KeyboardInterrupt):
        runner.run(["00"], params.parse_params(["model=organism@2"]), out_root=tmp_path, control="random")
    assert seen == [True]
