"""`gpumon status --watch`: a live table on a real terminal (a pty) — redrawn in place every
interval, fitted to the terminal's width (and again at once when it is resized), Korean and
Chinese text aligned, utilization and memory coloured unless --color=never or NO_COLOR, the
SSH connections kept open between refreshes, and the terminal restored on Ctrl-C."""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from clikit import GPUMON, clean_env, fleet_config
from ptykit import SGR, Terminal, display_width, frames, plain, screen_lines, shown_width

from gpumon.config import load
from gpumon.watch import ALT_SCREEN_OFF, ALT_SCREEN_ON, CURSOR_ON, watch
from gpumon_agent.report import ClaimInfo, GpuProcess
from harness.sshd import Fleet, canned_report

KOREAN_JOB = "음성인식 학습"  # "speech recognition training": 7 characters, 13 columns
CHINESE_COMMAND = "python3 训练模型.py"


@pytest.fixture(scope="module")
def fleet(isolated_home: Path) -> Iterator[Fleet]:
    fleet = Fleet()
    busy = fleet.add("hcbbsp")
    report = canned_report("hcbbsp", busy.address)
    gpu = report.gpus[0]
    gpu.utilization_pct = 95.0  # red
    gpu.memory_used_bytes = gpu.memory_total_bytes // 4  # green
    gpu.claims = [
        ClaimInfo(job=KOREAN_JOB, user="lww", pid=1000, started_at="2024-01-01T00:00:00Z")
    ]
    gpu.processes = [
        GpuProcess(pid=1000, user="lww", command=CHINESE_COMMAND, gpu_memory_bytes=2**30)
    ]
    busy.report = report
    fleet.add("ganbsp")
    fleet.start()
    yield fleet
    fleet.close()


def start(fleet, tmp_path, no_nvml_env, *args, columns=100, lines=30, **env) -> Terminal:
    config = fleet_config(fleet, tmp_path)
    environment = clean_env(tmp_path, no_nvml_env, TERM="xterm-256color", **env)
    argv = [str(GPUMON), "--config", str(config), "status", *args]
    return Terminal(argv, environment, tmp_path, columns=columns, lines=lines)


def last_frame(fleet, tmp_path, no_nvml_env, *args, **kwargs) -> str:
    """The screen of the second refresh of `status --watch 0.3 ARGS`, then Ctrl-C."""
    term = start(fleet, tmp_path, no_nvml_env, "--watch", "0.3", *args, **kwargs)
    try:
        term.wait_for(lambda out: len(frames(out)) >= 2)
        term.interrupt()
    finally:
        term.close()
    return frames(term.output)[-1]


def table_rows(frame: str) -> list[str]:
    """The table's lines of one frame (the title line dropped)."""
    return [line for line in screen_lines(frame)[1:] if plain(line).strip()]


def column_starts(header: str) -> dict[str, int]:
    """Header word → the terminal column it starts at."""
    text = plain(header)
    return {m.group(): display_width(text[: m.start()]) for m in re.finditer(r"\S+", text)}


def cell_at(line: str, column: int) -> str:
    """What a terminal shows from ``column`` on (up to the next double space)."""
    text, at, out = plain(line), 0, []
    for c in text:
        if at >= column:
            out.append(c)
        at += display_width(c)
    return "".join(out).split("  ")[0]


def test_the_table_refreshes_in_place_with_connections_kept_open(fleet, tmp_path, no_nvml_env):
    before = {s.name: fleet.logins_to(s) for s in fleet.servers}
    started = fleet.agent_starts()
    term = start(fleet, tmp_path, no_nvml_env, "--watch", "0.3")
    try:
        term.wait_for(lambda out: len(frames(out)) >= 5)  # "polling…" + four refreshes
        code = term.interrupt()
    finally:
        term.close()
    out = term.output
    assert code == 130
    assert out.startswith(ALT_SCREEN_ON)
    screen, _, after_screen = out.rpartition(CURSOR_ON + ALT_SCREEN_OFF)
    assert screen and after_screen.split() == ["gpumon:", "interrupted"]  # the terminal back
    assert "Traceback" not in out
    after = {s.name: fleet.logins_to(s) for s in fleet.servers}
    # Four sweeps or more, one SSH login per server: every refresh reused its connection.
    assert {name: after[name] - before[name] for name in after} == {"hcbbsp": 1, "ganbsp": 1}
    # ... and its stream: one agent process per server, answering every refresh.
    assert fleet.agent_starts() - started == 2
    titles = [plain(screen_lines(f)[0]) for f in frames(out)]
    assert titles[0].startswith("gpumon status: polling 2 servers")
    assert all("every 0.3 s" in t and "2 servers: 2 ON, 0 OFF" in t for t in titles[1:])


