"""The migration dashboard, through the admin as staff see it: every mirrored model with
its phase, and figures from real outbox rows, mismatch records, checkpoints and the
per-minute windows django_mirror.observability.stats writes."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from html.parser import HTMLParser

import pytest
from django.conf import settings
from django.contrib.auth.models import Permission, User
from django.db import connections
from django.test import Client, override_settings
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from django_mirror.admin import dashboard
from django_mirror.config import conf
from django_mirror.models import (
    DeadLetter,
    MetricWindow,
    MismatchRecord,
    ShardCheckpoint,
    VerifyRun,
)
from django_mirror.observability import stats
from django_mirror.pipeline import relay
from tests.conftest import both_databases, mirroring
from tests.testapp.models import Author, Book, Tag

DASHBOARD = "/admin/django_mirror/metricwindow/"
MISMATCHES = "/admin/django_mirror/mismatchrecord/"


class _Table(HTMLParser):
    """The dashboard table's rows as ``{model label: {cell name: text}}``, and links.

    Cells are named by their ``data-kind``, else by position ("model", "phase",
    "target", "backlog", "captured", "replayed", "compared", "matched").
    """

    NAMES = ("model", "phase", "target", "backlog", "captured", "replayed", "compared", "matched")

    def __init__(self) -> None:
        super().__init__()
        self.rows: dict[str, dict[str, str]] = {}
        self.links: dict[str, dict[str, str]] = {}
        self.row: str | None = None
        self.cell: str | None = None
        self.position = 0
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        if tag == "tr" and attributes.get("data-model"):
            self.row = attributes["data-model"]
            self.rows[self.row], self.links[self.row] = {}, {}
            self.position = 0
        elif tag == "td" and self.row is not None:
            self.cell = attributes.get("data-kind")
            if self.cell is None:
                names = self.NAMES
                self.cell = names[self.position] if self.position < len(names) else "?"
                self.position += 1
            self.text = []
        elif tag == "br" and self.cell is not None:
            self.text.append(" ")
        elif tag == "a" and self.row is not None and self.cell is not None:
            self.links[self.row][self.cell] = attributes.get("href") or ""

    def handle_endtag(self, tag: str) -> None:
        if tag == "td" and self.row is not None and self.cell is not None:
            self.rows[self.row][self.cell] = " ".join("".join(self.text).split())
            self.cell = None
        elif tag == "tr":
            self.row = None

    def handle_data(self, data: str) -> None:
        if self.cell is not None:
            self.text.append(data)


def table(html: str) -> _Table:
    parser = _Table()
    parser.feed(html)
    return parser


@pytest.fixture(autouse=True)
def fresh_stats() -> Iterator[None]:
    """This process's in-memory figures start empty, and are left empty.

    Each minute's totals accumulate in memory, so what earlier tests recorded this
    minute would add to this test's (and a flush now would write them into this test's
    database); and figures left behind would be written by the background flush into
    whatever test runs next.
    """
    stats.reset()
    yield
    stats.reset()


def mismatch(label: str, kind: str, status: str, age: dt.timedelta) -> MismatchRecord:
    return MismatchRecord.objects.create(
        created_at=timezone.now() - age,
        kind=kind,
        status=status,
        model=label,
        pk_value="1",
        diff={"kind": "changed", "fields": {"name": ["a", "b"]}},
    )


@both_databases
def test_the_index_links_to_the_dashboard_which_lists_every_model_with_its_phase(
    admin_client: Client,
):
    assert f'href="{DASHBOARD}"' in admin_client.get("/admin/").content.decode()
    with mirroring({"testapp.Tag": {}}):
        response = admin_client.get(DASHBOARD)
        assert response.status_code == 200
        rows = table(response.content.decode()).rows
        expected = {c.label: c.phase for c in conf.configs()}
    assert {label: row["phase"] for label, row in rows.items()} == expected
    assert rows["testapp.Tag"]["phase"] == "mirror" and rows["testapp.Author"]["phase"] == "capture"
    assert rows["testapp.Book_tags"]["phase"] == "capture"  # an M2M table follows its owner
    labels = list(rows)
    assert labels.index("testapp.Book_tags") == labels.index("testapp.Book") + 1
    assert rows["testapp.Author"]["target"] == "new"
    html = response.content.decode()
    assert '<meta http-equiv="refresh" content="30">' in html
    assert "replay has not run" in html


@both_databases
def test_the_relay_backlog_counts_the_events_captured_and_not_yet_shipped(admin_client: Client):
    # The relay thread tries after every commit, but no stream exists: nothing leaves.
    for name in ("Ann", "Bob", "Cy"):
        Author.objects.create(name=name)
    Author.objects.bulk_create([Author(name=f"bulk {i}") for i in range(5)])
    Author.objects.filter(name="Ann").update(name="Anne")
    author = Author.objects.get(name="Bob")
    Book.objects.create(author=author, title="One")
    Book.objects.create(author=author, title="Two")
    Tag.objects.create(name="t")
    assert relay.backlog() == 12

    page = admin_client.get(DASHBOARD).content.decode()
    rows = table(page).rows
    assert rows["testapp.Author"]["backlog"] == "9"
    assert rows["testapp.Book"]["backlog"] == "2"
    assert rows["testapp.Tag"]["backlog"] == "1"
    assert rows["testapp.Counter"]["backlog"] == "0"
    assert '<p class="big">12</p>' in page

    Author.objects.bulk_create([Author(name=f"more {i}") for i in range(1234)])
    rows = table(admin_client.get(DASHBOARD).content.decode()).rows
    assert rows["testapp.Author"]["backlog"] == "1,243"


@both_databases
def test_mismatches_are_counted_per_kind_over_the_last_hour_and_day(admin_client: Client):
    minutes = dt.timedelta(minutes=1)
    hours = dt.timedelta(hours=1)
    mismatch("testapp.Author", "read", "confirmed", 10 * minutes)  # hour and day
    mismatch("testapp.Author", "read", "confirmed", 5 * hours)  # day
    mismatch("testapp.Author", "read", "suspected", 1 * minutes)  # not confirmed: left out
    mismatch("testapp.Author", "read", "resolved", 1 * minutes)  # left out
    mismatch("testapp.Author", "write", "suspected", 30 * minutes)  # writes count always
    mismatch("testapp.Author", "write", "resolved", 20 * hours)
    mismatch("testapp.Author", "verify", "confirmed", 23 * hours)  # yesterday: day only
    mismatch("testapp.Author", "verify", "confirmed", 49 * hours)  # 2 days ago: left out
    mismatch("testapp.Book", "verify", "confirmed", 2 * minutes)

    response = admin_client.get(DASHBOARD)
    parsed = table(response.content.decode())
    author, book = parsed.rows["testapp.Author"], parsed.rows["testapp.Book"]
    assert [author[f"hour-{k}"] for k in ("read", "write", "verify")] == ["1", "1", "0"]
    assert [author[f"day-{k}"] for k in ("read", "write", "verify")] == ["2", "2", "1"]
    assert [book[f"hour-{k}"] for k in ("read", "write", "verify")] == ["0", "0", "1"]
    assert parsed.rows["testapp.Tag"]["day-read"] == "0"
    assert '<p class="big"><a href="/admin/django_mirror/mismatchrecord/">6</a></p>' in (
        response.content.decode()
    )

    links = parsed.links["testapp.Author"]
    assert links["model"] == f"{MISMATCHES}?model=testapp.Author"
    assert links["day-verify"] == f"{MISMATCHES}?model=testapp.Author&kind=verify&status=confirmed"
    assert links["day-write"] == f"{MISMATCHES}?model=testapp.Author&kind=write"
    assert "hour-verify" not in links  # nothing to see
    listed = admin_client.get(links["day-verify"])
    assert listed.status_code == 200
    assert listed.context["cl"].result_count == 2  # the changelist has no age filter


@both_databases
def test_events_per_second_shadow_reads_and_latency_percentiles_come_from_metric_windows(
    admin_client: Client,
):
    for name in ("Ann", "Bob", "Cy"):
        Author.objects.create(name=name)  # "captured" counted by capture itself
    stats.add("testapp.Author", "captured", 297)
    stats.add("testapp.Author", "replayed", 150)
    stats.add("testapp.Author", "read.compared", 40)
    stats.add("testapp.Author", "read.match", 38)
    for ms in [1.0] * 90 + [100.0] * 10:
        stats.observe("testapp.Author", "source", ms)
    for _ in range(20):
        stats.observe("testapp.Author", "target", 5.0)
    assert stats.flush() >= 1
    # Another process's window of 20 minutes ago: in the hour, not in the last 5 minutes.
    MetricWindow.objects.create(
        model="testapp.Author",
        minute=timezone.now().replace(second=0, microsecond=0) - dt.timedelta(minutes=20),
        process="other:1",
        counts={"captured": 10_000, "read.compared": 60, "read.match": 60},
        latency={"target": {"0": 80}},
    )

    response = admin_client.get(DASHBOARD)
    board: dashboard.Dashboard = response.context["board"]
    author = next(row for row in board.rows if row.label == "testapp.Author")
    assert 240 <= board.rate_seconds <= 300
    assert author.captured_per_s * board.rate_seconds == pytest.approx(300)
    assert author.replayed_per_s * board.rate_seconds == pytest.approx(150)
    assert (author.compared, author.matched) == (100, 98)
    assert author.source_latency.reads == 100
    assert 1.0 <= author.source_latency.p50 < 1.12  # type: ignore[operator]
    assert 100.0 <= author.source_latency.p95 < 112.0  # type: ignore[operator]
    # 80 fast reads of the other process and 20 of 5 ms: p50 fast, p95 about 5 ms.
    assert author.target_latency.p50 == stats.BUCKETS[0]
    assert 5.0 <= author.target_latency.p95 < 5.6  # type: ignore[operator]

    row = table(response.content.decode()).rows["testapp.Author"]
    assert row["captured"] == dashboard.rate(300 / board.rate_seconds)
    assert row["replayed"] == dashboard.rate(150 / board.rate_seconds)
    assert (row["compared"], row["matched"]) == ("100", "98%")
    assert row["source-p50"] == dashboard.milliseconds(author.source_latency.p50)
    assert row["source-p50"] in ("1.0 ms", "1.1 ms")
    assert row["source-p95"].endswith(" ms") and 100 <= int(row["source-p95"][:-3]) < 112
    assert row["target-p50"] == "0.05 ms"
    assert row["target-p95"] in ("5.0 ms", "5.1 ms", "5.2 ms", "5.3 ms", "5.4 ms", "5.5 ms")
    tag = table(response.content.decode()).rows["testapp.Tag"]
    assert (tag["captured"], tag["matched"], tag["source-p50"]) == ("0", "—", "—")


def test_figures_are_formatted_for_reading():
    assert [dashboard.rate(v) for v in (0, 0.004, 0.5, 2.25, 12.34, 1234.5)] == [
        "0",
        "< 0.01",
        "0.50",
        "2.25",
        "12.3",
        "1,234",
    ]
    assert [dashboard.milliseconds(v) for v in (None, 0.05, 4.2, 250.0, 2500.0)] == [
        "—",
        "0.05 ms",
        "4.2 ms",
        "250 ms",
        "2.5 s",
    ]
    assert [dashboard.duration(v) for v in (None, 0.35, 4.5, 125, 7300)] == [
        "—",
        "350 ms",
        "4.5 s",
        "2 min 5 s",
        "2 h 1 min",
    ]
    assert [dashboard.ago(v) for v in (5, 125, 7300, 100_000, 200_000)] == [
        "just now",
        "2 min ago",
        "2 h ago",
        "27 h ago",
        "2 d ago",
    ]
    assert [dashboard.percent(v) for v in (None, 1.0, 0.98, 0.9995, 0.123)] == [
        "—",
        "100%",
        "98%",
        "> 99.9%",
        "12.3%",
    ]


@both_databases
def test_replay_lag_is_the_largest_over_open_shards(admin_client: Client):
    def checkpoint(shard: str, behind: int, finished: bool = False) -> None:
        ShardCheckpoint.objects.create(
            consumer="mirror", stream="s", shard_id=shard, millis_behind=behind, finished=finished
        )

    checkpoint("shard-0", 1_200)
    checkpoint("shard-1", 4_500)
    checkpoint("shard-2", 999_999, finished=True)  # a closed shard lags no more
    page = admin_client.get(DASHBOARD).content.decode()
    assert '<p class="big">4.5 s</p>' in page
    assert "largest over 2 open shards" in page
    assert "a move to “mirror” waits" not in page

    checkpoint("shard-3", 65_000)
    page = admin_client.get(DASHBOARD).content.decode()
    assert '<p class="big">1 min 5 s</p>' in page
    assert "Above 10.0 s: a move to “mirror” waits." in page


@both_databases
def test_only_staff_see_the_dashboard_and_nobody_changes_anything():
    anonymous = Client()
    response = anonymous.get(DASHBOARD)
    assert response.status_code == 302
    assert response["Location"] == f"/admin/login/?next={DASHBOARD}"

    user = User.objects.create_user("user", password="pw")
    client = Client()
    client.force_login(user)
    response = client.get(DASHBOARD)
    assert response.status_code == 302 and response["Location"].startswith("/admin/login/")

    # Staff without any permission see the page, without links to records they may not see.
    mismatch("testapp.Author", "read", "confirmed", dt.timedelta(minutes=1))
    staff = User.objects.create_user("staff", password="pw", is_staff=True)
    client.force_login(staff)
    assert f'href="{DASHBOARD}"' in client.get("/admin/").content.decode()
    response = client.get(DASHBOARD)
    assert response.status_code == 200
    parsed = table(response.content.decode())
    assert parsed.rows["testapp.Author"]["hour-read"] == "1"
    assert parsed.links["testapp.Author"] == {}
    assert client.get(f"{DASHBOARD}add/").status_code == 403

    staff.user_permissions.add(Permission.objects.get(codename="view_mismatchrecord"))
    client.force_login(User.objects.get(pk=staff.pk))
    parsed = table(client.get(DASHBOARD).content.decode())
    assert parsed.links["testapp.Author"]["hour-read"].startswith(MISMATCHES)


@both_databases
def test_the_last_verify_of_each_model_is_shown_with_its_age(admin_client: Client):
    now = timezone.now()

    def run(label: str, hours: float, differences: int, finished: bool = True) -> None:
        VerifyRun.objects.create(
            model=label,
            started_at=now - dt.timedelta(hours=hours, minutes=5),
            finished_at=now - dt.timedelta(hours=hours) if finished else None,
            rows=100,
            differences=differences,
        )

    run("testapp.Author", 50, 3)
    run("testapp.Author", 3, 0)
    run("testapp.Book", 0.5, 4)
    run("testapp.Book", 0.1, 1, finished=False)  # still running: not the last verify
    run("testapp.Tag", 30, 0)  # older than PHASES["VERIFY_WITHIN"]
    run("testapp.Shelf", 0.2, 1)

    parsed = table(admin_client.get(DASHBOARD).content.decode())
    verify = {label: row["verify"] for label, row in parsed.rows.items()}
    assert verify["testapp.Author"] == "clean 3 h ago"
    assert verify["testapp.Book"] == "4 differences 30 min ago"
    assert verify["testapp.Tag"] == "clean 30 h ago"
    assert verify["testapp.Shelf"] == "1 difference 12 min ago"
    assert verify["testapp.Counter"] == "never"
    page = admin_client.get(DASHBOARD).content.decode()
    assert 'class="left start verify stale"' in page and 'class="left start verify bad"' in page


@both_databases
def test_the_page_costs_the_same_few_queries_however_many_models_are_mirrored():

    for name in ("Ann", "Bob"):
        Author.objects.create(name=name)
    mismatch("testapp.Author", "read", "confirmed", dt.timedelta(minutes=1))

    def queries() -> tuple[int, int]:
        dashboard.compute()  # warm: which aliases hold an outbox is looked up once
        with (
            CaptureQueriesContext(connections["default"]) as source,
            CaptureQueriesContext(connections["new"]) as target,
        ):
            board = dashboard.compute()
        assert board.rows
        return len(source), len(target)

    every_model = queries()
    raw = settings.DJANGO_MIRROR
    two = {label: raw["MODELS"][label] for label in ("testapp.Author", "testapp.Tag")}
    with override_settings(DJANGO_MIRROR={**raw, "MODELS": two}):
        assert queries() == every_model
    assert every_model[0] <= 6 and every_model[1] <= 1


@both_databases
def test_the_dead_letter_card_counts_and_links_to_the_unresolved_letters(admin_client: Client):
    for resolved in (None, None, timezone.now()):
        DeadLetter.objects.create(
            model="testapp.Book",
            pk_value="7",
            reason="refused",
            payload=b"{}",
            resolved_at=resolved,
        )
    page = admin_client.get(DASHBOARD).content.decode()
    link = "/admin/django_mirror/deadletter/?resolved_at__isempty=1"
    assert f'<p class="big"><a href="{link}">2</a></p>' in page
    listed = admin_client.get(link)
    assert listed.status_code == 200 and listed.context["cl"].result_count == 2
