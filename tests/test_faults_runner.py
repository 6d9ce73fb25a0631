"""Faults in the notebook runner: typed ``-p`` parameters (mistakes refused before a run folder exists) and Ctrl-C
(index.json kept with the notebook marked ``interrupted``, the scorecard written, the kernel stopped, exit 130)."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

os.environ["HF_HUB_OFFLINE"] = "1"

import nbformat
import numpy as np
import psutil  # an ipykernel dependency, so present wherever the runner runs
import pytest

from toolkit.run import cli, runner
from toolkit.run.runner import Expression, RunnerError, coerce_param

REPO_ROOT = Path(__file__).resolve().parents[1]

TYPED_PARAMS = "flag = True\nn = 3\nlr = 0.5\nname = 'abc'\nlayers = [1, 2]\nopt = None"
SAVE_TYPED = ("from toolkit.run.results import save_results\n"
              "save_results('00_typed', {'flag': flag, 'n': n, 'lr': lr, 'name': name, 'layers': layers, 'opt': opt})")
CLAIM = """
from toolkit.evaluation.claims import Claims, Null
from toolkit.run.results import save_claims
claims = Claims("00_quick")
claims.add("one", paper="Paper A, section 1", statement="x is one", measure="x", estimate=1.0, ci=(0.5, 1.5),
           null=Null.target(0.0), direction=1, kind="target")
