"""WSGI applications served by the end-to-end tests (importable as tests.apps.<module>:<app>)."""
