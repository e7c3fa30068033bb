"""[alerts] and [people] in gpumon.toml: what they take, and every mistake named with its key
and the fix — never quoting the webhook's secret URL."""

from __future__ import annotations

import pytest

from gpumon.config import ConfigError, parse

BASE = '[poll]\nservers_from_sheet = false\n[servers.mlbsp]\nhost = "192.0.2.10"\n'


def load(text: str):
    return parse(BASE + text, "/etc/gpumon/gpumon.toml")


def test_a_full_alerts_section_and_people():
    config = load(
        "[alerts]\n"
        "down_after_s = 300\nrepeat_s = 3600\nreserved_unused_h = 48\nclaimed_idle_h = 1.5\n"
        'webhook_file = "/etc/gpumon/webhook-url"\n'
        'email_to = ["gpu-admins@lab.example"]\nemail_from = "gpumon@lab.example"\n'
        'smtp = "mail.lab.example:587"\nsmtp_user = "gpumon"\n'
        'smtp_password_file = "/etc/gpumon/smtp-password"\n'
        "[people]\n"
        'lww = ["lww", "lee"]\n'
        '[people.Niv]\nusers = ["niv"]\nemail = "niv@lab.example"\n'
    )
    alerts = config.alerts
    assert (alerts.down_after_s, alerts.repeat_s) == (300, 3600)
    assert (alerts.reserved_unused_h, alerts.claimed_idle_h) == (48, 1.5)
    assert alerts.smtp_host_port == ("mail.lab.example", 587) and alerts.smtp_mode == "starttls"
    assert config.people["lww"].users == ["lww", "lee"] and config.people["lww"].email is None
    assert config.people["Niv"].email == "niv@lab.example"


def test_the_defaults_are_the_issues():
    alerts = load("").alerts
    assert alerts.down_after_s == 120 and alerts.repeat_s == 6 * 3600
    assert alerts.reserved_unused_h == 24 and alerts.claimed_idle_h == 2
    assert alerts.webhook is None and alerts.email_to == []


SECRET = "https://hooks.slack.com/services/T000/B000/s3cr3tt0k3n"


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (f'webhook = "{SECRET}"\nwebhook_file = "/x"', "not both"),
        ('webhook = "hooks.slack.com/services/s3cr3tt0k3n"', "not an http(s) URL"),
        ('webhook = "https://hooks.slack.com/s3cr3tt0k3n with space"', "spaces"),
        ('email_to = ["gpu-admins@lab.example"]', "needs [alerts] smtp"),
        ('email_to = ["a@lab.example"]\nsmtp = "mail:587"', "needs [alerts] email_from"),
        (
            'email_to = ["a@lab.example\\nBcc: all@lab.example"]\nsmtp = "m:25"\n'
            'email_from = "g@lab.example"',
            "is not an e-mail address",
        ),
        (
            'email_to = ["Lab <lab@lab.example>"]\nsmtp = "m:25"\nemail_from = "g@lab.example"',
            "write each bare",
        ),
        ('smtp = "mail:99999"\nemail_from = "g@lab.example"', "not a TCP port"),
        ('smtp = "user@mail:25"\nemail_from = "g@lab.example"', "is not HOST:PORT"),
        (
            'smtp = "mail:587"\nemail_from = "g@lab.example"\nsmtp_user = "gpumon"',
            "needs smtp_password_file",
        ),
        (
            'smtp = "mail:587"\nemail_from = "g@lab.example"\nsmtp_password_file = "/p"',
            "needs its user",
        ),
        (
            'smtp = "mail:25"\nemail_from = "g@lab.example"\nsmtp_tls = "none"\n'
            'smtp_user = "u"\nsmtp_password_file = "/p"',
            "in clear",
        ),
        ('smtp_tls = "tls"', "must be one of auto, starttls, ssl, none"),
        ("down_after_s = 0", "give a number from 1 to 86400"),
        ("repeat_s = 5", "give a number from 60"),
        ("claimed_idle_h = nan", "is not allowed"),
        ("timeout_s = 1000", "give a number from 1 to 120"),
        ('webhook_file = ""', "empty"),
        ("webhook = 3", "expected a string"),
        ('webhok = "x"', "did you mean 'webhook'"),
    ],
)
def test_alerts_mistakes_are_named_with_the_fix(text, says):
    with pytest.raises(ConfigError) as failed:
        load("[alerts]\n" + text + "\n")
    message = str(failed.value)
    assert says in message, message
    assert "/etc/gpumon/gpumon.toml" in message and "[alerts]" in message
    assert "s3cr3t" not in message  # the webhook URL is a secret


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ("Niv = 3", "give the person's Unix users as a list"),
        ('[people.Niv]\nemail = "not-an-address"', "is not an e-mail address"),
        ('[people.Niv]\nmail = "niv@lab.example"', "did you mean 'email'"),
        ("Niv = [1, 2]", "expected a list of strings"),
    ],
)
def test_people_mistakes_are_named(text, says):
    with pytest.raises(ConfigError, match="people") as failed:
        load("[people]\n" + text + "\n" if not text.startswith("[") else text + "\n")
    assert says in str(failed.value)
