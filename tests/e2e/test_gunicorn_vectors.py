"""The gunicorn project's public request vectors, sent raw to a real unyoke server.

gunicorn's sdist ships `tests/requests/valid/*.http` (each with a `.py` that states the
parsed request) and `tests/requests/invalid/*.http` (each with a `.py` naming the
parse error). They are downloaded with pip at collection time (never committed) and
cached in the git-ignored `.cache/` of the repository.

Valid vectors must be answered 200 by an environ-echo app with the method, path,
query, version, headers and body the `.py` states; invalid vectors must get a 4xx/5xx
(or a close without any 2xx) and never reach the app.

Some vectors need a non-default gunicorn setting (`cfg.set(...)` in their `.py`) or
state a gunicorn leniency that unyoke's rules (issue 2, part 2) forbid. Each of those
has an entry in VALID_POLICY / INVALID_POLICY saying what unyoke must do instead, or
why it is skipped; a vector that needs a setting but has no entry fails, so a new
gunicorn release cannot slip an unexamined vector in.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tarfile
import tempfile
import types
import urllib.parse
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.e2e.rawhttp import ConnectionClosed, HTTPResponse, IncompleteResponse, ProtocolError
from tests.e2e.serverproc import REPO_ROOT, ServerProcess

pytestmark = pytest.mark.timeout(60)

GUNICORN_VERSION = "23.0.0"  # 21.2.0, 22.0.0 and 23.0.0 all ship tests/requests
CACHE_DIR = REPO_ROOT / ".cache" / f"gunicorn-{GUNICORN_VERSION}-requests"
APP = "tests.apps.behaviour:app"

# gunicorn's default limits (limit_request_line=4094, limit_request_field_size=8190)
# mapped onto unyoke's settings, for the invalid vectors that exceed exactly those.
GUNICORN_LIMITS = ("--url-length-limit", "4094", "--max-request-header-size", "8190")


@dataclass(frozen=True)
class Policy:
    kind: str  # "as_gunicorn", "reject", "either" (as gunicorn or rejected), "skip"
    reason: str


VALID_POLICY: Dict[str, Policy] = {
    "005": Policy(
        "either",
        "'#' is not allowed in a request-target (RFC 9112 §3.2); a server may reject it, and "
        "if it accepts it the fragment must stay out of PATH_INFO and QUERY_STRING",
    ),
    "009": Policy(
        "reject",
        "Content-Length together with Transfer-Encoding (identity) is a 400 in unyoke "
        "(issue 2 part 2; RFC 9112 §6.1 allows rejecting)",
    ),
    "024": Policy(
        "as_gunicorn",
        "gunicorn needs limit_request_line=0 and limit_request_field_size=0; the request "
        "fits unyoke's default limits (8 KiB target, 256 KiB head)",
    ),
    "025": Policy(
        "either",
        "gzip before chunked: gunicorn passes the still-encoded body on; a server that "
        "does not implement the gzip transfer coding may answer 501 (RFC 9112 §6.1)",
    ),
    "025_line": Policy("either", "as 025, with the codings on one line"),
    "026": Policy(
        "as_gunicorn",
        "gunicorn needs limit_request_field_size=8210; the 8 KiB header fits unyoke's "
        "default 256 KiB head limit",
    ),
    "028": Policy(
        "reject",
        "needs gunicorn strip_header_spaces=True; whitespace before the colon is a 400 "
        "(RFC 9112 §5.1, issue 2 part 2)",
    ),
    "029": Policy(
        "either",
        "'identity' is no longer a transfer coding (RFC 9112); gunicorn ignores it, a "
        "strict server may answer 400 or 501. The vector's chunked body lacks its final "
        "CRLF and is sent completed",
    ),
    "030": Policy("either", "as 029"),
    "031compat": Policy(
        "skip",
        "needs gunicorn casefold_http_method=True, which upper-cases the method; methods are "
        "case-sensitive (RFC 9110 §9.1) and unyoke passes them as sent (see 031compat2)",
    ),
    "031compat2": Policy(
        "as_gunicorn",
        "gunicorn needs permit_unconventional_http_method=True; '-blargh' is a valid "
        "token method for RFC 9110 and must reach the app as sent",
    ),
    "099": Policy(
        "as_gunicorn",
        "the vector is truncated: its body is 8599 bytes but it says Content-Length: 17914 "
        "(gunicorn's parser test stops at the end of the data; a server rightly waits for "
        "the rest). Sent with the Content-Length of the body it carries",
    ),
    "040_compat": Policy(
        "skip",
        "needs gunicorn header_map=dangerous (maps Transfer_Encoding to TRANSFER_ENCODING); "
        "unyoke drops header names with '_' (issue 2 part 4), checked by valid/040",
    ),
    "compat_obs_fold": Policy(
        "reject",
        "needs gunicorn permit_obsolete_folding=True; obs-fold is a 400 in unyoke "
        "(RFC 9112 §5.2, issue 2 part 2)",
    ),
    "compat_obs_fold_huge": Policy("reject", "as compat_obs_fold"),
    "pp_01": Policy(
        "reject",
        "needs gunicorn proxy_protocol=True; without PROXY protocol support the PROXY line "
        "is not a request line",
    ),
    "pp_02": Policy("reject", "as pp_01"),
}

INVALID_POLICY: Dict[str, Policy] = {
    "010": Policy(
        "skip", "needs gunicorn limit_request_field_size=10 (no unyoke equivalent per field)"
    ),
    "011": Policy("skip", "needs gunicorn limit_request_fields=2"),
    "012": Policy(
        "skip", "needs gunicorn limit_request_field_size=98 (no unyoke equivalent per field)"
    ),
    "013": Policy(
        "reject",
        "gunicorn tests a field-size limit with permit_obsolete_folding=True; unyoke "
        "rejects the obs-fold itself",
    ),
    "019": Policy(
        "skip",
        "needs gunicorn forwarded_allow_ips='*': the conflict between X-Forwarded-Proto and "
        "X-Forwarded-Ssl is gunicorn's scheme-header check; unyoke does not interpret them",
    ),
    "040": Policy(
        "skip",
        "needs gunicorn header_map=refuse; unyoke drops header names with '_' instead "
        "(issue 2 part 4), which valid/040 checks",
    ),
    "chunked_07": Policy("skip", "as invalid/040: needs gunicorn header_map=refuse"),
    "pp_01": Policy(
        "reject", "needs gunicorn proxy_protocol=True; the PROXY line is not a request line"
    ),
    "pp_02": Policy("reject", "as pp_01"),
}

# Incomplete on purpose (gunicorn expects NoMoreData): the client half-closes.
HALF_CLOSE = {"001"}

# Bad chunk-size lines after a valid head: a server that streams the body to the app
# calls the app before it meets the error, so only "no 2xx" can be required of them.
BODY_ERRORS = {"chunked_01", "chunked_09", "chunked_10", "chunked_11", "chunked_12", "chunked_13"}


# -- fetching and loading the vectors ----------------------------------------------------------


def fetch_vectors() -> Path:
    """Download gunicorn's sdist with pip (once) and keep its tests/requests."""
    if (CACHE_DIR / ".complete").exists():
        return CACHE_DIR
    CACHE_DIR.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=CACHE_DIR.parent) as tmp:
        download = Path(tmp) / "download"
        result = subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "download",
                "--no-binary",
                ":all:",
                "--no-deps",
                "--disable-pip-version-check",
                f"gunicorn=={GUNICORN_VERSION}",
                "-d",
                str(download),
            ],
            capture_output=True,
            text=True,
            timeout=600,
        )
        sdists = list(download.glob("gunicorn-*.tar.gz"))
        if result.returncode != 0 or not sdists:
            raise RuntimeError(
                f"pip download gunicorn=={GUNICORN_VERSION} failed ({result.returncode}):\n"
                f"{result.stdout[-2000:]}\n{result.stderr[-2000:]}"
            )
        staging = Path(tmp) / "requests"
        with tarfile.open(sdists[0]) as tar:
            for member in tar.getmembers():
                parts = Path(member.name).parts
                if (
                    member.isfile()
                    and len(parts) == 5
                    and parts[1:3] == ("tests", "requests")
                    and parts[3] in ("valid", "invalid")
                    and parts[4].endswith((".http", ".py"))
                ):
                    extracted = tar.extractfile(member)
                    assert extracted is not None
                    target = staging / parts[3] / parts[4]
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(extracted.read())
        if not list(staging.glob("valid/*.http")) or not list(staging.glob("invalid/*.http")):
            raise RuntimeError(f"gunicorn {GUNICORN_VERSION} sdist has no tests/requests")
        (staging / ".complete").write_text(GUNICORN_VERSION)
        if CACHE_DIR.exists():
            shutil.rmtree(CACHE_DIR)
        staging.rename(CACHE_DIR)
    return CACHE_DIR


