"""PNG figures: confusion matrices (one, or two side by side as the seed compares models), and
the conv filters with their axes, units and colour bars, including each first-layer filter's
frequency response (what the seed's "Filter in DSP" slide is after)."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only; never a display

import matplotlib.pyplot as plt
import numpy as np

from kws.labels import CLASSES, SAMPLE_RATE, display_name

RESPONSE_POINTS = 512  # frequencies from 0 to Nyquist in the response plots


def _draw_confusion(fig, ax, matrix: np.ndarray, title: str) -> None:
    labels = [display_name(n) for n in CLASSES]
    # Share of each actual class, so small classes (Bed…Tree) shade like the digits.
    rows = matrix.sum(1, keepdims=True)
    shade = np.divide(matrix, rows, out=np.zeros(matrix.shape), where=rows > 0)
    image = ax.imshow(shade, cmap="Blues", vmin=0, vmax=1)
    for (i, j), value in np.ndenumerate(matrix):
        color = "white" if shade[i, j] > 0.5 else "black"
        ax.text(j, i, str(value), ha="center", va="center", fontsize=7, color=color)
    ax.set_xticks(range(len(labels)), labels, rotation=60, ha="left", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.xaxis.set_label_position("top")
    ax.xaxis.tick_top()
    ax.set_xlabel("Predict Class")
    ax.set_ylabel("Actual class")
    ax.set_title(title, y=-0.08)
    bar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label("share of the actual class's clips")


def plot_confusion(matrix: np.ndarray, path: str | Path, title: str) -> Path:
    """Counts in every cell; rows "Actual class", columns "Predict Class", seed class order."""
    fig, ax = plt.subplots(figsize=(9.5, 8))
    _draw_confusion(fig, ax, matrix, title)
    fig.tight_layout()
    return save_figure(fig, path)


def plot_confusion_pair(
    matrices: Sequence[np.ndarray], titles: Sequence[str], path: str | Path
) -> Path:
    """Two models' matrices side by side, as the seed's comparison slides show them."""
    fig, axes = plt.subplots(1, 2, figsize=(19, 8.5))
    for ax, matrix, title in zip(axes, matrices, titles):
        _draw_confusion(fig, ax, matrix, title)
    fig.tight_layout()
    return save_figure(fig, path)


def frequency_responses(filters: np.ndarray, points: int = RESPONSE_POINTS):
    """(frequencies in Hz, |H(f)| in dB re the largest gain of any filter) of FIR ``filters``
    [count, taps], as the 16 kHz input sees them."""
    spectrum = np.abs(np.fft.rfft(filters, n=2 * (points - 1), axis=1))
    freqs = np.fft.rfftfreq(2 * (points - 1), 1 / SAMPLE_RATE)
    db = 20 * np.log10(np.maximum(spectrum, 1e-12) / max(spectrum.max(), 1e-12))
    return freqs, db


def plot_first_layer(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """``weights`` [filters, 1, taps]: each filter's impulse response (weight against time)."""
    filters = weights[:, 0, :]
    limit = float(np.abs(filters).max()) or 1.0
    taps_ms = np.arange(filters.shape[1]) * 1000 / SAMPLE_RATE

    def draw(ax, k: int) -> None:
        ax.plot(taps_ms, filters[k], marker=".", lw=1)
        ax.axhline(0, color="grey", lw=0.5)
        ax.set_ylim(-limit, limit)

    return _filter_grid(
        len(filters), draw, path, f"{title}: impulse responses", "time (ms)", "weight"
    )


