"""CPU-only claims: a job that holds no GPU but is seen (`gpumon claim --cpu`, ``claim(cpu=True)``).
A claim file with ``"cpu": true`` and no GPUs, checked like every claim; in the Report's
``cpu_claims``; listed by `gpumon-agent claims`; never allocated against."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from gpumon_agent.claims import (
    ClaimError,
    ClaimRecord,
    ClaimRegistry,
    IdleTracker,
    InvalidClaimFile,
    annotate,
    choose_gpus,
    new_record,
)
from gpumon_agent.report import Gpu, Host, Report, ReportError, utc_iso
from harness.fakenvml import FakeState

BIN = Path(sys.executable).parent
GPUMON, AGENT = str(BIN / "gpumon"), str(BIN / "gpumon-agent")

TRAINER = """
import json, os, sys
from gpumon_agent.hook import claim
with claim(cpu=True, job=sys.argv[1]) as c:
    c.update(epoch=2, epochs=10)
    print(json.dumps({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"), "active": c.active,
                      "indices": c.gpu_indices, "file": json.load(open(c.record.path))}))
print(json.dumps({"cvd": os.environ.get("CUDA_VISIBLE_DEVICES"),
                  "left": sorted(n for n in os.listdir(os.environ["GPUMON_CLAIMS_DIR"])
                                 if not n.startswith("."))}))
