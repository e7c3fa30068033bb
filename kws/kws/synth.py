"""``kws synth OUT``: a Speech Commands–format set of the 16 keywords from Debian's synthesisers.

Voices come from three engines, all Debian packages that ship their voices: espeak-ng (8 English
accents × its 101 variants, or none), flite (kal, kal16, awb, rms, slt) and festival (kal_diphone
from festvox-kallpc16k, ked_diphone from festvox-kdlpc16k, cmu_us_slt_arctic_hts from
festvox-us-slt-hts). Each fake speaker is one voice with its own pitch, rate, room (reverb or
none) and channel (full band, telephone band or muffled); every clip varies pitch and speed a
little, and is placed at a random offset in a one-second window over background noise (white,
pink, brown, babble, or none).

**Voices never straddle splits.** The validation and test speakers (the last ~10 % + 10 %) only
use voices that no training speaker uses, so test accuracy is accuracy on *unseen voices*. What
counts as one voice: an espeak-ng variant (its timbre, whatever the accent), and for flite and
festival the recorded person, who may be in both (kal, slt).

Everything random comes from ``numpy.random.default_rng([seed, …])`` keyed by what the value is
for, so a clip depends only on (seed, speaker, word, repeat), never on scheduling: the same seed
gives byte-identical files with any number of worker threads.

Files: ``OUT/<word>/<speaker>_nohash_<n>.wav`` (16 kHz mono 16-bit), ``validation_list.txt`` and
``testing_list.txt``, ``_background_noise_/*.wav`` (10 s each, for training-time augmentation, as
Speech Commands ships them) and ``synth.json`` (the parameters, every speaker's voice and split).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import subprocess
import tempfile
import wave
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from functools import cache
from pathlib import Path

import numpy as np

from kws.data import LIST_FILES
from kws.labels import CLASSES, CLIP_SAMPLES, SAMPLE_RATE

ENGINES = ("espeak-ng", "flite", "festival")
# espeak-ng's English accents (Debian's espeak-ng-data; the mbrola voices need extra packages).
ESPEAK_ACCENTS = (
    "en-us",
    "en-gb",
    "en-gb-scotland",
    "en-gb-x-rp",
    "en-gb-x-gbclan",
    "en-gb-x-gbcwmd",
    "en-029",
    "en-us-nyc",
)
# flite's and festival's voices, by the person recorded for them: one voice for the split.
# (flite's awb_time only says clock times, so it is not used.)
RECORDED_VOICES = {
    "flite": {"kal": "kal", "kal16": "kal", "awb": "awb", "rms": "rms", "slt": "slt"},
    "festival": {"kal_diphone": "kal", "ked_diphone": "ked", "cmu_us_slt_arctic_hts": "slt"},
}
DEBIAN_PACKAGES = {
    "espeak-ng": "espeak-ng",
    "flite": "flite",
    "festival": "festival festvox-kallpc16k festvox-kdlpc16k festvox-us-slt-hts",
    "sox": "sox",
}
ESPEAK_SHARE = 0.5  # of the speakers, where a split has both espeak-ng and recorded voices
NOISES = ("none", "white", "pink", "brown", "babble")
ROOMS = ("none", "none", "small", "large")  # half the speakers dry
CHANNELS = ("full", "full", "phone", "muffled")
BACKGROUND_SECONDS = 10
SPEAKER_STREAM, CLIP_STREAM, NOISE_STREAM, GROUP_STREAM, BACKGROUND_STREAM = 1, 2, 3, 4, 5
# What the babble background says: anything but the keywords.
BABBLE_TEXT = (
    "The weather was fine and the market was busy all morning.",
    "Please put the kettle on, we are expecting visitors at noon.",
    "He said the results would be ready by the end of the week.",
    "Turn left at the corner and walk past the old library.",
    "Nobody expected the meeting to run for quite so long.",
    "She likes to read the paper quietly over breakfast.",
)


class SynthError(Exception):
    pass


@dataclass(frozen=True)
class Voice:
    engine: str  # one of ENGINES
    name: str  # the engine's name for it: "en-gb+f3", "slt", "kal_diphone"
    group: str  # what a split keeps apart: "espeak:f3", "person:slt"


@dataclass(frozen=True)
class Speaker:
    id: str  # 8 hex digits, like Speech Commands' hashed speaker names
    split: str  # train, validation or test
    voice: Voice
    pitch: int  # espeak-ng -p 0–99; other engines: semitones up or down (sox pitch)
    rate: float  # speaking rate: espeak-ng words per minute / 175, else a sox tempo factor
    room: str  # one of ROOMS
    channel: str  # one of CHANNELS


@dataclass(frozen=True)
class ClipPlan:
    word: str
    index: int  # i: the i-th clip of this word
    speaker: Speaker
    repeat: int  # the n of _nohash_<n>
    pitch: int
    rate: float
    speed: float  # sox speed factor (pitch and tempo together)
    peak: float  # peak amplitude of the speech, 0–1
    noise: str
    noise_db: float  # noise RMS in dBFS
    offset: float  # 0–1: where in the free space the word starts

    @property
    def rel(self) -> str:
        return f"{self.word}/{self.speaker.id}_nohash_{self.repeat}.wav"


# -- which voices this machine has ---------------------------------------------------------------


ENGINE_TIMEOUT_S = 120  # one engine call (festival: a whole voice's 16 words)


def _run(command: Sequence[str], **kw) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(
            list(command), capture_output=True, check=False, timeout=ENGINE_TIMEOUT_S, **kw
        )
    except subprocess.TimeoutExpired:
        raise SynthError(f"{command[0]} did not finish in {ENGINE_TIMEOUT_S} s") from None


@cache
def espeak_variants() -> tuple[str, ...]:
    """The variants espeak-ng has (``--voices=variant``), as ``+name`` takes them.

    espeak-ng accepts *any* ``voice+name`` and silently speaks an unknown name with the plain
    voice, so this list, not espeak-ng's exit status, says which variants are real."""
    listing = _run(["espeak-ng", "--voices=variant"], text=True).stdout
    files = [line.split()[4] for line in listing.splitlines()[1:] if len(line.split()) >= 5]
    return tuple(sorted({f.split("/", 1)[1] for f in files if f.startswith("!v/")}))


