"""kws.wav: every broken WAV is refused with a reason; every usable 16 kHz mono PCM one is read."""

from __future__ import annotations

import struct
import wave
from pathlib import Path

import numpy as np
import pytest

from kws.data import load_dataset
from kws.wav import PCM_SUBFORMAT, BadClip, read_pcm16

SAMPLES = (np.arange(16000) % 2000 - 1000).astype("<i2")


def chunk(name: bytes, body: bytes, size: int | None = None) -> bytes:
    pad = b"\x00" if len(body) % 2 else b""
    return name + struct.pack("<I", len(body) if size is None else size) + body + pad


def fmt_body(tag=1, channels=1, rate=16000, bits=16, extensible_sub: bytes | None = None):
    block = channels * bits // 8
    body = struct.pack("<HHIIHH", tag, channels, rate, rate * block, block, bits)
    if extensible_sub is not None:
        body += struct.pack("<HHI", 22, bits, 0x4) + extensible_sub
    return body


def riff(*chunks: bytes, riff_size: int | None = None) -> bytes:
    body = b"WAVE" + b"".join(chunks)
    return b"RIFF" + struct.pack("<I", len(body) if riff_size is None else riff_size) + body


def write(tmp_path: Path, data: bytes, name: str = "clip.wav") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


def reason(path: Path) -> str:
    with pytest.raises(BadClip) as caught:
        read_pcm16(path, 16000, 16000)
    return str(caught.value)


def test_a_plain_pcm_file_is_read_as_wave_writes_it(tmp_path):
    path = tmp_path / "ok.wav"
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(16000)
        f.writeframes(SAMPLES.tobytes())
    assert np.array_equal(read_pcm16(path, 16000, 16000), SAMPLES)


def test_wave_format_extensible_16_bit_pcm_is_accepted(tmp_path):
    data = riff(
        chunk(b"fmt ", fmt_body(0xFFFE, extensible_sub=PCM_SUBFORMAT)),
        chunk(b"data", SAMPLES.tobytes()),
    )
    assert np.array_equal(read_pcm16(write(tmp_path, data), 16000, 16000), SAMPLES)


def test_wave_format_extensible_float_is_refused_by_its_subformat(tmp_path):
    float_sub = bytes.fromhex("0300000000001000800000aa00389b71")
    data = riff(
        chunk(b"fmt ", fmt_body(0xFFFE, bits=32, extensible_sub=float_sub)),
        chunk(b"data", b"\x00" * 64),
    )
    assert "WAVE_FORMAT_EXTENSIBLE with subformat 03000000" in reason(write(tmp_path, data))


def test_extra_chunks_with_odd_sizes_are_skipped_with_their_pad_byte(tmp_path):
    data = riff(
        chunk(b"LIST", b"INFOabc"),  # 7 bytes + pad
        chunk(b"fmt ", fmt_body()),
        chunk(b"fact", b"\x01\x02\x03"),
        chunk(b"data", SAMPLES[:100].tobytes()),
    )
    assert np.array_equal(read_pcm16(write(tmp_path, data), 16000, 16000), SAMPLES[:100])


def test_a_wrong_riff_size_is_tolerated(tmp_path):
    # Streaming writers leave the RIFF size 0 or stale; the chunks themselves are whole.
    data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", SAMPLES.tobytes()), riff_size=0)
    assert len(read_pcm16(write(tmp_path, data), 16000, 16000)) == 16000


def test_an_unknown_data_size_reads_to_the_end(tmp_path):
    data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", SAMPLES.tobytes(), size=0xFFFFFFFF))
    assert np.array_equal(read_pcm16(write(tmp_path, data), 16000, 16000), SAMPLES)


def test_a_bogus_chunk_size_is_a_reason_not_a_crash(tmp_path):
    # Python's wave raises RuntimeError on this file (a LIST chunk claiming 2 GB).
    data = riff(
        chunk(b"fmt ", fmt_body()), chunk(b"LIST", b"INFO", size=0x7FFFFFF0), chunk(b"data", b"")
    )
    text = reason(write(tmp_path, data))
    assert "'LIST' chunk at byte 36 declares 2147483632 bytes, past the end" in text


def test_a_file_cut_to_half_its_bytes_is_reported_truncated(tmp_path):
    whole = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", SAMPLES.tobytes()))
    half = write(tmp_path, whole[: len(whole) // 2])
    assert (
        reason(half)
        == "truncated: its data chunk declares 32000 bytes, the file holds 15978 of them"
    )


def test_an_odd_data_size_is_a_cut_sample(tmp_path):
    data = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", SAMPLES[:10].tobytes() + b"\x01"))
    assert "odd number" in reason(write(tmp_path, data))


def test_an_empty_file_says_it_is_empty(tmp_path):
    assert reason(write(tmp_path, b"")) == "empty file (0 bytes)"


@pytest.mark.parametrize(
    "data, expected",
    [
        (b"not a wav at all", "not a readable PCM WAV file (16 bytes; starts b'not a wav at'"),
        (b"RIFX" + b"\x00" * 40, "RIFX (big-endian) WAV"),
        (b"RIFF\x00\x00\x00\x00WAVE", "no fmt and data chunks"),
        (riff(chunk(b"data", b"\x00\x00")), "data chunk before the fmt chunk"),
        (riff(chunk(b"fmt ", b"\x01\x00")), "fmt chunk is 2 bytes"),
        (riff(chunk(b"fmt ", fmt_body())), "no data chunk"),
        (riff(chunk(b"fmt ", fmt_body(tag=3, bits=32)), chunk(b"data", b"")), "32-bit float"),
        (riff(chunk(b"fmt ", fmt_body(tag=7, bits=8)), chunk(b"data", b"")), "mu-law"),
        (riff(chunk(b"fmt ", fmt_body(rate=8000)), chunk(b"data", b"")), "sample rate 8000 Hz"),
        (riff(chunk(b"fmt ", fmt_body(channels=2)), chunk(b"data", b"")), "2 channels"),
        (riff(chunk(b"fmt ", fmt_body(bits=24)), chunk(b"data", b"")), "24-bit samples"),
    ],
)
def test_each_broken_or_foreign_file_gets_its_reason(tmp_path, data, expected):
    assert expected in reason(write(tmp_path, data))


def test_an_unreadable_file_is_a_reason(tmp_path):
    folder = tmp_path / "dir.wav"
    folder.mkdir()
    assert reason(folder).startswith("cannot read: ")


def test_a_dataset_with_every_kind_of_bad_file_loads_the_good_ones(tmp_path):
    whole = riff(chunk(b"fmt ", fmt_body()), chunk(b"data", SAMPLES.tobytes()))
    bad = {
        "bogus": riff(chunk(b"fmt ", fmt_body()), chunk(b"JUNK", b"", size=0xFFFFFF00)),
        "half": whole[: len(whole) // 2],
        "empty": b"",
    }
    (tmp_path / "tree").mkdir()
    write(tmp_path / "tree", whole, "good_nohash_0.wav")
    for name, data in bad.items():
        write(tmp_path / "tree", data, f"{name}_nohash_0.wav")
    data = load_dataset(tmp_path)
    reasons = dict(data.skipped)
    assert sorted(reasons) == [f"tree/{n}_nohash_0.wav" for n in ("bogus", "empty", "half")]
    assert "past the end" in reasons["tree/bogus_nohash_0.wav"]
    assert reasons["tree/half_nohash_0.wav"].startswith("truncated")
    assert reasons["tree/empty_nohash_0.wav"] == "empty file (0 bytes)"
    assert sum(len(s) for s in data.splits.values()) == 1
