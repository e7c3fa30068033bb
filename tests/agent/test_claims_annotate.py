"""annotate(): what the sheet shows per GPU — who claimed it, use without a claim, and claimed
GPUs left idle past the limit, both in the daemon (history across samples) and one-shot."""

from __future__ import annotations

import os

from gpumon_agent.claims import (
    ClaimedGpu,
    ClaimRecord,
    ClaimRegistry,
    IdleTracker,
    annotate,
    apply_claims,
    new_record,
)
from gpumon_agent.report import Gpu, GpuProcess, Host, Report, utc_iso

T0 = 1_700_000_000.0
IDLE_AFTER = 600.0


def report(*gpus: Gpu, at: float = T0) -> Report:
    return Report(generated_at=utc_iso(at), host=Host(hostname="gpu1"), gpus=list(gpus))


def gpu(index: int, *pids: int) -> Gpu:
    return Gpu(
        index=index, uuid=f"GPU-{index}", processes=[GpuProcess(pid=p, user="alice") for p in pids]
    )


def claim_on(index: int, started: float = T0, pid: int = 4242, job: str = "kws") -> ClaimRecord:
    return ClaimRecord(
        job=job,
        user="alice",
        uid=1000,
        pid=pid,
        pid_started=0.0,
        hostname="gpu1",
        command="python train.py",
        started_at=utc_iso(started),
        gpus=[ClaimedGpu(index=index, uuid=f"GPU-{index}")],
        progress={"epoch": 1},
    )


def test_a_process_on_a_gpu_no_claim_covers_is_unclaimed_use():
    r = report(gpu(0, 100), gpu(1, 200), gpu(2))
    annotate(r, [claim_on(1)], IdleTracker(), IDLE_AFTER, T0 + 1)
    assert [g.unclaimed_use for g in r.gpus] == [True, False, False]
    assert r.gpus[0].claims == [] and r.gpus[2].claims == []
    assert r.gpus[2].idle_since is None  # unclaimed and never seen busy: unknown


def test_claim_covers_its_childrens_processes_by_gpu_not_by_pid():
    # The claim was made by pid 4242; its dataloader workers 5001, 5002 run on the GPU.
    r = report(gpu(1, 5001, 5002))
    annotate(r, [claim_on(1, pid=4242)], IdleTracker(), IDLE_AFTER, T0 + 1)
    assert not r.gpus[0].unclaimed_use
    assert [(c.job, c.pid, c.progress) for c in r.gpus[0].claims] == [("kws", 4242, {"epoch": 1})]


def test_claim_matches_by_uuid_even_when_indices_differ():
    moved = claim_on(0)
    moved.gpus = [ClaimedGpu(index=5, uuid="GPU-0")]
    r = report(gpu(0, 100))
    annotate(r, [moved], IdleTracker(), IDLE_AFTER, T0)
    assert not r.gpus[0].unclaimed_use and len(r.gpus[0].claims) == 1


def test_daemon_history_flags_a_claimed_gpu_idle_only_after_the_limit():
    tracker = IdleTracker()
    claims = [claim_on(0, started=T0 - 100)]
    busy = report(gpu(0, 100))
    annotate(busy, claims, tracker, IDLE_AFTER, T0)
    assert busy.gpus[0].idle_since is None and not busy.gpus[0].claimed_idle

    soon = report(gpu(0))
    annotate(soon, claims, tracker, IDLE_AFTER, T0 + 599)
    assert soon.gpus[0].idle_since == utc_iso(T0)
    assert not soon.gpus[0].claimed_idle

    later = report(gpu(0))
    annotate(later, claims, tracker, IDLE_AFTER, T0 + 600)
    assert later.gpus[0].idle_since == utc_iso(T0)
    assert later.gpus[0].claimed_idle

    back = report(gpu(0, 100))
    annotate(back, claims, tracker, IDLE_AFTER, T0 + 601)
    assert back.gpus[0].idle_since is None and not back.gpus[0].claimed_idle


def test_the_idle_limit_is_configurable():
    claims = [claim_on(0, started=T0)]
    r = report(gpu(0))
    annotate(r, claims, IdleTracker(), 30.0, T0 + 31)
    assert r.gpus[0].claimed_idle


