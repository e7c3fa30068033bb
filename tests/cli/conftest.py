"""Command-line tests: the real `gpumon` on real parts (sshd fleets, pseudo-terminals, pipes),
isolated from the user's own ~/.ssh and ssh-agent."""

import sys
from pathlib import Path

from harness.isolation import _no_personal_ssh, isolated_home  # noqa: F401

sys.path.insert(0, str(Path(__file__).resolve().parent))  # clikit, ptykit
