"""Training in-process (no GPU claim): metrics, checkpoints, determinism, resuming."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from kws.data import load_dataset
from kws.models import ModelSpec
from kws.train import TrainConfig, TrainError, train

TINY = ModelSpec("ch4", depth=6, dropout=0.25, bn=True)


@pytest.fixture(scope="module")
def dataset(synth_set):
    return load_dataset(synth_set)


def config(tmp_path, data_root, epochs, **kw):
    return TrainConfig(
        spec=kw.pop("spec", TINY),
        data=data_root,
        out=tmp_path,
        epochs=epochs,
        batch_size=32,
        lr=3e-3,
        seed=kw.pop("seed", 0),
        gpus="none",
        log=False,
        progress=False,
        **kw,
    )


def weights(path):
    return torch.load(path, weights_only=False)["model"]


def test_metrics_and_checkpoints_are_written(tmp_path, dataset, synth_set):
    metrics = train(config(tmp_path, synth_set, 2), dataset)
    on_disk = json.loads((tmp_path / "metrics.json").read_text())
    assert on_disk == json.loads(json.dumps(metrics))
    assert on_disk["job"] == "kws ch4 d6 do0.25+bn"
    assert [row["epoch"] for row in on_disk["epochs"]] == [1, 2]
    for row in on_disk["epochs"]:
        assert row["loss"] > 0 and 0 <= row["train_acc"] <= 1 and 0 <= row["val_acc"] <= 1
        assert row["samples_per_s"] > 0
    assert on_disk["finished"] is True and 0 <= on_disk["test_acc"] <= 1
    assert on_disk["data"]["train"] == 256 and on_disk["device"] == "cpu"
    assert (tmp_path / "last.pt").is_file() and (tmp_path / "best.pt").is_file()


def test_same_seed_same_run_and_resume_continues_exactly(tmp_path, dataset, synth_set):
    straight = train(config(tmp_path / "a", synth_set, 3), dataset)
    train(config(tmp_path / "b", synth_set, 2), dataset)
    resumed = train(config(tmp_path / "b", synth_set, 3, resume=tmp_path / "b"), dataset)
    assert [r["loss"] for r in resumed["epochs"]] == [r["loss"] for r in straight["epochs"]]
    a, b = weights(tmp_path / "a" / "last.pt"), weights(tmp_path / "b" / "last.pt")
    assert all(torch.equal(a[k], b[k]) for k in a)
    other = train(config(tmp_path / "c", synth_set, 1, seed=1), dataset)
    assert other["epochs"][0]["loss"] != straight["epochs"][0]["loss"]


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path, dataset, synth_set):
    train(config(tmp_path, synth_set, 1), dataset)
    other = ModelSpec("ch4", depth=6)
    with pytest.raises(TrainError, match=r"the checkpoint is 'ch4 d6 do0\.25\+bn'"):
        train(config(tmp_path, synth_set, 2, spec=other, resume=tmp_path / "last.pt"), dataset)
    with pytest.raises(TrainError, match="no such checkpoint"):
        train(config(tmp_path, synth_set, 2, resume=tmp_path / "nope.pt"), dataset)


def test_skipped_files_are_named_in_one_warning_and_training_goes_on(tmp_path, capsys):
    from kws.labels import CLASSES
    from kws.synth import write_wav

    rng = np.random.default_rng(0)
    for word in CLASSES:
        (tmp_path / "data" / word).mkdir(parents=True)
        for speaker in ("aaaa0001", "bbbb0002"):
            samples = (rng.standard_normal(16000) * 1000).astype(np.int16)
            write_wav(tmp_path / "data" / word / f"{speaker}_nohash_0.wav", samples)
    (tmp_path / "data" / "cat" / "cccc0003_nohash_0.wav").write_bytes(b"not a wav")
    metrics = train(config(tmp_path / "out", tmp_path / "data", 1))
    err = capsys.readouterr().err
    assert "skipped 1 unusable file(s):" in err and "cat/cccc0003_nohash_0.wav" in err
    assert metrics["finished"] and metrics["data"]["skipped"] == 1


def test_threads_apply_while_training_and_are_restored_after(tmp_path, dataset, synth_set):
    before = torch.get_num_threads()
    asked = 3 if before != 3 else 2
    metrics = train(config(tmp_path, synth_set, 1, threads=asked), dataset)
    assert metrics["config"]["threads"] == asked
    assert torch.get_num_threads() == before
    assert train(config(tmp_path / "b", synth_set, 1), dataset)["config"]["threads"] == before
