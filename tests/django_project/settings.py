"""Settings for the end-to-end Django project: no database, templates, CSRF on."""

from __future__ import annotations

from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent

SECRET_KEY = "unyoke-e2e-tests-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["*"]

INSTALLED_APPS = [
    "django.contrib.contenttypes",
    "django.contrib.auth",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
]

ROOT_URLCONF = "tests.django_project.urls"
WSGI_APPLICATION = "tests.django_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [BASE_DIR / "templates"],
        "APP_DIRS": False,
        "OPTIONS": {"context_processors": ["django.template.context_processors.csrf"]},
    }
]

DATABASES: dict = {}

# Uploads above 64 KiB go through TemporaryFileUploadHandler: wsgi.input read in parts.
FILE_UPLOAD_MAX_MEMORY_SIZE = 65536
DATA_UPLOAD_MAX_MEMORY_SIZE = 10 * 1024 * 1024

USE_TZ = True
LOGGING_CONFIG = None
