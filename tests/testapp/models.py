"""Models that exercise every write path and field type django-mirror must carry."""

import uuid

from django.db import models

from django_mirror import MirroredManager


class Author(models.Model):
    name = models.CharField(max_length=100)
    objects = MirroredManager()


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)
    objects = MirroredManager()


class Book(models.Model):
    author = models.ForeignKey(Author, on_delete=models.CASCADE, related_name="books")
    editor = models.ForeignKey(
        Author, on_delete=models.SET_NULL, null=True, blank=True, related_name="edited"
    )
    title = models.CharField(max_length=200)
    pages = models.IntegerField(default=0)
    isbn = models.CharField(max_length=20, blank=True, default="")
    tags = models.ManyToManyField(Tag, blank=True, related_name="books")
    objects = MirroredManager()


class Shelf(models.Model):
    name = models.CharField(max_length=50)
    books = models.ManyToManyField(Book, through="ShelfBook", related_name="shelves")
    objects = MirroredManager()


class ShelfBook(models.Model):
    shelf = models.ForeignKey(Shelf, on_delete=models.CASCADE)
    book = models.ForeignKey(Book, on_delete=models.CASCADE)
    position = models.IntegerField(default=0)
    objects = MirroredManager()

    class Meta:
        constraints = [models.UniqueConstraint(fields=["shelf", "book"], name="shelfbook_unique")]


class AllTypes(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4)
    text = models.TextField(default="")
    char = models.CharField(max_length=100, default="")
    big = models.BigIntegerField(default=0)
    small = models.SmallIntegerField(default=0)
    dec = models.DecimalField(max_digits=20, decimal_places=6, default=0)
    flt = models.FloatField(default=0.0)
    flag = models.BooleanField(default=False)
    day = models.DateField(null=True)
    moment = models.DateTimeField(null=True)
    clock = models.TimeField(null=True)
    span = models.DurationField(null=True)
    ref = models.UUIDField(null=True)
    blob = models.BinaryField(null=True)
    doc = models.JSONField(null=True)
    ip = models.GenericIPAddressField(null=True)
    maybe = models.CharField(max_length=20, null=True)
    author = models.ForeignKey(Author, on_delete=models.SET_NULL, null=True)
    objects = MirroredManager()


class BigKey(models.Model):
    id = models.BigIntegerField(primary_key=True)
    name = models.CharField(max_length=100)
    objects = MirroredManager()


class Counter(models.Model):
    name = models.CharField(max_length=50, unique=True)
    value = models.IntegerField(default=0)
    objects = MirroredManager()


class Secret(models.Model):
    name = models.CharField(max_length=50)
    token = models.CharField(max_length=50, default="")
    objects = MirroredManager()


class Unmirrored(models.Model):
    name = models.CharField(max_length=50)


class Reading(models.Model):
    """A date as primary key: not mirrorable, so system check E012 has a model to refuse."""

    day = models.DateField(primary_key=True)
    value = models.IntegerField(default=0)


class Place(models.Model):
    """Mirrored, with an unmirrored multi-table child."""

    name = models.CharField(max_length=100)
    objects = MirroredManager()


class Cafe(Place):
    """Not mirrored, but its parent is: saving one writes a mirrored table (the parent's)."""

    seats = models.IntegerField(default=0)
