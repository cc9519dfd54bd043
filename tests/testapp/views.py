"""Views the shadow-read and live-mirroring tests request through the test client."""

from __future__ import annotations

from django.db.models import Count, Max
from django.http import HttpRequest, JsonResponse

from tests.testapp.models import Author, Book


def author(request: HttpRequest, pk: int) -> JsonResponse:
    return JsonResponse({"name": Author.objects.get(pk=pk).name})


def authors(request: HttpRequest) -> JsonResponse:
    """POST creates an author; GET lists them, counts them and aggregates their books."""
    if request.method == "POST":
        created = Author.objects.create(name=request.POST["name"])
        return JsonResponse({"pk": created.pk})
    return JsonResponse(
        {
            "names": list(Author.objects.order_by("pk").values_list("name", flat=True)),
            "count": Author.objects.count(),
            "books": Book.objects.aggregate(n=Count("pk"), most=Max("pages")),
        }
    )


def book(request: HttpRequest, pk: int) -> JsonResponse:
    found = Book.objects.get(pk=pk)
    return JsonResponse({"title": found.title, "has_isbn": bool(found.isbn)})
