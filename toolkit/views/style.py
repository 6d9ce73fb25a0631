"""Figure style shared by every view: despined axes, one colour per answer mode, one colour code for where a head
sits relative to two head sets (a circuit against another, a base model's heads against a fine-tuned one's)."""

from __future__ import annotations

from matplotlib.colors import ListedColormap

MODE_COLORS = {"think_on": "#3b6fb6", "think_off": "#e08a2c"}  # also keyed by the labels "think-on"/"think-off"
MODE_COLORS |= {k.replace("_", "-"): v for k, v in MODE_COLORS.items()}

# The codes of toolkit.core.units.HeadComparison.grid, with their labels and colours.
HEAD_SET_LABELS = ("neither", "shared", "only A", "only B")
HEAD_SET_COLORS = ("#f2f2f2", "#8c8c8c", "#d62728", "#1f77b4")


def head_set_cmap() -> ListedColormap:
    """Colour map for a ``HeadComparison.grid`` (``imshow(grid, cmap=head_set_cmap(), vmin=0, vmax=3)``)."""
    return ListedColormap(list(HEAD_SET_COLORS))


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
