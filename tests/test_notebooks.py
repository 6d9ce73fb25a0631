"""Every notebook, executed headlessly by the runner with its declared small test parameters."""

import json
import os
from pathlib import Path

import nbformat
import pytest

from toolkit.run import runner

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("[0-9][0-9]_*.ipynb"))


@pytest.mark.slow
@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=[nb.stem for nb in NOTEBOOKS])
def test_notebook_runs_and_asserts_its_findings(notebook, tmp_path, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")  # kernels: one thread each (2 cores, shared with pytest)
    params = nbformat.read(notebook, as_version=4).metadata.get("toolkit", {}).get("test_parameters", {})
    run_folder = runner.run([notebook.stem], params, out_root=tmp_path)
    (entry,) = json.loads((run_folder / "index.json").read_text())
    assert entry["status"] == "ok", runner.describe_error(entry["error"])
    assert entry["results"], "the notebook saved no results JSON"
    assert list((run_folder / "figures").glob("*.png")), "the notebook saved no figures"
    claims = json.loads((run_folder / "claims.json").read_text())
    assert claims and all(c["null"]["kind"] and c["verdict"] for c in claims), "the notebook registered no claims"
    assert os.environ.get("TOOLKIT_RUN_DIR") is None