def test_every_line_fits_the_terminal_and_wide_text_stays_aligned(fleet, tmp_path, no_nvml_env):
    frame = last_frame(fleet, tmp_path, no_nvml_env, columns=100)
    for line in screen_lines(frame):
        assert shown_width(line) <= 100, plain(line)
    header, *rows = table_rows(frame)
    starts = column_starts(header)
    assert list(starts) == [
        "SERVER", "STATE", "IP", "GPU", "UTIL", "MEMORY", "RUNNING", "JOB", "HEALTH"
    ]  # fmt: skip
    korean = next(r for r in rows if plain(r).startswith("hcbbsp"))
    assert "음성" in korean and "训练" in korean
    for row in rows:  # every row's cells start under their headers, whatever the script
        assert cell_at(row, starts["HEALTH"]), plain(row)
        assert cell_at(row, starts["HEALTH"] - 2) == "" or plain(row)[0] == " "
        assert cell_at(row, starts["GPU"]) in ("0", "1")
    assert cell_at(korean, starts["JOB"]).startswith("음성")
    assert cell_at(korean, starts["UTIL"]) == "95%"


def test_resizing_the_terminal_redraws_at_once_to_the_new_width(fleet, tmp_path, no_nvml_env):
    term = start(fleet, tmp_path, no_nvml_env, "--watch", "60", columns=120, lines=30)
    try:
        term.wait_for(lambda out: len(frames(out)) >= 2)
        shown = len(frames(term.output))
        term.resize(60, 30)
        term.wait_for(lambda out: len(frames(out)) > shown, timeout=5)  # not in 60 s
        narrow = frames(term.output)[-1]
        shown = len(frames(term.output))
        term.resize(40, 6)
        term.wait_for(lambda out: len(frames(out)) > shown, timeout=5)
        tiny = frames(term.output)[-1]
        term.interrupt()
    finally:
        term.close()
    assert all(shown_width(line) <= 60 for line in screen_lines(narrow))
    assert max(shown_width(line) for line in screen_lines(narrow)) >= 50  # it uses the room
    assert "…" in plain(narrow)  # cut text says it is cut
    tiny_lines = screen_lines(tiny)
    assert all(shown_width(line) <= 40 for line in tiny_lines)
    assert len(tiny_lines) <= 6  # the height too: a line says what does not fit
    assert "more rows" in plain(tiny_lines[-1])


UTIL_COLOURED = re.compile(r"\033\[31m95%")  # red: 95 % busy
MEMORY_COLOURED = re.compile(r"\033\[32m2\.8/11 GiB")  # green: a quarter used


@pytest.mark.parametrize(
    ("args", "env", "coloured"),
    [
        ((), {}, True),
        (("--color=never",), {}, False),
        ((), {"NO_COLOR": "1"}, False),
        (("--color=always",), {"NO_COLOR": "1"}, True),  # the flag wins over the variable
    ],
)
def test_utilization_and_memory_are_coloured_unless_told_not_to(
    args, env, coloured, fleet, tmp_path, no_nvml_env
):
    frame = last_frame(fleet, tmp_path, no_nvml_env, *args, **env)
    assert bool(UTIL_COLOURED.search(frame)) is coloured
    assert bool(MEMORY_COLOURED.search(frame)) is coloured
    if not coloured:
        assert SGR.search(frame) is None


def test_piped_watch_prints_each_refresh_after_the_last(fleet, tmp_path):
    config = load(str(fleet_config(fleet, tmp_path)))
    out = io.StringIO()
    assert watch(config, ["hcbbsp", "ganbsp"], 0.1, out=out, count=3) == 0
    blocks = [b for b in out.getvalue().split("\n\n") if b.strip()]
    assert len(blocks) == 3
    for block in blocks:
        title, header = block.splitlines()[:2]
        assert title.startswith("gpumon status · every 0.1 s")
        assert header.split()[0] == "SERVER"
    assert "\033[" not in out.getvalue()  # plain when piped
    assert KOREAN_JOB in out.getvalue()  # and never cut


def test_watch_json_is_one_document_per_refresh(fleet, tmp_path):
    config = load(str(fleet_config(fleet, tmp_path)))
    out = io.StringIO()
    watch(config, ["hcbbsp"], 0.1, as_json=True, out=out, count=2)
    docs = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [d["servers"][0]["name"] for d in docs] == ["hcbbsp", "hcbbsp"]
    assert docs[1]["servers"][0]["reused"] is True


def test_a_bad_interval_is_refused(capsys):
    from gpumon.cli import main

    for bad in ("0", "-1", "nan", "inf", "soon"):
        with pytest.raises(SystemExit) as done:
            main(["status", "--watch", bad])
        assert done.value.code == 2
        assert "--watch" in capsys.readouterr().err
