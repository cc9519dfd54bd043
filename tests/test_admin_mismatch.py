"""The mismatch admin: side-by-side diffs that never show redacted values, access limited
to staff with the mirrored model's permissions, re-check / repair actions that fix and
resolve records (a read record by running its query again), and a dismiss action that
asks why and records who."""

from __future__ import annotations

import json
import re
from io import StringIO
from typing import Any

import pytest
from django.contrib.auth.models import Permission, User
from django.core.management import CommandError, call_command
from django.test import Client
from django.urls import reverse
from django.utils import timezone

from django_mirror import paused
from django_mirror.models import MismatchRecord
from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.test_shadow import both
from tests.test_shadow_determinism import divergent  # noqa: F401  (a fixture)
from tests.testapp.models import Author, Book, Secret

CHANGELIST = "admin:django_mirror_mismatchrecord_changelist"
SECRET = "ISBN-SECRET"
LEAK = "LEAKED-ISBN"


def _change_url(record: MismatchRecord) -> str:
    return reverse("admin:django_mirror_mismatchrecord_change", args=[record.pk])


def _mirrored_books() -> tuple[Author, list[Book]]:
    """Four books with secret ISBNs, relayed and replayed so the target matches."""
    ada = Author.objects.create(name="Ada")
    Book.objects.bulk_create(
        [Book(author=ada, title=f"title-{i}", isbn=f"{SECRET}-{i}") for i in range(4)]
    )
    drain_and_replay()
    return ada, list(Book.objects.order_by("pk"))


def _verify(*labels: str) -> None:
    """Run mirror_verify, which must find differences and store them as records."""
    with pytest.raises(CommandError):
        call_command("mirror_verify", *labels, "--recheck-delay", "0", stdout=StringIO())


def _record(model: str, pk: Any) -> MismatchRecord:
    return MismatchRecord.objects.get(model=model, pk_value=str(pk))


def _login(*perms: str, superuser: bool = False, staff: bool = True) -> Client:
    if superuser:
        user = User.objects.create_superuser("root", "root@example.com", "pw")
    else:
        user = User.objects.create_user("staff", is_staff=staff)
        for perm in perms:
            app_label, codename = perm.split(".")
            user.user_permissions.add(
                Permission.objects.get(content_type__app_label=app_label, codename=codename)
            )
    client = Client()
    client.force_login(user)
    return client


def _act(client: Client, action: str, records: list[MismatchRecord], **extra: str) -> Any:
    data = {"action": action, "index": "0", "_selected_action": [r.pk for r in records], **extra}
    return client.post(reverse(CHANGELIST), data, follow=True)


def _messages(response: Any) -> list[str]:
    return [str(m) for m in response.context["messages"]]


def _cell_row(html: str, field: str) -> tuple[str, str, str]:
    """(row class, source cell, target cell) of one field in the diff table."""
    match = re.search(
        rf'<tr class="(\w+)" data-field="{field}">\s*<th[^>]*>{field}</th>\s*'
        r'<td class="source">(.*?)</td>\s*<td class="target">(.*?)</td>',
        html,
        re.S,
    )
    assert match, f"no diff row for {field}"
    return match.group(1), match.group(2), match.group(3)


