"""Scripted pushes for the alert tests: ServerResults as a poll gives them, a clock the test
moves, and one push's alerts as push_once runs them (gpumon.alerts.engine.PushAlerts)."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path

from gpumon.alerts.engine import AlertOutcome, PushAlerts
from gpumon.config import AlertsConfig, Config, Person
from gpumon.poll.result import ServerResult
from gpumon_agent.report import (
    ClaimInfo,
    Gpu,
    GpuProcess,
    HealthWarning,
    Host,
    Nvml,
    Report,
    utc_iso,
)

T0 = 1_552_543_200.0  # 2019-03-14 06:00:00 UTC
UTC = dt.timezone.utc


def on(
    name: str, at: float, warnings: list[HealthWarning] | None = None, gpus=None
) -> ServerResult:
    report = Report(
        generated_at=utc_iso(at),
        host=Host(hostname=name),
        nvml=Nvml(available=True),
        gpus=list(gpus or []),
        warnings=list(warnings or []),
    )
    return ServerResult(
        name=name, destination=f"{name}:22", on=True, polled_at=utc_iso(at), report=report,
        last_seen_on=utc_iso(at),
    )  # fmt: skip


def off(name: str, at: float, reason: str = "connection refused", seen: float | None = T0):
    return ServerResult(
        name=name, destination=f"{name}:22", on=False, polled_at=utc_iso(at),
        reason_code="refused", reason=reason,
        last_seen_on=utc_iso(seen) if seen is not None else None,
    )  # fmt: skip


def warn(code: str, message: str, gpu: int | None = None) -> HealthWarning:
    return HealthWarning(code=code, message=message, gpu_index=gpu)


def claimed_idle_gpu(index: int, user: str, job: str, idle_since: float) -> Gpu:
    claim = ClaimInfo(job=job, user=user, pid=4242, started_at=utc_iso(idle_since - 600))
    return Gpu(
        index=index, uuid=f"GPU-{index}", processes=[], claims=[claim], claimed_idle=True,
        idle_since=utc_iso(idle_since), unclaimed_use=False,
    )  # fmt: skip


def busy_gpu(index: int, user: str) -> Gpu:
    return Gpu(
        index=index, uuid=f"GPU-{index}",
        processes=[GpuProcess(pid=7, user=user, command="python train.py")],
        claims=[], claimed_idle=False, unclaimed_use=True,
    )  # fmt: skip


@dataclass
class GpuState:
    """The reservations issue's per-GPU record, as duck-typed input."""

    server: str
    gpu: int
    kind: str
    uuid: str | None = None
    users: list[str] = field(default_factory=list)
    reserved_by: list[str] = field(default_factory=list)
    claim_user: str | None = None
    claim_job: str | None = None
    idle_s: float | None = None
    unused_s: float | None = None


def config(state: Path, **alerts: object) -> Config:
    people = alerts.pop("people", {})
    return Config(
        path=str(state / "gpumon.toml"),
        state_dir=str(state),
        alerts=AlertsConfig(**alerts),  # type: ignore[arg-type]
        people=people,  # type: ignore[arg-type]
    )


def push(cfg: Config, results: list[ServerResult], at: float, gpu_states=None) -> AlertOutcome:
    """One push's alerts at time ``at`` (the sheet part of the push is not needed here)."""
    alerts = PushAlerts(cfg)
    try:
        alerts.mark_off_since(results)
        return alerts.after_push(results, gpu_states, UTC, now=at)
    finally:
        alerts.close()


def person(name: str, email: str, *users: str) -> Person:
    return Person(name=name, users=list(users), email=email)


def secret_file(folder: Path, name: str, text: str, mode: int = 0o600) -> Path:
    """A file holding a secret on its first line (the webhook URL, the SMTP password)."""
    path = folder / name
    path.write_text(text + "\n")
    path.chmod(mode)
    return path
