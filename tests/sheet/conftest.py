import pytest
from sheetkit import seed_grid

from gpumon.sheet.grid import Grid


@pytest.fixture
def seed() -> Grid:
    """The lab's sheet: header on row 7, 12 servers, merged status cells per block."""
    return seed_grid()
