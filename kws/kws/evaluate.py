"""``kws eval``: accuracy and the 16x16 confusion matrix of a checkpoint on a data split.

Orientation, as in the seed: row i is the *actual* class, column j the *predicted* one
(``matrix[i, j]`` clips of class i were predicted as j), classes in the seed's order
(kws.labels.CLASSES). The seed's slides write "Predict Class" in the corner and "Actual class"
over the columns, but their numbers are the other way round — every model's row sums are the
same (the per-class test counts: Zero 385, … Tree 163) while the column sums differ — so the
numbers' orientation is kept and the axes are labelled as what they hold. See docs/kws.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kws.data import Dataset, load_dataset
from kws.labels import CLASSES, NUM_CLASSES, display_name
from kws.models import ModelSpec
from kws.train import load_checkpoint, model_from_checkpoint, pick_device, predict


def confusion_matrix(
    actual: Sequence[int], predicted: Sequence[int], classes: int = NUM_CLASSES
) -> np.ndarray:
    """``m[i, j]``: how many clips of actual class i were predicted as class j."""
    actual, predicted = np.asarray(actual, dtype=np.int64), np.asarray(predicted, dtype=np.int64)
    if actual.shape != predicted.shape:
        raise ValueError(f"{len(actual)} actual labels but {len(predicted)} predictions")
    if len(actual) and (
        min(actual.min(), predicted.min()) < 0 or max(actual.max(), predicted.max()) >= classes
    ):
        raise ValueError(f"class indices must be in 0..{classes - 1}")
    matrix = np.zeros((classes, classes), dtype=np.int64)
    np.add.at(matrix, (actual, predicted), 1)
    return matrix


def matrix_accuracy(matrix: np.ndarray) -> float:
    total = matrix.sum()
    return float(np.trace(matrix) / total) if total else 0.0


def format_matrix(matrix: np.ndarray, names: Sequence[str] = CLASSES) -> str:
    """A text table: a row per actual class, a column per predicted class."""
    labels = [display_name(n) for n in names]
    width = max(max(len(str(v)) for v in matrix.flat), max(len(x) for x in labels)) + 1
    first = max(len(x) for x in [*labels, "actual \\ predicted"])
    lines = ["actual \\ predicted".ljust(first) + "".join(x.rjust(width) for x in labels)]
    for label, row in zip(labels, matrix):
        lines.append(label.ljust(first) + "".join(str(v).rjust(width) for v in row))
    return "\n".join(lines)


@dataclass
class Evaluation:
    spec: ModelSpec
    split: str
    matrix: np.ndarray
    files: list[str]
    predicted: np.ndarray

    @property
    def accuracy(self) -> float:
        return matrix_accuracy(self.matrix)

    def title(self) -> str:
        return f"{self.spec.label()} (Acc: {self.accuracy:.4f})"

    def to_dict(self) -> dict:
        return {
            "model": self.spec.label(),
            "split": self.split,
            "clips": int(self.matrix.sum()),
            "accuracy": self.accuracy,
            "classes": list(CLASSES),
            "orientation": "rows: actual class, columns: predicted class",
            "confusion_matrix": self.matrix.tolist(),
        }


def evaluate(checkpoint: str | Path, data: str | Path | Dataset, split: str = "test") -> Evaluation:
    model, spec = model_from_checkpoint(load_checkpoint(checkpoint))
    dataset = data if isinstance(data, Dataset) else load_dataset(data, splits=[split])
    part = dataset[split]
    if len(part) == 0:
        raise ValueError(f"{dataset.root}: the {split} split has no clips")
    # Evaluation needs no GPU claim; it uses a GPU only if one is visible already.
    device = pick_device(None)
    torch.manual_seed(0)
    predicted = predict(model.to(device), part, device)
    return Evaluation(spec, split, confusion_matrix(part.labels, predicted), part.files, predicted)


@dataclass(frozen=True)
class PairChange:
    """How often two classes were taken for each other, by model A and by model B."""

    first: int
    second: int
    a: tuple[int, int]  # (first → second, second → first) clips under model A
    b: tuple[int, int]

    def text(self) -> str:
        names = f"{display_name(CLASSES[self.first])} ↔ {display_name(CLASSES[self.second])}"
        total_a, total_b = sum(self.a), sum(self.b)
        if total_b and total_a:
            ratio = total_a / total_b
            how = f"{ratio:.1f}x fewer" if ratio >= 1 else f"{1 / ratio:.1f}x more"
        else:
            how = "none left" if total_a else "new"
        return (
            f"{names}: A {total_a} ({self.a[0]} + {self.a[1]}), "
            f"B {total_b} ({self.b[0]} + {self.b[1]}): {how} with B"
        )


def confusion_changes(a: np.ndarray, b: np.ndarray, limit: int = 8) -> list[PairChange]:
    """The class pairs whose mutual confusions changed most between matrices ``a`` and ``b``
    (the seed's "In 'Three' and 'Tree' case, it is around two times better")."""
    changes = []
    for i in range(len(a)):
        for j in range(i + 1, len(a)):
            pa, pb = (int(a[i, j]), int(a[j, i])), (int(b[i, j]), int(b[j, i]))
            if sum(pa) or sum(pb):
                changes.append(PairChange(i, j, pa, pb))
    changes.sort(key=lambda c: (-abs(sum(c.a) - sum(c.b)), -sum(c.a), c.first, c.second))
    return changes[:limit]


def per_class_recall(matrix: np.ndarray) -> np.ndarray:
    rows = matrix.sum(1)
    return np.divide(np.diag(matrix), rows, out=np.zeros(len(rows)), where=rows > 0)


def format_comparison(a: Evaluation, b: Evaluation) -> str:
    """Both matrices side by side, per-class recall A, B and B − A, then the class pairs whose
    confusions changed most."""
    left, right = format_matrix(a.matrix).splitlines(), format_matrix(b.matrix).splitlines()
    width = max(len(line) for line in left)
    lines = [f"A: {a.title()}".ljust(width) + "  |  " + f"B: {b.title()}"]
    lines += [la.ljust(width) + "  |  " + lb for la, lb in zip(left, right)]
    ra, rb = per_class_recall(a.matrix), per_class_recall(b.matrix)
    lines += ["", f"{'class':8} {'clips':>6} {'A':>7} {'B':>7} {'B - A':>7}"]
    for k, name in enumerate(CLASSES):
        clips = int(a.matrix[k].sum())
        lines.append(
            f"{display_name(name):8} {clips:>6} {ra[k]:>7.4f} {rb[k]:>7.4f} {rb[k] - ra[k]:>+7.4f}"
        )
    lines += ["", "confusions that changed most (both directions, actual → predicted + back):"]
    lines += [f"  {change.text()}" for change in confusion_changes(a.matrix, b.matrix)]
    return "\n".join(lines)


def compare(
    first: str | Path, second: str | Path, data: str | Path | Dataset, split: str = "test"
) -> tuple[Evaluation, Evaluation]:
    """Both checkpoints on the same clips (the data is read once)."""
    dataset = data if isinstance(data, Dataset) else load_dataset(data, splits=[split])
    return evaluate(first, dataset, split), evaluate(second, dataset, split)