@both_databases
def test_superuser_lists_filters_and_sees_side_by_side_diff(kinesis):
    ada, books = _mirrored_books()
    target = Book.objects.using("new")
    target.filter(pk=books[0].pk).update(title="tampered-title")
    target.filter(pk=books[2].pk).delete()
    Author.objects.using("new").filter(pk=ada.pk).update(name="Eve")
    _verify("testapp.Author", "testapp.Book")
    client = _login(superuser=True)

    listing = client.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert listing.context["cl"].result_count == 3

    def listed(query: dict[str, str]) -> set[tuple[str, str]]:
        response = client.get(reverse(CHANGELIST), query)
        assert response.status_code == 200
        return {(r.model, r.pk_value) for r in response.context["cl"].result_list}

    book_keys = {("testapp.Book", str(books[0].pk)), ("testapp.Book", str(books[2].pk))}
    assert listed({"model": "testapp.Book"}) == book_keys
    assert listed({"model": "testapp.Author"}) == {("testapp.Author", str(ada.pk))}
    assert len(listed({"kind__exact": "verify"})) == 3
    assert listed({"kind__exact": "read"}) == set()
    MismatchRecord.objects.filter(model="testapp.Author").update(status="resolved")
    assert listed({"status__exact": "resolved"}) == {("testapp.Author", str(ada.pk))}
    assert listed({"status__exact": "confirmed"}) == book_keys
    assert listed({"q": str(books[2].pk), "model": "testapp.Book"}) == {
        ("testapp.Book", str(books[2].pk))
    }

    page = client.get(_change_url(_record("testapp.Book", books[0].pk)))
    assert page.status_code == 200
    html = page.content.decode()
    assert _cell_row(html, "title") == (
        "differs",
        "&quot;title-0&quot;",
        "&quot;tampered-title&quot;",
    )
    assert _cell_row(html, "pages") == ("same", "0", "0")
    assert _cell_row(html, "author") == ("same", str(ada.pk), str(ada.pk))
    assert 'name="_save"' not in html  # read-only

    missing = client.get(_change_url(_record("testapp.Book", books[2].pk))).content.decode()
    assert "Missing in target" in missing
    row_class, source, target_cell = _cell_row(missing, "title")
    assert (row_class, source) == ("differs", "&quot;title-2&quot;") and "no row" in target_cell

    edit = client.post(_change_url(_record("testapp.Book", books[0].pk)), {"status": "resolved"})
    assert edit.status_code == 403
    assert _record("testapp.Book", books[0].pk).status == "confirmed"


@both_databases
def test_redacted_values_never_reach_the_html(kinesis):
    _, books = _mirrored_books()
    Book.objects.using("new").filter(pk=books[1].pk).update(isbn=LEAK)
    Book.objects.using("new").filter(pk=books[3].pk).delete()
    _verify("testapp.Book")
    # A record written by some other path with the raw values is redacted all the same.
    MismatchRecord.objects.create(
        kind="read",
        model="testapp.Book",
        pk_value=str(books[0].pk),
        source_value={"title": "title-0", "isbn": f"{SECRET}-0"},
        target_value={"title": "title-0", "isbn": LEAK},
        diff={"kind": "changed", "fields": {"isbn": [f"{SECRET}-0", LEAK]}},
    )
    read = MismatchRecord.objects.create(  # a whole result set per side, not one row
        kind="read",
        model="testapp.Book",
        query="SELECT ...",
        source_value=[{"id": books[0].pk, "isbn": f"{SECRET}-0"}],
        target_value=[],
    )
    client = _login(superuser=True)

    pages = [client.get(reverse(CHANGELIST))]
    pages += [client.get(_change_url(r)) for r in MismatchRecord.objects.all()]
    assert [p.status_code for p in pages] == [200] * 5
    for page in pages:
        html = page.content.decode()
        assert SECRET not in html and LEAK not in html
    changed = client.get(_change_url(_record("testapp.Book", books[1].pk))).content.decode()
    assert _cell_row(changed, "isbn") == ("differs", "&lt;redacted&gt;", "&lt;redacted&gt;")
    missing = client.get(_change_url(_record("testapp.Book", books[3].pk))).content.decode()
    assert _cell_row(missing, "isbn")[1] == "&lt;redacted&gt;"
    result_sets = client.get(_change_url(read)).content.decode()
    assert _cell_row(result_sets, "value") == (
        "differs",
        f"[{{&quot;id&quot;: {books[0].pk}, &quot;isbn&quot;: &quot;&lt;redacted&gt;&quot;}}]",
        "[]",
    )


