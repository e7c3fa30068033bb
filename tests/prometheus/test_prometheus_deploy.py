"""deploy/prometheus and deploy/grafana as shipped: Prometheus' and Alertmanager's own tools
accept them, the rules' unit tests pass (and fail when a rule is wrong), and the alert
thresholds are the agent's own health thresholds."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest

from gpumon_agent import health
from harness.prometheus import AMTOOL, DASHBOARD, DEPLOY, PROMTOOL, SHIPPED_RULES, run_tool

RULE_TESTS = DEPLOY / "gpumon.rules.test.yml"


def test_promtool_accepts_the_shipped_scrape_config():
    done = run_tool(PROMTOOL, "check", "config", str(DEPLOY / "prometheus.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout and "17 rules found" in done.stdout


def test_promtool_accepts_the_rules():
    done = run_tool(PROMTOOL, "check", "rules", str(SHIPPED_RULES))
    assert done.returncode == 0, done.stdout + done.stderr


def test_the_rules_unit_tests_pass():
    done = run_tool(PROMTOOL, "test", "rules", str(RULE_TESTS))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout


@pytest.mark.parametrize(
    "shipped, broken",
    [
        ('up{job="gpumon"} == 0\n        for: 5m', 'up{job="gpumon"} == 0\n        for: 1m'),
        ("gpumon_gpu_temperature_celsius >= 85", "gpumon_gpu_temperature_celsius >= 95"),
        ("[24h:1m]) / 60", "[24h:1m]) / 30"),
    ],
)
def test_the_rules_unit_tests_fail_when_a_rule_is_wrong(tmp_path: Path, shipped, broken):
    rules = SHIPPED_RULES.read_text()
    assert shipped in rules
    (tmp_path / "gpumon.rules.yml").write_text(rules.replace(shipped, broken, 1))
    shutil.copy(RULE_TESTS, tmp_path / RULE_TESTS.name)
    done = run_tool(PROMTOOL, "test", "rules", RULE_TESTS.name, cwd=tmp_path)
    assert done.returncode != 0 and "FAILED" in done.stdout + done.stderr


def test_amtool_accepts_the_alertmanager_example():
    done = run_tool(AMTOOL, "check-config", str(DEPLOY / "alertmanager.yml"))
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 receivers" in done.stdout


def test_every_alert_in_the_rules_is_routed_and_tested():
    rules = SHIPPED_RULES.read_text()
    alerts = set(re.findall(r"^\s+- alert: (\w+)$", rules, re.M))
    assert len(alerts) == 10
    tested = set(re.findall(r"alertname: (\w+)", RULE_TESTS.read_text()))
    assert alerts - tested == set()
    routed = (DEPLOY / "alertmanager.yml").read_text()
    assert (
        "GpumonClaimedButIdle|GpumonUnclaimedUse" in routed
    )  # to the lab's chat; the rest: admins


def test_alert_thresholds_are_the_agents_health_thresholds():
    rules = SHIPPED_RULES.read_text()
    assert f"gpumon_gpu_temperature_celsius >= {health.GPU_TEMPERATURE_MAX_C:g}" in rules
    ratio = health.GPU_MEMORY_PERCENT_MAX / 100
    assert f"gpumon_gpu_memory_used_bytes / gpumon_gpu_memory_total_bytes > {ratio:g}" in rules
    assert f"gpumon_host_memory_used_ratio > {health.MEMORY_PERCENT_MAX / 100:g}" in rules
    hot = "|".join(health.THERMAL_THROTTLE_REASONS)
    assert f'gpumon_gpu_throttled{{reason=~"{hot}"}}' in rules


def test_the_dashboard_is_grafana_json_with_the_four_views():
    data = json.loads(DASHBOARD.read_text())
    rows = [p["title"] for p in data["panels"] if p["type"] == "row"]
    assert rows == ["Fleet overview", "Per-server GPUs", "Per-user GPU-hours", "Claims"]
    ids = [p["id"] for p in data["panels"]]
    assert len(ids) == len(set(ids))
    for panel in data["panels"]:
        if panel["type"] != "row":
            assert panel["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert panel["targets"], panel["title"]
