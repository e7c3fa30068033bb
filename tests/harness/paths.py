"""Where the tests' data lives: this repository, and the shared fixtures cloned beside it."""

from __future__ import annotations

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The lab's sheet (values + merges), reconstructed from the seed; a copy of
# ../shared/fixtures/server-and-gpu-usage.json kept here so the sheet tests are self-contained.
SEED_SHEET = Path(__file__).resolve().parent / "data" / "server-and-gpu-usage.json"
# Real Google answers recorded by gspread (MIT): too large to copy, read from ../shared.
SHARED = REPO.parent / "shared"
CASSETTES = SHARED / "fixtures" / "gspread-cassettes"


def shared_cassettes() -> Path:
    """The cassette folder, or a failure that says where it was looked for."""
    if not CASSETTES.is_dir():
        raise FileNotFoundError(
            f"{CASSETTES} not found: the gspread cassettes live in the shared fixtures, which "
            "CI places beside this clone as ../shared"
        )
    return CASSETTES