@cache
def espeak_accents() -> tuple[str, ...]:
    listing = _run(["espeak-ng", "--voices=en"], text=True).stdout
    return tuple(line.split()[1] for line in listing.splitlines()[1:] if len(line.split()) >= 2)


@cache
def flite_voices() -> tuple[str, ...]:
    listing = _run(["flite", "-lv"], text=True).stdout  # "Voices available: kal awb …"
    return tuple(listing.split(":", 1)[1].split()) if ":" in listing else ()


@cache
def festival_voices() -> tuple[str, ...]:
    listing = _run(["festival", "--batch", "(print (voice.list))"], text=True).stdout
    return tuple(re.findall(r"[\w-]+", listing))


def unknown_variants(variants: Sequence[str]) -> list[str]:
    known = set(espeak_variants())
    return [v for v in variants if v not in known]


def check_tools(engines: Sequence[str]) -> None:
    missing = [tool for tool in ("sox", *engines) if shutil.which(tool) is None]
    if missing:
        packages = " ".join(DEBIAN_PACKAGES[tool] for tool in missing)
        raise SynthError(
            f"{' and '.join(missing)} not found: install the Debian packages "
            f"(apt-get install {packages}), or leave the engine out with --engines"
        )


def voice_inventory(engines: Sequence[str], variants: Sequence[str] | None = None) -> list[Voice]:
    """Every voice of ``engines``; a voice kws expects but this machine lacks is an error (the
    same seed must give the same set everywhere). ``variants``: espeak-ng's (default: all)."""
    bad = [e for e in engines if e not in ENGINES]
    if bad or not engines:
        raise SynthError(f"--engines: choose from {', '.join(ENGINES)} (not {', '.join(bad)})")
    check_tools(engines)
    voices: list[Voice] = []
    if "espeak-ng" in engines:
        accents = set(espeak_accents())
        lacking = [a for a in ESPEAK_ACCENTS if a not in accents]
        if lacking:
            raise SynthError(f"espeak-ng lacks the voices {', '.join(lacking)}")
        chosen = espeak_variants() if variants is None else tuple(variants)
        unknown = unknown_variants(chosen)
        if unknown:
            raise SynthError(
                f"espeak-ng has no variant {', '.join(unknown)} (it would silently use the "
                "plain voice); `espeak-ng --voices=variant` lists them"
            )
        for variant in ("", *chosen):
            group = f"espeak:{variant or 'plain'}"
            for accent in ESPEAK_ACCENTS:
                voices.append(
                    Voice("espeak-ng", f"{accent}+{variant}" if variant else accent, group)
                )
    for engine, listed in (("flite", flite_voices), ("festival", festival_voices)):
        if engine not in engines:
            continue
        have = set(listed())
        lacking = [name for name in RECORDED_VOICES[engine] if name not in have]
        if lacking:
            raise SynthError(
                f"{engine} lacks the voices {', '.join(lacking)}: install the Debian packages "
                f"{DEBIAN_PACKAGES[engine]}, or leave {engine} out with --engines"
            )
        for name, person in RECORDED_VOICES[engine].items():
            voices.append(Voice(engine, name, f"person:{person}"))
    return voices


