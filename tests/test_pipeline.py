"""End to end: ORM writes reach the target database through Kinesis."""

from __future__ import annotations

from django.db import transaction
from django.db.models import F

from tests.conftest import assert_mirrored, both_databases, drain_and_replay
from tests.testapp.models import Author, Book, Counter, Tag


@both_databases
def test_writes_reach_the_target(kinesis):
    ada = Author.objects.create(name="Ada")
    bob = Author.objects.create(name="Bob")
    book = Book.objects.create(author=ada, editor=bob, title="Notes", pages=10)
    book.tags.add(Tag.objects.create(name="math"), Tag.objects.create(name="history"))
    Book.objects.filter(pk=book.pk).update(pages=F("pages") + 5)
    Counter.objects.bulk_create([Counter(name=f"c{i}") for i in range(20)])
    Counter.objects.filter(name__in=["c1", "c2"]).delete()
    with transaction.atomic():
        Author.objects.create(name="never")
        transaction.set_rollback(True)
    bob.delete()  # SET_NULL on book.editor
    drain_and_replay()
    assert_mirrored(Author, Book, Counter, Tag, Book.tags.through)
    assert Book.objects.using("new").get().pages == 15
    assert Book.objects.using("new").get().editor_id is None
