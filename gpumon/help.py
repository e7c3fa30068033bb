"""What `gpumon COMMAND --help` says: each command's description, exit codes and examples.

Kept apart from the parser (gpumon.cli) so the texts read as one page, and so the test that walks
every subcommand checks against one table.
"""

from __future__ import annotations

import argparse
import textwrap
from dataclasses import dataclass

# Every command shares these two (Ctrl-C; stdout closed early, e.g. `| head`).
INTERRUPTED = (130, "interrupted (Ctrl-C)")
PIPE_CLOSED = (141, "stdout was closed before gpumon finished writing (e.g. `| head`)")


@dataclass(frozen=True)
class CommandHelp:
    summary: str  # one line, in `gpumon --help`'s command list
    description: str
    exit_codes: tuple[tuple[int, str], ...]
    examples: tuple[str, ...]

    def epilog(self) -> str:
        codes = [*self.exit_codes, INTERRUPTED, PIPE_CLOSED]
        lines = ["exit status:"]
        lines += [f"  {code:<3}  {meaning}" for code, meaning in codes]
        lines += ["", "examples:" if len(self.examples) > 1 else "example:"]
        lines += [f"  {example}" for example in self.examples]
        return "\n".join(lines)


CONFIG_SEARCH = (
    "config: --config PATH (before or after the command), else $GPUMON_CONFIG, else "
    "$XDG_CONFIG_HOME/gpumon/gpumon.toml (~/.config/gpumon/gpumon.toml), else "
    "/etc/gpumon/gpumon.toml, else the embedded default (this machine, into "
    "./gpumon-sheet.xlsx). `gpumon check` says which one it read."
)

STATE_HELP = (
    "The State column says per GPU what is really going on: the reservation typed in Usage "
    "(read, never written; names mapped to Unix users by [people]) against the live claim, the "
    "processes and the GPU's health: free; free — reserved by Niv; Niv ✓ python3 train.py; "
    "lww — reserved by Niv (also in Health); lww — claimed 'kws', idle 2 h; reserved by Niv — "
    "unused 3 d; unknown use; lost; server OFF since 14:02. Idle and unused times are kept in "
    "the state directory's database (history.sqlite3, even with [history] enabled = false; not "
    "by --dry-run). docs/reservations.md."
)

MAIN = CommandHelp(
    summary="",
    description="Keep the 'Server and GPU usage' sheet live from every server's gpumon agent.\n\n"
    + CONFIG_SEARCH,
    exit_codes=(
        (0, "done"),
        (
            1,
            "check/status/trust: something is wrong or down; free: no GPU is free (see the "
            "command's --help)",
        ),
        (2, "config error (gpumon.toml, a key file, a time zone, a bad option)"),
        (3, "push/serve: the sheet cannot be read or written"),
        (4, "push: the sheet's layout cannot be used"),
        (5, "push: another push is writing right now"),
    ),
    examples=(
        "gpumon push              # one sweep, one write to the sheet",
        "gpumon status --watch    # a live table of the fleet",
        "gpumon check             # what is wrong, and how to fix it",
    ),
)