# -- speakers and their splits -------------------------------------------------------------------


def held_out_count(n: int) -> int:
    """Validation and test get this many each of n: ~10 %, at least one each from 3 on."""
    return max(1, round(n * 0.1)) if n >= 3 else 0


def speaker_splits(count: int) -> list[str]:
    k = held_out_count(count)
    return ["train"] * (count - 2 * k) + ["validation"] * k + ["test"] * k


def split_groups(seed: int, groups: Sequence[str]) -> dict[str, str]:
    """Each voice group's split: ~10 % test, ~10 % validation, in an order fixed by the seed."""
    ordered = sorted(set(groups), key=lambda g: hashlib.sha1(f"{seed}:{g}".encode()).hexdigest())
    k = held_out_count(len(ordered))
    return {
        g: "test" if i < k else "validation" if i < 2 * k else "train"
        for i, g in enumerate(ordered)
    }


def make_speakers(seed: int, count: int, inventory: Sequence[Voice]) -> list[Speaker]:
    """``count`` speakers; those of a held-out split only use that split's voice groups.

    espeak-ng variants and recorded persons are split separately, so each split gets both."""
    espeak = [v for v in inventory if v.engine == "espeak-ng"]
    recorded = [v for v in inventory if v.engine != "espeak-ng"]
    group_split = {
        **split_groups(seed, [v.group for v in espeak]),
        **split_groups(seed, [v.group for v in recorded]),
    }
    speakers = []
    for k, split in enumerate(speaker_splits(count)):
        rng = np.random.default_rng([seed, SPEAKER_STREAM, k])
        pools = [
            [v for v in family if group_split[v.group] == split] for family in (espeak, recorded)
        ]
        pools = [p for p in pools if p] or [list(inventory)]
        pool = pools[0] if len(pools) == 1 or rng.uniform() < ESPEAK_SHARE else pools[1]
        # A group first, then one of its voices: every timbre as likely, whatever its accents.
        groups = sorted({v.group for v in pool})
        group = groups[rng.integers(len(groups))]
        members = [v for v in pool if v.group == group]
        voice = members[rng.integers(len(members))]
        espeak_voice = voice.engine == "espeak-ng"
        speakers.append(
            Speaker(
                id=hashlib.sha1(f"kws-synth:{seed}:{k}".encode()).hexdigest()[:8],
                split=split,
                voice=voice,
                pitch=int(rng.integers(20, 81)) if espeak_voice else int(rng.integers(-3, 4)),
                rate=round(float(rng.uniform(0.75, 1.2)), 3),
                room=ROOMS[rng.integers(len(ROOMS))],
                channel=CHANNELS[rng.integers(len(CHANNELS))],
            )
        )
    return speakers