@both_databases
def test_staff_see_and_act_only_on_models_they_have_permissions_for(kinesis):
    ada, books = _mirrored_books()
    Book.objects.using("new").filter(pk=books[0].pk).update(title="tampered")
    Author.objects.using("new").filter(pk=ada.pk).update(name="Eve")
    _verify("testapp.Author", "testapp.Book")
    book_record = _record("testapp.Book", books[0].pk)
    author_record = _record("testapp.Author", ada.pk)
    Book.objects.using("new").filter(pk=books[0].pk).update(title="title-0")  # fixed
    mismatch_perms = ("django_mirror.view_mismatchrecord", "django_mirror.change_mismatchrecord")

    authors_only = _login(*mismatch_perms, "testapp.view_author", "testapp.change_author")
    listing = authors_only.get(reverse(CHANGELIST))
    assert listing.status_code == 200
    assert [r.pk for r in listing.context["cl"].result_list] == [author_record.pk]
    assert "testapp.Book" not in listing.content.decode()  # not even as a filter choice
    assert authors_only.get(_change_url(book_record)).status_code == 302  # "does not exist"
    assert authors_only.get(_change_url(author_record)).status_code == 200
    _act(authors_only, "recheck", [book_record])
    assert _record("testapp.Book", books[0].pk).status == "confirmed"  # not theirs to touch

    User.objects.all().delete()
    view_only = _login(*mismatch_perms, "testapp.view_book")
    page = view_only.get(_change_url(book_record))
    assert page.status_code == 200 and 'value="Re-check"' not in page.content.decode()
    response = _act(view_only, "recheck", [book_record])
    assert any("may not change" in m for m in _messages(response))
    assert _record("testapp.Book", books[0].pk).status == "confirmed"

    User.objects.all().delete()
    not_staff = _login(*mismatch_perms, "testapp.view_book", "testapp.change_book", staff=False)
    assert not_staff.get(reverse(CHANGELIST)).status_code == 302  # to the login page
    assert not_staff.get(_change_url(book_record)).status_code == 302
    _act(not_staff, "recheck", [book_record])
    assert _record("testapp.Book", books[0].pk).status == "confirmed"

    User.objects.all().delete()
    may_fix = _login(*mismatch_perms, "testapp.view_book", "testapp.change_book")
    assert 'value="Re-check"' in may_fix.get(_change_url(book_record)).content.decode()
    _act(may_fix, "recheck", [book_record])
    assert _record("testapp.Book", books[0].pk).status == "resolved"


@both_databases
def test_recheck_resolves_fixed_rows_and_updates_the_others(kinesis):
    _, books = _mirrored_books()
    target = Book.objects.using("new")
    target.filter(pk=books[0].pk).update(title="tampered-0")
    target.filter(pk=books[3].pk).update(title="tampered-3")
    _verify("testapp.Book")
    target.filter(pk=books[0].pk).update(title="title-0")  # fixed by hand
    target.filter(pk=books[3].pk).update(title="tampered-again")
    client = _login(superuser=True)

    response = _act(client, "recheck", list(MismatchRecord.objects.all()))
    assert response.status_code == 200
    assert "2 record(s) re-checked: 1 resolved, 1 still differ." in _messages(response)
    assert _record("testapp.Book", books[0].pk).status == "resolved"
    still = _record("testapp.Book", books[3].pk)
    assert still.status == "confirmed"
    assert still.target_value["title"] == "tampered-again"
    assert still.diff["fields"] == {"title": ["title-3", "tampered-again"]}
    assert still.target_value["isbn"] == still.source_value["isbn"] == "<redacted>"


