"""The notebook runner, its CLI and the results helpers, on tiny throwaway notebooks."""

import json
import os

os.environ["HF_HUB_OFFLINE"] = "1"

import matplotlib
import nbformat
import numpy as np
import pytest

from toolkit.run import cli, results, runner

matplotlib.use("Agg")


def _notebook(path, params_src, *cells):
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [nbformat.v4.new_code_cell(params_src, metadata={"tags": ["parameters"]})]
    nb.cells += [nbformat.v4.new_code_cell(src) for src in cells]
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def nbdir(tmp_path_factory):
    d = tmp_path_factory.mktemp("notebooks")
    _notebook(d / "00_tiny.ipynb", "x = 1", "import toolkit.run.results\n",
              "toolkit.run.results.save_results('00_tiny', {'x': x, 'headless': __import__('os').environ"
              "['TOOLKIT_HEADLESS']})")
    _notebook(d / "01_broken.ipynb", "x = 1\nlabel: str = 'a'", "y = x + 1", "y / 0")
    return d


def _index(run_folder):
    return {e["notebook"]: e for e in json.loads((run_folder / "index.json").read_text())}


def test_run_executes_and_writes_index(nbdir, tmp_path):
    run_folder = runner.run(["00"], {}, out_root=tmp_path, notebooks_dir=nbdir)
    assert run_folder.parent == tmp_path
    entry = _index(run_folder)["00_tiny"]
    assert entry["status"] == "ok" and entry["error"] is None and entry["seconds"] > 0
    assert entry["results"] == {"x": 1, "headless": "1"}
    assert results.notebook_results(run_folder / "00_tiny.ipynb") == {"x": 1, "headless": "1"}


