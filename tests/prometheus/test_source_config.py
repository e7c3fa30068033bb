"""[source] and [metrics] in gpumon.toml: validated like every other key — a clear error naming
the file, line and key, and what to write instead; nothing dialled before the config is good."""

from __future__ import annotations

import pytest

from gpumon.config import ConfigError, parse
from gpumon.fleet import open_poller
from gpumon.poll.prometheus import PrometheusSource

ORIGIN = "/etc/gpumon/gpumon.toml"
SERVERS = '\n[servers.ganbsp]\nhost = "192.0.2.10"\n'


def refused(body: str) -> str:
    with pytest.raises(ConfigError) as caught:
        parse(body + SERVERS, ORIGIN)
    return str(caught.value)


def test_the_default_source_is_ssh_and_needs_no_url():
    config = parse(SERVERS, ORIGIN)
    assert config.source.kind == "ssh" and config.source.url is None
    assert config.metrics.port == 9835


def test_a_prometheus_source_is_opened_for_push_serve_status_and_check(tmp_path):
    config = parse(
        f'state_dir = "{tmp_path}"\n[source]\nkind = "prometheus"\n'
        'url = "https://prometheus.lab.example.org:9090/prom/"\n' + SERVERS,
        ORIGIN,
    )
    poller = open_poller(config)
    try:
        assert isinstance(poller, PrometheusSource)
        assert poller.url == "https://prometheus.lab.example.org:9090/prom/api/v1/query"
    finally:
        poller.close()


@pytest.mark.parametrize(
    "body, expected",
    [
        ('[source]\nkind = "snmp"\n', 'line 2, [source] kind: must be "ssh"'),
        ('[source]\nkind = "prometheus"\n', 'line 2, [source] kind: kind = "prometheus" needs the'),
        ('[source]\nkind = "prometheus"\nurl = ""\n', "line 3, [source] url: kind = "),
        ('[source]\nkind = "prometheus"\nurl = "ftp://p:9090"\n', "is not an http(s) URL"),
        ('[source]\nkind = "prometheus"\nurl = "prometheus:9090"\n', "is not an http(s) URL"),
        ('[source]\nkind = "prometheus"\nurl = "http://:9090"\n', "is not an http(s) URL"),
        ('[source]\nkind = "prometheus"\nurl = "http://p:port"\n', "not a URL"),
        ('[source]\nkind = "prometheus"\nurl = "http://admin:secret@p:9090"\n', "password"),
        ('[source]\nkind = "prometheus"\nurl = "http://p:9090/?x=1"\n', "base URL only"),
        ('[source]\nkind = "prometheus"\nurl = "http://p:9090/#top"\n', "base URL only"),
        ('[source]\nkind = "prometheus"\nurl = "http://p:9090/a b"\n', "base URL only"),
        ('[source]\nkind = "prometheus"\nurl = 9090\n', "expected a string, got 9090"),
        ('[source]\nurl = "http://p:9090"\n', 'line 2, [source] url: only used with kind = "prom'),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nserver_label = "9x"\n', "label name"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nserver_label = "__name__"\n', "label"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nserver_label = "a-b"\n', "label name"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nselector = "} or up{"\n', "braces"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nselector = "' + "j" * 2000 + '"\n',
         "at most 1000 characters"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\nselektor = "x"\n',
         "unknown key in [source] — did you mean 'selector'?"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\ntimeout_s = nan\n',
         "[source] timeout_s: nan is not allowed — give a number from 0.5 to 300"),
        ('[source]\nkind = "prometheus"\nurl = "http://p"\ntimeout_s = 0\n', "0.5 to 300"),
        ("[metrics]\nport = 0\n", "line 2, [metrics] port: 0 is not allowed — give a number"),
        ("[metrics]\nport = 70000\n", "1 to 65535"),
        ('[metrics]\nport = "9835"\n', "expected a whole number"),
        ("source = 1\n", "must be a table [source]"),
    ],
)  # fmt: skip
def test_a_bad_source_or_metrics_setting_names_file_line_key_and_fix(body, expected):
    message = refused(body)
    assert message.startswith(ORIGIN)
    assert expected in message, message


def test_dcgm_names_is_an_agent_setting_and_the_error_says_where_it_goes():
    """`[metrics] dcgm_names` is the agent's (GPUMON_METRICS_DCGM_NAMES, docs/metrics.md): the
    central config refuses it, saying where it belongs, rather than silently ignoring it."""
    message = refused("[metrics]\ndcgm_names = true\n")
    assert message == (
        f"{ORIGIN}, line 2, [metrics] dcgm_names: an agent setting — set "
        "GPUMON_METRICS_DCGM_NAMES=1 in each server's gpumon-agent unit (or run it with "
        "--metrics-dcgm-names); docs/metrics.md"
    )