COMMANDS: dict[str, CommandHelp] = {
    "push": CommandHelp(
        summary="poll every server once and write the sheet (for cron)",
        description="Poll every server once and bring the sheet's status columns up to date: "
        "one read of the sheet, one sweep of the fleet, one write of the cells that changed. "
        "Servers that are down are shown OFF in the sheet; that is not an error.\n\n" + STATE_HELP,
        exit_codes=(
            (0, "done (servers that are down show OFF in the sheet)"),
            (2, "config error (gpumon.toml, the key file, the worksheet name, a time zone)"),
            (3, "the sheet cannot be read or written (network, quota, sharing, .xlsx open)"),
            (4, "the sheet's layout cannot be used (no header row with a Server column)"),
            (5, "another push is writing right now (this one wrote nothing)"),
        ),
        examples=(
            "gpumon push --dry-run    # list the cells it would change, write nothing",
            "gpumon push --config /etc/gpumon/gpumon.toml -v",
        ),
    ),
    "serve": CommandHelp(
        summary="push every [serve] interval_s until SIGTERM",
        description="Push every [serve] interval_s, keeping the SSH connections and the sheet "
        "session open between pushes; one log line per push on stderr (journald priorities "
        "under systemd). SIGTERM stops it after the push in progress; Ctrl-C stops it at once. "
        "Each push writes the State column as `gpumon push` does (see its --help).",
        exit_codes=(
            (0, "stopped by SIGTERM"),
            (2, "config error: restarting cannot fix it"),
            (3, "the sheet cannot be opened at start"),
        ),
        examples=("gpumon serve --config /etc/gpumon/gpumon.toml",),
    ),
    "status": CommandHelp(
        summary="poll the fleet and print a table (--watch: keep it live)",
        description="Poll the fleet and print a table: one row per GPU with its utilization, "
        "memory, who runs what, the job and its health. The sheet is only read (for its "
        "server names), never written. --watch redraws the table every SECONDS with the SSH "
        "connections kept open, fitted to the terminal's width.",
        exit_codes=(
            (0, "every server is ON"),
            (1, "some server is OFF"),
            (2, "nothing to poll, or a config error"),
        ),
        examples=(
            "gpumon status --watch 5  # a live table, redrawn every 5 s",
            "gpumon status --json | jq '.servers[] | select(.on | not) | .name'",
        ),
    ),
    "check": CommandHelp(
        summary="check config, credentials, sheet layout and SSH to each server",
        description="Check everything a push needs, one line each: which config file was read, "
        "the state directory, the credentials, the sheet and its layout, SSH and the agent on "
        "each server — and for each problem what to do; and each name in the Usage column that "
        "matches no [people] name and no Unix user seen on the fleet. Writes nothing.",
        exit_codes=(
            (0, "all good"),
            (1, "a problem was found (the FAIL lines say what to do)"),
            (2, "the config cannot be read (the message names the file, line and key)"),
        ),
        examples=("gpumon check --config /etc/gpumon/gpumon.toml",),
    ),
    "free": CommandHelp(
        summary="the GPUs free right now, and the command to claim them",
        description="List the GPUs free right now across the fleet, least-loaded server first, "
        "with the command that claims them (ssh SERVER gpumon claim --gpus 2,3 -- …). Free: no "
        "process, no live claim, GPU memory and utilization low, and not reserved by someone "
        "else in the sheet's Usage column; a GPU reserved for PERSON (--for; default: you) "
        "counts as free for them. A GPU whose use cannot be told (NVML cannot list its "
        "processes, it errs or is lost, the server is OFF) is never free. --count N: only "
        "servers with N such GPUs. People's names in Usage map to Unix users through [people] "
        "in the config (docs/reservations.md). Reads the sheet once and polls once; writes "
        "nothing.",
        exit_codes=(
            (0, "some GPU is free (with --count: N on one server)"),
            (1, "none is free right now"),
            (2, "config error, or nothing to poll"),
            (3, "the sheet cannot be read"),
            (4, "the sheet's layout cannot be used (no header row with a Server column)"),
        ),
        examples=(
            "gpumon free --count 2            # two free GPUs on one server",
            "gpumon free --for Niv            # Niv's reserved GPUs count as free",
            "gpumon free --json | jq -r '.[0] | \"\\(.server) \\(.gpu)\"'",
        ),
    ),
    "trust": CommandHelp(
        summary="show a server's SSH host key and record it",
        description="Connect to HOST, show its SSH host key fingerprint and record it in the "
        "known_hosts file gpumon uses (asking first unless --yes). Compare the fingerprint with "
        "`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` on the server before answering yes.",
        exit_codes=(
            (0, "recorded, or already trusted"),
            (1, "not recorded: declined, unreachable, or the key changed"),
            (2, "config error"),
        ),
        examples=("gpumon trust hcpbsp",),
    ),
    "prometheus-targets": CommandHelp(
        summary="the fleet as a Prometheus file_sd targets file",
        description="Write the servers a push polls (the sheet's, under the [poll] rules, then "
        "the config's) as a Prometheus file_sd file: one target HOST:PORT per server, HOST its "
        "[servers.NAME] host or its name, PORT [metrics] port, labelled server=NAME. With --out "
        "the file is replaced atomically, only when it changed; without, it is printed. If the "
        "sheet cannot be read, FILE is left as it was. docs/metrics.md.",
        exit_codes=(
            (0, "written, unchanged or printed"),
            (1, "FILE cannot be written"),
            (2, "config error"),
            (3, "the sheet cannot be read (FILE left as it was)"),
            (4, "the sheet's layout cannot be used (FILE left as it was)"),
        ),
        examples=(
            "gpumon prometheus-targets --out /etc/prometheus/gpumon/targets.json",
            "gpumon prometheus-targets | jq '.[].labels.server'",
        ),
    ),
    "history": CommandHelp(
        summary="GPU-hours per person, server or GPU: used against reserved",
        description="GPU-hours from the history every push records (state_dir/history.sqlite3): "
        "per person the hours used (a process of theirs on the GPU), reserved, reserved but "
        "unused, on GPUs others reserved, without a reservation, and unclaimed (no `gpumon "
        "claim` of theirs); per server the mean utilization, the hours OFF and the health "
        "warnings seen. Over --since SPAN (default 7d) or an ISO --week, in [sheet] time_zone "
        "(else this machine's). --json for scripts; --png FILE draws used against reserved per "
        "person and utilization per server by hour (matplotlib: pip install 'gpumon[charts]').",
        exit_codes=(
            (0, "printed"),
            (2, "a bad option or config, or --png without matplotlib"),
            (6, "no history to read (nothing recorded yet, or the database cannot be opened)"),
        ),
        examples=(
            "gpumon history --week 2026-W48 --by person",
            "gpumon history --since 30d --json | jq '.people[] | {person, used_gpu_hours}'",
            "gpumon history --png week.png",
        ),
    ),
    "alerts": CommandHelp(
        summary="what is down or warned of now, and each alert channel's state; `test`",
        description="List what the last push found and keeps telling: servers down (and those "
        "not told yet, inside [alerts] down_after_s), the agents' health warnings and GPU "
        "events, each with since when — then each channel (webhook, e-mail) and whether its "
        "last delivery worked. `gpumon alerts test` sends a test message through every "
        "channel now. The pushes themselves send the alerts (docs/alerts.md).",
        exit_codes=(
            (0, "listed (test: every channel took the test message)"),
            (1, "a channel is failing (test: one did not take it)"),
            (2, "config error, or (test) no channel configured"),
        ),
        examples=(
            "gpumon alerts            # what is active, and the channels",
            "gpumon alerts test       # a test message through the webhook and e-mail",
            "gpumon alerts --json | jq '.conditions[] | select(.kind == \"down\") | .server'",
        ),
    ),
    "completion": CommandHelp(
        summary="print the shell completion script (bash or zsh)",
        description="Print a completion script for bash or zsh on stdout.",
        exit_codes=((0, "printed"), (2, "unknown shell")),
        examples=(
            "gpumon completion bash > ~/.local/share/bash-completion/completions/gpumon",
            "gpumon completion zsh > ~/.zfunc/_gpumon   # with fpath=(~/.zfunc $fpath)",
        ),
    ),
    "agent": CommandHelp(
        summary="the agent (see `gpumon agent --help`)",
        description="The agent, as `gpumon-agent`.",
        exit_codes=(),
        examples=("gpumon agent report",),
    ),
    "claim": CommandHelp(
        summary="run a command with GPUs (or --cpu: none) claimed (see `gpumon claim --help`)",
        description="Run a command with GPUs claimed for it; with --cpu, a CPU-only job that "
        "the server's Job cell shows as 'USER: JOB (CPU)'.",
        exit_codes=(),
        examples=(
            "gpumon claim --gpus auto --job kws -- python train.py",
            "gpumon claim --cpu --job 'kws ch32' -- python prep.py",
        ),
    ),
}


class HelpFormatter(argparse.HelpFormatter):
    """Descriptions wrapped paragraph by paragraph; the exit codes and examples kept as laid
    out (a paragraph with an indented line, or one ending in ':')."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        out = []
        for paragraph in text.split("\n\n"):
            lines = paragraph.splitlines()
            if any(line.startswith(" ") or line.endswith(":") for line in lines):
                out.append("\n".join(indent + line for line in lines))
            else:
                out.append(
                    textwrap.fill(
                        " ".join(lines), width, initial_indent=indent, subsequent_indent=indent
                    )
                )
        return "\n\n".join(out)
