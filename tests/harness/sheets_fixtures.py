"""pytest fixtures for the local Sheets server; import them into a test module to use them.

    from harness.sheets_fixtures import google_fixture, sheets_server_fixture  # noqa: F401

(The fixtures are named ``sheets_server`` and ``google``; the functions carry a suffix so a test's
parameter does not shadow an imported name.)

``sheets_server`` fails the test at teardown if any request the server got was malformed (the
client may have swallowed the 400). ``google`` adds the seed sheet, a service-account key the
server trusts (the sheet shared with it) and a gpumon Config for the google backend.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from gpumon.config import Config, SheetConfig
from gpumon.sheet.google import GoogleBackend, open_backend
from harness.sheets_client import ACCOUNT, google_session, write_service_account_key
from harness.sheets_model import Spreadsheet
from harness.sheets_server import Person, SheetsServer, load_fixture


@pytest.fixture(name="sheets_server")
def sheets_server_fixture() -> Iterator[SheetsServer]:
    server = SheetsServer().start()
    try:
        yield server
    finally:
        server.stop()
    assert server.invalid == [], "requests Google would refuse as malformed:\n" + "\n".join(
        server.invalid
    )


@dataclass
class GoogleEnv:
    server: SheetsServer
    book: Spreadsheet
    key_file: Path
    config: Config
    tmp: Path

    @property
    def sheet(self):  # the seed's only worksheet
        return self.book.sheets[0]

    def person(self) -> Person:
        return Person(self.book)

    def session(self) -> requests.Session:
        return google_session(self.server)

    def backend(self, **overrides: object) -> GoogleBackend:
        """The production factory, given the loopback session; Config fields may be overridden."""
        for name, value in overrides.items():
            setattr(self.config.sheet, name, value)
        return open_backend(self.config, session=self.session())

    def values(self) -> list[list[str]]:
        """The sheet as values.get shows it (displayed text)."""
        sheet = self.sheet
        bounds = self.book.bounds(f"'{sheet.title}'")
        return self.book.read_values(bounds).get("values", [])


@pytest.fixture(name="google")
def google_fixture(sheets_server: SheetsServer, tmp_path: Path) -> GoogleEnv:
    book = sheets_server.add_spreadsheet(load_fixture(), shared_with=[ACCOUNT])
    key_file = write_service_account_key(sheets_server, tmp_path / "service-account.json")
    config = Config(
        path=str(tmp_path / "gpumon.toml"),
        state_dir=str(tmp_path / "state"),
        sheet=SheetConfig(
            backend="google",
            url=f"https://docs.google.com/spreadsheets/d/{book.id}/edit#gid=0",
            credentials=str(key_file),
            timeout_s=5.0,
            retry_budget_s=10.0,
        ),
    )
    return GoogleEnv(sheets_server, book, key_file, config, tmp_path)
