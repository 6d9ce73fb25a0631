"""Attention views shared by the notebooks: per-head heatmaps, the offline circuitsvis view, and the generation
explorer (pick a prompt and a mode, see the greedy generation and every head's attention from it)."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

import ipywidgets as widgets
import matplotlib.pyplot as plt
import torch

from toolkit.core.chat import THINK_ON_TOKENS, chat_prompts, mode_label
from toolkit.core.generation import generate
from toolkit.core.interventions import attention_patterns
from toolkit.core.models import LoadedModel
from toolkit.views.explorer import explorer


def short_token(t: str) -> str:
    """A token made visible in a tick label (newline as ⏎, space as ·)."""
    return {"\n": "⏎", " ": "·", "<|im_start|>": "<s>", "<|im_end|>": "</s>"}.get(t, t)


def attention_heads(pattern: torch.Tensor, tokens: Sequence[str], query_start: int = 0, title: str = ""):
    """Heatmaps of one layer's attention, one panel per head.

    ``pattern`` is ``[H, q, k]``; rows from ``query_start`` on are shown (e.g. the generated part).
    """
    n_heads = pattern.shape[0]
    fig, axes = plt.subplots(1, n_heads, figsize=(3.2 * n_heads, 3.4), squeeze=False)
    rows = pattern[:, query_start:].float().cpu().numpy()
    for h, ax in enumerate(axes[0]):
        ax.imshow(rows[h], aspect="auto", cmap="Blues", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(f"head {h}", fontsize=9)
        ax.set_xlabel("attended token (key)", fontsize=8)
        ax.set_yticks([])
        ax.set_xticks([])
    axes[0][0].set_ylabel("generated token (query)", fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    return fig


def circuitsvis_attention(tokens: Sequence[str], pattern: torch.Tensor):
    """circuitsvis attention view of ``pattern`` (``[H, q, k]``), self-contained (``local_src``: no CDN, works
    offline)."""
    import circuitsvis as cv
    from IPython.display import HTML

    view = cv.attention.attention_patterns(tokens=[short_token(t) for t in tokens], attention=pattern.float().cpu())
    return HTML(view.local_src)


def generation_explorer(loaded: LoadedModel, prompts: Sequence[str], max_new_tokens: int = THINK_ON_TOKENS
                        ) -> widgets.VBox:
    """Pick or type a prompt, toggle thinking, pick a layer: see the greedy generation and each
    head's attention from the generated tokens back over the whole sequence.

    Generations are cached per (prompt, mode).
    """
    tok, bridge = loaded.tokenizer, loaded.bridge
    prompt = widgets.Dropdown(options=list(prompts), description="prompt", layout={"width": "520px"})
    custom = widgets.Text(placeholder="or type a prompt and press Enter", description="custom",
                          continuous_update=False, layout={"width": "520px"})
    thinking = widgets.Checkbox(value=True, description="thinking")
    layer = widgets.IntSlider(value=bridge.cfg.n_layers - 1, min=0, max=bridge.cfg.n_layers - 1, description="layer")
    cache: dict[tuple[str, bool], tuple[str, torch.Tensor, int]] = {}

    def run(text: str, think: bool) -> tuple[str, torch.Tensor, int]:
        if (text, think) not in cache:
            completion = generate(loaded, [text], enable_thinking=think, max_new_tokens=max_new_tokens)[0][0]
            prefix = tok(chat_prompts(tok, [text], think), add_special_tokens=False)["input_ids"][0]
            full = prefix + tok(completion + "<|im_end|>", add_special_tokens=False)["input_ids"]
            cache[(text, think)] = (completion, torch.tensor([full]), len(prefix))
        return cache[(text, think)]

    def render() -> list:
        text = custom.value.strip() or prompt.value
        completion, ids, n_prompt = run(text, thinking.value)
        pattern = attention_patterns(bridge, ids, [layer.value])[layer.value][0]  # [H, q, k]
        tokens = tok.convert_ids_to_tokens(ids[0].tolist())
        mode = mode_label("think_on" if thinking.value else "think_off")
        fig = attention_heads(pattern, tokens, query_start=n_prompt,
                              title=f"layer {layer.value}: attention from generated tokens")
        return [f"<b>{escape(text)}</b> ({mode})<pre>{escape(completion)}</pre>", fig]

    return explorer([prompt, custom, thinking, layer], render,
                    layout=[prompt, custom, widgets.HBox([thinking, layer])])
