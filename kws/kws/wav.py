"""Reading one WAV clip: a RIFF chunk walk that never trusts a size it has not checked.

Python's ``wave`` raises RuntimeError on some bogus chunk sizes, accepts a file cut short
without a word, and refuses WAVE_FORMAT_EXTENSIBLE; datasets hold all three. This reader takes
16 kHz mono 16-bit PCM (plain or extensible), and for anything else raises BadClip with a
reason a person can act on. It reads the header chunks and at most ``limit`` samples, so a
huge stray file costs no memory.

Lenient where writers are known to be sloppy: the RIFF size field is not checked (streaming
writers leave it 0 or wrong), and a data size of 0xFFFFFFFF (unknown length, as pipes write
it) means "to the end of the file".
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PCM = 0x0001
EXTENSIBLE = 0xFFFE
# KSDATAFORMAT_SUBTYPE_PCM: {00000001-0000-0010-8000-00aa00389b71}, as stored little-endian.
PCM_SUBFORMAT = bytes.fromhex("0100000000001000800000aa00389b71")
UNKNOWN_SIZE = 0xFFFFFFFF
SCALE = 1.0 / 32768  # a 16-bit sample → float in [-1, 1)
FORMAT_NAMES = {0x0003: "32-bit float", 0x0006: "A-law", 0x0007: "mu-law", 0x0055: "MP3"}


class BadClip(Exception):
    """One file cannot be used; the message says why."""


@dataclass(frozen=True)
class WavFormat:
    rate: int
    channels: int
    bits: int


def _format(body: bytes) -> tuple[int, WavFormat]:
    if len(body) < 16:
        raise BadClip(f"not a readable PCM WAV file (its fmt chunk is {len(body)} bytes, not 16+)")
    tag, channels, rate, _, _, bits = struct.unpack("<HHIIHH", body[:16])
    if tag == EXTENSIBLE:
        if len(body) < 40:
            raise BadClip(
                "not a readable PCM WAV file (WAVE_FORMAT_EXTENSIBLE fmt chunk too short)"
            )
        if body[24:40] != PCM_SUBFORMAT:
            raise BadClip(f"WAVE_FORMAT_EXTENSIBLE with subformat {body[24:40].hex()}, not PCM")
        tag = PCM
    return tag, WavFormat(rate, channels, bits)


def read_pcm16(path: str | Path, rate: int, limit: int) -> np.ndarray:
    """The first ``limit`` samples of a ``rate`` Hz mono 16-bit PCM WAV file, as int16."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            return _read(f, size, rate, limit)
    except OSError as e:
        raise BadClip(f"cannot read: {e.strerror or e}") from None


def _read(f, size: int, rate: int, limit: int) -> np.ndarray:
    if size == 0:
        raise BadClip("empty file (0 bytes)")
    header = f.read(12)
    if len(header) < 12 or header[:4] != b"RIFF" or header[8:12] != b"WAVE":
        kind = "RIFX (big-endian) WAV" if header[:4] == b"RIFX" else f"starts {header[:12]!r}"
        raise BadClip(f"not a readable PCM WAV file ({size} bytes; {kind})")
    fmt: WavFormat | None = None
    tag = None
    at = 12
    while True:
        head = f.read(8)
        if len(head) < 8:
            missing = "fmt and data chunks" if fmt is None else "data chunk"
            raise BadClip(f"not a readable PCM WAV file (no {missing} in its {size} bytes)")
        name, length = head[:4], struct.unpack("<I", head[4:])[0]
        label = name.decode("latin-1")
        body_at = at + 8
        if name == b"data":
            if fmt is None:
                raise BadClip("not a readable PCM WAV file (data chunk before the fmt chunk)")
            _check(tag, fmt, rate)
            available = size - body_at
            if length == UNKNOWN_SIZE:
                length = available - available % 2
            if length > available:
                raise BadClip(
                    f"truncated: its data chunk declares {length} bytes, the file holds "
                    f"{available} of them"
                )
            if length % 2:
                raise BadClip(f"truncated: its data chunk holds {length} bytes, an odd number")
            raw = f.read(min(length, 2 * limit))
            return np.frombuffer(raw, dtype="<i2").copy()
        if body_at + length > size:
            raise BadClip(
                f"not a readable PCM WAV file (its {label!r} chunk at byte {at} declares "
                f"{length} bytes, past the end of the file at byte {size})"
            )
        if name == b"fmt ":
            tag, fmt = _format(f.read(length))
        else:
            f.seek(length, os.SEEK_CUR)
        if length % 2:  # chunks are word-aligned: an odd size is followed by a pad byte
            f.seek(1, os.SEEK_CUR)
        at = body_at + length + length % 2


def _check(tag: int | None, fmt: WavFormat, rate: int) -> None:
    if tag != PCM:
        name = FORMAT_NAMES.get(tag or 0, f"format 0x{tag or 0:04x}")
        raise BadClip(f"{name} samples, not 16-bit PCM")
    if fmt.rate != rate:
        raise BadClip(f"sample rate {fmt.rate} Hz, not {rate}")
    if fmt.channels != 1:
        raise BadClip(f"{fmt.channels} channels, not mono")
    if fmt.bits != 16:
        raise BadClip(f"{fmt.bits}-bit samples, not 16-bit")
