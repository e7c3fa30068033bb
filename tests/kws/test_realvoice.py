"""`kws realvoice`: real spoken keywords cut from Debian's pocketsphinx-testdata."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from kws.cli import main
from kws.data import load_dataset
from kws.realvoice import TESTDATA, RealVoiceError, build


def test_the_smoke_set_holds_real_fives_and_a_four_all_in_the_test_split(tmp_path, capsys):
    assert main(["realvoice", str(tmp_path / "rv")]) == 0
    assert "wrote 3 real-voice clips" in capsys.readouterr().out
    data = load_dataset(tmp_path / "rv")
    assert data.split_source == "list files" and data.skipped == []
    test = data["test"]
    assert sorted(f.split("/")[0] for f in test.files) == ["five", "five", "four"]
    assert len(data["train"]) == 0
    loud = np.abs(test.waves.astype(int)).max(axis=1)
    assert (loud > 3000).all()  # speech, not a silent cut


def test_another_recording_is_refused_not_cut_wrongly(tmp_path):
    copy = tmp_path / "data"
    shutil.copytree(TESTDATA / "cards", copy / "cards")
    raw = bytearray((copy / "cards" / "004.wav").read_bytes())
    raw[-1] ^= 1
    (copy / "cards" / "004.wav").write_bytes(bytes(raw))
    with pytest.raises(RealVoiceError, match="not the recording"):
        build(tmp_path / "out", copy)
    with pytest.raises(RealVoiceError, match="install the Debian package pocketsphinx-testdata"):
        build(tmp_path / "out2", tmp_path / "nowhere")
