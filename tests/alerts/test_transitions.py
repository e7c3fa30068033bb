"""Each event once per transition, grouped per push, repeated only after repeat_s — judged over
scripted pushes (results as a poll gives them, a clock moved by the test), the state kept in
the state directory's SQLite file between them, messages received by a real HTTP receiver and a
real SMTP server on loopback."""

from __future__ import annotations

import os
import sqlite3
import stat

import pytest
from alertkit import (
    T0,
    GpuState,
    busy_gpu,
    claimed_idle_gpu,
    config,
    off,
    on,
    person,
    push,
    warn,
)

from gpumon.alerts.state import DATABASE, MAX_PENDING, AlertStore

SERVERS = ["hcpbsp", "ganbsp", "trlbsp", "glpbsp", "ecbsp", "mlbsp"]


@pytest.fixture
def cfg(tmp_path, hook):
    return config(tmp_path / "state", webhook=hook.url())


def test_one_failed_poll_is_not_an_alert_and_a_blip_is_never_told(cfg, hook):
    push(cfg, [on("mlbsp", T0)], T0)
    push(cfg, [off("mlbsp", T0 + 60)], T0 + 60)  # 0 s of the 120 s
    push(cfg, [off("mlbsp", T0 + 120)], T0 + 120)  # 60 s
    push(cfg, [on("mlbsp", T0 + 170)], T0 + 170)  # back before down_after_s
    assert hook.wait(1, timeout_s=0.3) == []


def test_down_after_down_after_s_once_over_many_pushes_then_back_once(cfg, hook):
    push(cfg, [on("mlbsp", T0)], T0)
    for minute in range(1, 30):
        push(cfg, [off("mlbsp", T0 + 60 * minute, "timed out at connect (3 s)")], T0 + 60 * minute)
    [down] = hook.wait(1)
    assert down.text.splitlines() == [
        "gpumon: down: mlbsp",
        "DOWN    mlbsp: timed out at connect (3 s); OFF since 2019-03-14 06:01:00, last seen ON "
        "2019-03-14 06:00:00",
    ]
    push(cfg, [on("mlbsp", T0 + 1860)], T0 + 1860)
    hooks = hook.wait(2)
    assert len(hooks) == 2
    assert hooks[1].text.splitlines() == [
        "gpumon: back ON: mlbsp",
        "BACK    mlbsp: ON again after 30 min down (OFF since 2019-03-14 06:01:00)",
    ]
    push(cfg, [on("mlbsp", T0 + 1920)], T0 + 1920)
    assert len(hook.wait(3, timeout_s=0.3)) == 2


def test_down_after_s_from_the_config(tmp_path, hook):
    cfg = config(tmp_path / "state", webhook=hook.url(), down_after_s=600)
    push(cfg, [on("mlbsp", T0)], T0)
    for minute in range(1, 11):
        push(cfg, [off("mlbsp", T0 + 60 * minute)], T0 + 60 * minute)
    assert hook.wait(1, timeout_s=0.3) == []  # 9 min of the 10
    push(cfg, [off("mlbsp", T0 + 660)], T0 + 660)
    assert "DOWN    mlbsp" in hook.wait(1)[0].text


def test_five_servers_down_together_are_one_message(cfg, hook):
    push(cfg, [on(n, T0) for n in SERVERS], T0)
    for minute in (1, 2, 3):
        t = T0 + 60 * minute
        push(cfg, [off(n, t) if n != "mlbsp" else on(n, t) for n in SERVERS], t)
    [message] = hook.wait(1)
    lines = message.text.splitlines()
    assert lines[0] == "gpumon: down: ecbsp, ganbsp, glpbsp, hcpbsp +1"
    assert sorted(line.split()[1] for line in lines[1:]) == [
        "ecbsp:", "ganbsp:", "glpbsp:", "hcpbsp:", "trlbsp:",
    ]  # fmt: skip
    assert len(hook.wait(2, timeout_s=0.3)) == 1


def test_a_server_down_when_gpumon_starts_is_told_once(cfg, hook):
    for minute in range(0, 10):
        t = T0 + 60 * minute
        push(cfg, [on("hcpbsp", t), off("mlbsp", t, seen=None)], t)
    [message] = hook.wait(1)
    assert "never seen ON — already down when gpumon started watching it" in message.text
    assert len(hook.wait(2, timeout_s=0.3)) == 1


