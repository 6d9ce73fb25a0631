"""Explorer widgets and shared figures, driven without a browser."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from toolkit.views import plots  # noqa: E402
from toolkit.views.widgets import generation_explorer  # noqa: E402


def _images(box):
    out = box.children[-1]
    return [o["data"].get("image/png") for o in out.outputs], [o["data"].get("text/html") for o in out.outputs]


def test_explorer_redraws_when_each_control_changes(tiny):
    box = generation_explorer(tiny, ["What is 1 + 2?", "Reverse the word: abc"], max_new_tokens=6)
    prompt, custom, (thinking, layer) = box.children[0], box.children[1], box.children[2].children
    states = [_images(box)]
    layer.value = 0
    states.append(_images(box))
    prompt.value = "Reverse the word: abc"
    states.append(_images(box))
    thinking.value = not thinking.value
    states.append(_images(box))
    custom.value = "What is 9 - 3?"
    states.append(_images(box))
    assert all(img and html for img, html in states)
    assert all(a != b for a, b in zip(states, states[1:])), "an action left the explorer's output unchanged"
    assert "What is 9 - 3?" in states[-1][1][0]


def test_accuracy_figure_and_table_cover_every_measure():
    report = {"m": {"think_on": {"linear": 0.9, "refusal": 1.0}, "think_off": {"linear": 0.3, "refusal": 1.0}}}
    html = plots.accuracy_table_html(report)
    assert "90.0%" in html and "30.0%" in html and "think-off" in html
    fig = plots.accuracy_bars(report)
    assert len(fig.axes[0].patches) == 4


def test_circuitsvis_view_is_self_contained():
    view = plots.circuitsvis_attention(["a", "\n", "b"], torch.rand(2, 3, 3))
    assert "unpkg.com" not in view.data and "<script" in view.data
