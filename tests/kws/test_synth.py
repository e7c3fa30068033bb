"""`kws synth`: a deterministic, Speech Commands–format set from espeak-ng + sox."""

from __future__ import annotations

import re
import wave
from pathlib import Path

import pytest

from kws.data import load_dataset
from kws.labels import CLASSES
from kws.synth import SynthError, held_out, make_speakers, synthesize


def contents(root: Path) -> dict[str, bytes]:
    files = sorted(p for p in root.rglob("*") if p.is_file())
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


def test_same_seed_same_bytes_whatever_the_worker_count(tmp_path):
    one = synthesize(tmp_path / "a", per_word=2, seed=7, jobs=1)
    many = synthesize(tmp_path / "b", per_word=2, seed=7, jobs=4)
    assert contents(one) == contents(many)


def test_another_seed_gives_other_clips(tmp_path):
    a = contents(synthesize(tmp_path / "a", per_word=1, seed=1))
    b = contents(synthesize(tmp_path / "b", per_word=1, seed=2))
    wavs_a = {k: v for k, v in a.items() if k.endswith(".wav")}
    wavs_b = {k: v for k, v in b.items() if k.endswith(".wav")}
    assert set(wavs_a).isdisjoint(wavs_b)  # other fake speakers, other names
    assert sorted(wavs_a.values()) != sorted(wavs_b.values())


def test_files_are_one_second_16k_mono_16bit_named_like_speech_commands(synth_set):
    wavs = sorted(synth_set.rglob("*.wav"))
    assert len(wavs) == 20 * len(CLASSES)  # conftest: per_word=20
    assert {p.parent.name for p in wavs} == set(CLASSES)
    for path in wavs:
        assert re.fullmatch(r"[0-9a-f]{8}_nohash_\d+\.wav", path.name)
        with wave.open(str(path)) as f:
            assert (f.getframerate(), f.getnchannels(), f.getsampwidth()) == (16000, 1, 2)
            assert f.getnframes() == 16000


def test_every_split_has_whole_speakers_and_all_words(synth_set):
    data = load_dataset(synth_set)
    assert data.split_source == "list files"
    assert [len(data[s]) for s in ("train", "validation", "test")] == [256, 32, 32]
    speakers = {
        name: {Path(f).name.split("_nohash_")[0] for f in split.files}
        for name, split in data.splits.items()
    }
    assert speakers["train"].isdisjoint(speakers["validation"] | speakers["test"])
    assert speakers["validation"].isdisjoint(speakers["test"])
    for split in data.splits.values():
        assert sorted(set(split.labels.tolist())) == list(range(16))
    assert data.skipped == []


def test_clips_hold_speech_not_silence(synth_set):
    data = load_dataset(synth_set)
    loud = (abs(data["train"].waves.astype(int)) > 3000).sum(axis=1)
    assert (loud > 200).all()  # a spoken word reaches well above any background noise


def test_speakers_vary_voice_and_pitch():
    speakers = make_speakers(seed=0, count=20)
    assert len({s.id for s in speakers}) == 20
    assert len({(s.voice, s.variant) for s in speakers}) >= 10
    assert len({s.pitch for s in speakers}) >= 10
    assert [len(held_out(make_speakers(0, n))["test"]) for n in (2, 3, 20, 40)] == [0, 1, 2, 4]


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not an empty folder"):
        synthesize(tmp_path, per_word=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