def held_out(speakers: list[Speaker]) -> dict[str, set[str]]:
    """The validation and test speakers' ids."""
    return {split: {s.id for s in speakers if s.split == split} for split in LIST_FILES}


def plan_clips(seed: int, per_word: int, speakers: list[Speaker]) -> list[ClipPlan]:
    """``per_word`` clips of every word; clip i of a word is speaker i mod len(speakers)."""
    plans = []
    for w, word in enumerate(CLASSES):
        for i in range(per_word):
            speaker = speakers[i % len(speakers)]
            rng = np.random.default_rng([seed, CLIP_STREAM, w, i])
            espeak_voice = speaker.voice.engine == "espeak-ng"
            jitter = int(rng.integers(-8, 9)) if espeak_voice else 0
            plans.append(
                ClipPlan(
                    word=word,
                    index=i,
                    speaker=speaker,
                    repeat=i // len(speakers),
                    pitch=int(np.clip(speaker.pitch + jitter, 0, 99))
                    if espeak_voice
                    else speaker.pitch,
                    rate=round(speaker.rate * float(rng.uniform(0.9, 1.1)), 3),
                    speed=round(float(rng.uniform(0.92, 1.08)), 3),
                    peak=float(rng.uniform(0.25, 0.9)),
                    noise=NOISES[rng.integers(len(NOISES))],
                    noise_db=float(rng.uniform(-55, -30)),
                    offset=float(rng.uniform()),
                )
            )
    return plans


# -- sound ----------------------------------------------------------------------------------------


def engine_wav(voice: Voice, text: str, pitch: int, rate: float, said: dict | None = None) -> bytes:
    """The engine's WAV bytes for ``text`` (any rate; sox resamples). ``said``: festival's
    utterances made beforehand by festival_batch, by (voice name, text)."""
    if voice.engine == "festival":
        if said is not None and (voice.name, text) in said:
            return said[voice.name, text]
        return festival_batch(voice.name, [text])[text]
    if voice.engine == "espeak-ng":
        command = ["espeak-ng", "-v", voice.name, "-p", str(pitch), "-s", str(round(175 * rate))]
        done = _run([*command, "--stdout", text])
        if done.returncode == 0 and done.stdout:
            return done.stdout
    else:
        with tempfile.TemporaryDirectory(prefix="kws-synth-") as tmp:
            out = Path(tmp) / "said.wav"
            done = _run(["flite", "-voice", voice.name, "-t", text, "-o", str(out)])
            if done.returncode == 0 and out.is_file() and out.stat().st_size > 44:
                return out.read_bytes()
    message = done.stderr.decode(errors="replace").strip()
    raise SynthError(f"{voice.engine} failed for voice {voice.name}: {message}")


def festival_batch(voice: str, texts: Sequence[str]) -> dict[str, bytes]:
    """Every text said by festival's ``voice``, in one festival process: festival takes about
    a second to start and load a voice, and milliseconds per word after that."""
    with tempfile.TemporaryDirectory(prefix="kws-festival-") as tmp:
        lines = [f"(voice_{voice})"]
        for k, text in enumerate(texts):
            quoted = text.replace("\\", " ").replace('"', " ")
            lines.append(
                f'(utt.save.wave (utt.synth (Utterance Text "{quoted}")) "{tmp}/{k}.wav" \'riff)'
            )
        script = Path(tmp) / "say.scm"
        script.write_text("\n".join(lines) + "\n")
        done = _run(["festival", "--batch", str(script)])
        out = {}
        for k, text in enumerate(texts):
            wav_path = Path(tmp) / f"{k}.wav"
            if not wav_path.is_file() or wav_path.stat().st_size <= 44:
                message = done.stderr.decode(errors="replace").strip()
                raise SynthError(f"festival failed for voice {voice}: {message or 'no output'}")
            out[text] = wav_path.read_bytes()
        return out