"""


def cpu_dict() -> dict:
    return new_record("kws ch32", "python -m kws train", [], cpu=True).to_dict()


def test_a_cpu_claim_round_trips_with_no_gpus_and_the_cpu_marker():
    data = cpu_dict()
    assert data["cpu"] is True and data["gpus"] == []
    record = ClaimRecord.from_dict(json.loads(json.dumps(data)))
    assert record.cpu and record.gpus == [] and record.job == "kws ch32"
    assert not record.covers(Gpu(index=0)) and not record.covers(Gpu(index=0, uuid="GPU-a"))


def test_a_claim_file_without_the_cpu_field_is_a_gpu_claim_as_before():
    data = new_record("j", "c", [Gpu(index=1)]).to_dict()
    del data["cpu"]  # as gpumon-agent before CPU claims wrote it
    record = ClaimRecord.from_dict(data)
    assert not record.cpu and [g.index for g in record.gpus] == [1]


@pytest.mark.parametrize(
    "change, why",
    [
        ({"gpus": [{"index": 0, "uuid": None}]}, "a CPU claim ('cpu': true) claims no GPU"),
        ({"cpu": "yes"}, "field 'cpu': expected bool, got str"),
        ({"cpu": 1}, "field 'cpu': expected bool, got int"),
        ({"cpu": False}, "claims no GPU (and is not a CPU claim)"),
        ({"cpu": None}, "field 'cpu': expected bool, got NoneType"),
        ({"job": "x" * 201}, "field 'job': longer than 200 characters"),
        ({"gpus": {}}, "field 'gpus': expected list, got dict"),
    ],
)
def test_hostile_cpu_claim_content_is_refused_naming_the_field(change, why):
    with pytest.raises(InvalidClaimFile) as caught:
        ClaimRecord.from_dict(dict(cpu_dict(), **change))
    assert why in str(caught.value)


def test_new_record_is_either_a_gpu_claim_or_a_cpu_claim():
    with pytest.raises(ValueError):
        new_record("j", "c", [Gpu(index=0)], cpu=True)
    with pytest.raises(ValueError):
        new_record("j", "c", [])


def test_hostile_cpu_claim_files_in_the_registry_cost_only_themselves(tmp_path):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    good = new_record("real cpu job", "cmd", [], cpu=True)
    reg.create(good)
    me, pid = os.geteuid(), os.getpid()
    base = cpu_dict()
    cases = {
        "c0ffee01": json.dumps(dict(base, cpu=True, gpus=[{"index": 0, "uuid": None}] * 65)),
        "c0ffee02": json.dumps(dict(base, cpu="true")),
        "c0ffee03": json.dumps(dict(base, job="\u202e\x1b[31m" + "ｘ" * 300)),
        "c0ffee04": json.dumps(dict(base, progress={"a": [[[[[[[[[1]]]]]]]]]})),
        "c0ffee05": json.dumps(dict(base, pid=1)),  # named for this pid, claims pid 1
        "c0ffee06": json.dumps(base)[:-1],  # cut short
    }
    for tag, text in cases.items():
        (tmp_path / "claims" / f"u{me}-p{pid}-{tag}.json").write_text(text)
    live, errors = reg.live_claims()
    assert [(c.job, c.cpu) for c in live] == [("real cpu job", True)]
    reasons = {os.path.basename(e.path).split("-")[2][:8]: e.error for e in errors}
    assert set(reasons) == set(cases)
    assert "a CPU claim ('cpu': true) claims no GPU" in reasons["c0ffee01"]
    assert "field 'cpu': expected bool" in reasons["c0ffee02"]
    assert "longer than 200 characters" in reasons["c0ffee03"]
    assert "nested deeper than 8" in reasons["c0ffee04"]
    assert "records pid 1 but is named for pid" in reasons["c0ffee05"]
    assert reasons["c0ffee06"].startswith("not JSON")


def test_a_cpu_claim_of_a_dead_process_is_stale_and_removed(tmp_path):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    gone = subprocess.Popen(["sleep", "30"])
    record = new_record("gone", "sleep 30", [], pid=gone.pid, cpu=True)
    reg.create(record)
    assert [c.job for c in reg.live_claims()[0]] == ["gone"]
    gone.kill()
    gone.wait()
    assert reg.live_claims() == ([], [])
    assert not os.path.exists(record.path)


def test_annotate_puts_cpu_claims_in_the_report_and_on_no_gpu():
    gpus = [Gpu(index=0, uuid="GPU-a", processes=[]), Gpu(index=1, uuid="GPU-b", processes=[])]
    report = Report(generated_at=utc_iso(), host=Host(hostname="h"), gpus=gpus)
    cpu = new_record("kws ch32", "cmd", [], cpu=True)
    on_gpu = new_record("bert", "cmd", [gpus[1]])
    annotate(report, [cpu, on_gpu], IdleTracker(), 600.0)
    assert [c.job for c in report.cpu_claims] == ["kws ch32"]
    assert [c.job for c in report.gpus[1].claims] == ["bert"] and report.gpus[0].claims == []
    assert report.gpus[0].claimed_idle is False  # a CPU claim makes no GPU "claimed"
    # ...and auto still hands out GPU 0: a CPU claim takes no GPU.
    assert [g.index for g in choose_gpus(gpus, [cpu, on_gpu], None, 1)] == [0]


def test_a_v2_report_without_cpu_claims_reads_as_none_and_the_field_is_bounded():
    report = Report(generated_at=utc_iso(), host=Host(hostname="h"))
    data = report.to_dict()
    del data["cpu_claims"]  # an agent from before CPU claims
    assert Report.from_dict(data).cpu_claims == []
    claim = {"job": "j" * 5000, "user": "u", "pid": 3, "started_at": utc_iso()}
    data["cpu_claims"] = [claim] * 500
    got = Report.from_dict(data).cpu_claims
    assert len(got) == 128 and len(got[0].job) == 256
    data["cpu_claims"] = [dict(claim, pid=-5)]
    with pytest.raises(ReportError, match=r"report\.cpu_claims\[0\]\.pid"):
        Report.from_dict(data)
    data["cpu_claims"] = "lots"
    with pytest.raises(ReportError, match="cpu_claims: expected an array"):
        Report.from_dict(data)


def test_claim_cpu_true_needs_no_nvml_records_the_job_and_releases_it(no_nvml_env, tmp_path):
    claims = tmp_path / "claims"
    env = dict(no_nvml_env, GPUMON_CLAIMS_DIR=str(claims), CUDA_VISIBLE_DEVICES="3")
    done = subprocess.run(
        [sys.executable, "-c", TRAINER, "kws ch32"], env=env, capture_output=True, text=True,
        timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    inside, after = (json.loads(line) for line in done.stdout.splitlines())
    assert inside["cvd"] == "" and inside["active"] is True and inside["indices"] == []
    record = inside["file"]
    assert record["cpu"] is True and record["gpus"] == [] and record["job"] == "kws ch32"
    assert record["progress"] == {"epoch": 2, "epochs": 10}
    assert after == {"cvd": "3", "left": []}  # released, CUDA_VISIBLE_DEVICES put back


def test_claim_cpu_true_with_gpus_named_is_a_claim_error():
    from gpumon_agent.hook import claim

    with pytest.raises(ClaimError, match="claims no GPU"):
        claim(cpu=True, gpus=[0])


def cli(*args: str, env: dict, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), env=env, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def cpu_env(fake_nvml, tmp_path) -> dict:
    fake = fake_nvml(FakeState.with_gpus(2))
    env = fake.env(log=False)
    env["GPUMON_CLAIMS_DIR"] = str(tmp_path / "claims")
    env["PATH"] = str(BIN) + os.pathsep + env["PATH"]
    env.pop("CUDA_VISIBLE_DEVICES", None)
    return env


def test_gpumon_claim_cpu_runs_the_command_listed_as_cpu_and_releases(cpu_env, tmp_path):
    script = 'echo "[$CUDA_VISIBLE_DEVICES]"; gpumon-agent claims; gpumon-agent claims --json'
    done = cli(GPUMON, "claim", "--cpu", "--job", "kws ch32", "--", "sh", "-c", script, env=cpu_env)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0] == "[]"
    assert lines[1].split()[:2] == ["GPUS", "USER"]
    assert lines[2].split()[0] == "CPU" and "kws ch32" in lines[2]
    listed = json.loads("\n".join(lines[3:]))
    assert [(c["job"], c["cpu"], c["gpus"]) for c in listed["claims"]] == [("kws ch32", True, [])]
    assert listed["errors"] == []
    assert sorted(n for n in os.listdir(tmp_path / "claims") if not n.startswith(".")) == []


def test_gpumon_claim_cpu_works_without_nvml(no_nvml_env, tmp_path):
    env = dict(no_nvml_env, GPUMON_CLAIMS_DIR=str(tmp_path / "claims"))
    done = cli(GPUMON, "claim", "--cpu", "--", "sh", "-c", "exit 4", env=env)
    assert done.returncode == 4, done.stderr


@pytest.mark.parametrize("extra", [["--gpus", "0"], ["--gpus", "auto"], ["--count", "2"]])
def test_gpumon_claim_cpu_refuses_gpu_flags_and_runs_nothing(cpu_env, tmp_path, extra):
    started = tmp_path / "started"
    done = cli(GPUMON, "claim", "--cpu", *extra, "--", "touch", str(started), env=cpu_env)
    assert done.returncode == 2
    assert "--cpu claims no GPU; leave out --gpus and --count" in done.stderr
    assert not started.exists()


def test_a_gpu_claim_inside_gpumon_claim_cpu_adopts_it_and_gets_no_gpu(cpu_env):
    code = (
        "import os\nfrom gpumon_agent.hook import claim\n"
        "with claim(job='inner') as c:\n"
        "    print(c.adopted, repr(c.cuda_visible_devices), c.gpu_indices, c.job)\n"
    )
    done = cli(GPUMON, "claim", "--cpu", "--job", "outer", "--", sys.executable, "-c", code,
               env=cpu_env)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["True", "''", "[]", "outer"]
    named = code.replace("claim(job='inner')", "claim(gpus=[0], job='inner')")
    done = cli(GPUMON, "claim", "--cpu", "--", sys.executable, "-c", named, env=cpu_env)
    assert done.returncode == 1 and "a CPU-only job: it holds no GPU" in done.stderr


def test_help_tells_of_cpu():
    done = cli(GPUMON, "claim", "--help", env=dict(os.environ))
    assert done.returncode == 0
    assert "--cpu" in done.stdout and "Job cell" in done.stdout