def vector_names(kind: str) -> List[str]:
    return sorted(p.stem for p in (fetch_vectors() / kind).glob("*.http"))


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    for kind in ("valid", "invalid"):
        fixture = f"{kind}_vector"
        if fixture in metafunc.fixturenames:
            try:
                names = vector_names(kind)
            except Exception as exc:  # reported by the test itself, not as a collection crash
                metafunc.parametrize(
                    fixture, [f"download-failed: {exc}"[:4000]], ids=["download-failed"]
                )
            else:
                metafunc.parametrize(fixture, names)


def load_http(path: Path) -> bytes:
    """As gunicorn's tests/treq.py: newlines dropped, escapes turned into bytes."""
    data = path.read_bytes()
    data = data.replace(b"\n", b"").replace(b"\\r\\n", b"\r\n")
    data = data.replace(b"\\0", b"\000").replace(b"\\n", b"\n").replace(b"\\t", b"\t")
    if b"\\" in data:
        raise AssertionError(f"unexpected backslash in {path}")
    return data


class StubConfig:
    """Stands in for gunicorn.config.Config: records the settings a vector changes."""

    def __init__(self) -> None:
        self.changed: Dict[str, Any] = {}

    def set(self, name: str, value: Any) -> None:
        self.changed[name] = value


class _ErrorsModule(types.ModuleType):
    def __getattr__(self, name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (Exception,), {})


