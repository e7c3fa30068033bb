"""gpumon_agent.atomic: the one way the project replaces a file others read."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from gpumon_agent import atomic
from gpumon_agent.atomic import atomic_file, write_atomic


def leftovers(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if ".gpumon-tmp-" in p.name)


def test_replaces_the_content_and_leaves_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    write_atomic(target, b"new")
    assert target.read_bytes() == b"new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_the_mode_is_the_one_asked_for_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)  # the agent unit's UMask
    try:
        write_atomic(tmp_path / "a", b"x", mode=0o644)
        write_atomic(tmp_path / "b", b"x", mode=0o600)
    finally:
        os.umask(old)
    assert (tmp_path / "a").stat().st_mode & 0o7777 == 0o644
    assert (tmp_path / "b").stat().st_mode & 0o7777 == 0o600


def test_mode_none_keeps_the_replaced_files_mode(tmp_path: Path) -> None:
    target = tmp_path / "sheet.xlsx"
    target.write_bytes(b"old")
    target.chmod(0o640)
    write_atomic(target, b"new", mode=None)
    assert target.stat().st_mode & 0o7777 == 0o640
    write_atomic(tmp_path / "fresh", b"new", mode=None)
    assert (tmp_path / "fresh").stat().st_mode & 0o7777 == 0o644


def test_a_failing_writer_leaves_the_old_file_and_no_temporary_file(tmp_path: Path) -> None:
    target = tmp_path / "data"
    target.write_bytes(b"old")
    with pytest.raises(RuntimeError), atomic_file(target) as f:
        f.write(b"half of it")
        raise RuntimeError("writer failed")
    assert target.read_bytes() == b"old"
    assert leftovers(tmp_path) == []


def test_a_symlink_at_the_target_is_replaced_not_written_through(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "state.json"
    target.symlink_to(victim)
    write_atomic(target, b"ours")
    assert victim.read_bytes() == b"precious"
    assert not target.is_symlink() and target.read_bytes() == b"ours"


def test_readers_see_the_old_file_or_the_new_one_never_a_part(tmp_path: Path) -> None:
    target = tmp_path / "big"
    contents = [bytes([n]) * 2_000_000 for n in range(2)]
    write_atomic(target, contents[0])
    seen: set[bytes] = set()
    stop = threading.Event()

    def read() -> None:
        while not stop.is_set():
            data = target.read_bytes()
            seen.add(data[:1] + data[-1:] + str(len(data)).encode())

    reader = threading.Thread(target=read)
    reader.start()
    for n in range(20):
        write_atomic(target, contents[n % 2])
    stop.set()
    reader.join()
    assert seen <= {b"\x00\x002000000", b"\x01\x012000000"}


KILLED_WRITER = """
import sys, time
from gpumon_agent.atomic import atomic_file
with atomic_file(sys.argv[1]) as f:
    f.write(b"partial")
    f.flush()
    print("writing", flush=True)
    time.sleep(60)
"""


def run_killed_writer(target: Path, env: dict[str, str]) -> None:
    child = subprocess.Popen(
        [sys.executable, "-c", KILLED_WRITER, str(target)],
        stdout=subprocess.PIPE,
        env={**os.environ, **env},
    )
    assert child.stdout is not None
    assert child.stdout.readline() == b"writing\n"
    child.send_signal(signal.SIGKILL)
    child.wait()


def test_a_writer_killed_with_sigkill_leaves_the_old_file_and_at_most_one_temporary_file(
    tmp_path: Path,
) -> None:
    target = tmp_path / "report.json"
    target.write_bytes(b"old")
    for _ in range(3):
        run_killed_writer(target, {})
        assert target.read_bytes() == b"old"
        assert len(leftovers(tmp_path)) == 1  # each killed writer's is removed by the next
    write_atomic(target, b"new")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.json"]


def test_temporary_files_of_dead_writers_are_removed_by_the_next_write(tmp_path: Path) -> None:
    target = tmp_path / "report.json"
    probe = subprocess.Popen(["true"])
    probe.wait()
    orphan = tmp_path / f".report.json.gpumon-tmp-{probe.pid}-deadbeef"
    orphan.write_bytes(b"left by a writer killed between naming and renaming")
    live = tmp_path / f".report.json.gpumon-tmp-{os.getpid()}-cafecafe"
    live.write_bytes(b"another thread of a live writer")
    other = tmp_path / f".other.gpumon-tmp-{probe.pid}-deadbeef"
    other.write_bytes(b"another file's: not ours to judge")
    write_atomic(target, b"new")
    assert not orphan.exists()
    assert live.exists() and other.exists()


def test_an_unwritable_directory_raises_oserror_and_leaves_nothing(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-dir" / "file"
    with pytest.raises(OSError):
        write_atomic(missing, b"x")
    assert not missing.parent.exists()


def test_import_is_cheap_enough_for_the_report_fast_path() -> None:
    """The module imports only os (the `report --json` fast path imports it)."""
    code = "import sys; before = set(sys.modules); import gpumon_agent.atomic; " + (
        "print(sorted(set(sys.modules) - before))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "['gpumon_agent', 'gpumon_agent.atomic']"


def test_time_does_not_matter_to_orphan_removal(tmp_path: Path) -> None:
    """Orphans are judged by their writer's pid, not their age: a fresh one of a dead writer
    goes, an old one of a live writer stays."""
    probe = subprocess.Popen(["true"])
    probe.wait()
    fresh_orphan = tmp_path / f".f.gpumon-tmp-{probe.pid}-00000000"
    fresh_orphan.write_bytes(b"")
    old_live = tmp_path / f".f.gpumon-tmp-{os.getppid()}-11111111"
    old_live.write_bytes(b"")
    os.utime(old_live, (time.time() - 86400, time.time() - 86400))
    atomic._remove_orphans(str(tmp_path), "f")
    assert not fresh_orphan.exists() and old_live.exists()
