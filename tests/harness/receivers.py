"""The alert channels' other ends, real and on loopback: an SMTP server (aiosmtpd: plain,
STARTTLS or SMTPS, with or without a login) and an HTTP receiver for webhooks (stdlib
http.server), each recording what it got and able to misbehave on demand (answer 500, answer
late, refuse). TLS uses a test CA made here (``LoopbackCA``), trusted through ``[alerts] ca_file``.
"""

from __future__ import annotations

import datetime as dt
import email
import email.policy
import ipaddress
import json
import socket
import ssl
import threading
import time
from dataclasses import dataclass, field
from email.message import EmailMessage
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from harness.sshd import free_port

LOOPBACK = "127.0.0.1"
# SMTPS with a login: the whole connection is TLS, yet aiosmtpd warns (per connection) that
# AUTH does not require STARTTLS. Tests that use it carry this filter.
SMTPS_LOGIN_WARNING = "ignore:Requiring AUTH while not requiring TLS"


# --- TLS --------------------------------------------------------------------------------------


@dataclass
class LoopbackCA:
    """A CA and a server certificate for 127.0.0.1 signed by it, as PEM files in ``folder``."""

    folder: Path

    def __post_init__(self) -> None:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID

        self.folder.mkdir(parents=True, exist_ok=True)
        now = dt.datetime.now(dt.timezone.utc)
        ca_key = ec.generate_private_key(ec.SECP256R1())
        ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "gpumon test CA")])
        ca = (
            x509.CertificateBuilder()
            .subject_name(ca_name)
            .issuer_name(ca_name)
            .public_key(ca_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(True, False, False, False, False, True, True, False, False), True
            )
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), False)
            .sign(ca_key, hashes.SHA256())
        )
        key = ec.generate_private_key(ec.SECP256R1())
        cert = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, LOOPBACK)]))
            .issuer_name(ca_name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(minutes=5))
            .not_valid_after(now + dt.timedelta(days=1))
            .add_extension(
                x509.SubjectAlternativeName(
                    [x509.IPAddress(ipaddress.ip_address(LOOPBACK)), x509.DNSName("localhost")]
                ),
                critical=False,
            )
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        pem = serialization.Encoding.PEM
        self.ca_file = self.folder / "ca.pem"
        self.cert_file = self.folder / "server.pem"
        self.key_file = self.folder / "server.key"
        self.ca_file.write_bytes(ca.public_bytes(pem))
        self.cert_file.write_bytes(cert.public_bytes(pem))
        self.key_file.write_bytes(
            key.private_bytes(pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        )

    def server_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.cert_file, self.key_file)
        return context


# --- SMTP -------------------------------------------------------------------------------------


class _Recorder:
    def __init__(self, server: SmtpServer) -> None:
        self.server = server

    async def handle_DATA(self, server, session, envelope):
        if self.server.refuse_data:
            return "554 5.7.1 refused by the test"
        parsed = email.message_from_bytes(envelope.content, policy=email.policy.default)
        with self.server.lock:
            self.server.messages.append(
                Received(
                    sender=envelope.mail_from,
                    recipients=list(envelope.rcpt_tos),
                    message=parsed,  # type: ignore[arg-type]
                    tls=session.ssl is not None or self.server.mode == "ssl",
                )
            )
        return "250 OK"


@dataclass
class Received:
    sender: str
    recipients: list[str]
    message: EmailMessage
    tls: bool

    @property
    def subject(self) -> str:
        return str(self.message["Subject"])

    @property
    def body(self) -> str:
        part = self.message.get_body(("plain",))
        text = part.get_content() if part is not None else ""
        return text.replace("\r\n", "\n")


