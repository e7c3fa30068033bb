"""`kws eval --compare A B`: two models' matrices side by side and what changed between them."""

from __future__ import annotations

import numpy as np
import pytest

from kws.cli import main
from kws.evaluate import Evaluation, confusion_changes, format_comparison
from kws.labels import CLASS_INDEX
from kws.models import ModelSpec
from kws.train import TrainConfig, train

THREE, TREE = CLASS_INDEX["three"], CLASS_INDEX["tree"]


def seed_like_pair() -> tuple[np.ndarray, np.ndarray]:
    """The seed's Three/Tree cells (base vs "Custom channel 32 DO(0.75)"), 300 right per class."""
    base, ch32 = (np.diag(np.full(16, 300)) for _ in range(2))
    base[THREE, TREE], base[TREE, THREE] = 20, 32
    ch32[THREE, TREE], ch32[TREE, THREE] = 8, 15
    base[0, 2] = ch32[0, 2] = 5  # unchanged: listed after the pair that changed
    return base, ch32


def test_the_three_tree_confusion_is_the_top_change_and_its_ratio_is_given():
    base, ch32 = seed_like_pair()
    changes = confusion_changes(base, ch32)
    assert (changes[0].first, changes[0].second) == (THREE, TREE)
    assert changes[0].a == (20, 32) and changes[0].b == (8, 15)
    assert changes[0].text() == "Three ↔ Tree: A 52 (20 + 32), B 23 (8 + 15): 2.3x fewer with B"
    assert changes[1].text().startswith("Zero ↔ Two: A 5 (5 + 0), B 5 (5 + 0)")


def test_the_text_shows_both_matrices_side_by_side_and_per_class_recall():
    base, ch32 = seed_like_pair()
    a = Evaluation(ModelSpec("base", dropout=0.5), "test", base, [], np.zeros(0))
    b = Evaluation(ModelSpec("ch32", dropout=0.25), "test", ch32, [], np.zeros(0))
    text = format_comparison(a, b)
    lines = text.splitlines()
    assert lines[0].startswith("A: base do0.5 (Acc: ") and "|  B: ch32 do0.25 (Acc: " in lines[0]
    three = next(line for line in lines if line.startswith("Three ") and "|" in line)
    left, right = three.split("|")
    assert left.split()[-1] == "20" and right.split()[-1] == "8"
    recall = next(line for line in lines if line.startswith("Tree ") and "|" not in line)
    assert recall.split() == ["Tree", "332", "0.9036", "0.9524", "+0.0488"]
    assert "Three ↔ Tree: A 52" in text


@pytest.fixture(scope="module")
def two_checkpoints(synth_set, tmp_path_factory):
    paths = []
    for spec in (ModelSpec("ch4", depth=6, bn=True), ModelSpec("ch4", depth=5, dropout=0.25)):
        out = tmp_path_factory.mktemp("kws-compare")
        train(TrainConfig(spec, synth_set, out, epochs=1, gpus="none", log=False, progress=False))
        paths.append(out / "best.pt")
    return paths


def test_eval_compare_prints_both_and_draws_them_side_by_side(
    two_checkpoints, synth_set, tmp_path, capsys
):
    png = tmp_path / "pair.png"
    argv = ["eval", "--compare", *map(str, two_checkpoints), "--data", str(synth_set)]
    assert main([*argv, "--png", str(png)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[0] == "on test: 32 clips"
    assert "A: ch4 d6 bn (Acc: " in out and "B: ch4 d5 do0.25 (Acc: " in out
    assert "confusions that changed most" in out
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    from PIL import Image

    width, height = Image.open(png).size
    assert width > 1.8 * height  # two matrices next to each other


def test_eval_wants_one_checkpoint_or_compare(two_checkpoints, synth_set, capsys):
    both = ["eval", str(two_checkpoints[0]), "--compare", *map(str, two_checkpoints)]
    assert main([*both, "--data", str(synth_set)]) == 2
    assert "not both" in capsys.readouterr().err
    assert main(["eval", "--data", str(synth_set)]) == 2
    assert "give a checkpoint" in capsys.readouterr().err
