"""A reproducible mix of the writes a follows service makes, for ``mirror_demo``.

Every ORM write path django-mirror captures appears here at least once: ``save()``,
``F()`` updates, ``get_or_create``/``update_or_create``, ``bulk_create`` (also with
``ignore_conflicts``), ``bulk_update``, queryset ``update()``/``delete()``, cascades,
M2M ``add``/``remove``/``set``/``clear`` from both sides, and transactions and
savepoints rolled back on purpose (which must leave nothing in the stream).
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Callable

from django.db.models import F

from follows import services
from follows.models import Channel, Follow, Tag, User

TAG_NAMES = [
    "english", "deutsch", "español", "français", "日本語", "speedrun", "chill", "music",
    "esports", "art", "irl", "retro", "coding", "cooking", "fps", "rpg", "strategy",
    "horror", "indie", "co-op", "vtuber", "asmr", "science", "travel", "chess",
]  # fmt: skip


class Rollback(Exception):
    """Raised inside a block to roll it back on purpose."""


class Workload:
    """Writes ``operations`` random operations chosen with ``random.Random(seed)``."""

    def __init__(self, seed: int = 2024) -> None:
        self.rng = random.Random(seed)
        self.done: Counter[str] = Counter()
        self.rolled_back = 0
        self.users: list[int] = []
        self.channels: list[int] = []
        self.tags: list[int] = []
        self.unfollowed: list[tuple[int, int]] = []
        self._serial = 0

    # --- helpers ------------------------------------------------------------------------

    def _name(self, prefix: str) -> str:
        self._serial += 1
        return f"{prefix}{self._serial:05d}"

    def _refresh(self) -> None:
        """Re-read the ids still alive after deletes and cascades."""
        self.users = list(User.objects.order_by("pk").values_list("pk", flat=True))
        self.channels = list(Channel.objects.order_by("pk").values_list("pk", flat=True))
        self.tags = list(Tag.objects.order_by("pk").values_list("pk", flat=True))

    def _user(self) -> User:
        return User.objects.get(pk=self.rng.choice(self.users))

    def _channel(self) -> Channel:
        return Channel.objects.get(pk=self.rng.choice(self.channels))

    def _a_follow(self) -> Follow | None:
        """Some existing follow, picked deterministically (no ``ORDER BY RANDOM()``)."""
        pks = list(
            Follow.objects.filter(channel_id=self.rng.choice(self.channels))
            .order_by("pk")
            .values_list("pk", flat=True)
        )
        return Follow.objects.get(pk=self.rng.choice(pks)) if pks else None

    # --- seeding ------------------------------------------------------------------------

    def seed(self, users: int = 300, channels: int = 60) -> None:
        """Users (half one by one, half in bulk), tags, channels and their tags."""
        for _ in range(users // 2):
            User.objects.create(username=self._name("viewer"), display_name="")
        User.objects.bulk_create(
            [User(username=self._name("viewer")) for _ in range(users - users // 2)]
        )
        for name in TAG_NAMES:
            Tag.objects.get_or_create(name=name)
        self._refresh()
        for _ in range(channels):
            channel = Channel.objects.create(
                owner_id=self.rng.choice(self.users), name=self._name("channel")
            )
            channel.tags.add(*self.rng.sample(self.tags, 3))
        self._refresh()
        self.done["seed"] += users + len(TAG_NAMES) + channels

    # --- operations ---------------------------------------------------------------------

    def op_follow(self) -> None:
        services.follow(self._user(), self._channel(), notifications=self.rng.random() < 0.7)

    def op_unfollow(self) -> None:
        follow = self._a_follow()
        if follow is not None:
            services.unfollow(follow.user, follow.channel)
            self.unfollowed.append((follow.user_id, follow.channel_id))

    def op_refollow(self) -> None:
        if not self.unfollowed:
            return self.op_follow()
        user_id, channel_id = self.unfollowed.pop(self.rng.randrange(len(self.unfollowed)))
        user = User.objects.filter(pk=user_id).first()
        channel = Channel.objects.filter(pk=channel_id).first()
        if user and channel:
            services.follow(user, channel)

    def op_toggle_notifications(self) -> None:
        follow = self._a_follow()
        if follow is not None:
            follow.notifications = not follow.notifications
            follow.save(update_fields=["notifications"])

    def op_rename(self) -> None:
        user = self._user()
        User.objects.update_or_create(
            username=user.username,
            defaults={"display_name": f"{user.username.title()} ✨{self.rng.randint(1, 99)}"},
        )

    def op_new_user(self) -> None:
        self.users.append(User.objects.create(username=self._name("viewer")).pk)

    def op_new_channel(self) -> None:
        channel = Channel.objects.create(owner=self._user(), name=self._name("channel"))
        channel.tags.set(self.rng.sample(self.tags, min(2, len(self.tags))))
        self.channels.append(channel.pk)

    def op_bulk_follow(self) -> None:
        """An import: follows in bulk, duplicates ignored, counters recomputed after."""
        channel_ids = self.rng.sample(self.channels, min(3, len(self.channels)))
        rows = [
            Follow(user_id=self.rng.choice(self.users), channel_id=self.rng.choice(channel_ids))
            for _ in range(20)
        ]
        with services.atomic():
            Follow.objects.bulk_create(rows, ignore_conflicts=True)
            services.recount_followers(channel_ids)

    def op_bulk_new_users(self) -> None:
        User.objects.bulk_create([User(username=self._name("viewer")) for _ in range(10)])
        self._refresh()

    def op_bulk_update(self) -> None:
        follows = list(
            Follow.objects.filter(user_id__in=self.rng.sample(self.users, 10)).order_by("pk")
        )
        for follow in follows:
            follow.notifications = self.rng.random() < 0.5
        Follow.objects.bulk_update(follows, ["notifications"], batch_size=25)

    def op_mute_channel(self) -> None:
        Follow.objects.filter(channel_id=self.rng.choice(self.channels)).update(notifications=False)

    def op_drop_muted(self) -> None:
        """Queryset delete of a user's muted follows, then counters fixed with F()."""
        user_id = self.rng.choice(self.users)
        with services.atomic():
            muted = Follow.objects.filter(user_id=user_id, notifications=False)
            channel_ids = list(muted.values_list("channel_id", flat=True))
            muted.delete()
            Channel.objects.filter(pk__in=channel_ids).update(
                follower_count=F("follower_count") - 1
            )

    def op_tags_add(self) -> None:
        self._channel().tags.add(*self.rng.sample(self.tags, 2))

    def op_tags_remove(self) -> None:
        channel = self._channel()
        tag_ids = list(channel.tags.order_by("pk").values_list("pk", flat=True))
        if tag_ids:
            channel.tags.remove(self.rng.choice(tag_ids))

    def op_tags_set(self) -> None:
        self._channel().tags.set(self.rng.sample(self.tags, self.rng.randint(0, 4)))

    def op_tags_clear(self) -> None:
        self._channel().tags.clear()

    def op_tag_channels(self) -> None:
        """The reverse side of the M2M: a tag picks up channels."""
        Tag.objects.get(pk=self.rng.choice(self.tags)).channels.add(
            *self.rng.sample(self.channels, 2)
        )

    def op_delete_user(self) -> None:
        services.delete_user(self._user())  # cascades to follows, channels, channel tags
        self._refresh()

    def op_delete_channel(self) -> None:
        self._channel().delete()
        self._refresh()

    def op_new_tag(self) -> None:
        tag, _ = Tag.objects.get_or_create(name=self._name("tag"))
        self.tags.append(tag.pk)

    def op_delete_tag(self) -> None:
        if len(self.tags) > 10:
            Tag.objects.filter(pk=self.rng.choice(self.tags)).delete()
            self._refresh()

    def op_rollback(self) -> None:
        """A whole transaction that fails half way: none of it may reach the target."""
        try:
            with services.atomic():
                ghost = User.objects.create(username=self._name("ghost"))
                channel = self._channel()
                services.follow(ghost, channel)
                channel.tags.add(*self.rng.sample(self.tags, 2))
                Follow.objects.filter(channel=channel).update(notifications=True)
                raise Rollback
        except Rollback:
            self.rolled_back += 1

    def op_savepoint_rollback(self) -> None:
        """The outer transaction commits; the savepoint inside it is rolled back."""
        with services.atomic():
            services.follow(self._user(), self._channel())
            try:
                with services.atomic():
                    ghost = User.objects.create(username=self._name("ghost"))
                    services.follow(ghost, self._channel())
                    Channel.objects.filter(pk=self.rng.choice(self.channels)).update(
                        follower_count=F("follower_count") + 1000
                    )
                    raise Rollback
            except Rollback:
                self.rolled_back += 1

    #: (operation, weight): mostly follows, occasionally something destructive.
    MIX: list[tuple[str, float]] = [
        ("follow", 30),
        ("unfollow", 10),
        ("refollow", 5),
        ("toggle_notifications", 8),
        ("rename", 5),
        ("new_user", 4),
        ("new_channel", 2),
        ("bulk_follow", 3),
        ("bulk_new_users", 0.5),
        ("bulk_update", 3),
        ("mute_channel", 2),
        ("drop_muted", 2),
        ("tags_add", 4),
        ("tags_remove", 3),
        ("tags_set", 2),
        ("tags_clear", 0.5),
        ("tag_channels", 1),
        ("new_tag", 0.5),
        ("delete_tag", 0.3),
        ("delete_user", 1),
        ("delete_channel", 0.7),
        ("rollback", 2),
        ("savepoint_rollback", 2),
    ]

    def run(self, operations: int, on_progress: Callable[[int], None] | None = None) -> None:
        names = [name for name, _ in self.MIX]
        weights = [weight for _, weight in self.MIX]
        for i in range(operations):
            name = self.rng.choices(names, weights)[0]
            if not self.users or not self.channels:
                name = "new_channel" if self.users else "new_user"
            getattr(self, f"op_{name}")()
            self.done[name] += 1
            if on_progress is not None and (i + 1) % 500 == 0:
                on_progress(i + 1)
