"""gpumon.toml: load, validate, and the embedded default.

Every error names the file, the key (and its line when it can be found) and the fix. Unknown keys
are errors: a typo silently ignored is a monitor silently misconfigured.
"""

from __future__ import annotations

import difflib
import math
import os
import re
import socket
import sys
import types
import typing
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Optional

from gpumon.configpath import ConfigSource, default_state_dir, find_config, user_config_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on older central boxes only
    import tomli as tomllib

MAX_CONFIG_BYTES = 256 * 1024  # a config is a few KB; anything near this is not one

# Every number in the config: finite, and within these (inclusive) bounds.
NUMBER_BOUNDS: dict[str, tuple[float, float]] = {
    "poll.concurrency": (1, 1024),
    "poll.connect_timeout_s": (0.1, 300),
    "poll.handshake_timeout_s": (0.1, 300),
    "poll.auth_timeout_s": (0.1, 300),
    "poll.command_timeout_s": (0.1, 600),
    "poll.sweep_timeout_s": (0.5, 3600),
    "poll.stale_after_s": (1, 7 * 86400),
    "sheet.timeout_s": (1, 600),
    "sheet.retry_budget_s": (1, 3600),
    "serve.interval_s": (0.1, 86400),  # with the google backend at least GOOGLE_MIN_INTERVAL_S
    "source.timeout_s": (0.5, 300),
    "metrics.port": (1, 65535),
    "history.max_sample_s": (1, 86400),
    "history.raw_days": (1, 3660),
    "history.five_minute_days": (1, 3660),
    "history.sheet_every_s": (60, 7 * 86400),
    "alerts.down_after_s": (1, 86400),
    "alerts.repeat_s": (60, 30 * 86400),
    "alerts.reserved_unused_h": (0.1, 24 * 365),
    "alerts.claimed_idle_h": (0.1, 24 * 365),
    "alerts.timeout_s": (1, 120),
}
SOURCE_KINDS = ("ssh", "prometheus")
MAX_SELECTOR_CHARS = 1000
_LABEL_NAME = re.compile(r"[a-zA-Z_][a-zA-Z0-9_]*")
# A push costs Google one read and one write; its quota is 60 of each a minute per account, and
# set-ups, manual pushes and `gpumon check` share it.
GOOGLE_MIN_INTERVAL_S = 10.0

# Canonical column keys → header names recognised (case- and space-insensitive).
# The first name of each is the one gpumon writes when it adds the column.
DEFAULT_COLUMNS: dict[str, list[str]] = {
    "server": ["Server", "Host", "Hostname"],
    "gpu": ["GPU", "GPU #", "GPU index"],
    # People's: reservations are read from it (gpumon.sheet.reservations), never written.
    "usage": ["Usage", "Reserved by", "Reservation"],
    # Owned columns are overwritten, so their aliases must never match a column people keep.
    "ip": ["IP", "IP address"],
    "status": ["ON/OFF", "On-Off"],
    "time": ["Time", "Last seen"],
    "util": ["GPU util", "GPU utilization"],
    "memory": ["GPU memory", "GPU mem"],
    "running": ["Running"],
    "job": ["Job"],
    "health": ["Health"],
    "state": ["State", "GPU state"],
}
# Columns gpumon owns (writes). Every other column is people's. New ones are added in this
# order, right of the table (State last, so the columns of sheets set up before it keep their
# letters).
OWNED_COLUMNS = ("ip", "status", "time", "util", "memory", "running", "job", "health", "state")
# [people]: a person's name as the Usage column says it → their Unix user names.
MAX_PEOPLE = 1000
MAX_PERSON_CHARS = 64
# A Unix user name as useradd accepts it (a trailing "$" for Samba machine accounts).
UNIX_USER = re.compile(r"^[A-Za-z0-9_.][A-Za-z0-9_.-]{0,63}\$?$")


def server_key(name: str) -> str:
    """Host names are case-insensitive: "Sigbsp" and "sigbsp" are one server."""
    return name.strip().casefold()


class ConfigError(Exception):
    """A config problem, phrased for the admin: where it is and how to fix it."""


# The sections' fields are read with typing.get_type_hints, which evaluates these annotations:
# Optional[X] (not X | None) so that they evaluate on Python 3.9 too.


@dataclass
class ServerEntry:
    """How to reach one server. Unset fields fall back to ~/.ssh/config, then to the name."""

    name: str
    host: Optional[str] = None
    user: Optional[str] = None
    port: Optional[int] = None
    identity_file: Optional[str] = None
    proxy_jump: Optional[str] = None
    command: Optional[str] = None  # overrides [poll] command for this server
    local: bool = False  # this machine: read the agent in-process, no SSH


