"""Prometheus tests: a real Prometheus per module (tests/harness/prometheus.py), real agents on
the fake NVML (tests/harness/agents.py), the real sshd fleet for the SSH side; isolated from the
user's own ~/.ssh and ssh-agent (tests/harness/isolation.py)."""

from harness.isolation import _no_personal_ssh, isolated_home  # noqa: F401
