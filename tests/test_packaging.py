"""Every dependency has a range, and both ends of it are what the suite runs on: `make
test` installs the newest releases, `tox -e oldest` the pins of requirements/oldest.txt,
which must be the ranges' lower bounds."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _requirements() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    return [
        Requirement(r) for r in project["dependencies"] + [r for e in extras.values() for r in e]
    ]


def _pins() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "requirements" / "oldest.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            requirement = Requirement(line)
            (spec,) = requirement.specifier
            assert spec.operator == "==", line
            pins[canonicalize_name(requirement.name)] = Version(spec.version)
    return pins


def test_every_dependency_has_a_lower_and_an_upper_bound() -> None:
    for requirement in _requirements():
        operators = {spec.operator for spec in requirement.specifier}
        assert ">=" in operators and "<" in operators, str(requirement)


def test_the_oldest_pass_pins_exactly_the_lower_bounds() -> None:
    lower = {
        canonicalize_name(r.name): Version(spec.version)
        for r in _requirements()
        for spec in r.specifier
        if spec.operator == ">="
    }
    pins = _pins()
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    for requirement in project["dependencies"]:
        assert canonicalize_name(Requirement(requirement).name) in pins, requirement
    for name in ("sentry-sdk", "psycopg", "moto"):
        assert name in pins
    for name, version in pins.items():
        bound = lower.get(name, lower.get(name.removesuffix("-binary")))
        assert bound == version, f"{name}: oldest.txt pins {version}, pyproject says >={bound}"