@dataclass
class PollConfig:
    command: str = "gpumon-agent report --json"
    user: Optional[str] = None  # login user when neither [servers.X] nor ~/.ssh/config says
    concurrency: int = 32
    connect_timeout_s: float = 3.0  # TCP connect
    handshake_timeout_s: float = 5.0  # banner + key exchange
    auth_timeout_s: float = 5.0
    command_timeout_s: float = 5.0  # exec + reading the output
    sweep_timeout_s: float = 15.0  # the whole fleet
    stale_after_s: float = 30.0  # a Report older than this is "agent stale"
    # An extra known_hosts file (the system and user ones are read too).
    known_hosts: Optional[str] = None
    ssh_config: str = "~/.ssh/config"
    identity_files: list[str] = field(default_factory=list)
    agentless: bool = True  # read nvidia-smi + ps when the agent is not installed
    # Keep a `gpumon-agent stream` channel per server open between sweeps (a steady poll: one
    # round trip, no process on the server); false: one exec of `command` per poll.
    stream: bool = True
    servers_from_sheet: bool = True  # poll every name in the sheet's Server column
    # Sheet editors choose what the central box dials: restrict the sheet's names to these glob
    # patterns (e.g. ["*bsp"]; empty: any host name), and refuse IP addresses and "localhost"
    # from the sheet unless sheet_ips is true. Names in [servers] are always polled.
    sheet_names: list[str] = field(default_factory=list)
    sheet_ips: bool = False


@dataclass
class SheetConfig:
    backend: str = "xlsx"  # "google" | "xlsx"
    url: Optional[str] = None  # google: spreadsheet URL or key
    worksheet: Optional[str] = None  # default: the gid in the URL, else the first sheet
    # default: beside the user's config ($XDG_CONFIG_HOME/gpumon, else ~/.config/gpumon)
    credentials: str = field(
        default_factory=lambda: os.path.join(user_config_dir(), "service-account.json")
    )
    path: str = "gpumon-sheet.xlsx"  # xlsx backend
    timeout_s: float = 20.0  # each HTTP request
    retry_budget_s: float = 30.0  # all retries of one push together
    add_rows: bool = False  # insert rows for GPUs the sheet lacks
    time_zone: Optional[str] = None  # default: the spreadsheet's own
    columns: dict[str, list[str]] = field(default_factory=lambda: dict(DEFAULT_COLUMNS))


@dataclass
class ServeConfig:
    interval_s: float = 60.0


@dataclass
class SourceConfig:
    """Where each server's state comes from: over SSH (the default), or from Prometheus."""

    kind: str = "ssh"  # "ssh" | "prometheus"
    url: Optional[str] = None  # prometheus: "http://prometheus.lab:9090" (a path prefix is kept)
    timeout_s: float = 10.0  # each query
    server_label: str = "server"  # the label naming the server, as the sheet does
    selector: str = ""  # label matchers added to every query, e.g. 'job=~"gpumon|dcgm"'


@dataclass
class MetricsConfig:
    """The agents' /metrics, as `gpumon prometheus-targets` hands them to Prometheus."""

    port: int = 9835  # gpumon-agent run --metrics ADDR:PORT on every server


SMTP_TLS_MODES = ("auto", "starttls", "ssl", "none")
# An address as gpumon puts it in a To: or From: header: no display name, no spaces, no
# newline (a header injection), one "@" with something on each side.
_EMAIL = re.compile(r"[^@\s<>,;\"'()\[\]\\]{1,64}@[A-Za-z0-9.-]{1,253}")


