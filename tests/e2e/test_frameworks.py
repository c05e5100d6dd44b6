"""Real frameworks served by a real unyoke process, driven by real HTTP clients."""

from __future__ import annotations

import hashlib
import re

import httpx
import pytest
import requests

from tests.apps.common import pattern_bytes
from tests.e2e.serverproc import ServerProcess

pytestmark = pytest.mark.timeout(60)

TIMEOUT = 15


# -- Flask ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def flask_server(module_servers) -> ServerProcess:
    return module_servers.start("tests.apps.flask_app:app")


def test_flask_json_endpoint(flask_server):
    response = requests.get(
        f"{flask_server.url}/api/items/42", params={"q": "é x"}, timeout=TIMEOUT
    )
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    assert response.json() == {"id": 42, "name": "item-42", "q": "é x"}


def test_flask_json_post(flask_server):
    payload = {"name": "widget", "tags": ["a", "b", "c"], "nested": {"ok": True}}
    response = requests.post(f"{flask_server.url}/api/items", json=payload, timeout=TIMEOUT)
    assert response.status_code == 201
    assert response.json() == {"created": payload, "count": 3}


def test_flask_form_post(flask_server):
    response = requests.post(
        f"{flask_server.url}/form",
        data={"name": "Zoë", "colour": ["red", "green"], "empty": ""},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.json() == {
        "fields": {"name": ["Zoë"], "colour": ["red", "green"], "empty": [""]}
    }


def test_flask_file_upload(flask_server):
    data = pattern_bytes(700_000, seed=11)
    response = requests.post(
        f"{flask_server.url}/upload",
        files={"document": ("report.bin", data, "application/octet-stream")},
        data={"title": "quarterly"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 200
    assert response.json() == {
        "filename": "report.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "title": "quarterly",
    }


def test_flask_streamed_response(flask_server):
    response = requests.get(f"{flask_server.url}/stream", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.text == "".join(f"line {i}\n" for i in range(100))


def test_flask_404_and_keep_alive_session(flask_server):
    with requests.Session() as session:
        for i in range(20):
            response = session.get(f"{flask_server.url}/api/items/{i}", timeout=TIMEOUT)
            assert response.json()["id"] == i
        missing = session.get(f"{flask_server.url}/nope", timeout=TIMEOUT)
        assert missing.status_code == 404
        assert missing.json() == {"error": "not found"}


# -- Django --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def django_server(module_servers) -> ServerProcess:
    return module_servers.start(
        "tests.django_project.wsgi:application",
        env={"DJANGO_SETTINGS_MODULE": "tests.django_project.settings"},
    )


CSRF_INPUT = re.compile(r'name="csrfmiddlewaretoken" value="([^"]+)"')


def csrf_token(session: requests.Session, url: str) -> str:
    page = session.get(url, timeout=TIMEOUT)
    assert page.status_code == 200
    match = CSRF_INPUT.search(page.text)
    assert match, page.text
    assert "csrftoken" in session.cookies
    return match.group(1)


def test_django_template_view(django_server):
    response = requests.get(f"{django_server.url}/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert "text/html" in response.headers["Content-Type"]
    assert "<h1>Index of /</h1>" in response.text
    assert "<li>alpha</li><li>beta</li><li>&lt;gamma&gt;</li>" in response.text


def test_django_non_ascii_path_reaches_the_view_decoded(django_server):
    response = requests.get(f"{django_server.url}/greet/Zoë/", params={"x": "ü"}, timeout=TIMEOUT)
    assert response.status_code == 200
    assert "Hello, Zoë! query=ü" in response.text


def test_django_form_post_with_csrf_token(django_server):
    with requests.Session() as session:
        token = csrf_token(session, f"{django_server.url}/form/")
        response = session.post(
            f"{django_server.url}/form/",
            data={
                "csrfmiddlewaretoken": token,
                "name": "Ada",
                "email": "ada@example.org",
                "age": "36",
            },
            timeout=TIMEOUT,
        )
        assert response.status_code == 200, response.text
        assert response.json() == {
            "ok": True,
            "cleaned": {"name": "Ada", "email": "ada@example.org", "age": 36},
        }
        invalid = session.post(
            f"{django_server.url}/form/",
            data={
                "csrfmiddlewaretoken": token,
                "name": "Ada",
                "email": "not-an-email",
                "age": "-1",
            },
            timeout=TIMEOUT,
        )
        assert invalid.status_code == 400
        assert set(invalid.json()["errors"]) == {"email", "age"}


def test_django_form_post_without_csrf_token_is_forbidden(django_server):
    response = requests.post(
        f"{django_server.url}/form/",
        data={"name": "x", "email": "x@y.z", "age": "1"},
        timeout=TIMEOUT,
    )
    assert response.status_code == 403


def test_django_file_upload(django_server):
    data = pattern_bytes(3 * 1024 * 1024 + 17, seed=5)
    with requests.Session() as session:
        token = csrf_token(session, f"{django_server.url}/upload/")
        response = session.post(
            f"{django_server.url}/upload/",
            data={"csrfmiddlewaretoken": token, "title": "big upload"},
            files={"document": ("data.bin", data, "application/octet-stream")},
            timeout=TIMEOUT,
        )
    assert response.status_code == 200, response.text
    assert response.json() == {
        "ok": True,
        "title": "big upload",
        "name": "data.bin",
        "size": len(data),
        "sha256": hashlib.sha256(data).hexdigest(),
        "handler": "TemporaryUploadedFile",
    }


def test_django_csrf_exempt_json_api_with_httpx(django_server):
    with httpx.Client(base_url=django_server.url, timeout=TIMEOUT) as client:
        response = client.put("/api/echo/", json={"list": [1, 2, 3], "text": "ü"})
        assert response.status_code == 200
        assert response.json() == {
            "method": "PUT",
            "payload": {"list": [1, 2, 3], "text": "ü"},
            "content_type": "application/json",
        }


def test_django_head_has_no_body(django_server):
    response = requests.head(f"{django_server.url}/", timeout=TIMEOUT)
    assert response.status_code == 200
    assert response.content == b""


# -- Falcon --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def falcon_server(module_servers) -> ServerProcess:
    return module_servers.start("tests.apps.falcon_app:app")


def test_falcon_resources(falcon_server):
    with httpx.Client(base_url=falcon_server.url, timeout=TIMEOUT) as client:
        created = client.post("/things", json={"name": "first", "weight": 1.5})
        assert created.status_code == 201
        assert created.headers["Location"].endswith("/things/1")
        assert created.json() == {"name": "first", "weight": 1.5, "id": 1}
        client.post("/things", json={"name": "second"})
        assert client.get("/things/1").json() == {"name": "first", "weight": 1.5, "id": 1}
        assert [t["name"] for t in client.get("/things").json()["things"]] == ["first", "second"]
        assert client.get("/things/99").status_code == 404
        assert client.get("/things/not-an-int").status_code == 404


def test_falcon_request_body(falcon_server):
    with httpx.Client(base_url=falcon_server.url, timeout=TIMEOUT) as client:
        response = client.put("/reverse", content=b"abcdef", headers={"Content-Type": "text/plain"})
        assert response.status_code == 200
        assert response.content == b"fedcba"
        assert response.headers["Content-Type"] == "text/plain"


def test_falcon_chunked_request_body(falcon_server):
    def parts():
        yield b"chunk-one;"
        yield b"chunk-two"

    with httpx.Client(base_url=falcon_server.url, timeout=TIMEOUT) as client:
        response = client.put("/reverse", content=parts())
        assert response.status_code == 200
        assert response.content == b"chunk-one;chunk-two"[::-1]


# -- Bottle --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bottle_server(module_servers) -> ServerProcess:
    return module_servers.start("tests.apps.bottle_app:app")


def test_bottle_template(bottle_server):
    with httpx.Client(base_url=bottle_server.url, timeout=TIMEOUT) as client:
        response = client.get("/hello/World")
        assert response.status_code == 200
        assert response.text == "<h1>Hello World!</h1><p>5 letters</p>"
        escaped = client.get("/hello/%3Cb%3E")
        assert escaped.text == "<h1>Hello &lt;b&gt;!</h1><p>3 letters</p>"


def test_bottle_form_and_json(bottle_server):
    with httpx.Client(base_url=bottle_server.url, timeout=TIMEOUT) as client:
        response = client.post(
            "/form", data={"city": "Zürich", "n": "3"}, headers={"User-Agent": "e2e"}
        )
        assert response.status_code == 200
        assert response.json() == {"fields": {"city": "Zürich", "n": "3"}, "ua": "e2e"}
        data = client.get("/json", params={"a": "1", "b": "ü"}).json()
        assert data == {"numbers": [0, 1, 2, 3, 4], "query": {"a": "1", "b": "ü"}}
        missing = client.get("/missing")
        assert missing.status_code == 404
        assert missing.text == "nothing here"