def test_a_lasting_condition_is_repeated_after_repeat_s_only(tmp_path, hook):
    cfg = config(tmp_path / "state", webhook=hook.url(), repeat_s=3600)
    push(cfg, [on("mlbsp", T0)], T0)
    for minute in range(1, 130, 2):
        push(cfg, [off("mlbsp", T0 + 60 * minute)], T0 + 60 * minute)
    texts = [h.text for h in hook.wait(3, timeout_s=0.5)]
    assert [t.splitlines()[0] for t in texts] == [
        "gpumon: down: mlbsp",
        "gpumon: still down: mlbsp",
        "gpumon: still down: mlbsp",
    ]
    # Told at minute 3 (down since minute 1), again at minute 63 and 123.
    assert "STILL   mlbsp: down for 62 min — connection refused" in texts[1]


def test_health_warnings_raised_with_figures_and_cleared(cfg, hook):
    push(cfg, [on("ganbsp", T0)], T0)
    hot = [
        warn("memory_high", "memory 93% used"),
        warn("gpu_temperature_high", "GPU 1 at 91 °C", 1),
    ]
    push(cfg, [on("ganbsp", T0 + 60, hot)], T0 + 60)
    hotter = [
        warn("memory_high", "memory 97% used"),
        warn("gpu_temperature_high", "GPU 1 at 92 °C", 1),
    ]
    push(cfg, [on("ganbsp", T0 + 120, hotter)], T0 + 120)  # the same warnings: nothing new
    push(cfg, [on("ganbsp", T0 + 180, hotter[1:])], T0 + 180)  # memory back to normal
    push(cfg, [on("ganbsp", T0 + 240)], T0 + 240)
    texts = [h.text.splitlines() for h in hook.wait(3)]
    assert texts[0] == [
        "gpumon: warning: ganbsp",
        "WARNING ganbsp: GPU 1 at 91 °C",
        "WARNING ganbsp: memory 93% used",
    ]
    assert texts[1] == ["gpumon: cleared: ganbsp", "CLEARED ganbsp: memory 97% used (after 2 min)"]
    assert texts[2] == ["gpumon: cleared: ganbsp", "CLEARED ganbsp: GPU 1 at 92 °C (after 3 min)"]
    assert len(hook.wait(4, timeout_s=0.3)) == 3


def test_a_server_that_dies_of_overload_keeps_its_warnings_and_names_them(cfg, hook):
    dying = [warn("memory_high", "memory 99% used"), warn("swap_high", "swap 87% used")]
    push(cfg, [on("trlbsp", T0, dying)], T0)
    for minute in (1, 2, 3, 4):
        push(cfg, [off("trlbsp", T0 + 60 * minute)], T0 + 60 * minute)
    push(cfg, [on("trlbsp", T0 + 300)], T0 + 300)  # rebooted, healthy
    texts = [h.text.splitlines() for h in hook.wait(3)]
    assert len(texts) == 3, texts
    assert texts[0][0] == "gpumon: warning: trlbsp"
    # Going down clears nothing; the down message says what it was warned of.
    assert texts[1][1].endswith("its last warnings: memory 99% used; swap 87% used")
    # Seen healthy again: back and cleared, in the one message of that push.
    assert texts[2] == [
        "gpumon: back ON: trlbsp; cleared: trlbsp",
        "BACK    trlbsp: ON again after 4 min down (OFF since 2019-03-14 06:01:00)",
        "CLEARED trlbsp: memory 99% used (after 5 min)",
        "CLEARED trlbsp: swap 87% used (after 5 min)",
    ]
    assert len(hook.wait(4, timeout_s=0.3)) == 3


def test_claimed_but_idle_is_told_to_the_claim_owner_by_mail(tmp_path, hook, smtp):
    cfg = config(
        tmp_path / "state", webhook=hook.url(), smtp=smtp.address, smtp_tls="none",
        email_from="gpumon@lab.example", email_to=["lab@lab.example"],
        people={"Lee": person("Lee", "lww@lab.example", "lww")},
    )  # fmt: skip
    idle = [claimed_idle_gpu(1, "lww", "kws ch32", idle_since=T0 - 3 * 3600)]
    push(cfg, [on("mlbsp", T0, gpus=idle)], T0)
    [mail] = smtp.wait(1)
    assert mail.recipients == ["lww@lab.example"]
    assert "mlbsp GPU 1: claimed by lww for 'kws ch32', idle for 3 h" in mail.body
    assert hook.wait(1, timeout_s=0.3) == []  # not the lab's business while its owner is told
    push(cfg, [on("mlbsp", T0 + 60, gpus=[busy_gpu(1, "lww")])], T0 + 60)
    assert "no longer claimed but idle" in smtp.wait(2)[1].body