@dataclass
class AlertsConfig:
    """When gpumon tells the lab (gpumon.alerts) and through what: a webhook, e-mail."""

    down_after_s: float = 120.0  # failed polls for this long before "down" (one lost poll is not)
    repeat_s: float = 6 * 3600.0  # a condition that lasts is told again after this long
    reserved_unused_h: float = 24.0  # a reservation with no use this long
    claimed_idle_h: float = 2.0  # a claimed GPU with no process this long
    timeout_s: float = 10.0  # each channel's delivery at one push, all of it
    # A Slack/Mattermost incoming webhook (its URL is a secret: webhook_file keeps it out of
    # the config); POSTs {"text": ...}.
    webhook: Optional[str] = None
    webhook_file: Optional[str] = None
    email_to: list[str] = field(default_factory=list)  # the lab's list: every event
    email_from: Optional[str] = None
    smtp: Optional[str] = None  # "host:587" (STARTTLS) or "host:465" (SMTPS)
    smtp_tls: str = "auto"  # auto (465: ssl, else starttls) | starttls | ssl | none
    smtp_user: Optional[str] = None
    smtp_password_file: Optional[str] = None
    ca_file: Optional[str] = None  # a private CA for the SMTP server's or webhook's TLS

    @property
    def smtp_host_port(self) -> tuple[str, int] | None:
        """(host, port) of ``smtp``; the port defaults to 465 with smtp_tls = "ssl", else 587."""
        if not self.smtp:
            return None
        host, port = split_host_port(self.smtp)
        if port is None:
            port = 465 if self.smtp_tls == "ssl" else 587
        return host, port

    @property
    def smtp_mode(self) -> str:
        """starttls, ssl or none: what "auto" means for the port."""
        if self.smtp_tls != "auto":
            return self.smtp_tls
        where = self.smtp_host_port
        return "ssl" if where is not None and where[1] == 465 else "starttls"

    @property
    def email(self) -> bool:
        """Whether e-mail can be sent at all (a server and a sender)."""
        return bool(self.smtp and self.email_from)


@dataclass
class Person:
    """One person of [people]: the Unix users they run as, and where to tell them things."""

    name: str
    users: list[str] = field(default_factory=list)
    email: Optional[str] = None


def split_host_port(text: str) -> tuple[str, int | None]:
    """ "host:587" → ("host", 587); "host" → ("host", None); "[::1]:25" → ("::1", 25).
    Raises ValueError for a port that is not a number in 1-65535."""
    text = text.strip()
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port_text = rest[1:] if rest.startswith(":") else ""
        if rest and not rest.startswith(":"):
            raise ValueError("expected [ADDRESS]:PORT")
    elif text.count(":") == 1:
        host, _, port_text = text.partition(":")
    else:
        host, port_text = text, ""
    if not port_text:
        return host, None
    if not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise ValueError(f"port {port_text[:8]!r} is not a TCP port")
    return host, int(port_text)


def valid_email(address: str) -> bool:
    return bool(_EMAIL.fullmatch(address)) and ".." not in address.split("@")[1]


@dataclass
class HistoryConfig:
    """The history store (gpumon.history): every push's GPU-hours, in state_dir/history.sqlite3."""

    enabled: bool = True
    # The longest interval one push stands for: a push after a longer pause covers only this
    # much, so a gap in pushes (the box down, cron stopped) is a gap, not a long sample.
    max_sample_s: float = 300.0
    raw_days: int = 14  # every push kept this long, then 5-minute sums
    five_minute_days: int = 30  # 5-minute sums kept this long; hourly sums for ever
    sheet: bool = True  # keep a "GPU hours" worksheet in the spreadsheet / workbook
    sheet_title: str = "GPU hours"
    sheet_every_s: float = 3600.0  # that worksheet rewritten at most this often


@dataclass
class Config:
    path: str | None = None  # None: the embedded default
    # push lock, last-seen times, alert state; default: $STATE_DIRECTORY (systemd), else
    # $XDG_STATE_HOME/gpumon
    state_dir: str = field(default_factory=default_state_dir)
    state_dir_set: bool = False  # the config file names state_dir
    found_by: str = ""  # how the config file was chosen (configpath.ConfigSource.how)
    poll: PollConfig = field(default_factory=PollConfig)
    sheet: SheetConfig = field(default_factory=SheetConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    source: SourceConfig = field(default_factory=SourceConfig)
    metrics: MetricsConfig = field(default_factory=MetricsConfig)
    history: HistoryConfig = field(default_factory=HistoryConfig)
    alerts: AlertsConfig = field(default_factory=AlertsConfig)
    servers: dict[str, ServerEntry] = field(default_factory=dict)
    # [people]: "Niv" → their Unix users (gpumon.sheet.reservations matches Usage names by
    # them) and where alerts reach them
    people: dict[str, Person] = field(default_factory=dict)

    @property
    def people_users(self) -> dict[str, list[str]]:
        """[people] as the Usage column's reader takes it: a person's name → their Unix users."""
        return {name: person.users for name, person in self.people.items()}

    @property
    def origin(self) -> str:
        return self.path or "the embedded default config"

    def state_path(self, name: str) -> Path:
        return Path(os.path.expanduser(self.state_dir)) / name


def embedded_default() -> Config:
    """No config at all: this machine, read locally, into ./gpumon-sheet.xlsx."""
    name = socket.gethostname()
    return Config(
        path=None,
        poll=PollConfig(servers_from_sheet=False),
        # The workbook starts without server rows: this machine's rows are added on the first
        # push (and again if it gains a GPU).
        sheet=SheetConfig(add_rows=True),
        servers={name: ServerEntry(name=name, local=True)},
    )


def load(path: str | None = None) -> Config:
    """``--config PATH`` (``path``), else the first config found (gpumon.configpath), else the
    embedded default."""
    source = find_config(path)
    if source.path is None:
        config = embedded_default()
        config.found_by = source.how
        return config
    config = load_file(source)
    config.found_by = source.how
    return config


def load_file(source: ConfigSource) -> Config:
    assert source.path is not None
    file = Path(os.path.expanduser(source.path))
    try:
        with open(file, "rb") as f:
            raw = f.read(MAX_CONFIG_BYTES + 1)
        if len(raw) > MAX_CONFIG_BYTES:
            raise ConfigError(
                f"{file}: larger than {MAX_CONFIG_BYTES // 1024} KiB — not a gpumon config "
                "(is --config pointing at the right file?)"
            )
        text = raw.decode("utf-8")
    except FileNotFoundError:
        drop = {"--config": "drop --config", "$GPUMON_CONFIG": "unset GPUMON_CONFIG"}.get(
            source.how, "give another with --config"
        )
        raise ConfigError(
            f"{file} (named by {source.how}): no such config file — create it (see README, "
            f"'Set-up') or {drop}"
        ) from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file}: cannot read it ({e})") from None
    return parse(text, str(file))


