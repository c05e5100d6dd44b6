"""Apps wrapped in `wsgiref.validate.validator`: it checks the server's side of PEP 3333
(environ types and keys, wsgi.input/wsgi.errors methods, iteration and close()) and
raises AssertionError on a violation, which turns the response into a 500.

The inner apps follow the validator's own rules (read() always with a size, a
Content-Type on every response). Served as `tests.apps.validated:app`.
"""

from __future__ import annotations

import sys
from typing import Any, Iterator, List
from wsgiref.validate import validator

from tests.apps.common import Environ, StartResponse, record_call

HTML = [("Content-Type", "text/plain; charset=utf-8")]


def hello(environ: Environ, start_response: StartResponse) -> List[bytes]:
    body = b"hello from a validated app"
    start_response("200 OK", [*HTML, ("Content-Length", str(len(body)))])
    return [body]


def generator(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    start_response("200 OK", HTML)
    for i in range(5):
        yield f"chunk{i};".encode()


def lazy(environ: Environ, start_response: StartResponse) -> Iterator[bytes]:
    # start_response runs on the first next(), which the validator allows (it does not
    # allow a value, even b"", to be yielded before start_response).
    start_response("201 Created", HTML)
    yield b"lazy"


def post(environ: Environ, start_response: StartResponse) -> List[bytes]:
    stream = environ["wsgi.input"]
    first_line = stream.readline()
    rest = []
    while True:
        block = stream.read(7)
        if not block:
            break
        rest.append(block)
    body = b"line=" + first_line + b"|rest=" + b"".join(rest)
    start_response("200 OK", [*HTML, ("Content-Length", str(len(body)))])
    return [body]


def lines(environ: Environ, start_response: StartResponse) -> List[bytes]:
    stream = environ["wsgi.input"]
    collected = stream.readlines()
    body = b"|".join(collected)
    start_response("200 OK", HTML)
    return [body]


def write(environ: Environ, start_response: StartResponse) -> List[bytes]:
    writer = start_response("200 OK", HTML)
    writer(b"written;")
    return [b"returned"]


def exc_info(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("200 OK", HTML)
    try:
        raise ValueError("validated-exc")
    except ValueError:
        start_response("500 Internal Server Error", HTML, sys.exc_info())
    return [b"error page"]


def errors(environ: Environ, start_response: StartResponse) -> List[bytes]:
    stream = environ["wsgi.errors"]
    stream.write("validated-errors-line\n")
    stream.writelines(["validated-errors-writelines\n"])
    stream.flush()
    start_response("200 OK", HTML)
    return [b"ok"]


def no_content(environ: Environ, start_response: StartResponse) -> List[bytes]:
    start_response("204 No Content", [])
    return []


ROUTES = {
    "/hello": hello,
    "/generator": generator,
    "/lazy": lazy,
    "/post": post,
    "/lines": lines,
    "/write": write,
    "/exc_info": exc_info,
    "/errors": errors,
    "/no_content": no_content,
}


def inner(environ: Environ, start_response: StartResponse) -> Any:
    record_call(environ)
    handler = ROUTES.get(environ["PATH_INFO"])
    if handler is None:
        start_response("404 Not Found", HTML)
        return [b"no such route"]
    return handler(environ, start_response)


app = validator(inner)
