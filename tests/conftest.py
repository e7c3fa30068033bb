"""Shared test set-up. The real-part harnesses live in tests/harness/."""

import sys
from pathlib import Path

# `harness` is imported as a top-level package by tests and benchmarks.
sys.path.insert(0, str(Path(__file__).resolve().parent))

pytest_plugins = ["harness.fixtures_nvml"]