def parse(text: str, origin: str) -> Config:
    if len(text) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{origin}: larger than {MAX_CONFIG_BYTES // 1024} KiB — not a config")
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{origin}: not valid TOML: {e}") from None
    except RecursionError:  # tomllib recurses per level of nested arrays and inline tables
        raise ConfigError(f"{origin}: nested too deeply to be a gpumon config") from None
    where = _Where(origin, text)
    top = _Section(where, "", data)
    config = Config(path=origin)
    if "state_dir" in top.data:
        config.state_dir = top.get("state_dir", str, config.state_dir)
        config.state_dir_set = True
    config.poll = _dataclass_section(where, "poll", top.table("poll"), PollConfig)
    sheet_data = top.table("sheet")
    columns = sheet_data.pop("columns", None)
    config.sheet = _dataclass_section(where, "sheet", sheet_data, SheetConfig)
    config.sheet.columns = _columns(where, columns)
    config.serve = _dataclass_section(where, "serve", top.table("serve"), ServeConfig)
    config.source = _dataclass_section(where, "source", top.table("source"), SourceConfig)
    metrics = top.table("metrics")
    if "dcgm_names" in metrics:  # the name for it; it lives on each server
        raise ConfigError(
            f"{where.at('metrics.dcgm_names')}: an agent setting — set "
            "GPUMON_METRICS_DCGM_NAMES=1 in each server's gpumon-agent unit (or run it with "
            "--metrics-dcgm-names); docs/metrics.md"
        )
    config.metrics = _dataclass_section(where, "metrics", metrics, MetricsConfig)
    config.history = _dataclass_section(where, "history", top.table("history"), HistoryConfig)
    config.alerts = _dataclass_section(where, "alerts", top.table("alerts"), AlertsConfig)
    servers = top.table("servers")
    for name, entry in servers.items():
        if not isinstance(entry, dict):
            raise ConfigError(
                f"{where.at('servers.' + name)}: [servers.{name}] must be a table, "
                f'e.g.\n[servers.{name}]\nhost = "192.0.2.10"'
            )
        server = _dataclass_section(where, f"servers.{name}", dict(entry), ServerEntry, name=name)
        config.servers[name] = server
    config.people = _people(where, top.table("people"))
    top.finish(
        (
            "state_dir",
            "poll",
            "sheet",
            "serve",
            "source",
            "metrics",
            "history",
            "alerts",
            "servers",
            "people",
        )
    )
    _check_values(where, config)
    return config


# --- validation helpers ----------------------------------------------------------------------


class _Where:
    """Turns a dotted key into 'file, line N, [section] key' for error messages."""

    def __init__(self, origin: str, text: str) -> None:
        self.origin = origin
        self.lines = text.splitlines()

    def at(self, dotted: str) -> str:
        section, _, key = dotted.rpartition(".")
        line = self._find(section, key)
        label = f"[{section}] {key}" if section else key
        return f"{self.origin}, line {line}, {label}" if line else f"{self.origin}, {label}"

    def _find(self, section: str, key: str) -> int | None:
        current = ""
        for number, raw in enumerate(self.lines, 1):
            stripped = raw.strip()
            header = re.match(r"^\[\s*([^\]]+?)\s*\]", stripped)
            if header:
                current = header.group(1).replace('"', "")
                if not key and current == section:
                    return number
                continue
            if current == section and re.match(rf'^"?{re.escape(key)}"?\s*=', stripped):
                return number
        return None


class _Section:
    def __init__(self, where: _Where, name: str, data: dict[str, Any]) -> None:
        self.where, self.name, self.data = where, name, data

    def key(self, key: str) -> str:
        return f"{self.name}.{key}" if self.name else key

    def get(self, key: str, tp: type, default: Any) -> Any:
        if key not in self.data:
            return default
        return _typed(self.where, self.key(key), self.data[key], tp)

    def table(self, key: str) -> dict[str, Any]:
        value = self.data.get(key, {})
        if not isinstance(value, dict):
            raise ConfigError(f"{self.where.at(self.key(key))}: must be a table [{key}]")
        return dict(value)

    def finish(self, known: tuple[str, ...] | list[str]) -> None:
        for key in self.data:
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f" — did you mean '{close[0]}'?" if close else ""
                section = f"[{self.name}]" if self.name else "the top level"
                raise ConfigError(
                    f"{self.where.at(self.key(key))}: unknown key in {section}{hint} "
                    f"(known: {', '.join(known)})"
                )


_TYPE_WORDS = {bool: "true or false", int: "a whole number", float: "a number", str: "a string"}


def _typed(where: _Where, dotted: str, value: Any, tp: Any) -> Any:
    """``value`` checked against the type ``tp`` (a class, or a resolved annotation such as
    ``Optional[str]`` or ``list[str]``)."""
    optional = type(None) in typing.get_args(tp)
    base = _base_type(tp)
    if value is None and optional:
        return None
    if base is list:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f'{where.at(dotted)}: expected a list of strings, e.g. ["a", "b"]')
        return list(value)
    if base is float and isinstance(value, int) and not isinstance(value, bool):
        try:
            return float(value)
        except OverflowError:  # an integer of hundreds of digits
            raise ConfigError(
                f"{where.at(dotted)}: a {len(str(value))}-digit number is out of range"
            ) from None
    if base is int and isinstance(value, bool):
        raise ConfigError(f"{where.at(dotted)}: expected {_TYPE_WORDS[int]}, got {value!r}")
    if not isinstance(value, base):
        raise ConfigError(
            f"{where.at(dotted)}: expected {_TYPE_WORDS.get(base, base)}, got {value!r}"
        )
    return value


