"""`gpumon prometheus-targets [--out FILE]`: the fleet as a Prometheus ``file_sd`` file.

``[{"targets": ["host:port"], "labels": {"server": NAME}}, ...]``: one entry per server a push
polls — the sheet's Server names under the ``[poll]`` rules (``servers_from_sheet``,
``sheet_names``, ``sheet_ips``), then the config's ``[servers]`` — sorted by name. ``host`` is
``[servers.NAME] host`` (``127.0.0.1`` for ``local = true``), else the name; ``port`` is
``[metrics] port``, where the agents serve ``--metrics``. The ``server`` label is the name as the
sheet (or config) writes it, so the sheet fed from Prometheus finds each server under its name.

With ``--out FILE`` the file is replaced atomically (gpumon_agent.atomic; mode 0644, Prometheus
runs as its own user), and only when its content changes: Prometheus' file watch sees one
complete file per change and picks it up within seconds. Without ``--out`` it is printed.

A name that is not a host name (spaces, slashes, non-ASCII) cannot be a scrape target: it is left
out with a warning naming it, as are the names the ``[poll]`` rules leave out.

Exit status: 0 written (or unchanged), 1 FILE cannot be written, 2 config error, 3 the sheet
cannot be read, 4 its layout cannot be used. In the last cases FILE is left as it was: a sheet
outage must not empty Prometheus' targets (their series would vanish from the rules and alerts).
"""

from __future__ import annotations

import ipaddress
import json
import re
import sys
from pathlib import Path
from typing import TextIO

from gpumon.config import Config, ConfigError
from gpumon.fleet import EXIT_CONFIG, EXIT_LAYOUT, EXIT_OK, EXIT_SHEET, open_fleet, poll_names
from gpumon.sheet.grid import SheetError
from gpumon.sheet.layout import LayoutError, read_layout

EXIT_WRITE = 1
_HOST_NAME = re.compile(r"[A-Za-z0-9_](?:[A-Za-z0-9_.-]{0,251}[A-Za-z0-9_])?")


def fleet(config: Config, warnings: list[str]) -> list[str]:
    """The servers a push would poll; reads the sheet once when the config asks for its names.
    Raises SheetError, LayoutError, ConfigError."""
    if not config.poll.servers_from_sheet:
        return poll_names(config, [], warnings)
    with open_fleet(config) as session:
        layout = read_layout(session.backend().read(), config.sheet.columns)
    warnings.extend(layout.warnings)  # rows it leaves alone, names that are not server names
    return poll_names(config, layout.servers(), warnings)


def targets(config: Config, names: list[str], warnings: list[str]) -> list[dict[str, object]]:
    """The file_sd entries for ``names``, sorted by name; names that cannot be a scrape target
    are left out and said in ``warnings``."""
    entries: list[dict[str, object]] = []
    unusable: list[str] = []
    for name in sorted(names, key=lambda n: (n.casefold(), n)):
        host = _host(config, name)
        if host is None:
            unusable.append(name)
            continue
        entries.append(
            {"targets": [f"{host}:{config.metrics.port}"], "labels": {"server": name.strip()}}
        )
    if unusable:
        shown = ", ".join(repr(n[:60]) for n in unusable[:5])
        more = f" and {len(unusable) - 5} more" if len(unusable) > 5 else ""
        warnings.append(
            f"not a target: {shown}{more} — not a host name Prometheus can scrape; give it a "
            "[servers.NAME] table with host = the address"
        )
    return entries


def render(entries: list[dict[str, object]]) -> str:
    return json.dumps(entries, indent=2, ensure_ascii=False) + "\n"


def prometheus_targets(
    config: Config,
    out_path: str | None = None,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """`gpumon prometheus-targets`: exit status as in the module docstring."""
    from gpumon.table import printable

    out = out or sys.stdout
    err = err or sys.stderr
    warnings: list[str] = []
    try:
        names = fleet(config, warnings)
    except ConfigError as e:
        return _fail(err, str(e), EXIT_CONFIG)
    except SheetError as e:
        return _fail(err, f"{e} — the targets file is left as it was", EXIT_SHEET)
    except LayoutError as e:
        return _fail(err, f"{e} — the targets file is left as it was", EXIT_LAYOUT)
    entries = targets(config, names, warnings)
    for warning in warnings:
        print(printable(f"gpumon: warning: {warning}"), file=err)
    text = render(entries)
    if out_path is None:
        out.write(text)
        return EXIT_OK
    path = Path(out_path).expanduser()
    try:
        if path.is_file() and path.read_bytes() == text.encode("utf-8"):
            print(f"{path}: {len(entries)} targets, unchanged", file=out)
            return EXIT_OK
        from gpumon_agent.atomic import write_atomic

        write_atomic(path, text.encode("utf-8"), mode=0o644)
    except OSError as e:
        return _fail(
            err,
            f"{path}: cannot write the targets file ({e.strerror or e}) — give --out a file in a "
            "folder this user may write (Prometheus reads it: e.g. /etc/prometheus/gpumon/)",
            EXIT_WRITE,
        )
    print(f"{path}: {len(entries)} targets written", file=out)
    return EXIT_OK


def _host(config: Config, name: str) -> str | None:
    entry = config.servers.get(name)
    if entry is not None and entry.local:
        return "127.0.0.1"
    host = (entry.host if entry is not None and entry.host else name).strip()
    try:
        address = ipaddress.ip_address(host)
        return f"[{address}]" if address.version == 6 else str(address)
    except ValueError:
        pass
    return host if _HOST_NAME.fullmatch(host) else None


def _fail(err: TextIO, message: str, code: int) -> int:
    from gpumon.table import printable

    print(printable(f"gpumon: {message}"), file=err)
    return code