@both_databases
def test_repair_rewrites_tampered_target_rows_and_resolves(kinesis):
    ada, books = _mirrored_books()
    target = Book.objects.using("new")
    target.filter(pk=books[0].pk).update(title="tampered", isbn=LEAK)
    target.filter(pk=books[1].pk).delete()
    target.bulk_create([Book(id=books[-1].pk + 100, author_id=ada.pk, title="ghost")])
    _verify("testapp.Book")
    records = list(MismatchRecord.objects.all())
    assert len(records) == 3
    client = _login(superuser=True)

    one = _record("testapp.Book", books[0].pk)
    response = _act(client, "repair", [one], _from_change="1")
    assert response.redirect_chain[-1][0] == _change_url(one)  # back on the record's page
    assert "1 row(s) rewritten in the target." in _messages(response)
    assert _record("testapp.Book", books[0].pk).status == "resolved"

    response = _act(client, "repair", records)
    assert "2 row(s) rewritten in the target." in _messages(response)
    assert set(MismatchRecord.objects.values_list("status", flat=True)) == {"resolved"}
    assert_mirrored(Book)
    # Versions replay applied survive the repair: later writes still reach the target.
    Book.objects.filter(pk=books[1].pk).update(title="after repair")
    drain_and_replay()
    assert_mirrored(Book)


@both_databases
def test_repair_never_copies_excluded_fields(kinesis):
    secret = Secret.objects.create(name="vault", token="hunter2")
    drain_and_replay()
    Secret.objects.using("new").filter(pk=secret.pk).update(name="tampered")
    _verify("testapp.Secret")
    client = _login(superuser=True)
    _act(client, "repair", list(MismatchRecord.objects.all()))
    repaired = Secret.objects.using("new").get(pk=secret.pk)
    assert (repaired.name, repaired.token) == ("vault", "")
    assert MismatchRecord.objects.get().status == "resolved"


# --- read records: Re-check runs the kept query again; Dismiss asks why ----------------


def _shadowed(*reads: Any) -> None:
    """Run ``reads`` with every Author read shadowed, until the comparisons end."""
    from django_mirror.shadow import get_pool, shadow_reads
    from tests.conftest import mirroring

    with mirroring({"testapp.Author": {"shadow_read_rate": 1.0}}), shadow_reads(path="/t/"):
        for read in reads:
            read()
        assert get_pool().wait_idle(30)


@both_databases
def test_recheck_of_a_count_record_runs_its_query_again():
    ada, bob = both(Author, name="ada"), both(Author, name="abe")
    with paused():
        Author.objects.using("new").filter(pk=bob.pk).delete()
    _shadowed(lambda: Author.objects.filter(name__startswith="a").count())
    record = MismatchRecord.objects.get()
    assert (record.kind, record.status, record.pk_value) == ("read", "confirmed", "")
    assert record.query.startswith("count: ") and record.diff["rerun"]
    client = _login(superuser=True)

    response = _act(client, "recheck", [record])
    assert "1 record(s) re-checked: 0 resolved, 1 still differ." in _messages(response)
    assert MismatchRecord.objects.get().status == "confirmed"
    with paused():
        Author.objects.using("new").create(pk=bob.pk, name="abe")
    response = _act(client, "recheck", [record])
    assert "1 record(s) re-checked: 1 resolved, 0 still differ." in _messages(response)
    record.refresh_from_db()
    assert record.status == "resolved" and record.diff["rerun"]  # kept for the next time
    assert ada.pk != bob.pk


@both_databases
@pytest.mark.usefixtures("divergent")
def test_recheck_of_an_unordered_slice_record_reads_its_rows_by_key():
    """The issue's case: an unordered slice's record named no row, so nothing could
    clear it. Its rows are now read again by key, whichever rows the query picks."""
    picked = [a.pk for a in Author.objects.filter(name__gte="n")[:5]]
    tampered = picked[1]
    Author.objects.using("new").filter(pk=tampered).update(name="nz-tampered")
    _shadowed(lambda: list(Author.objects.filter(name__gte="n")[:5]))
    record = MismatchRecord.objects.get()
    assert record.pk_value == str(tampered) and record.diff["keys"]
    client = _login(superuser=True)
    page = client.get(_change_url(record))
    assert page.status_code == 200 and 'value="Dismiss"' in page.content.decode()

    response = _act(client, "recheck", [record], _from_change="1")
    assert response.redirect_chain[-1][0] == _change_url(record)
    assert "1 record(s) re-checked: 0 resolved, 1 still differ." in _messages(response)
    Author.objects.using("new").filter(pk=tampered).update(
        name=Author.objects.get(pk=tampered).name
    )
    response = _act(client, "recheck", [record])
    assert "1 record(s) re-checked: 1 resolved, 0 still differ." in _messages(response)
    assert MismatchRecord.objects.get().status == "resolved"


