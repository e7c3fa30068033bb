"""Host facts: the primary IP from the routing table, addresses, the time zone, and a None for
every value that cannot be read."""

from __future__ import annotations

import os
import socket
import time
from collections import namedtuple

import psutil
import pytest

from gpumon_agent import host as host_module
from gpumon_agent.host import (
    HostReader,
    addresses,
    default_route_interface,
    local_timezone,
    primary_ipv4,
)
from gpumon_agent.report import Report, utc_iso

Addr = namedtuple("Addr", "family address")

ROUTES = """\
Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT
wlan0\t00000000\t0102A8C0\t0003\t0\t0\t600\t00000000\t0\t0\t0
eth0\t00000000\t010200C0\t0003\t0\t0\t100\t00000000\t0\t0\t0
eth0\t000200C0\t00000000\t0001\t0\t0\t100\t00FFFFFF\t0\t0\t0
docker0\t400200C0\t00000000\t0001\t0\t0\t0\tC0FFFFFF\t0\t0\t0
"""

IF_ADDRS = {
    "lo": [Addr(socket.AF_INET, "127.0.0.1"), Addr(socket.AF_INET6, "::1")],
    "docker0": [Addr(socket.AF_INET, "192.0.2.65")],
    "eth0": [
        Addr(socket.AF_INET6, "fe80::1%eth0"),
        Addr(socket.AF_INET, "192.0.2.15"),
        Addr(socket.AF_INET6, "2001:db8::15"),
    ],
    "wlan0": [Addr(socket.AF_INET, "192.0.2.200")],
}


def test_the_default_route_with_the_lowest_metric_wins():
    assert default_route_interface(ROUTES) == "eth0"


def test_a_down_or_absent_default_route_is_none():
    down = ROUTES.replace("eth0\t00000000\t010200C0\t0003", "eth0\t00000000\t010200C0\t0002")
    only_lan = ROUTES.splitlines()[0] + "\n" + ROUTES.splitlines()[3] + "\ngarbage line\n"

    assert default_route_interface(down) == "wlan0"
    assert default_route_interface(only_lan) is None
    assert default_route_interface(None) is None


def test_the_primary_ip_is_the_default_route_interfaces_ipv4():
    assert primary_ipv4(ROUTES, IF_ADDRS) == "192.0.2.15"


def test_without_a_default_route_the_first_non_loopback_ipv4_is_primary():
    assert primary_ipv4("", IF_ADDRS) == "192.0.2.65"
    assert primary_ipv4("", {"lo": IF_ADDRS["lo"]}) is None


def test_addresses_leave_out_loopback_and_link_local():
    listed = [(a.interface, a.address, a.family) for a in addresses(IF_ADDRS)]

    assert listed == [
        ("docker0", "192.0.2.65", "inet"),
        ("eth0", "192.0.2.15", "inet"),
        ("eth0", "2001:db8::15", "inet6"),
        ("wlan0", "192.0.2.200", "inet"),
    ]


@pytest.fixture
def zoneinfo(tmp_path):
    root = tmp_path / "zoneinfo"
    for name in ("Asia/Seoul", "Europe/Berlin", "posix/America/Chicago"):
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(b"TZif")
    return root


def test_timezone_name_from_tz(tmp_path, zoneinfo):
    def name(tz):
        return local_timezone(
            {"TZ": tz}, str(tmp_path / "none"), str(tmp_path / "none"), str(zoneinfo)
        )[0]

    assert name("Asia/Seoul") == "Asia/Seoul"
    assert name(":Europe/Berlin") == "Europe/Berlin"
    assert name(":/usr/share/zoneinfo/posix/America/Chicago") == "America/Chicago"
    assert name("XYZ3") == time.strftime("%Z")  # a POSIX rule: the abbreviation


def test_timezone_name_from_localtime_link_then_timezone_file(tmp_path, zoneinfo):
    link = tmp_path / "localtime"
    link.symlink_to("../usr/share/zoneinfo/Europe/Berlin")
    debian = tmp_path / "timezone"
    debian.write_text("Asia/Seoul\n")

    from_link = local_timezone({}, str(link), str(debian), str(zoneinfo))
    from_file = local_timezone({}, str(tmp_path / "no-link"), str(debian), str(zoneinfo))
    neither = local_timezone({}, str(tmp_path / "no-link"), str(tmp_path / "no"), str(zoneinfo))

    assert from_link[0] == "Europe/Berlin"
    assert from_file[0] == "Asia/Seoul"
    assert neither[0] == time.strftime("%Z")
    assert from_link[1] == time.localtime().tm_gmtoff


def test_this_host_is_read_fully():
    reader = HostReader()
    time.sleep(0.15)

    host = reader.read()

    assert host.hostname == socket.gethostname()
    assert host.cpu_count == psutil.cpu_count()
    assert len(host.load_avg) == 3
    assert 0.0 <= host.cpu_percent <= 100.0
    assert 0 < host.memory_used_bytes <= host.memory_total_bytes
    assert 0.0 <= host.memory_percent <= 100.0
    assert host.swap_total_bytes is not None and host.swap_percent is not None
    assert 0 < host.disk_root_used_bytes < host.disk_root_total_bytes
    assert host.boot_time == utc_iso(psutil.boot_time())
    ips = [a.address for a in host.addresses]
    assert host.primary_ip is None or host.primary_ip in ips
    assert not [ip for ip in ips if ip.startswith("127.") or ip == "::1"]
    assert isinstance(host.users, list)


def test_cpu_use_needs_an_interval():
    reader = HostReader()

    assert reader.read().cpu_percent is None  # no interval yet: unknown, not 0 or 100
    time.sleep(0.15)
    assert reader.read().cpu_percent is not None


def test_cpu_use_follows_load():
    reader = HostReader()
    time.sleep(0.15)
    reader.read()
    deadline = time.monotonic() + 0.3
    while time.monotonic() < deadline:  # one busy CPU
        pass

    busy = reader.read().cpu_percent

    assert busy >= 100.0 / os.cpu_count() * 0.5


def test_an_unreadable_value_is_none_and_the_rest_is_read(monkeypatch):
    # psutil cannot be made to fail for real here; a failing function stands in.
    def fails(*args, **kwargs):
        raise PermissionError("denied")

    monkeypatch.setattr(psutil, "virtual_memory", fails)
    monkeypatch.setattr(psutil, "users", fails)
    monkeypatch.setattr(host_module, "ROUTE_TABLE", "/nonexistent/route")

    reader = HostReader()
    host = reader.read()

    assert (host.memory_total_bytes, host.memory_used_bytes, host.memory_percent) == (None,) * 3
    assert host.users is None  # not read: unknown, not "nobody logged in"
    assert host.addresses is not None
    assert any(p.startswith("logged-in users: PermissionError") for p in reader.problems)
    assert any(p.startswith("memory: PermissionError") for p in reader.problems)
    assert host.disk_root_total_bytes is not None
    assert host.load_avg is not None
    report = Report(generated_at=utc_iso(), host=host)
    assert Report.from_json(report.to_json()) == report
