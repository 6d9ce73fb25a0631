"""Every notebook's parameters, as papermill reads them (it warns "Passed unknown parameter" for any it cannot
parse, e.g. a comment holding an ``=``), equal the names the toolkit's own parser finds."""

from pathlib import Path

import papermill
import pytest

from toolkit.run.params import notebook_parameters

NOTEBOOKS = sorted((Path(__file__).parent.parent / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_papermill_sees_every_parameter(path):
    assert list(papermill.inspect_notebook(str(path))) == list(notebook_parameters(path))