@both_databases
def test_recheck_of_read_records_that_kept_no_query():
    """Records written before queries were kept: one naming rows compares them by key;
    one naming none says so and points to Dismiss."""
    authors = [both(Author, name=f"a{i}") for i in range(3)]
    keys = [str(a.pk) for a in authors]
    rows = MismatchRecord.objects.create(
        kind="read",
        model="testapp.Author",
        pk_value=",".join(keys),
        query="rows: SELECT ... LIMIT 3",
        diff={
            "differences": [
                {"model": "testapp.Author", "pk": keys[0], "kind": "missing", "fields": {}},
                {"model": "testapp.Author", "pk": keys[1], "kind": "extra", "fields": {}},
                {"model": "testapp.Author", "pk": keys[2], "kind": "missing", "fields": {}},
            ],
            "summary": None,
            "stores": ["default", "new"],
        },
    )
    count = MismatchRecord.objects.create(
        kind="read",
        model="testapp.Author",
        query="count: SELECT COUNT(*) ...",
        diff={"differences": [], "summary": {"source": 3, "target": 2}},
    )
    # A kept query is unpickled only under django-mirror's signature.
    forged = MismatchRecord.objects.create(
        kind="read",
        model="testapp.Author",
        query="count: SELECT COUNT(*) ...",
        diff={"summary": {"source": 3, "target": 2}, "rerun": "gASV...:forged-signature"},
    )
    client = _login(superuser=True)
    response = _act(client, "recheck", [rows, count, forged])
    messages = _messages(response)
    assert "1 record(s) re-checked: 1 resolved, 0 still differ." in messages
    assert any(
        f"record {count.pk} names no row and its query cannot run again (no query was kept)" in m
        and "dismiss it instead" in m
        for m in messages
    ), messages
    assert any(f"record {forged.pk}" in m and "signature does not match" in m for m in messages)
    rows.refresh_from_db()
    count.refresh_from_db()
    assert (rows.status, count.status) == ("resolved", "confirmed")

    with paused():  # one of the rows differs now: the record says which
        Author.objects.using("new").filter(pk=authors[2].pk).update(name="tampered")
    _act(client, "recheck", [rows])
    rows.refresh_from_db()
    assert rows.status == "confirmed"
    assert [d["pk"] for d in rows.diff["differences"]] == [keys[2]]
    assert rows.target_value[keys[2]]["name"] == "tampered"


