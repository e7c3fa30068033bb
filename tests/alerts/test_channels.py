"""The channels against real receivers on loopback: the webhook (an HTTP server that may answer
500 or late, or a port that refuses) and SMTP (aiosmtpd: plain, STARTTLS, SMTPS, with a login),
each bounded in time, and never a secret in what they say."""

from __future__ import annotations

import os
import time

import pytest
from alertkit import secret_file

from gpumon.alerts import channels as ch
from gpumon.config import AlertsConfig
from harness.receivers import SMTPS_LOGIN_WARNING, SmtpServer
from harness.sshd import RefusedPort, SilentListener
from harness.timing import SLACK_S

SECRET_PATH = "/hooks/T0001/B0002/s3cr3t-t0k3n-abcdef"


def deadline(seconds: float = 5.0) -> float:
    return time.monotonic() + seconds


def test_webhook_posts_slack_and_mattermost_json(hook):
    settings = AlertsConfig(webhook=hook.url())
    ch.send(ch.WEBHOOK, settings, "gpumon: down: mlbsp", "DOWN    mlbsp: refused", deadline())
    [got] = hook.wait(1)
    assert got.path == SECRET_PATH
    assert got.headers["Content-Type"].startswith("application/json")
    assert got.payload == {"text": "gpumon: down: mlbsp\nDOWN    mlbsp: refused"}


def test_webhook_text_from_sheet_or_servers_cannot_ping_or_link(hook):
    settings = AlertsConfig(webhook=hook.url())
    body = "GPU 0: claimed by lww for '<!channel> @all @here <https://evil.example|click>' & co"
    ch.send(ch.WEBHOOK, settings, "gpumon: GPU: mlbsp", body, deadline())
    text = hook.wait(1)[0].text
    assert "<" not in text and ">" not in text  # no Slack control sequence or link
    assert "&lt;!channel&gt;" in text and "&amp; co" in text
    assert "@all" not in text and "@here" not in text  # a word joiner follows each "@"
    assert "@\u2060all" in text


def test_webhook_answering_500_fails_without_echoing_the_secret_url(hook):
    hook.status = 500  # its answer quotes the request path, as some servers do
    settings = AlertsConfig(webhook=hook.url())
    with pytest.raises(ch.ChannelError) as failed:
        ch.send(ch.WEBHOOK, settings, "s", "b", deadline())
    assert "HTTP 500" in str(failed.value)
    assert "s3cr3t" not in str(failed.value) and "B0002" not in str(failed.value)
    assert hook.attempts == 1


def test_webhook_refused(hook):
    port = RefusedPort("127.0.0.1")
    try:
        settings = AlertsConfig(webhook=f"http://127.0.0.1:{port.port}{SECRET_PATH}")
        with pytest.raises(ch.ChannelError, match="connection refused") as failed:
            ch.send(ch.WEBHOOK, settings, "s", "b", deadline())
        assert "s3cr3t" not in str(failed.value)
    finally:
        port.close()


def test_a_slow_webhook_costs_at_most_its_deadline(hook):
    hook.delay_s = 30
    settings = AlertsConfig(webhook=hook.url())
    budget = 1.5
    started = time.monotonic()
    with pytest.raises(ch.ChannelError, match="timed out"):
        ch.send(ch.WEBHOOK, settings, "s", "b", deadline(budget))
    assert time.monotonic() - started < budget + SLACK_S


def test_webhook_file_holds_the_url_and_must_not_be_world_readable(hook, tmp_path):
    path = secret_file(tmp_path, "webhook", hook.url(), 0o640)
    settings = AlertsConfig(webhook_file=str(path))
    ch.send(ch.WEBHOOK, settings, "s", "b", deadline())
    assert hook.wait(1)[0].path == SECRET_PATH
    assert ch.describe(ch.WEBHOOK, settings) == f"webhook http://127.0.0.1:{hook.port}/…"
    path.chmod(0o644)
    with pytest.raises(ch.ChannelError, match="chmod o-rwx,g-w") as failed:
        ch.send(ch.WEBHOOK, settings, "s", "b", deadline())
    assert "s3cr3t" not in str(failed.value)


@pytest.mark.parametrize(
    ("content", "problem"),
    [
        ("", "empty"),
        ("not a url at all", "not an http\\(s\\) URL"),
        ("ftp://files.example/s3cr3t-t0k3n", "not an http\\(s\\) URL"),
    ],
)
def test_a_webhook_file_without_a_url_is_named_and_its_text_not_shown(tmp_path, content, problem):
    path = secret_file(tmp_path, "webhook", content)
    with pytest.raises(ch.ChannelError, match=problem) as failed:
        ch.webhook_url(AlertsConfig(webhook_file=str(path)))
    assert str(path) in str(failed.value)
    assert "s3cr3t" not in str(failed.value) and "at all" not in str(failed.value)


def test_a_fifo_as_webhook_file_does_not_hang(tmp_path):
    fifo = tmp_path / "webhook"
    os.mkfifo(fifo, 0o600)
    started = time.monotonic()
    with pytest.raises(ch.ChannelError, match="not a regular file"):
        ch.webhook_url(AlertsConfig(webhook_file=str(fifo)))
    assert time.monotonic() - started < 0 + SLACK_S  # BUDGET 0: it must not wait at all


