from __future__ import annotations

from django.urls import path

from tests.django_project import views

urlpatterns = [
    path("", views.index),
    path("greet/<str:name>/", views.greet),
    path("form/", views.contact),
    path("upload/", views.upload),
    path("api/echo/", views.api_echo),
]
