"""pytest fixtures for tests that act as several unprivileged users (registered in
tests/conftest.py): ``lab_users`` (session: gpumon-t-agent, gpumon-t-alice, gpumon-t-bob) and
``deployment`` (a fresh GPU server as the shipped unit sets it up, per test)."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from harness.users import Deployment, User, users

needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="acts as several users: run as root (CI does)"
)


@pytest.fixture(scope="session")
def lab_users() -> Iterator[dict[str, User]]:
    if os.geteuid() != 0:
        pytest.skip("acts as several users: run as root (CI does)")
    yield from users(["agent", "alice", "bob"])


@pytest.fixture
def deployment(lab_users: dict[str, User]) -> Iterator[Deployment]:
    server = Deployment(lab_users["agent"])
    try:
        yield server
    finally:
        server.close()
