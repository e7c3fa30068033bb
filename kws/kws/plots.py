"""PNG figures: the confusion matrix (as the seed's slides show it) and the conv filters."""

from __future__ import annotations

import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np

from kws.labels import CLASSES, display_name


def plot_confusion(matrix: np.ndarray, path: str | Path, title: str) -> Path:
    """Counts in every cell; rows "Actual class", columns "Predict Class", seed class order."""
    labels = [display_name(n) for n in CLASSES]
    fig, ax = plt.subplots(figsize=(9, 8))
    # Share of each actual class, so small classes (Bed…Tree) shade like the digits.
    rows = matrix.sum(1, keepdims=True)
    shade = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        color = "white" if shade[i, j] > 0.5 else "black"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_xlabel("Predict Class")
    ax.set_ylabel("Actual class")
    ax.set_title(title, y=-0.08)
    fig.tight_layout()
    return _save(fig, path)


def plot_first_layer(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """``weights`` [filters, 1, taps]: each filter's impulse response, one small plot each."""
    filters = weights[:, 0, :]
    limit = float(np.abs(filters).max()) or 1.0

    def draw(ax, k: int) -> None:
        ax.plot(filters[k], lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-limit, limit)

    return _filter_grid(len(filters), 1.2, draw, path, title)


def plot_second_layer(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """``weights`` [filters, in_channels, taps]: each filter as an in-channel x tap heat map."""
    limit = float(np.abs(weights).max()) or 1.0

    def draw(ax, k: int) -> None:
        ax.imshow(weights[k], cmap="RdBu_r", vmin=-limit, vmax=limit, aspect="auto")

    return _filter_grid(len(weights), 1.6, draw, path, title)


def _filter_grid(
    count: int, cell_height: float, draw: Callable[[Any, int], None], path: str | Path, title: str
) -> Path:
    """``count`` small numbered panels, 8 to a row, each drawn by ``draw(ax, k)``."""
    cols = min(8, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, cell_height * rows), squeeze=False)
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= count:
            ax.axis("off")
            continue
        draw(ax, k)
        ax.set_title(str(k), fontsize=7, pad=2)
    fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
