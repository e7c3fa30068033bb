"""Speech Commands–format data: one folder per word of 16 kHz mono 16-bit WAV files.

Only the 16 keywords (kws.labels.CLASSES) are read; other folders (``_background_noise_``,
``yes``…) are ignored. ``validation_list.txt`` / ``testing_list.txt`` name the clips of those
splits when present (everything else is training data); without them each *speaker* (the part
of ``<speaker>_nohash_<n>.wav`` before ``_nohash_``) goes wholly to one split, 80/10/10 by a
hash of its name, so the split never depends on which files happen to be there. Clips are
padded with silence or trimmed to 16000 samples. Files that cannot be used (kws.wav says which)
are skipped and listed in ``Dataset.skipped`` with the reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from kws.labels import CLASS_INDEX, CLASSES, CLIP_SAMPLES, SAMPLE_RATE
from kws.wav import BadClip, read_pcm16

SPLITS = ("train", "validation", "test")
LIST_FILES = {"validation": "validation_list.txt", "test": "testing_list.txt"}


class DataError(Exception):
    """The folder cannot be used at all (missing, or no keyword clips in it)."""


@dataclass(frozen=True)
class Clip:
    path: Path
    rel: str  # "word/file.wav", as the list files write it
    word: str
    speaker: str


@dataclass
class Split:
    name: str
    waves: np.ndarray  # int16 [n, 16000]
    labels: np.ndarray  # int64 [n], indices into CLASSES
    files: list[str]  # rel paths, same order

    def __len__(self) -> int:
        return len(self.labels)


@dataclass
class Dataset:
    root: Path
    splits: dict[str, Split]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (rel path, reason)
    split_source: str = "speaker hash"  # or "list files"

    def __getitem__(self, name: str) -> Split:
        return self.splits[name]

    def summary(self) -> str:
        sizes = ", ".join(f"{n} {len(self.splits[n])}" for n in SPLITS)
        return f"{self.root}: {sizes} clips (split by {self.split_source})"


def speaker_of(filename: str) -> str:
    """``0a7c2a8d_nohash_0.wav`` → ``0a7c2a8d``; a name without ``_nohash_`` is its own speaker."""
    stem = filename.rsplit(".", 1)[0]
    return stem.split("_nohash_", 1)[0]


def speaker_split(speaker: str) -> str:
    """The split of every clip of ``speaker``: 80/10/10 by a stable hash (not Python's hash)."""
    bucket = int(hashlib.sha1(speaker.encode("utf-8")).hexdigest(), 16) % 100
    return "train" if bucket < 80 else "validation" if bucket < 90 else "test"


def find_clips(root: Path) -> list[Clip]:
    clips = []
    for word in CLASSES:
        folder = root / word
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() == ".wav" and path.is_file():
                clips.append(Clip(path, f"{word}/{path.name}", word, speaker_of(path.name)))
    return clips


def read_list(path: Path) -> set[str]:
    lines = path.read_text(encoding="utf-8").splitlines()
    return {line.strip().replace("\\", "/") for line in lines if line.strip()}


def assign_splits(root: Path, clips: Iterable[Clip]) -> tuple[dict[str, list[Clip]], str]:
    """Clips per split, and how they were split ("list files" or "speaker hash")."""
    lists = {
        name: read_list(root / filename)
        for name, filename in LIST_FILES.items()
        if (root / filename).is_file()
    }
    out: dict[str, list[Clip]] = {name: [] for name in SPLITS}
    for clip in clips:
        if lists:
            name = next((n for n, listed in lists.items() if clip.rel in listed), "train")
        else:
            name = speaker_split(clip.speaker)
        out[name].append(clip)
    return out, "list files" if lists else "speaker hash"


def read_wav(path: Path) -> np.ndarray:
    """The samples of a 16 kHz mono 16-bit PCM WAV as int16, padded/trimmed to 16000; BadClip
    (kws.wav) says why a file cannot be used."""
    return fit_length(read_pcm16(path, SAMPLE_RATE, CLIP_SAMPLES))


def fit_length(samples: np.ndarray, length: int = CLIP_SAMPLES) -> np.ndarray:
    """Pad with zeros at the end, or keep the first ``length`` samples."""
    out = np.zeros(length, dtype=np.int16)
    n = min(length, len(samples))
    out[:n] = samples[:n]
    return out


def load_split(name: str, clips: list[Clip], skipped: list[tuple[str, str]]) -> Split:
    waves = np.zeros((len(clips), CLIP_SAMPLES), dtype=np.int16)
    labels, files = [], []
    for clip in clips:
        try:
            waves[len(labels)] = read_wav(clip.path)
        except BadClip as e:
            skipped.append((clip.rel, str(e)))
            continue
        labels.append(CLASS_INDEX[clip.word])
        files.append(clip.rel)
    return Split(name, waves[: len(labels)].copy(), np.asarray(labels, dtype=np.int64), files)


def load_dataset(root: str | Path, splits: Iterable[str] = SPLITS) -> Dataset:
    """Read the clips of ``splits`` (others stay empty) into memory as int16."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: no such folder (give a Speech Commands–format folder)")
    clips = find_clips(root)
    if not clips:
        raise DataError(
            f"{root}: no .wav files in any keyword folder ({', '.join(CLASSES)}); "
            "make a small set with `kws synth DIR`"
        )
    by_split, source = assign_splits(root, clips)
    wanted = set(splits)
    skipped: list[tuple[str, str]] = []
    loaded = {
        name: load_split(name, by_split[name] if name in wanted else [], skipped) for name in SPLITS
    }
    return Dataset(root, loaded, skipped, source)


def skipped_summary(skipped: list[tuple[str, str]], limit: int = 10) -> str:
    """One warning for all skipped files: how many, and the first ``limit`` by name."""
    lines = [f"skipped {len(skipped)} unusable file(s):"]
    lines += [f"  {rel}: {reason}" for rel, reason in skipped[:limit]]
    if len(skipped) > limit:
        lines.append(f"  … and {len(skipped) - limit} more")
    return "\n".join(lines)