def sox_effects(plan: ClipPlan) -> list[str]:
    speaker = plan.speaker
    effects: list[str] = []
    if speaker.voice.engine != "espeak-ng":  # espeak-ng sets its own pitch and rate
        if plan.pitch:
            effects += ["pitch", str(100 * plan.pitch)]
        effects += ["tempo", "-s", f"{plan.rate}"]
    effects += ["speed", f"{plan.speed}", "rate", str(SAMPLE_RATE)]
    if speaker.channel == "phone":
        effects += ["sinc", "300-3400"]
    elif speaker.channel == "muffled":
        effects += ["lowpass", "2500"]
    if speaker.room != "none":
        reverberance, scale = (30, 30) if speaker.room == "small" else (70, 100)
        effects += ["reverb", str(reverberance), "50", str(scale)]
    return effects


def to_float(wav_bytes: bytes, effects: Sequence[str] = ("rate", str(SAMPLE_RATE))) -> np.ndarray:
    """sox: any WAV → 16 kHz mono float, through ``effects``."""
    sox = ["sox", "-R", "-D", "-t", "wav", "-", "-t", "raw", "-e", "floating-point", "-b", "32"]
    done = _run([*sox, "-c", "1", "-", *effects], input=wav_bytes)
    if done.returncode != 0:
        raise SynthError(f"sox failed: {done.stderr.decode(errors='replace').strip()}")
    return np.frombuffer(done.stdout, dtype="<f4").astype(np.float64)


def speak(plan: ClipPlan, said: dict | None = None) -> np.ndarray:
    wav_bytes = engine_wav(plan.speaker.voice, plan.word, plan.pitch, plan.rate, said)
    return to_float(wav_bytes, sox_effects(plan))


def trim_silence(samples: np.ndarray, threshold: float = 0.02) -> np.ndarray:
    loud = np.flatnonzero(np.abs(samples) > threshold * max(np.abs(samples).max(), 1e-9))
    return samples[loud[0] : loud[-1] + 1] if len(loud) else samples


