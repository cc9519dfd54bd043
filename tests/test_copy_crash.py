"""``mirror_copy`` killed for real: a subprocess on this run's test databases gets SIGKILL
mid-way; the next run resumes from the checkpoint of the last chunk it committed instead
of starting over (``--restart`` does start over). SIGTERM ends it cleanly at a checkpoint.
A copy of a model whose writes are not captured is refused without touching that
checkpoint."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from django.db import connections
from django.db.models import F

from django_mirror import paused
from django_mirror.models import CopyProgress, RowVersion
from django_mirror.streams import KinesisStream
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.faults import configured_stream, unique_stream_name
from tests.test_crash import ROOT, Command
from tests.testapp.models import Counter

ROWS = 3000
CHUNK = 50
THROTTLE = "1500"  # rows/s: the copy takes about 2 s, time enough to kill it mid-way


@pytest.fixture
def http_stream(moto_server: str) -> Iterator[KinesisStream]:
    """A stream of this test's own on the shared moto server, configured for this process."""
    with configured_stream(endpoint_url=moto_server, stream_name=unique_stream_name()) as stream:
        yield stream


@dataclass
class Killed:
    """Where a killed copy left things."""

    state: CopyProgress  # its checkpoint
    in_target: int  # rows it committed to the target


def source_pks() -> list[int]:
    return list(Counter.objects.order_by("pk").values_list("pk", flat=True))


def target_pks() -> list[int]:
    return list(Counter.objects.using("new").order_by("pk").values_list("pk", flat=True))


def checkpoint() -> CopyProgress | None:
    return CopyProgress.objects.filter(model="testapp.counter").first()


def report_of(output: str) -> dict[str, Any]:
    """The one model's summary ``--json`` printed."""
    (report,) = json.loads(output[output.index("[") :])
    return report


def copy_killed_mid_way(
    stream: KinesisStream, tmp_path: Path, signum: int = signal.SIGKILL
) -> Killed:
    """Rows from before capture, and a throttled copy of them killed mid-way."""
    with paused():
        Counter.objects.bulk_create([Counter(name=f"c{i}", value=i) for i in range(ROWS)])
    args = ("mirror_copy", "testapp.Counter", "--chunk-size", str(CHUNK), "--throttle", THROTTLE)
    copy = Command(stream, tmp_path, *args)
    copy.wait_until(lambda: (state := checkpoint()) is not None and state.rows_read >= 5 * CHUNK)
    if signum == signal.SIGKILL:
        assert copy.kill(signum) == -signal.SIGKILL
    else:  # SIGTERM: the chunk under way is finished and checkpointed, then a clean exit
        assert copy.kill(signum) == 0, copy.output()
        assert "stopped; run again to resume" in copy.output()
    state = checkpoint()
    assert state is not None and state.finished_at is None
    assert CHUNK <= state.rows_read < ROWS, "not killed mid-way"
    assert state.rows_copied == state.rows_read  # the target was empty
    assert state.last_pk == str(source_pks()[state.rows_read - 1])

    # What it committed is a prefix of the table: every checkpointed row, and at most
    # the one chunk written after the last checkpoint, before the kill.
    copied = target_pks()
    assert copied == source_pks()[: len(copied)]
    assert len(copied) in (state.rows_read, state.rows_read + CHUNK)
    # The portable path claims version 0 for each row it copies; PostgreSQL to
    # PostgreSQL locks the table for each chunk instead and writes none.
    fast = connections["default"].vendor == connections["new"].vendor == "postgresql"
    versions = set(RowVersion.objects.using("new").values_list("pk_value", "version"))
    assert versions == (set() if fast else {(str(pk), 0) for pk in copied})
    return Killed(state, len(copied))