def _base_type(tp: Any) -> type:
    """The class a value of type ``tp`` must be: ``Optional[X]`` → X, ``list[str]`` → list."""
    args = [a for a in typing.get_args(tp) if a is not type(None)]
    unions = (typing.Union, getattr(types, "UnionType", typing.Union))  # Optional[X], X | None
    if typing.get_origin(tp) in unions and len(args) == 1:
        tp = args[0]
    origin = typing.get_origin(tp)
    return origin if isinstance(origin, type) else tp


def _dataclass_section(
    where: _Where, section_name: str, data: dict[str, Any], cls: type, **fixed: Any
):
    section = _Section(where, section_name, data)
    kwargs = dict(fixed)
    known = []
    hints = typing.get_type_hints(cls)  # the annotations as types, not as their text
    for f in fields(cls):
        if f.name in fixed or f.name == "columns":
            continue
        known.append(f.name)
        if f.name in data:
            kwargs[f.name] = _typed(where, section.key(f.name), data[f.name], hints[f.name])
    section.finish(known)
    return cls(**kwargs)


def _columns(where: _Where, data: Any) -> dict[str, list[str]]:
    columns = {key: list(names) for key, names in DEFAULT_COLUMNS.items()}
    if data is None:
        return columns
    if not isinstance(data, dict):
        raise ConfigError(f"{where.at('sheet.columns')}: must be a table [sheet.columns]")
    section = _Section(where, "sheet.columns", data)
    for key, value in data.items():
        if key in columns:
            names = [value] if isinstance(value, str) else value
            names = _typed(where, f"sheet.columns.{key}", names, list)
            if not names:
                raise ConfigError(f"{where.at('sheet.columns.' + key)}: give at least one name")
            columns[key] = names
    section.finish(list(DEFAULT_COLUMNS))
    return columns


