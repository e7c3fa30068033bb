"""`kws table`: the seed's tables rebuilt from metrics files, seed figures beside ours."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from kws.cli import main
from kws.models import ModelSpec
from kws.seed_results import MAIN_ROWS, Cell, main_cells
from kws.table import by_spec, depth_table, find_metrics, main_table


def fake_run(root: Path, spec: ModelSpec, seed: int, acc: float, test: int = 480) -> None:
    out = root / spec.label().replace(" ", "_") / f"seed{seed}"
    out.mkdir(parents=True)
    metrics = {
        "model": spec.to_dict(),
        "config": {"seed": seed},
        "data": {"test": test},
        "epochs": [{"epoch": 1}, {"epoch": 2}],
        "finished": True,
        "test_acc": acc,
    }
    (out / "metrics.json").write_text(json.dumps(metrics))


def test_main_table_rows_carry_the_seed_names_figures_and_ours_as_mean_sd(tmp_path):
    ch32_keep075 = Cell("ch32", None, 0.75, False).spec("keep")
    assert ch32_keep075 == ModelSpec("ch32", dropout=0.25)
    fake_run(tmp_path, ch32_keep075, 0, 0.90)
    fake_run(tmp_path, ch32_keep075, 1, 0.92)
    fake_run(tmp_path, ch32_keep075, 2, 0.94)
    table = main_table(by_spec(find_metrics([tmp_path])), "keep")
    assert [row[0] for row in table.rows] == [row.name for row in MAIN_ROWS]
    row = next(r for r in table.rows if r[0] == "Custom channel 32 DO(0.75)")
    assert row[1:] == [
        "8 CONV(5, 64)",
        "0.9533",
        "0.9200 ± 0.0200 (3)",
        "X",
        "–",
        "0.9458",
        "–",
        "94,768",
        "94,768",
    ]
    assert any("keep probability" in n for n in table.notes)
    assert any("480 test clips" in n for n in table.notes)
    markdown = table.markdown()
    assert (
        "| Custom channel 32 DO(0.75) | 8 CONV(5, 64) | 0.9533 | 0.9200 ± 0.0200 (3) |" in markdown
    )


def test_the_same_figures_under_the_rate_meaning_are_other_cells(tmp_path):
    fake_run(tmp_path, ModelSpec("ch32", dropout=0.25), 0, 0.9)
    table = main_table(by_spec(find_metrics([tmp_path])), "rate")
    row = next(r for r in table.rows if r[0] == "Custom channel 32 DO(0.75)")
    assert row[3] == "–"  # DO(0.75) as a drop rate is ModelSpec dropout 0.75: not run
    assert any("the drop rate" in n for n in table.notes)


def test_depth_table_has_the_seed_rows_and_x_for_depths_it_did_not_run(tmp_path):
    fake_run(tmp_path, ModelSpec("ch32", depth=5, dropout=0.75, bn=True), 0, 0.5)
    table = depth_table(by_spec(find_metrics([tmp_path])), "keep", 32, depths=range(1, 10))
    names = [row[0] for row in table.rows]
    assert (
        names[0] == "1 CONV(5, 32)" and names[4] == "5 CONV(5, 64)" and names[8] == "9 CONV(5, 128)"
    )
    assert table.rows[0][2:4] == ["X", "–"]
    # DO(0.25)+BN as keep_prob is drop rate 0.75
    assert table.rows[4][4:6] == ["0.7458", "0.5000 (1 seed)"]


def test_unfinished_runs_do_not_count(tmp_path):
    spec = ModelSpec("base", dropout=0.5)
    fake_run(tmp_path, spec, 0, 0.8)
    path = tmp_path / "base_do0.5" / "seed0" / "metrics.json"
    data = json.loads(path.read_text())
    data["finished"] = False
    path.write_text(json.dumps(data))
    assert by_spec(find_metrics([tmp_path])) == {}


def test_main_cells_are_each_network_once():
    cells = main_cells()
    specs = [c.spec("keep") for c in cells]
    assert len(specs) == len(set(specs)) == 19


@pytest.mark.parametrize("grid", ["main", "depth"])
def test_the_command_prints_markdown_and_writes_the_png(tmp_path, capsys, grid):
    fake_run(tmp_path / "runs", ModelSpec("ch32", dropout=0.5), 0, 0.91)
    png, md = tmp_path / "t.png", tmp_path / "t.md"
    argv = ["table", str(tmp_path / "runs"), "--grid", grid, "--png", str(png), "--md", str(md)]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert out == md.read_text()
    assert out.startswith("### ")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_command_takes_the_sweeps_dropout_meaning(tmp_path, capsys):
    runs = tmp_path / "runs"
    fake_run(runs, ModelSpec("ch32", dropout=0.75), 0, 0.91)
    settings = {"dropout_as": "rate", "init": "keras"}
    (runs / "sweep.json").write_text(json.dumps({"format": "kws-sweep-1", "settings": settings}))
    assert main(["table", str(runs)]) == 0
    out = capsys.readouterr().out
    assert "| Custom channel 32 DO(0.75) | 8 CONV(5, 64) | 0.9533 | 0.9100 (1 seed) |" in out