def test_a_new_claim_gets_the_full_idle_allowance():
    tracker = IdleTracker()
    annotate(report(gpu(0, 100)), [], tracker, IDLE_AFTER, T0)  # last process left at T0
    r = report(gpu(0))
    annotate(r, [claim_on(0, started=T0 + 650)], tracker, IDLE_AFTER, T0 + 700)
    assert r.gpus[0].idle_since == utc_iso(T0 + 650)
    assert not r.gpus[0].claimed_idle
    # Unclaimed, the same GPU just reports how long it has been free.
    r2 = report(gpu(0))
    annotate(r2, [], tracker, IDLE_AFTER, T0 + 700)
    assert r2.gpus[0].idle_since == utc_iso(T0) and not r2.gpus[0].claimed_idle


def test_one_shot_without_history_counts_idle_from_the_claim_start():
    r = report(gpu(0), gpu(1))
    claims = [claim_on(0, started=T0 - 1000), claim_on(1, started=T0 - 10)]
    annotate(r, claims, IdleTracker(), IDLE_AFTER, T0)
    assert r.gpus[0].claimed_idle and r.gpus[0].idle_since == utc_iso(T0 - 1000)
    assert not r.gpus[1].claimed_idle


def test_one_shot_seeded_from_the_previous_snapshot_knows_recent_use():
    previous = report(gpu(0, 100), gpu(1), at=T0 - 60)
    previous.gpus[1].idle_since = utc_iso(T0 - 5000)
    tracker = IdleTracker.from_report(previous)
    claims = [claim_on(0, started=T0 - 1000), claim_on(1, started=T0 - 9000)]
    r = report(gpu(0), gpu(1))
    annotate(r, claims, tracker, IDLE_AFTER, T0)
    # GPU 0 was busy a minute ago: not idle; GPU 1 has been free since T0-5000.
    assert r.gpus[0].idle_since == utc_iso(T0 - 60) and not r.gpus[0].claimed_idle
    assert r.gpus[1].idle_since == utc_iso(T0 - 5000) and r.gpus[1].claimed_idle
    assert IdleTracker.from_report(None).last_busy == {}


def test_apply_claims_annotates_from_the_registry_and_reports_bad_files(tmp_path):
    registry = ClaimRegistry(str(tmp_path / "claims"))
    registry.ensure()
    mine = new_record("live job", "cmd", [gpu(0)])
    registry.create(mine)
    bad = os.path.join(registry.path, f"u{os.geteuid()}-p1-abcdef.json")
    with open(bad, "w") as f:
        f.write("[]")
    r = report(gpu(0, os.getpid()), gpu(1, 999))
    apply_claims(r, registry, IdleTracker(), IDLE_AFTER)
    assert [c.job for c in r.gpus[0].claims] == ["live job"]
    assert [g.unclaimed_use for g in r.gpus] == [False, True]
    assert [(e.path, e.error) for e in r.claim_errors] == [(bad, "not a JSON object")]
    assert Report.from_json(r.to_json()) == r


def unknown(index: int) -> Gpu:
    return Gpu(
        index=index,
        uuid=f"GPU-{index}",
        processes=None,
        processes_error="nvmlDeviceGetComputeRunningProcesses_v3: Not Supported",
    )


def test_unknown_processes_give_no_unclaimed_use_and_no_claimed_idle_verdict():
    r = report(unknown(0), unknown(1))
    annotate(r, [claim_on(1, started=T0 - 10 * IDLE_AFTER)], IdleTracker(), IDLE_AFTER, T0)
    free_looking, claimed = r.gpus
    assert (free_looking.unclaimed_use, free_looking.claimed_idle) == (None, False)
    assert (claimed.unclaimed_use, claimed.claimed_idle) == (False, None)  # a claim covers it
    assert free_looking.idle_since is None and claimed.idle_since is None
    assert len(claimed.claims) == 1


def test_a_stretch_of_unknown_processes_counts_as_busy_for_the_idle_clock():
    tracker = IdleTracker()
    claims = [claim_on(0, started=T0 - 10 * IDLE_AFTER)]
    annotate(report(unknown(0)), claims, tracker, IDLE_AFTER, T0)
    listed_none = report(gpu(0))
    annotate(listed_none, claims, tracker, IDLE_AFTER, T0 + 10)
    assert listed_none.gpus[0].idle_since == utc_iso(T0)  # idle only since it was last unknown
    assert listed_none.gpus[0].claimed_idle is False

    seeded = IdleTracker.from_report(report(unknown(0), at=T0 + 100))
    assert seeded.last_busy["GPU-0"] == T0 + 100
