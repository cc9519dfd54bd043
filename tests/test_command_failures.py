"""Commands fail cleanly: an unknown ``--database``, a missing stream and an unreachable
one are a one-line ``CommandError`` and a non-zero exit, never a traceback; ``mirror_copy``
works under ``DEBUG = True`` (issue 12, item 8)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from django.core.management import CommandError, call_command
from django.db import connections
from django.test import override_settings

from django_mirror import paused
from django_mirror.streams import KinesisStream, Record, StreamNotFound, get_stream
from tests.conftest import assert_mirrored, both_databases
from tests.faults import mirror_settings, unique_stream_name
from tests.testapp.models import Author

ROOT = Path(__file__).resolve().parent.parent
#: A closed port, tried briefly.
UNREACHABLE = {"endpoint_url": "http://127.0.0.1:9", "max_attempts": 2, "connect_timeout": 0.2}
SETUP_HINT = "run `manage.py mirror_setup`"

#: These tests meet the stream only through the commands they run.
pytestmark = pytest.mark.usefixtures("relay_off")

#: Commands that reach the stream, with the arguments that make them do it.
STREAM_COMMANDS = [
    ("mirror_replay", "--until-caught-up"),
    ("mirror_replay", "--dry-run"),
    ("mirror_relay", "--once"),
]


def one_line_error(command: str, *args: str) -> str:
    """The message of the ``CommandError`` the command raises, checked to be one line."""
    with pytest.raises(CommandError) as raised:
        call_command(command, *args, verbosity=0)
    message = str(raised.value)
    assert "\n" not in message, message
    return message


@both_databases
@pytest.mark.parametrize(("command", "flag"), STREAM_COMMANDS)
def test_a_missing_stream_says_to_run_mirror_setup(command: str, flag: str) -> None:
    Author.objects.create(name="Ada")  # an event in the outbox for the relay
    assert SETUP_HINT in one_line_error(command, flag)


@both_databases
@pytest.mark.parametrize(("command", "flag"), [*STREAM_COMMANDS, ("mirror_setup", "")])
def test_an_unreachable_stream_is_a_command_error(command: str, flag: str) -> None:
    Author.objects.create(name="Ada")
    with override_settings(DJANGO_MIRROR=mirror_settings(**UNREACHABLE)):
        message = one_line_error(command, *filter(None, [flag]))
    assert "Could not connect to the endpoint URL" in message


@both_databases
@pytest.mark.parametrize("flag", ["--once", "--dry-run"])
def test_an_unknown_database_alias_is_a_command_error(flag: str) -> None:
    message = one_line_error("mirror_relay", "--database", "nope", flag)
    assert message == "unknown database 'nope' (DATABASES has: default, new, replica)"


@pytest.mark.parametrize("aggregate, call", [(True, "ListShards"), (False, "PutRecords")])
def test_a_put_to_a_missing_stream_fails_at_once(aggregate: bool, call: str) -> None:
    """Not found is not retried: no point, and a WARNING per attempt would bury it. The one
    call is ListShards with aggregation on (a put lists the shards first), else PutRecords."""
    stream = get_stream()
    assert isinstance(stream, KinesisStream)
    stream.aggregate = aggregate
    calls: list[str] = []
    stream.client.meta.events.register(
        "before-call.kinesis.*", lambda model, **kwargs: calls.append(model.name)
    )
    with pytest.raises(StreamNotFound, match="run `manage.py mirror_setup`"):
        stream.put([Record("key", b"data")])
    assert calls == [call]
    get_stream.cache_clear()


def run_command(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    """``python -m django`` on this test's databases, as a user would run it."""
    environment = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "MIRROR_TEST_USE_TEST_DB": "1",
        **env,
    }
    return subprocess.run(
        [sys.executable, "-m", "django", *args],
        cwd=ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=120,
    )


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode != 0
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("CommandError: "), result.stderr
    return lines[0]


@both_databases
def test_mirror_copy_to_a_target_that_is_down_exits_with_one_line() -> None:
    Author.objects.create(name="Ada")
    down = "postgres://postgres@127.0.0.1:9/down"  # psycopg's message has two lines
    line = assert_clean_failure(
        run_command("mirror_copy", "testapp.Author", TARGET_DATABASE_URL=down)
    )
    assert "copy of testapp.Author failed" in line


@both_databases
def test_mirror_replay_of_a_missing_stream_exits_with_one_line(moto_server: str) -> None:
    endpoint = {"MIRROR_STREAM_ENDPOINT": moto_server, "MIRROR_STREAM_NAME": unique_stream_name()}
    line = assert_clean_failure(run_command("mirror_replay", "--until-caught-up", **endpoint))
    assert SETUP_HINT in line


@both_databases
def test_mirror_relay_with_an_unknown_database_exits_with_one_line() -> None:
    line = assert_clean_failure(run_command("mirror_relay", "--once", "--database", "nope"))
    assert "unknown database 'nope'" in line


@both_databases
@override_settings(DEBUG=True)
def test_mirror_copy_works_under_debug() -> None:
    """PostgreSQL's binary COPY path, through psycopg's cursor: Django's debug cursor
    takes no parameters for ``copy()``."""
    if not all(connections[alias].vendor == "postgresql" for alias in ("default", "new")):
        pytest.skip("the COPY fast path is PostgreSQL to PostgreSQL only")
    authors = Author.objects.bulk_create([Author(name=f"a{i}") for i in range(50)])
    with paused():  # one row already there: the chunk goes through the scratch table
        Author.objects.using("new").create(pk=authors[-1].pk, name=authors[-1].name)
    call_command("mirror_copy", "testapp.Author", "--chunk-size", "20", verbosity=0)
    assert_mirrored(Author)
    logged: list[dict[str, Any]] = connections["new"].queries
    assert logged, "DEBUG logs the target's queries"
