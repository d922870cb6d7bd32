from django.http import HttpRequest, HttpResponse

from notes.models import Note


def notes(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        Note.objects.create(text=request.POST["text"])
    return HttpResponse("\n".join(Note.objects.order_by("id").values_list("text", flat=True)))
