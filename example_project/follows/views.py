"""Read endpoints of the follows service: what shadow reads compare once a model mirrors."""

from __future__ import annotations

from django.http import HttpRequest, JsonResponse
from django.shortcuts import get_object_or_404

from follows.models import Channel, Follow

#: Followers listed per page, newest first.
PAGE_SIZE = 50


def channel_followers(request: HttpRequest, channel_id: int) -> JsonResponse:
    """A channel's newest followers and how many it has, as a channel page shows them.

    Every read goes through the mirrored models' default managers, so under
    ``ShadowReadMiddleware`` each one (the channel, the page of follows, the count) is a
    candidate for a shadow read.
    """
    channel = get_object_or_404(Channel, pk=channel_id)
    follows = Follow.objects.filter(channel=channel)
    page = follows.select_related("user").order_by("-created_at", "-pk")[:PAGE_SIZE]
    return JsonResponse(
        {
            "channel": channel.name,
            "followers": follows.count(),
            "newest": [
                {
                    "user": follow.user.username,
                    "since": follow.created_at.isoformat(),
                    "notifications": follow.notifications,
                }
                for follow in page
            ],
        }
    )