def split_request_uri(uri: str) -> urllib.parse.SplitResult:
    if uri.startswith("//"):  # as gunicorn.util.split_request_uri: an abs_path, not a netloc
        parts = urllib.parse.urlsplit("." + uri)
        return parts._replace(path=parts.path[1:])
    return urllib.parse.urlsplit(uri)


def uri(data: str) -> Dict[str, Any]:
    """gunicorn's tests/treq.py uri() helper."""
    parts = split_request_uri(data)
    return {
        "raw": data,
        "scheme": parts.scheme or "",
        "host": parts.netloc.rsplit(":", 1)[0] or None,
        "path": parts.path or "",
        "query": parts.query or "",
        "fragment": parts.fragment or "",
    }


def load_expectation(path: Path) -> Dict[str, Any]:
    """Execute a vector's .py with gunicorn's modules stubbed out."""
    config_module = types.ModuleType("gunicorn.config")
    config_module.Config = StubConfig  # type: ignore[attr-defined]
    stubs = {
        "gunicorn": types.ModuleType("gunicorn"),
        "gunicorn.config": config_module,
        "gunicorn.http": types.ModuleType("gunicorn.http"),
        "gunicorn.http.errors": _ErrorsModule("gunicorn.http.errors"),
    }
    saved = {name: sys.modules.get(name) for name in stubs}
    sys.modules.update(stubs)
    try:
        namespace: Dict[str, Any] = {"__name__": "__config__", "uri": uri, "cfg": StubConfig()}
        exec(compile(path.read_text("utf-8"), str(path), "exec"), namespace)
    finally:
        for name, module in saved.items():
            if module is None:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    return namespace


