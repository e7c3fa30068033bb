"""Where gpumon's files are, found where Unix tools look for them.

The config file, first found of: ``--config PATH``, ``$GPUMON_CONFIG``,
``$XDG_CONFIG_HOME/gpumon/gpumon.toml`` (``~/.config`` when unset), ``/etc/gpumon/gpumon.toml``.
The first two must exist when given; the other two are used only if they do. None found: the
embedded default (this machine, into ./gpumon-sheet.xlsx).

The state directory (push lock, last-seen times), unless the config sets ``state_dir``:
``$STATE_DIRECTORY`` (systemd sets it from the units' ``StateDirectory=gpumon``: /var/lib/gpumon),
else ``$XDG_STATE_HOME/gpumon`` (``~/.local/state`` when unset).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass

ENV_CONFIG = "GPUMON_CONFIG"
SYSTEM_CONFIG = "/etc/gpumon/gpumon.toml"
SERVICE_STATE_DIR = "/var/lib/gpumon"  # what the deploy units' StateDirectory= makes


@dataclass(frozen=True)
class ConfigSource:
    """The config file to read (None: the embedded default) and how it was chosen."""

    path: str | None
    how: str  # e.g. "--config", "$GPUMON_CONFIG", "the user's config", "no config file found"
    must_exist: bool = False  # named explicitly: a missing file is an error, not a fallback


def user_config_path(env: Mapping[str, str] | None = None) -> str:
    env = os.environ if env is None else env
    return os.path.join(_xdg(env, "XDG_CONFIG_HOME", "~/.config"), "gpumon", "gpumon.toml")


def user_config_dir(env: Mapping[str, str] | None = None) -> str:
    return os.path.dirname(user_config_path(env))


def find_config(
    explicit: str | None = None,
    env: Mapping[str, str] | None = None,
    system_path: str | None = None,
) -> ConfigSource:
    """The config to read, in the order of the module docstring."""
    env = os.environ if env is None else env
    system_path = system_path or SYSTEM_CONFIG
    if explicit:
        return ConfigSource(explicit, "--config", must_exist=True)
    named = env.get(ENV_CONFIG, "")
    if named:
        return ConfigSource(named, f"${ENV_CONFIG}", must_exist=True)
    user = user_config_path(env)
    if os.path.exists(user):
        return ConfigSource(user, "the user's config ($XDG_CONFIG_HOME or ~/.config)")
    if os.path.exists(system_path):
        return ConfigSource(system_path, "the system config")
    return ConfigSource(
        None,
        f"no --config, ${ENV_CONFIG} unset, neither {_home_short(user)} nor {system_path} exists",
    )


def default_state_dir(env: Mapping[str, str] | None = None) -> str:
    """``$STATE_DIRECTORY`` (systemd's), else ``$XDG_STATE_HOME/gpumon``."""
    env = os.environ if env is None else env
    # systemd joins several StateDirectory= entries with ':'; gpumon's units name one.
    given = env.get("STATE_DIRECTORY", "").split(":")[0]
    if given and os.path.isabs(given):
        return given
    return os.path.join(_xdg(env, "XDG_STATE_HOME", "~/.local/state"), "gpumon")


def state_dir_origin(env: Mapping[str, str] | None = None) -> str:
    """Where default_state_dir() took its answer from, for `gpumon check`."""
    env = os.environ if env is None else env
    given = env.get("STATE_DIRECTORY", "").split(":")[0]
    if given and os.path.isabs(given):
        return "$STATE_DIRECTORY, from the unit's StateDirectory="
    if _absolute(env.get("XDG_STATE_HOME", "")):
        return "$XDG_STATE_HOME"
    return "the default, ~/.local/state/gpumon"


def _xdg(env: Mapping[str, str], name: str, fallback: str) -> str:
    # The XDG spec: a relative (or empty) value is invalid and must be ignored.
    value = env.get(name, "")
    if _absolute(value):
        return value
    home = env.get("HOME") or os.path.expanduser("~")
    return os.path.join(home, fallback.removeprefix("~/"))


def _absolute(path: str) -> bool:
    return bool(path) and os.path.isabs(path)


def _home_short(path: str) -> str:
    home = os.path.expanduser("~")
    if home not in ("", "/") and path.startswith(home + os.sep):
        return "~" + path[len(home) :]
    return path
