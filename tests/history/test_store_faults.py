"""The history store under the faults a central box meets: a corrupt file, a full disk, a push
killed mid-write, cron and serve (and a reader) at once, and an unprivileged user under the
shipped unit's UMask=0077. None of them costs a push; none loses more than the push it hit."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
from histkit import HOUR, T0, config, gpu, read, server, server_hours

from gpumon.history.recorder import record_samples
from gpumon.statedb import DB_NAME, history_db

REPO = Path(__file__).resolve().parents[2]
HERE = Path(__file__).resolve().parent


def push(cfg, t, name="a", users=("kim",)):
    return record_samples(cfg, [server(name, gpu(name, 0, users=users))], t)


def test_a_file_that_is_not_a_database_is_moved_aside_and_a_new_one_started(tmp_path):
    cfg = config(tmp_path)
    state = Path(cfg.state_dir)
    state.mkdir()
    (state / DB_NAME).write_bytes(b"this is not sqlite\n" * 100)
    (state / "last-seen.json").write_text("{}")
    warnings = push(cfg, T0)
    assert len(warnings) == 1 and "corrupt" in warnings[0] and "moved to" in warnings[0]
    aside = [p for p in state.iterdir() if p.name.startswith(DB_NAME + ".corrupt-")]
    assert len(aside) == 1 and aside[0].read_bytes() == b"this is not sqlite\n" * 100
    assert (state / "last-seen.json").read_text() == "{}"  # nothing else touched
    assert push(cfg, T0 + 60) == []  # the new database records from now on
    assert server_hours(read(cfg, T0, T0 + HOUR), "a").hours_recorded == 60 / HOUR


def test_a_database_damaged_inside_is_moved_aside_when_a_push_meets_the_damage(tmp_path):
    cfg = config(tmp_path)
    for i in range(300):
        assert push(cfg, T0 + 60 * i, name=f"s{i % 30}") == []
    path = Path(cfg.state_dir) / DB_NAME
    data = bytearray(path.read_bytes())
    page = 4096
    for offset in range(2 * page, len(data) - page, 3 * page):  # scribble over many pages
        data[offset : offset + page] = os.urandom(page)
    path.write_bytes(bytes(data))
    warnings = []
    for i in range(300, 320):
        warnings += push(cfg, T0 + 60 * i, name=f"s{i % 30}")
    assert any("corrupt" in w and "moved to" in w for w in warnings), warnings
    assert push(cfg, T0 + 60 * 400) == []
    with history_db(cfg) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"


WRITER = textwrap.dedent(
    """
    import sys
    sys.path[:0] = [{here!r}, {tests!r}]
    from histkit import config, gpu, server
    from pathlib import Path
    from gpumon.history.recorder import record_samples
    cfg = config(Path({tmp!r}))
    name, start, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    for i in range(count):
        t = start + 60 * i
        warnings = record_samples(cfg, [server(name, gpu(name, 0, users=["kim"]))], t)
        if warnings:
            print("WARN", warnings, flush=True)
        print(t, flush=True)
    """
)


def writer(tmp_path: Path, *args: str) -> subprocess.Popen:
    code = WRITER.format(here=str(HERE), tests=str(HERE.parent), tmp=str(tmp_path))
    return subprocess.Popen(
        [sys.executable, "-c", code, *args], stdout=subprocess.PIPE, text=True, cwd=REPO
    )


def test_cron_and_serve_writing_at_once_lose_nothing(tmp_path):
    cfg = config(tmp_path)
    push(cfg, T0 - 60, name="warm")  # the database exists before they race
    procs = [writer(tmp_path, name, str(T0), "120") for name in ("cron", "serve")]
    reads = 0
    while any(p.poll() is None for p in procs):
        found = read(cfg, T0, T0 + 4 * HOUR)  # a `gpumon history` reading meanwhile
        reads += 1
        assert all(s.hours_recorded <= 2 for s in found.servers)
    outputs = [p.communicate()[0] for p in procs]
    assert all(p.returncode == 0 for p in procs)
    assert not any("WARN" in out for out in outputs), outputs
    found = read(cfg, T0, T0 + 4 * HOUR)
    for name in ("cron", "serve"):
        assert server_hours(found, name).hours_recorded == 119 * 60 / HOUR
    assert reads >= 1


def test_a_push_killed_mid_write_leaves_whole_pushes_only(tmp_path):
    cfg = config(tmp_path)
    push(cfg, T0 - 60, name="warm")
    proc = writer(tmp_path, "a", str(T0), "100000")
    assert proc.stdout is not None
    done = [int(proc.stdout.readline()) for _ in range(40)]
    proc.send_signal(signal.SIGKILL)  # somewhere inside a later push's transaction, likely
    proc.wait()
    with history_db(cfg) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        raw = conn.execute(
            "SELECT sum(dur), count(*) FROM history_raw r JOIN history_names n "
            "ON n.id = r.server WHERE n.value = 's:a' AND gpu = 0"
        ).fetchone()
        hourly = conn.execute(
            "SELECT sum(covered_s) FROM history_agg a JOIN history_names n ON n.id = a.server "
            "WHERE n.value = 's:a' AND gpu = 0 AND level = 3600"
        ).fetchone()
    # Every push it said it made is there (the first one's empty interval is replaced by the
    # second's, which starts where it stood), each whole: its rows and its sums agree.
    assert raw[1] >= len(done) - 1
    assert raw[0] == hourly[0] == raw[1] * 60
    assert push(cfg, done[-1] + 10**5) == []  # and the next push records


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounts a small tmpfs: run as root (CI does)")
    mount = tmp_path / "small"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=512k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def test_a_full_disk_costs_the_pushes_it_hits_and_nothing_else(small_disk):
    cfg = config(small_disk)
    assert push(cfg, T0) == []
    filler = small_disk / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)  # the disk full, as a program leaves it
    try:
        while os.write(fd, b"\0" * 512):
            pass
    except OSError:
        pass
    finally:
        os.close(fd)
    warnings = []
    t = T0
    for i in range(1, 200):
        t = T0 + 60 * i
        warnings += push(cfg, t, name=f"server{i}")  # new names: the file must grow
        if warnings:
            break
    assert warnings and "not recorded" in warnings[0] and "free space" in warnings[0], warnings
    filler.unlink()
    assert push(cfg, t + 60, name="after") == []
    with history_db(cfg) as conn:
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    assert not [p for p in small_disk.iterdir() if ".corrupt-" in p.name]


@pytest.fixture
def open_dir():
    """A scratch directory other users can reach (pytest's tmp_path is under a 0700 one)."""
    import shutil
    import tempfile

    path = Path(tempfile.mkdtemp(prefix="gpumon-t-history-"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def test_an_unprivileged_user_under_umask_0077_records_and_reads(open_dir, lab_users):
    alice = lab_users["alice"]
    home = open_dir / "alice"
    home.mkdir()
    os.chown(home, alice.uid, alice.gid)
    toml = home / "gpumon.toml"
    toml.write_text(
        f'state_dir = "{home / "state"}"\n[servers.a]\nhost = "192.0.2.10"\n'
        '[sheet]\nbackend = "xlsx"\npath = "sheet.xlsx"\n'
    )
    os.chown(toml, alice.uid, alice.gid)
    code = WRITER.format(here=str(HERE), tests=str(HERE.parent), tmp=str(home))
    done = subprocess.run(
        [sys.executable, "-c", code, "a", str(T0), "30"],
        preexec_fn=alice.preexec(umask=0o077),
        capture_output=True,
        text=True,
        cwd="/",
    )
    assert done.returncode == 0, done.stderr
    assert "WARN" not in done.stdout
    db = home / "state" / DB_NAME
    assert db.stat().st_uid == alice.uid
    assert db.stat().st_mode & 0o777 == 0o600
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("gpumon")), "history", "--config", str(toml),
         "--since", f"{T0 - 3600}", "--json"],
        preexec_fn=alice.preexec(umask=0o077),
        capture_output=True,
        text=True,
        cwd="/",
    )  # fmt: skip
    assert shown.returncode == 2  # a bare number is not a span: the message says what to write
    assert "--since" in shown.stderr
    since = time.strftime("%Y-%m-%dT%H:%M", time.gmtime(T0 - 3600))
    shown = subprocess.run(
        [str(Path(sys.executable).with_name("gpumon")), "history", "--config", str(toml),
         "--since", since, "--json"],
        preexec_fn=alice.preexec(umask=0o077),
        capture_output=True,
        text=True,
        cwd="/",
        env={**os.environ, "TZ": "UTC"},
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    data = json.loads(shown.stdout)
    (kim,) = data["people"]
    assert kim["person"] == "kim" and kim["used_gpu_hours"] == round(29 * 60 / HOUR, 4)


def test_sqlite_errors_other_than_corruption_never_move_the_file(tmp_path):
    cfg = config(tmp_path)
    assert push(cfg, T0) == []
    path = Path(cfg.state_dir) / DB_NAME
    holder = sqlite3.connect(str(path), timeout=0)
    holder.execute("BEGIN EXCLUSIVE")  # someone holds the database for longer than the wait
    try:
        import gpumon.statedb as db

        saved, db.BUSY_TIMEOUT_MS = db.BUSY_TIMEOUT_MS, 200
        try:
            warnings = push(cfg, T0 + 60)
        finally:
            db.BUSY_TIMEOUT_MS = saved
    finally:
        holder.rollback()
        holder.close()
    assert warnings and "not recorded" in warnings[0] and "locked" in warnings[0]
    assert [p.name for p in path.parent.iterdir() if "corrupt" in p.name] == []
    assert push(cfg, T0 + 120) == []
