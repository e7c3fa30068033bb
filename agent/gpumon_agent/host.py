"""Facts about this host (the Report's ``Host``) and its time zone, via psutil and the stdlib.

Every value is ``None`` when it cannot be read — never a default that looks like a reading (no
``[]`` for users who could not be listed) — and ``HostReader.problems`` says what failed;
reading never raises. Nothing here sends a packet or looks up a name: the primary IP comes from
the routing table.

Meanings: ``memory_used_bytes`` is total minus available (what ``memory_percent`` measures);
``cpu_percent`` is the busy share of all CPUs since the previous read (``None`` on a first read
less than ``MIN_CPU_INTERVAL_S`` after the reader was made); ``addresses`` leaves out loopback
and IPv6 link-local addresses; ``disk_root_*`` is the file system holding ``/``.
"""

from __future__ import annotations

import os
import socket
import time
from typing import Any, Callable, List, Mapping, Optional, Sequence, Tuple, TypeVar

import psutil

from gpumon_agent.report import Address, Host, LoggedInUser, utc_iso

ROUTE_TABLE = "/proc/net/route"
ZONEINFO = "/usr/share/zoneinfo"
MIN_CPU_INTERVAL_S = 0.1
_RTF_UP = 0x1

T = TypeVar("T")


def _safe(read: Callable[[], T]) -> Optional[T]:
    try:
        return read()
    except Exception:  # unreadable: None, as the Report promises
        return None


class HostReader:
    """Reads Host records; remembers CPU times so each read gives the CPU use since the last."""

    def __init__(self) -> None:
        self._cpu_times: Optional[Tuple[float, float]] = _safe(_cpu_busy_total)
        self._cpu_at = time.monotonic()
        self.problems: List[str] = []  # what the last read could not read, and why

    def read(self) -> Host:
        problems: List[str] = []

        def get(what: str, read: Callable[[], T]) -> Optional[T]:
            try:
                return read()
            except Exception as e:  # unreadable: None, as the Report promises, and why
                problems.append(f"{what}: {e!r}"[:200])
                return None

        host = Host(hostname=get("host name", socket.gethostname) or "?")
        addrs = get("network addresses", psutil.net_if_addrs)
        route = get("routing table", lambda: _read_text(ROUTE_TABLE))
        host.primary_ip = get("primary IP", lambda: primary_ipv4(route, addrs or {}))
        if addrs is not None:
            host.addresses = get("network addresses", lambda: addresses(addrs))
        host.boot_time = get("boot time", lambda: utc_iso(psutil.boot_time()))
        host.load_avg = get("load average", lambda: [round(x, 2) for x in os.getloadavg()])
        host.cpu_count = get("CPU count", lambda: psutil.cpu_count(logical=True))
        host.cpu_percent = get("CPU use", self._cpu_percent)
        memory = get("memory", psutil.virtual_memory)
        if memory is not None:
            host.memory_total_bytes = int(memory.total)
            host.memory_used_bytes = int(memory.total - memory.available)
            host.memory_percent = float(memory.percent)
        swap = get("swap", psutil.swap_memory)
        if swap is not None:
            host.swap_total_bytes = int(swap.total)
            host.swap_used_bytes = int(swap.used)
            host.swap_percent = float(swap.percent)
        disk = get("disk /", lambda: psutil.disk_usage("/"))
        if disk is not None:
            host.disk_root_total_bytes = int(disk.total)
            host.disk_root_used_bytes = int(disk.used)
            host.disk_root_percent = float(disk.percent)
        host.users = get("logged-in users", logged_in_users)
        self.problems = problems
        return host

    def _cpu_percent(self) -> Optional[float]:
        now = time.monotonic()
        current = _cpu_busy_total()
        previous, elapsed = self._cpu_times, now - self._cpu_at
        if previous is None or elapsed < MIN_CPU_INTERVAL_S:
            if previous is None:
                self._cpu_times, self._cpu_at = current, now
            return None
        self._cpu_times, self._cpu_at = current, now
        busy = current[0] - previous[0]
        total = current[1] - previous[1]
        if total <= 0:
            return None
        return round(min(100.0, max(0.0, 100.0 * busy / total)), 1)


def _cpu_busy_total() -> Tuple[float, float]:
    """(busy, total) CPU seconds since boot, summed over CPUs, as psutil.cpu_percent counts them."""
    times = psutil.cpu_times()
    total = sum(times)
    # Linux counts guest time inside user time already.
    total -= getattr(times, "guest", 0.0) + getattr(times, "guest_nice", 0.0)
    idle = times.idle + getattr(times, "iowait", 0.0)
    return total - idle, total


