"""Every notebook in ``notebooks/`` run in JupyterLab in headless Chromium with its declared small test parameters,
with the widgets and circuitsvis views it declares in ``metadata["toolkit"]`` checked (see ``browser_harness``) and
the results, figures and claims it saved; screenshots go to
``runs/browser/``; and every exercise notebook of the course (``notebooks/exercises/NN_*.ipynb``) run to the end
with each check's "not implemented" line and the summary rendered. Run alone with ``python -m pytest -m browser``."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import nbformat
import pytest
from browser_harness import REPO, checked_notebook, chromium, install
from playwright.sync_api import Browser

from toolkit.core.specs import ORGANISMS, data_dir
from toolkit.course.checks import SUMMARY_PREFIX

pytestmark = pytest.mark.browser
NOTEBOOKS = sorted((REPO / "notebooks").glob("*.ipynb"))
EXERCISES = sorted((REPO / "notebooks" / "exercises").glob("*.ipynb"))  # the exercise versions, not solutions
FIXTURE = Path(__file__).parent / "fixtures" / "widget_fixture.ipynb"
SCREENSHOTS = REPO / "runs" / "browser"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    install()
    with chromium() as b:
        yield b


@pytest.mark.parametrize("notebook", NOTEBOOKS, ids=lambda path: path.stem)
def test_notebook(browser: Browser, notebook: Path, tmp_path: Path) -> None:
    missing = [name for name in ORGANISMS if not (data_dir() / name / "config.json").exists()]
    if missing:  # the notebooks would build them (~30 min) instead of failing
        pytest.fail(f"{missing} missing from {data_dir()}: run `python -m toolkit build-organism` first")
    with checked_notebook(browser, notebook, tmp_path, SCREENSHOTS / f"{notebook.stem}.png"):
        pass
    # what the run saved (TOOLKIT_RUN_DIR is tmp_path/run): results, figures, and claims that each name a null and
    # a verdict. The runner's own path (papermill, index.json, parameters) is tested in test_runner and by the
    # real-tokenizer notebook runs; a second headless execution of every notebook here would add nothing.
    run = tmp_path / "run"
    results = json.loads((run / f"{notebook.stem}.results.json").read_text())
    assert results, "the notebook saved no results"
    assert list((run / "figures").glob("*.png")), "the notebook saved no figures"
    claims = [c for path in run.glob("*.claims.json") for c in json.loads(path.read_text())]
    assert claims and all(c["null"]["kind"] and c["verdict"] for c in claims), "the notebook registered no claims"


@pytest.mark.parametrize("notebook", EXERCISES, ids=lambda path: path.stem)
def test_exercise_notebook(browser: Browser, notebook: Path, tmp_path: Path) -> None:
    """An exercise notebook runs to the end in Lab, and its rendered output shows every check "not implemented"
    and the summary counting them."""
    n = sum(c.source.count("results.append(") for c in nbformat.read(notebook, as_version=4).cells
            if c.cell_type == "code")
    assert n >= 3, f"{notebook.name}: {n} check cells"
    with checked_notebook(browser, notebook, tmp_path, SCREENSHOTS / "exercises" / f"{notebook.stem}.png") as nb:
        lines = [line.strip() for text in nb.page.locator(".jp-OutputArea").all_inner_texts()
                 for line in text.splitlines()]
    todo = [line for line in lines if line.startswith("· ") and ": not implemented" in line]
    assert len(todo) == n, f"{notebook.name}: {n} checks, rendered {todo}"
    assert not [line for line in lines if line.startswith(("✓", "✗"))], lines
    assert f"0 of {n} checks pass, {n} not implemented, 0 failing" in lines, lines
    summary = [line for line in lines if line.startswith(SUMMARY_PREFIX)]
    assert len(summary) == 1 and set(json.loads(summary[0].removeprefix(SUMMARY_PREFIX)).values()) == {
        "not implemented"}, summary


def test_harness_on_fixture(browser: Browser, tmp_path: Path) -> None:
    """The fixture passes every declared check with its test parameters injected; a widget that drives
    nothing fails the change assertion, and one whose callback raises fails with the error."""
    with checked_notebook(browser, FIXTURE, tmp_path, SCREENSHOTS / "widget_fixture.png") as nb:
        assert "using 50 points" in "\n".join(nb.page.locator(".jp-OutputArea").all_inner_texts())
        with pytest.raises(AssertionError, match="did not change"):
            nb.operate("unused", "slider", timeout=5)
        with pytest.raises(AssertionError, match="RuntimeError: fixture callback error"):
            nb.operate("broken", "click")


def test_harness_reports_cell_errors(browser: Browser, tmp_path: Path) -> None:
    """A cell that raises fails the check, with the error in the message."""
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell('raise ValueError("fixture error")')])
    source = tmp_path / "failing.ipynb"
    nbformat.write(nb, source)
    with pytest.raises(AssertionError, match="ValueError: fixture error"):
        with checked_notebook(browser, source, tmp_path / "lab", tmp_path / "failing.png"):
            pass
