"""URLs of the example project: the admin shows the follows data and django-mirror's tables."""

from django.contrib import admin
from django.urls import path

urlpatterns = [path("admin/", admin.site.urls)]