def _read_text(path: str) -> str:
    with open(path) as f:
        return f.read()


def default_route_interface(route_table: Optional[str]) -> Optional[str]:
    """The interface of the default IPv4 route with the lowest metric, from /proc/net/route."""
    best: Optional[Tuple[int, str]] = None
    for line in (route_table or "").splitlines()[1:]:
        cols = line.split()
        if len(cols) < 8:
            continue
        try:
            destination, flags, metric, mask = (
                int(cols[1], 16),
                int(cols[3], 16),
                int(cols[6]),
                int(cols[7], 16),
            )
        except ValueError:
            continue
        is_default = destination == 0 and mask == 0 and flags & _RTF_UP
        if is_default and (best is None or metric < best[0]):
            best = (metric, cols[0])
    return best[1] if best else None


def primary_ipv4(
    route_table: Optional[str], if_addrs: Mapping[str, Sequence[Any]]
) -> Optional[str]:
    """The IPv4 address others reach this host by: the default route's interface's address.

    Without a default route (an isolated lab network), the first non-loopback IPv4 address by
    interface name.
    """
    interface = default_route_interface(route_table)
    if interface is not None:
        for addr in if_addrs.get(interface, ()):
            if addr.family == socket.AF_INET:
                return str(addr.address)
    for name in sorted(if_addrs):
        for addr in if_addrs[name]:
            if addr.family == socket.AF_INET and not str(addr.address).startswith("127."):
                return str(addr.address)
    return None


def addresses(if_addrs: Mapping[str, Sequence[Any]]) -> List[Address]:
    """Every IPv4 and IPv6 address by interface, less loopback and IPv6 link-local ones."""
    out = []
    for name in sorted(if_addrs):
        for addr in if_addrs[name]:
            text = str(addr.address).split("%")[0]  # fe80::1%eth0 -> fe80::1
            if addr.family == socket.AF_INET and not text.startswith("127."):
                out.append(Address(interface=name, address=text, family="inet"))
            elif (
                addr.family == socket.AF_INET6
                and text != "::1"
                and not text.lower().startswith("fe80:")
            ):
                out.append(Address(interface=name, address=text, family="inet6"))
    return out


def logged_in_users() -> List[LoggedInUser]:
    return [
        LoggedInUser(
            name=u.name,
            terminal=u.terminal or None,
            host=u.host or None,
            started_at=utc_iso(u.started) if u.started else None,
        )
        for u in psutil.users()
    ]


def local_timezone(
    environ: Optional[Mapping[str, str]] = None,
    localtime: str = "/etc/localtime",
    timezone_file: str = "/etc/timezone",
    zoneinfo: str = ZONEINFO,
) -> Tuple[Optional[str], Optional[int]]:
    """(time zone name, UTC offset in seconds) of this host.

    The name is the IANA name when one can be found — $TZ, the /etc/localtime link, then
    /etc/timezone — else the abbreviation (e.g. "CET"). The offset is the one in force now.
    """
    env = os.environ if environ is None else environ
    name = _safe(lambda: _iana_name(env, localtime, timezone_file, zoneinfo))
    if not name:
        name = _safe(lambda: time.strftime("%Z")) or None
    offset = _safe(lambda: int(time.localtime().tm_gmtoff))
    return name, offset


def _iana_name(
    env: Mapping[str, str], localtime: str, timezone_file: str, zoneinfo: str
) -> Optional[str]:
    tz = env.get("TZ")
    if tz is not None:
        # $TZ decides; a POSIX rule such as "EST5EDT" has no IANA name, so the abbreviation.
        tz = tz[1:] if tz.startswith(":") else tz
        if "/zoneinfo/" in tz:
            return _after_zoneinfo(tz)
        if tz and not tz.startswith("/") and os.path.isfile(os.path.join(zoneinfo, tz)):
            return tz
        return None
    if os.path.islink(localtime):
        name = _after_zoneinfo(os.readlink(localtime))
        if name:
            return name
    try:
        with open(timezone_file) as f:
            name = f.readline().strip()
    except OSError:
        return None
    return name or None


def _after_zoneinfo(path: str) -> Optional[str]:
    marker = "zoneinfo/"
    if marker not in path:
        return None
    name = path.split(marker, 1)[1]
    for prefix in ("posix/", "right/"):  # alternative trees of the same zones
        if name.startswith(prefix):
            name = name[len(prefix) :]
    return name or None
