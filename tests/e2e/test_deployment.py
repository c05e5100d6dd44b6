"""Deployment features end to end: TLS, trusted proxy headers, the PROXY protocol, sockets
handed over by systemd (LISTEN_FDS) — real processes, real clients (curl, ssl, raw sockets).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Tuple

import pytest

from tests.e2e.serverproc import REPO_ROOT, free_port, subprocess_env

pytestmark = pytest.mark.timeout(120)

#: The app of these tests (and of test_nginx.py): "/" answers the environ keys a deployment
#: changes as JSON; "/upload" the size and SHA-256 of the body; "/download?N" streams N MiB.
DEPLOY_APP = """
import hashlib, json, os

def app(environ, start_response):
    path = environ["PATH_INFO"]
    if path == "/upload":
        digest, size, read = hashlib.sha256(), 0, environ["wsgi.input"].read
        while True:
            chunk = read(1 << 16)
            if not chunk:
                break
            digest.update(chunk)
            size += len(chunk)
        body = json.dumps({"size": size, "sha256": digest.hexdigest()}).encode()
    elif path == "/download":
        mib = int(environ.get("QUERY_STRING") or 1)
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return (bytes([i % 251]) * (1 << 20) for i in range(mib))
    else:
        keys = ("REMOTE_ADDR", "wsgi.url_scheme", "HTTP_X_FORWARDED_FOR", "HTTPS", "SERVER_PORT")
        body = json.dumps({k: environ.get(k) for k in keys} | {"pid": os.getpid()}).encode()
    start_response("200 OK", [("Content-Type", "application/json"),
                              ("Content-Length", str(len(body)))])
    return [body]
