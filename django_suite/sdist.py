"""The installed Django's source distribution, downloaded from PyPI once and cached.

The wheel has no ``tests/``; the sdist of the very version installed does, so the suite
run is the one that version's own CI runs.
"""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import django

CACHE = Path(__file__).resolve().parent.parent / ".cache" / "django-suite"


def installed_version() -> str:
    return django.get_version()


def tests_dir(cache: Path = CACHE) -> Path:
    """``tests/`` of the installed version's sdist, downloaded and unpacked if missing."""
    version = installed_version()
    root = cache / f"django-{version}"
    tests = root / "tests"
    if (tests / "runtests.py").exists():
        return tests
    cache.mkdir(parents=True, exist_ok=True)
    archive = _download(version, cache)
    with tarfile.open(archive) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(f"{root.name}/tests/")]
        tar.extractall(cache, members=members, filter="data")
    if not (tests / "runtests.py").exists():
        raise RuntimeError(f"{archive} has no tests/runtests.py")
    return tests


def _download(version: str, cache: Path) -> Path:
    """``pip download`` the sdist (no wheel, no dependencies): PyPI is the only network."""
    for existing in cache.glob(f"[Dd]jango-{version}.tar.gz"):
        return existing
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "download",
            f"Django=={version}",
            "--no-deps",
            "--no-binary",
            ":all:",
            "--quiet",
            "-d",
            str(cache),
        ],
        check=True,
    )
    found = list(cache.glob(f"[Dd]jango-{version}.tar.gz"))
    if not found:
        raise RuntimeError(f"pip download left no Django-{version} sdist in {cache}")
    return found[0]
