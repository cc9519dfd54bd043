"""WAL capture operations on the throwaway PostgreSQL cluster (``tests/wal_cluster.py``):
the replication slot's lag in ``mirror_status``, statsd and the dashboard, and the
retained-WAL limit (check W010, ``mirror_status``, ``mirror_capture``'s log)."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from typing import Any
from unittest import mock

import pytest
from django.conf import settings
from django.core.checks import run_checks
from django.core.management import call_command
from django.db import OperationalError
from django.test import override_settings

from django_mirror.capture.wal import slot
from django_mirror.core import failures
from tests import wal_cluster
from tests.test_wal_capture import _base, capture, cluster, sql, wal
from tests.wal_cluster import SOURCE, TARGET

REASON = wal_cluster.unavailable()
pytestmark = pytest.mark.skipif(REASON is not None, reason=f"WAL capture: {REASON}")

__all__ = ["cluster", "wal"]  # the cluster fixtures, shared with test_wal_capture.py


DASHBOARD = "/admin/django_mirror/metricwindow/"


def _uncaptured_writes(rows: int = 2000) -> None:
    """Writes the slot holds back until ``mirror_capture`` reads them."""
    sql(
        "INSERT INTO testapp_author (name) "
        "SELECT repeat('x', 80) || g FROM generate_series(1, %s) g",
        [rows],
    )


def _limited(limit: int) -> Any:
    return override_settings(
        DJANGO_MIRROR={**wal_cluster.mirror_settings(_base()), "WAL": {"MAX_RETAINED_BYTES": limit}}
    )


def _status() -> dict[str, Any]:
    out = io.StringIO()
    call_command("mirror_status", "--json", stdout=out)
    return json.loads(out.getvalue())


def _source_lag() -> dict[str, Any]:
    """The source slot's entry in ``mirror_status --json``."""
    found = _status()["capture"]
    assert found[0]["alias"] == SOURCE
    return found[0]


def test_slot_lag_grows_while_uncaptured_and_falls_after_capture(wal: None, statsd: Any) -> None:
    capture()
    before = slot.lag(SOURCE)
    assert before.slot is True and before.retained is not None
    _uncaptured_writes()
    grown = _source_lag()
    assert grown["slot"] is True and grown["over_limit"] is False
    assert grown["slot_lag_bytes"] > before.retained + 100_000
    gauge = statsd.total(statsd.lines(), "django_mirror.capture.slot_lag_bytes", "g")
    assert gauge >= grown["slot_lag_bytes"]
    out = io.StringIO()
    call_command("mirror_status", stdout=out)
    (line,) = [x for x in out.getvalue().splitlines() if x.startswith("slot lag: ")]
    assert " bytes, " in line and line.endswith(" s behind"), line
    assert int(line.split()[2]) >= grown["slot_lag_bytes"]
    capture()
    after = _source_lag()["slot_lag_bytes"]
    assert after < 64 * 1024, after  # ~0: only capture's own outbox writes follow
    assert statsd.total(statsd.lines(), "django_mirror.capture.slot_lag_bytes", "g") == after


def test_slot_lag_in_seconds_is_the_age_of_what_is_not_yet_captured(wal: None, statsd: Any) -> None:
    """Seconds behind: since the moment up to which every commit is stored, which
    ``mirror_capture`` saves as it goes; it grows while writes wait, and falls once
    they are captured. Each slot read is listed: the source's, then the target's."""
    assert _source_lag()["slot_lag_seconds"] is None  # never captured: unknown, not 0
    capture()
    assert _source_lag()["slot_lag_seconds"] < 1.0
    _uncaptured_writes(100)
    time.sleep(1.5)
    waiting = _status()["capture"]
    assert [(e["alias"], e["slot_name"]) for e in waiting] == [
        (SOURCE, "django_mirror"),
        (TARGET, f"django_mirror_{TARGET}"),
    ]
    assert waiting[0]["slot_lag_seconds"] >= 1.5
    gauge = statsd.total(statsd.lines(), "django_mirror.capture.slot_lag_seconds", "g")
    assert gauge >= 1.5
    target_gauge = f"django_mirror.capture.slot_lag_bytes.{TARGET}"
    assert any(line.startswith(f"{target_gauge}:") for line in statsd.lines())
    capture()
    assert _source_lag()["slot_lag_seconds"] < 1.0
    out = io.StringIO()
    call_command("mirror_status", stdout=out)
    assert f"slot lag ({TARGET}): " in out.getvalue()