def _check_values(where: _Where, config: Config) -> None:
    sheet, poll = config.sheet, config.poll
    if sheet.backend not in ("google", "xlsx"):
        raise ConfigError(f'{where.at("sheet.backend")}: must be "google" or "xlsx"')
    if sheet.backend == "google" and not sheet.url:
        raise ConfigError(
            f"{where.at('sheet.url')}: the google backend needs the sheet, e.g. "
            'url = "https://docs.google.com/spreadsheets/d/KEY/edit#gid=0"'
        )
    sections = {
        "poll": poll,
        "sheet": sheet,
        "serve": config.serve,
        "source": config.source,
        "metrics": config.metrics,
        "history": config.history,
        "alerts": config.alerts,
    }
    for dotted, (lo, hi) in NUMBER_BOUNDS.items():
        section, _, key = dotted.partition(".")
        value = getattr(sections[section], key)
        # NaN compares false with everything, so the range test alone would not catch it.
        if (isinstance(value, float) and not math.isfinite(value)) or not lo <= value <= hi:
            shown = repr(value) if len(repr(value)) <= 24 else f"a {len(repr(value))}-digit number"
            raise ConfigError(
                f"{where.at(dotted)}: {shown} is not allowed — give a number from {lo:g} to {hi:g}"
            )
    if sheet.backend == "google" and config.serve.interval_s < GOOGLE_MIN_INTERVAL_S:
        raise ConfigError(
            f"{where.at('serve.interval_s')}: {config.serve.interval_s:g} s is too often for "
            f"Google (60 writes a minute per account, shared with set-ups and manual pushes) — "
            f"give at least {GOOGLE_MIN_INTERVAL_S:g}"
        )
    if sheet.time_zone is not None:
        _check_time_zone(where, sheet.time_zone)
    history = config.history
    if history.five_minute_days < history.raw_days:
        raise ConfigError(
            f"{where.at('history.five_minute_days')}: {history.five_minute_days} is less than "
            f"[history] raw_days ({history.raw_days}) — 5-minute sums are kept at least as long "
            "as the pushes they sum"
        )
    title = history.sheet_title
    if not title.strip() or len(title) > 100 or any(c in title for c in "[]*?/\\:'"):
        raise ConfigError(
            f"{where.at('history.sheet_title')}: {title[:40]!r} cannot name a worksheet "
            "(1-100 characters, none of [ ] * ? / \\ : ')"
        )
    for name, server in config.servers.items():
        if server.port is not None and not 0 < server.port < 65536:
            raise ConfigError(f"{where.at(f'servers.{name}.port')}: a TCP port, 1-65535")
    for pattern in poll.sheet_names:
        if not pattern.strip():
            raise ConfigError(
                f'{where.at("poll.sheet_names")}: an empty pattern; write e.g. ["*bsp", "gpu-*"]'
            )
    _check_source(where, config.source)
    _check_alerts(where, config.alerts)
    if not config.servers and not poll.servers_from_sheet:
        raise ConfigError(
            f"{config.origin}: no servers to poll — add [servers.NAME] tables or set "
            "[poll] servers_from_sheet = true"
        )


def _check_source(where: _Where, source: SourceConfig) -> None:
    if source.kind not in SOURCE_KINDS:
        raise ConfigError(
            f'{where.at("source.kind")}: must be "ssh" (poll each server) or "prometheus" '
            "(read them from a Prometheus that scrapes the agents)"
        )
    if source.kind == "ssh":
        if source.url is not None:
            raise ConfigError(
                f'{where.at("source.url")}: only used with kind = "prometheus"; remove it or '
                'set [source] kind = "prometheus"'
            )
        return
    example = 'e.g. url = "http://prometheus.lab:9090"'
    if not source.url:
        at = where.at("source.url" if source.url is not None else "source.kind")
        raise ConfigError(f'{at}: kind = "prometheus" needs the URL of Prometheus, {example}')
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(source.url)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError as e:
        raise ConfigError(f"{where.at('source.url')}: not a URL ({e}); {example}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ConfigError(
            f"{where.at('source.url')}: {source.url[:80]!r} is not an http(s) URL with a host; "
            f"{example}"
        )
    if parts.username is not None or parts.password is not None:
        raise ConfigError(
            f"{where.at('source.url')}: a user name or password in the URL would show in every "
            "error message; put a reverse proxy or network rule in front of Prometheus instead"
        )
    if (
        parts.query
        or parts.fragment
        or len(source.url) > 2048
        or any(ord(c) < 33 or c == "\x7f" for c in source.url)
    ):
        raise ConfigError(
            f"{where.at('source.url')}: give the server's base URL only (scheme, host, port and "
            f"an optional path prefix), {example}"
        )
    label = source.server_label
    if not _LABEL_NAME.fullmatch(label) or label.startswith("__"):
        raise ConfigError(
            f"{where.at('source.server_label')}: {label[:80]!r} is not a Prometheus label name "
            '(letters, digits, _; not starting with a digit or "__"), e.g. "server" or "Hostname"'
        )
    selector = source.selector.strip()
    if len(selector) > MAX_SELECTOR_CHARS or any(c in selector for c in "{}\n\r\0"):
        raise ConfigError(
            f"{where.at('source.selector')}: label matchers only, without braces, at most "
            f"{MAX_SELECTOR_CHARS} characters, e.g. selector = 'job=~\"gpumon|dcgm\"'"
        )


