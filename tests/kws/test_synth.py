"""`kws synth`: a deterministic, Speech Commands–format set from espeak-ng + sox."""

from __future__ import annotations

import json
import re
import wave
from pathlib import Path

import pytest

from kws.data import load_dataset
from kws.labels import CLASSES
from kws.synth import (
    ENGINES,
    SynthError,
    engine_wav,
    espeak_variants,
    held_out,
    make_speakers,
    synthesize,
    unknown_variants,
    voice_inventory,
)


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
    wavs_a = {k: v for k, v in a.items() if k.endswith(".wav") and not k.startswith("_")}
    wavs_b = {k: v for k, v in b.items() if k.endswith(".wav") and not k.startswith("_")}
    assert set(wavs_a).isdisjoint(wavs_b)  # other fake speakers, other names
    assert sorted(wavs_a.values()) != sorted(wavs_b.values())


def test_files_are_one_second_16k_mono_16bit_named_like_speech_commands(synth_set):
    wavs = sorted(p for word in CLASSES for p in (synth_set / word).glob("*.wav"))
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
    waves = abs(data["train"].waves.astype(int))
    # Speech peaks at 0.25–0.9 of full scale, noise at −30 dBFS RMS at most (~0.1 peak); a short
    # word through a muffled channel ("six" without its s) still has a loud 10 ms.
    assert (waves.max(axis=1) >= 0.25 * 32767 - 1).all()
    assert ((waves > 3000).sum(axis=1) > 100).all()


def test_speakers_vary_voice_and_pitch():
    speakers = make_speakers(seed=0, count=20, inventory=voice_inventory(ENGINES))
    assert len({s.id for s in speakers}) == 20
    assert len({s.voice.name for s in speakers}) >= 10
    assert len({s.pitch for s in speakers}) >= 8
    inventory = voice_inventory(ENGINES)
    sizes = [len(held_out(make_speakers(0, n, inventory))["test"]) for n in (2, 3, 20, 40)]
    assert sizes == [0, 1, 2, 4]


def test_held_out_speakers_use_only_voices_no_training_speaker_has():
    speakers = make_speakers(seed=3, count=300, inventory=voice_inventory(ENGINES))
    groups = {
        split: {s.voice.group for s in speakers if s.split == split}
        for split in ("train", "validation", "test")
    }
    assert groups["train"].isdisjoint(groups["validation"] | groups["test"])
    assert groups["validation"].isdisjoint(groups["test"])
    # every split hears espeak-ng variants and a recorded person
    for split, names in groups.items():
        assert any(g.startswith("espeak:") for g in names), split
        assert any(g.startswith("person:") for g in names), split
    assert {s.voice.engine for s in speakers} == set(ENGINES)


def test_one_recorded_person_is_one_voice_in_both_engines():
    by_name = {(v.engine, v.name): v.group for v in voice_inventory(ENGINES)}
    assert (
        by_name["flite", "kal"] == by_name["flite", "kal16"] == by_name["festival", "kal_diphone"]
    )
    assert by_name["flite", "slt"] == by_name["festival", "cmu_us_slt_arctic_hts"]
    assert by_name["espeak-ng", "en-gb+f3"] == by_name["espeak-ng", "en-us+f3"] == "espeak:f3"


def test_espeak_ng_variants_are_all_found():
    variants = espeak_variants()
    assert len(variants) >= 100
    assert {"f3", "m7", "klatt4", "whisper", "Andy"} <= set(variants)


def test_an_unknown_espeak_variant_is_detected_though_espeak_ng_accepts_it():
    plain = engine_wav(voice_inventory(["espeak-ng"], variants=[])[0], "seven", 50, 1.0)
    from kws.synth import Voice

    bogus = engine_wav(Voice("espeak-ng", "en-us+nosuchvariant", ""), "seven", 50, 1.0)
    assert bogus == plain  # espeak-ng's silent fallback to the plain voice
    assert unknown_variants(["f3", "nosuchvariant"]) == ["nosuchvariant"]
    with pytest.raises(SynthError, match="no variant nosuchvariant"):
        voice_inventory(["espeak-ng"], variants=["f3", "nosuchvariant"])


def test_a_missing_engine_names_the_debian_packages(tmp_path, monkeypatch):
    import shutil

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("sox", "espeak-ng"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    monkeypatch.setenv("PATH", str(bin_dir))
    with pytest.raises(SynthError, match="festvox-kallpc16k") as caught:
        voice_inventory(ENGINES)
    assert "flite and festival not found" in str(caught.value)
    assert voice_inventory(["espeak-ng"], variants=["f3"])  # the one engine left still works


def test_the_set_has_every_engine_and_a_background_noise_folder(synth_set):
    manifest = json.loads((synth_set / "synth.json").read_text())
    assert manifest["engines"] == list(ENGINES)
    noise = sorted(p.name for p in (synth_set / "_background_noise_").iterdir())
    assert noise == [f"{k}_noise.wav" for k in ("babble", "brown", "pink", "white")]
    for name in noise:
        with wave.open(str(synth_set / "_background_noise_" / name)) as f:
            assert (f.getframerate(), f.getnframes()) == (16000, 160000)
    listed = {
        split: set((synth_set / f).read_text().split())
        for split, f in (("validation", "validation_list.txt"), ("test", "testing_list.txt"))
    }
    for speaker in manifest["speakers"]:
        rel = f"zero/{speaker['id']}_nohash_0.wav"
        assert (rel in listed["test"]) == (speaker["split"] == "test")
        assert (rel in listed["validation"]) == (speaker["split"] == "validation")


def test_refuses_a_folder_that_is_not_empty(tmp_path):
    (tmp_path / "notes.txt").write_text("keep me")
    with pytest.raises(SynthError, match="not an empty folder"):
        synthesize(tmp_path, per_word=1)
    assert (tmp_path / "notes.txt").read_text() == "keep me"
