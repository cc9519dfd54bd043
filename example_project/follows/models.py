"""Who follows which channel: the data this service is moving to the "new" database.

Each model's default manager is ``MirroredManager`` so bulk writes and queryset
updates are captured as well as ``save()`` and ``delete()``.
"""

from __future__ import annotations

from django.db import models
from django.utils import timezone

from django_mirror import MirroredManager


class User(models.Model):
    username = models.CharField(max_length=50, unique=True)
    display_name = models.CharField(max_length=100, blank=True, default="")

    objects = MirroredManager()

    def __str__(self) -> str:
        return self.username


class Tag(models.Model):
    name = models.CharField(max_length=50, unique=True)

    objects = MirroredManager()

    def __str__(self) -> str:
        return self.name


class Channel(models.Model):
    owner = models.ForeignKey(User, on_delete=models.CASCADE, related_name="channels")
    name = models.CharField(max_length=50, unique=True)
    #: Kept by ``follows.services`` with ``F()`` so concurrent follows never lose a count.
    follower_count = models.IntegerField(default=0)
    tags = models.ManyToManyField(Tag, blank=True, related_name="channels")

    objects = MirroredManager()

    def __str__(self) -> str:
        return self.name


class Follow(models.Model):
    user = models.ForeignKey(User, on_delete=models.CASCADE, related_name="follows")
    channel = models.ForeignKey(Channel, on_delete=models.CASCADE, related_name="follows")
    notifications = models.BooleanField(default=True)
    created_at = models.DateTimeField(default=timezone.now)

    objects = MirroredManager()

    class Meta:
        constraints = [
            models.UniqueConstraint(fields=["user", "channel"], name="follow_once_per_channel")
        ]

    def __str__(self) -> str:
        return f"{self.user} -> {self.channel}"
