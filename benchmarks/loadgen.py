"""A small closed-loop HTTP load generator, used when ``wrk`` is not installed.

One thread per cookie jar (a connection) sends one request at a time (a new connection
per request, as gunicorn's sync workers close them anyway) for ``duration`` seconds,
keeping the cookies the responses set as a browser would, and the result has
the same shape as the line ``benchmarks/wrk_report.lua`` prints (latencies as a histogram
of whole microseconds). It is slower than wrk
(the GIL, and it shares the CPU with the servers), so its requests per second are a lower
bound; ratios between runs made with the same tool still hold.
"""

from __future__ import annotations

import http.client
import threading
import time
from http.cookies import SimpleCookie
from typing import Any


class _Worker(threading.Thread):
    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        method: str,
        headers: dict[str, str],
        body: str | None,
        deadline: float,
        timeout: float,
        cookie: str,
    ) -> None:
        super().__init__(daemon=True)
        self.target = (host, port, path, method, headers, body)
        self.jar: SimpleCookie = SimpleCookie()
        self.jar.load(cookie)
        self.deadline = deadline
        self.timeout = timeout
        self.latencies: list[float] = []
        self.statuses: dict[str, int] = {}
        self.anonymous = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "status": 0, "timeout": 0}

    def run(self) -> None:
        host, port, path, method, headers, body = self.target
        while time.monotonic() < self.deadline:
            conn = http.client.HTTPConnection(host, port, timeout=self.timeout)
            start = time.perf_counter_ns()
            cookie = self.cookie()
            try:
                conn.request(method, path, body=body, headers={**headers, "Cookie": cookie})
                response = conn.getresponse()
                response.read()
            except TimeoutError:
                self.errors["timeout"] += 1
                continue
            except ConnectionRefusedError:
                self.errors["connect"] += 1
                continue
            except (OSError, http.client.HTTPException):
                self.errors["read"] += 1
                continue
            finally:
                conn.close()
            self.latencies.append((time.perf_counter_ns() - start) / 1000)
            self.keep(response.headers.get_all("Set-Cookie") or [])
            status = response.status
            self.statuses[str(status)] = self.statuses.get(str(status), 0) + 1
            if status >= 400:
                self.errors["status"] += 1
            if 200 <= status < 300 and response.getheader("X-Bench-Auth") != "1":
                self.anonymous += 1

    def keep(self, set_cookies: list[str]) -> None:
        """Take the cookies a response set (a deleted one leaves the jar)."""
        for header in set_cookies:
            answered: SimpleCookie = SimpleCookie()
            answered.load(header)
            for name, morsel in answered.items():
                if not morsel.value or morsel["max-age"] in ("0", 0):
                    self.jar.pop(name, None)
                else:
                    self.jar[name] = morsel.value

    def cookie(self) -> str:
        return "; ".join(f"{name}={morsel.value}" for name, morsel in self.jar.items())


def run(
    host: str,
    port: int,
    path: str,
    *,
    method: str,
    jars: list[str],
    body: str | None,
    duration: float,
    timeout: float,
) -> dict[str, Any]:
    """Drive ``method path`` for ``duration`` seconds; returns wrk_report.lua's summary.

    One connection per entry of ``jars`` (a Cookie header to start with); each entry is
    replaced by what that connection's jar holds at the end.
    """
    headers = {} if body is None else {"Content-Type": "application/x-www-form-urlencoded"}
    start = time.monotonic()
    workers = [
        _Worker(host, port, path, method, headers, body, start + duration, timeout, cookie)
        for cookie in jars
    ]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    jars[:] = [worker.cookie() for worker in workers]
    elapsed = time.monotonic() - start
    latencies = [value for worker in workers for value in worker.latencies]
    statuses: dict[str, int] = {}
    errors = dict.fromkeys(workers[0].errors, 0)
    for worker in workers:
        for status, n in worker.statuses.items():
            statuses[status] = statuses.get(status, 0) + n
        for name, n in worker.errors.items():
            errors[name] += n
    histogram: dict[int, int] = {}
    for value in latencies:
        histogram[int(value)] = histogram.get(int(value), 0) + 1
    return {
        "requests": len(latencies),
        "duration_us": int(elapsed * 1e6),
        "errors": errors,
        "statuses": statuses,
        "anonymous": sum(worker.anonymous for worker in workers),
        "hist": sorted(histogram.items()),
    }
