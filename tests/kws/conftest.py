"""kws test fixtures: one small synthetic dataset per session (espeak-ng + sox)."""

from __future__ import annotations

from pathlib import Path

import pytest

from kws.synth import synthesize

# 20 clips of each word by 20 fake speakers: 16 train / 2 validation / 2 test speakers.
SYNTH_PER_WORD = 20
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("kws") / "synth", per_word=SYNTH_PER_WORD, seed=SYNTH_SEED
    )
