"""The `kws` command's subcommands, run in-process: output and error handling."""

from __future__ import annotations

from pathlib import Path

import pytest

from kws.cli import main
from kws.models import ModelSpec
from kws.train import TrainConfig, train

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def checkpoint(synth_set, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("kws-cli")
    spec = ModelSpec("ch4", depth=6, bn=True)
    train(TrainConfig(spec, synth_set, out, epochs=1, gpus="none", log=False, progress=False))
    return out / "best.pt"


def test_models_prints_every_seed_model_with_its_count(capsys):
    assert main(["models"]) == 0
    rows = {line.split()[0]: line for line in capsys.readouterr().out.splitlines()[1:]}
    assert set(rows) == {"base", "ch32", "ch64", "vgg", "ch128"}
    for name, count in [
        ("base", "1,855,056"),
        ("ch32", "94,768"),
        ("ch64", "363,600"),
        ("vgg", "470,736"),
        ("ch128", "2,071,184"),
    ]:
        assert count in rows[name] and "NO" not in rows[name]
    assert rows["ch128"].endswith("with bn") and rows["ch32"].endswith("without bn")


def test_models_depths_lists_the_sweep(capsys):
    assert main(["models", "--depths"]) == 0
    out = capsys.readouterr().out
    assert "9 CONV(5, 128)" in out and "5 CONV(5, 256)" in out


def test_eval_prints_the_matrix_and_writes_the_png(checkpoint, synth_set, tmp_path, capsys):
    png = tmp_path / "cm.png"
    assert main(["eval", str(checkpoint), "--data", str(synth_set), "--png", str(png)]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("ch4 d6 bn (Acc: ") and lines[0].endswith("on test: 32 clips")
    names = "Zero One Two Three Four Five Six Seven Eight Nine Bed Bird Cat Dog House Tree"
    assert lines[1].split()[3:] == names.split()
    assert sum(int(v) for line in lines[2:] for v in line.split()[1:]) == 32
    assert png.read_bytes()[:8] == PNG


def test_filters_writes_both_layers_and_the_frequency_responses(checkpoint, tmp_path, capsys):
    assert main(["filters", str(checkpoint), "--out", str(tmp_path)]) == 0
    names = [
        "first_layer_filters.png",
        "first_layer_responses.png",
        "first_layer_response_map.png",
        "second_layer_filters.png",
    ]
    for name in names:
        assert (tmp_path / name).read_bytes()[:8] == PNG
    assert capsys.readouterr().out.count("ch4 d6 bn: wrote ") == 4


def test_keep_prob_is_the_tensorflow_meaning_and_excludes_dropout(capsys):
    from kws.cli import build_parser, model_spec

    args = build_parser().parse_args(
        ["train", "--model", "ch32", "--keep-prob", "0.75", "--data", "x"]
    )
    assert model_spec(args) == ModelSpec("ch32", dropout=0.25)
    args = build_parser().parse_args(
        ["train", "--model", "ch32", "--dropout", "0.75", "--data", "x"]
    )
    assert model_spec(args).dropout == 0.75
    args = build_parser().parse_args(["train", "--model", "ch32", "--init", "torch", "--data", "x"])
    assert model_spec(args).label() == "ch32 torch-init"
    with pytest.raises(SystemExit):
        build_parser().parse_args(
            ["train", "--model", "ch32", "--dropout", "0.5", "--keep-prob", "0.5", "--data", "x"]
        )
    assert "not allowed with argument" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "--model", "resnet", "--data", "x"], "unknown model 'resnet'"),
        (["train", "--data", "x"], "give --model"),
        (["train", "--model", "ch32", "--data", "/nonexistent"], "no such folder"),
        (["eval", "/nonexistent.pt", "--data", "x"], "no such checkpoint"),
        (["train", "--model", "ch32", "--keep-prob", "0", "--data", "x"], "keep probability"),
        (["train", "--model", "ch32", "--augment", "pitch", "--data", "x"], "unknown pitch"),
        (["sweep", "depth", "--depths", "3-x", "--data", "x"], "--depths"),
        (["train", "--model", "ch32", "--threads", "0", "--data", "x"], "--threads"),
        (["sweep", "main", "--threads", "0", "--data", "x"], "--threads"),
        (["synth", "/tmp/kws-never", "--engines", "say"], "--engines"),
        (["synth", "/tmp/kws-never", "--variants", "f3,zz9"], "no variant zz9"),
    ],
)
def test_user_errors_are_one_line_and_status_2(argv, message, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_synth_refuses_a_non_empty_folder(tmp_path, capsys):
    (tmp_path / "keep.txt").write_text("x")
    assert main(["synth", str(tmp_path), "--per-word", "1"]) == 2
    assert "not an empty folder" in capsys.readouterr().err
