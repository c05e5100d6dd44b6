"""unyoke behind a real nginx (Debian's package, `make deps` installs it as root).

The test starts nginx on 127.0.0.1 with a generated configuration in a temporary directory
(its own pid, logs and temp paths; `daemon off`, `user root`), proxying to unyoke over
keep-alive upstream connections, and stops it by its PID.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Any, Dict, Iterator, Optional

import pytest

from tests.e2e.serverproc import free_port
from tests.e2e.test_deployment import write_deploy_app
from tests.e2e.test_workers import children, wait_workers

pytestmark = pytest.mark.timeout(180)

NGINX = shutil.which("nginx") or next(
    (p for p in ("/usr/sbin/nginx", "/usr/local/sbin/nginx") if os.path.exists(p)), None
)
STREAM_MODULE = "/usr/lib/nginx/modules/ngx_stream_module.so"

CONFIG = """
user root;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
{load_stream}
events {{ worker_connections 1024; }}
http {{
    access_log {prefix}/access.log;
    client_body_temp_path {prefix}/body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    client_max_body_size 200m;
    upstream unyoke {{
        server 127.0.0.1:{upstream};
        keepalive 16;
    }}
    server {{
        listen 127.0.0.1:{port};
        location / {{
            proxy_pass http://unyoke;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header X-Forwarded-Proto https;
            proxy_request_buffering off;
            proxy_buffering off;
        }}
    }}
}}
{stream}
"""

STREAM = """
stream {{
    server {{
        listen 127.0.0.1:{port};
        proxy_pass 127.0.0.1:{upstream};
        proxy_protocol on;
    }}
}}
"""


class Nginx:
    def __init__(self, prefix: Path, upstream: int, proxy_protocol_upstream: Optional[int]):
        self.prefix = prefix
        self.port = free_port()
        self.stream_port = free_port() if proxy_protocol_upstream else None
        stream = ""
        load_stream = ""
        if proxy_protocol_upstream:
            stream = STREAM.format(port=self.stream_port, upstream=proxy_protocol_upstream)
            if os.path.exists(STREAM_MODULE):
                load_stream = f"load_module {STREAM_MODULE};"
        self.conf = prefix / "nginx.conf"
        self.conf.write_text(
            CONFIG.format(
                prefix=prefix,
                port=self.port,
                upstream=upstream,
                stream=stream,
                load_stream=load_stream,
            )
        )
        assert NGINX is not None
        self.process = subprocess.Popen(
            [NGINX, "-c", str(self.conf), "-p", str(prefix), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        deadline = time.monotonic() + 15
        while not (prefix / "nginx.pid").exists():
            if self.process.poll() is not None or time.monotonic() > deadline:
                err = self.process.stderr.read().decode() if self.process.stderr else ""
                self.stop()
                raise AssertionError(f"nginx did not start: {err}")
            time.sleep(0.05)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def stop(self) -> None:
        if self.process.poll() is None:
            os.kill(self.process.pid, signal.SIGQUIT)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.kill(self.process.pid, signal.SIGKILL)
                self.process.wait()


def stream_module_available() -> bool:
    if NGINX is None:
        return False
    out = subprocess.run([NGINX, "-V"], capture_output=True, text=True)
    return "--with-stream " in out.stderr + " " or os.path.exists(STREAM_MODULE)


@pytest.fixture
def nginx_factory(tmp_path: Path) -> Iterator[Any]:
    if NGINX is None:
        pytest.skip("nginx is not installed (make deps installs it when run as root)")
    if os.geteuid() != 0:
        pytest.skip("the nginx test runs nginx as root (user root;)")
    started = []

    def make(upstream: int, proxy_protocol_upstream: Optional[int] = None) -> Nginx:
        prefix = tmp_path / f"nginx{len(started)}"
        prefix.mkdir()
        server = Nginx(prefix, upstream, proxy_protocol_upstream)
        started.append(server)
        return server

    yield make
    for server in started:
        server.stop()


def curl(*args: str) -> bytes:
    out = subprocess.run(["curl", "-sS", "--fail", *args], capture_output=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout


def start_unyoke(servers, tmp_path: Path, *args: str) -> Any:
    env = write_deploy_app(tmp_path)
    return servers.start("deployapp:app", "--no-access-log", *args, env=env)


def test_proxied_requests_keepalive_forwarded_upload_download(
    servers, nginx_factory, tmp_path: Path
) -> None:
    unyoke = start_unyoke(servers, tmp_path, "--forwarded-allow-ips", "127.0.0.0/8")
    nginx = nginx_factory(unyoke.port)
    got: Dict[str, Any] = json.loads(curl("-H", "X-Forwarded-For: 203.0.113.9", nginx.url + "/"))
    assert got["REMOTE_ADDR"] == "203.0.113.9"
    assert got["wsgi.url_scheme"] == "https"
    # Keep-alive upstream: many requests through nginx, few connections to unyoke.
    for _ in range(50):
        curl(nginx.url + "/")
    # A large upload, streamed through.
    upload = tmp_path / "upload.bin"
    data = os.urandom(1 << 20) * 50
    upload.write_bytes(data)
    result = json.loads(curl("--data-binary", f"@{upload}", nginx.url + "/upload"))
    assert result == {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
    # A streamed download.
    body = curl(nginx.url + "/download?64")
    assert len(body) == 64 << 20
    assert body[(5 << 20) + 3] == 5


def test_untrusted_proxy_headers_are_ignored_behind_nginx(
    servers, nginx_factory, tmp_path: Path
) -> None:
    unyoke = start_unyoke(servers, tmp_path)  # trusts nobody's headers
    nginx = nginx_factory(unyoke.port)
    got = json.loads(curl("-H", "X-Forwarded-For: 203.0.113.9", nginx.url + "/"))
    assert (got["REMOTE_ADDR"], got["wsgi.url_scheme"]) == ("127.0.0.1", "http")


def test_proxy_protocol_from_nginx_stream(servers, nginx_factory, tmp_path: Path) -> None:
    if not stream_module_available():
        pytest.skip("nginx has no stream module (Debian: libnginx-mod-stream)")
    plain = start_unyoke(servers, tmp_path)
    with_pp = start_unyoke(servers, tmp_path, "--proxy-protocol")
    nginx = nginx_factory(plain.port, proxy_protocol_upstream=with_pp.port)
    got = json.loads(curl(f"http://127.0.0.1:{nginx.stream_port}/"))
    assert got["REMOTE_ADDR"] == "127.0.0.1"
    # The header carries nginx's client's address, which is the test's own here; a request
    # without the header (straight to unyoke) is refused.
    out = subprocess.run(["curl", "-sS", with_pp.url + "/"], capture_output=True, timeout=20)
    assert out.returncode != 0


def run_wrk(url: str, seconds: int, result: Dict[str, str]) -> None:
    out = subprocess.run(
        ["wrk", "-t1", "-c16", f"-d{seconds}s", url], capture_output=True, text=True
    )
    result["output"] = out.stdout + out.stderr


def test_rolling_reload_under_wrk_load(servers, nginx_factory, tmp_path: Path) -> None:
    if shutil.which("wrk") is None:
        pytest.skip("wrk is not installed")
    unyoke = start_unyoke(servers, tmp_path, "--workers", "2")
    old = set(wait_workers(unyoke, 2))
    nginx = nginx_factory(unyoke.port)
    result: Dict[str, str] = {}
    load = threading.Thread(target=run_wrk, args=(nginx.url + "/", 5, result))
    load.start()
    time.sleep(1.5)
    os.kill(unyoke.pid, signal.SIGHUP)
    load.join(timeout=60)
    output = result["output"]
    sent = re.search(r"(\d+) requests in", output)
    assert sent, output
    non_2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", output)
    errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", output
    )
    failed = int(non_2xx.group(1)) if non_2xx else 0
    failed += sum(int(n) for n in errors.groups()) if errors else 0
    print(f"reload under wrk load behind nginx: {sent.group(1)} sent, {failed} failed")
    assert failed == 0, output
    new = set(children(unyoke.pid))
    assert len(new) == 2 and not new & old, unyoke.log()[-2000:]
