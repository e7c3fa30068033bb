"""The local Sheets server answers as Google did: gspread's recorded cassettes, replayed.

``../shared/fixtures/gspread-cassettes/*.json`` are real Google answers recorded by gspread's
own test suite (MIT, see LICENSE.txt there). Each cassette holds one or more runs of a test;
each run starts with a Drive ``files.create`` of a new spreadsheet and ends with its Drive
``files.delete``.

Compared: every Sheets v4 interaction (``https://sheets.googleapis.com/v4/...``) — status code
and the whole JSON body, structurally (same keys, same values), after mapping sheet ids: Google
picks random ids for new sheets, so an id seen first in an answer is paired with the local
server's id and that pairing is then required everywhere, requests included.

Skipped, and why:
- Drive calls (``www.googleapis.com/drive/v3``): gpumon never uses Drive (it opens the sheet by
  key with the spreadsheets scope only). The run's ``files.create`` is mapped to creating an empty
  spreadsheet ("Sheet1", 1000 × 26, Etc/GMT, as Google makes them) under the recorded id and
  title; ``files.get`` and ``files.delete`` are not replayed.
- Headers (dates, server names, content lengths) are not compared; bodies are.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from harness.paths import shared_cassettes
from harness.sheets_client import ACCOUNT, authorized, write_service_account_key
from harness.sheets_fixtures import sheets_server_fixture  # noqa: F401
from harness.sheets_model import Spreadsheet
from harness.sheets_server import SheetsServer

CASSETTES = shared_cassettes()
NAMES = sorted(p.name for p in CASSETTES.glob("*.json"))


def runs(cassette: dict[str, Any]) -> list[list[dict[str, Any]]]:
    out: list[list[dict[str, Any]]] = []
    for interaction in cassette["interactions"]:
        request = interaction["request"]
        if request["method"] == "POST" and "/drive/v3/files" in request["uri"]:
            out.append([])
        if out:
            out[-1].append(interaction)
    return out


class IdMap:
    """Google's random sheet ids ↔ the local server's, paired on first sight."""

    def __init__(self) -> None:
        self.local: dict[int, int] = {}

    def request(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {
                k: (self.local.get(v, v) if k == "sheetId" else self.request(v))
                for k, v in value.items()
            }
        if isinstance(value, list):
            return [self.request(v) for v in value]
        return value

    def differences(self, expected: Any, actual: Any, path: str = "") -> list[str]:
        if isinstance(expected, dict) and isinstance(actual, dict):
            out = []
            for key in sorted(set(expected) | set(actual)):
                where = f"{path}.{key}" if path else key
                if key not in actual:
                    out.append(f"{where}: missing (Google: {json.dumps(expected[key])[:80]})")
                elif key not in expected:
                    out.append(f"{where}: extra ({json.dumps(actual[key])[:80]})")
                elif key == "sheetId" and isinstance(expected[key], int):
                    paired = self.local.setdefault(expected[key], actual[key])
                    if paired != actual[key]:
                        out.append(f"{where}: {actual[key]} where {paired} was paired")
                else:
                    out += self.differences(expected[key], actual[key], where)
            return out
        if isinstance(expected, list) and isinstance(actual, list):
            if len(expected) != len(actual):
                return [f"{path}: {len(actual)} items, Google {len(expected)}: {actual!r:.120}"]
            return [
                d
                for i, (e, a) in enumerate(zip(expected, actual))
                for d in self.differences(e, a, f"{path}[{i}]")
            ]
        if expected != actual or type(expected) is not type(actual):
            return [f"{path}: {actual!r}, Google {expected!r}"]
        return []


@pytest.mark.parametrize("name", NAMES)
def test_answers_match_googles_recorded_answers(
    name: str, sheets_server: SheetsServer, tmp_path: Path
) -> None:
    cassette = json.loads((CASSETTES / name).read_text(encoding="utf-8"))
    key = write_service_account_key(sheets_server, tmp_path / "sa.json")
    session = authorized(sheets_server, key)

    compared = 0
    problems: list[str] = []
    for run in runs(cassette):
        created = json.loads(run[0]["response"]["body"]["string"])
        title = json.loads(run[0]["request"]["body"])["name"]
        book = Spreadsheet(created["id"], title)
        book.add_sheet("Sheet1")
        sheets_server.add_spreadsheet(book, shared_with=[ACCOUNT])
        ids = IdMap()
        for interaction in run[1:]:
            request, response = interaction["request"], interaction["response"]
            if urlsplit(request["uri"]).hostname != "sheets.googleapis.com":
                continue  # Drive: out of scope (see the module docstring)
            body = json.loads(request["body"]) if request.get("body") else None
            answer = session.request(
                request["method"], request["uri"], json=ids.request(body), timeout=5
            )
            expected_text = response["body"]["string"]
            expected = json.loads(expected_text) if expected_text else None
            where = f"{request['method']} {urlsplit(request['uri']).path[60:]}"
            if answer.status_code != response["status"]["code"]:
                problems.append(
                    f"{where}: status {answer.status_code}, Google {response['status']['code']}"
                    f" ({answer.text[:200]})"
                )
                continue
            problems += [f"{where}: {d}" for d in ids.differences(expected, answer.json())]
            compared += 1
    assert problems == []
    assert compared >= 3
