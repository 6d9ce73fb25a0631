"""ipywidgets explorers shared by the notebooks."""

from __future__ import annotations

import base64
import io
from collections.abc import Sequence
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from toolkit.core.chat import chat_prompts
from toolkit.core.generation import generate
from toolkit.core.interventions import attention_patterns
from toolkit.views.plots import attention_heads


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


def generation_explorer(model, prompts: Sequence[str], max_new_tokens: int = 160) -> widgets.VBox:
    """Pick or type a prompt, toggle thinking, pick a layer: see the greedy generation and each
    head's attention from the generated tokens back over the whole sequence.

    ``model`` is a :class:`toolkit.core.models.LoadedModel`. Generations are cached per (prompt, mode).
    """
    hf, tok, bridge = model.hf, model.tokenizer, model.bridge
    prompt = widgets.Dropdown(options=list(prompts), description="prompt", layout={"width": "520px"})
    custom = widgets.Text(placeholder="or type a prompt and press Enter", description="custom",
                          continuous_update=False, layout={"width": "520px"})
    thinking = widgets.Checkbox(value=True, description="thinking")
    layer = widgets.IntSlider(value=bridge.cfg.n_layers - 1, min=0, max=bridge.cfg.n_layers - 1, description="layer")
    out = widgets.Output()
    cache: dict[tuple[str, bool], tuple[str, torch.Tensor, int]] = {}

    def run(text: str, think: bool) -> tuple[str, torch.Tensor, int]:
        if (text, think) not in cache:
            completion = generate(hf, tok, [text], enable_thinking=think, max_new_tokens=max_new_tokens)[0][0]
            prefix = tok(chat_prompts(tok, [text], think), add_special_tokens=False)["input_ids"][0]
            full = prefix + tok(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
            cache[(text, think)] = (completion, torch.tensor([full]), len(prefix))
        return cache[(text, think)]

    def refresh(*_):
        text = custom.value.strip() or prompt.value
        completion, ids, n_prompt = run(text, thinking.value)
        pattern = attention_patterns(bridge, ids, [layer.value])[layer.value][0]  # [H, q, k]
        tokens = tok.convert_ids_to_tokens(ids[0].tolist())
        mode = "think-on" if thinking.value else "think-off"
        fig = attention_heads(pattern, tokens, query_start=n_prompt,
                              title=f"layer {layer.value}: attention from generated tokens")
        show(out, f"<b>{escape(text)}</b> ({mode})<pre>{escape(completion)}</pre>", fig)

    for w in (prompt, custom, thinking, layer):
        w.observe(refresh, names="value")
    refresh()
    return widgets.VBox([prompt, custom, widgets.HBox([thinking, layer]), out])
