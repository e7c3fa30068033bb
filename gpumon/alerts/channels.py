"""The channels a message goes out through, each bounded in time: a webhook (an HTTP POST of
``{"text": …}``, what Slack's and Mattermost's incoming webhooks take) and e-mail over SMTP
(stdlib smtplib: STARTTLS, SMTPS or a plain local relay; a login whose password is read from a
file).

Secrets — the webhook URL (its path is the credential), the SMTP password — are read when a
message is sent, never logged, never put in an error: a channel is named by its scheme and host
("webhook https://chat.lab/…"), and any text a server sends back is scrubbed of the URL before it
is shown. smtplib's debug output (which would show the login) is never turned on, and no
library logger sees the URL (http.client logs nothing).

Each send gets a deadline; every socket operation is given only the time left, so a channel
that accepts and then stalls costs at most ``[alerts] timeout_s``.
"""

from __future__ import annotations

import http.client
import json
import os
import smtplib
import socket
import ssl
import stat
import time
from collections.abc import Sequence
from email.message import EmailMessage
from email.utils import formatdate, make_msgid
from urllib.parse import urlsplit

from gpumon.config import AlertsConfig, webhook_url_problem
from gpumon.keyfile import too_open

WEBHOOK = "webhook"
EMAIL = "email"  # the lab's list, [alerts] email_to
EMAIL_TO = "email:"  # one person's address: "email:niv@lab.example"
MAX_SECRET_BYTES = 64 * 1024
MAX_ANSWER_BYTES = 64 * 1024  # what is read of an HTTP answer (an error says its start)
MAX_WEBHOOK_CHARS = 30000  # Slack cuts text past 40 000 characters


class ChannelError(Exception):
    """A channel could not take a message: the reason, with no secret in it."""


def configured(settings: AlertsConfig) -> list[str]:
    """The lab's channels the config sets up (not the people's addresses)."""
    out = []
    if settings.webhook or settings.webhook_file:
        out.append(WEBHOOK)
    if settings.email and settings.email_to:
        out.append(EMAIL)
    return out


def describe(channel: str, settings: AlertsConfig) -> str:
    """A channel as a person reads it, without its secret."""
    if channel == WEBHOOK:
        return f"webhook {webhook_label(settings)}"
    if channel == EMAIL:
        return "e-mail to " + ", ".join(settings.email_to)
    if channel.startswith(EMAIL_TO):
        return "e-mail to " + channel[len(EMAIL_TO) :]
    return channel


def webhook_label(settings: AlertsConfig) -> str:
    """ "https://chat.lab/…": enough to know which, nothing of the secret path."""
    if settings.webhook_file and not settings.webhook:
        try:
            url = webhook_url(settings)
        except ChannelError:
            return f"(from {settings.webhook_file})"
    else:
        url = settings.webhook or ""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}/…"


def send(channel: str, settings: AlertsConfig, subject: str, body: str, deadline: float) -> None:
    """Deliver one message through ``channel`` by ``deadline`` (time.monotonic), or raise
    ChannelError."""
    if channel == WEBHOOK:
        post_webhook(settings, subject, body, deadline)
    elif channel == EMAIL:
        send_mail(settings, settings.email_to, subject, body, deadline)
    elif channel.startswith(EMAIL_TO):
        send_mail(settings, [channel[len(EMAIL_TO) :]], subject, body, deadline)
    else:
        raise ChannelError(f"{channel}: not a channel gpumon knows")


# --- secrets ----------------------------------------------------------------------------------


