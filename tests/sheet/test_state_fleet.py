"""The State column, `gpumon free` and `gpumon check` on the lab's sheet, end to end: the seed
sheet as a workbook with reservations typed into Usage as people type them, its 12 servers
behind real sshd (tests/harness/sshd.py), seven of them real agent daemons on the fake NVML
(tests/harness/agents.py) with real processes of two Unix users, a claim made through the real
hook, a lost GPU, GPUs whose processes NVML cannot list, and a server that goes OFF. Every push
is the real `gpumon push` (a new process each time, as cron runs it)."""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import openpyxl
import pytest
from sheetkit import SEED_SERVERS, seed_workbook, snapshot

from gpumon.statedb import DB_NAME
from gpumon.usetimes import FILE_NAME, TABLE, times_key
from gpumon_agent.report import Gpu, GpuProcess, Report
from harness.agents import AgentFleet, snapshot_behaviour
from harness.fakenvml import PROCESS_QUERIES, FakeProcess, FakeState, make_gpu
from harness.sshd import GARBAGE, Fleet, canned_report
from harness.timing import SLACK_S

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="processes of two Unix users need root"),
]

GiB = 2**30
STATE, HEALTH, USAGE = "N", "M", "C"
PEOPLE_COLUMNS = set(range(0, 5))  # A..E: Server, GPU, Usage, Note, Owner
OWNED = set(range(5, 14))  # F..N
# What people typed into Usage before the first push (the rest is the seed's).
TYPED = {
    "C9": "Niv, lww",  # ganbsp: Niv runs there
    "C13": "lww (exp 4)",  # lstmbbsp: lww runs there
    "C14": "Niv until 3/20",  # relbsp: unused for 3 days
    "C20": "lww",
    "C24": None,  # sigbsp: only its first row says Niv — the whole server is Niv's
    "C25": None,
    "C26": None,
}
THREE_DAYS_AGO = time.time() - 3 * 86400 - 120


@dataclass
class Run:
    work: Path
    workbook: Path
    config: Path
    niv: str  # Niv's Unix user (the SSH fleet's test user)
    typed: dict = field(default_factory=dict)  # Usage cells after people typed
    outputs: dict = field(default_factory=dict)  # command → CompletedProcess
    snapshots: list = field(default_factory=list)
    states: list = field(default_factory=list)  # the State column after each push
    times: list = field(default_factory=list)  # the database's GPU times after each push


def _report(name: str, address: str, gpus: list[Gpu]) -> Report:
    report = canned_report(name, address, gpus=0)
    report.gpus = gpus
    return report


def _quiet_gpu(index: int, **kwargs) -> Gpu:
    kwargs.setdefault("processes", [])
    return Gpu(
        index=index,
        uuid=f"GPU-canned-{index}",
        utilization_pct=0.0,
        utilization_mean_pct=0.0,
        memory_used_bytes=5 << 20,
        memory_total_bytes=11 * GiB,
        **kwargs,
    )


def _wait(what: str, ready, timeout_s: float = 30 + SLACK_S) -> None:
    deadline = time.monotonic() + timeout_s
    while not ready():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.2)


def _state_column(path: Path) -> dict[int, str]:
    sheet = openpyxl.load_workbook(path).active
    return {row: sheet[f"{STATE}{row}"].value for row in range(8, 31)}


