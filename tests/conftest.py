"""Shared test set-up. The real-part harnesses live in tests/harness/."""

import sys
from pathlib import Path

# `harness` is imported as a top-level package by tests and benchmarks; `agent_proc` (running
# the agent command) by the agent tests here and in tests/adversarial.
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent / "agent"))

pytest_plugins = ["harness.fixtures_nvml", "harness.fixtures_users"]
