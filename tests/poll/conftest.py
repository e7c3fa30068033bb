"""Poll tests: a real sshd fleet on loopback (tests/harness/sshd.py), isolated from the
user's own ~/.ssh and ssh-agent."""

from harness.isolation import _no_personal_ssh, isolated_home  # noqa: F401
