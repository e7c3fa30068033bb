"""Alert tests: a real SMTP server (aiosmtpd) and a real HTTP receiver on loopback
(tests/harness/receivers.py), the sshd + fake-NVML fleet for whole pushes; isolated from the
user's own ~/.ssh and ssh-agent."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from harness.isolation import _no_personal_ssh, isolated_home  # noqa: F401
from harness.receivers import LoopbackCA, SmtpServer, WebhookReceiver


@pytest.fixture(scope="session")
def ca(tmp_path_factory: pytest.TempPathFactory) -> LoopbackCA:
    return LoopbackCA(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def hook() -> Iterator[WebhookReceiver]:
    receiver = WebhookReceiver()
    yield receiver
    receiver.close()


@pytest.fixture
def smtp() -> Iterator[SmtpServer]:
    server = SmtpServer("none")
    yield server
    server.close()
