"""Where gpumon finds its config and keeps its state: where Unix tools look. The config:
--config (before or after the command), $GPUMON_CONFIG, $XDG_CONFIG_HOME/gpumon/gpumon.toml
(~/.config when unset), /etc/gpumon/gpumon.toml, else the embedded default — and `gpumon check`
says which. The state: state_dir in the config, else $STATE_DIRECTORY (the units'
StateDirectory=), else $XDG_STATE_HOME/gpumon (~/.local/state/gpumon)."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest
from clikit import (
    check_config_line,
    clean_env,
    gpumon_here,
    local_config,
    main_as_user,
    mode,
    state_line,
    warm_imports,
)

from gpumon import configpath
from gpumon.config import load


@pytest.fixture
def home(tmp_path: Path) -> Path:
    home = tmp_path / "home"  # made by the autouse isolation fixture (HOME points here)
    home.mkdir(exist_ok=True)
    return home


def test_search_order_is_flag_then_variable_then_xdg_then_etc(tmp_path: Path):
    user = tmp_path / "xdg" / "gpumon" / "gpumon.toml"
    system = tmp_path / "etc" / "gpumon.toml"
    env = {"HOME": str(tmp_path / "home"), "XDG_CONFIG_HOME": str(tmp_path / "xdg")}

    def found(explicit=None, **more):
        return configpath.find_config(explicit, {**env, **more}, system_path=str(system))

    assert found().path is None  # nothing anywhere: the embedded default
    assert "neither" in found().how
    system.parent.mkdir(parents=True)
    system.write_text("")
    assert (found().path, found().how) == (str(system), "the system config")
    user.parent.mkdir(parents=True)
    user.write_text("")
    assert found().path == str(user)
    assert found(GPUMON_CONFIG="/x/from-env.toml").path == "/x/from-env.toml"
    assert found(GPUMON_CONFIG="/x/from-env.toml").must_exist
    assert found("/x/flag.toml", GPUMON_CONFIG="/x/from-env.toml").path == "/x/flag.toml"


def test_xdg_config_home_unset_or_relative_means_dot_config(tmp_path: Path):
    home = tmp_path / "home"
    default = home / ".config" / "gpumon" / "gpumon.toml"
    for xdg in (None, "", "relative/dir"):
        env = {"HOME": str(home)} | ({"XDG_CONFIG_HOME": xdg} if xdg is not None else {})
        assert configpath.user_config_path(env) == str(default)


def test_the_state_directory_is_state_directory_then_xdg_state_home(tmp_path: Path):
    home = str(tmp_path)
    assert configpath.default_state_dir({"HOME": home}) == f"{home}/.local/state/gpumon"
    xdg = {"HOME": home, "XDG_STATE_HOME": "/srv/state"}
    assert configpath.default_state_dir(xdg) == "/srv/state/gpumon"
    assert configpath.default_state_dir({**xdg, "XDG_STATE_HOME": "rel"}).startswith(home)
    unit = {**xdg, "STATE_DIRECTORY": "/var/lib/gpumon"}  # what StateDirectory=gpumon sets
    assert configpath.default_state_dir(unit) == "/var/lib/gpumon"
    both = {**unit, "STATE_DIRECTORY": "/var/lib/gpumon:/var/lib/other"}
    assert configpath.default_state_dir(both) == "/var/lib/gpumon"


def test_a_state_dir_in_the_config_wins_over_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("STATE_DIRECTORY", str(tmp_path / "unit"))
    config = load(str(local_config(tmp_path / "c", state_dir=tmp_path / "mine")))
    assert config.state_dir == str(tmp_path / "mine") and config.state_dir_set
    config = load(str(local_config(tmp_path / "d")))
    assert config.state_dir == str(tmp_path / "unit") and not config.state_dir_set


def test_the_system_config_is_read_when_the_user_has_none(tmp_path, monkeypatch):
    system = local_config(tmp_path / "etc")
    monkeypatch.setattr(configpath, "SYSTEM_CONFIG", str(system))
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.delenv("XDG_CONFIG_HOME", raising=False)
    monkeypatch.delenv("GPUMON_CONFIG", raising=False)
    config = load()
    assert (config.path, config.found_by) == (str(system), "the system config")


def test_check_says_which_config_it_read(home: Path, tmp_path: Path, no_nvml_env):
    xdg = tmp_path / "xdg"
    local_config(xdg / "gpumon", state_dir=tmp_path / "state")
    env = clean_env(home, no_nvml_env, XDG_CONFIG_HOME=str(xdg))
    done = gpumon_here("check", env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    line = check_config_line(done.stdout)
    assert str(xdg / "gpumon" / "gpumon.toml") in line and "XDG_CONFIG_HOME" in line

    named = local_config(tmp_path / "named", state_dir=tmp_path / "state")
    done = gpumon_here("check", env={**env, "GPUMON_CONFIG": str(named)}, cwd=tmp_path)
    assert f"config: {named} (read: $GPUMON_CONFIG)" in check_config_line(done.stdout)

    flag = local_config(tmp_path / "flag", state_dir=tmp_path / "state")
    done = gpumon_here("check", "--config", str(flag), env={**env, "GPUMON_CONFIG": str(named)},
                  cwd=tmp_path)  # fmt: skip
    assert f"config: {flag} (read: --config)" in check_config_line(done.stdout)


def test_check_says_when_it_uses_the_embedded_default(home: Path, tmp_path: Path, no_nvml_env):
    done = gpumon_here("check", env=clean_env(home, no_nvml_env), cwd=tmp_path)
    line = check_config_line(done.stdout)
    assert "the embedded default config" in line
    assert "~/.config/gpumon/gpumon.toml" in line and "/etc/gpumon/gpumon.toml" in line
    assert "$GPUMON_CONFIG unset" in line
    state = state_line(done.stdout)
    assert str(home / ".local" / "state" / "gpumon") in state and "default" in state


def test_config_is_accepted_after_the_command_and_wins_there(tmp_path: Path, home, no_nvml_env):
    first = local_config(tmp_path / "first", state_dir=tmp_path / "s1")
    second = local_config(tmp_path / "second", state_dir=tmp_path / "s2")
    env = clean_env(home, no_nvml_env)
    done = gpumon_here("push", "--config", str(second), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "second" / "sheet.xlsx").exists()
    done = gpumon_here("--config", str(first), "check", "--config", str(second), env=env,
                  cwd=tmp_path)  # fmt: skip
    assert f"config: {second}" in check_config_line(done.stdout)
    done = gpumon_here("--config", str(first), "check", env=env, cwd=tmp_path)
    assert f"config: {first}" in check_config_line(done.stdout)


def test_a_named_config_that_is_missing_is_an_error_naming_who_named_it(tmp_path, home,
                                                                        no_nvml_env):  # fmt: skip
    env = clean_env(home, no_nvml_env)
    done = gpumon_here("push", "--config", str(tmp_path / "nope.toml"), env=env, cwd=tmp_path)
    assert done.returncode == 2
    assert "nope.toml (named by --config): no such config file" in done.stderr
    assert "drop --config" in done.stderr
    done = gpumon_here("push", env={**env, "GPUMON_CONFIG": str(tmp_path / "gone.toml")},
                  cwd=tmp_path)  # fmt: skip
    assert done.returncode == 2
    assert "gone.toml (named by $GPUMON_CONFIG)" in done.stderr
    assert "unset GPUMON_CONFIG" in done.stderr
    assert not (tmp_path / "gpumon-sheet.xlsx").exists()  # never a fall-back to the default


def test_a_push_keeps_its_state_under_xdg_state_home(tmp_path: Path, home, no_nvml_env):
    config = local_config(tmp_path / "c")
    env = clean_env(home, no_nvml_env, XDG_STATE_HOME=str(tmp_path / "xstate"))
    done = gpumon_here("push", "--config", str(config), env=env, cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "xstate" / "gpumon" / "push.lock").exists()
    assert (tmp_path / "xstate" / "gpumon" / "last-seen.json").exists()
    assert not (home / ".local").exists()
    done = gpumon_here("check", "--config", str(config), env=env, cwd=tmp_path)
    assert "from $XDG_STATE_HOME" in state_line(done.stdout)


UNIT_UID = 64_731  # no passwd entry: an unprivileged service user as the unit runs it


@pytest.mark.skipif(os.geteuid() != 0, reason="switching to another user needs root")
def test_the_service_keeps_its_state_in_state_directory_unprivileged_under_umask_0077(
    no_nvml_env,
):
    """As deploy/systemd/gpumon-push.service runs it: User=, UMask=0077, StateDirectory=gpumon
    (systemd sets STATE_DIRECTORY and creates it owned by the user), HOME in it, no state_dir
    in the config."""
    root = Path(tempfile.mkdtemp(prefix="gpumon-unit-"))
    try:
        os.chmod(root, 0o755)
        state = root / "var-lib-gpumon"
        state.mkdir(mode=0o750)
        os.chown(state, UNIT_UID, UNIT_UID)
        etc = root / "etc"
        config = local_config(etc)
        os.chmod(etc, 0o755)
        os.chmod(config, 0o644)
        sheet_dir = root / "sheet"
        sheet_dir.mkdir()
        os.chown(sheet_dir, UNIT_UID, UNIT_UID)
        config.write_text(config.read_text().replace('"sheet.xlsx"', f'"{sheet_dir}/s.xlsx"'))
        env = clean_env(state, no_nvml_env, STATE_DIRECTORY=str(state))
        env["GPUMON_STATE_DIR"] = str(state / "agent")  # the in-process agent read's own
        rehearsal = root / "rehearsal"  # as root, elsewhere: loads what the commands import
        for command in ("push", "check"):
            warm = clean_env(rehearsal, no_nvml_env, STATE_DIRECTORY=str(rehearsal / "state"))
            warm_imports(["--config", str(local_config(rehearsal)), command], warm, root)
        for command in ("push", "check"):
            code, out, err = main_as_user(UNIT_UID, ["--config", str(config), command], env, state)
            assert code == 0, out + err
        assert f"state directory: {state}" in out
        assert "$STATE_DIRECTORY" in state_line(out)
        for name in ("push.lock", "last-seen.json"):
            path = state / name
            assert path.stat().st_uid == UNIT_UID
            assert mode(path) & 0o077 == 0  # nothing for others under the unit's umask
        assert (sheet_dir / "s.xlsx").stat().st_uid == UNIT_UID
    finally:
        shutil.rmtree(root, ignore_errors=True)
