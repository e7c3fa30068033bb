"""Confusion matrix: rows are the actual class, columns the predicted one, in the seed's order."""

from __future__ import annotations

import numpy as np
import pytest

from kws.evaluate import confusion_matrix, format_matrix, matrix_accuracy
from kws.labels import CLASSES
from kws.plots import plot_confusion


def toy():
    # (actual, predicted): two zeros (one called "one"), a one, a two called "tree", a tree
    actual = [0, 0, 1, 2, 15]
    predicted = [0, 1, 1, 15, 15]
    return actual, predicted


def test_cell_i_j_counts_actual_i_predicted_as_j():
    matrix = confusion_matrix(*toy())
    expected = np.zeros((16, 16), dtype=int)
    expected[0, 0] = expected[0, 1] = expected[1, 1] = expected[2, 15] = expected[15, 15] = 1
    assert np.array_equal(matrix, expected)
    assert matrix.sum(axis=1).tolist()[:3] == [2, 1, 1]  # row sums: clips per actual class
    assert matrix_accuracy(matrix) == pytest.approx(3 / 5)


def test_class_order_is_the_seeds():
    seed_rows = "Zero One Two Three Four Five Six Seven Eight Nine Bed Bird Cat Dog House Tree"
    assert " ".join(c.capitalize() for c in CLASSES) == seed_rows


def test_text_table_has_a_row_per_actual_class():
    lines = format_matrix(confusion_matrix(*toy())).splitlines()
    assert lines[0].split()[:4] == ["actual", "\\", "predicted", "Zero"]
    assert lines[0].split()[-1] == "Tree"
    assert lines[1].split() == ["Zero", "1", "1"] + ["0"] * 14
    assert lines[3].split() == ["Two"] + ["0"] * 15 + ["1"]
    assert len(lines) == 17


def test_mismatched_or_out_of_range_labels_are_refused():
    with pytest.raises(ValueError, match="2 actual labels but 1"):
        confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match=r"0\.\.15"):
        confusion_matrix([16], [0])


def test_png_is_written(tmp_path):
    path = plot_confusion(confusion_matrix(*toy()), tmp_path / "cm.png", "toy (Acc: 0.6000)")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
