"""pytest fixtures for the fake NVML library (registered in tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

from harness.fakenvml import FakeNvml, FakeState, env_without_nvml


@pytest.fixture
def fake_nvml(tmp_path: Path) -> Callable[..., FakeNvml]:
    """A factory: fake_nvml(state=None, omit=(), name="nvml") -> FakeNvml in tmp_path/name."""

    def make(
        state: FakeState | None = None, omit: Sequence[str] = (), name: str = "nvml"
    ) -> FakeNvml:
        return FakeNvml(tmp_path / name, state, omit)

    return make


@pytest.fixture
def no_nvml_env(tmp_path: Path) -> dict[str, str]:
    """An environment for subprocesses in which no NVML library can be loaded."""
    return env_without_nvml(tmp_path)
