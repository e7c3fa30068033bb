"""``kws table``: the seed's results tables rebuilt from runs' metrics.json files.

Each cell of the seed's table (kws.seed_results) is looked up by the network it names — the
ModelSpec its "DO(p)" gives under the stated dropout meaning — among every finished run found
under the given folders; its figure is the mean ± sample standard deviation of test accuracy
over the seeds found, beside the seed's own figure. Markdown for reading and committing, a PNG
for slides.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kws.models import KwsNet, ModelSpec, param_count
from kws.seed_results import (
    DEPTH_COLUMNS,
    DEPTH_TABLES,
    MAIN_COLUMNS,
    MAIN_ROWS,
    SEED_DEPTHS,
    Cell,
)


@dataclass
class CellResult:
    accs: list[float] = field(default_factory=list)
    test_clips: set[int] = field(default_factory=set)
    epochs: set[int] = field(default_factory=set)

    def text(self) -> str:
        if not self.accs:
            return "–"
        mean = sum(self.accs) / len(self.accs)
        if len(self.accs) == 1:
            return f"{mean:.4f} (1 seed)"
        sd = math.sqrt(sum((a - mean) ** 2 for a in self.accs) / (len(self.accs) - 1))
        return f"{mean:.4f} ± {sd:.4f} ({len(self.accs)})"


@dataclass
class Table:
    title: str
    header: list[str]
    rows: list[list[str]]
    notes: list[str]

    def markdown(self) -> str:
        lines = [f"### {self.title}", ""]
        lines.append("| " + " | ".join(self.header) + " |")
        lines.append(
            "|" + "|".join("---" if i < 2 else "---:" for i in range(len(self.header))) + "|"
        )
        lines += ["| " + " | ".join(row) + " |" for row in self.rows]
        lines.append("")
        lines += [f"- {note}" for note in self.notes]
        return "\n".join(lines) + "\n"


def find_metrics(roots: Iterable[Path]) -> list[dict[str, Any]]:
    """Every finished run's metrics under ``roots`` (a run folder or any folder above runs)."""
    found = []
    for root in roots:
        paths = [root] if root.is_file() else sorted(Path(root).rglob("metrics.json"))
        for path in paths:
            try:
                metrics = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError):
                continue
            if isinstance(metrics, dict) and metrics.get("finished") and "model" in metrics:
                metrics["_path"] = str(path)
                found.append(metrics)
    return found


def by_spec(runs: Sequence[dict[str, Any]]) -> dict[ModelSpec, CellResult]:
    """Test accuracies per network; one figure per (network, seed) — the newest file wins."""
    per_seed: dict[tuple[ModelSpec, int], dict[str, Any]] = {}
    for metrics in runs:
        try:
            spec = ModelSpec.from_dict(metrics["model"])
        except (KeyError, TypeError):
            continue
        seed = metrics.get("config", {}).get("seed", 0)
        per_seed[spec, seed] = metrics
    out: dict[ModelSpec, CellResult] = {}
    for (spec, _), metrics in sorted(per_seed.items(), key=lambda kv: kv[0][1]):
        if metrics.get("test_acc") is None:
            continue
        result = out.setdefault(spec, CellResult())
        result.accs.append(float(metrics["test_acc"]))
        result.test_clips.add(int(metrics.get("data", {}).get("test", 0)))
        result.epochs.add(len(metrics.get("epochs", [])))
    return out


def _seed_figure(value: float | None) -> str:
    return "X" if value is None else f"{value:.4f}"


def _notes(results: dict[ModelSpec, CellResult], used: list[ModelSpec], meaning: str) -> list[str]:
    clips = sorted({c for spec in used if spec in results for c in results[spec].test_clips})
    epochs = sorted({e for spec in used if spec in results for e in results[spec].epochs})
    seeds = sorted({len(results[spec].accs) for spec in used if spec in results})
    said = (
        "the keep probability (TensorFlow 1.x keep_prob): drop rate 1 − p"
        if meaning == "keep"
        else "the drop rate (Keras/PyTorch)"
    )
    notes = [
        f"DO(p): p is {said}.",
        "seed: the report's figure (Speech Commands, 5,297 test clips); ours: mean ± sd of "
        "test accuracy (number of seeds).",
    ]
    if clips:
        notes.append(
            f"ours: {', '.join(map(str, clips))} test clips (unseen voices), "
            f"{', '.join(map(str, epochs))} epochs, {', '.join(map(str, seeds))} seed(s) per cell."
        )
    else:
        notes.append("ours: no finished runs found for these cells.")
    return notes