def _gpumon(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """`gpumon ARGS…` of this venv, run for real."""
    gpumon = Path(sys.executable).with_name("gpumon")
    return subprocess.run(
        [str(gpumon), *args], cwd=cwd, capture_output=True, text=True, errors="replace",
        timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    work = tmp_path_factory.mktemp("state-fleet")
    agents = AgentFleet()
    ssh = Fleet()
    try:
        niv = ssh.user.pw_name
        niv_uid = pwd.getpwnam(niv).pw_uid
        states = {
            "hcpbsp": FakeState(gpus=[make_gpu(0)]),
            "ganbsp": FakeState(gpus=[make_gpu(0, utilization_gpu=80, memory_used=6 * GiB)]),
            "trlbsp": FakeState(gpus=[make_gpu(0)]),
            "glpbsp": FakeState(gpus=[make_gpu(0, utilization_gpu=95, memory_used=9 * GiB)]),
            "lstmbbsp": FakeState(gpus=[make_gpu(0, utilization_gpu=60, memory_used=3 * GiB)]),
            "mlbsp": FakeState(gpus=[make_gpu(0), make_gpu(1, lost=True)]),
            "annbsp": FakeState(
                gpus=[
                    make_gpu(0, errors=dict.fromkeys(PROCESS_QUERIES, "NOT_SUPPORTED")),
                    make_gpu(
                        1,
                        memory_used=20 * GiB,
                        errors=dict.fromkeys(PROCESS_QUERIES, "NOT_SUPPORTED"),
                    ),
                    make_gpu(2),
                ]
            ),
            "sigbsp": FakeState(
                gpus=[make_gpu(i) for i in range(3)]
                + [make_gpu(3, utilization_gpu=70, memory_used=4 * GiB)]
            ),
        }
        sims = {name: agents.add(name, state) for name, state in states.items()}
        sims["trlbsp"].env["GPUMON_IDLE_AFTER"] = "1"  # its claim is idle after a second
        agents.start(interval=0.5)
        trainer = agents.trainer(sims["trlbsp"], "0", "kws ch32")  # lww's (root's) claim
        assert trainer
        mine = {  # server → (GPU, uid) of a real process the fake NVML lists there
            "ganbsp": (0, niv_uid),
            "glpbsp": (0, 0),
            "lstmbbsp": (0, 0),
            "sigbsp": (3, niv_uid),
        }
        for name, (index, uid) in mine.items():
            pid = agents.workload("jupyter.py", user=uid)
            sims[name].nvml.state.gpus[index].compute_processes = [FakeProcess(pid, GiB)]
            sims[name].nvml.write()

        def listed() -> bool:
            for name, (index, _) in mine.items():
                report = Report.from_json(sims[name].snapshot.read_bytes())
                if not report.gpus[index].processes:
                    return False
            trl = Report.from_json(sims["trlbsp"].snapshot.read_bytes())
            return bool(trl.gpus[0].claimed_idle)

        _wait("the workloads and the idle claim in the agents' reports", listed)
        agents.restart(interval=3600)  # one sample each, from now on
        for path in (a.snapshot for a in agents.agents):
            assert Report.from_json(path.read_bytes())

        canned = {
            "ecbsp": [_quiet_gpu(0)],
            "relbsp": [_quiet_gpu(0)],
            "drlbsp": [
                _quiet_gpu(0, processes=[GpuProcess(77, user="niv", command="python train.py")]),
                _quiet_gpu(1),
            ],
            "grubsp": [
                _quiet_gpu(0, processes=[GpuProcess(78, user="niv", command="python train.py")]),
                *[_quiet_gpu(i) for i in (1, 2, 3)],
            ],
        }
        for name in SEED_SERVERS:
            if name in sims:
                ssh.add(name, behaviour=snapshot_behaviour(sims[name]))
            else:
                server = ssh.add(name)
                ssh.set_report(server, _report(name, server.address, canned[name]))
        ssh.start()

        workbook = seed_workbook(work / "sheet.xlsx")
        book = openpyxl.load_workbook(workbook)
        for cell, text in TYPED.items():
            book.active[cell] = text
        book.save(workbook)
        known = work / "known_hosts"
        known.write_text(ssh.known_hosts_text())
        config = work / "gpumon.toml"
        config.write_text(
            f'state_dir = "{work}/state"\n'
            f'[sheet]\npath = "{workbook}"\ntime_zone = "Asia/Seoul"\n'
            f'[poll]\nuser = "{niv}"\nknown_hosts = "{known}"\n'
            f'identity_files = ["{ssh.client_key}"]\nssh_config = "{work}/none"\n'
            "stale_after_s = 86400\n"
            f'[people]\nNiv = ["{niv}"]\nlww = ["root"]\n'
            + "".join(
                f'[servers.{s.name}]\nhost = "{s.address}"\nport = {ssh.port}\n'
                for s in ssh.servers
            )
        )
        # relbsp's GPU was left unused three days ago, as an older gpumon recorded it in
        # gpu-times.json: the first push moves it into the database.
        (work / "state").mkdir()
        key = times_key("relbsp", "GPU-canned-0", 0)
        (work / "state" / FILE_NAME).write_text(
            json.dumps(
                {
                    "version": 1,
                    "gpus": {
                        key: {
                            "idle_since": THREE_DAYS_AGO,
                            "unused_since": THREE_DAYS_AGO,
                            "seen": THREE_DAYS_AGO,
                        }
                    },
                }
            )
        )
        result = Run(work, workbook, config, niv)
        sheet = openpyxl.load_workbook(workbook).active
        result.typed = {f"C{r}": sheet[f"C{r}"].value for r in range(8, 31)}

        def push(label: str) -> None:
            done = _gpumon("--config", str(config), "push", cwd=work)
            result.outputs[label] = done
            assert done.returncode == 0, done.stderr
            result.states.append(_state_column(workbook))
            result.snapshots.append(snapshot(workbook, OWNED))
            result.times.append(_saved_times(work / "state"))

        push("push 1")
        for label, args in {
            "free": ["free", "--json"],
            "free table": ["free"],
            "free Niv": ["free", "--for", "Niv", "--json"],
            "free count": ["free", "--count", "3", "--for", "Niv"],
            "free count 5": ["free", "--count", "5"],
            "check": ["check"],
        }.items():
            result.outputs[label] = _gpumon("--config", str(config), *args, cwd=work)
        ssh.set_behaviour(next(s for s in ssh.servers if s.name == "ecbsp"), GARBAGE)
        for n in range(2, 6):
            push(f"push {n}")
        yield result
    finally:
        ssh.close()
        agents.close()


def test_every_state_comes_from_a_real_scenario(run):
    state = run.states[-1]
    off_since = state[12]
    assert off_since.startswith("server OFF since ")  # ecbsp: OFF from the second push on
    assert run.states[0][12] == "free"  # ...and free while it answered
    assert state == {
        8: "free — reserved by Changha",  # hcpbsp: a name that matches nobody still reserves
        9: "Niv ✓ python3 jupyter.py",  # ganbsp: "Niv, lww", Niv runs
        10: "lww — claimed 'kws ch32', idle 1 min",  # trlbsp: a claim through the hook, idle
        11: "lww — reserved by Niv",  # glpbsp: lww on Niv's GPU
        12: off_since,
        13: "lww ✓ python3 jupyter.py",  # lstmbbsp: "lww (exp 4)"
        14: "reserved by Niv — unused 3 d",  # relbsp: "Niv until 3/20", unused since 3 days
        15: "niv — reserved by jmy",  # drlbsp: a user named niv is not [people]'s Niv
        16: "free — reserved by jmy",
        17: "free — reserved by Niv",  # mlbsp
        18: "lost",
        19: "not found",  # the sheet's GPU 2 of mlbsp, which the server does not have
        20: "unknown use — reserved by lww",  # annbsp: NVML cannot list processes
        21: "in use (20.0 GiB used; processes unknown) — reserved by lww",
        22: "free — reserved by lww",
        23: "free — reserved by Niv",  # sigbsp: its first row alone reserves the server
        24: "free — reserved by Niv",
        25: "free — reserved by Niv",
        26: "Niv ✓ python3 jupyter.py",
        27: "niv — reserved by lww",  # grubsp
        28: "free — reserved by lww",
        29: "free — reserved by lww",
        30: "free — reserved by lww",
    }


def test_per_gpu_conflicts_are_in_the_servers_health(run):
    sheet = openpyxl.load_workbook(run.workbook).active
    assert "GPU 0: lww on Niv's reservation" in sheet[f"{HEALTH}11"].value
    assert "GPU 0: niv on jmy's reservation" in sheet[f"{HEALTH}15"].value
    assert "GPU 0: niv on lww's reservation" in sheet[f"{HEALTH}27"].value
    assert "reservation" not in sheet[f"{HEALTH}9"].value  # Niv on Niv's: no conflict


def _saved_times(state: Path) -> dict:
    """The GPUs' times as the database holds them, in the old file's shape."""
    conn = sqlite3.connect(f"file:{state / DB_NAME}?mode=ro", uri=True)
    try:
        rows = conn.execute(f"SELECT key, idle_since, unused_since, seen FROM {TABLE}").fetchall()
    finally:
        conn.close()
    return {"gpus": {k: {"idle_since": i, "unused_since": u, "seen": s} for k, i, u, s in rows}}


def test_unused_and_idle_times_survive_cron_pushes(run):
    key = next(k for k in run.times[0]["gpus"] if k.startswith("relbsp|"))
    kept = [t["gpus"][key]["unused_since"] for t in run.times]
    assert kept == [pytest.approx(THREE_DAYS_AGO)] * len(run.times)
    assert all(states[14] == "reserved by Niv — unused 3 d" for states in run.states)
    # Every GPU a server reported is counted, by server and UUID.
    assert len(run.times[-1]["gpus"]) >= 20
    assert not (run.work / "state" / FILE_NAME).exists()  # migrated by the first push
    mode = os.stat(run.work / "state" / DB_NAME).st_mode & 0o777
    assert mode == 0o600
    leftovers = [p.name for p in (run.work / "state").iterdir() if ".tmp" in p.name]
    assert leftovers == []


def test_peoples_cells_stay_byte_identical_after_many_pushes(run):
    sheet = openpyxl.load_workbook(run.workbook).active
    assert {f"C{r}": sheet[f"C{r}"].value for r in range(8, 31)} == run.typed
    first = run.snapshots[0]
    for later in run.snapshots[1:]:
        assert later == first


def test_each_push_costs_one_read_and_one_write(run):
    for n in range(2, 6):
        summary = run.outputs[f"push {n}"].stdout
        assert "(1 read, 1 write requests)" in summary, summary


def test_free_lists_only_gpus_nobody_uses_or_reserved_for_the_caller(run):
    done = run.outputs["free"]
    assert done.returncode == 0, done.stderr
    listed = [(g["server"], g["gpu"]) for g in json.loads(done.stdout)]
    # root is lww ([people]): free ones and lww's own reservations; ecbsp is least loaded
    assert listed[0] == ("ecbsp", 0)
    assert sorted(listed) == sorted(
        [("ecbsp", 0), ("annbsp", 2), ("grubsp", 1), ("grubsp", 2), ("grubsp", 3)]
    )
    first = json.loads(done.stdout)[0]
    assert first["uuid"] == "GPU-canned-0"
    assert first["memory_free_bytes"] == 11 * GiB - (5 << 20)
    assert first["reserved_by"] == []
    assert first["claim_command"] == "ssh ecbsp gpumon claim --gpus 0 -- …"
    assert ("annbsp", 0) not in listed and ("annbsp", 1) not in listed  # unknown is not free
    assert ("mlbsp", 1) not in listed  # lost


def test_free_for_someone_counts_their_reservations_as_free(run):
    done = run.outputs["free Niv"]
    listed = {(g["server"], g["gpu"]) for g in json.loads(done.stdout)}
    assert listed == {
        ("ecbsp", 0), ("mlbsp", 0), ("relbsp", 0), ("sigbsp", 0), ("sigbsp", 1), ("sigbsp", 2)
    }  # fmt: skip
    count = run.outputs["free count"]
    assert count.returncode == 0, count.stderr
    assert "ssh sigbsp gpumon claim --gpus 0,1,2 -- …" in count.stdout
    assert "ssh mlbsp" not in count.stdout  # one free GPU is not three


def test_free_says_when_no_server_has_enough(run):
    done = run.outputs["free count 5"]
    assert done.returncode == 1
    assert "no server has 5 GPUs free for root right now (most: 3 on grubsp)." in done.stdout


def test_free_prints_a_table_with_the_claim_commands(run):
    done = run.outputs["free table"]
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == ["SERVER", "GPU", "MEMORY", "FREE", "UTIL", "RESERVED", "BY",
                                "STATE"]  # fmt: skip
    assert "ssh grubsp gpumon claim --gpus 1,2,3 -- …" in lines


def test_check_names_each_unmatched_usage_name_once(run):
    out = run.outputs["check"].stdout
    unmatched = [line for line in out.splitlines() if "is no [people] name" in line]
    assert len(unmatched) == 2, out  # Changha, and jmy (both of its cells)
    assert any("'Changha' (C8)" in line for line in unmatched)
    assert any("'jmy' (C15, C16)" in line for line in unmatched)
    assert any('[people] Changha = ["unix-user"]' in line for line in unmatched)
