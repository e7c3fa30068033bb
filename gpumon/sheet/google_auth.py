"""The service-account key and the authorized HTTP session the Google backend talks through.

Scope: ``https://www.googleapis.com/auth/spreadsheets`` only (gspread's defaults add Drive, which
gpumon never needs: it opens the sheet by key). A bad key file is a ``ConfigError`` that names
the file and says how to make a good one.
"""

from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import requests
from google.auth.transport.requests import AuthorizedSession, Request
from google.oauth2 import service_account

from gpumon.config import ConfigError
from gpumon.keyfile import too_open

SCOPES = ("https://www.googleapis.com/auth/spreadsheets",)
log = logging.getLogger("gpumon.sheet.http")
# Query parameters whose values are never logged (OAuth tokens, API keys, signed assertions).
_SECRET_PARAM = re.compile(r"token|key|assertion|secret|sig|code|password|auth", re.I)

HOW_TO_GET_A_KEY = (
    "create one in the Google Cloud console (IAM & Admin → Service accounts → your account → "
    "Keys → Add key → JSON), save it there (chmod 600), enable the Google Sheets API for its "
    "project, and share the sheet with the account's e-mail address as Editor"
)


def load_credentials(path: str, origin: str) -> service_account.Credentials:
    """Read a service-account JSON key; every problem names the file and the fix."""
    file = Path(os.path.expanduser(path))
    where = f"{file} ([sheet] credentials in {origin})"
    try:
        problem = too_open(str(file), file.stat())
        if problem:
            raise ConfigError(f"{problem} ([sheet] credentials in {origin})")
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{where}: no such file — {HOW_TO_GET_A_KEY}") from None
    except IsADirectoryError:
        raise ConfigError(f"{where}: is a directory, not a JSON key file") from None
    except (OSError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or str(e)
        raise ConfigError(f"{where}: cannot read it ({reason})") from None
    try:
        info = json.loads(text)
    except ValueError as e:
        raise ConfigError(f"{where}: not a JSON key file ({e}) — {HOW_TO_GET_A_KEY}") from None
    if not isinstance(info, dict):
        raise ConfigError(f"{where}: not a service-account key (a JSON object was expected)")
    kind = info.get("type")
    if kind != "service_account":
        what = f"a '{kind}' credentials file" if kind else "not a service-account key"
        if "installed" in info or "web" in info:
            what = "an OAuth client ID file, not a service-account key"
        raise ConfigError(
            f"{where}: {what} — gpumon needs a service-account key; {HOW_TO_GET_A_KEY}"
        )
    try:
        return service_account.Credentials.from_service_account_info(info, scopes=list(SCOPES))
    except (ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"{where}: not a usable service-account key ({e}) — download a new JSON key"
        ) from None


def authorized_session(
    credentials: service_account.Credentials, session: requests.Session | None = None
) -> AuthorizedSession:
    """An AuthorizedSession sending through ``session``'s adapters (tests mount one there).

    A 401 makes google-auth fetch a new token and retry once, no more.
    """
    base = session if session is not None else requests.Session()
    authed = AuthorizedSession(credentials, max_refresh_attempts=1, auth_request=Request(base))
    for prefix, adapter in base.adapters.items():
        authed.mount(prefix, adapter)
    # -v: every answer with its time — the token request (through base) and the API's.
    for http in (base, authed):
        if _log_response not in http.hooks["response"]:
            http.hooks["response"].append(_log_response)
    return authed


def _log_response(response: requests.Response, *args: object, **kwargs: object) -> None:
    """One line per HTTP answer: method, address (secret parameters masked), status, size,
    time. Never headers and never bodies: they carry the token and the signed assertion."""
    if not log.isEnabledFor(logging.INFO):
        return
    request = response.request
    log.info(
        "HTTP %s %s → %d %s (%s bytes) in %.0f ms",
        request.method,
        safe_url(request.url or ""),
        response.status_code,
        response.reason or "",
        response.headers.get("Content-Length", "?"),
        response.elapsed.total_seconds() * 1000,
    )


def safe_url(url: str) -> str:
    """``url`` with the values of token-, key- and signature-like query parameters masked
    (and long ones, such as a ``fields`` mask, shortened)."""
    parts = urlsplit(url)
    if not parts.query:
        return url

    def shown(name: str, value: str) -> str:
        if _SECRET_PARAM.search(name):
            return "***"
        return value if len(value) <= 40 else value[:37] + "..."

    query = [
        (name, shown(name, value)) for name, value in parse_qsl(parts.query, keep_blank_values=True)
    ]
    return urlunsplit(parts._replace(query=urlencode(query, safe="!:,'*().")))
