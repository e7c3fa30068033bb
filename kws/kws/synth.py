"""``kws synth OUT``: a small Speech Commands–format set of the 16 keywords, from espeak-ng + sox.

Each fake speaker is an espeak-ng voice and variant with its own base pitch and speed; every
clip varies those a little, changes speed with sox, and is placed at a random offset in a
one-second window over background noise (white, pink or brown, at a random level, or none).
Everything random comes from ``numpy.random.default_rng([seed, …])`` keyed by what the value is
for, so a clip depends only on (seed, speaker, word, repeat), never on scheduling: the same
seed gives byte-identical files with any number of worker threads.

Files: ``OUT/<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono 16-bit), ``validation_list.txt``
and ``testing_list.txt`` (the last ~10 % + 10 % of speakers, so even small sets have all three
splits), and ``synth.json`` (the parameters).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import wave
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from kws.data import LIST_FILES
from kws.labels import CLASSES, CLIP_SAMPLES, SAMPLE_RATE

# Debian's espeak-ng 1.51 voices and variants (mbrola voices need extra packages: not used).
VOICES = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
VARIANTS = ("m1", "m2", "m3", "m4", "m5", "m6", "m7", "f1", "f2", "f3", "f4", "f5")
VARIANTS += ("klatt", "klatt2", "klatt3", "klatt4")
NOISES = ("none", "white", "pink", "brown")
SPEAKER_STREAM, CLIP_STREAM, NOISE_STREAM = 1, 2, 3  # rng keys: one stream per purpose


class SynthError(Exception):
    pass


@dataclass(frozen=True)
class Speaker:
    id: str  # 8 hex digits, like Speech Commands' hashed speaker names
    voice: str
    variant: str
    pitch: int  # espeak-ng -p, 0–99
    wpm: int  # espeak-ng -s, words per minute


@dataclass(frozen=True)
class ClipPlan:
    word: str
    index: int  # i: the i-th clip of this word
    speaker: Speaker
    repeat: int  # the n of _nohash_<n>
    pitch: int
    wpm: int
    speed: float  # sox speed factor (pitch and tempo together)
    peak: float  # peak amplitude of the speech, 0–1
    noise: str
    noise_db: float  # noise RMS in dBFS
    offset: float  # 0–1: where in the free space the word starts

    @property
    def rel(self) -> str:
        return f"{self.word}/{self.speaker.id}_nohash_{self.repeat}.wav"


def make_speakers(seed: int, count: int) -> list[Speaker]:
    speakers = []
    for k in range(count):
        rng = np.random.default_rng([seed, SPEAKER_STREAM, k])
        speaker_id = hashlib.sha1(f"kws-synth:{seed}:{k}".encode()).hexdigest()[:8]
        speakers.append(
            Speaker(
                id=speaker_id,
                voice=VOICES[rng.integers(len(VOICES))],
                variant=VARIANTS[rng.integers(len(VARIANTS))],
                pitch=int(rng.integers(20, 81)),
                wpm=int(rng.integers(130, 211)),
            )
        )
    return speakers


def plan_clips(seed: int, per_word: int, speakers: list[Speaker]) -> list[ClipPlan]:
    """``per_word`` clips of every word; clip i of a word is speaker i mod len(speakers)."""
    plans = []
    for w, word in enumerate(CLASSES):
        for i in range(per_word):
            speaker = speakers[i % len(speakers)]
            rng = np.random.default_rng([seed, CLIP_STREAM, w, i])
            plans.append(
                ClipPlan(
                    word=word,
                    index=i,
                    speaker=speaker,
                    repeat=i // len(speakers),
                    pitch=int(np.clip(speaker.pitch + rng.integers(-8, 9), 0, 99)),
                    wpm=int(speaker.wpm * rng.uniform(0.85, 1.15)),
                    speed=round(float(rng.uniform(0.92, 1.08)), 3),
                    peak=float(rng.uniform(0.25, 0.9)),
                    noise=NOISES[rng.integers(len(NOISES))],
                    noise_db=float(rng.uniform(-55, -30)),
                    offset=float(rng.uniform()),
                )
            )
    return plans


def speak(plan: ClipPlan) -> np.ndarray:
    """espeak-ng says the word; sox changes its speed and resamples to 16 kHz float32."""
    voice = f"{plan.speaker.voice}+{plan.speaker.variant}"
    espeak = ["espeak-ng", "-v", voice, "-p", str(plan.pitch), "-s", str(plan.wpm), "--stdout"]
    spoken = subprocess.run([*espeak, plan.word], capture_output=True, check=False)
    if spoken.returncode != 0 or not spoken.stdout:
        raise SynthError(f"espeak-ng failed for {voice}: {spoken.stderr.decode().strip()}")
    sox = ["sox", "-R", "-D", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32"]
    sox += ["-c", "1", "-", "speed", f"{plan.speed}", "rate", str(SAMPLE_RATE)]
    resampled = subprocess.run(sox, input=spoken.stdout, capture_output=True, check=False)
    if resampled.returncode != 0:
        raise SynthError(f"sox failed: {resampled.stderr.decode().strip()}")
    return np.frombuffer(resampled.stdout, dtype="<f4").astype(np.float64)


def trim_silence(samples: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold * max(np.abs(samples).max(), 1e-9))
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def background(kind: str, rms_db: float, rng: np.random.Generator, n: int) -> np.ndarray:
    if kind == "none":
        return np.zeros(n)
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    else:
        # Shape the spectrum: pink falls 3 dB per octave (1/sqrt f), brown 6 dB (1/f).
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        freqs[0] = freqs[1]
        spectrum /= np.sqrt(freqs) if kind == "pink" else freqs
        noise = np.fft.irfft(spectrum, n)
    noise -= noise.mean()
    return noise * (10 ** (rms_db / 20) / max(np.sqrt(np.mean(noise**2)), 1e-12))


def render(plan: ClipPlan, seed: int) -> np.ndarray:
    """The clip as int16, one second long."""
    speech = trim_silence(speak(plan))[:CLIP_SAMPLES]
    speech *= plan.peak / max(np.abs(speech).max(), 1e-9)
    start = int(plan.offset * (CLIP_SAMPLES - len(speech)))
    out = np.zeros(CLIP_SAMPLES)
    out[start : start + len(speech)] = speech
    rng = np.random.default_rng([seed, NOISE_STREAM, CLASSES.index(plan.word), plan.index])
    out += background(plan.noise, plan.noise_db, rng, CLIP_SAMPLES)
    return np.clip(np.round(out * 32767), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(samples.astype("<i2").tobytes())


def held_out(speakers: list[Speaker]) -> dict[str, set[str]]:
    """Validation and test speakers: the last ~10 % each (at least one each from 3 speakers)."""
    n = len(speakers)
    k = max(1, round(n * 0.1)) if n >= 3 else 0
    ids = [s.id for s in speakers]
    return {"validation": set(ids[n - 2 * k : n - k]), "test": set(ids[n - k :])}


def check_tools() -> None:
    missing = [tool for tool in ("espeak-ng", "sox") if shutil.which(tool) is None]
    if missing:
        raise SynthError(
            f"{' and '.join(missing)} not found: install the Debian packages espeak-ng and sox "
            "(apt-get install espeak-ng sox)"
        )


def synthesize(
    out: str | Path,
    per_word: int = 20,
    seed: int = 0,
    speakers: int | None = None,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> Path:
    """Write the set into ``out`` (which must be absent or empty); returns ``out``."""
    out = Path(out)
    if per_word < 1:
        raise SynthError("--per-word must be at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"{out}: exists and is not an empty folder; choose a new one")
    check_tools()
    voices = make_speakers(seed, speakers or per_word)
    plans = plan_clips(seed, per_word, voices)
    for word in CLASSES:
        (out / word).mkdir(parents=True, exist_ok=True)

    def one(plan: ClipPlan) -> None:
        write_wav(out / plan.rel, render(plan, seed))

    done = 0
    # Threads suffice: the work is in the espeak-ng and sox processes.
    with ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        for _ in pool.map(one, plans):
            done += 1
            if progress:
                progress(done, len(plans))

    held = held_out(voices)
    for split, filename in LIST_FILES.items():
        rels = sorted(p.rel for p in plans if p.speaker.id in held[split])
        (out / filename).write_text("".join(r + "\n" for r in rels))
    manifest = {
        "generator": "kws synth (espeak-ng + sox)",
        "seed": seed,
        "per_word": per_word,
        "speakers": [asdict(s) for s in voices],
        "clips": len(plans),
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out