def test_retained_wal_past_the_limit_warns_and_below_it_does_not(
    wal: None, caplog: pytest.LogCaptureFixture
) -> None:
    capture()
    # Enough WAL that what the server writes by itself meanwhile (autovacuum, the target's
    # slot, checkpoints) stays far below half of it once captured.
    _uncaptured_writes(20_000)
    retained = slot.lag(SOURCE).retained
    assert retained is not None
    with _limited(retained * 100):
        assert "django_mirror.W010" not in [m.id for m in run_checks(databases=[SOURCE])]
        found = _source_lag()
        assert found["over_limit"] is False, (found, retained)
    with _limited(retained // 2):
        warned = [m for m in run_checks(databases=[SOURCE]) if m.id == "django_mirror.W010"]
        assert len(warned) == 1 and "bytes of WAL, more than" in warned[0].msg
        assert _source_lag()["over_limit"] is True
        out = io.StringIO()
        call_command("mirror_status", stdout=out)
        assert "(over the limit of" in out.getvalue() and "django_mirror.W010" in out.getvalue()
        with caplog.at_level("INFO", logger="django_mirror"):
            capture()  # W010 never stops capture: capturing is what frees the WAL
        logged = [
            (r.levelname, r.getMessage()) for r in caplog.records if r.name == "django_mirror"
        ]
        assert any(level == "WARNING" and "W010" in text for level, text in logged)
        assert any("within the limit again" in text for _, text in logged)
        assert slot.lag(SOURCE).over_limit is False


class _Operator:
    """An authentication backend with one superuser held in memory: the dashboard test
    reads only the cluster's aliases, and the ``db`` marker that a stored user and
    session need would fence those off."""

    def get_user(self, user_id: Any) -> Any:
        from django.contrib.auth.models import User

        return User(id=1, username="ops", is_active=True, is_staff=True, is_superuser=True)


@pytest.fixture
def admin_client(wal: None) -> Iterator[Any]:
    """A test client logged in as ``_Operator``'s superuser with a signed-cookie session."""
    from django.contrib.auth import BACKEND_SESSION_KEY, HASH_SESSION_KEY, SESSION_KEY
    from django.contrib.sessions.backends.signed_cookies import SessionStore
    from django.test import Client

    backend = f"{__name__}._Operator"
    with override_settings(
        AUTHENTICATION_BACKENDS=[backend],
        SESSION_ENGINE="django.contrib.sessions.backends.signed_cookies",
    ):
        session = SessionStore()
        session[SESSION_KEY] = "1"
        session[BACKEND_SESSION_KEY] = backend
        session[HASH_SESSION_KEY] = _Operator().get_user(1).get_session_auth_hash()
        session.save()
        client = Client()
        client.cookies[settings.SESSION_COOKIE_NAME] = session.session_key
        yield client


def test_the_dashboard_shows_the_slot_lag_and_unknown_when_it_cannot_be_read(
    wal: None, admin_client: Any
) -> None:
    _uncaptured_writes(200)
    page = admin_client.get(DASHBOARD).content.decode()
    assert 'id="mirror-slot-lag"' in page
    retained = slot.lag(SOURCE).retained
    assert retained is not None and retained > 0
    assert " bytes</p>" in page
    counted = failures.count
    down = OperationalError("connection to server at 127.0.0.1 failed: Connection refused")
    with mock.patch.object(slot, "retained", side_effect=down):
        response = admin_client.get(DASHBOARD)
        assert response.status_code == 200
        page = response.content.decode()
        assert 'id="mirror-slot-lag"' in page and ">unknown</p>" in page
        out = io.StringIO()
        call_command("mirror_status", stdout=out)
        assert "slot lag: unknown" in out.getvalue()
    assert failures.count >= counted + 2
    with (
        override_settings(DJANGO_MIRROR=wal_cluster.mirror_settings(_base(), capture="orm")),
        mock.patch.object(slot, "retained") as read,
    ):
        page = admin_client.get(DASHBOARD).content.decode()
        assert 'id="mirror-slot-lag"' not in page
        assert "capture" not in _status()
        read.assert_not_called()  # ORM capture: no query for a slot
