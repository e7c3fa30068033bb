"""Pick the sheet backend named by ``[sheet] backend``."""

from __future__ import annotations

import importlib

from gpumon.config import Config, ConfigError
from gpumon.sheet.grid import Backend

_MODULES = {"xlsx": "gpumon.sheet.xlsx", "google": "gpumon.sheet.google"}


def open_backend(config: Config) -> Backend:
    name = config.sheet.backend
    if name not in _MODULES:
        raise ConfigError(f'{config.origin}: [sheet] backend must be "google" or "xlsx"')
    module = importlib.import_module(_MODULES[name])
    return module.open_backend(config)
