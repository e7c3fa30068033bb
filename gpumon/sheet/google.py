"""The Google Sheets backend: gspread's HTTP client + a service account, one read and one write.

Per push (``gpumon.fleet.push_once``):

- ``read``: ONE ``spreadsheets.get`` with ``includeGridData`` and a field mask — sheet id and
  title, the spreadsheet's time zone, merges, each cell's displayed text, and the developer
  metadata gpumon left on rows ("gpumon.row" = the row's anchor, e.g. "sigbsp|2").
- ``write``: ONE ``values:batchUpdateByDataFilter`` (``valueInputOption=RAW``). Each row's
  values are addressed by the id of its anchor metadata, not by a row number: Sheets moves
  row metadata with its row when rows are inserted, deleted or moved, so a value lands in the
  row it was meant for, or — the row deleted — nowhere. A row's values are ``[null, …, v]``:
  the API skips nulls, so the people's cells of that row are untouched.
  The write asks for the rows back (``includeValuesInResponse``) and compares each with the read:
  a sort between read and write moves cell contents, and the API does not document that row
  metadata follows a sort. If a row now holds another row's content, the values written there
  are replaced, in one more request, by what belongs to the content now in that row.
- ``setup``: ONE ``spreadsheets.batchUpdate``: stale anchors removed, header cells added,
  rows anchored, rows inserted (``--add-rows``), and once per sheet the formats of gpumon's
  columns (ON green / OFF red, utilisation bands, the time format), marked done by sheet
  metadata "gpumon.setup" so they are never applied twice or to people's columns.

The request bodies are built by gpumon.sheet.google_requests (pure functions); this module
sends them, reads the answers and turns failures into errors that say what to do.

No ``open_by_key``/``worksheet()`` (each costs a read) and no Drive call: the spreadsheet is
opened by key, the worksheet found in the read. Errors: 429/5xx/timeouts are retried with
back-off inside ``[sheet] retry_budget_s``; 401 gets one token refresh; 403 names the service
account to share the sheet with; 404 names the key. Failures are ``SheetError`` (the sheet) or
``ConfigError`` (the key file, the URL, the worksheet name).
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections.abc import Callable
from typing import Any

import gspread
import requests
import urllib3
from google.auth import exceptions as auth_exceptions
from gspread.urls import SPREADSHEETS_API_V4_BASE_URL

from gpumon.config import Config, ConfigError
from gpumon.sheet.google_auth import authorized_session, load_credentials, safe_url
from gpumon.sheet.google_requests import (
    ROW_KEY,
    SETUP_KEY,
    SETUP_VERSION,
    Anchor,
    SheetRead,
    owned_sheet_id,
    owned_sheet_requests,
    setup_requests,
    write_body,
)
from gpumon.sheet.grid import (
    BarChart,
    CellWrite,
    Grid,
    Merge,
    OwnedWrite,
    Setup,
    SheetError,
    WriteStats,
    a1,
)
from gpumon.sheet.retry import Budget, OutOfBudget, Retry
from gpumon_agent.text import cut

log = logging.getLogger("gpumon.sheet.http")  # -v: each request and its time

# Everything one push needs, in one GET.
READ_FIELDS = (
    "properties(title,timeZone),"
    "sheets(properties(sheetId,title,index,gridProperties(rowCount,columnCount)),merges,"
    "developerMetadata(metadataId,metadataKey,metadataValue),"
    "data(startRow,startColumn,rowData(values(formattedValue)),"
    "rowMetadata(developerMetadata(metadataId,metadataKey,metadataValue))))"
)


_KEY_IN_URL = re.compile(r"/spreadsheets/d/([A-Za-z0-9_-]+)")
_BARE_KEY = re.compile(r"^[A-Za-z0-9_-]{20,}$")
_GID = re.compile(r"[#?&]gid=(\d+)")


class GoogleSheetError(SheetError):
    """A SheetError from Google, with what went wrong as a word: kind is one of
    "quota", "unavailable", "timeout", "network", "forbidden", "not_found", "bad_request"."""

    def __init__(self, message: str, kind: str, status: int | None = None) -> None:
        super().__init__(message)
        self.kind = kind
        self.status = status


def parse_sheet_url(url: str, origin: str) -> tuple[str, int | None]:
    """``[sheet] url`` (a sheet URL or a bare key) → (key, gid or None)."""
    text = url.strip()
    m = _KEY_IN_URL.search(text)
    key = m.group(1) if m else (text if _BARE_KEY.match(text) else None)
    if key is None:
        raise ConfigError(
            f"{origin}, [sheet] url: {url!r} is not a Google Sheets URL or key — copy the "
            "address of the sheet from the browser, e.g. "
            "https://docs.google.com/spreadsheets/d/KEY/edit#gid=0"
        )
    gid = _GID.search(text)
    return key, int(gid.group(1)) if gid else None


def open_backend(config: Config, session: requests.Session | None = None) -> GoogleBackend:
    """The backend for ``[sheet] backend = "google"``; tests pass a session with an adapter."""
    sheet = config.sheet
    if not sheet.url:
        raise ConfigError(f"{config.origin}, [sheet] url: the google backend needs the sheet URL")
    key, gid = parse_sheet_url(sheet.url, config.origin)
    credentials = load_credentials(sheet.credentials, config.origin)
    client = gspread.Client(auth=credentials, session=authorized_session(credentials, session))
    return GoogleBackend(
        client.http_client,
        key,
        account=credentials.service_account_email,
        gid=gid,
        worksheet=sheet.worksheet,
        timeout_s=sheet.timeout_s,
        retry_budget_s=sheet.retry_budget_s,
        origin=config.origin,
        credentials_path=sheet.credentials,
    )


class GoogleBackend:
    def __init__(
        self,
        http: gspread.http_client.HTTPClient,
        key: str,
        *,
        account: str,
        gid: int | None = None,
        worksheet: str | None = None,
        timeout_s: float = 20.0,
        retry_budget_s: float = 30.0,
        origin: str = "gpumon.toml",
        credentials_path: str = "",
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        self.http = http
        self.key = key
        self.account = account
        self.gid = gid
        self.worksheet = worksheet
        self.origin = origin
        self.credentials_path = credentials_path
        self.budget = Budget(retry_budget_s)
        self.retry = Retry(self.budget, timeout_s, _transient, sleep=sleep)
        self._last: SheetRead | None = None
        self._after_setup = False

    # -- the Backend protocol -------------------------------------------------------------------

    def read(self) -> Grid:
        if not self._after_setup:  # a new push; the read after a set-up stays in its budget
            self.budget.restart()
        self._after_setup = False
        params = {"includeGridData": "true", "fields": READ_FIELDS}
        if self.worksheet:
            params["ranges"] = "'" + self.worksheet.replace("'", "''") + "'"
        answer = self._call("get", f"{SPREADSHEETS_API_V4_BASE_URL}/{self.key}", params=params)
        sheet = self._pick_sheet(answer.get("sheets", []), answer)
        props = sheet["properties"]
        grid_props = props.get("gridProperties", {})
        read = SheetRead(
            sheet_id=props.get("sheetId", 0),
            title=props.get("title", ""),
            cols=grid_props.get("columnCount", 0),
            values=[],
        )
        for data in sheet.get("data", []):
            top, left = data.get("startRow", 0), data.get("startColumn", 0)
            for i, row in enumerate(data.get("rowData", [])):
                texts = [cell.get("formattedValue", "") for cell in row.get("values", [])]
                _place(read.values, top + i, left, texts)
            for i, meta in enumerate(data.get("rowMetadata", [])):
                for entry in meta.get("developerMetadata", []):
                    if entry.get("metadataKey") == ROW_KEY:
                        anchor = Anchor(
                            entry.get("metadataValue", ""), entry["metadataId"], top + i
                        )
                        read.anchors.setdefault(anchor.value, []).append(anchor)
                        read.row_metadata.setdefault(top + i, []).append(anchor.metadata_id)
        for line in read.values:
            while line and line[-1] == "":
                line.pop()
        while read.values and not read.values[-1]:
            read.values.pop()
        for entry in sheet.get("developerMetadata", []):
            if entry.get("metadataKey") == SETUP_KEY:
                read.setup_id = entry["metadataId"]
                version, _, kinds = (entry.get("metadataValue") or "").partition(":")
                if version == SETUP_VERSION:
                    read.formatted = {k for k in kinds.split(",") if k}
        self._last = read
        row_anchors: dict[int, str] = {}
        for anchors in read.anchors.values():
            for anchor in anchors:
                row_anchors.setdefault(anchor.row, anchor.value)
        return Grid(
            title=read.title,
            time_zone=answer.get("properties", {}).get("timeZone", "Etc/GMT"),
            values=read.values,
            merges=[
                Merge(
                    m.get("startRowIndex", 0),
                    m.get("endRowIndex", 0),
                    m.get("startColumnIndex", 0),
                    m.get("endColumnIndex", 0),
                )
                for m in sheet.get("merges", [])
            ],
            sheet_id=read.sheet_id,
            row_anchors=row_anchors,
            anchored=True,
        )

    def write(self, writes: list[CellWrite]) -> WriteStats:
        stats = WriteStats()
        if not writes:
            return stats
        read = self._require_read()
        rows: dict[str, dict[int, Any]] = {}
        for w in writes:
            anchors = read.anchors.get(w.anchor or "", [])
            if w.anchor is None:
                stats.skipped.append(f"{a1(w.row, w.col)}: row has no anchor yet")
            elif len(anchors) != 1:
                where = "is on several rows" if anchors else "was not found in the read"
                stats.skipped.append(f"{a1(w.row, w.col)}: the row anchor '{w.anchor}' {where}")
            elif isinstance(w.value, float) and not math.isfinite(w.value):
                stats.skipped.append(f"{a1(w.row, w.col)}: {w.value} cannot be written")
            else:
                rows.setdefault(w.anchor, {})[w.col] = w.value
        if not rows:
            return stats
        attempts = self.budget.attempts
        answer = self._send_rows(read, rows, verify=True)
        stats.cells = sum(len(cols) for cols in rows.values())
        corrections = self._check_rows(read, rows, answer, stats)
        if corrections:
            self._send_rows(read, corrections, verify=False)
            stats.cells += sum(len(cols) for cols in corrections.values())
        stats.requests = self.budget.attempts - attempts
        return stats

    def setup(self, setup: Setup) -> WriteStats:
        read = self._require_read()
        built = setup_requests(read, setup)
        stats = WriteStats(cells=built.cells)
        requests_ = built.requests
        if not requests_:
            return stats
        attempts = self.budget.attempts
        try:
            # Row inserts and anchors apply twice if sent twice (duplicated rows, anchors that
            # then block those rows for good): sent again only if it surely never arrived.
            self._call(
                "post",
                f"{SPREADSHEETS_API_V4_BASE_URL}/{self.key}:batchUpdate",
                json={"requests": requests_},
                resend=_unsent,
            )
        except _Unanswered as e:
            # It may have been applied. The push reads the sheet again and plans on what it
            # finds: what was applied is used, what was not is done by the next push.
            stats.skipped.append(
                f"set-up: {e}; it may have been applied all the same, so it is not sent again — "
                "the sheet is read again, and the next push completes whatever is missing"
            )
        stats.requests = self.budget.attempts - attempts
        self._after_setup = True
        return stats

    def write_owned(
        self,
        title: str,
        rows: list[list[Any]],
        chart: BarChart | None,
        *,
        create: bool,
        clear_rows: int = 0,
    ) -> OwnedWrite:
        """Rewrite gpumon's own worksheet ``title`` (its values only) in ONE batchUpdate; with
        ``create``, add it first and its chart after. Never touches the lab's worksheet: the
        owned one is addressed by the sheetId gpumon gave it. Raises SheetError."""
        read = self._require_read()
        sheet_id = owned_sheet_id(title)
        if read.sheet_id == sheet_id or read.title == title:
            return OwnedWrite(
                problem=f"[history] sheet_title {title!r} names the lab's own worksheet; give "
                "gpumon's another name"
            )
        self.budget.restart()
        attempts = self.budget.attempts
        out = OwnedWrite()
        url = f"{SPREADSHEETS_API_V4_BASE_URL}/{self.key}:batchUpdate"

        def send(make: bool) -> None:
            body = {
                "requests": owned_sheet_requests(sheet_id, title, rows, chart, make, clear_rows)
            }
            # Adding a sheet must not be sent twice; a rewrite of values may.
            self._call("post", url, json=body, resend=_unsent if make else None)

        try:
            try:
                send(create)
                out.created = out.exists = True
            except GoogleSheetError as e:
                text = str(e)
                if e.kind != "bad_request":
                    raise
                if create and "already exists" in text and "name" not in text:
                    send(False)  # ours, from an earlier run whose record was lost
                    out.exists = True
                elif create and "already exists" in text:
                    out.problem = (
                        f"a worksheet named {title!r} that gpumon did not make is in the "
                        "spreadsheet; gpumon leaves it alone — rename it, or set [history] "
                        "sheet_title to another name"
                    )
                elif not create and "No grid with id" in text:
                    out.problem = f"worksheet {title!r} was deleted; it is made again next time"
                else:
                    raise
        except _Unanswered as e:
            out.problem = f"{e}; it may have been applied, so it is not sent again"
        out.requests = self.budget.attempts - attempts
        return out

    def close(self) -> None:
        session = getattr(self.http, "session", None)
        if session is not None:
            session.close()

    # -- internals ------------------------------------------------------------------------------

    def _send_rows(
        self, read: SheetRead, rows: dict[str, dict[int, Any]], verify: bool
    ) -> dict[str, Any]:
        body = write_body(read, rows, verify)
        url = f"{SPREADSHEETS_API_V4_BASE_URL}/{self.key}/values:batchUpdateByDataFilter"
        return self._call("post", url, json=body)

    def _check_rows(
        self,
        read: SheetRead,
        rows: dict[str, dict[int, Any]],
        answer: dict[str, Any],
        stats: WriteStats,
    ) -> dict[str, dict[int, Any]]:
        """Compare each row written with the read; plan corrections for rows that moved."""
        by_id = {read.anchors[v][0].metadata_id: v for v in rows}
        seen: dict[str, list[str]] = {}
        for response in answer.get("responses", []):
            lookup = response.get("dataFilter", {}).get("developerMetadataLookup", {})
            value = by_id.get(int(lookup.get("metadataId", -1)))
            if value is not None:
                lines = response.get("updatedData", {}).get("values") or [[]]
                seen[value] = [str(v) for v in lines[0]]
        corrections: dict[str, dict[int, Any]] = {}
        anchor_of_row = {a.row: v for v, lst in read.anchors.items() for a in lst if len(lst) == 1}
        for value, cols in rows.items():
            row = read.anchors[value][0].row
            if value not in seen:
                stats.skipped.append(f"row {row + 1} ('{value}') was deleted before the write")
                continue
            now = seen[value]
            if _same_outside(now, _line(read.values, row), cols):
                continue
            # The row's content changed between read and write: moved (a sort) or edited.
            sources = [
                r
                for r in range(len(read.values))
                if _same_outside(now, _line(read.values, r), cols)
            ]
            if len(sources) != 1:
                stats.skipped.append(
                    f"row {row + 1} ('{value}') changed while gpumon wrote it; its cells are "
                    "checked again on the next push"
                )
                continue
            source = sources[0]
            owner = anchor_of_row.get(source)
            theirs = rows.get(owner, {}) if owner else {}
            fix = {c: theirs.get(c, _cell(read.values, source, c)) for c in {*cols, *theirs}}
            corrections[value] = fix
            stats.skipped.append(
                f"row {row + 1} ('{value}'): rows were sorted between read and write, so its "
                f"values wait for the next push; the row now holds what row {source + 1} held "
                "and gets that row's values instead"
            )
        return corrections

    def _pick_sheet(self, sheets: list[dict[str, Any]], answer: dict[str, Any]) -> dict[str, Any]:
        titles = [s.get("properties", {}).get("title", "") for s in sheets]
        if self.worksheet:
            for sheet, title in zip(sheets, titles):
                if title == self.worksheet:
                    return sheet
        elif self.gid is not None:
            for sheet in sheets:
                if sheet.get("properties", {}).get("sheetId", 0) == self.gid:
                    return sheet
        elif sheets:
            return min(sheets, key=lambda s: s.get("properties", {}).get("index", 0))
        wanted = f"worksheet '{self.worksheet}'" if self.worksheet else f"gid={self.gid}"
        name = answer.get("properties", {}).get("title", self.key)
        raise ConfigError(
            f"{self.origin}, [sheet]: spreadsheet '{name}' has no {wanted} (it has: "
            f"{', '.join(repr(t) for t in titles) or 'none'}) — fix [sheet] worksheet or the gid "
            "in [sheet] url"
        )

    def _require_read(self) -> SheetRead:
        if self._last is None:
            raise SheetError("internal: write or setup before any read of the sheet")
        return self._last

    def _call(
        self,
        method: str,
        url: str,
        params: dict[str, str] | None = None,
        json: Any = None,
        resend: Callable[[BaseException], float | None] | None = None,
    ) -> dict[str, Any]:
        """One API call with bounded retries. ``resend``: for a request that must not apply
        twice, which failures may be retried; any other failure after which the server may
        have applied it raises ``_Unanswered``."""

        def attempt(timeout: float) -> dict[str, Any]:
            self.http.set_timeout(timeout)
            started = time.monotonic()
            try:
                return self.http.request(method, url, params=params, json=json).json()
            except (requests.RequestException, OSError) as e:  # no answer: no response hook
                log.info(
                    "HTTP %s %s failed after %.0f ms: %s",
                    method.upper(),
                    safe_url(url),
                    (time.monotonic() - started) * 1000,
                    _short(e),
                )
                raise

        try:
            try:
                return self.retry.call(attempt, resend)
            except Exception as e:
                last = e.last if isinstance(e, OutOfBudget) else e
                if resend is not None and _maybe_applied(last):
                    raise _Unanswered(self._unanswered(last)) from None
                raise
        except OutOfBudget as e:
            raise self._gave_up(e) from None
        except gspread.exceptions.APIError as e:
            raise self._api_error(e) from None
        except auth_exceptions.RefreshError as e:
            raise self._refused_key(e) from None
        except ValueError as e:  # the answer was not JSON
            raise GoogleSheetError(
                f"Google Sheets answered with something not JSON ({e})", "unavailable"
            ) from None

    def _unanswered(self, last: BaseException) -> str:
        if isinstance(last, requests.Timeout):
            return f"no answer from Google Sheets within {self.retry.timeout_s:g} s"
        if isinstance(last, gspread.exceptions.APIError):
            return f"Google Sheets answered {last.response.status_code} ({_api_message(last)})"
        return f"the connection to Google Sheets failed mid-request ({_short(last)})"

    def _gave_up(self, e: OutOfBudget) -> GoogleSheetError:
        last = e.last
        if isinstance(last, gspread.exceptions.APIError):
            code = last.response.status_code
            kind = "quota" if code == 429 else "unavailable"
            what = "quota exceeded (429)" if code == 429 else f"server error {code}"
        elif isinstance(last, requests.Timeout):
            code, kind, what = None, "timeout", f"no answer within {self.retry.timeout_s:g} s"
        elif isinstance(last, TimeoutError):
            code, kind, what = None, "timeout", str(last)
        else:
            code, kind, what = None, "network", f"cannot reach Google ({_short(last)})"
        return GoogleSheetError(
            f"Google Sheets: {what}; gave up after {e.tries} tries in {e.spent:.1f} s "
            f"([sheet] retry_budget_s = {self.budget.seconds:g}); the next push will try again",
            kind,
            code,
        )

    def _api_error(self, e: gspread.exceptions.APIError) -> Exception:
        code = e.response.status_code
        detail = _api_message(e)
        if code == 401:
            return ConfigError(
                f"{self.credentials_path} ([sheet] credentials in {self.origin}): Google refused "
                f"the access token of {self.account} even after a refresh (401: {detail}) — the "
                "key may have been revoked; create a new JSON key"
            )
        if code == 403:
            if re.search(r"has not been used|is disabled|SERVICE_DISABLED", detail):
                return GoogleSheetError(
                    f"the Google Sheets API is not enabled for the project of {self.account}: "
                    f"enable it in the Google Cloud console (APIs & Services) — {detail}",
                    "forbidden",
                    code,
                )
            return GoogleSheetError(
                f"{self.account} may not edit spreadsheet {self.key} (403: {detail}) — in Google "
                f"Sheets, Share the sheet with {self.account} as Editor",
                "forbidden",
                code,
            )
        if code == 404:
            return GoogleSheetError(
                f"no spreadsheet with key {self.key} (404) — check [sheet] url in {self.origin}",
                "not_found",
                code,
            )
        return GoogleSheetError(
            f"Google Sheets refused the request ({code}: {detail})", "bad_request", code
        )

    def _refused_key(self, e: auth_exceptions.RefreshError) -> ConfigError:
        return ConfigError(
            f"{self.credentials_path} ([sheet] credentials in {self.origin}): Google would not "
            f"issue a token for {self.account} ({_short(e)}) — the key may have been deleted or "
            "the account disabled; create a new JSON key"
        )


# --- helpers ----------------------------------------------------------------------------------


def _transient(e: BaseException) -> float | None:
    """Seconds to wait at least before retrying, or None when retrying cannot help."""
    if isinstance(e, gspread.exceptions.APIError):
        code = e.response.status_code
        if code == 429 or code in (500, 502, 503, 504):
            retry_after = e.response.headers.get("Retry-After", "")
            try:
                return max(0.0, float(retry_after))
            except ValueError:
                return 0.0
        return None
    if isinstance(e, (requests.Timeout, requests.ConnectionError, auth_exceptions.TransportError)):
        return 0.0
    if isinstance(e, auth_exceptions.RefreshError) and getattr(e, "retryable", False):
        return 0.0
    return None


class _Unanswered(Exception):
    """A request that must not apply twice failed after it may have reached the server."""


def _unsent(e: BaseException) -> float | None:
    """Like ``_transient``, for requests that must not apply twice: retry only failures after
    which the server surely did not apply it — a 429 (refused before any work), no connection
    made at all, or no access token yet (google-auth fetches it before sending)."""
    if isinstance(e, gspread.exceptions.APIError):
        return _transient(e) if e.response.status_code == 429 else None
    if _maybe_applied(e):
        return None
    return _transient(e)


def _maybe_applied(e: BaseException | None) -> bool:
    """Could the server have applied the request, though no good answer came back?"""
    if isinstance(e, gspread.exceptions.APIError):
        return e.response.status_code >= 500
    if isinstance(e, requests.ConnectTimeout):
        return False  # the connection was never made
    if isinstance(e, requests.ConnectionError):
        reason = getattr(e.args[0], "reason", None) if e.args else None
        return not isinstance(reason, urllib3.exceptions.NewConnectionError)
    return isinstance(e, requests.Timeout)  # a read timeout: sent, maybe applied


def _api_message(e: gspread.exceptions.APIError) -> str:
    try:
        return str(e.response.json()["error"]["message"])
    except (ValueError, KeyError, TypeError):
        return e.response.text[:200] or e.response.reason or "no detail"


def _short(e: BaseException) -> str:
    return cut(str(e.args[0]) if e.args else type(e).__name__, 160)


def _place(values: list[list[str]], row: int, left: int, texts: list[str]) -> None:
    while len(values) <= row:
        values.append([])
    line = values[row]
    if len(line) < left + len(texts):
        line.extend([""] * (left + len(texts) - len(line)))
    line[left : left + len(texts)] = texts


def _line(values: list[list[str]], row: int) -> list[str]:
    return values[row] if 0 <= row < len(values) else []


def _cell(values: list[list[str]], row: int, col: int) -> str:
    line = _line(values, row)
    return line[col] if col < len(line) else ""


def _same_outside(now: list[str], then: list[str], skip: dict[int, Any]) -> bool:
    """Do two rows agree on every cell except the columns in ``skip``?"""
    width = max(len(now), len(then))
    for col in range(width):
        if col in skip:
            continue
        a = now[col] if col < len(now) else ""
        b = then[col] if col < len(then) else ""
        if a != b:
            return False
    return True
