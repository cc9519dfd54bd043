"""Every dependency has a range, and both ends of it are what the suite runs on: `make
test` installs the newest releases, `tox -e oldest` the pins of requirements/oldest.txt,
which must be the ranges' lower bounds. A plain install pulls only what every install
needs; the rest are extras, and the version is written in one place."""

from __future__ import annotations

import re
import shlex
import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

import django_mirror

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _requirements() -> list[Requirement]:
    """Every requirement of the project and its extras, less an extra's reference to
    other extras of the project itself (``dev`` takes ``postgres``, ``sentry``, ...)."""
    extras = PROJECT["optional-dependencies"]
    given = [Requirement(r) for r in PROJECT["dependencies"]]
    given += [Requirement(r) for e in extras.values() for r in e]
    return [r for r in given if canonicalize_name(r.name) != canonicalize_name(PROJECT["name"])]


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
    for requirement in PROJECT["dependencies"]:
        assert canonicalize_name(Requirement(requirement).name) in pins, requirement
    for name in ("sentry-sdk", "psycopg", "moto"):
        assert name in pins
    for name, version in pins.items():
        bound = lower.get(name, lower.get(name.removesuffix("-binary")))
        assert bound == version, f"{name}: oldest.txt pins {version}, pyproject says >={bound}"


def test_a_plain_install_pulls_only_what_every_install_needs() -> None:
    plain = {canonicalize_name(Requirement(r).name) for r in PROJECT["dependencies"]}
    assert plain == {"django", "boto3", "msgspec"}
    extras = PROJECT["optional-dependencies"]
    assert {"postgres", "mysql", "sentry", "statsd", "dev"} <= set(extras)
    for extra, package in [("postgres", "psycopg"), ("sentry", "sentry-sdk"), ("statsd", "statsd")]:
        assert [canonicalize_name(Requirement(r).name) for r in extras[extra]] == [package]


def test_the_dev_extra_takes_the_extras_the_suite_talks_through() -> None:
    """The suite sends metrics, Sentry events and PostgreSQL statements, so ``dev`` takes
    those extras by name (one range for each package, in its own extra)."""
    own = [
        Requirement(r)
        for r in PROJECT["optional-dependencies"]["dev"]
        if canonicalize_name(Requirement(r).name) == canonicalize_name(PROJECT["name"])
    ]
    assert [r.extras for r in own] == [{"postgres", "sentry", "statsd"}]
    names = [canonicalize_name(r.name) for r in _requirements()]
    assert len(names) == len(set(names)), "a package is required in two places"


def test_the_version_is_written_once() -> None:
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    attr = PYPROJECT["tool"]["setuptools"]["dynamic"]["version"]["attr"]
    assert attr == "django_mirror.__version__"
    assert Version(django_mirror.__version__) >= Version("0.1.0")


def test_the_changelog_opens_with_the_version_being_made() -> None:
    """Keep a Changelog form: bumping ``__version__`` asks for its section."""
    headings = re.findall(r"^## .*$", (ROOT / "CHANGELOG.md").read_text(), re.M)
    sections = [re.fullmatch(r"## \[(.+)\] - (\d{4}-\d\d-\d\d|Unreleased)", h) for h in headings]
    assert all(sections), headings
    assert sections[0].group(1) == django_mirror.__version__  # type: ignore[union-attr]


def test_the_docs_install_this_project() -> None:
    """Every ``pip install`` the README and the docs show installs this distribution
    (by name, with known extras) or a checkout of it, never the other ``django-mirror``."""
    pages = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    text = "\n".join(page.read_text() for page in pages)
    commands = re.findall(r"pip install\s+([^`#\n]+)", text)  # the name may follow a line break
    assert len(commands) >= 4
    extras = set(PROJECT["optional-dependencies"])
    for command in commands:
        for argument in shlex.split(command):
            if argument.startswith("-"):
                continue
            requirement = Requirement(re.sub(r"^(/path/to/checkout|\.)(?=\[)", "x", argument))
            assert requirement.extras <= extras, command
            if not argument.startswith(("/", ".")):
                assert canonicalize_name(requirement.name) == PROJECT["name"], command
