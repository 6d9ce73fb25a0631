"""Notebooks are committed clean: no outputs, execution counts or saved widget state (what ``nbstripout``
removes). Executed copies belong in ``runs/``, which git ignores."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest

TESTS = Path(__file__).resolve().parent
NOTEBOOKS = [path for folder in (TESTS.parent / "notebooks", TESTS / "fixtures")
             for path in sorted(folder.glob("*.ipynb"))]


def leftovers(path: Path) -> list[str]:
    """What has to be stripped from the notebook at ``path`` before it is committed."""
    nb = nbformat.read(path, as_version=4)
    found = []
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        if cell.outputs:
            found.append(f"cell {i}: outputs")
        if cell.execution_count is not None:
            found.append(f"cell {i}: execution count")
    if "widgets" in nb.metadata:
        found.append("saved widget state (metadata.widgets)")
    return found


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda path: path.relative_to(TESTS.parent).as_posix())
def test_notebook_is_stripped(path: Path) -> None:
    assert not leftovers(path), f"{path.name}: run `nbstripout {path}` to remove {leftovers(path)}"


def test_leftovers_are_found(tmp_path: Path) -> None:
    cell = nbformat.v4.new_code_cell("1 + 1", execution_count=3,
                                     outputs=[nbformat.v4.new_output("execute_result", {"text/plain": "2"})])
    nb = nbformat.v4.new_notebook(cells=[cell], metadata={"widgets": {}})
    nbformat.write(nb, tmp_path / "dirty.ipynb")
    assert leftovers(tmp_path / "dirty.ipynb") == ["cell 0: outputs", "cell 0: execution count",
                                                   "saved widget state (metadata.widgets)"]