save_claims(claims)
"""
SLEEP = ("import os, pathlib, time\n"
         "pathlib.Path(os.environ['TOOLKIT_RUN_DIR'], 'started').touch()\n"
         "time.sleep(120)")


def _notebook(path, params_src, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def typed_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("typed")
    _notebook(d / "00_typed.ipynb", TYPED_PARAMS, SAVE_TYPED)
    _notebook(d / "01_other.ipynb", "n = 'three'\nflag = False")  # the same names, other types
    return d


@pytest.fixture(scope="module")
def sleepy_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("sleepy")
    _notebook(d / "00_quick.ipynb", "x = 1", CLAIM)
    _notebook(d / "01_sleep.ipynb", "seed = 0", SLEEP)
    return d


def _index(folder):
    return json.loads((folder / "index.json").read_text())


# typed parameters ----------------------------------------------------------------------------------------------
def test_bools_take_true_false_in_any_case_and_nothing_else():
    for text, value in [("false", False), ("False", False), ("TRUE", True), (" yes ", True), ("0", False),
                        ("No", False), (True, True), (False, False)]:
        assert coerce_param("nb", "flag", text, True) is value
    for bad in ("maybe", "", "2", 1, None, "[True]"):
        with pytest.raises(RunnerError, match=r"nb: parameter flag=.* is not a bool \(default True\)"):
            coerce_param("nb", "flag", bad, True)


def test_numbers_lists_and_strings_are_typed_by_the_default():
    assert coerce_param("nb", "n", "12", 40) == 12 and coerce_param("nb", "n", np.int64(5), 40) == 5
    assert coerce_param("nb", "lr", "3e-3", 0.1) == 3e-3 and type(coerce_param("nb", "lr", 1, 0.1)) is float
    assert coerce_param("nb", "name", "123", "organism") == "123"  # digits stay text for a str parameter
    assert coerce_param("nb", "name", Path("data/x"), "organism") == "data/x"
    assert coerce_param("nb", "tasks", "['a', 'b']", ["linear"]) == ["a", "b"]
    assert coerce_param("nb", "tasks", ("a",), ["linear"]) == ["a"]
    assert coerce_param("nb", "rates", "[1, 2.5]", [0.1, 0.2]) == [1.0, 2.5]  # ints where floats are expected
    assert coerce_param("nb", "empty", "[3, 'x']", []) == [3, "x"]  # an empty default checks no elements
    assert coerce_param("nb", "d", "{'a': 1}", {"b": 0.5}) == {"a": 1}
    assert coerce_param("nb", "opt", "[1]", None) == [1] and coerce_param("nb", "opt", "abc", None) == "abc"
    assert coerce_param("nb", "dev", "None", Expression("torch.device('cpu')")) is None
    refused = [("n", "abc", 40, "is not an int (default 40)"), ("n", "2.5", 40, "is not an int"),
               ("n", 2.5, 40, "is not an int"), ("n", True, 40, "is not an int"),
               ("lr", "fast", 0.1, "is not a float (default 0.1)"), ("lr", False, 0.1, "is not a float"),
               ("name", 123, "organism", "is not a str (default 'organism')"),
               ("tasks", "linear", ["linear"], "is not a list of str"),
               ("tasks", "[1]", ["linear"], "is not a list of str"), ("layers", "[1, 2.5]", [1, 2], "list of int"),
               ("layers", "5", [1, 2], "is not a list of int (default [1, 2]); give a Python list"),
               ("d", "[1]", {"b": 0.5}, "is not a dict")]
    for name, value, default, message in refused:
        with pytest.raises(RunnerError) as e:
            coerce_param("01_x", name, value, default)
        assert str(e.value).startswith(f"01_x: parameter {name}={value!r} ") and message in str(e.value)


def test_cli_hands_typed_values_to_the_notebook(typed_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", typed_dir)
    assert cli.main(["run", "00", "-p", "flag=false", "-p", "n=7", "-p", "lr=1", "-p", "name=123",
                     "-p", "layers=[3, 4]", "-p", "opt=[5]", "--out", str(tmp_path)]) == 0
    (folder,) = tmp_path.iterdir()
    results = json.loads((folder / "00_typed.results.json").read_text())
    assert results == {"flag": False, "n": 7, "lr": 1.0, "name": "123", "layers": [3, 4], "opt": [5]}
    assert type(results["lr"]) is float


def test_wrong_types_are_refused_before_a_run_folder_exists(typed_dir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", typed_dir)
    out = tmp_path / "runs"
    assert cli.main(["run", "00", "-p", "n=abc", "-p", "flag=maybe", "-p", "layers=5", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "00_typed: parameter n='abc' is not an int (default 3)" in err
    assert "00_typed: parameter flag='maybe' is not a bool (default True)" in err
    assert "00_typed: parameter layers='5' is not a list of int (default [1, 2])" in err
    assert not out.exists()
    with pytest.raises(RunnerError, match="parameter n=2.5 is not an int"):  # the Python API checks typed values
        runner.run(["00"], {"n": 2.5}, out_root=out, notebooks_dir=typed_dir)
    assert not out.exists()


def test_each_notebook_gets_the_value_typed_by_its_own_default(typed_dir):
    nbs = runner.resolve_notebooks(["00", "01"], typed_dir)
    typed = runner._typed_params(nbs, {"n": "5", "flag": "FALSE"})
    assert typed == {nbs[0]: {"n": 5, "flag": False}, nbs[1]: {"n": "5", "flag": False}}
    with pytest.raises(RunnerError) as e:
        runner._typed_params(nbs, {"flag": "nope"})
    assert "00_typed: parameter flag='nope'" in str(e.value) and "01_other: parameter flag='nope'" in str(e.value)


# Ctrl-C ----------------------------------------------------------------------------------------------------------
def _kernels_of(pid):
    try:
        children = psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []
    kernels = []
    for child in children:
        try:
            if "ipykernel" in " ".join(child.cmdline()):
                kernels.append(child)
        except psutil.NoSuchProcess:  # ZombieProcess included: a child that has exited is no kernel
            continue
    return kernels


def _alive(processes):
    alive = []
    for p in processes:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                alive.append(p.pid)
        except psutil.NoSuchProcess:
            pass
    return alive


def _connection_file(kernel):
    cmd = kernel.cmdline()
    return Path(cmd[cmd.index("-f") + 1])


def _default_sigint() -> None:
    """A terminal's Ctrl-C reaches a foreground process; a job started in the background of a non-interactive shell
    (a CI script, `nohup … &`) inherits SIGINT ignored, and Python then never raises KeyboardInterrupt. The CLI under
    test gets the terminal's disposition whatever started pytest."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def test_ctrl_c_in_a_cell_keeps_the_index_and_scorecard_stops_the_kernel_and_exits_130(sleepy_dir, tmp_path):
    code = ("import sys, pathlib; from toolkit.run import cli, runner; "
            "runner.NOTEBOOKS_DIR = pathlib.Path(sys.argv[1]); sys.exit(cli.main(sys.argv[2:]))")
    logs = tmp_path.parent / f"{tmp_path.name}-logs"  # files, not pipes: a pipe stays open while any child holds it
    logs.mkdir()
    with open(logs / "out", "w") as out_file, open(logs / "err", "w") as err_file:
        proc = subprocess.Popen([sys.executable, "-c", code, str(sleepy_dir), "run", "--out", str(tmp_path)],
                                cwd=REPO_ROOT, env={**os.environ, "HF_HUB_OFFLINE": "1"}, stdout=out_file,
                                stderr=err_file, text=True, preexec_fn=_default_sigint)
    try:
        deadline, folder = time.monotonic() + 90, None
        while time.monotonic() < deadline and proc.poll() is None:
            folder = next(tmp_path.iterdir(), None)
            if folder and (folder / "started").exists():
                break
            time.sleep(0.1)
        assert folder and (folder / "started").exists(), "the sleeping cell never started"
        assert [(e["notebook"], e["status"]) for e in _index(folder)] == [("00_quick", "ok"), ("01_sleep", "running")]
        kernels = _kernels_of(proc.pid)
        assert len(kernels) == 1
        connection_file = _connection_file(kernels[0])
        proc.send_signal(signal.SIGINT)
        proc.wait(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    out, err = (logs / "out").read_text(), (logs / "err").read_text()
    assert proc.returncode == 130, err
    assert "Traceback" not in out + err
    assert err.splitlines()[-1] == f"interrupted: index.json and the scorecard of what finished are in {folder}"
    assert f"INTERRUPTED 01_sleep: stopped by Ctrl-C in cell 1 (see {folder / '01_sleep.ipynb'})" in err
    first, second = _index(folder)
    assert first["status"] == "ok"
    assert second["status"] == "interrupted" and second["seconds"] > 0 and second["error"]["cell_index"] == 1
    assert (folder / "01_sleep.ipynb").exists()  # the partly executed notebook the entry refers to
    assert [c["id"] for c in json.loads((folder / "claims.json").read_text())] == ["one"]
    assert "**one**" in (folder / "REPORT.md").read_text()
    assert _alive(kernels) == [] and not connection_file.exists()  # the runner waited for the kernel to die


def test_ctrl_c_while_the_first_kernel_starts_leaves_an_index_and_no_kernel(sleepy_dir, tmp_path, monkeypatch):
    from jupyter_client.asynchronous import AsyncKernelClient

    kernels = []

    async def interrupted(self, timeout=None):  # Ctrl-C while waiting for the kernel to answer
        kernels.extend(_kernels_of(os.getpid()))
        raise KeyboardInterrupt

    monkeypatch.setattr(AsyncKernelClient, "wait_for_ready", interrupted)
    with pytest.raises(runner.RunInterrupted) as e:
        runner.run(["01"], {}, out_root=tmp_path, notebooks_dir=sleepy_dir)
    (folder,) = tmp_path.iterdir()
    assert e.value.folder == folder and str(folder) in str(e.value)
    (entry,) = _index(folder)
    assert entry["status"] == "interrupted" and entry["error"]["cell_index"] is None
    assert (folder / "REPORT.md").exists()
    assert len(kernels) == 1 and _alive(kernels) == [] and _kernels_of(os.getpid()) == []