def test_mail_through_a_plain_local_relay(smtp):
    settings = AlertsConfig(
        smtp=smtp.address, smtp_tls="none", email_from="gpumon@lab.example",
        email_to=["gpu-admins@lab.example", "pi@lab.example"],
    )  # fmt: skip
    ch.send(ch.EMAIL, settings, "gpumon: down: mlbsp", "DOWN    mlbsp: refused", deadline())
    [got] = smtp.wait(1)
    assert got.sender == "gpumon@lab.example"
    assert got.recipients == ["gpu-admins@lab.example", "pi@lab.example"]
    assert got.subject == "gpumon: down: mlbsp"
    assert got.body.strip() == "DOWN    mlbsp: refused"
    assert got.message["Auto-Submitted"] == "auto-generated"
    assert got.message["Message-ID"].endswith("@lab.example>")


def test_mail_to_one_person(smtp):
    settings = AlertsConfig(smtp=smtp.address, smtp_tls="none", email_from="gpumon@lab.example")
    ch.send(ch.EMAIL_TO + "lww@lab.example", settings, "s", "body", deadline())
    assert smtp.wait(1)[0].recipients == ["lww@lab.example"]


@pytest.mark.filterwarnings(SMTPS_LOGIN_WARNING)
@pytest.mark.parametrize("mode", ["starttls", "ssl"])
def test_mail_over_tls_with_a_login_whose_password_is_in_a_file(ca, tmp_path, mode):
    server = SmtpServer(mode, ca=ca, user="gpumon", password="pa55-w0rd-xyz")
    try:
        password = secret_file(tmp_path, "smtp-password", "pa55-w0rd-xyz", 0o640)
        settings = AlertsConfig(
            smtp=server.address, smtp_tls=mode, email_from="gpumon@lab.example",
            email_to=["lab@lab.example"], smtp_user="gpumon",
            smtp_password_file=str(password), ca_file=str(ca.ca_file),
        )  # fmt: skip
        ch.send(ch.EMAIL, settings, "s", "b", deadline())
        [got] = server.wait(1)
        assert got.tls
        assert server.logins == [("gpumon", "pa55-w0rd-xyz")]
        assert ch.probe_smtp(settings, deadline()).endswith("login ok")
        assert len(server.wait(2, timeout_s=0.5)) == 1  # the probe sent nothing
    finally:
        server.close()


def test_auto_tls_means_smtps_on_465_and_starttls_elsewhere():
    assert AlertsConfig(smtp="mail.lab:465").smtp_mode == "ssl"
    assert AlertsConfig(smtp="mail.lab:587").smtp_mode == "starttls"
    assert AlertsConfig(smtp="mail.lab").smtp_host_port == ("mail.lab", 587)
    assert AlertsConfig(smtp="mail.lab", smtp_tls="ssl").smtp_host_port == ("mail.lab", 465)


def test_a_wrong_password_is_named_and_not_shown(ca, tmp_path):
    server = SmtpServer("starttls", ca=ca, user="gpumon", password="right-one")
    try:
        password = secret_file(tmp_path, "smtp-password", "wr0ng-s3cret")
        settings = AlertsConfig(
            smtp=server.address, email_from="gpumon@lab.example", email_to=["a@lab.example"],
            smtp_user="gpumon", smtp_password_file=str(password), ca_file=str(ca.ca_file),
        )  # fmt: skip
        with pytest.raises(ch.ChannelError, match="login as 'gpumon' refused") as failed:
            ch.send(ch.EMAIL, settings, "s", "b", deadline())
        assert "wr0ng" not in str(failed.value)
        assert server.messages == []
    finally:
        server.close()


def test_a_certificate_not_trusted_says_to_set_ca_file(ca):
    server = SmtpServer("starttls", ca=ca)
    try:
        settings = AlertsConfig(smtp=server.address, email_from="g@lab.example")
        with pytest.raises(ch.ChannelError, match=r"not trusted.*ca_file"):
            ch.send(ch.EMAIL_TO + "a@lab.example", settings, "s", "b", deadline())
    finally:
        server.close()


def test_starttls_asked_of_a_server_without_it_is_refused_not_sent_in_clear(smtp):
    settings = AlertsConfig(smtp=smtp.address, smtp_tls="starttls", email_from="g@lab.example")
    with pytest.raises(ch.ChannelError, match="does not offer STARTTLS"):
        ch.send(ch.EMAIL_TO + "a@lab.example", settings, "s", "b", deadline())
    assert smtp.messages == []


def test_a_mail_server_refusing_the_message(smtp):
    smtp.refuse_data = True
    settings = AlertsConfig(smtp=smtp.address, smtp_tls="none", email_from="g@lab.example")
    with pytest.raises(ch.ChannelError, match="554"):
        ch.send(ch.EMAIL_TO + "a@lab.example", settings, "s", "b", deadline())


@pytest.mark.parametrize("greets", [False, True], ids=["silent", "greets-then-stalls"])
def test_a_mail_server_that_hangs_costs_at_most_the_deadline(greets):
    listener = SilentListener("127.0.0.1", banner=b"220 slow.example ESMTP\r\n" if greets else None)
    try:
        settings = AlertsConfig(
            smtp=f"127.0.0.1:{listener.port}", smtp_tls="none", email_from="g@lab.example"
        )
        budget = 1.5
        started = time.monotonic()
        with pytest.raises(ch.ChannelError, match="timed out"):
            ch.send(ch.EMAIL_TO + "a@lab.example", settings, "s", "b", deadline(budget))
        assert time.monotonic() - started < budget + SLACK_S
    finally:
        listener.close()


def test_refused_mail_server():
    port = RefusedPort("127.0.0.1")
    try:
        settings = AlertsConfig(smtp=f"127.0.0.1:{port.port}", email_from="g@lab.example")
        with pytest.raises(ch.ChannelError, match="connection refused"):
            ch.send(ch.EMAIL_TO + "a@lab.example", settings, "s", "b", deadline())
    finally:
        port.close()
