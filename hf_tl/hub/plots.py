"""The PNGs hf_tl writes: a run's training curves and an evaluation's confusion matrix.

matplotlib runs on its Agg backend (no display needed), and each figure is written through a
temporary file and a rename, so a crash never leaves half a PNG where a good one was.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from hf_tl.runs.folder import CURVES_FILE as CURVES_FILE  # noqa: E402  (named with the run folder's entries)
from hf_tl.runs.folder import written_atomically  # noqa: E402

CONFUSION_FILE = "confusion_matrix.png"
ANNOTATE_CLASSES_UP_TO = 20  # classes; beyond this the counts would not fit in their cells


def training_curves(log_history: list[dict], path: Path, title: str = "") -> Path:
    """Loss (training and validation) and validation accuracy per epoch, from the Trainer's log history."""
    train = [(h["epoch"], h["loss"]) for h in log_history if "loss" in h and "epoch" in h]
    evals = [h for h in log_history if "eval_accuracy" in h and "epoch" in h]
    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(10, 4), layout="constrained")
    if train:
        loss_ax.plot(*zip(*train, strict=True), marker=".", label="training loss", alpha=0.8)
    if evals:
        epochs = [h["epoch"] for h in evals]
        loss_ax.plot(epochs, [h.get("eval_loss") for h in evals], marker="o", label="validation loss")
        acc_ax.plot(epochs, [h["eval_accuracy"] for h in evals], marker="o", label="validation accuracy")
        if "eval_top5_accuracy" in evals[0]:
            acc_ax.plot(epochs, [h.get("eval_top5_accuracy") for h in evals], marker="s", label="validation top-5")
        acc_ax.set_ylim(0, 1.02)
    for ax, ylabel in ((loss_ax, "loss"), (acc_ax, "accuracy")):
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.has_data():
            ax.legend()
        else:
            ax.text(0.5, 0.5, "nothing logged", ha="center", va="center", transform=ax.transAxes)
    if title:
        fig.suptitle(plain(title))
    return save_figure(fig, path)


def confusion_matrix(counts: np.ndarray, labels: Sequence[str], path: Path, title: str = "") -> Path:
    """Rows are the true classes, columns the predicted ones; each cell holds an image count."""
    n = len(labels)
    side = min(max(5.0, 0.45 * n + 2.5), 40.0)
    fig, ax = plt.subplots(figsize=(side, side), layout="constrained")
    image = ax.imshow(counts, cmap="Blues")
    fig.colorbar(image, ax=ax, shrink=0.8, label="images")
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    names = [plain(label) for label in labels]
    ax.set_xticks(range(n), labels=names, rotation=90 if n > 5 else 0)
    ax.set_yticks(range(n), labels=names)
    if n <= ANNOTATE_CLASSES_UP_TO:
        threshold = counts.max() / 2 if counts.size else 0
        for (row, col), value in np.ndenumerate(counts):
            color = "white" if value > threshold else "black"
            ax.text(col, row, str(value), ha="center", va="center", color=color, fontsize=8)
    if title:
        fig.suptitle(plain(title), fontsize=9, wrap=True)
    return save_figure(fig, path)


def plain(text: object) -> str:
    """Text drawn as written: a '$' in a label or dataset name would otherwise start matplotlib's math mode."""
    return str(text).replace("$", r"\$")


def save_figure(fig: Figure, path: Path) -> Path:
    """Write a PNG atomically (as every run-folder file is written)."""
    try:
        with written_atomically(Path(path)) as tmp:
            fig.savefig(tmp, dpi=100, format="png")
    finally:
        plt.close(fig)
    return Path(path)


# The report's colours: one per architecture family, grey for runs whose family is not known.
TYPE_COLOURS = {"CNN": "tab:blue", "transformer": "tab:orange"}
OTHER_COLOUR = "tab:gray"


def accuracy_vs_parameters(points: Sequence[dict], path: Path, title: str = "") -> Path:
    """Validation accuracy (%) against trainable parameters (log axis), one colour per family, each point named.

    `points`: dicts with label, type, parameters, accuracy and, where the paper gives them, paper_parameters and
    paper_accuracy (drawn hollow, joined to the run by a thin line).
    """
    fig, ax = plt.subplots(figsize=(9, 6), layout="constrained")
    for kind in sorted({p["type"] or "" for p in points}):
        own = [p for p in points if (p["type"] or "") == kind]
        colour = TYPE_COLOURS.get(kind, OTHER_COLOUR)
        ax.scatter([p["parameters"] for p in own], [p["accuracy"] for p in own], s=50, color=colour, zorder=3,
                   label=f"{kind or 'family not given'} (this run)")  # fmt: skip
        paper = [p for p in own if p.get("paper_accuracy") is not None and p.get("paper_parameters")]
        if paper:
            ax.scatter([p["paper_parameters"] for p in paper], [p["paper_accuracy"] for p in paper], s=50,
                       facecolors="none", edgecolors=colour, zorder=3, label=f"{kind} (paper)")  # fmt: skip
            for p in paper:
                ax.plot([p["paper_parameters"], p["parameters"]], [p["paper_accuracy"], p["accuracy"]],
                        color=colour, alpha=0.3, linewidth=0.8)  # fmt: skip
    for p in points:
        ax.annotate(plain(p["label"]), (p["parameters"], p["accuracy"]), xytext=(5, 4), textcoords="offset points",
                    fontsize=8)  # fmt: skip
    ax.set_xscale("log")
    ax.margins(x=0.3, y=0.08)  # room for the labels right of the points
    ax.set_xlabel("trainable parameters (log scale)")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3, which="both")
    if points:
        ax.legend(loc="lower right", fontsize=8)
    else:
        ax.text(0.5, 0.5, "no finished runs", ha="center", va="center", transform=ax.transAxes)
    if title:
        ax.set_title(plain(title), fontsize=10)
    return save_figure(fig, path)


def strategy_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float | None]],
    path: Path,
    title: str = "",
    paper: dict[str, Sequence[float | None]] | None = None,
) -> Path:
    """Grouped bars: for each backbone (group), one bar per strategy, its accuracy written on it; the paper's
    figure, where given, as a black tick over the bar."""
    width = 0.8 / max(len(series), 1)
    paper_labelled = False
    fig, ax = plt.subplots(figsize=(max(6.0, 1.3 * len(groups) * max(len(series), 1) + 2), 5), layout="constrained")
    for i, (name, values) in enumerate(series.items()):
        xs = [g + (i - (len(series) - 1) / 2) * width for g in range(len(groups))]
        shown = [(x, v) for x, v in zip(xs, values, strict=True) if v is not None]
        bars = ax.bar([x for x, _ in shown], [v for _, v in shown], width, label=plain(name))
        ax.bar_label(bars, fmt="%.1f", fontsize=7, padding=2)
        marks = [(x, v) for x, v in zip(xs, (paper or {}).get(name, [None] * len(xs)), strict=True) if v is not None]
        if marks:
            ax.scatter(*zip(*marks, strict=True), marker="_", s=400, color="black", zorder=3,
                       label=None if paper_labelled else "paper")  # fmt: skip
            paper_labelled = True
    ax.set_xticks(range(len(groups)), labels=[plain(g) for g in groups], rotation=20 if len(groups) > 4 else 0)
    ax.set_ylabel("validation accuracy (%)")
    ax.set_ylim(0, 105)
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8, loc="lower right")
    if title:
        ax.set_title(plain(title), fontsize=10)
    return save_figure(fig, path)
