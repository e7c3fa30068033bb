"""A local Google Sheets v4 server for tests: stdlib HTTP on 127.0.0.1, the real gspread above it.

``SheetsServer`` answers the Sheets v4 REST methods gspread and gpumon use, an OAuth token
endpoint for service-account JWTs, and google-auth's access-boundary lookup. Every Sheets
request is checked against Google's discovery document first (``sheets_discovery``); an invalid
one gets Google's 400 *and* lands in ``server.invalid``, which the test fixture asserts empty, so
a client that swallows the 400 still fails its test. Its own answers are checked against the
response schemas too.

Tests drive it like this::

    server.fail(429, times=3, method="sheets.spreadsheets.values.batchUpdateByDataFilter")
    server.delay(2.5, method="sheets.spreadsheets.get")
    server.stall(2.5, method="sheets.spreadsheets.batchUpdate")  # applied, answered late
    server.after("sheets.spreadsheets.get", lambda book: person(book).insert_rows(9, 1))
    server.expire_tokens()                   # next call: 401, the client refreshes
    server.requests("sheets.spreadsheets.get")  # the request log

and reach it through ``sheets_client.google_session(server)`` (a requests adapter that sends
``https://sheets.googleapis.com/`` to this server; nothing leaves the machine).
"""

from __future__ import annotations

import base64
import copy
import json
import re
import secrets
import socket
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, unquote, urlsplit

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from harness.paths import SEED_SHEET
from harness.sheets_discovery import Call, Invalid, discovery
from harness.sheets_model import ApiError, Bounds, Spreadsheet, apply_mask, bad, parse_mask
from harness.sheets_values import user_entered_input

SCOPE = "https://www.googleapis.com/auth/spreadsheets"
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"  # what Google requires in `aud`
FIXTURE = SEED_SHEET
SEED_KEY = "1q4JKDHPubUlub8XbGVShh9ZTCfkOyZnIX0Vlb41j2xM"  # the key in the seed's sheet URL

_FAULT_TEXT = {
    401: (
        "UNAUTHENTICATED",
        "Request had invalid authentication credentials. Expected OAuth 2 access token, login "
        "cookie or other valid authentication credential. See "
        "https://developers.google.com/identity/sign-in/web/devconsole-project.",
    ),
    403: ("PERMISSION_DENIED", "The caller does not have permission"),
    404: ("NOT_FOUND", "Requested entity was not found."),
    429: (
        "RESOURCE_EXHAUSTED",
        "Quota exceeded for quota metric 'Write requests' and limit 'Write requests per minute "
        "per user' of service 'sheets.googleapis.com' for consumer 'project_number:000000000000'.",
    ),
    500: ("INTERNAL", "Internal error encountered."),
    502: ("UNAVAILABLE", "Bad Gateway"),
    503: ("UNAVAILABLE", "The service is currently unavailable."),
}


@dataclass
class Fault:
    status: int | None  # None: answer normally, after `delay`
    delay: float = 0.0
    times: int | None = 1  # None: forever
    method: str | None = None  # a discovery method id, e.g. "sheets.spreadsheets.get"
    http_method: str | None = None
    retry_after: float | None = None
    stall: float = 0.0  # seconds between applying the request and answering it

    def matches(self, method_id: str, http_method: str) -> bool:
        if self.times is not None and self.times <= 0:
            return False
        if self.method and self.method != method_id:
            return False
        return not (self.http_method and self.http_method != http_method)


@dataclass
class Logged:
    http_method: str
    path: str
    query: dict[str, list[str]]
    body: Any
    method_id: str | None
    status: int = 0
    account: str | None = None
    seconds: float = 0.0  # time the server spent on it (delays included)

    @property
    def cells(self) -> int:
        """Cell values sent (nulls, which the API skips, are not counted)."""
        return _count_values(self.body)


@dataclass
class Hook:
    method: str
    action: Callable[[Spreadsheet], None]
    times: int | None = 1


@dataclass
class Account:
    email: str
    public_key: rsa.RSAPublicKey
    key_id: str
    revoked: bool = False


