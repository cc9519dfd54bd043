"""The example project's ``mirror_demo`` end to end, as ``make demo`` runs it.

It runs in a subprocess with its own SQLite files and embedded moto server, so it
checks what a new user sees first: thousands of mixed writes arrive with 0 rows differing.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLE = Path(__file__).resolve().parent.parent / "example_project"


def run_demo(
    tmp_path: Path, operations: int = 1500, target: str = "database"
) -> subprocess.CompletedProcess[str]:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("DJANGO_SETTINGS_MODULE", "AWS_ENDPOINT_URL", "MIRROR_STREAM")
    }
    env["MIRROR_TARGET"] = target
    # Own files, so it never touches a `make demo` or another test run's databases.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    env["TARGET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    return subprocess.run(
        # Half of `make demo`'s 3,000 operations: the same mix, in half the time.
        [sys.executable, "manage.py", "mirror_demo", "--operations", str(operations)],
        cwd=EXAMPLE,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "sqlite").startswith("sqlite"),
    reason="the demo runs on its own SQLite files; the SQLite pass already ran it",
)
def test_demo_mirrors_every_row(tmp_path: Path) -> None:
    result = run_demo(tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "OK: 0 rows differ between source and target" in result.stdout, output
    total = re.search(r"^\s*total\s+(\d+)\s+(\d+)\s+(\d+)\s*$", result.stdout, re.M)
    assert total is not None, output
    source_rows, target_rows, differing = map(int, total.groups())
    assert differing == 0
    assert source_rows == target_rows > 1000  # seeded rows plus what the operations left
    steps = ("1 capture", "2 copy", "3 replay", "4 verify", "5 mirror", "6 promote", "rollback")
    for step in (*steps, "repository", "compare"):
        assert f"== {step}:" in result.stdout, output
    # Each step from 4 on prints mirror_verify's result, every model without a difference.
    verified = re.findall(r"^follows\.\w+: \d+ rows, (\d+) differ", result.stdout, re.M)
    assert len(verified) == 4 * 5 and set(verified) == {"0"}, output
    assert "0 mismatches" in result.stdout, output
    assert_repository_mirrored(result.stdout, output)


@pytest.mark.skipif(
    not os.environ.get("DATABASE_URL", "sqlite").startswith("sqlite"),
    reason="the demo runs on its own SQLite files; the SQLite pass already ran it",
)
def test_demo_with_the_follows_in_dynamodb(tmp_path: Path) -> None:
    result = run_demo(tmp_path, operations=400, target="dynamodb")
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "created table 'twitch-follows'" in result.stdout, output
    assert "follows.Follow" in result.stdout and "fetch checksums" in result.stdout, output
    assert "all stay in mirror" in result.stdout, output
    assert "OK: 0 rows differ between source and target" in result.stdout, output
    assert_repository_mirrored(result.stdout, output)


def assert_repository_mirrored(stdout: str, output: str) -> None:
    """The repository step: calls recorded and replayed, none differing live, and every
    channel's followers the same in the SQL table and the DynamoDB items."""
    assert "== repository:" in stdout, output
    recorded = re.search(r"^\s*(\d+) calls recorded, (\d+) replayed;", stdout, re.M)
    assert recorded is not None, output
    assert int(recorded[1]) >= int(recorded[2]) > 0, output
    assert "live mismatches: 0 write, 0 read" in stdout, output
    channels = re.search(r"SQL vs DynamoDB: (\d+) channels, (\d+) channels differ$", stdout, re.M)
    assert channels is not None and int(channels[1]) > 0, output
    assert channels[2] == "0", output


def test_demo_project_passes_checks_and_has_its_migrations(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    # Its own databases, as `make demo` has them: Django 6.1's check reads the server's
    # version, and this pass's database server may not hold the URL's database.
    env["DATABASE_URL"] = f"sqlite:///{tmp_path / 'source.sqlite3'}"
    env["TARGET_DATABASE_URL"] = f"sqlite:///{tmp_path / 'target.sqlite3'}"
    for command in (
        ["check", "--fail-level", "WARNING"],
        ["makemigrations", "follows", "--check", "--dry-run"],
    ):
        result = subprocess.run(
            [sys.executable, "manage.py", *command],
            cwd=EXAMPLE,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stdout + result.stderr