@both_databases
def test_dismiss_asks_why_then_records_who_when_and_why_and_the_gate_ignores_them():
    from django_mirror.config import conf
    from django_mirror.phases import transitions

    records = [
        MismatchRecord.objects.create(kind="read", status="confirmed", model="testapp.Author")
        for _ in range(3)
    ]
    config = conf.config_for_label("testapp.Author")
    assert config is not None

    def gate() -> Any:
        [check] = [
            p
            for p in transitions.preconditions(config, "promoted")
            if p.name == "no confirmed mismatch"
        ]
        return check

    assert not gate().ok and "3 confirmed, undismissed" in gate().detail
    client = _login(superuser=True)

    asked = _act(client, "dismiss", records[:2])
    assert asked.status_code == 200
    assert asked.templates[0].name == "admin/django_mirror/mismatchrecord/dismiss.html"
    assert 'name="reason"' in asked.content.decode()
    assert not MismatchRecord.objects.filter(dismissed_at__isnull=False).exists()

    blank = _act(client, "dismiss", records[:2], apply="1", reason="  ")
    assert blank.status_code == 200 and "errorlist" in blank.content.decode()
    assert not MismatchRecord.objects.filter(dismissed_at__isnull=False).exists()

    # As the question's form posts it: no "index", as after Django's own confirmations.
    done = client.post(
        reverse(CHANGELIST),
        {
            "action": "dismiss",
            "_selected_action": [r.pk for r in records[:2]],
            "apply": "1",
            "reason": "unordered slice, known",
        },
        follow=True,
    )
    assert "2 record(s) dismissed." in _messages(done)
    dismissed = MismatchRecord.objects.filter(dismissed_at__isnull=False)
    assert {r.pk for r in dismissed} == {records[0].pk, records[1].pk}
    assert {(r.dismissed_by, r.dismissed_reason) for r in dismissed} == {
        ("root", "unordered slice, known")
    }
    assert not gate().ok and "1 confirmed, undismissed" in gate().detail

    def listed(query: dict[str, str]) -> set[int]:
        response = client.get(reverse(CHANGELIST), query)
        return {r.pk for r in response.context["cl"].result_list}

    assert listed({"dismissed": "yes"}) == {records[0].pk, records[1].pk}
    assert listed({"dismissed": "no"}) == {records[2].pk}
    page = client.get(_change_url(records[0])).content.decode()
    assert "Dismissed by <strong>root</strong>" in page and "unordered slice, known" in page
    assert 'value="Dismiss"' not in page

    # From a record's page, one record, and back to it.
    asked = _act(client, "dismiss", [records[2]], _from_change="1")
    assert 'name="_from_change"' in asked.content.decode()
    done = _act(client, "dismiss", [records[2]], _from_change="1", apply="1", reason="checked")
    assert done.redirect_chain[-1][0] == _change_url(records[2])
    assert gate().ok
    # Dismissing again keeps the first reason.
    again = _act(client, "dismiss", records[:1], apply="1", reason="other")
    assert any("dismissed already" in m for m in _messages(again))
    assert MismatchRecord.objects.get(pk=records[0].pk).dismissed_reason == (
        "unordered slice, known"
    )


@both_databases
def test_only_staff_who_may_change_the_models_rows_dismiss():
    record = MismatchRecord.objects.create(kind="read", status="confirmed", model="testapp.Book")
    mismatch_perms = ("django_mirror.view_mismatchrecord", "django_mirror.change_mismatchrecord")
    viewer = _login(*mismatch_perms, "testapp.view_book")
    assert 'value="Dismiss"' not in viewer.get(_change_url(record)).content.decode()
    response = _act(viewer, "dismiss", [record], apply="1", reason="mine")
    assert any("may not change" in m for m in _messages(response))
    assert MismatchRecord.objects.get().dismissed_at is None
    User.objects.all().delete()
    no_action = _login("django_mirror.view_mismatchrecord", "testapp.change_book")
    _act(no_action, "dismiss", [record], apply="1", reason="mine")
    assert MismatchRecord.objects.get().dismissed_at is None  # no change on the records


@both_databases
def test_dismissed_records_leave_the_status_and_dashboard_figures_as_they_leave_the_gate():
    from django_mirror.admin import dashboard

    kept, dismissed = (
        MismatchRecord.objects.create(kind="read", status="confirmed", model="testapp.Author")
        for _ in range(2)
    )
    MismatchRecord.objects.filter(pk=dismissed.pk).update(
        dismissed_at=timezone.now(), dismissed_by="ops", dismissed_reason="known: test data"
    )
    out = StringIO()
    call_command("mirror_status", "--json", stdout=out)
    row = next(r for r in json.loads(out.getvalue())["models"] if r["model"] == "testapp.Author")
    assert row["mismatches"] == 1
    board = dashboard.compute()
    author = next(r for r in board.rows if r.label == "testapp.Author")
    assert author.mismatches_day["read"] == 1
    assert kept.pk != dismissed.pk
