"""agent/constraints-oldest.txt pins the oldest release of each agent dependency its ranges
allow; scripts/test.sh runs the agent's tests in .venv-oldest with exactly those."""

from __future__ import annotations

import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

AGENT = Path(__file__).resolve().parents[2] / "agent"


def pins() -> dict[str, Version]:
    out = {}
    for line in (AGENT / "constraints-oldest.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, version = line.split("==")
            out[name.lower()] = Version(version)
    return out


def agent_requirements() -> list[Requirement]:
    project = tomllib.loads((AGENT / "pyproject.toml").read_text())["project"]
    extras = [r for group in project["optional-dependencies"].values() for r in group]
    return [Requirement(r) for r in project["dependencies"] + extras]


def test_every_agent_dependency_is_pinned_at_the_lower_bound_of_its_range():
    pinned = pins()
    for requirement in agent_requirements():
        name = requirement.name.lower()
        assert name in pinned, f"{name}: add its oldest release to constraints-oldest.txt"
        version = pinned[name]
        assert version in requirement.specifier, f"{name}=={version} is outside {requirement}"
        [floor] = [Version(s.version) for s in requirement.specifier if s.operator == ">="]
        # ">=11.450" allows 11.450.51 first: the pin shares the bound's release numbers.
        assert version.release[: len(floor.release)] == floor.release, (
            f"{name}=={version} is not the oldest release >= {floor}: lower the pin or the bound"
        )
    assert set(pinned) == {r.name.lower() for r in agent_requirements()}


@pytest.mark.skipif(
    Path(sys.prefix).name != ".venv-oldest", reason="checks the installed versions in .venv-oldest"
)
def test_the_oldest_venv_really_has_the_pinned_releases():
    for name, version in pins().items():
        assert Version(metadata.version(name)) == version, name