def changed_settings(namespace: Dict[str, Any]) -> Dict[str, Any]:
    cfg = namespace.get("cfg")
    return dict(cfg.changed) if isinstance(cfg, StubConfig) else {}


# -- adapting a valid vector: RFC 9112 §3.2 requires Host on HTTP/1.1 ---------------------------


def _message_end(data: bytes, start: int) -> Tuple[int, int, bytes]:
    """(end of head, end of message, head) of the request starting at `start`."""
    head_end = data.index(b"\r\n\r\n", start) + 4
    head = data[start:head_end]
    lines = head[:-4].split(b"\r\n")
    fields = {}
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        fields.setdefault(name.strip().lower(), []).append(value.strip().lower())
    if b"chunked" in b",".join(fields.get(b"transfer-encoding", [])):
        pos = head_end
        while True:
            line_end = data.index(b"\r\n", pos)
            size = int(data[pos:line_end].split(b";")[0].strip(), 16)
            pos = line_end + 2
            if size == 0:
                while True:  # trailer section
                    line_end = data.index(b"\r\n", pos)
                    empty = line_end == pos
                    pos = line_end + 2
                    if empty:
                        return head_end, pos, head
            pos += size + 2
    length = int(fields.get(b"content-length", [b"0"])[0])
    return head_end, head_end + length, head


def add_missing_host(data: bytes) -> Tuple[bytes, bool]:
    """Insert `Host: localhost` into every HTTP/1.1 request of `data` that has none."""
    out = b""
    pos = 0
    injected = False
    while pos < len(data):
        head_end = data.find(b"\r\n\r\n", pos) + 4
        if head_end < 4:
            break
        head = data[pos:head_end]
        request_line, _, rest = head.partition(b"\r\n")
        names = [line.partition(b":")[0].strip().lower() for line in rest.split(b"\r\n")]
        if request_line.endswith(b"HTTP/1.1") and b"host" not in names:
            head = request_line + b"\r\nHost: localhost\r\n" + rest
            injected = True
        out += head
        try:
            end = _message_end(data, pos)[1]
        except (ValueError, IndexError):  # an incomplete body: the rest goes as it is
            end = len(data)
        out += data[head_end:end]
        pos = end
    return out + data[pos:], injected


def fix_content_length(data: bytes, request: Dict[str, Any]) -> bytes:
    """Make a single-request vector's Content-Length match the body it carries."""
    head, _, body = data.partition(b"\r\n\r\n")
    lines = [
        b"Content-Length: %d" % len(body) if line.lower().startswith(b"content-length:") else line
        for line in head.split(b"\r\n")
    ]
    request["headers"] = [
        (name, str(len(body)) if name.upper() == "CONTENT-LENGTH" else value)
        for name, value in request["headers"]
    ]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


def complete_chunked(data: bytes, request: Dict[str, Any]) -> bytes:
    """End a chunked body whose last chunk lacks the CRLF that closes the trailer section."""
    assert data.endswith(b"\r\n0\r\n") or data.endswith(b"\r\n000\r\n"), data[-20:]
    return data + b"\r\n"


# Vectors whose bytes stop before the request they state is complete: gunicorn's parser
# test ends at the end of the data, but over a socket a server rightly waits for the
# rest. They are sent completed (see the reasons in VALID_POLICY).
TRUNCATED = {"099": fix_content_length, "029": complete_chunked, "030": complete_chunked}


# -- sending and checking --------------------------------------------------------------------------


def expected_headers(request: Dict[str, Any]) -> Dict[str, str]:
    expected: Dict[str, str] = {}
    for name, value in request["headers"]:
        if "_" in name:  # dropped by the server (PEP 3333 collision rule)
            continue
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        if key in expected:
            expected[key] += ("; " if key == "HTTP_COOKIE" else ", ") + value
        else:
            expected[key] = value
    return expected


