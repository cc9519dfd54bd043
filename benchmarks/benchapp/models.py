"""A Twitch-like follow row (six columns, unique on user + channel), mirrored and not.

The two classes share every column, index and constraint, so the difference between
them in a benchmark is what mirroring costs and nothing else.
"""

from __future__ import annotations

from django.db import models

from django_mirror import MirroredManager


class FollowFields(models.Model):
    user_id = models.BigIntegerField()
    channel_id = models.BigIntegerField()
    notifications = models.BooleanField(default=True)
    created_at = models.DateTimeField()
    origin = models.CharField(max_length=20, default="web")

    class Meta:
        abstract = True
        unique_together = [("user_id", "channel_id")]


class Follow(FollowFields):
    """Mirrored (``DJANGO_MIRROR["MODELS"]`` names it)."""

    objects = MirroredManager()

    class Meta(FollowFields.Meta):
        pass


class PlainFollow(FollowFields):
    """Not mirrored, with Django's own manager: what the model cost before mirroring."""

    class Meta(FollowFields.Meta):
        pass
