"""``kws realvoice OUT``: a real-voice smoke set cut from Debian's pocketsphinx-testdata.

The package holds a few real recordings of spoken card names ("five five", "four queen of
clubs", …; 16 kHz mono 16-bit WAV, one male speaker). The keyword stretches below were found by
an energy segmentation (10 ms frames, 30 dB below the loudest, gaps of 80 ms) and checked
against the transcriptions; each source file's SHA-256 is checked so another package version
is refused rather than cut wrongly. Three clips — a smoke test that a model trained on
synthetic voices runs on real speech, not an accuracy measurement. Every clip goes into
``testing_list.txt``: ``kws eval CKPT --data OUT`` evaluates them all.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from kws.data import LIST_FILES
from kws.labels import CLIP_SAMPLES, SAMPLE_RATE
from kws.synth import write_wav
from kws.wav import BadClip, read_pcm16

TESTDATA = Path("/usr/share/pocketsphinx/test/data")
PACKAGE = "pocketsphinx-testdata"


@dataclass(frozen=True)
class Cut:
    source: str  # relative to TESTDATA
    sha256: str
    word: str
    start: float  # seconds
    end: float
    said: str  # the recording's transcription


CUTS = (
    Cut(
        "cards/004.wav",
        "4c44a8177f5b128b99f078cdeb918119933155574231f1833e8840d1af09c521",
        "five",
        0.23,
        0.70,
        "five five",
    ),
    Cut(
        "cards/004.wav",
        "4c44a8177f5b128b99f078cdeb918119933155574231f1833e8840d1af09c521",
        "five",
        0.84,
        1.27,
        "five five",
    ),
    Cut(
        "cards/002.wav",
        "a3f9eae6fdb69a1231989e39a14d62388a6f52fb59666c76d95005318fadafec",
        "four",
        0.00,
        0.65,
        "four queen of clubs",
    ),
)


class RealVoiceError(Exception):
    pass


def build(out: str | Path, testdata: Path = TESTDATA) -> list[str]:
    """Write the clips (centred in one second of silence) as ``OUT/<word>/an4cards_nohash_<k>.wav``;
    returns their relative paths."""
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise RealVoiceError(f"{out}: exists and is not an empty folder; choose a new one")
    sources = {}
    for cut in CUTS:
        path = testdata / cut.source
        if not path.is_file():
            raise RealVoiceError(f"{path}: missing; install the Debian package {PACKAGE}")
        digest = hashlib.sha256(path.read_bytes()).hexdigest()
        if digest != cut.sha256:
            raise RealVoiceError(f"{path}: not the recording kws's cuts were made for (sha256)")
        try:
            sources[cut.source] = read_pcm16(path, SAMPLE_RATE, 60 * SAMPLE_RATE)
        except BadClip as e:
            raise RealVoiceError(f"{path}: {e}") from None
    rels = []
    for k, cut in enumerate(CUTS):
        samples = sources[cut.source][int(cut.start * SAMPLE_RATE) : int(cut.end * SAMPLE_RATE)]
        clip = np.zeros(CLIP_SAMPLES, dtype=np.int16)
        at = (CLIP_SAMPLES - len(samples)) // 2
        clip[at : at + len(samples)] = samples
        rel = f"{cut.word}/an4cards_nohash_{k}.wav"
        (out / cut.word).mkdir(parents=True, exist_ok=True)
        write_wav(out / rel, clip)
        rels.append(rel)
    (out / LIST_FILES["test"]).write_text("".join(r + "\n" for r in rels))
    (out / LIST_FILES["validation"]).write_text("")
    return rels