def main_table(results: dict[ModelSpec, CellResult], meaning: str, init: str = "keras") -> Table:
    header = ["Model", "Architecture"]
    for column in MAIN_COLUMNS:
        header += [f"{column} seed", f"{column} ours"]
    header += ["Params seed", "Params ours"]
    rows, used = [], []
    for row in MAIN_ROWS:
        cells = row.cells()
        line = [row.name, row.notation]
        for cell, seed_value in zip(cells, row.seed):
            spec = cell.spec(meaning, init)
            used.append(spec)
            line += [_seed_figure(seed_value), results.get(spec, CellResult()).text()]
        bn_count = param_count(KwsNet(cells[2].spec(meaning, init).arch(), bn=True))
        plain = param_count(KwsNet(cells[0].spec(meaning, init).arch()))
        if plain == row.params:
            ours = f"{plain:,}"
        elif bn_count == row.params:
            ours = f"{bn_count:,} (with BN)"  # the seed counted ch128's BN variant
        else:
            ours = f"{plain:,} / {bn_count:,} with BN"
        line += [f"{row.params:,}", ours]
        rows.append(line)
    title = "Accuracy and number of parameters (the seed's main table)"
    return Table(title, header, rows, _notes(results, used, meaning))


def depth_table(
    results: dict[ModelSpec, CellResult],
    meaning: str,
    channels: int = 32,
    depths: Sequence[int] = SEED_DEPTHS,
    init: str = "keras",
) -> Table:
    header = ["Architecture", "Params"]
    for do, bn in DEPTH_COLUMNS:
        name = Cell("", None, do, bn).column()
        header += [f"{name} seed", f"{name} ours"]
    seed_table = DEPTH_TABLES.get(channels, {})
    rows, used = [], []
    for depth in depths:
        cells = [Cell(f"ch{channels}", depth, do, bn) for do, bn in DEPTH_COLUMNS]
        arch = cells[0].spec(meaning, init).arch()
        line = [arch.notation, f"{param_count(KwsNet(arch)):,}"]
        seed_row = seed_table.get(depth)
        for k, cell in enumerate(cells):
            spec = cell.spec(meaning, init)
            used.append(spec)
            seed_value = seed_row[k] if seed_row else None
            line += [_seed_figure(seed_value), results.get(spec, CellResult()).text()]
        rows.append(line)
    title = f"Depth sweep of 'Custom channel {channels}' (the seed's 'Added Work' table)"
    return Table(title, header, rows, _notes(results, used, meaning))


def plot_table(table: Table, path: str | Path) -> Path:
    import matplotlib.pyplot as plt

    from kws.plots import save_figure

    width = max(10.0, 1.6 * len(table.header))
    fig, ax = plt.subplots(
        figsize=(width, 0.32 * (len(table.rows) + 1) + 0.25 * len(table.notes) + 0.8)
    )
    ax.axis("off")
    shown = ax.table(
        cellText=table.rows, colLabels=table.header, loc="upper center", cellLoc="center"
    )
    shown.auto_set_font_size(False)
    shown.set_fontsize(7)
    shown.auto_set_column_width(list(range(len(table.header))))
    shown.scale(1.0, 1.3)
    for (r, c), cell in shown.get_celld().items():
        if r == 0:
            cell.set_facecolor("#dde6f0")
            cell.set_text_props(weight="bold")
        elif table.header[c].endswith("ours"):
            cell.set_facecolor("#f3f8ee")
    ax.set_title(table.title, fontsize=10)
    fig.text(0.01, 0.01, "\n".join(table.notes), fontsize=7, va="bottom")
    return save_figure(fig, path)


def sweep_defaults(roots: Iterable[Path]) -> dict[str, Any]:
    """The settings of the first sweep.json among ``roots`` (dropout meaning, init), or {}."""
    for root in roots:
        path = Path(root) / "sweep.json"
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(saved, dict) and isinstance(saved.get("settings"), dict):
            return saved["settings"]
    return {}