class SmtpServer:
    """aiosmtpd on 127.0.0.1: ``mode`` "none" (plain), "starttls" (required, the only way to
    log in) or "ssl" (SMTPS); with ``user``/``password`` a login is required."""

    def __init__(
        self,
        mode: str = "none",
        ca: LoopbackCA | None = None,
        user: str | None = None,
        password: str | None = None,
    ) -> None:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult

        self.mode, self.user, self.password = mode, user, password
        self.messages: list[Received] = []
        self.logins: list[tuple[str, str]] = []
        self.lock = threading.Lock()
        self.refuse_data = False
        self.port = free_port([LOOPBACK])

        def authenticate(server, session, envelope, mechanism, auth_data):
            login = auth_data.login.decode() if isinstance(auth_data.login, bytes) else ""
            given = auth_data.password.decode() if isinstance(auth_data.password, bytes) else ""
            with self.lock:
                self.logins.append((login, given))
            ok = (login, given) == (self.user, self.password)
            return AuthResult(success=ok, handled=False)  # aiosmtpd answers 235 or 535

        kwargs: dict[str, object] = {}
        if mode == "starttls":
            assert ca is not None
            kwargs.update(tls_context=ca.server_context(), require_starttls=True)
        if mode == "ssl":
            assert ca is not None
            kwargs.update(ssl_context=ca.server_context())
        if user is not None:
            kwargs.update(authenticator=authenticate, auth_required=True)
            # Under SMTPS the whole connection is TLS, which aiosmtpd's STARTTLS check misses.
            kwargs.update(auth_require_tls=mode == "starttls")
        self.controller = Controller(
            _Recorder(self), hostname=LOOPBACK, port=self.port, ready_timeout=10, **kwargs
        )
        self.controller.start()

    @property
    def address(self) -> str:
        return f"{LOOPBACK}:{self.port}"

    def wait(self, count: int, timeout_s: float = 10.0) -> list[Received]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.messages) >= count:
                    return list(self.messages)
            time.sleep(0.02)
        with self.lock:
            return list(self.messages)

    def close(self) -> None:
        self.controller.stop()


# --- webhooks ---------------------------------------------------------------------------------


@dataclass
class Hook:
    path: str
    headers: dict[str, str]
    payload: dict

    @property
    def text(self) -> str:
        return str(self.payload.get("text", ""))


@dataclass
class WebhookReceiver:
    """An HTTP server on 127.0.0.1 taking POSTs: ``status`` is its answer (200; 500 to fail),
    ``delay_s`` how long it waits before answering (a slow receiver)."""

    status: int = 200
    delay_s: float = 0.0
    hooks: list[Hook] = field(default_factory=list)
    attempts: int = 0

    def __post_init__(self) -> None:
        receiver = self
        self.lock = threading.Lock()
        self._release = threading.Event()

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length)
                with receiver.lock:
                    receiver.attempts += 1
                    status, delay = receiver.status, receiver.delay_s
                if delay:
                    receiver._release.wait(delay)
                if status == 200:
                    with receiver.lock:
                        receiver.hooks.append(
                            Hook(self.path, dict(self.headers), json.loads(body.decode("utf-8")))
                        )
                answer = b"ok" if status == 200 else b"internal error at " + self.path.encode()
                self.send_response(status)
                self.send_header("Content-Length", str(len(answer)))
                self.end_headers()
                try:
                    self.wfile.write(answer)
                except OSError:
                    pass  # the client gave up waiting

            def log_message(self, format: str, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer((LOOPBACK, 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str = "/hooks/T0001/B0002/s3cr3t-t0k3n-abcdef") -> str:
        return f"http://{LOOPBACK}:{self.port}{path}"

    def wait(self, count: int, timeout_s: float = 10.0) -> list[Hook]:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            with self.lock:
                if len(self.hooks) >= count:
                    return list(self.hooks)
            time.sleep(0.02)
        with self.lock:
            return list(self.hooks)

    def close(self) -> None:
        self._release.set()
        self.server.shutdown()
        self.server.server_close()


def refused_port() -> int:
    """A loopback port nothing listens on (bound, never listening, then released)."""
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]