def test_claimed_idle_below_claimed_idle_h_or_without_an_address(tmp_path, hook):
    cfg = config(tmp_path / "state", webhook=hook.url(), claimed_idle_h=2)
    push(cfg, [on("mlbsp", T0, gpus=[claimed_idle_gpu(0, "lww", "kws", T0 - 3600)])], T0)
    assert hook.wait(1, timeout_s=0.3) == []  # idle 1 h of 2
    later = T0 + 3600 + 60
    push(cfg, [on("mlbsp", later, gpus=[claimed_idle_gpu(0, "lww", "kws", T0 - 3600)])], later)
    assert "claimed by lww for 'kws', idle for 2 h" in hook.wait(1)[0].text  # no address: the lab


def test_gpu_events_from_the_reservations_gpu_states(tmp_path, hook, smtp):
    cfg = config(
        tmp_path / "state", webhook=hook.url(), smtp=smtp.address, smtp_tls="none",
        email_from="gpumon@lab.example", people={"Niv": person("Niv", "niv@lab.example", "niv")},
    )  # fmt: skip
    states = [
        GpuState("mlbsp", 0, "other_on_reserved", "GPU-a", users=["lww"], reserved_by=["Niv"]),
        GpuState("mlbsp", 1, "reserved_unused", "GPU-b", reserved_by=["Niv"], unused_s=3 * 86400),
        GpuState("mlbsp", 2, "reserved_unused", "GPU-c", reserved_by=["Kim"], unused_s=3600),
        GpuState("mlbsp", 3, "free", "GPU-d"),
    ]
    push(cfg, [on("mlbsp", T0)], T0, gpu_states=states)
    [lab] = hook.wait(1)
    assert "mlbsp GPU 0: lww running on a GPU reserved by Niv" in lab.text
    assert "GPU 1" not in lab.text  # Niv has an address: the reservation is Niv's business
    [niv] = smtp.wait(1)
    assert niv.recipients == ["niv@lab.example"]
    assert "GPU 0: lww running on a GPU reserved by Niv" in niv.body
    assert "GPU 1: reserved by Niv, unused for 3 days" in niv.body
    assert "GPU 2" not in niv.body  # 1 h of the 24
    # The GPU cannot be seen for a push (lost): held, not cleared; then used by Niv: cleared.
    states[0] = GpuState("mlbsp", 0, "lost", "GPU-a")
    push(cfg, [on("mlbsp", T0 + 60)], T0 + 60, gpu_states=states)
    assert len(hook.wait(2, timeout_s=0.3)) == 1
    states[0] = GpuState("mlbsp", 0, "reserver_running", "GPU-a", users=["niv"])
    push(cfg, [on("mlbsp", T0 + 120)], T0 + 120, gpu_states=states)
    assert "CLEARED mlbsp GPU 0: no longer not theirs" in hook.wait(2)[1].text


def test_gpu_state_records_of_the_wrong_shape_are_skipped_not_fatal(cfg, hook):
    class Broken:
        server = "mlbsp"
        gpu = "not a number"

    states = [Broken(), GpuState("mlbsp", 0, "other_on_reserved", users=["x"], idle_s=float("nan"))]
    outcome = push(cfg, [on("mlbsp", T0)], T0, gpu_states=states)
    assert outcome.warnings == []
    assert hook.wait(1, timeout_s=0.3) == []  # the NaN record is refused too


def test_a_failing_channel_keeps_the_message_and_folds_it_into_the_next(cfg, hook):
    hook.status = 500
    push(cfg, [on("mlbsp", T0, [warn("load_high", "load 41.0 (5 min) above 32 CPUs")])], T0)
    outcome = push(cfg, [on("mlbsp", T0 + 60, [])], T0 + 60)
    assert outcome.failed and "HTTP 500" in outcome.failed[0]
    assert "2 message(s) kept, retried at the next push" in outcome.failed[0]
    assert hook.attempts == 2
    hook.status = 200
    outcome = push(cfg, [on("mlbsp", T0 + 120, [])], T0 + 120)  # nothing new: the backlog goes
    assert outcome.failed == [] and outcome.sent
    [got] = hook.wait(1)
    lines = got.text.splitlines()
    assert lines[0] == "gpumon: cleared: mlbsp (+1 delayed)"
    assert "— 2019-03-14 06:00:00 —" in lines and "— 2019-03-14 06:01:00 —" in lines
    assert "WARNING mlbsp: load 41.0 (5 min) above 32 CPUs" in lines
    with AlertStore.at(cfg.state_path("")) as store:
        assert store.pending() == []
        [status] = store.channels()
        assert status.error is None and status.failures == 0


def test_a_channel_failing_for_days_keeps_only_the_latest_messages(cfg, hook):
    hook.status = 500
    for i in range(MAX_PENDING + 5):
        warnings = [warn("load_high", "load high")] if i % 2 == 0 else []
        push(cfg, [on("mlbsp", T0 + 60 * i, warnings)], T0 + 60 * i)
    with AlertStore.at(cfg.state_path("")) as store:
        assert len(store.pending()) == MAX_PENDING
        assert store.channels()[0].dropped == 5
    hook.status = 200
    push(cfg, [on("mlbsp", T0 + 86400)], T0 + 86400)  # queues one more: 6 dropped in all
    assert "(6 older message(s) were dropped while this channel failed)" in hook.wait(1)[0].text


