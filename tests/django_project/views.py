from __future__ import annotations

import hashlib
import json

from django import forms
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.shortcuts import render
from django.views.decorators.csrf import csrf_exempt


class ContactForm(forms.Form):
    name = forms.CharField(max_length=50)
    email = forms.EmailField()
    age = forms.IntegerField(min_value=0)


class UploadForm(forms.Form):
    title = forms.CharField(max_length=50)
    document = forms.FileField()


def index(request: HttpRequest) -> HttpResponse:
    return render(
        request, "index.html", {"items": ["alpha", "beta", "<gamma>"], "path": request.path}
    )


def greet(request: HttpRequest, name: str) -> HttpResponse:
    return render(request, "greet.html", {"name": name, "query": request.GET.get("x", "")})


def contact(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = ContactForm(request.POST)
        if form.is_valid():
            return JsonResponse({"ok": True, "cleaned": form.cleaned_data})
        return JsonResponse({"ok": False, "errors": form.errors.get_json_data()}, status=400)
    return render(request, "contact.html", {"form": ContactForm()})


def upload(request: HttpRequest) -> HttpResponse:
    if request.method == "POST":
        form = UploadForm(request.POST, request.FILES)
        if not form.is_valid():
            return JsonResponse({"ok": False, "errors": form.errors.get_json_data()}, status=400)
        document = form.cleaned_data["document"]
        digest = hashlib.sha256()
        size = 0
        for chunk in document.chunks():
            digest.update(chunk)
            size += len(chunk)
        return JsonResponse(
            {
                "ok": True,
                "title": form.cleaned_data["title"],
                "name": document.name,
                "size": size,
                "sha256": digest.hexdigest(),
                "handler": type(document).__name__,
            }
        )
    return render(request, "upload.html", {"form": UploadForm()})


@csrf_exempt
def api_echo(request: HttpRequest) -> HttpResponse:
    payload = json.loads(request.body or b"null")
    return JsonResponse(
        {"method": request.method, "payload": payload, "content_type": request.content_type}
    )
