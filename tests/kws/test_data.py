"""The Speech Commands–format loader: which files, which split, what length, what is skipped."""

from __future__ import annotations

import wave
from pathlib import Path

import numpy as np
import pytest

from kws.data import DataError, load_dataset, skipped_summary, speaker_of, speaker_split
from kws.synth import write_wav


def wav(path: Path, samples, rate: int = 16000, channels: int = 1, width: int = 2) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wave.open(str(path), "wb") as f:
        f.setnchannels(channels)
        f.setsampwidth(width)
        f.setframerate(rate)
        f.writeframes(np.asarray(samples, dtype=f"<i{width}").tobytes())
    return path


def ramp(n: int) -> np.ndarray:
    return (np.arange(n) % 1000 + 1).astype(np.int16)


def test_clips_are_padded_with_silence_or_trimmed_to_one_second(tmp_path):
    wav(tmp_path / "cat" / "aaaa0001_nohash_0.wav", ramp(9000))
    wav(tmp_path / "dog" / "aaaa0001_nohash_0.wav", ramp(20000))
    data = load_dataset(tmp_path)
    split = data[speaker_split("aaaa0001")]
    by_file = dict(zip(split.files, split.waves))
    short, long = by_file["cat/aaaa0001_nohash_0.wav"], by_file["dog/aaaa0001_nohash_0.wav"]
    assert short.shape == long.shape == (16000,)
    assert np.array_equal(short[:9000], ramp(9000)) and not short[9000:].any()
    assert np.array_equal(long, ramp(20000)[:16000])


def test_only_the_16_keywords_are_read(tmp_path):
    wav(tmp_path / "tree" / "aaaa0001_nohash_0.wav", ramp(16000))
    wav(tmp_path / "yes" / "aaaa0001_nohash_0.wav", ramp(16000))
    wav(tmp_path / "_background_noise_" / "white_noise.wav", ramp(16000))
    (tmp_path / "tree" / "README.txt").write_text("not audio")
    data = load_dataset(tmp_path)
    files = [f for split in data.splits.values() for f in split.files]
    assert files == ["tree/aaaa0001_nohash_0.wav"]
    assert data.skipped == []


def test_unusable_files_are_skipped_by_name_with_the_reason(tmp_path):
    wav(tmp_path / "one" / "aaaa0001_nohash_0.wav", ramp(16000))
    wav(tmp_path / "one" / "bbbb0002_nohash_0.wav", ramp(16000), rate=22050)
    wav(tmp_path / "one" / "cccc0003_nohash_0.wav", ramp(32000), channels=2)
    wav(tmp_path / "one" / "dddd0004_nohash_0.wav", ramp(16000), width=4)
    (tmp_path / "one" / "eeee0005_nohash_0.wav").write_bytes(b"RIFF\x00\x00garbage")
    data = load_dataset(tmp_path)
    reasons = dict(data.skipped)
    assert set(reasons) == {
        "one/bbbb0002_nohash_0.wav",
        "one/cccc0003_nohash_0.wav",
        "one/dddd0004_nohash_0.wav",
        "one/eeee0005_nohash_0.wav",
    }
    assert "22050 Hz" in reasons["one/bbbb0002_nohash_0.wav"]
    assert "2 channels" in reasons["one/cccc0003_nohash_0.wav"]
    assert "32-bit" in reasons["one/dddd0004_nohash_0.wav"]
    assert "not a readable PCM WAV" in reasons["one/eeee0005_nohash_0.wav"]
    assert sum(len(s) for s in data.splits.values()) == 1  # the good one is still there
    summary = skipped_summary(data.skipped, limit=2)
    assert summary.startswith("skipped 4 unusable file(s):") and "… and 2 more" in summary


def test_list_files_decide_the_split_when_present(tmp_path):
    for word in ("zero", "bed"):
        for speaker in ("aaaa0001", "bbbb0002", "cccc0003"):
            wav(tmp_path / word / f"{speaker}_nohash_0.wav", ramp(100))
    (tmp_path / "validation_list.txt").write_text("zero/bbbb0002_nohash_0.wav\n")
    (tmp_path / "testing_list.txt").write_text("bed/cccc0003_nohash_0.wav\nbed/gone_nohash_0.wav\n")
    data = load_dataset(tmp_path)
    assert data.split_source == "list files"
    assert data["validation"].files == ["zero/bbbb0002_nohash_0.wav"]
    assert data["test"].files == ["bed/cccc0003_nohash_0.wav"]
    assert len(data["train"]) == 4


def test_without_lists_each_speaker_goes_wholly_to_one_split(tmp_path):
    speakers = [f"{i:08x}" for i in range(60)]
    for speaker in speakers:
        for word in ("two", "house"):
            wav(tmp_path / word / f"{speaker}_nohash_0.wav", ramp(10))
    data = load_dataset(tmp_path)
    assert data.split_source == "speaker hash"
    for name, split in data.splits.items():
        assert {speaker_of(Path(f).name) for f in split.files} == {
            s for s in speakers if speaker_split(s) == name
        }
    assert all(len(split) for split in data.splits.values())


def test_speaker_split_is_stable_and_near_80_10_10():
    # A stable hash: the same speaker gets the same split in any process, on any machine.
    assert [speaker_split(s) for s in ("0a7c2a8d", "c1d39ce8", "ffd2ba2f")] == [
        speaker_split(s) for s in ("0a7c2a8d", "c1d39ce8", "ffd2ba2f")
    ]
    counts = {"train": 0, "validation": 0, "test": 0}
    for i in range(5000):
        counts[speaker_split(f"{i:08x}")] += 1
    assert abs(counts["train"] / 5000 - 0.8) < 0.02
    assert abs(counts["validation"] / 5000 - 0.1) < 0.02
    assert abs(counts["test"] / 5000 - 0.1) < 0.02


def test_speaker_is_the_name_before_nohash():
    assert speaker_of("0a7c2a8d_nohash_3.wav") == "0a7c2a8d"
    assert speaker_of("recording.wav") == "recording"


def test_a_folder_without_keyword_clips_is_a_clear_error(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        load_dataset(tmp_path / "missing")
    wav(tmp_path / "yes" / "aaaa0001_nohash_0.wav", ramp(10))
    with pytest.raises(DataError, match="kws synth"):
        load_dataset(tmp_path)


def test_samples_round_trip_through_write_wav(tmp_path):
    samples = (np.sin(np.arange(16000) / 10) * 20000).astype(np.int16)
    (tmp_path / "six").mkdir()
    write_wav(tmp_path / "six" / "x_nohash_0.wav", samples)
    data = load_dataset(tmp_path)
    assert np.array_equal(data[speaker_split("x")].waves[0], samples)