def read_secret(path: str, what: str) -> str:
    """The first line of a secret file (the webhook URL, the SMTP password). Refused when
    every user may read it or its group may write it, as a private key is (gpumon.keyfile)."""
    full = os.path.expanduser(path)
    try:
        # O_NONBLOCK: a FIFO put there does not hang the push; only a regular file is read.
        fd = os.open(full, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as e:
        raise ChannelError(f"{full}: cannot read the {what} ({e.strerror or e})") from None
    with os.fdopen(fd, "rb") as f:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ChannelError(f"{full}: not a regular file; write the {what} in a file")
        if too_open(full, st):
            mode = stat.S_IMODE(st.st_mode)
            raise ChannelError(
                f"{full} holds the {what} yet is mode {mode:04o} (others may read it, or its "
                f"group write it) — chmod o-rwx,g-w {full}"
            )
        raw = f.read(MAX_SECRET_BYTES + 1)
    if len(raw) > MAX_SECRET_BYTES:
        raise ChannelError(f"{full}: too large to hold the {what}")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ChannelError(f"{full}: the {what} is not UTF-8 text") from None
    line = next((ln.strip() for ln in text.splitlines() if ln.strip()), "")
    if not line:
        raise ChannelError(f"{full}: empty — write the {what} on its first line")
    return line


def webhook_url(settings: AlertsConfig) -> str:
    if settings.webhook:
        return settings.webhook.strip()
    if not settings.webhook_file:
        raise ChannelError("no webhook configured")
    url = read_secret(settings.webhook_file, "webhook URL")
    problem = webhook_url_problem(url)
    if problem:
        raise ChannelError(f"{os.path.expanduser(settings.webhook_file)}: {problem}")
    return url


def scrub(text: str, secret: str) -> str:
    """``text`` without ``secret`` or the parts of its path (a server's error may echo them)."""
    parts = urlsplit(secret)
    pieces = [secret, parts.path, parts.query, *parts.path.split("/"), *parts.query.split("&")]
    for piece in sorted({p for p in pieces if len(p) >= 6}, key=len, reverse=True):
        text = text.replace(piece, "…")
    return text


# --- the webhook ------------------------------------------------------------------------------


def webhook_payload(subject: str, body: str) -> bytes:
    """``{"text": …}``: the subject as a first line, then the body — escaped so that nothing a
    sheet or a server supplied can format, link or ping (Slack's ``<!channel>``, an ``@all``)."""
    text = chat_escape(f"{subject}\n{body}")
    if len(text) > MAX_WEBHOOK_CHARS:
        text = text[: MAX_WEBHOOK_CHARS - 1] + "…"
    return json.dumps({"text": text}, ensure_ascii=False).encode("utf-8")


def chat_escape(text: str) -> str:
    """Slack's three escapes (& < >: no control sequence such as ``<!channel>`` or a link can
    be formed), and a word joiner after every "@" (no mention: ``@channel``, ``@all``)."""
    text = text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return text.replace("@", "@\u2060")


def post_webhook(settings: AlertsConfig, subject: str, body: str, deadline: float) -> None:
    url = webhook_url(settings)
    try:
        _post(url, webhook_payload(subject, body), settings.ca_file, deadline)
    except ChannelError as e:
        raise ChannelError(scrub(str(e), url)) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise ChannelError(scrub(_why(e), url)) from None


def _post(url: str, payload: bytes, ca_file: str | None, deadline: float) -> None:
    parts = urlsplit(url)
    host, port = parts.hostname or "", parts.port
    target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    if parts.scheme == "https":
        context = _tls_context(ca_file)
        conn: http.client.HTTPConnection = http.client.HTTPSConnection(
            host, port, timeout=_left(deadline), context=context
        )
    else:
        conn = http.client.HTTPConnection(host, port, timeout=_left(deadline))
    try:
        conn.connect()
        _bound(conn.sock, deadline)
        conn.putrequest("POST", target, skip_accept_encoding=True)
        conn.putheader("Content-Type", "application/json; charset=utf-8")
        conn.putheader("Content-Length", str(len(payload)))
        conn.putheader("User-Agent", "gpumon-alerts")
        conn.endheaders()
        _bound(conn.sock, deadline)
        conn.send(payload)
        _bound(conn.sock, deadline)
        answer = conn.getresponse()
        _bound(conn.sock, deadline)
        text = answer.read(MAX_ANSWER_BYTES).decode("utf-8", errors="replace")
    finally:
        conn.close()
    if not 200 <= answer.status < 300:
        said = " ".join(text.split())[:200]
        raise ChannelError(f"HTTP {answer.status} {answer.reason}" + (f": {said}" if said else ""))


# --- e-mail -----------------------------------------------------------------------------------


def mail_message(
    settings: AlertsConfig, to: Sequence[str], subject: str, body: str
) -> EmailMessage:
    message = EmailMessage()
    sender = settings.email_from or ""
    message["From"] = sender
    message["To"] = ", ".join(to)
    message["Subject"] = subject
    message["Date"] = formatdate(usegmt=True)
    # A domain given: make_msgid would otherwise look this machine's name up.
    message["Message-ID"] = make_msgid(domain=sender.rpartition("@")[2] or "gpumon.invalid")
    message["Auto-Submitted"] = "auto-generated"  # RFC 3834: no vacation replies to gpumon
    message.set_content(body + "\n", charset="utf-8")
    return message


def send_mail(
    settings: AlertsConfig, to: Sequence[str], subject: str, body: str, deadline: float
) -> None:
    where = settings.smtp_host_port
    if where is None or not settings.email_from:
        raise ChannelError("e-mail needs [alerts] smtp and email_from")
    password = None
    if settings.smtp_user and settings.smtp_password_file:
        password = read_secret(settings.smtp_password_file, "SMTP password")
    message = mail_message(settings, to, subject, body)
    try:
        with _smtp(settings, deadline) as smtp:
            if password is not None:
                _bound(smtp.sock, deadline)
                smtp.login(settings.smtp_user or "", password)
            _bound(smtp.sock, deadline)
            refused = smtp.send_message(message)
            if refused:
                raise ChannelError(
                    "the mail server refused "
                    + ", ".join(f"{a} ({c})" for a, (c, _) in refused.items())
                )
            _bound(smtp.sock, deadline)
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass  # the message was accepted; a rude goodbye changes nothing
    except smtplib.SMTPAuthenticationError as e:
        raise ChannelError(
            f"{_server(settings)}: login as {settings.smtp_user!r} refused ({e.smtp_code}) — "
            "check [alerts] smtp_user and the password in smtp_password_file"
        ) from None
    except (smtplib.SMTPException, OSError, ValueError) as e:
        raise ChannelError(f"{_server(settings)}: {_why(e)}") from None


class _smtp:
    """An SMTP session opened up to the point of sending (EHLO, STARTTLS when asked), closed on
    leaving."""

    def __init__(self, settings: AlertsConfig, deadline: float) -> None:
        self.settings, self.deadline = settings, deadline

    def __enter__(self) -> smtplib.SMTP:
        s, deadline = self.settings, self.deadline
        host, port = s.smtp_host_port or ("", 0)
        mode = s.smtp_mode
        # local_hostname given: smtplib would otherwise ask the resolver for this host's name.
        local = socket.gethostname() or "localhost"
        if mode == "ssl":
            smtp: smtplib.SMTP = smtplib.SMTP_SSL(
                host, port, local_hostname=local, timeout=_left(deadline),
                context=_tls_context(s.ca_file),
            )  # fmt: skip
        else:
            smtp = smtplib.SMTP(host, port, local_hostname=local, timeout=_left(deadline))
        self.smtp = smtp
        try:
            _bound(smtp.sock, deadline)
            smtp.ehlo()
            if mode == "starttls":
                if not smtp.has_extn("starttls"):
                    raise ChannelError(
                        'the server does not offer STARTTLS — set [alerts] smtp_tls = "ssl" '
                        'for SMTPS (port 465), or "none" for a relay on this machine'
                    )
                _bound(smtp.sock, deadline)
                smtp.starttls(context=_tls_context(s.ca_file))
                _bound(smtp.sock, deadline)
                smtp.ehlo()
        except BaseException:
            smtp.close()
            raise
        return smtp

    def __exit__(self, *exc: object) -> None:
        self.smtp.close()


def probe_smtp(settings: AlertsConfig, deadline: float) -> str:
    """Connect, greet, STARTTLS and log in as a delivery would, and leave without sending:
    what was done, or ChannelError."""
    password = None
    if settings.smtp_user and settings.smtp_password_file:
        password = read_secret(settings.smtp_password_file, "SMTP password")
    try:
        with _smtp(settings, deadline) as smtp:
            if password is not None:
                _bound(smtp.sock, deadline)
                smtp.login(settings.smtp_user or "", password)
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
    except smtplib.SMTPAuthenticationError as e:
        raise ChannelError(
            f"{_server(settings)}: login as {settings.smtp_user!r} refused ({e.smtp_code})"
        ) from None
    except (smtplib.SMTPException, OSError, ValueError) as e:
        raise ChannelError(f"{_server(settings)}: {_why(e)}") from None
    done = {"ssl": "SMTPS", "starttls": "STARTTLS", "none": "no TLS"}[settings.smtp_mode]
    return f"{_server(settings)}: {done}" + (", login ok" if password is not None else "")


def _server(settings: AlertsConfig) -> str:
    host, port = settings.smtp_host_port or ("?", 0)
    return f"SMTP {host}:{port}"


# --- time and errors --------------------------------------------------------------------------


def _left(deadline: float) -> float:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("timed out")
    return left


def _bound(sock: socket.socket | None, deadline: float) -> None:
    """Give the socket's next operation only the time left before the deadline."""
    if sock is not None:
        sock.settimeout(_left(deadline))


def _tls_context(ca_file: str | None) -> ssl.SSLContext:
    return ssl.create_default_context(cafile=os.path.expanduser(ca_file) if ca_file else None)


def _why(error: BaseException) -> str:
    if isinstance(error, (TimeoutError, socket.timeout)):
        return "timed out"
    if isinstance(error, ConnectionRefusedError):
        return "connection refused"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS certificate not trusted ({error.verify_message}) — set [alerts] ca_file"
    if isinstance(error, smtplib.SMTPResponseException):
        said = error.smtp_error
        text = said.decode("utf-8", "replace") if isinstance(said, bytes) else str(said)
        return f"the server answered {error.smtp_code} {' '.join(text.split())[:200]}"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror[:200]
    return (str(error) or type(error).__name__)[:200]
