"""The two pictures of Raghu et al. 2021: a layers × layers CKA heatmap, and attention distance per head by depth."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np

from hf_tl.hub.plots import plain, save_figure

MAX_TICKS = 40  # layer names beyond this are thinned so they stay readable
ANNOTATE_LAYERS_UP_TO = 12  # layers per side; beyond this the values would not fit in their cells


def cka_heatmap(
    matrix: np.ndarray,
    layers_a: Sequence[str],
    layers_b: Sequence[str],
    path: Path,
    title: str,
    xlabel: str,
    ylabel: str,
) -> Path:
    """Layers of A up the y axis (input at the bottom, as in the paper), layers of B along x; CKA from 0 to 1."""
    rows, cols = matrix.shape
    width = min(max(6.0, 0.28 * cols + 3.5), 30.0)
    height = min(max(5.0, 0.28 * rows + 2.5), 30.0)
    fig, ax = plt.subplots(figsize=(width, height), layout="constrained")
    image = ax.imshow(np.ma.masked_invalid(matrix), origin="lower", cmap="magma", vmin=0.0, vmax=1.0, aspect="auto")
    fig.colorbar(image, ax=ax, shrink=0.8, label="CKA")
    if max(rows, cols) <= ANNOTATE_LAYERS_UP_TO:
        for (row, col), value in np.ndenumerate(matrix):
            colour = "black" if value > 0.6 else "white"
            text = "-" if np.isnan(value) else f"{value:.2f}"
            ax.text(col, row, text, ha="center", va="center", color=colour, fontsize=8)
    _label_axis(ax.set_xticks, layers_b, rotation=90)
    _label_axis(ax.set_yticks, layers_a)
    ax.set_xlabel(plain(xlabel))
    ax.set_ylabel(plain(ylabel))
    fig.suptitle(plain(title), fontsize=9, wrap=True)
    return save_figure(fig, path)


def attention_distance_plot(distances: np.ndarray, layers: Sequence[str], path: Path, title: str) -> Path:
    """One point per head at its layer's depth, the mean over heads as a line: local heads sit low, global high."""
    layer_count, heads = distances.shape
    fig, ax = plt.subplots(figsize=(min(max(6.0, 0.35 * layer_count + 3.0), 24.0), 4.5), layout="constrained")
    depth = np.arange(layer_count)
    for head in range(heads):
        ax.scatter(depth, distances[:, head], s=18, alpha=0.75, label=f"head {head + 1}" if heads <= 16 else None)
    ax.plot(depth, distances.mean(axis=1), color="black", linewidth=1, alpha=0.6, label="mean over heads")
    _label_axis(ax.set_xticks, layers, rotation=90 if layer_count > 12 else 0)
    ax.set_xlabel("layer (network depth)")
    ax.set_ylabel("mean attention distance (pixels)")
    ax.set_ylim(bottom=0)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncols=2 if heads > 8 else 1, loc="best")
    fig.suptitle(plain(title), fontsize=9, wrap=True)
    return save_figure(fig, path)


def _label_axis(set_ticks, names: Sequence[str], rotation: int = 0) -> None:
    step = max(1, -(-len(names) // MAX_TICKS))
    positions = list(range(0, len(names), step))
    set_ticks(positions, labels=[plain(names[i]) for i in positions], rotation=rotation, fontsize=7)
