"""Admin pages for the follows data (django-mirror registers its own beside them)."""

from django.contrib import admin

from follows.models import Channel, Follow, Tag, User


@admin.register(User)
class UserAdmin(admin.ModelAdmin):
    list_display = ("username", "display_name")
    search_fields = ("username", "display_name")


@admin.register(Tag)
class TagAdmin(admin.ModelAdmin):
    search_fields = ("name",)


@admin.register(Channel)
class ChannelAdmin(admin.ModelAdmin):
    list_display = ("name", "owner", "follower_count")
    search_fields = ("name",)
    filter_horizontal = ("tags",)
    raw_id_fields = ("owner",)


@admin.register(Follow)
class FollowAdmin(admin.ModelAdmin):
    list_display = ("user", "channel", "notifications", "created_at")
    list_filter = ("notifications",)
    raw_id_fields = ("user", "channel")