def _people(where: _Where, data: dict[str, Any]) -> dict[str, Person]:
    """[people]: ``Niv = ["niv", "nkim"]`` (or ``Niv = "niv"``: the Unix users a person runs
    as), or a table ``Niv = { users = ["niv"], email = "niv@lab.example" }``. Names unique
    without case, each Unix user listed for one person only."""
    if len(data) > MAX_PEOPLE:
        raise ConfigError(f"{where.at('people')}: more than {MAX_PEOPLE} people")
    people: dict[str, Person] = {}
    folded: dict[str, str] = {}
    owner: dict[str, str] = {}
    example = '[people]\nNiv = ["niv", "nkim"]'
    table_example = '[people.Niv]\nusers = ["niv"]\nemail = "niv@lab.example"'
    for name, value in data.items():
        dotted = f"people.{name}"
        shown = name if len(name) <= MAX_PERSON_CHARS else name[:MAX_PERSON_CHARS] + "…"
        if not name.strip() or len(name) > MAX_PERSON_CHARS or not name.isprintable():
            raise ConfigError(
                f"{where.at(dotted)}: {shown!r} — a person's name as the Usage column says it "
                f"(1-{MAX_PERSON_CHARS} printable characters), e.g.\n{example}"
            )
        if isinstance(value, dict):
            person = _dataclass_section(where, dotted, dict(value), Person, name=name)
            if person.email is not None and not valid_email(person.email):
                raise ConfigError(
                    f"{where.at(dotted + '.email')}: {person.email[:80]!r} is not an e-mail "
                    'address (write it bare, e.g. "niv@lab.example")'
                )
        elif isinstance(value, (str, list)):
            users = [value] if isinstance(value, str) else value
            person = Person(name=name, users=_typed(where, dotted, users, list))
        else:
            raise ConfigError(
                f"{where.at(dotted)}: give the person's Unix users as a list, e.g.\n{example}\n"
                f"or a table:\n{table_example}"
            )
        if not person.users:
            raise ConfigError(f"{where.at(dotted)}: give at least one Unix user, e.g.\n{example}")
        for user in person.users:
            if not UNIX_USER.match(user):
                raise ConfigError(
                    f"{where.at(dotted)}: {user[:40]!r} is not a Unix user name (letters, digits, "
                    "'.', '_', '-'; at most 64 characters)"
                )
            earlier = owner.get(user)
            if earlier is not None and earlier != name:
                raise ConfigError(
                    f"{where.at(dotted)}: user {user!r} is listed for {earlier!r} too; a Unix "
                    "user belongs to one person"
                )
            owner[user] = name
        key = " ".join(name.split()).casefold()
        if key in folded:
            raise ConfigError(
                f"{where.at(dotted)}: {name!r} and {folded[key]!r} are one name to gpumon "
                "(case and spaces do not count); keep one"
            )
        folded[key] = name
        person.users = list(dict.fromkeys(person.users))
        people[name] = person
    return people


