"""A minimal Django project served end to end (`tests.django_project.wsgi:application`)."""
