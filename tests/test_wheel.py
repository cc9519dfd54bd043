"""The artifacts a release uploads work on their own: the wheel holds the package with
its templates, static files and migrations (no tests, no example project), its
metadata names this project and version and asks only for what every install needs,
and installed alone into a fresh venv it runs the example project's ``manage.py
check`` and ``mirror_setup --help`` and renders the admin's templates.

``make dist`` builds the wheel and sdist into ``dist/`` (``python -m build``), checks
them with ``twine check`` and runs this module with ``MIRROR_WHEEL_DIR=dist``; without
that variable there is nothing to test and the module is skipped.
"""

from __future__ import annotations

import email
import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from packaging.requirements import Requirement

import django_mirror

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "django_mirror"
DIST = os.environ.get("MIRROR_WHEEL_DIR")

if not DIST:
    pytest.skip(
        "no artifacts to test: `make dist` builds them and runs this module",
        allow_module_level=True,
    )

#: Package files that are not Python modules and must travel in the wheel.
DATA = sorted(
    str(path.relative_to(ROOT))
    for folder in ("templates", "static")
    for path in (PACKAGE / folder).rglob("*")
    if path.is_file()
)


def _outside() -> dict[str, str]:
    """The environment without what points into the checkout or at its databases (with
    the checkout on PYTHONPATH, pip would take its egg-info for an installed copy)."""
    names = ("DATABASE_URL", "TARGET_DATABASE_URL", "PYTHONPATH", "DJANGO_SETTINGS_MODULE")
    return {k: v for k, v in os.environ.items() if k not in names}


def _artifact(pattern: str) -> Path:
    (found,) = (ROOT / (DIST or "")).glob(pattern)
    return found


@pytest.fixture(scope="module")
def wheel() -> Path:
    return _artifact(f"django_mirror_migrate-{django_mirror.__version__}-py3-none-any.whl")


def test_the_wheel_holds_the_package_and_its_data_files(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert DATA and set(DATA) <= names  # the admin's templates (and any static file)
    migrations = {str(p.relative_to(ROOT)) for p in (PACKAGE / "migrations").glob("0*.py")}
    assert migrations <= names
    tops = {name.split("/")[0] for name in names}
    assert tops == {"django_mirror", f"django_mirror_migrate-{django_mirror.__version__}.dist-info"}


def test_the_wheel_metadata_names_this_project_and_its_extras(wheel: Path) -> None:
    info = f"django_mirror_migrate-{django_mirror.__version__}.dist-info/METADATA"
    metadata = email.message_from_bytes(zipfile.ZipFile(wheel).read(info))
    assert metadata["Name"] == "django-mirror-migrate"
    assert metadata["Version"] == django_mirror.__version__
    assert metadata["Description-Content-Type"] == "text/markdown"
    requirements = [Requirement(r) for r in metadata.get_all("Requires-Dist")]
    plain = {r.name.lower() for r in requirements if r.marker is None}
    assert plain == {"django", "boto3", "msgspec"}
    assert {"postgres", "mysql", "sentry", "statsd", "dev"} <= set(
        metadata.get_all("Provides-Extra")
    )


def test_the_sdist_builds_the_same_package() -> None:
    sdist = _artifact(f"django_mirror_migrate-{django_mirror.__version__}.tar.gz")
    prefix = f"django_mirror_migrate-{django_mirror.__version__}/"
    names = {name.removeprefix(prefix) for name in tarfile.open(sdist).getnames()}
    assert {"pyproject.toml", "README.md", "django_mirror/__init__.py"} <= names
    assert set(DATA) <= names


@pytest.fixture(scope="module")
def example(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A copy of the example project beside a fresh venv holding the wheel, installed
    without extras, and django-environ (the example's settings read the environment)."""
    folder = tmp_path_factory.mktemp("wheel")
    subprocess.run([sys.executable, "-m", "venv", folder / "venv"], check=True, env=_outside())
    subprocess.run(
        [folder / "venv/bin/python", "-m", "pip", "install", "-q", str(wheel), "django-environ"],
        check=True,
        timeout=600,
        env=_outside(),
    )
    # Out of the checkout: manage.py puts its parent folder on sys.path, which must not
    # be the checkout's, whose django_mirror would hide the installed one.
    shutil.copytree(
        ROOT / "example_project",
        folder / "example_project",
        ignore=shutil.ignore_patterns("*.sqlite3*", "__pycache__"),
    )
    yield folder / "example_project"


def _manage(example: Path, *args: str) -> str:
    result = subprocess.run(
        [example.parent / "venv/bin/python", "manage.py", *args],
        cwd=example,
        env=_outside(),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_the_installed_wheel_runs_the_example_projects_checks(example: Path) -> None:
    assert "System check identified no issues" in _manage(example, "check")


def test_the_installed_wheel_runs_mirror_setup_help(example: Path) -> None:
    assert "Create the stream" in _manage(example, "mirror_setup", "--help")


def test_the_installed_wheel_is_what_runs_and_renders_the_templates(example: Path) -> None:
    templates = [path.removeprefix("django_mirror/templates/") for path in DATA]
    script = (
        "import django_mirror, importlib.util\n"
        "from django.template.loader import get_template\n"
        f"for name in {templates!r}:\n"
        "    get_template(name)\n"
        "print(django_mirror.__file__)\n"
        "print(importlib.util.find_spec('statsd'), importlib.util.find_spec('sentry_sdk'))\n"
    )
    where, optional = _manage(example, "shell", "-c", script).splitlines()[-2:]
    assert Path(where).is_relative_to(example.parent / "venv")
    assert optional == "None None"  # a plain install: no statsd, no sentry-sdk
