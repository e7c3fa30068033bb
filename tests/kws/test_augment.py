"""On-the-fly augmentation: each kind does what it says, reproducibly, from the noise folder."""

from __future__ import annotations

import numpy as np
import pytest

from kws.augment import Augment, AugmentError, load_noises
from kws.synth import write_wav

TONE = (np.sin(np.arange(16000) * 2 * np.pi * 440 / 16000) * 10000).astype(np.int16)


def batch(n: int = 4) -> np.ndarray:
    return np.tile(TONE, (n, 1))


def test_same_rng_same_batch_other_rng_other_batch(tmp_path):
    write_wav(
        tmp_path / "white_noise.wav",
        (np.random.default_rng(0).standard_normal(32000) * 3000).astype(np.int16),
    )
    augment = Augment.parse("all", None, tmp_path)
    a = augment.apply(batch(), np.random.default_rng([0, 1, 2]))
    b = augment.apply(batch(), np.random.default_rng([0, 1, 2]))
    c = augment.apply(batch(), np.random.default_rng([0, 1, 3]))
    assert a.dtype == np.float32 and a.shape == (4, 16000)
    assert np.array_equal(a, b) and not np.array_equal(a, c)
    assert np.abs(a).max() <= 1.0


def test_shift_moves_the_clip_and_fills_with_silence():
    clip = np.zeros((1, 16000), dtype=np.int16)
    clip[0, 8000] = 16384
    out = Augment(kinds=("shift",)).apply(np.repeat(clip, 50, 0), np.random.default_rng(0))
    where = np.argmax(np.abs(out), axis=1) - 8000
    assert np.abs(where).max() <= 1600 and len(set(where.tolist())) > 10
    assert np.allclose(np.abs(out).max(axis=1), 0.5)


def test_gain_scales_within_its_range():
    out = Augment(kinds=("gain",), gain_db=6).apply(batch(200), np.random.default_rng(0))
    ratio = np.abs(out).max(axis=1) / (10000 / 32768)
    assert ratio.min() >= 10 ** (-6 / 20) - 1e-3 and ratio.max() <= 10 ** (6 / 20) + 1e-3
    assert ratio.max() - ratio.min() > 0.5


def test_speed_changes_the_pitch():
    out = Augment(kinds=("speed",), speed=0.1).apply(batch(20), np.random.default_rng(0))
    peaks = np.argmax(np.abs(np.fft.rfft(out, axis=1)), axis=1)  # 1 Hz bins
    assert peaks.min() >= 440 * 0.9 - 2 and peaks.max() <= 440 * 1.1 + 2
    assert len(set(peaks.tolist())) > 5


def test_noise_comes_from_the_folder_in_the_share_asked_for(tmp_path):
    write_wav(
        tmp_path / "pink_noise.wav",
        (np.random.default_rng(1).standard_normal(48000) * 8000).astype(np.int16),
    )
    augment = Augment.parse("noise", None, tmp_path)
    assert len(augment.noises) == 1
    silent = np.zeros((400, 16000), dtype=np.int16)
    out = augment.apply(silent, np.random.default_rng(0))
    noisy = (np.abs(out).max(axis=1) > 0).mean()
    assert 0.7 < noisy < 0.9  # noise_p = 0.8
    assert np.abs(out).max() <= 0.1 * 1.0 + 1e-6


def test_unusable_noise_files_are_named_and_kinds_checked(tmp_path):
    with pytest.raises(AugmentError, match="no background-noise folder"):
        Augment.parse("noise", tmp_path / "data")
    (tmp_path / "bad.wav").write_bytes(b"")
    write_wav(tmp_path / "short.wav", np.zeros(100, dtype=np.int16))
    with pytest.raises(
        AugmentError, match=r"bad\.wav: empty file.*short\.wav: shorter than one second"
    ):
        load_noises(tmp_path)
    with pytest.raises(AugmentError, match="unknown pitch"):
        Augment.parse("shift,pitch", None)
    assert Augment.parse("shift,gain", None).kinds == ("shift", "gain")  # no noise: no folder
