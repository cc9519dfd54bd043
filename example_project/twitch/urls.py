"""URLs of the example project: a channel's followers as JSON, and the admin, which shows
the follows data and django-mirror's tables."""

from django.contrib import admin
from django.urls import path
from follows import views

urlpatterns = [
    path(
        "channels/<int:channel_id>/followers/",
        views.channel_followers,
        name="channel-followers",
    ),
    path("admin/", admin.site.urls),
]
