"""The history tests build poll results with the sheet tests' kit (tests/sheet/sheetkit.py)."""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "sheet"))
