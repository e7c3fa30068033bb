"""Fixtures that keep tests off the developer's own ~/.ssh (keys, known_hosts, config) and
ssh-agent; conftest files import them (tests/poll, tests/cli)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest


@pytest.fixture(autouse=True)
def _no_personal_ssh(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Tests never read the real ~/.ssh (keys, known_hosts, config) nor use an ssh-agent."""
    home = tmp_path / "home"
    home.mkdir(exist_ok=True)
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("SSH_AUTH_SOCK", raising=False)


@pytest.fixture(scope="module")
def isolated_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The same isolation for module-scoped fixtures (which cannot use monkeypatch)."""
    home = tmp_path_factory.mktemp("home")
    saved = {k: os.environ.get(k) for k in ("HOME", "SSH_AUTH_SOCK")}
    os.environ["HOME"] = str(home)
    os.environ.pop("SSH_AUTH_SOCK", None)
    yield home
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
