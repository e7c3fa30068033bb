"""`gpumon free [--count N] [--for PERSON] [--json]`: the GPUs free right now, across the fleet.

Free means: the GPU's use is known and nothing uses it (no process, no live claim, GPU memory
and utilization low — gpumon_agent.usage.judge_use; unknown is never free), and nobody else
reserved it in the sheet's Usage column (a GPU reserved for PERSON counts as free for them).
PERSON is a ``[people]`` name or a Unix user; default: the user running the command.

Least-loaded server first (the fewest GPUs in use, then the lowest mean utilization), each
with the command that claims its GPUs. ``--count N``: only servers with N such GPUs, N each.
One read of the sheet and one sweep, like `gpumon status`; nothing is written.

Exit status: 0 some GPU is free (N on one server, with --count); 1 none is; 2 config error,
nothing to poll; 3 the sheet cannot be read; 4 its layout cannot be used.
"""

from __future__ import annotations

import getpass
import json
import os
import pwd
import shlex
import sys
from dataclasses import dataclass
from typing import TextIO

from gpumon.config import Config, ConfigError
from gpumon.fleet import EXIT_CONFIG, Judged, exit_code, open_fleet, survey
from gpumon.gpustate import IN_USE, OTHER_ON_RESERVED, RESERVER_RUNNING, GpuState
from gpumon.sheet.grid import SheetError
from gpumon.sheet.layout import LayoutError, server_key
from gpumon.table import Cell, format_table, terminal_width, use_color

HEADERS = ["SERVER", "GPU", "MEMORY FREE", "UTIL", "RESERVED BY", "STATE"]
BUSY_KINDS = (IN_USE, RESERVER_RUNNING, OTHER_ON_RESERVED)


@dataclass(frozen=True)
class ServerPick:
    server: str
    gpus: list[GpuState]  # the free ones, by index
    busy: int  # GPUs of this server in use
    load: float  # mean utilization of its GPUs (0 when unknown)

    def claim_command(self) -> str:
        indices = ",".join(str(g.gpu) for g in self.gpus)
        return f"ssh {shlex.quote(self.server)} gpumon claim --gpus {indices} -- …"


def caller() -> str:
    """The Unix user running this command (its uid's name; $USER only without one)."""
    try:
        return pwd.getpwuid(os.getuid()).pw_name
    except KeyError:
        try:
            return getpass.getuser()
        except (KeyError, OSError):
            return str(os.getuid())


def free(
    config: Config,
    count: int | None = None,
    person: str | None = None,
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    out = out or sys.stdout
    err = err or sys.stderr
    person = person or caller()
    try:
        with open_fleet(config) as fleet:
            judged = survey(config, fleet.backend(), fleet.poller())
    except (ConfigError, SheetError, LayoutError) as e:
        print(f"gpumon free: {e}", file=err)
        return exit_code(e)
    if not judged.results:
        print(
            f"gpumon free: no servers to poll in the sheet or {config.origin} — add "
            "[servers.NAME] tables, or names in the sheet's Server column",
            file=err,
        )
        return EXIT_CONFIG
    picks = pick(judged, person, count)
    if as_json:
        json.dump(to_json(picks), out, indent=2)  # ASCII: server text may hold lone surrogates
        out.write("\n")
    else:
        print_picks(picks, person, count, judged, out)
    return 0 if picks else 1


def pick(judged: Judged, person: str, count: int | None) -> list[ServerPick]:
    """The servers with GPUs free for ``person``, least-loaded first; with ``count``, only
    those with ``count`` free GPUs, ``count`` each (the least used of them)."""
    by_server: dict[str, list[GpuState]] = {}
    for state in judged.states:
        if state.gpu >= 0:
            by_server.setdefault(state.server, []).append(state)
    picks = []
    for server, states in by_server.items():
        mine = [s for s in states if s.free_for(judged.people, person)]
        if not mine or (count is not None and len(mine) < count):
            continue
        if count is not None:
            mine = sorted(mine, key=_gpu_load)[:count]
        busy = sum(s.kind in BUSY_KINDS for s in states)
        utils = [s.utilization_pct for s in states if s.utilization_pct is not None]
        load = sum(utils) / len(utils) if utils else 0.0
        picks.append(ServerPick(server, sorted(mine, key=lambda s: s.gpu), busy, load))
    order = {server_key(r.name): i for i, r in enumerate(judged.results)}
    picks.sort(key=lambda p: (p.busy, p.load, order.get(server_key(p.server), 0)))
    return picks


def _gpu_load(state: GpuState) -> tuple[float, int]:
    return (state.utilization_pct or 0.0, state.gpu)


def to_json(picks: list[ServerPick]) -> list[dict[str, object]]:
    """One object per free GPU, in the order listed."""
    rows: list[dict[str, object]] = []
    for p in picks:
        command = p.claim_command()
        for s in p.gpus:
            rows.append(
                {
                    "server": s.server,
                    "gpu": s.gpu,
                    "uuid": s.uuid,
                    "memory_free_bytes": s.memory_free_bytes,
                    "memory_total_bytes": s.memory_total_bytes,
                    "utilization_pct": s.utilization_pct,
                    "reserved_by": list(s.reserved_by),
                    "state": s.text,
                    "kind": s.kind,
                    "claim_command": command,
                }
            )
    return rows


def print_picks(
    picks: list[ServerPick], person: str, count: int | None, judged: Judged, out: TextIO
) -> None:
    if not picks:
        if count:
            most = _most_free(judged, person)
            print(f"no server has {count} GPUs free for {person} right now{most}.", file=out)
        else:
            print(f"no GPU is free for {person} right now.", file=out)
        return
    rows = []
    for p in picks:
        for s in p.gpus:
            memory = (
                format_memory_free(s.memory_free_bytes, s.memory_total_bytes)
                if s.memory_free_bytes is not None
                else "?"
            )
            util = "?" if s.utilization_pct is None else f"{s.utilization_pct:.0f}%"
            reserved = ", ".join(s.reserved_by) or "-"
            texts = [s.server, str(s.gpu), memory, util, reserved, s.text]
            rows.append([Cell(text) for text in texts])
    print(format_table(HEADERS, rows, color=use_color(out), width=terminal_width(out)), file=out)
    print("", file=out)
    for p in picks:
        print(p.claim_command(), file=out)


def format_memory_free(free_bytes: int, total: int | None) -> str:
    """ "10.9 GiB" free, "10.9/11.0 GiB" with the total."""
    shown = f"{free_bytes / 2**30:.1f}"
    return f"{shown}/{total / 2**30:.1f} GiB" if total else f"{shown} GiB"


def _most_free(judged: Judged, person: str) -> str:
    counts: dict[str, int] = {}
    for s in judged.states:
        if s.gpu >= 0 and s.free_for(judged.people, person):
            counts[s.server] = counts.get(s.server, 0) + 1
    if not counts:
        return ""
    server, n = max(counts.items(), key=lambda kv: kv[1])
    return f" (most: {n} on {server})"