def run_with_phase_off(stream: KinesisStream, *args: str) -> subprocess.CompletedProcess[str]:
    """A management command in a process whose settings put ``testapp.Counter`` in phase
    ``off``, as a deployment that never switched capture on would."""
    script = (
        "import sys\n"
        "import tests.settings as s\n"
        "s.DJANGO_MIRROR['MODELS']['testapp.Counter'] = {'target': 'new', 'phase': 'off'}\n"
        "from django.core.management import execute_from_command_line\n"
        "execute_from_command_line(['django-admin', *sys.argv[1:]])\n"
    )
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "tests.settings",
        "PYTHONPATH": str(ROOT),
        "MIRROR_TEST_USE_TEST_DB": "1",
        "MIRROR_STREAM_ENDPOINT": stream.endpoint_url or "",
        "MIRROR_STREAM_NAME": stream.name,
    }
    return subprocess.run(
        [sys.executable, "-c", script, *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )


@both_databases
def test_killed_copy_resumes_from_its_checkpoint(
    http_stream: KinesisStream, tmp_path: Path
) -> None:
    killed = copy_killed_mid_way(http_stream, tmp_path)
    done = killed.state.rows_read
    # The service keeps writing meanwhile, to rows copied and rows still to copy.
    pks = source_pks()
    Counter.objects.filter(pk__in=pks[:10] + pks[-10:]).update(value=F("value") + 1000)
    Counter.objects.filter(pk__in=pks[10:15]).delete()

    resume = Command(http_stream, tmp_path, "mirror_copy", "testapp.Counter", "--json")
    assert resume.finish() == 0, resume.output()
    report = report_of(resume.output())
    assert report["finished"] and report["resumed_from"] == killed.state.last_pk
    assert report["read"] == ROWS - done  # nothing before the checkpoint read again
    # Every row inserted exactly once over both runs: the chunk committed after the last
    # checkpoint is read again but found in place, not copied twice.
    assert report["copied"] == ROWS - killed.in_target
    assert report["skipped"] == killed.in_target - done
    state = checkpoint()
    assert state is not None and state.finished_at is not None
    assert state.rows_read == ROWS
    assert state.rows_copied == ROWS - (killed.in_target - done)

    drain_and_replay()
    assert_mirrored(Counter)


@both_databases
def test_sigterm_stops_the_copy_at_a_checkpoint_covering_every_row_written(
    http_stream: KinesisStream, tmp_path: Path
) -> None:
    stopped = copy_killed_mid_way(http_stream, tmp_path, signal.SIGTERM)
    assert stopped.in_target == stopped.state.rows_read  # nothing past the checkpoint
    resume = Command(http_stream, tmp_path, "mirror_copy", "testapp.Counter", "--json")
    assert resume.finish() == 0, resume.output()
    report = report_of(resume.output())
    assert report["read"] == report["copied"] == ROWS - stopped.state.rows_read
    assert_mirrored(Counter)


@both_databases
def test_restart_after_a_kill_starts_over(http_stream: KinesisStream, tmp_path: Path) -> None:
    killed = copy_killed_mid_way(http_stream, tmp_path)
    restart = Command(
        http_stream, tmp_path, "mirror_copy", "testapp.Counter", "--restart", "--json"
    )
    assert restart.finish() == 0, restart.output()
    report = report_of(restart.output())
    assert report["finished"] and report["resumed_from"] == ""
    assert report["read"] == ROWS  # from the first row again
    assert report["copied"] == ROWS - killed.in_target  # what is there stays, once
    assert report["skipped"] == killed.in_target
    state = checkpoint()
    assert state is not None and state.rows_read == ROWS
    assert_mirrored(Counter)


@both_databases
def test_copy_refused_without_capture_keeps_the_checkpoint(
    http_stream: KinesisStream, tmp_path: Path
) -> None:
    killed = copy_killed_mid_way(http_stream, tmp_path)
    refused = run_with_phase_off(http_stream, "mirror_copy", "testapp.Counter")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert "phase 'off'" in refused.stderr and "--force" in refused.stderr
    state = checkpoint()
    assert state is not None
    assert (state.last_pk, state.rows_read, state.updated_at) == (
        killed.state.last_pk,
        killed.state.rows_read,
        killed.state.updated_at,
    )
    assert len(target_pks()) == killed.in_target

    # --force is for those who know nobody writes: it copies, resuming all the same.
    forced = run_with_phase_off(http_stream, "mirror_copy", "testapp.Counter", "--force", "--json")
    assert forced.returncode == 0, forced.stderr
    report = report_of(forced.stdout)
    assert report["resumed_from"] == killed.state.last_pk
    assert report["read"] == ROWS - killed.state.rows_read
    assert_mirrored(Counter)