def plot_first_layer_responses(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """Each first-layer filter's magnitude response in dB from 0 to 8 kHz, with its peak."""
    freqs, db = frequency_responses(weights[:, 0, :])

    def draw(ax, k: int) -> None:
        ax.plot(freqs / 1000, db[k], lw=1)
        peak = int(np.argmax(db[k]))
        ax.axvline(freqs[peak] / 1000, color="tab:red", lw=0.6)
        ax.text(
            0.98,
            0.05,
            f"peak {freqs[peak]:.0f} Hz",
            transform=ax.transAxes,
            fontsize=6,
            ha="right",
            color="tab:red",
        )
        ax.set_ylim(-60, 3)
        ax.set_xlim(0, SAMPLE_RATE / 2000)

    return _filter_grid(
        len(db), draw, path, f"{title}: frequency responses", "frequency (kHz)", "gain (dB)"
    )


def plot_response_map(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """All first-layer responses in one image, filters sorted by peak frequency: which bands
    the layer covers."""
    freqs, db = frequency_responses(weights[:, 0, :])
    order = np.argsort(np.argmax(db, axis=1), kind="stable")
    fig, ax = plt.subplots(figsize=(8, max(3.0, 0.12 * len(db) + 1.5)))
    image = ax.imshow(
        db[order],
        aspect="auto",
        origin="lower",
        extent=(0, freqs[-1] / 1000, -0.5, len(db) - 0.5),
        cmap="magma",
        vmin=-40,
        vmax=0,
    )
    ax.set_yticks(range(len(db)), [str(k) for k in order], fontsize=5)
    ax.set_xlabel("frequency (kHz)")
    ax.set_ylabel("filter (sorted by peak frequency)")
    ax.set_title(f"{title}: frequency responses")
    bar = fig.colorbar(image, ax=ax)
    bar.set_label("gain (dB re the largest gain)")
    fig.tight_layout()
    return save_figure(fig, path)


def plot_second_layer(weights: np.ndarray, path: str | Path, title: str) -> Path:
    """``weights`` [filters, in_channels, taps]: each filter as an in-channel x tap heat map,
    one colour scale for all, with its colour bar. (Taps, not ms: the layer sees the first
    layer's output after its pooling, whose rate the weights do not record.)"""
    limit = float(np.abs(weights).max()) or 1.0
    taps = weights.shape[2]
    images = []

    def draw(ax, k: int) -> None:
        images.append(
            ax.imshow(
                weights[k],
                cmap="RdBu_r",
                vmin=-limit,
                vmax=limit,
                aspect="auto",
                extent=(-0.5, taps - 0.5, weights.shape[1] - 0.5, -0.5),
            )
        )

    def finish(fig, axes) -> None:
        bar = fig.colorbar(images[0], ax=axes, fraction=0.02, pad=0.01)
        bar.set_label("weight")

    return _filter_grid(
        len(weights),
        draw,
        path,
        f"{title}: weights per input channel and tap",
        "tap",
        "input channel",
        finish=finish,
        tight=False,
    )


def _filter_grid(
    count: int,
    draw: Callable[[Any, int], None],
    path: str | Path,
    title: str,
    xlabel: str,
    ylabel: str,
    finish: Callable[[Any, Any], None] | None = None,
    tight: bool = True,
) -> Path:
    """``count`` numbered panels, 8 to a row, drawn by ``draw(ax, k)``; tick labels and axis
    names on the left column and the bottom row."""
    cols = min(8, count)
    rows = math.ceil(count / cols)
    fig, axes = plt.subplots(
        rows, cols, figsize=(2.0 * cols, 1.6 * rows + 0.8), squeeze=False, sharex=True, sharey=True
    )
    for k, ax in enumerate(axes.flat):
        if k >= count:
            ax.axis("off")
            continue
        draw(ax, k)
        ax.set_title(f"filter {k}", fontsize=7, pad=2)
        ax.tick_params(labelsize=6)
    for ax in axes[-1]:
        ax.set_xlabel(xlabel, fontsize=7)
    for ax in axes[:, 0]:
        ax.set_ylabel(ylabel, fontsize=7)
    fig.suptitle(title)
    if tight:
        fig.tight_layout()
    if finish:
        finish(fig, axes)
    return save_figure(fig, path)


def save_figure(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