def check_echo(response: HTTPResponse, request: Dict[str, Any], name: str) -> None:
    assert response.status == 200, f"{name}: {response!r}"
    payload = response.json()
    environ = payload["environ"]
    target = request["uri"]
    path_info = urllib.parse.unquote_to_bytes(target["path"].encode("latin-1")).decode("latin-1")
    expected = {
        "REQUEST_METHOD": request["method"],
        "PATH_INFO": path_info,
        "QUERY_STRING": target["query"],
        "RAW_URI": target["raw"],
        "SERVER_PROTOCOL": "HTTP/{}.{}".format(*request["version"]),
    }
    actual = {key: environ.get(key, "") for key in expected}
    assert actual == expected, name
    want_headers = expected_headers(request)
    got_headers = {
        key: value
        for key, value in environ.items()
        if (key.startswith("HTTP_") or key in ("CONTENT_TYPE", "CONTENT_LENGTH")) and value != ""
    }
    # A server that decodes the chunked framing may drop the Transfer-Encoding it consumed.
    if "HTTP_TRANSFER_ENCODING" not in got_headers:
        want_headers.pop("HTTP_TRANSFER_ENCODING", None)
    assert got_headers == want_headers, name
    body = request["body"]
    if isinstance(body, str):
        body = body.encode("latin-1")
    assert payload["body"].encode("latin-1") == body, name


def expects_close(request: Dict[str, Any]) -> bool:
    tokens = [
        token.strip().lower()
        for name, value in request["headers"]
        if name.upper() == "CONNECTION"
        for token in value.split(",")
    ]
    if "close" in tokens:
        return True
    return tuple(request["version"]) == (1, 0) and "keep-alive" not in tokens


def read_all_responses(conn: Any) -> Tuple[List[HTTPResponse], bool]:
    """Responses until the server closes; (responses, closed within the timeouts)."""
    responses: List[HTTPResponse] = []
    while True:
        try:
            responses.append(conn.read_final_response()[1])
        except ConnectionClosed:
            return responses, True
        except IncompleteResponse as exc:
            responses.append(exc.response)
            return responses, True
        except ProtocolError:
            return responses, True
        except TimeoutError:
            return responses, False


def assert_rejected(
    server: ServerProcess,
    data: bytes,
    name: str,
    half_close: bool = False,
    reaches_app: bool = False,
) -> None:
    calls_before = server.app_calls()
    with server.connect(timeout=5.0) as conn:
        conn.try_send(data)
        if half_close:
            conn.shutdown_write()
        responses, closed = read_all_responses(conn)
    statuses = [r.status for r in responses]
    assert not any(200 <= s < 300 for s in statuses), f"{name}: accepted, responses {responses!r}"
    assert all(s >= 400 for s in statuses), f"{name}: {statuses}"
    assert closed, f"{name}: connection neither answered with an error and closed, nor closed"
    if reaches_app:
        return
    assert server.app_calls() == calls_before, (
        f"{name} reached the app: {server.state_lines('calls')[calls_before:]}"
    )


@pytest.fixture(scope="module")
def default_server(module_servers) -> ServerProcess:
    return module_servers.start(APP)


@pytest.fixture(scope="module")
def limited_server(module_servers) -> ServerProcess:
    return module_servers.start(APP, *GUNICORN_LIMITS)


