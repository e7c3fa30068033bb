"""`gpumon check`: is everything in place? Config, credentials, the sheet and its layout, SSH to
every server — one line each, what is wrong and how to fix it. Exit 1 if anything is wrong.

It reads the sheet and polls the fleet like a push, but writes nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
from dataclasses import dataclass, field
from typing import TextIO

from gpumon.config import OWNED_COLUMNS, Config, ConfigError
from gpumon.fleet import FleetSession, known_users, open_fleet, poll_names
from gpumon.poll import result as codes
from gpumon.poll.result import ServerResult
from gpumon.sheet.grid import Grid, SheetError, a1, column_letter
from gpumon.sheet.layout import Block, Layout, LayoutError, read_layout
from gpumon.sheet.plan import sheet_timezone
from gpumon.sheet.reservations import read_reservations
from gpumon.table import printable

OK, INFO, FAIL = "ok  ", "    ", "FAIL"

# reason code → how to fix it ({name}: the server, {dest}: what was dialled)
FIXES = {
    codes.REFUSED: "nothing listens for SSH at {dest}: start sshd there, or fix host/port in "
    "[servers.{name}] or ~/.ssh/config",
    codes.UNREACHABLE: "cannot reach {dest}: check the address in [servers.{name}] or "
    "~/.ssh/config, and the network between here and there",
    codes.TIMEOUT: "is {name} up? (raise the [poll] timeouts only if it is merely slow)",
    codes.AUTH_FAILED: "add the central key to ~/.ssh/authorized_keys of the login user on "
    "{name}, with the forced command (deploy/ssh/authorized_keys.example)",
    codes.HOST_KEY_UNKNOWN: "record its host key: gpumon trust {name}",
    codes.HOST_KEY_CHANGED: "if {name} was reinstalled, record the new key (gpumon trust {name}); "
    "otherwise find out who answers at {dest}",
    codes.AGENT_MISSING: "install gpumon-agent on {name} (README, set-up step 3)",
    codes.AGENT_FAILED: "run `gpumon-agent report` on {name} to see why it fails",
    codes.BAD_OUTPUT: "the forced command on {name} must be `gpumon-agent ssh` "
    "(deploy/ssh/authorized_keys.example)",
    codes.AGENT_STALE: "the agent daemon is not sampling: systemctl restart gpumon-agent on {name}",
    "agentless": "install gpumon-agent on {name} for users, claims and health",
    "config_error": "fix [servers.{name}] in the config",
    codes.SOURCE_FAILED: "check [source] url and that Prometheus runs (curl URL/-/ready)",
    codes.NO_METRICS: "add {name} to Prometheus' targets (gpumon prometheus-targets --out FILE) "
    "and run its agent with --metrics ADDR:PORT",
    codes.SCRAPE_FAILED: "is {name} up, and its agent serving --metrics on that address and "
    "[metrics] port? (Prometheus' Status → Targets says why)",
    codes.DCGM_ONLY: "run gpumon-agent on {name} too for users, claims and health",
}


@dataclass
class Checklist:
    out: TextIO
    failures: list[str] = field(default_factory=list)

    # Lines quote sheet cells and server text: never raw to a terminal.
    def ok(self, text: str) -> None:
        print(printable(f"{OK} {text}"), file=self.out)

    def info(self, text: str) -> None:
        print(printable(f"{INFO} {text}"), file=self.out)

    def fail(self, text: str) -> None:
        self.failures.append(text)
        print(printable(f"{FAIL} {text}"), file=self.out)


def check(config: Config, out: TextIO | None = None) -> int:
    with open_fleet(config) as fleet:
        return _check(config, fleet, Checklist(out or sys.stdout))


def _check(config: Config, fleet: FleetSession, checks: Checklist) -> int:
    how = f" (read: {config.found_by})" if config.path and config.found_by else ""
    if config.path is None and config.found_by:
        how = f" ({config.found_by})"
    checks.ok(f"config: {config.origin}{how}")
    _check_state_dir(config, checks)
    _check_history_db(config, checks)
    _check_alerts(config, checks)
    layout: Layout | None = None
    grid: Grid | None = None
    try:
        backend = fleet.backend()
    except (ConfigError, SheetError) as e:
        checks.fail(f"sheet: {e}")
        backend = None
    if backend is not None:
        grid, layout = _check_sheet(config, backend, checks)
    not_polled: list[str] = []
    names = poll_names(config, layout.servers() if layout else [], not_polled)
    for warning in not_polled:
        checks.info(warning)
    if not names:
        checks.fail("servers: none to poll (add [servers.NAME] tables, or names in the sheet)")
    else:
        try:
            poller = fleet.poller()
        except ConfigError as e:
            checks.fail(f"ssh: {e}")
        else:
            results = poller.sweep(names)
            for result in results:
                _check_server(result, checks)
            _check_streams(results, checks)
            if layout is not None and grid is not None:
                _check_placement(config, layout, results, checks)
                _check_reservations(config, grid, layout, results, checks)
    if checks.failures:
        print(f"{len(checks.failures)} problem(s) found.", file=checks.out)
        return 1
    print("all good.", file=checks.out)
    return 0


def _check_state_dir(config: Config, checks: Checklist) -> None:
    folder = config.state_path("")
    probe = folder
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    from gpumon.configpath import state_dir_origin

    origin = f"state_dir in {config.origin}" if config.state_dir_set else state_dir_origin()
    if os.access(probe, os.W_OK | os.X_OK):
        held = "push lock, last-seen times, the history database"
        checks.ok(f"state directory: {folder} ({held}; from {origin})")
    else:
        checks.fail(f"state directory: {folder} is not writable — set state_dir in {config.origin}")


def _check_history_db(config: Config, checks: Checklist) -> None:
    """The state directory's database: its size, the pushes it holds, the GPUs' times — read
    as it is (a corrupt one is left for the next push to move aside)."""
    import sqlite3

    from gpumon.history.store import recorded
    from gpumon.statedb import connect, db_path, is_corruption, unavailable
    from gpumon.usetimes import saved_count

    path = db_path(config)
    label = f"history database: {path}"
    if not path.exists():
        checks.ok(f"{label}: none yet (the first push makes it)")
        return
    try:
        conn = connect(path)
        try:
            held, gpus = recorded(conn), saved_count(conn)
        finally:
            conn.close()
    except sqlite3.DatabaseError as e:
        if is_corruption(e):
            checks.fail(
                f"{label}: corrupt ({e}) — the next push moves it aside and starts a new one; "
                "stop gpumon first to try `sqlite3 FILE .recover` on it"
            )
        else:
            checks.fail(f"{label}: {unavailable(path, e)}")
        return
    except OSError as e:
        checks.fail(f"{label}: {unavailable(path, e)}")
        return
    size = sum(os.stat(side).st_size for side in (str(path), f"{path}-wal") if os.path.exists(side))
    if held.oldest is None or held.newest is None:
        pushes = "no push recorded yet"
    else:
        pushes = f"pushes from {_utc(held.oldest)} to {_utc(held.newest)}, {held.servers} servers"
    if not config.history.enabled:
        pushes = f"[history] enabled = false: pushes not recorded ({pushes})"
    checks.ok(f"{label} ({size / 1e6:.1f} MB; {pushes}; idle/unused times of {gpus} GPUs)")


def _utc(at: float) -> str:
    return dt.datetime.fromtimestamp(at, dt.timezone.utc).strftime("%Y-%m-%d %H:%M UTC")


def _check_alerts(config: Config, checks: Checklist) -> None:
    """Each alert channel: set up right (the webhook file, the SMTP server reachable, TLS and
    the login taken — nothing is sent), and whether its last delivery worked."""
    import time
    from urllib.parse import urlsplit

    from gpumon.alerts import channels as ch
    from gpumon.alerts.engine import read_state
    from gpumon.alerts.state import StateError
    from gpumon.alerts_command import channel_line
    from gpumon.sheet.plan import named_zone

    settings = config.alerts
    lab = ch.configured(settings)
    if not lab:
        checks.info(
            "alerts: no channel set up ([alerts] webhook or email_to): what goes down is only "
            "listed by `gpumon alerts`"
        )
    if ch.WEBHOOK in lab:
        try:
            url = ch.webhook_url(settings)
        except ch.ChannelError as e:
            checks.fail(f"alerts: webhook: {e}")
        else:
            label = ch.describe(ch.WEBHOOK, settings)
            host = urlsplit(url).hostname or ""
            if urlsplit(url).scheme == "http" and not names_loopback(host):
                checks.info(f"alerts: {label} is plain http: its secret URL crosses the network "
                            "unencrypted")  # fmt: skip
            else:
                checks.ok(f"alerts: {label} (not tried: `gpumon alerts test` sends a test)")
    if settings.email:
        try:
            done = ch.probe_smtp(settings, time.monotonic() + settings.timeout_s)
        except ch.ChannelError as e:
            checks.fail(f"alerts: e-mail: {e}")
        else:
            checks.ok(f"alerts: e-mail through {done} (nothing sent)")
    try:
        state = read_state(config)
    except StateError as e:
        checks.fail(f"alerts: {e}")
        return
    for warning in state.warnings:
        checks.fail(f"alerts: {warning}")
    tz = named_zone(config.sheet.time_zone)[0]
    for channel in state.channels:
        if channel.failing:
            checks.fail(f"alerts: {channel_line(channel, tz)[5:]} — `gpumon alerts test` tries "
                        "it now")  # fmt: skip


def names_loopback(host: str) -> bool:
    import ipaddress

    if host.casefold() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _check_sheet(config: Config, backend, checks: Checklist) -> tuple[Grid | None, Layout | None]:
    try:
        grid = backend.read()
    except (SheetError, ConfigError) as e:
        checks.fail(f"sheet: {e}")
        return None, None
    checks.ok(f"sheet: read worksheet '{grid.title}' ({len(grid.values)} rows, {_zone(grid)})")
    zone_warning = sheet_timezone(grid, config.sheet.time_zone)[1]
    if zone_warning:
        checks.fail(
            f"sheet: {zone_warning} — install the time zone database (apt install tzdata) "
            "or set [sheet] time_zone"
        )
    problem = getattr(backend, "writable_problem", lambda: None)()
    if problem:
        checks.fail(f"sheet: {problem}")
    try:
        layout = read_layout(grid, config.sheet.columns)
    except LayoutError as e:
        checks.fail(f"layout: {e}")
        return grid, None
    header = ", ".join(
        f"{grid.cell(layout.header_row, col)} ({column_letter(col)})"
        for _, col in sorted(layout.columns.items(), key=lambda kv: kv[1])
    )
    checks.ok(f"header: row {layout.header_row + 1}: {header}")
    missing = [config.sheet.columns[key][0] for key in OWNED_COLUMNS if key not in layout.columns]
    if missing:
        checks.info(f"the first push adds these columns right of the table: {', '.join(missing)}")
    managed = [b for b in layout.blocks if b.managed]
    checks.ok(f"blocks: {len(managed)} servers")
    for block in managed:
        checks.info(f"  {block.server}: {_rows(block)}")
    for warning in layout.warnings:
        checks.fail(f"layout: {warning}")
    return grid, layout


def _check_server(result: ServerResult, checks: Checklist) -> None:
    fix = FIXES.get(result.reason_code or "", "")
    dest = result.destination
    if result.on and result.reason_code is None:
        report = result.report
        gpus = len(report.gpus) if report else 0
        version = f"agent {report.agent_version}, " if report and report.agent_version else ""
        via = f"{result.via}, " if result.via else ""
        checks.ok(f"{result.name}: ON via {dest} ({version}{gpus} GPUs, {via}"
                  f"{result.elapsed_s * 1000:.0f} ms)")  # fmt: skip
        if result.oneshot_why:
            checks.info(f"{result.name}: one-shot: {result.oneshot_why}")
        return
    state = "ON but" if result.on else "OFF:"
    reason = result.reason or result.reason_code or "unknown"
    hint = " — " + fix.format(name=result.name, dest=dest) if fix else ""
    checks.fail(f"{result.name}: {state} {reason}{hint}")


def _check_streams(results: list[ServerResult], checks: Checklist) -> None:
    """One line naming the servers that still have the old forced command (they work, one
    process per poll; the shipped line keeps a stream open instead)."""
    old = [r.name for r in results if r.forced_command == "report"]
    if old:
        checks.info(
            f"{len(old)} server(s) still on the old forced command `gpumon-agent report --json`: "
            f'{", ".join(old)} — authorized_keys there should say command="gpumon-agent ssh" '
            "(deploy/ssh/README.md)"
        )


def _check_placement(
    config: Config, layout: Layout, results: list[ServerResult], checks: Checklist
) -> None:
    for result in results:
        block = layout.block(result.name)
        if block is None:
            if layout.listed(result.name):
                continue  # ambiguous: the layout line above says where
            if config.sheet.add_rows:
                checks.info(f"{result.name}: no rows yet; the next push adds them (add_rows)")
            else:
                checks.fail(
                    f"{result.name}: no rows in the sheet — add a row with its name in the "
                    "Server column (or push with --add-rows)"
                )
            continue
        if result.report is None or "gpu" not in layout.columns:
            continue
        no_row = sorted({g.index for g in result.report.gpus} - set(block.gpu_rows))
        if no_row and config.sheet.add_rows:
            checks.info(f"{result.name}: GPUs {_indices(no_row)} get rows on the next push")
        elif no_row:
            column = column_letter(layout.columns["gpu"])
            checks.fail(
                f"{result.name}: GPUs {_indices(no_row)} have no row (rows with a blank "
                f"Server cell and the index in column {column}, below {a1(block.name_row, 0)}; "
                "or push with --add-rows)"
            )


def _check_reservations(
    config: Config, grid: Grid, layout: Layout, results: list[ServerResult], checks: Checklist
) -> None:
    """The Usage column's names that match nobody: each once, with the cells that name it."""
    if "usage" not in layout.columns:
        checks.info(
            "reservations: no Usage column, so no GPU reads as reserved (name it in "
            '[sheet.columns] usage = ["..."] if yours is called otherwise)'
        )
        return
    reservations = read_reservations(grid, layout, config.people_users, known_users(results))
    cells: dict[str, list[str]] = {}
    spelled: dict[str, str] = {}
    reserved = 0
    for reservation in dict.fromkeys(reservations.values()):
        reserved += 1
        for name in reservation.unmatched:
            key = name.casefold()
            spelled.setdefault(key, name)
            if reservation.cell not in cells.setdefault(key, []):
                cells[key].append(reservation.cell)
    checks.ok(f"reservations: {reserved} Usage cell(s) name someone ({len(config.people)} in "
              "[people])")  # fmt: skip
    for key, where in cells.items():
        name = spelled[key]
        shown = ", ".join(where[:5]) + (f" and {len(where) - 5} more" if len(where) > 5 else "")
        checks.info(
            f"reservations: {name!r} ({shown}) is no [people] name and no Unix user seen on the "
            f"fleet — the State column cannot tell {name}'s own jobs from others'; add "
            f'[people] {_toml_key(name)} = ["unix-user"] to {config.origin}'
        )


def _toml_key(name: str) -> str:
    """``name`` as a TOML key: bare when it may be, else quoted."""
    return name if re.fullmatch(r"[A-Za-z0-9_-]+", name) else json.dumps(name, ensure_ascii=False)


def _indices(indices: list[int]) -> str:
    return ", ".join(str(i) for i in indices)


def _rows(block: Block) -> str:
    rows = f"row {block.name_row + 1}" if block.end - block.name_row == 1 else (
        f"rows {block.name_row + 1}-{block.end}"
    )  # fmt: skip
    if block.gpu_rows:
        return f"{rows}, GPUs {', '.join(str(i) for i in sorted(block.gpu_rows))}"
    return f"{rows}, no GPU index" + (" (GPU-less?)" if block.plain_row else "")


def _zone(grid: Grid) -> str:
    return f"time zone {grid.time_zone}" if grid.time_zone else "local time"