"""


def write_deploy_app(directory: Path) -> Dict[str, str]:
    """Write the app; the environment that makes `deployapp:app` importable."""
    (directory / "deployapp.py").write_text(DEPLOY_APP)
    return {"PYTHONPATH": os.pathsep.join([str(directory), str(REPO_ROOT)])}


def start(servers, tmp_path: Path, *args: str) -> Any:
    env = write_deploy_app(tmp_path)
    return servers.start("deployapp:app", "--no-access-log", *args, env=env)


def raw_get(address: Tuple[str, int], head: bytes = b"", prefix: bytes = b"") -> Dict[str, Any]:
    """`prefix` (a PROXY header) then a GET / with extra header lines `head`; the JSON."""
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(
            prefix + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n" + head + b"\r\n"
        )
        data = b""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                break
            data += chunk
    head_part, _, body = data.partition(b"\r\n\r\n")
    assert head_part.startswith(b"HTTP/1.1 200"), data[:200]
    return dict(json.loads(body))


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def certificate(tmp_path_factory: pytest.TempPathFactory) -> Tuple[Path, Path]:
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make a test certificate")
    directory = tmp_path_factory.mktemp("tls")
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
         "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1"],
        check=True,
        capture_output=True,
    )  # fmt: skip
    return cert, key


def openssl(*args: str) -> None:
    subprocess.run(["openssl", *args], check=True, capture_output=True)


def test_tls_client_certificates_with_ca_certs(servers, tmp_path: Path) -> None:
    """--ca-certs: a client with a certificate signed by that CA is served; one without a
    certificate, or with one from another CA, fails its handshake; the server goes on."""
    if shutil.which("openssl") is None:
        pytest.skip("the openssl command is needed to make test certificates")
    d = tmp_path
    for ca in ("ca", "otherca"):
        openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                "-keyout", str(d / f"{ca}.key"), "-out", str(d / f"{ca}.pem"),
                "-subj", f"/CN=test {ca}")  # fmt: skip
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-keyout", str(d / "server.key"), "-out", str(d / "server.pem"),
            "-subj", "/CN=localhost",
            "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1")  # fmt: skip
    # An X.509 v3 end-entity certificate for client authentication (webpki refuses v1).
    (d / "client.ext").write_text("basicConstraints=CA:FALSE\nextendedKeyUsage=clientAuth\n")
    for client, ca in (("client", "ca"), ("stranger", "otherca")):
        openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", str(d / f"{client}.key"),
                "-out", str(d / f"{client}.csr"), "-subj", f"/CN={client}")  # fmt: skip
        openssl("x509", "-req", "-in", str(d / f"{client}.csr"), "-CA", str(d / f"{ca}.pem"),
                "-CAkey", str(d / f"{ca}.key"), "-CAcreateserial", "-days", "2",
                "-extfile", str(d / "client.ext"), "-out", str(d / f"{client}.pem"))  # fmt: skip
    server = start(servers, tmp_path, "--certfile", str(d / "server.pem"),
                   "--keyfile", str(d / "server.key"), "--ca-certs", str(d / "ca.pem"))  # fmt: skip

    def get(client: str | None) -> bytes:
        context = ssl.create_default_context(cafile=str(d / "server.pem"))
        if client:
            context.load_cert_chain(str(d / f"{client}.pem"), str(d / f"{client}.key"))
        with socket.create_connection(server.address, timeout=10) as raw:
            with context.wrap_socket(raw, server_hostname="localhost") as tls:
                tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                data = b""
                while chunk := tls.recv(65536):
                    data += chunk
                return data

    assert get("client").startswith(b"HTTP/1.1 200")
    for refused in (None, "stranger"):
        # TLS 1.3 reports a refused client certificate on the first read, not the handshake.
        with pytest.raises((ssl.SSLError, ConnectionResetError, BrokenPipeError)):
            data = get(refused)
            assert not data, "served without an acceptable client certificate"
            raise ConnectionResetError("closed without a response")
    assert get("client").startswith(b"HTTP/1.1 200")


def test_tls_with_curl_and_python_ssl(servers, tmp_path: Path, certificate) -> None:
    cert, key = certificate
    server = start(servers, tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    url = f"https://127.0.0.1:{server.port}/"
    if shutil.which("curl"):
        out = subprocess.run(
            ["curl", "-sS", "--cacert", str(cert), url], capture_output=True, timeout=20
        )
        assert out.returncode == 0, out.stderr
        assert json.loads(out.stdout)["wsgi.url_scheme"] == "https"
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(server.address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    assert data.startswith(b"HTTP/1.1 200")
    assert json.loads(data.partition(b"\r\n\r\n")[2])["wsgi.url_scheme"] == "https"
    # A client that does not trust the certificate fails its handshake; the server goes on.
    with socket.create_connection(server.address, timeout=10) as raw:
        with pytest.raises(ssl.SSLCertVerificationError):
            ssl.create_default_context().wrap_socket(raw, server_hostname="localhost")


def test_large_upload_over_tls_arrives_intact(servers, tmp_path: Path, certificate) -> None:
    """A 3 MiB body over TLS, read by the app in 64 KiB pieces (the server fills them
    straight from the TLS stream), arrives intact; the request sent right behind it on
    the same connection is answered next."""
    cert, key = certificate
    server = start(servers, tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    body = os.urandom(3 << 20)
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(server.address, timeout=20) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(
                b"POST /upload HTTP/1.1\r\nHost: localhost\r\nContent-Length: %d\r\n\r\n"
                % len(body)
                + body
                + b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n"
            )
            data = b""
            while chunk := tls.recv(65536):
                data += chunk
    responses = data.split(b"HTTP/1.1 200 OK\r\n")
    assert len(responses) == 3 and responses[0] == b"", data[:300]
    uploaded = json.loads(responses[1].partition(b"\r\n\r\n")[2])
    assert uploaded == {"size": len(body), "sha256": hashlib.sha256(body).hexdigest()}
    assert json.loads(responses[2].partition(b"\r\n\r\n")[2])["wsgi.url_scheme"] == "https"


def test_aborted_handshakes_cost_nothing(servers, tmp_path: Path, certificate) -> None:
    cert, key = certificate
    server = start(servers, tmp_path, "--certfile", str(cert), "--keyfile", str(key))
    for junk in (b"", b"\x16\x03\x01\x00", b"GET / HTTP/1.1\r\n\r\n", os.urandom(300)):
        for _ in range(20):
            with socket.create_connection(server.address, timeout=5) as sock:
                if junk:
                    sock.sendall(junk)
    context = ssl.create_default_context(cafile=str(cert))
    with socket.create_connection(server.address, timeout=10) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as tls:
            tls.sendall(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
            assert tls.recv(12) == b"HTTP/1.1 200"
    assert server.alive()


@pytest.mark.parametrize("problem", ["missing", "garbage", "key-mismatch"])
def test_bad_certificate_is_a_one_line_error(tmp_path: Path, certificate, problem: str) -> None:
    cert, key = certificate
    if problem == "missing":
        cert = tmp_path / "nope.pem"
    elif problem == "garbage":
        cert = tmp_path / "garbage.pem"
        cert.write_text("-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n")
    else:
        other = tmp_path / "other.pem"
        subprocess.run(
            ["openssl", "genrsa", "-out", str(other), "2048"], check=True, capture_output=True
        )
        key = other
    env = subprocess_env(write_deploy_app(tmp_path))
    out = subprocess.run(
        [sys.executable, "-m", "unyoke", "deployapp:app", "--bind", f"127.0.0.1:{free_port()}",
         "--certfile", str(cert), "--keyfile", str(key)],
        cwd=str(REPO_ROOT), env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert out.returncode in (1, 2), out.stderr
    errors = [line for line in out.stderr.splitlines() if "error" in line]
    assert len(errors) == 1, out.stderr
    assert "Traceback" not in out.stderr and "panicked" not in out.stderr


# -- proxies --------------------------------------------------------------------------------


def test_forwarded_headers_trusted_only_from_allowed_networks(servers, tmp_path: Path) -> None:
    trusting = start(servers, tmp_path, "--forwarded-allow-ips", "127.0.0.0/8")
    distrusting = start(servers, tmp_path, "--forwarded-allow-ips", "10.0.0.0/8")
    xff = b"X-Forwarded-For: 203.0.113.7, 127.0.0.1\r\nX-Forwarded-Proto: https\r\n"
    forwarded = b'Forwarded: for="[2001:db8::5]:4711";proto=https, for=127.0.0.1\r\n'
    got = raw_get(trusting.address, xff)
    assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"]) == ("203.0.113.7", "https")
    got = raw_get(trusting.address, forwarded)
    assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"]) == ("2001:db8::5", "https")
    for head in (xff, forwarded):
        got = raw_get(distrusting.address, head)
        assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"]) == ("127.0.0.1", "http")
    plain = start(servers, tmp_path)  # the default trusts nobody
    got = raw_get(plain.address, xff)
    assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"]) == ("127.0.0.1", "http")


def proxy_v2(source: str, source_port: int, dest: str, dest_port: int) -> bytes:
    signature = b"\r\n\r\n\x00\r\nQUIT\n"
    if ":" in source:
        addresses = socket.inet_pton(socket.AF_INET6, source) + socket.inet_pton(
            socket.AF_INET6, dest
        )
        family = 0x21
    else:
        addresses = socket.inet_aton(source) + socket.inet_aton(dest)
        family = 0x11
    payload = addresses + source_port.to_bytes(2, "big") + dest_port.to_bytes(2, "big")
    return signature + b"\x21" + bytes([family]) + len(payload).to_bytes(2, "big") + payload


def test_proxy_protocol_v1_and_v2(servers, tmp_path: Path) -> None:
    server = start(servers, tmp_path, "--proxy-protocol")
    v1 = b"PROXY TCP4 198.51.100.9 127.0.0.1 40000 8000\r\n"
    assert raw_get(server.address, prefix=v1)["REMOTE_ADDR"] == "198.51.100.9"
    v1_six = b"PROXY TCP6 2001:db8::9 ::1 40000 8000\r\n"
    assert raw_get(server.address, prefix=v1_six)["REMOTE_ADDR"] == "2001:db8::9"
    v2 = proxy_v2("192.0.2.44", 50000, "127.0.0.1", 8000)
    assert raw_get(server.address, prefix=v2)["REMOTE_ADDR"] == "192.0.2.44"
    v2_six = proxy_v2("2001:db8::44", 50000, "::1", 8000)
    assert raw_get(server.address, prefix=v2_six)["REMOTE_ADDR"] == "2001:db8::44"
    # Without a PROXY header, the connection is closed and nothing reaches the app.
    with socket.create_connection(server.address, timeout=10) as sock:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    assert b"200 OK" not in data


# -- socket activation -----------------------------------------------------------------------

#: Run as `python -c EXEC_AS_SYSTEMD FD COMMAND...`: what systemd does before it starts a
#: socket-activated service: the socket at fd 3, LISTEN_PID the pid of the service.
EXEC_AS_SYSTEMD = (
    "import os, sys; os.dup2(int(sys.argv[1]), 3); os.environ['LISTEN_PID'] = str(os.getpid()); "
    "os.execv(sys.argv[2], sys.argv[2:])"
)


def systemd_like(fd: int, command: List[str]) -> List[str]:
    return [sys.executable, "-c", EXEC_AS_SYSTEMD, str(fd), *command]


def test_systemd_socket_activation(tmp_path: Path) -> None:
    """The test plays systemd: it binds, puts the socket at fd 3, sets LISTEN_FDS=1 and
    LISTEN_PID to the server's pid (with a shell that execs it), and connects at once."""
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    env = subprocess_env(write_deploy_app(tmp_path))
    env["LISTEN_FDS"] = "1"
    fd = listening.fileno()
    command = [sys.executable, "-m", "unyoke", "deployapp:app", "--bind", "fd://3"]
    log_path = tmp_path / "server.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            systemd_like(fd, command),
            cwd=str(REPO_ROOT), env=env, pass_fds=(fd,), stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        # Connections made before the server is up wait in the socket's backlog: none lost.
        got = raw_get(("127.0.0.1", port))
        assert got["SERVER_PORT"] == str(port)
        assert raw_get(("127.0.0.1", port))["pid"] == process.pid
    finally:
        listening.close()
        process.terminate()
        assert process.wait(timeout=20) == 0, log_path.read_text()
    text = log_path.read_text()
    assert "fd://3" in text or f"127.0.0.1:{port}" in text, text


def test_listen_fds_without_bind(tmp_path: Path) -> None:
    """With LISTEN_FDS for this process and no --bind, the passed sockets are served."""
    listening = socket.create_server(("127.0.0.1", 0))
    port = listening.getsockname()[1]
    env = subprocess_env(write_deploy_app(tmp_path))
    env["LISTEN_FDS"] = "1"
    fd = listening.fileno()
    command = [sys.executable, "-m", "unyoke", "deployapp:app", "--workers", "2"]
    process = subprocess.Popen(
        systemd_like(fd, command),
        cwd=str(REPO_ROOT), env=env, pass_fds=(fd,),
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        pids = set()
        deadline = time.monotonic() + 20
        while len(pids) < 2 and time.monotonic() < deadline:
            pids.add(raw_get(("127.0.0.1", port))["pid"])
        assert len(pids) == 2 and process.pid not in pids
    finally:
        listening.close()
        process.terminate()
        assert process.wait(timeout=20) == 0