def _check_alerts(where: _Where, alerts: AlertsConfig) -> None:
    # The webhook URL is a secret: no message here quotes it.
    if alerts.webhook is not None and alerts.webhook_file is not None:
        raise ConfigError(
            f"{where.at('alerts.webhook_file')}: give webhook or webhook_file, not both "
            "(webhook_file keeps the secret URL out of the config)"
        )
    if alerts.webhook is not None:
        problem = webhook_url_problem(alerts.webhook)
        if problem:
            raise ConfigError(f"{where.at('alerts.webhook')}: {problem}")
    for key in ("webhook_file", "smtp_password_file", "ca_file"):
        value = getattr(alerts, key)
        if value is not None and not value.strip():
            raise ConfigError(f"{where.at('alerts.' + key)}: empty — give a file, or remove it")
    if alerts.smtp_tls not in SMTP_TLS_MODES:
        raise ConfigError(
            f"{where.at('alerts.smtp_tls')}: must be one of {', '.join(SMTP_TLS_MODES)} "
            '("auto": SMTPS on port 465, STARTTLS on any other)'
        )
    for address in alerts.email_to:
        if not valid_email(address):
            raise ConfigError(
                f"{where.at('alerts.email_to')}: {address[:80]!r} is not an e-mail address "
                '(write each bare, e.g. email_to = ["gpu-admins@lab.example"])'
            )
    if alerts.email_from is not None and not valid_email(alerts.email_from):
        raise ConfigError(
            f"{where.at('alerts.email_from')}: {alerts.email_from[:80]!r} is not an e-mail "
            'address, e.g. email_from = "gpumon@lab.example"'
        )
    if alerts.smtp is not None:
        try:
            host, _ = split_host_port(alerts.smtp)
        except ValueError as e:
            raise ConfigError(
                f'{where.at("alerts.smtp")}: {e}; e.g. smtp = "mail.lab:587"'
            ) from None
        if not host or any(c.isspace() or c in "/@" for c in host):
            raise ConfigError(
                f"{where.at('alerts.smtp')}: {alerts.smtp[:80]!r} is not HOST:PORT, "
                'e.g. smtp = "mail.lab:587"'
            )
    if (alerts.email_to or alerts.smtp) and not (alerts.smtp and alerts.email_from):
        missing = "smtp" if not alerts.smtp else "email_from"
        raise ConfigError(
            f"{where.at('alerts.' + ('email_to' if alerts.email_to else 'smtp'))}: e-mail needs "
            f'[alerts] {missing} too (smtp = "mail.lab:587", email_from = "gpumon@lab.example")'
        )
    if alerts.smtp_password_file is not None and not alerts.smtp_user:
        raise ConfigError(
            f"{where.at('alerts.smtp_password_file')}: a password needs its user: "
            'smtp_user = "gpumon"'
        )
    if alerts.smtp_user is not None and not alerts.smtp_password_file:
        raise ConfigError(
            f"{where.at('alerts.smtp_user')}: the login needs smtp_password_file (a file "
            "holding the password, mode 0640 root:gpumon; never the password in the config)"
        )
    if alerts.smtp_user is not None and alerts.smtp_mode == "none":
        raise ConfigError(
            f'{where.at("alerts.smtp_tls")}: "none" would send the SMTP password in clear; '
            'use "starttls" or "ssl", or drop the login for a relay that needs none'
        )


def webhook_url_problem(url: str) -> str | None:
    """What is wrong with a webhook URL, in words that never quote it (it is a secret)."""
    from urllib.parse import urlsplit

    text = url.strip()
    try:
        parts = urlsplit(text)
        parts.port  # noqa: B018 -- raises ValueError for a port that is not a number
    except ValueError:
        return "not a URL (the value is not shown: it is a secret)"
    if parts.scheme not in ("http", "https") or not parts.hostname:
        return (
            "not an http(s) URL with a host, as the chat's incoming-webhook settings give it "
            "(the value is not shown: it is a secret)"
        )
    if len(text) > 2048 or any(ord(c) < 33 or c == "\x7f" for c in text):
        return "holds spaces or control characters, or is over 2048 characters"
    return None


def _check_time_zone(where: _Where, name: str) -> None:
    """An IANA zone this machine knows; else the error names the key and the closest zones."""
    from zoneinfo import ZoneInfo, available_timezones

    key = where.at("sheet.time_zone")
    if not name.strip():
        raise ConfigError(f'{key}: empty — give a zone such as "Asia/Seoul", or remove the key')
    try:
        ZoneInfo(name)
        return
    except (ValueError, KeyError, OSError):  # ZoneInfoNotFoundError is a KeyError
        pass
    known = available_timezones()
    if not known:
        raise ConfigError(
            f"{key}: {name!r}: this machine has no time zone database — install it "
            "(apt install tzdata, or pip install tzdata into gpumon's environment)"
        )
    shown = name if len(name) <= 64 else name[:63] + "…"
    by_fold = {zone.casefold(): zone for zone in known}
    folded = name.strip().casefold()
    close = [by_fold[folded]] if folded in by_fold else []
    close += [
        by_fold[m] for m in difflib.get_close_matches(folded, list(by_fold), n=3, cutoff=0.75)
    ]
    close = list(dict.fromkeys(close))[:3]
    hint = f" — did you mean {' or '.join(repr(z) for z in close)}?" if close else ""
    raise ConfigError(
        f'{key}: {shown!r} is not a time zone{hint} (IANA names such as "Asia/Seoul"; '
        "remove the key to use the spreadsheet's own)"
    )