def coloured_noise(kind: str, rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit-RMS white, pink (−3 dB/octave) or brown (−6 dB/octave) noise."""
    white = rng.standard_normal(n)
    if kind == "white":
        noise = white
    else:
        spectrum = np.fft.rfft(white)
        freqs = np.fft.rfftfreq(n, 1 / SAMPLE_RATE)
        freqs[0] = freqs[1]
        spectrum /= np.sqrt(freqs) if kind == "pink" else freqs
        noise = np.fft.irfft(spectrum, n)
    noise -= noise.mean()
    return noise / max(np.sqrt(np.mean(noise**2)), 1e-12)


def babble(seed: int, n: int, inventory: Sequence[Voice]) -> np.ndarray:
    """Unit-RMS babble: six of the set's voices reading sentences over each other."""
    rng = np.random.default_rng([seed, BACKGROUND_STREAM, 0])
    out = np.zeros(n)
    for text in BABBLE_TEXT:
        voice = inventory[rng.integers(len(inventory))]
        speech = to_float(engine_wav(voice, text, 50, 1.0))
        start = int(rng.integers(0, max(1, n // 4)))
        while start < n:  # repeat it to fill the whole file
            part = speech[: n - start]
            out[start : start + len(part)] += part
            start += len(speech) + int(rng.integers(SAMPLE_RATE // 4, SAMPLE_RATE))
    out -= out.mean()
    return out / max(np.sqrt(np.mean(out**2)), 1e-12)


def backgrounds(seed: int, inventory: Sequence[Voice]) -> dict[str, np.ndarray]:
    """The ``_background_noise_`` sounds, unit RMS, BACKGROUND_SECONDS long."""
    n = BACKGROUND_SECONDS * SAMPLE_RATE
    out = {
        kind: coloured_noise(kind, np.random.default_rng([seed, BACKGROUND_STREAM, i + 1]), n)
        for i, kind in enumerate(("white", "pink", "brown"))
    }
    out["babble"] = babble(seed, n, inventory)
    return out


def render(
    plan: ClipPlan, seed: int, noises: dict[str, np.ndarray], said: dict | None = None
) -> np.ndarray:
    """The clip as int16, one second long."""
    speech = trim_silence(speak(plan, said))[:CLIP_SAMPLES]
    speech *= plan.peak / max(np.abs(speech).max(), 1e-9)
    start = int(plan.offset * (CLIP_SAMPLES - len(speech)))
    out = np.zeros(CLIP_SAMPLES)
    out[start : start + len(speech)] = speech
    if plan.noise != "none":
        rng = np.random.default_rng([seed, NOISE_STREAM, CLASSES.index(plan.word), plan.index])
        source = noises[plan.noise]
        at = int(rng.integers(0, len(source) - CLIP_SAMPLES))
        out += source[at : at + CLIP_SAMPLES] * 10 ** (plan.noise_db / 20)
    return to_int16(out)


def to_int16(samples: np.ndarray) -> np.ndarray:
    return np.clip(np.round(samples * 32767), -32768, 32767).astype(np.int16)


def write_wav(path: Path, samples: np.ndarray) -> None:
    with wave.open(str(path), "wb") as f:
        f.setnchannels(1)
        f.setsampwidth(2)
        f.setframerate(SAMPLE_RATE)
        f.writeframes(samples.astype("<i2").tobytes())


def synthesize(
    out: str | Path,
    per_word: int = 20,
    seed: int = 0,
    speakers: int | None = None,
    jobs: int | None = None,
    progress: Callable[[int, int], None] | None = None,
    engines: Sequence[str] = ENGINES,
    variants: Sequence[str] | None = None,
) -> Path:
    """Write the set into ``out`` (which must be absent or empty); returns ``out``."""
    out = Path(out)
    if per_word < 1:
        raise SynthError("--per-word must be at least 1")
    if speakers is not None and speakers < 1:
        raise SynthError("--speakers must be at least 1")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise SynthError(f"{out}: exists and is not an empty folder; choose a new one")
    inventory = voice_inventory(engines, variants)
    voices = make_speakers(seed, speakers or per_word, inventory)
    plans = plan_clips(seed, per_word, voices)
    noises = backgrounds(seed, inventory)
    for word in CLASSES:
        (out / word).mkdir(parents=True, exist_ok=True)
    (out / "_background_noise_").mkdir()
    for kind, samples in noises.items():
        write_wav(out / "_background_noise_" / f"{kind}_noise.wav", to_int16(samples * 0.1))

    # festival says each word once per voice (its rate and pitch vary in sox, per clip).
    festival = sorted({p.speaker.voice.name for p in plans if p.speaker.voice.engine == "festival"})
    said = {
        (voice, word): wav_bytes
        for voice in festival
        for word, wav_bytes in festival_batch(voice, CLASSES).items()
    }

    def one(plan: ClipPlan) -> None:
        write_wav(out / plan.rel, render(plan, seed, noises, said))

    done = 0
    # Threads suffice: the work is in the synthesiser and sox processes.
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
        "generator": "kws synth (espeak-ng, flite, festival + sox)",
        "seed": seed,
        "per_word": per_word,
        "engines": list(engines),
        "voice_groups": {
            split: sorted({s.voice.group for s in voices if s.split == split})
            for split in ("train", "validation", "test")
        },
        "speakers": [asdict(s) for s in voices],
        "clips": len(plans),
    }
    (out / "synth.json").write_text(json.dumps(manifest, indent=1) + "\n")
    return out
