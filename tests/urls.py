from django.contrib import admin
from django.urls import path

from tests.testapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("authors/", views.authors),
    path("authors/<int:pk>/", views.author),
    path("books/<int:pk>/", views.book),
]
