"""Figure style shared by every view: despined axes, one colour per answer mode, and the colour codes for where a
head sits relative to two head sets (a circuit against another, think-on against think-off, a base model's heads
against a fine-tuned checkpoint's), each defined here only."""

from __future__ import annotations

from matplotlib.colors import ListedColormap

MODE_COLORS = {"think_on": "#3b6fb6", "think_off": "#e08a2c"}  # keyed by toolkit.core.chat's modes

# One colour per code of each layer × head grid of "which head set is this head in":
# toolkit.core.units.HeadComparison.grid: neither, shared, only A, only B.
HEAD_SET_COLORS = ("#f2f2f2", "#8c8c8c", "#d62728", "#1f77b4")
# toolkit.studies.think_on_off.head_set_grid: neither, think-on only, think-off only, both (each mode's own colour).
MODE_SET_COLORS = ("#eeeeee", MODE_COLORS["think_on"], MODE_COLORS["think_off"], "#6a3d9a")
# toolkit.methods.dynamics.checkpoint_map: neither, base head kept, emergent head, base head lost (Heatmap.codes uses
# the first three: inactive, active base head, active emergent head).
EMERGENCE_COLORS = ("#f2f2f2", "#4c72b0", "#dd8452", "#b0b0b0")


def head_set_cmap(colors: tuple[str, ...] = HEAD_SET_COLORS) -> ListedColormap:
    """Colour map for a grid of head-set codes, by default a ``HeadComparison.grid``
    (``imshow(grid, cmap=head_set_cmap(), vmin=0, vmax=3)``)."""
    return ListedColormap(list(colors))


def despine(*axes) -> None:
    """Hide the top and right spines of each matplotlib axis."""
    for ax in axes:
        ax.spines[["top", "right"]].set_visible(False)


def label_head_grid(ax, n_layers: int, n_heads: int, title: str, fontsize: float = 10) -> None:
    """Ticks, axis labels and title of a layer × head image (one cell per head)."""
    ax.set_xticks(range(n_heads))
    ax.set_yticks(range(n_layers))
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_title(title, fontsize=fontsize)