def test_a_channel_taken_out_of_the_config_drops_its_backlog(tmp_path, hook):
    cfg = config(tmp_path / "state", webhook=hook.url())
    hook.status = 500
    push(cfg, [on("mlbsp", T0, [warn("load_high", "load high")])], T0)
    cfg.alerts.webhook = None
    outcome = push(cfg, [on("mlbsp", T0 + 60)], T0 + 60)
    assert any("1 undelivered message(s) dropped" in w for w in outcome.warnings)
    with AlertStore.at(cfg.state_path("")) as store:
        assert store.pending() == [] and store.channels() == []


def test_without_a_channel_conditions_are_still_kept(tmp_path):
    cfg = config(tmp_path / "state")
    push(cfg, [on("mlbsp", T0)], T0)
    for minute in (1, 2, 3):
        push(cfg, [off("mlbsp", T0 + 60 * minute)], T0 + 60 * minute)
    with AlertStore.at(cfg.state_path("")) as store:
        [down] = store.conditions().values()
        assert down.kind == "down" and down.sent_at is not None
        assert store.pending() == []


def test_the_off_since_time_is_the_first_failed_poll_across_pushes(cfg):
    push(cfg, [on("mlbsp", T0)], T0)
    push(cfg, [off("mlbsp", T0 + 60)], T0 + 60)
    later = [off("mlbsp", T0 + 600)]
    push(cfg, later, T0 + 600)
    assert later[0].off_since == "2019-03-14T06:01:00Z"


def test_the_state_file_is_private_and_holds_no_secret(cfg, hook):
    push(cfg, [on("mlbsp", T0, [warn("load_high", "load high")])], T0)
    path = cfg.state_path(DATABASE)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    for name in os.listdir(path.parent):
        assert b"s3cr3t" not in (path.parent / name).read_bytes()


def test_a_damaged_state_file_is_moved_aside_and_a_new_one_started(cfg, hook):
    path = cfg.state_path(DATABASE)
    path.parent.mkdir(parents=True)
    path.write_bytes(b"this is not a database, but garbage " * 100)
    outcome = push(cfg, [on("mlbsp", T0, [warn("load_high", "load high")])], T0)
    assert any("not a database" in w and "moved to" in w for w in outcome.warnings)
    assert [p for p in os.listdir(path.parent) if ".bad-" in p]
    assert "WARNING mlbsp: load high" in hook.wait(1)[0].text


def test_a_reader_holding_the_database_does_not_stop_a_push(cfg, hook):
    push(cfg, [on("mlbsp", T0)], T0)
    reader = sqlite3.connect(str(cfg.state_path(DATABASE)))
    reader.execute("BEGIN")
    reader.execute("SELECT COUNT(*) FROM alert_conditions").fetchall()  # a read transaction
    try:
        outcome = push(cfg, [on("mlbsp", T0 + 60, [warn("load_high", "load high")])], T0 + 60)
    finally:
        reader.close()
    assert outcome.warnings == [] and outcome.sent


def test_a_server_name_with_newlines_cannot_forge_lines_or_mail_headers(tmp_path, hook, smtp):
    cfg = config(
        tmp_path / "state", webhook=hook.url(), smtp=smtp.address, smtp_tls="none",
        email_from="gpumon@lab.example", email_to=["lab@lab.example"],
    )  # fmt: skip
    name = "evil\r\nBcc: all@lab.example\r\nBACK    mlbsp: fine"
    push(cfg, [on(name, T0, [warn("load_high", "load high\nCLEARED everything")])], T0)
    [got] = hook.wait(1)
    assert len(got.text.splitlines()) == 2  # the subject and one event line
    [mail] = smtp.wait(1)
    assert mail.recipients == ["lab@lab.example"]
    assert mail.message["Bcc"] is None and "\n" not in mail.subject


def test_a_huge_job_name_is_cut_and_a_flood_of_events_is_summed_up(cfg, hook):
    idle = [claimed_idle_gpu(0, "lww", "j" * 100_000, idle_since=T0 - 86400)]
    results = [on("mlbsp", T0, gpus=idle)]
    results += [on(f"gpu{i:04d}", T0, [warn("load_high", "load high")]) for i in range(500)]
    push(cfg, results, T0)
    [got] = hook.wait(1)
    lines = got.text.splitlines()
    assert len(lines) == 1 + 200 and lines[-1] == "… and 302 more"
    assert all(len(line) <= 400 for line in lines)