class SheetsServer:
    def __init__(self) -> None:
        self.spreadsheets: dict[str, Spreadsheet] = {}
        self.shares: set[tuple[str, str]] = set()  # (spreadsheet id, account email)
        self.accounts: dict[str, Account] = {}
        self.tokens: dict[str, tuple[str, float]] = {}  # token → (email, expiry)
        self.token_requests: list[dict[str, Any]] = []
        self.faults: list[Fault] = []
        self.hooks: list[Hook] = []
        self.log: list[Logged] = []
        self.invalid: list[str] = []  # requests Google would refuse as malformed
        self.lock = threading.RLock()
        self._local = threading.local()
        self.discovery = discovery()
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._http.daemon_threads = True
        self._http.sheets = self  # type: ignore[attr-defined]
        self._thread: threading.Thread | None = None

    # -- lifecycle ------------------------------------------------------------------------------

    @property
    def port(self) -> int:
        return self._http.server_address[1]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def token_uri(self) -> str:
        return f"{self.url}/token"

    def start(self) -> SheetsServer:
        self._thread = threading.Thread(
            target=self._http.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()

    def __enter__(self) -> SheetsServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- state set-up ---------------------------------------------------------------------------

    def add_spreadsheet(self, book: Spreadsheet, shared_with: list[str] = ()) -> Spreadsheet:
        with self.lock:
            self.spreadsheets[book.id] = book
            for email in shared_with:
                self.shares.add((book.id, email))
        return book

    def share(self, spreadsheet_id: str, email: str) -> None:
        with self.lock:
            self.shares.add((spreadsheet_id, email))

    def unshare(self, spreadsheet_id: str, email: str) -> None:
        with self.lock:
            self.shares.discard((spreadsheet_id, email))

    def register_account(self, email: str, public_key: rsa.RSAPublicKey, key_id: str) -> None:
        with self.lock:
            self.accounts[email] = Account(email, public_key, key_id)

    def revoke_account(self, email: str) -> None:
        with self.lock:
            self.accounts[email].revoked = True
            self.expire_tokens()

    def expire_tokens(self) -> None:
        """Every access token handed out so far stops working (as at the end of its hour)."""
        with self.lock:
            self.tokens.clear()

    # -- fault injection and hooks --------------------------------------------------------------

    def fail(
        self,
        status: int,
        times: int | None = 1,
        method: str | None = None,
        http_method: str | None = None,
        retry_after: float | None = None,
    ) -> Fault:
        """Answer the next `times` matching requests (None: all) with this error status."""
        fault = Fault(status, 0.0, times, method, http_method, retry_after)
        with self.lock:
            self.faults.append(fault)
        return fault

    def delay(self, seconds: float, times: int | None = 1, method: str | None = None) -> Fault:
        """Answer the next matching requests only after `seconds` (to exceed a client timeout)."""
        fault = Fault(None, seconds, times, method)
        with self.lock:
            self.faults.append(fault)
        return fault

    def stall(self, seconds: float, times: int | None = 1, method: str | None = None) -> Fault:
        """Apply the next matching requests, then answer only after `seconds`: a client that
        times out has had its request applied all the same (as Google does)."""
        fault = Fault(None, 0.0, times, method, stall=seconds)
        with self.lock:
            self.faults.append(fault)
        return fault

    def clear_faults(self) -> None:
        with self.lock:
            self.faults.clear()

    def after(
        self, method: str, action: Callable[[Spreadsheet], None], times: int | None = 1
    ) -> None:
        """Run `action` (a person editing) after a matching request, before its answer leaves."""
        with self.lock:
            self.hooks.append(Hook(method, action, times))

    # -- the request log ------------------------------------------------------------------------

    def requests(self, method: str | None = None) -> list[Logged]:
        with self.lock:
            return [r for r in self.log if method is None or r.method_id == method]

    def clear_log(self) -> None:
        with self.lock:
            self.log.clear()

    def take_invalid(self) -> list[str]:
        """The invalid-request records so far, cleared (for tests that send bad requests)."""
        with self.lock:
            out, self.invalid = self.invalid, []
        return out

    # -- request handling (called from handler threads) -----------------------------------------

    def handle(
        self, verb: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        started = time.perf_counter()
        self._local.entry = None
        reply = self._handle(verb, target, headers, raw)
        if self._local.entry is not None:  # the server's own share of a client's latency
            self._local.entry.seconds = time.perf_counter() - started
        return reply

    def _handle(
        self, verb: str, target: str, headers: dict[str, str], raw: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        parts = urlsplit(target)
        path = parts.path
        query = parse_qs(parts.query, keep_blank_values=True)
        if verb == "POST" and path == "/token":
            return self._token(raw)
        m = re.fullmatch(r"/v1/projects/-/serviceAccounts/([^/]+)/allowedLocations", path)
        if verb == "GET" and m:
            # google-auth looks up the account's regional access boundary after each refresh;
            # "0x0" is the answer for an account without one.
            return _json(200, {"locations": [], "encodedLocations": "0x0"})
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            return self._invalid(verb, path, query, None, None, "Invalid JSON payload received.")
        refused = _refused_text(body)
        if refused:
            return self._invalid(verb, path, query, body, None, refused)
        try:
            call = self.discovery.match(verb, path, query, body)
        except Invalid as e:
            return self._invalid(verb, path, query, body, None, str(e), e.status)
        entry = Logged(verb, path, query, body, call.method.id)
        self._local.entry = entry
        with self.lock:
            self.log.append(entry)
            fault = next((f for f in self.faults if f.matches(call.method.id, verb)), None)
            if fault and fault.times is not None:
                fault.times -= 1
        if fault and fault.delay:
            time.sleep(fault.delay)
        if fault and fault.status:
            entry.status = fault.status
            extra = {"Retry-After": str(fault.retry_after)} if fault.retry_after else {}
            status_name, message = _FAULT_TEXT[fault.status]
            return _json(fault.status, _error(fault.status, status_name, message), extra)
        account = self._account(headers)
        entry.account = account
        if account is None:
            entry.status = 401
            return _json(401, _error(401, *_FAULT_TEXT[401]))
        with self.lock:
            try:
                book = self.spreadsheets.get(call.path_params.get("spreadsheetId", ""))
                if book is None:
                    raise ApiError(404, _FAULT_TEXT[404][1])
                if (book.id, account) not in self.shares:
                    raise ApiError(403, _FAULT_TEXT[403][1])
                answer = _METHODS[call.method.id](self, book, call)
                fields = query.get("fields")
                if fields:
                    answer = apply_mask(answer, parse_mask(fields[0]))
                self._check_response(call, answer)
                reply = _json(200, answer)  # serialised now: the hooks below change the model
                for hook in [h for h in self.hooks if h.method == call.method.id]:
                    if hook.times is not None:
                        hook.times -= 1
                        if hook.times <= 0:
                            self.hooks.remove(hook)
                    hook.action(book)
            except ApiError as e:
                entry.status = e.code
                if e.code in (400, 500, 501):  # malformed, or the harness itself is wrong
                    self.invalid.append(f"{verb} {unquote(path)}: {e.message}")
                return _json(e.code, e.body())
        entry.status = 200
        if fault and fault.stall:
            time.sleep(fault.stall)
        return reply

    def _invalid(
        self,
        verb: str,
        path: str,
        query: dict[str, list[str]],
        body: Any,
        method: str | None,
        message: str,
        status: int = 400,
    ) -> tuple[int, dict[str, str], bytes]:
        with self.lock:
            self.log.append(Logged(verb, path, query, body, method, status))
            self.invalid.append(f"{verb} {unquote(path)}: {message}")
        name = "INVALID_ARGUMENT" if status == 400 else "NOT_FOUND"
        return _json(status, _error(status, name, message))

    def _check_response(self, call: Call, answer: dict[str, Any]) -> None:
        schema = call.method.response
        if schema:
            try:
                self.discovery.check_value(answer, {"$ref": schema}, "")
            except Invalid as e:
                raise ApiError(500, f"local server answered off-schema: {e}") from None

    def _account(self, headers: dict[str, str]) -> str | None:
        auth = headers.get("authorization", "")
        if not auth.startswith("Bearer "):
            return None
        with self.lock:
            entry = self.tokens.get(auth[7:])
        if entry is None or entry[1] < time.time():
            return None
        return entry[0]

    # -- OAuth 2.0 token endpoint (JWT bearer grant, RFC 7523) ----------------------------------

    def _token(self, raw: bytes) -> tuple[int, dict[str, str], bytes]:
        form = {k: v[0] for k, v in parse_qs(raw.decode()).items()}
        with self.lock:
            self.token_requests.append(form)
        if form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer":
            return _json(400, {"error": "unsupported_grant_type"})
        try:
            header_b64, claims_b64, signature_b64 = form.get("assertion", "").split(".")
            header = json.loads(_b64decode(header_b64))
            claims = json.loads(_b64decode(claims_b64))
            signature = _b64decode(signature_b64)
        except ValueError:
            return _json(400, {"error": "invalid_grant", "error_description": "Invalid JWT."})
        account = self.accounts.get(claims.get("iss", ""))
        if account is None or account.revoked:
            return _json(
                400,
                {"error": "invalid_grant", "error_description": "Invalid grant: account not found"},
            )
        try:
            if header.get("alg") != "RS256":
                raise InvalidSignature
            account.public_key.verify(
                signature,
                f"{header_b64}.{claims_b64}".encode(),
                padding.PKCS1v15(),
                hashes.SHA256(),
            )
        except InvalidSignature:
            return _json(
                400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
            )
        now = time.time()
        problems = []
        if header.get("kid") != account.key_id:
            problems.append(f"kid {header.get('kid')!r} is not the key's id")
        if claims.get("aud") != GOOGLE_TOKEN_AUDIENCE:
            problems.append(f"aud {claims.get('aud')!r} is not {GOOGLE_TOKEN_AUDIENCE}")
        if (
            not (claims.get("iat", 0) - 60 <= now <= claims.get("exp", 0))
            or claims["exp"] - claims["iat"] > 3600
        ):
            problems.append("iat/exp out of range")
        if claims.get("scope") != SCOPE:
            problems.append(f"scope {claims.get('scope')!r} is not exactly {SCOPE}")
        if problems:
            with self.lock:
                self.invalid.append("POST /token: " + "; ".join(problems))
            return _json(400, {"error": "invalid_scope", "error_description": "; ".join(problems)})
        token = "ya29.local-" + secrets.token_urlsafe(24)
        with self.lock:
            self.tokens[token] = (account.email, now + 3600)
        return _json(200, {"access_token": token, "expires_in": 3599, "token_type": "Bearer"})


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive: requests pools its connections

    def setup(self) -> None:
        super().setup()
        # Headers and body go out in two writes; without this, Nagle + delayed ACK add 40 ms.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def _serve(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        headers = {k.lower(): v for k, v in self.headers.items()}
        server: SheetsServer = self.server.sheets  # type: ignore[attr-defined]
        status, extra, body = server.handle(self.command, self.path, headers, raw)
        try:
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=UTF-8")
            self.send_header("Content-Length", str(len(body)))
            for key, value in extra.items():
                self.send_header(key, value)
            self.end_headers()
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (its timeout) — as with Google, the work was done anyway

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve

    def log_message(self, format: str, *args: Any) -> None:
        pass


# --- the Sheets methods -----------------------------------------------------------------------


def _param(call: Call, name: str, default: str | None = None) -> str | None:
    values = call.query.get(name)
    return values[0] if values else default


def _bool(call: Call, name: str) -> bool:
    return (_param(call, name, "false") or "false").lower() == "true"


def _spreadsheets_get(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    ranges = call.query.get("ranges")
    fields = _param(call, "fields")
    if fields:  # with a field mask, includeGridData is ignored: the mask decides
        tree = parse_mask(fields)
        grid = "data" in tree.get("sheets", {}) or "*" in tree.get("sheets", {})
    else:
        grid = _bool(call, "includeGridData")
    return book.to_json(ranges, grid)


def _batch_update(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    body = call.body or {}
    replies = book.batch_update(body.get("requests") or [])
    out: dict[str, Any] = {"spreadsheetId": book.id, "replies": replies}
    if body.get("includeSpreadsheetInResponse"):
        out["updatedSpreadsheet"] = book.to_json(
            body.get("responseRanges"), bool(body.get("responseIncludeGridData"))
        )
    return out


def _value_options(call: Call, body: dict[str, Any] | None = None) -> tuple[str, str, str]:
    source = body if body is not None else {k: v[0] for k, v in call.query.items()}
    return (
        source.get("majorDimension") or "ROWS",
        source.get("valueRenderOption") or "FORMATTED_VALUE",
        source.get("dateTimeRenderOption") or "SERIAL_NUMBER",
    )


def _values_get(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    major, render, dates = _value_options(call)
    return book.read_values(book.bounds(call.path_params["range"]), major, render, dates)


def _values_batch_get(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    major, render, dates = _value_options(call)
    ranges = call.query.get("ranges", [])
    return {
        "spreadsheetId": book.id,
        "valueRanges": [book.read_values(book.bounds(r), major, render, dates) for r in ranges],
    }


def _write_range(book: Spreadsheet, text: str) -> tuple[Bounds, bool]:
    """Bounds to write at, and whether the range has an end the values must fit in."""
    bounds = book.bounds(text)
    ref = text.rsplit("!", 1)[-1] if "!" in text else text
    return bounds, ":" in ref


def _update_response(
    book: Spreadsheet, written: Bounds, cells: int, rows: set[int], cols: set[int]
) -> dict[str, Any]:
    out: dict[str, Any] = {"spreadsheetId": book.id, "updatedRange": written.a1()}
    if cells:
        out.update(updatedRows=len(rows), updatedColumns=len(cols), updatedCells=cells)
    return out


def _values_update(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    option = _param(call, "valueInputOption")
    if option is None:
        raise bad("'valueInputOption' is required but not specified")
    body = call.body or {}
    text = call.path_params["range"]
    if body.get("range") and book.bounds(body["range"]).a1() != book.bounds(text).a1():
        raise bad(
            f"Requested writing within range [{text}], but tried writing to [{body['range']}]"
        )
    bounds, exact = _write_range(book, text)
    written, cells, rows, cols = book.write_values(
        bounds, body.get("values") or [], body.get("majorDimension") or "ROWS", option, exact
    )
    out = _update_response(book, written, cells, rows, cols)
    if _bool(call, "includeValuesInResponse"):
        out["updatedData"] = book.read_values(written)
    return out


def _values_batch_update(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    body = call.body or {}
    targets = []
    for item in body.get("data") or []:
        bounds, exact = _write_range(book, item.get("range", ""))
        targets.append((item, bounds, exact, None))
    return _write_batch(book, body, targets)


def _values_batch_update_by_data_filter(
    server: SheetsServer, book: Spreadsheet, call: Call
) -> dict[str, Any]:
    body = call.body or {}
    targets = []
    for item in body.get("data") or []:
        data_filter = item.get("dataFilter") or {}
        # Every range the filter selects gets the values; a filter that selects nothing
        # (its row was deleted) writes nothing and gets no response entry.
        for bounds in book.data_filter_bounds(data_filter):
            targets.append((item, bounds, True, data_filter))
    return _write_batch(book, body, targets)


def _write_batch(
    book: Spreadsheet,
    body: dict[str, Any],
    targets: list[tuple[dict[str, Any], Bounds, bool, dict[str, Any] | None]],
) -> dict[str, Any]:
    """values.batchUpdate(ByDataFilter): every (values, where) or none of them."""
    option = body.get("valueInputOption") or "INPUT_VALUE_OPTION_UNSPECIFIED"
    render = body.get("responseValueRenderOption") or "FORMATTED_VALUE"
    dates = body.get("responseDateTimeRenderOption") or "SERIAL_NUMBER"
    responses = []
    touched: dict[str, set[Any]] = {"rows": set(), "cols": set(), "sheets": set()}
    total = 0
    snapshot = _snapshot(book)
    try:
        for item, bounds, exact, data_filter in targets:
            values, major = item.get("values") or [], item.get("majorDimension") or "ROWS"
            written, cells, rows, cols = book.write_values(bounds, values, major, option, exact)
            response = _update_response(book, written, cells, rows, cols)
            if data_filter is not None:  # UpdateValuesByDataFilterResponse: no spreadsheetId
                del response["spreadsheetId"]
                if not cells:
                    del response["updatedRange"]
                response["dataFilter"] = data_filter
            if body.get("includeValuesInResponse"):
                shown = bounds if data_filter is not None else written
                response["updatedData"] = book.read_values(shown, "ROWS", render, dates)
            responses.append(response)
            total += cells
            touched["rows"] |= {(bounds.sheet.id, r) for r in rows}
            touched["cols"] |= {(bounds.sheet.id, c) for c in cols}
            if cells:
                touched["sheets"].add(bounds.sheet.id)
    except ApiError:
        _restore(book, snapshot)
        raise
    out: dict[str, Any] = {"spreadsheetId": book.id}
    if total:
        out.update(
            totalUpdatedRows=len(touched["rows"]),
            totalUpdatedColumns=len(touched["cols"]),
            totalUpdatedCells=total,
            totalUpdatedSheets=len(touched["sheets"]),
        )
    if responses:
        out["responses"] = responses
    return out


def _values_batch_get_by_data_filter(
    server: SheetsServer, book: Spreadsheet, call: Call
) -> dict[str, Any]:
    body = call.body or {}
    major, render, dates = _value_options(call, body)
    out = []
    for data_filter in body.get("dataFilters") or []:
        for bounds in book.data_filter_bounds(data_filter):
            out.append(
                {
                    "valueRange": book.read_values(bounds, major, render, dates),
                    "dataFilters": [data_filter],
                }
            )
    answer: dict[str, Any] = {"spreadsheetId": book.id}
    if out:
        answer["valueRanges"] = out
    return answer


def _values_clear(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    bounds = book.bounds(call.path_params["range"])
    for r in range(bounds.start_row, bounds.end_row):
        for c in range(bounds.start_col, bounds.end_col):
            book.set_user_value(bounds.sheet, r, c, None)
    return {"spreadsheetId": book.id, "clearedRange": bounds.a1()}


def _metadata_search(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    matched = []
    for data_filter in (call.body or {}).get("dataFilters") or []:
        lookup = data_filter.get("developerMetadataLookup")
        if lookup is None:
            raise ApiError(
                501, "developerMetadata.search by range is not implemented by the local server"
            )
        for meta in book.lookup(lookup):
            matched.append(
                {"developerMetadata": book.metadata_json(meta), "dataFilters": [data_filter]}
            )
    return {"matchedDeveloperMetadata": matched} if matched else {}


def _metadata_get(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    meta = book.metadata.get(int(call.path_params["metadataId"]))
    if meta is None:
        raise ApiError(404, f"No developer metadata with ID: {call.path_params['metadataId']}")
    return book.metadata_json(meta)


_METHODS: dict[str, Callable[[SheetsServer, Spreadsheet, Call], dict[str, Any]]] = {
    "sheets.spreadsheets.get": _spreadsheets_get,
    "sheets.spreadsheets.batchUpdate": _batch_update,
    "sheets.spreadsheets.values.get": _values_get,
    "sheets.spreadsheets.values.batchGet": _values_batch_get,
    "sheets.spreadsheets.values.update": _values_update,
    "sheets.spreadsheets.values.batchUpdate": _values_batch_update,
    "sheets.spreadsheets.values.batchUpdateByDataFilter": _values_batch_update_by_data_filter,
    "sheets.spreadsheets.values.batchGetByDataFilter": _values_batch_get_by_data_filter,
    "sheets.spreadsheets.values.clear": _values_clear,
    "sheets.spreadsheets.developerMetadata.search": _metadata_search,
    "sheets.spreadsheets.developerMetadata.get": _metadata_get,
}


def _unimplemented(server: SheetsServer, book: Spreadsheet, call: Call) -> dict[str, Any]:
    raise ApiError(501, f"{call.method.id} is not implemented by the local server")


for _method in discovery().methods:
    _METHODS.setdefault(_method.id, _unimplemented)


def _snapshot(book: Spreadsheet) -> Any:
    return copy.deepcopy((book.props, book.sheets, book.metadata))


def _restore(book: Spreadsheet, snapshot: Any) -> None:
    book.props, book.sheets, book.metadata = snapshot
    book.moved()


# --- acting as a person -----------------------------------------------------------------------


class Person:
    """Edits a person makes in the browser, expressed as the API requests they amount to."""

    def __init__(self, book: Spreadsheet, sheet: int = 0) -> None:
        self.book = book
        self.sheet_id = book.sheets[sheet].id

    def _do(self, request: dict[str, Any]) -> None:
        self.book.batch_update([request])

    def insert_rows(self, at: int, count: int = 1) -> None:
        self._do(
            {
                "insertDimension": {
                    "range": self._dim("ROWS", at, at + count),
                    "inheritFromBefore": at > 0,
                }
            }
        )

    def delete_rows(self, start: int, count: int = 1) -> None:
        self._do({"deleteDimension": {"range": self._dim("ROWS", start, start + count)}})

    def move_rows(self, start: int, count: int, to: int) -> None:
        self._do(
            {
                "moveDimension": {
                    "source": self._dim("ROWS", start, start + count),
                    "destinationIndex": to,
                }
            }
        )

    def sort_rows(
        self, start: int, end: int, by_col: int, descending: bool = False, cols: int | None = None
    ) -> None:
        sheet = self.book.sheet_by_id(self.sheet_id)
        self._do(
            {
                "sortRange": {
                    "range": {
                        "sheetId": self.sheet_id,
                        "startRowIndex": start,
                        "endRowIndex": end,
                        "startColumnIndex": 0,
                        "endColumnIndex": cols or sheet.col_count,
                    },
                    "sortSpecs": [
                        {
                            "dimensionIndex": by_col,
                            "sortOrder": "DESCENDING" if descending else "ASCENDING",
                        }
                    ],
                }
            }
        )

    def type(self, row: int, col: int, text: str) -> None:
        """Type into a cell (the browser's input is USER_ENTERED)."""
        sheet = self.book.sheet_by_id(self.sheet_id)
        self.book.set_user_value(sheet, row, col, *user_entered_input(text))

    def _dim(self, dimension: str, start: int, end: int) -> dict[str, Any]:
        return {
            "sheetId": self.sheet_id,
            "dimension": dimension,
            "startIndex": start,
            "endIndex": end,
        }


def load_fixture(path: Path = FIXTURE, key: str = SEED_KEY) -> Spreadsheet:
    """The seed's "Server and GPU usage" sheet: values typed in by people, and the merges."""
    data = json.loads(path.read_text(encoding="utf-8"))
    book = Spreadsheet(key, data["spreadsheetTitle"], data["timeZone"])
    sheet = book.add_sheet(data["sheetTitle"])
    for r, line in enumerate(data["values"]):
        for c, text in enumerate(line):
            book.set_user_value(sheet, r, c, *user_entered_input(text))
    for m in data["merges"]:
        sheet.merges.append(
            [m["startRowIndex"], m["endRowIndex"], m["startColumnIndex"], m["endColumnIndex"]]
        )
    return book


# --- helpers ----------------------------------------------------------------------------------


def _json(
    status: int, body: Any, extra: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    return status, extra or {}, json.dumps(body, ensure_ascii=False).encode("utf-8")


def _error(code: int, status: str, message: str) -> dict[str, Any]:
    return {"error": {"code": code, "message": message, "status": status}}


def _b64decode(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


CELL_LIMIT = 50000  # characters Google accepts in one cell
_SURROGATE = re.compile("[\ud800-\udfff]")


def _refused_text(body: Any) -> str | None:
    """Why Google refuses a request body's text outright, or None: a lone surrogate (not valid
    Unicode, so not valid JSON text for Google), or a string longer than any cell holds."""
    stack = [body]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            if _SURROGATE.search(value):
                return "Invalid JSON payload received. Unpaired surrogate in string."
            if len(value) > CELL_LIMIT:
                return (
                    f"Your input contains more than the maximum of {CELL_LIMIT} characters in "
                    "a single cell."
                )
    return None


def _count_values(body: Any) -> int:
    if not isinstance(body, dict):
        return 0
    count = 0
    for item in body.get("data") or ([body] if "values" in body else []):
        for line in item.get("values") or []:
            count += sum(1 for v in line if v is not None)
    return count
