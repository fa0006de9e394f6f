"""Debian's nginx as a rate-limiting reverse proxy in front of the sandbox, on 127.0.0.1 only.

Used by tests/test_pacing_nginx.py and benchmarks/bench_pacing.py: `limit_req` is a limiter the
runner was not written against, and nginx's access log says what the server side answered.

    with Sandbox(...) as sb, Nginx(sb.port, rate_rps=10, burst=5, retry_after=True) as proxy:
        ...send to proxy.endpoint...
        proxy.statuses()  # Counter({'200': 150, '429': 4})

nginx runs in the foreground with its own prefix and configuration in a temporary folder
(`nginx -p DIR -c DIR/nginx.conf -g 'daemon off;'`), and is stopped gracefully on exit.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections import Counter
from pathlib import Path

from batch_runner.sandbox import V1_PATH
from tests.helpers import free_port


def nginx_binary() -> str | None:
    """nginx's path, or None. Debian puts it in /usr/sbin, which a user's PATH may lack."""
    return shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin:/sbin")


class Nginx:
    """nginx `limit_req` (one bucket per x-api-key, as the real API limits per key) in front of
    127.0.0.1:`upstream_port`. Over the limit it answers 429, with `Retry-After: 1` if
    `retry_after`, else a bare 429."""

    def __init__(self, upstream_port: int, rate_rps: float, burst: int = 5, retry_after: bool = True):
        binary = nginx_binary()
        if binary is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light)")
        self.dir = d = Path(tempfile.mkdtemp(prefix="nginx-"))
        os.chmod(d, 0o711)  # workers run as nobody when the master is root: let them reach tmp/
        (d / "tmp").mkdir()
        os.chmod(d / "tmp", 0o777)
        self.port = free_port()
        per_minute = rate_rps * 60
        rate = f"{per_minute:g}r/m" if per_minute == int(per_minute) else f"{rate_rps:g}r/s"
        header = "add_header Retry-After 1 always;" if retry_after else ""
        (d / "nginx.conf").write_text(
            f"""
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;
    log_format plain '$msec $status $request_method $uri';
    access_log {d}/access.log plain;
    # One bucket per API key, as the real API limits per key.
    limit_req_zone $http_x_api_key zone=api:1m rate={rate};
    limit_req_status 429;
    limit_req_log_level info;
    upstream sandbox {{ server 127.0.0.1:{upstream_port}; keepalive 64; }}
    server {{
        listen 127.0.0.1:{self.port};
        location = {V1_PATH} {{
            limit_req zone=api burst={burst} nodelay;
            error_page 429 = @limited;
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_buffering off;
            proxy_read_timeout 300s;
        }}
        location @limited {{
            default_type application/json;
            {header}
            return 429 '{{"error":"Rate limit exceeded"}}';
        }}
        location / {{
            proxy_pass http://sandbox;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}
}}
""",
            encoding="utf-8",
        )
        self.proc = subprocess.Popen(
            [binary, "-p", str(d), "-c", str(d / "nginx.conf"), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            self._wait_until_listening()
        except BaseException:
            self.close()
            raise

    def _wait_until_listening(self, timeout_s: float = 10.0) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    if self.proc.poll() is None:
                        self.proc.kill()
                    _, err = self.proc.communicate()
                    why = err.decode(errors="replace") + self._read("error.log")
                    raise RuntimeError(f"nginx did not start: {why[-1000:]}") from None
                time.sleep(0.05)

    def _read(self, name: str) -> str:
        path = self.dir / name
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}{V1_PATH}"

    def statuses(self) -> Counter:
        """Status codes nginx answered for generation requests, from its access log."""
        counts: Counter = Counter()
        for line in self._read("access.log").splitlines():
            parts = line.split()
            if len(parts) == 4 and parts[2] == "POST" and parts[3] == V1_PATH:
                counts[parts[1]] += 1
        return counts

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGQUIT)  # graceful: finish logging, then exit
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.proc.stderr:
            self.proc.stderr.close()
        shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> Nginx:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
