"""kws test fixtures: one small synthetic dataset per session (espeak-ng + sox)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from kws.synth import synthesize

# 20 clips of each word by 20 fake speakers: 16 train / 2 validation / 2 test speakers.
SYNTH_PER_WORD = 20
SYNTH_SEED = 0


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return synthesize(
        tmp_path_factory.mktemp("kws") / "synth", per_word=SYNTH_PER_WORD, seed=SYNTH_SEED
    )


@pytest.fixture(scope="session", autouse=True)
def one_torch_thread():
    """The kws tests train on one CPU thread: the suite runs beside its own servers (sshd,
    Sheets, Prometheus) and other jobs, and on a shared CPU torch's per-core threads spin at
    every op waiting for each other (1.7-3.6x slower; docs/kws.md, "Speed on the CPU")."""
    saved = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(saved)
