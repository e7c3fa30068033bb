"""On-the-fly training augmentation: time shift, gain, speed, background noise.

As TensorFlow's Speech Commands example does it (time shift up to 100 ms, background noise in
80 % of clips at up to 0.1 of the noise file's level, from the dataset's ``_background_noise_``
folder), plus a random gain and a speed change (pitch and tempo together, by resampling).
Random values come from ``numpy.random.default_rng([seed, epoch, batch])``, so a resumed run
augments exactly as a straight one.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from kws.labels import CLIP_SAMPLES, SAMPLE_RATE
from kws.wav import SCALE, BadClip, read_pcm16

KINDS = ("shift", "gain", "speed", "noise")
NOISE_FOLDER = "_background_noise_"


class AugmentError(Exception):
    """The augmentation asked for cannot be done (unknown kind, no noise files)."""


@dataclass(frozen=True)
class Augment:
    kinds: tuple[str, ...] = KINDS
    shift_s: float = 0.1  # up to this many seconds earlier or later
    gain_db: float = 6.0  # up to this many dB louder or softer
    speed: float = 0.1  # speed factor within 1 ± this
    noise_p: float = 0.8  # share of clips that get background noise
    noise_volume: float = 0.1  # noise level: uniform in [0, this] x the file's samples
    noises: list[np.ndarray] = field(default_factory=list, compare=False, repr=False)
    skipped: tuple[str, ...] = ()  # "name: reason" of noise files that could not be used

    @classmethod
    def parse(cls, text: str, data: Path | None, noise_dir: Path | None = None) -> Augment:
        """``text``: "all" or a comma list of KINDS; noise files from ``noise_dir`` (default
        ``data/_background_noise_``)."""
        kinds = KINDS if text.strip() == "all" else tuple(k.strip() for k in text.split(","))
        unknown = [k for k in kinds if k not in KINDS]
        if unknown or not kinds:
            raise AugmentError(f"--augment: unknown {', '.join(unknown)}; choose all or {KINDS}")
        noises: list[np.ndarray] = []
        skipped: list[str] = []
        if "noise" in kinds:
            folder = noise_dir or (data / NOISE_FOLDER if data else None)
            noises, skipped = load_noises(folder)
        return cls(kinds=kinds, noises=noises, skipped=tuple(skipped))

    def describe(self) -> dict:
        out = asdict(self)
        out.pop("noises")
        out.pop("skipped")
        out["noise_files"] = len(self.noises)
        return out

    def apply(self, waves: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """int16 [batch, samples] → augmented float32 in [-1, 1]."""
        x = waves.astype(np.float32) * SCALE
        n = x.shape[1]
        if "speed" in self.kinds:
            grid = np.arange(n, dtype=np.float64)
            for row in range(len(x)):
                factor = 1.0 + rng.uniform(-self.speed, self.speed)
                x[row] = np.interp(grid * factor, grid, x[row], right=0.0)
        if "shift" in self.kinds:
            most = int(self.shift_s * SAMPLE_RATE)
            for row in range(len(x)):
                k = int(rng.integers(-most, most + 1))
                x[row] = np.roll(x[row], k)
                if k > 0:
                    x[row, :k] = 0
                elif k < 0:
                    x[row, k:] = 0
        if "gain" in self.kinds:
            x *= (10 ** (rng.uniform(-self.gain_db, self.gain_db, len(x)) / 20))[:, None]
        if "noise" in self.kinds and self.noises:
            for row in range(len(x)):
                if rng.uniform() >= self.noise_p:
                    continue
                noise = self.noises[rng.integers(len(self.noises))]
                at = int(rng.integers(0, len(noise) - n + 1))
                x[row] += rng.uniform(0, self.noise_volume) * noise[at : at + n]
        return np.clip(x, -1.0, 1.0, out=x)


def load_noises(folder: Path | None) -> tuple[list[np.ndarray], list[str]]:
    """Every usable WAV in ``folder`` (16 kHz mono 16-bit, at least a second) as float32, and
    "name: reason" for each file that is not."""
    if folder is None or not folder.is_dir():
        raise AugmentError(
            f"{folder}: no background-noise folder for --augment noise (give --noise-dir, or "
            f"put 16 kHz WAVs in DATA/{NOISE_FOLDER} as Speech Commands ships them)"
        )
    noises, problems = [], []
    for path in sorted(folder.glob("*.wav")):
        try:
            samples = read_pcm16(path, SAMPLE_RATE, 600 * SAMPLE_RATE)
        except BadClip as e:
            problems.append(f"{path.name}: {e}")
            continue
        if len(samples) < CLIP_SAMPLES:
            problems.append(f"{path.name}: shorter than one second")
            continue
        noises.append(samples.astype(np.float32) * SCALE)
    if not noises:
        detail = f" ({'; '.join(problems)})" if problems else ""
        raise AugmentError(f"{folder}: no usable 16 kHz mono 16-bit WAV of 1 s or more{detail}")
    return noises, problems
