"""The explorer scaffold every notebook's ipywidgets explorer is built on: :func:`show` fills an output area with
HTML and figures; :func:`explorer` wires controls to a refresh function."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Sequence

import ipywidgets as widgets
import matplotlib.pyplot as plt


def show(out: widgets.Output, *items) -> None:
    """Replace ``out``'s contents with HTML strings and matplotlib figures (figures are closed).

    Sets the widget's ``outputs`` directly rather than capturing with ``with out:`` and
    ``clear_output``: captured ``clear_output`` hangs papermill's client, while direct state works
    headless and in JupyterLab alike.
    """
    bundles = []
    for item in items:
        if isinstance(item, str):
            data = {"text/html": item, "text/plain": item}
        else:
            buf = io.BytesIO()
            item.savefig(buf, format="png", dpi=90, bbox_inches="tight")
            plt.close(item)
            data = {"image/png": base64.b64encode(buf.getvalue()).decode(), "text/plain": "<Figure>"}
        bundles.append({"output_type": "display_data", "data": data, "metadata": {}})
    out.outputs = tuple(bundles)


def explorer(controls: Sequence[widgets.Widget], render: Callable[[], Sequence], layout: Sequence | None = None
             ) -> widgets.VBox:
    """A VBox of ``controls`` (or of ``layout``, rows of widgets arranged by the caller) above an output area that
    shows ``render()`` (a list of HTML strings and figures) now and whenever a control's value changes."""
    out = widgets.Output()

    def refresh(*_):
        show(out, *render())

    for control in controls:
        control.observe(refresh, names="value")
    refresh()
    return widgets.VBox([*(layout if layout is not None else controls), out])
