"""The follow/unfollow business logic, written the way a real service uses the ORM.

``follower_count`` is changed with ``F()`` inside the same transaction as the
``Follow`` row, so the counter never drifts even with concurrent requests.
"""

from __future__ import annotations

from django.db import router, transaction
from django.db.models import Count, F, OuterRef, Subquery
from django.db.models.functions import Coalesce

from follows.models import Channel, Follow, User


def atomic() -> transaction.Atomic:
    """A transaction on the store that takes the follows' writes now: ``default``, or
    the new store once django-mirror's router has promoted them there."""
    return transaction.atomic(using=router.db_for_write(Follow))


def follow(user: User, channel: Channel, notifications: bool = True) -> Follow:
    """Follow ``channel`` (idempotent); the counter moves only when a row was created."""
    with atomic():
        follow_row, created = Follow.objects.get_or_create(
            user=user, channel=channel, defaults={"notifications": notifications}
        )
        if created:
            Channel.objects.filter(pk=channel.pk).update(follower_count=F("follower_count") + 1)
    return follow_row


def unfollow(user: User, channel: Channel) -> bool:
    """Stop following ``channel``; False when the user did not follow it."""
    with atomic():
        deleted, _ = Follow.objects.filter(user=user, channel=channel).delete()
        if deleted:
            Channel.objects.filter(pk=channel.pk).update(follower_count=F("follower_count") - 1)
    return bool(deleted)


def set_notifications(user: User, channel: Channel, enabled: bool) -> int:
    """Turn a follow's notifications on or off; returns the rows changed."""
    return Follow.objects.filter(user=user, channel=channel).update(notifications=enabled)


def recount_followers(channel_ids: list[int] | None = None) -> int:
    """Rewrite ``follower_count`` from the follows table (after bulk imports)."""
    followers = (
        Follow.objects.filter(channel=OuterRef("pk"))
        .order_by()
        .values("channel")
        .annotate(n=Count("pk"))
        .values("n")
    )
    channels = Channel.objects.all()
    if channel_ids is not None:
        channels = channels.filter(pk__in=channel_ids)
    return channels.update(follower_count=Coalesce(Subquery(followers), 0))


def delete_user(user: User) -> None:
    """Delete an account: its follows and channels go with it, counters stay right."""
    with atomic():
        followed = Follow.objects.filter(user=user).values("channel")
        Channel.objects.filter(pk__in=Subquery(followed)).exclude(owner=user).update(
            follower_count=F("follower_count") - 1
        )
        user.delete()