def test_cli_passes_params_and_reports_failure(nbdir, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", nbdir)
    assert cli.main(["run", "-p", "x=5", "--out", str(tmp_path)]) == 1
    (run_folder,) = tmp_path.iterdir()
    index = _index(run_folder)
    assert list(index) == ["00_tiny", "01_broken"]
    assert index["00_tiny"]["status"] == "ok" and index["00_tiny"]["results"]["x"] == 5
    broken = index["01_broken"]
    assert broken["status"] == "failed" and broken["results"] is None
    # cells of the executed copy: parameters, injected parameters, y = x + 1, y / 0
    assert broken["error"] == {"cell_index": 3, "ename": "ZeroDivisionError", "evalue": "division by zero"}
    err = capsys.readouterr().err
    assert "01_broken: cell 3 raised ZeroDivisionError" in err
    assert "TOOLKIT_RUN_DIR" not in os.environ


def test_progress_names_cells_done_of_cells_and_the_cell_running(nbdir, tmp_path, capfd):
    runner.run(["01"], {}, out_root=tmp_path, notebooks_dir=nbdir)
    out, err = capfd.readouterr()
    lines = out.splitlines()
    # code cells of the executed copy: parameters, y = x + 1, y / 0 (nothing injected without parameters)
    assert any(line.startswith("[1/1] 01_broken  0/3 cells") and line.endswith("cell 0: x = 1") for line in lines)
    assert any("1/3 cells" in line and line.endswith("cell 1: y = x + 1") for line in lines)
    assert any("2/3 cells" in line and line.endswith("cell 2: y / 0") for line in lines)
    assert "[1/1] 01_broken  3/3 cells  FAILED" in out and "cell 2 raised ZeroDivisionError" in out
    assert "without encryption" not in out + err  # the kernel talks over CurveZMQ or IPC, not plain TCP


def test_cell_progress_on_a_terminal_rewrites_one_line(capsys):
    import nbformat as nbf

    from toolkit.run.engine import CellProgress, first_code_line

    progress = CellProgress("[2/7] 03_x", tty=True, tick_s=60)
    nb = nbf.v4.new_notebook(cells=[nbf.v4.new_markdown_cell("# t"), nbf.v4.new_code_cell("# c\n\nz = 1"),
                                    nbf.v4.new_code_cell("w = 2")])
    progress.begin(nb)
    progress.cell_start(nb.cells[0], 0)
    progress.cell_start(nb.cells[1], 1)
    assert progress.status().endswith("0/2 cells  0 s  cell 1: z = 1")
    progress.cell_complete(nb.cells[1], 1)
    progress.close("ok (1.0 s)")
    out = capsys.readouterr().out
    assert out.count("\n") == 1 and out.endswith("\r[2/7] 03_x  1/2 cells  ok (1.0 s)\x1b[K\n")
    assert first_code_line("# only a comment") == "# only a comment"
    assert first_code_line("x = '" + "a" * 80 + "'", width=10) == "x = 'aaaa…"


def test_undeclared_parameter_refused_before_running(nbdir, tmp_path, monkeypatch, capsys):
    with pytest.raises(runner.RunnerError) as e:
        runner.run(["01", "00"], {"label": "b"}, out_root=tmp_path, notebooks_dir=nbdir)
    assert "00_tiny does not declare label; it declares: x" in str(e.value)
    assert "01_broken" not in str(e.value)
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", nbdir)
    assert cli.main(["run", "nope", "--out", str(tmp_path)]) == 2  # CLI turns RunnerError into exit code 2
    assert "error: no notebook matches" in capsys.readouterr().err


def test_unknown_or_ambiguous_name_lists_notebooks(nbdir):
    with pytest.raises(runner.RunnerError, match="available: 00_tiny, 01_broken"):
        runner.resolve_notebooks(["02"], nbdir)
    with pytest.raises(runner.RunnerError, match="several notebooks"):
        runner.resolve_notebooks(["0"], nbdir)
    assert [p.name for p in runner.resolve_notebooks(["01_broken.ipynb", "00", "01"], nbdir)] == [
        "01_broken.ipynb", "00_tiny.ipynb"]


def test_notebook_parameters(nbdir):
    assert runner.notebook_parameters(nbdir / "01_broken.ipynb") == {"x": 1, "label": "a"}


def test_parse_params_keeps_the_text():  # typed later by each notebook's defaults (test_faults_runner.py)
    assert runner.parse_params(["model=organism", "n_problems=20", "think=True", "layers=[1, 2]", "name=a=b",
                                "empty="]) == {
        "model": "organism", "n_problems": "20", "think": "True", "layers": "[1, 2]", "name": "a=b", "empty": ""}
    with pytest.raises(runner.RunnerError, match="key=value"):
        runner.parse_params(["n_problems"])


def test_save_results_and_figure(tmp_path, monkeypatch):
    import matplotlib.pyplot as plt
    import torch

    torch.set_num_threads(1)
    monkeypatch.setenv("TOOLKIT_RUN_DIR", str(tmp_path))
    path = results.save_results("r", {"a": np.float32(0.5), "b": [np.int64(3), torch.tensor(2)],
                                      "c": {"nan": float("nan")}})
    assert path == tmp_path / "r.results.json"
    assert json.loads(path.read_text()) == {"a": 0.5, "b": [3, 2], "c": {"nan": None}}
    with pytest.raises(TypeError, match=r"results\['b'\]\[0\] is a ndarray"):
        results.save_results("bad", {"b": [np.zeros(3)]})

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    png = results.save_figure(fig, "line")
    plt.close(fig)
    assert png == tmp_path / "figures" / "line.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in png.parent.iterdir()] == ["line.png"]


CLAIM_CELL = """
from toolkit.evaluation.claims import Claims, Null
from toolkit.run.results import save_claims
claims = Claims("02_seeded")
claims.add("grows", paper="Paper A", section="section 1", statement="x grows", measure="x", estimate=seed,
           ci=(seed - 0.5, seed + 0.5), null=Null.target(0.0), direction=1, sesoi=0.2, sesoi_reason="a fifth",
           controls=("random",))
save_claims(claims)
"""


@pytest.fixture(scope="module")
def seeded_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("seeded")
    _notebook(d / "02_seeded.ipynb", "seed = 0", CLAIM_CELL)
    return d


def test_seeds_run_each_seed_and_aggregate_the_scorecard(seeded_dir, tmp_path):
    run_folder = runner.run([], {}, out_root=tmp_path, notebooks_dir=seeded_dir, seeds=2)
    for k in (0, 1):
        (claim,) = json.loads((run_folder / f"seed-{k}" / "claims.json").read_text())
        assert claim["estimate"] == k and claim["verdict"] == ("inconclusive" if k == 0 else "reproduces")
    (claim,) = json.loads((run_folder / "claims.json").read_text())
    assert claim["seeds"]["verdicts"] == ["inconclusive", "reproduces"]
    assert claim["estimate"] == 0.5 and claim["verdict"] == "reproduces"  # pooled: 0.5 [0.15, 0.85] clears 0
    assert claim["seeds"]["estimates"] == [0, 1] and claim["seeds"]["missing"] == []
    text = (run_folder / "REPORT.md").read_text()
    assert "## Paper A\n" in text and "**grows** (section 1)" in text and "Missing seeds" not in text


def test_interrupted_seeds_run_keeps_the_finished_seeds(seeded_dir, tmp_path, monkeypatch):
    real = runner._run_notebooks

    def stop_on_seed_one(jobs, *args, **kw):
        if jobs[0][1]["seed"] == 1:
            raise KeyboardInterrupt
        return real(jobs, *args, **kw)

    monkeypatch.setattr(runner, "_run_notebooks", stop_on_seed_one)
    with pytest.raises(runner.RunInterrupted) as e:
        runner.run([], {}, out_root=tmp_path, notebooks_dir=seeded_dir, seeds=3)
    (run_folder,) = tmp_path.iterdir()
    assert e.value.folder == run_folder and [x["seed"] for x in _index(run_folder).values()] == [0]
    (claim,) = json.loads((run_folder / "claims.json").read_text())
    assert claim["seeds"]["missing"] == [1, 2] and claim["seeds"]["verdicts"] == ["inconclusive", None, None]
    assert "**Missing seeds** (did not finish): 1, 2." in (run_folder / "REPORT.md").read_text()


def test_bad_seeds_are_refused_before_running(nbdir, seeded_dir, tmp_path, monkeypatch, capsys):
    for bad in (0, -2):
        with pytest.raises(runner.RunnerError, match="positive number of seeds"):
            runner.run([], {}, out_root=tmp_path, notebooks_dir=seeded_dir, seeds=bad)
    with pytest.raises(runner.RunnerError, match="00_tiny, 01_broken declares none"):
        runner.run([], {}, out_root=tmp_path, notebooks_dir=nbdir, seeds=2)
    with pytest.raises(runner.RunnerError, match="not both"):
        runner.run([], {"seed": 1}, out_root=tmp_path, notebooks_dir=seeded_dir, seeds=2)
    assert not any(tmp_path.iterdir())
    monkeypatch.setattr(runner, "NOTEBOOKS_DIR", seeded_dir)
    assert cli.main(["run", "--seeds", "0", "--out", str(tmp_path)]) == 2
    assert "positive number of seeds" in capsys.readouterr().err


def test_save_claims_refuses_an_empty_registry(tmp_path, monkeypatch):
    from toolkit.evaluation.claims import ClaimError, Claims

    monkeypatch.setenv("TOOLKIT_RUN_DIR", str(tmp_path))
    with pytest.raises(ClaimError, match="05_x registered no claims"):
        results.save_claims(Claims("05_x"))
