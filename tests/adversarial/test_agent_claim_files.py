"""Hostile claim file content: parsing is bounded (size, nesting depth, numbers), so a file made
to blow up a JSON parser costs that file — reported in claim_errors — never the daemon's samples,
other users' `gpumon claim`, or the server's status."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from agent_proc import wait_for

from gpumon_agent.claims import (
    MAX_CLAIM_BYTES,
    MAX_JSON_DEPTH,
    ClaimRegistry,
    clean_progress,
    json_depth_ok,
    new_record,
)
from gpumon_agent.report import Gpu, Report
from harness.users import AGENT, GPUMON

DEEP_OPEN = b"[" * MAX_CLAIM_BYTES  # 64 KiB of nested brackets: RecursionError in json
DEEP_BALANCED = b"[" * (MAX_CLAIM_BYTES // 2) + b"]" * (MAX_CLAIM_BYTES // 2)


def test_a_64k_claim_file_of_nested_brackets_costs_only_that_file(deployment, lab_users):
    alice, bob = lab_users["alice"], lab_users["bob"]
    daemon = deployment.start_agent()
    claims = deployment.claims
    wait_for("the registry", lambda: (claims / ".lock").exists())
    sleeper = deployment.spawn_as(bob, ["sleep", "300"])
    planted = []
    for tag, data in (("aaaaaa", DEEP_OPEN), ("bbbbbb", DEEP_BALANCED)):
        path = claims / f"u{bob.uid}-p{sleeper.pid}-{tag}.json"
        plant = "import sys; open(sys.argv[1], 'wb').write(sys.stdin.buffer.read())"
        done = subprocess.run(
            [sys.executable, "-c", plant, str(path)],
            input=data,
            preexec_fn=bob.preexec(umask=0o022),
            env=deployment.user_env,
            capture_output=True,
        )
        assert done.returncode == 0, done.stderr
        planted.append(str(path))

    # Another user's claim still works, and sees the bad files only as bad files.
    done = deployment.run_as(alice, [str(GPUMON), "claim", "--gpus", "2", "--", "true"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    listing = deployment.run_as(alice, [str(AGENT), "claims"])
    assert listing.returncode == 0 and "Traceback" not in listing.stderr
    assert listing.stderr.count("JSON nested deeper than 16 levels; refused") == 2

    def reported() -> Report | None:
        out = deployment.run_as(alice, [str(GPUMON), "agent", "report", "--json"])
        report = Report.from_json(out.stdout)
        return report if len(report.claim_errors) == 2 else None

    report = wait_for("both files in claim_errors", reported, timeout=30, every=0.2)
    assert report.nvml.available and len(report.gpus) == 4  # the server stays ON
    assert not [n for n in report.notes if "sample failed" in n]
    assert sorted(e.path for e in report.claim_errors) == planted
    assert {e.error for e in report.claim_errors} == {
        f"JSON nested deeper than {MAX_JSON_DEPTH} levels; refused"
    }
    assert daemon.poll() is None
    log = deployment.agent_log()
    assert "RecursionError" not in log and "sample failed" not in log


@pytest.mark.parametrize(
    "text, ok",
    [
        (b'{"a": [[[]]]}', True),
        (b"[" * 16 + b"]" * 16, True),
        (b"[" * 17 + b"]" * 17, False),
        (b"[]" * 30000, True),  # wide, not deep
        (b'["' + b"[" * 5000 + b'"]', True),  # brackets inside a string do not nest
        (b'["\\"' + b"[" * 5000 + b'"]', True),  # nor after an escaped quote
        (b'"\\' * 20000, True),  # an unterminated string: no brackets at all
        (b'"' * 40001 + b"[" * 100, True),  # 20,000 empty strings, then a string of brackets
        (b'"' * 40000 + b"[" * 100, False),  # 20,000 empty strings, then 100 open brackets
        (b'["x"' + b",[" * 17 + b"]" * 17 + b"]", False),
        (b"[" * 40 + b"}" * 40, False),  # not pairs: refused (the parser would refuse too)
    ],
)
def test_nesting_is_checked_before_parsing_and_strings_do_not_count(text, ok):
    assert json_depth_ok(text) is ok


def test_hostile_numbers_and_constants_in_a_claim_are_refused(tmp_path):
    reg = ClaimRegistry(str(tmp_path / "claims"))
    reg.ensure()
    base = new_record("j", "c", [Gpu(index=0)]).to_dict()
    me, pid = os.geteuid(), os.getpid()
    cases = {
        "aaaaa1": json.dumps(base).replace(
            f'"pid_started": {base["pid_started"]}', '"pid_started": NaN'
        ),
        "aaaaa2": json.dumps(dict(base, gpus=[{"index": 10**400, "uuid": None}])),
        "aaaaa3": json.dumps(dict(base, gpus=[{"index": 0, "uuid": None}] * 65)),
        "aaaaa4": json.dumps(dict(base, pid_start_ticks=-1)),
        "aaaaa5": json.dumps(dict(base, uid=2**40)),
        "aaaaa6": json.dumps(dict(base, progress={"a": [[[[[[[[[1]]]]]]]]]})),
    }
    for tag, text in cases.items():
        (tmp_path / "claims" / f"u{me}-p{pid}-{tag}.json").write_text(text)
    live, errors = reg.live_claims()
    assert live == []
    reasons = {os.path.basename(e.path).split("-")[2][:6]: e.error for e in errors}
    assert "NaN is not a JSON number" in reasons["aaaaa1"]
    assert reasons["aaaaa2"] == "field 'gpus[0].index': a huge number is not in 0..4095"
    assert "more than 64 GPUs" in reasons["aaaaa3"]
    assert "'pid_start_ticks': -1 is not in" in reasons["aaaaa4"]
    assert reasons["aaaaa5"] == f"field 'uid': {2**40} is not in 0..{2**32 - 2}"
    assert "'progress': nested deeper than 8" in reasons["aaaaa6"]


def test_a_trainer_cannot_write_progress_a_reader_would_refuse():
    def nested(levels: int) -> dict:  # the progress dict itself is the first level
        value: object = 1
        for _ in range(levels - 1):
            value = [value]
        return {"a": value}

    assert clean_progress(nested(8)) == nested(8)  # as deep as the reader takes
    for levels in (9, 10, 50):
        with pytest.raises(ValueError, match="deeper than 8 levels"):
            clean_progress(nested(levels))
    loop: list = []
    loop.append(loop)  # a cycle: must be a clear ValueError, not a RecursionError
    with pytest.raises(ValueError, match="nested deeper than 8"):
        clean_progress({"history": loop})
