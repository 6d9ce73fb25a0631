"""Views, driven without a browser: the explorer scaffold, the attention views and explorer, notebook 00's figures."""

import matplotlib

matplotlib.use("Agg")

import torch  # noqa: E402

from toolkit.views import organism as organism_views  # noqa: E402
from toolkit.views.attention import circuitsvis_attention, generation_explorer  # noqa: E402
from toolkit.views.explorer import explorer  # noqa: E402
from toolkit.views.style import MODE_COLORS, despine  # noqa: E402


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
    html = organism_views.accuracy_table_html(report)
    assert "90.0%" in html and "30.0%" in html and "think-off" in html
    fig = organism_views.accuracy_bars(report)
    assert len(fig.axes[0].patches) == 4


def test_circuitsvis_view_is_self_contained():
    view = circuitsvis_attention(["a", "\n", "b"], torch.rand(2, 3, 3))
    assert "unpkg.com" not in view.data and "<script" in view.data


def test_explorer_scaffold_renders_now_and_on_every_change():
    import ipywidgets as widgets
    import matplotlib.pyplot as plt

    slider = widgets.IntSlider(value=1, min=0, max=3)
    calls = []

    def render():
        calls.append(slider.value)
        fig, ax = plt.subplots()
        despine(ax)
        assert not ax.spines["top"].get_visible() and ax.spines["left"].get_visible()
        return [f"<b>{slider.value}</b>", fig]

    box = explorer([slider], render)
    slider.value = 3
    assert calls == [1, 3]
    assert box.children[0] is slider
    assert box.children[-1].outputs[0]["data"]["text/html"] == "<b>3</b>"
    assert "image/png" in box.children[-1].outputs[1]["data"]
    assert MODE_COLORS["think_on"] != MODE_COLORS["think_off"]


def test_training_loss_is_absent_without_a_build_report_and_titled_with_one():
    assert organism_views.training_loss(None) is None
    report = {"build_seconds": 120.0, "recipe_hash": "abc",
              "loss_history": {"a": [{"step": 0, "loss": 2.0}, {"step": 5, "loss": 1.0}],
                               "b": [{"step": 0, "loss": 0.5}]}}
    fig = organism_views.training_loss(report)
    ax = fig.axes[0]
    assert "2.0 min" in ax.get_title() and "abc" in ax.get_title()
    assert [list(line.get_xdata()) for line in ax.get_lines()] == [[0, 5], [6]]


def test_examples_table_escapes_the_think_tags():
    from toolkit.studies.organism import ModeExample

    html = organism_views.examples_table([ModeExample("linear", "Solve: x = 1", "<think>\nx</think>\n\nx = 1",
                                                      "x = 1", "x = 1")]).data
    assert "&lt;think&gt;" in html and "<think>" not in html and html.count("<tr>") == 2