def test_valid_vector(default_server, valid_vector):
    name = valid_vector
    if name.startswith("download-failed"):
        pytest.fail(name)
    directory = fetch_vectors() / "valid"
    data = load_http(directory / f"{name}.http")
    namespace = load_expectation(directory / f"{name}.py")
    settings = changed_settings(namespace)
    policy = VALID_POLICY.get(name, Policy("as_gunicorn", ""))
    if settings and name not in VALID_POLICY:
        pytest.fail(f"{name} needs gunicorn settings {settings} and has no entry in VALID_POLICY")
    if policy.kind == "skip":
        pytest.skip(policy.reason)
    if policy.kind == "reject":
        assert_rejected(default_server, data, name)
        return

    expected = namespace["request"]
    requests = expected if isinstance(expected, list) else [expected]
    if name in TRUNCATED:
        data = TRUNCATED[name](data, requests[0])
    data, injected = add_missing_host(data)
    if injected:
        for request in requests:
            if tuple(request["version"]) == (1, 1) and not any(
                h.upper() == "HOST" for h, _ in request["headers"]
            ):
                request["headers"] = [*request["headers"], ("HOST", "localhost")]

    calls_before = default_server.app_calls()
    with default_server.connect(timeout=10.0) as conn:
        conn.send(data)
        try:
            _, first = conn.read_final_response()
        except ConnectionClosed:
            pytest.fail(f"{name}: closed without a response")
        if policy.kind == "either" and first.status in (400, 501):
            assert conn.wait_closed(5.0), f"{name}: rejected with {first.status} but left open"
            assert default_server.app_calls() == calls_before, (
                f"{name}: rejected after reaching the app"
            )
            return
        responses = [first]
        for _ in requests[1:]:
            responses.append(conn.read_final_response()[1])
        for response, request in zip(responses, requests, strict=True):
            check_echo(response, request, name)
        if expects_close(requests[-1]):
            assert conn.wait_closed(5.0), f"{name}: connection not closed; extra {conn.buf[:200]!r}"
        else:
            # A sentinel request proves that no extra response was produced and the
            # connection is still in sync.
            sentinel = f"/sentinel-{name}"
            conn.send(f"GET {sentinel} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            _, last = conn.read_final_response()
            assert last.status == 200 and last.json()["environ"]["PATH_INFO"] == sentinel, last
    # Exactly the stated requests reached the app (and the sentinel, when sent); this
    # also proves the call log that assert_rejected() relies on is being written.
    sentinels = 0 if expects_close(requests[-1]) else 1
    assert default_server.app_calls() - calls_before == len(requests) + sentinels


def test_invalid_vector(limited_server, invalid_vector):
    name = invalid_vector
    if name.startswith("download-failed"):
        pytest.fail(name)
    directory = fetch_vectors() / "invalid"
    data = load_http(directory / f"{name}.http")
    namespace = load_expectation(directory / f"{name}.py")
    settings = changed_settings(namespace)
    if settings and name not in INVALID_POLICY:
        pytest.fail(f"{name} needs gunicorn settings {settings} and has no entry in INVALID_POLICY")
    policy = INVALID_POLICY.get(name, Policy("reject", ""))
    if policy.kind == "skip":
        pytest.skip(policy.reason)
    assert isinstance(namespace["request"], type), f"{name}: expected an error class"
    assert_rejected(
        limited_server, data, name, half_close=name in HALF_CLOSE, reaches_app=name in BODY_ERRORS
    )


def test_vector_policies_name_existing_vectors():
    """A policy for a vector that does not exist is a typo that silently tests nothing."""
    valid = set(vector_names("valid"))
    invalid = set(vector_names("invalid"))
    assert set(VALID_POLICY) <= valid, set(VALID_POLICY) - valid
    assert set(INVALID_POLICY) <= invalid, set(INVALID_POLICY) - invalid


def test_add_missing_host_keeps_bodies_intact():
    data = (
        b"POST /a HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\nX: y\r\n\r\n"
        b"GET /b HTTP/1.0\r\nContent-Length: 24\r\n\r\nGET /second HTTP/1.1\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
    out, injected = add_missing_host(data)
    assert injected
    assert out == (
        b"POST /a HTTP/1.1\r\nHost: localhost\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nabc\r\n0\r\nX: y\r\n\r\n"
        b"GET /b HTTP/1.0\r\nContent-Length: 24\r\n\r\nGET /second HTTP/1.1\r\n\r\n"
        b"GET /c HTTP/1.1\r\nHost: h\r\n\r\n"
    )
