"""Real-app workload 2: a Django view rendering a template.

A one-file Django project (settings configured in code, no database): ``GET /`` goes
through the URL resolver, a small middleware stack (security, common) and a function
view that renders ``templates/page.html`` (a loop, filters, an ``{% if %}``) with the
Django template engine. Served as ``django_template:app``.
"""

import os

import django
from django.conf import settings
from django.core.wsgi import get_wsgi_application
from django.shortcuts import render
from django.urls import path

HERE = os.path.dirname(os.path.abspath(__file__))

ROWS = [{"id": i, "name": f"item {i}", "price": i * 2.5, "in_stock": i % 4 != 0} for i in range(20)]


def index(request):  # type: ignore[no-untyped-def]
    return render(request, "page.html", {"title": "Inventory", "rows": ROWS})


urlpatterns = [path("", index)]

if not settings.configured:
    settings.configure(
        DEBUG=False,
        SECRET_KEY="benchmark-only-not-secret",
        ALLOWED_HOSTS=["127.0.0.1", "localhost"],
        ROOT_URLCONF=__name__,
        MIDDLEWARE=[
            "django.middleware.security.SecurityMiddleware",
            "django.middleware.common.CommonMiddleware",
        ],
        INSTALLED_APPS=[],
        DATABASES={},
        USE_TZ=True,
        TEMPLATES=[
            {
                "BACKEND": "django.template.backends.django.DjangoTemplates",
                "DIRS": [os.path.join(HERE, "templates")],
                # the cached loader is Django's default when DEBUG is off
            }
        ],
    )
    django.setup()

app = get_wsgi_application()
