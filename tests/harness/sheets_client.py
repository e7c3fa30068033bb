"""Client-side wiring for the local Sheets server: a fake service-account key and a session.

The key is a real RSA key in Google's JSON key-file format, its ``token_uri`` pointing at the
local server, which knows its public key. The session mounts an adapter that sends
``https://sheets.googleapis.com/`` (and google-auth's ``iamcredentials`` lookup) to the local
server and refuses every other address, so nothing leaves the machine and no name is resolved.
The real gspread and google-auth code run unchanged above it.
"""

from __future__ import annotations

import functools
import ipaddress
import json
from pathlib import Path
from typing import ClassVar
from urllib.parse import urlsplit, urlunsplit

import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.transport.requests import AuthorizedSession
from requests.adapters import HTTPAdapter

from gpumon.sheet.google_auth import authorized_session, load_credentials
from harness.sheets_server import SheetsServer

ACCOUNT = "gpumon-writer@lab-gpumon.iam.gserviceaccount.com"
ROUTED_HOSTS = ("sheets.googleapis.com", "iamcredentials.googleapis.com", "oauth2.googleapis.com")


@functools.cache
def _rsa_key(n: int = 0) -> rsa.RSAPrivateKey:
    # Generating a 2048-bit key costs ~50 ms; one per slot is plenty for a test session.
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def write_service_account_key(
    server: SheetsServer,
    path: Path,
    email: str = ACCOUNT,
    key_slot: int = 0,
    token_uri: str | None = None,
) -> Path:
    """A Google-format JSON key file whose public half the server trusts."""
    key = _rsa_key(key_slot)
    key_id = f"local{key_slot:02d}" + "0" * 33
    pem = key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    ).decode()
    server.register_account(email, key.public_key(), key_id)
    info = {
        "type": "service_account",
        "project_id": email.split("@")[1].split(".")[0],
        "private_key_id": key_id,
        "private_key": pem,
        "client_email": email,
        "client_id": "100000000000000000001",
        "auth_uri": "https://accounts.google.com/o/oauth2/auth",
        "token_uri": token_uri or server.token_uri,
        "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
        "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/" + email,
        "universe_domain": "googleapis.com",
    }
    path.write_text(json.dumps(info, indent=2), encoding="utf-8")
    path.chmod(0o600)
    return path


class LoopbackAdapter(HTTPAdapter):
    """Sends Google API hosts to the local server; refuses any other non-loopback address."""

    __attrs__: ClassVar[list[str]] = [*HTTPAdapter.__attrs__, "target"]  # survives deepcopy

    def __init__(self, target: str = "", **kwargs: object) -> None:
        self.target = target  # "127.0.0.1:PORT"
        super().__init__(**kwargs)  # type: ignore[arg-type]

    def send(self, request: requests.PreparedRequest, **kwargs: object) -> requests.Response:  # type: ignore[override]
        parts = urlsplit(request.url or "")
        host = parts.hostname or ""
        if parts.scheme == "https" and host in ROUTED_HOSTS:
            request.url = urlunsplit(("http", self.target, parts.path, parts.query, ""))
        elif not _loopback(host):
            raise requests.ConnectionError(
                f"test harness: refusing to dial {host!r} (loopback only)"
            )
        return super().send(request, **kwargs)  # type: ignore[arg-type]


def _loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def authorized(server: SheetsServer, key_file: Path) -> AuthorizedSession:
    """A session authorized as gpumon's is (its key, the spreadsheets scope), for raw calls."""
    credentials = load_credentials(str(key_file), "test")
    return authorized_session(credentials, google_session(server))


def google_session(server: SheetsServer) -> requests.Session:
    """A requests session that reaches Google only as far as the local server."""
    session = requests.Session()
    adapter = LoopbackAdapter(f"127.0.0.1:{server.port}")
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    return session
