"""[people]: who is who — a person's name as the Usage column says it → their Unix users."""

from __future__ import annotations

import pytest

from gpumon.config import ConfigError, parse

BASE = "[servers.box]\nlocal = true\n"


def people(body: str) -> dict[str, list[str]]:
    return parse(BASE + "[people]\n" + body, "gpumon.toml").people_users


def test_people_map_names_to_unix_users():
    assert people('Niv = ["niv", "nkim"]\nlww = "lww"\n"Hyun-Chul Kim" = ["khc"]\n') == {
        "Niv": ["niv", "nkim"],
        "lww": ["lww"],
        "Hyun-Chul Kim": ["khc"],
    }


def test_no_people_section_is_no_people():
    assert parse(BASE, "gpumon.toml").people == {}


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("Niv = []", "give at least one Unix user"),
        ("Niv = [1]", "expected a list of strings"),
        ('Niv = ["ni v"]', "is not a Unix user name"),
        ('Niv = ["-rf"]', "is not a Unix user name"),
        ('Niv = ["' + "a" * 70 + '"]', "is not a Unix user name"),
        ('Niv = ["niv"]\nniv = ["nkim"]', "are one name to gpumon"),
        ('Niv = ["niv"]\nlww = ["niv"]', "is listed for 'Niv' too"),
        ('"" = ["niv"]', "a person's name as the Usage column says it"),
        ('"' + "N" * 65 + '" = ["niv"]', "a person's name"),
        ('"Niv\\u0007" = ["niv"]', "a person's name"),
        ("Niv = { users = [1] }", "expected a list of strings"),
        ("Niv = { users = [] }", "give at least one Unix user"),
        ('Niv = { users = ["niv"], email = "not an address" }', "is not an e-mail address"),
        ("Niv = 3", "give the person's Unix users as a list"),
    ],
)
def test_a_bad_people_entry_names_the_line_and_the_fix(body, said):
    with pytest.raises(ConfigError) as e:
        people(body)
    assert said in str(e.value)
    assert "gpumon.toml" in str(e.value) and "[people" in str(e.value)


def test_people_must_be_a_table():
    with pytest.raises(ConfigError, match="must be a table"):
        parse('people = "Niv"\n' + BASE, "gpumon.toml")


def test_a_person_may_be_a_table_with_users_and_an_address():
    config = parse(
        BASE + '[people]\nNiv = { users = ["niv", "nkim"], email = "niv@lab.example" }\n',
        "gpumon.toml",
    )
    assert config.people_users == {"Niv": ["niv", "nkim"]}
    assert config.people["Niv"].email == "niv@lab.example"
