"""The read-only HTTP server: /metrics, /health and /stats fetched with a real HTTP client
(urllib) from a server on 127.0.0.1 and a free port, in a thread and as `afml-cache serve` in a
subprocess; 404 and 405; a clean stop on Ctrl-C and SIGTERM.
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

import afml_cache
from afml_cache.cache import Cache
from afml_cache.server import CacheServer, is_loopback, make_server

CHILD_TIMEOUT_S = 120
TIMEOUT_S = 30


class Served:
    """A cache directory with one decorated function called three times (1 hit, 2 misses),
    and a server of it running in a thread."""

    def __init__(self, directory: Path) -> None:
        self.cache = Cache(directory)

        @afml_cache.robust_cacheable(cache=self.cache)
        def cube(x: int) -> int:
            return x**3

        cube(2), cube(2), cube(3)
        self.name = cube.__afml_cache__.name
        self.server: CacheServer = make_server(self.cache, "127.0.0.1", 0)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT_S)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path / "cache")
    yield running
    running.stop()


def hide_prometheus_client(monkeypatch: pytest.MonkeyPatch) -> None:
    """Makes ``import prometheus_client`` (and its submodules) fail, as when not installed."""
    loaded = [n for n in sys.modules if n.split(".")[0] == "prometheus_client"]
    for name in {"prometheus_client", *loaded}:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.delitem(sys.modules, "afml_cache.prometheus", raising=False)


def fetch(url: str, method: str = "GET", headers: dict[str, str] | None = None) -> Any:
    """(status, headers, body) of a request, including error statuses."""
    request = urllib.request.Request(url, method=method, headers=headers or {})
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


def test_metrics_after_known_calls(served):
    status, headers, body = fetch(served.url + "metrics")
    assert status == 200
    assert headers["Content-Type"].startswith("text/plain; version=0.0.4")
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(body.decode())
        for s in family.samples
    }
    fn = (("function", served.name),)
    assert samples[("afml_cache_hits_total", fn)] == 1
    assert samples[("afml_cache_misses_total", fn)] == 2
    assert samples[("afml_cache_hit_rate", fn)] == pytest.approx(1 / 3)
    size = sum(e.size for e in served.cache._store.scan(served.name))
    assert samples[("afml_cache_size_bytes", fn)] == size
    assert samples[("afml_cache_evictions_total", ())] == 0
    for result, calls in (("hit", 1), ("miss", 2)):
        labels = (("function", served.name), ("le", "+Inf"), ("result", result))
        assert samples[("afml_cache_latency_seconds_bucket", labels)] == calls


def test_metrics_in_openmetrics_when_asked(served):
    status, headers, body = fetch(
        served.url + "metrics", headers={"Accept": "application/openmetrics-text"}
    )
    assert status == 200
    assert headers["Content-Type"].startswith("application/openmetrics-text")
    assert body.decode().endswith("# EOF\n")


def test_stats_json(served):
    status, headers, body = fetch(served.url + "stats")
    assert (status, headers["Content-Type"]) == (200, "application/json")
    document = json.loads(body)
    assert document["directory"] == str(served.cache.directory)
    assert document["store"]["count"] == 2
    row = document["functions"][served.name]
    assert (row["total_calls"], row["cache_hits"], row["cache_misses"]) == (3, 1, 2)
    assert row["hit_rate"] == pytest.approx(1 / 3)
    assert list(document["functions"]) == [served.name]


def test_health_json_and_a_degraded_directory(served):
    status, _, body = fetch(served.url + "health")
    document = json.loads(body)
    assert status == 200
    assert document["status"] == "ok"
    assert (document["entries"], document["problems"]) == (2, [])
    assert document["bytes"] == sum(e.size for e in served.cache._store.scan(None))
    assert "afml-cache health" in document["check"]  # says the full check lives elsewhere

    shutil.rmtree(served.cache.directory)
    status, _, body = fetch(served.url + "health")
    document = json.loads(body)
    assert status == 503
    assert document["status"] == "degraded"
    assert document["problems"] == [f"the cache directory {served.cache.directory} is missing"]
    # Nor do /stats and /metrics make it anew (an empty directory with a new key, counters at 0).
    for path in ("stats", "metrics"):
        status, _, body = fetch(served.url + path)
        assert (status, b"is missing or has no key" in body) == (503, True)
    assert not served.cache.directory.exists()


def test_other_paths_404_and_other_methods_405(served):
    status, _, body = fetch(served.url + "entries")
    assert status == 404
    assert body.decode() == "not found: /entries; this server answers /metrics, /health, /stats\n"
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        status, headers, _ = fetch(served.url + "stats", method=method)
        assert (status, headers["Allow"]) == (405, "GET, HEAD")
    assert served.cache.stats()["count"] == 2  # nothing was changed
    status, headers, body = fetch(served.url + "stats", method="HEAD")
    assert (status, body) == (200, b"")
    assert int(headers["Content-Length"]) > 0


def test_query_strings_are_ignored(served):
    status, _, body = fetch(served.url + "stats?pretty=1")
    assert status == 200
    assert json.loads(body)["functions"][served.name]["total_calls"] == 3


def test_metrics_without_prometheus_client_answer_501_and_the_rest_works(served, monkeypatch):
    hide_prometheus_client(monkeypatch)
    status, _, body = fetch(served.url + "metrics")
    assert status == 501
    assert 'pip install "afml-cache[prometheus]"' in body.decode()
    status, _, _ = fetch(served.url + "stats")
    assert status == 200


def test_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("localhost")
    assert not is_loopback("0.0.0.0") and not is_loopback("192.0.2.1") and not is_loopback("")
    assert is_loopback("127.1") and not is_loopback("10.1")  # inet_aton's short forms


# --- `afml-cache serve` in a subprocess --------------------------------------------------------


def start_serving(directory: Path, *extra: str) -> tuple[subprocess.Popen[str], str]:
    child = subprocess.Popen(
        [sys.executable, "-m", "afml_cache.cli", "serve", "--dir", str(directory), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None
    line = child.stdout.readline()
    found = re.search(r"at (http://127\.0\.0\.1:\d+/)", line)
    if found is None:
        child.kill()
        _, err = child.communicate(timeout=TIMEOUT_S)
        pytest.fail(f"afml-cache serve did not start: {line!r}\n{err}")
    return child, found.group(1)


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_serve_answers_then_stops_cleanly(tmp_path, stop):
    cache = Cache(tmp_path / "cache")
    cache._store.record_call("research.labels", True, 0.0, 2.0, 1e-4)
    child, url = start_serving(tmp_path / "cache", "--port", "0")
    try:
        status, _, body = fetch(url + "stats")
        assert status == 200
        assert json.loads(body)["functions"]["research.labels"]["time_saved"] == 2.0
        status, _, body = fetch(url + "metrics")
        assert status == 200
        assert 'afml_cache_hits_total{function="research.labels"} 1.0' in body.decode()
    finally:
        child.send_signal(stop)
        _, err = child.communicate(timeout=TIMEOUT_S)
    assert child.returncode == 0
    assert "Traceback" not in err


def test_serve_warns_off_loopback_and_reports_an_address_it_cannot_use(tmp_path):
    Cache(tmp_path / "cache")
    # 192.0.2.1 (TEST-NET-1) is never this machine's: the bind fails, nothing is exposed.
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "afml_cache.cli",
            "serve",
            "--dir",
            str(tmp_path / "cache"),
            "--host",
            "192.0.2.1",
            "--port",
            "0",
        ],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 1
    assert "warning: listening on 192.0.2.1, not loopback" in done.stderr
    assert "cannot listen on 192.0.2.1:0" in done.stderr
    assert done.stdout == ""


def test_serve_of_a_missing_directory_exits_3(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "afml_cache.cli", "serve", "--dir", str(tmp_path / "no")],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_S,
    )
    assert done.returncode == 3
    assert not (tmp_path / "no").exists()


# --- idle and half-open connections ---------------------------------------------------------


def _connect(server: CacheServer) -> socket.socket:
    host, port = server.server_address[:2]
    return socket.create_connection((host, port), timeout=TIMEOUT_S)


def test_health_answers_while_150_idle_connections_are_open_on_bounded_threads(served):
    threads_before = threading.active_count()
    idle = [_connect(served.server) for _ in range(150)]
    try:
        # Answered behind the 150 in the accept queue: the server has taken every one of them.
        for _ in range(3):
            status, _, body = fetch(served.url + "health")
            assert status == 200
            assert json.loads(body)["status"] == "ok"
        # A thread per idle connection would be 150 more threads.
        assert threading.active_count() - threads_before <= 16
    finally:
        for connection in idle:
            connection.close()


def test_clients_sending_part_of_a_request_hold_no_worker(tmp_path):
    # One byte at a time, or a head never finished: each held one of the workers for up to
    # the idle timeout per byte, so four such clients kept /health from answering.
    server = make_server(Cache(tmp_path / "cache"), "127.0.0.1", 0, workers=1, idle_timeout=600)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    partial = [_connect(server) for _ in range(3)]
    try:
        for connection in partial:
            connection.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nX-Slow: ")
        for _ in range(3):
            status, _, _ = fetch(server.url + "health")
            assert status == 200
        partial[0].sendall(b"1\r\n\r\n")  # a head finished late is answered
        assert partial[0].recv(1 << 16).startswith(b"HTTP/1.0 200")
    finally:
        for connection in partial:
            connection.close()
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)


def test_a_connection_that_sends_nothing_is_closed_after_the_idle_timeout(tmp_path):
    server = make_server(Cache(tmp_path / "cache"), "127.0.0.1", 0, idle_timeout=0.3)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        with _connect(server) as idle, _connect(server) as slow:
            slow.sendall(b"GET /health HTTP/1.0\r\n")  # a request that never ends
            assert idle.recv(1) == b""  # closed by the server (recv times out otherwise)
            assert slow.recv(1 << 16) == b""  # a worker waits no longer than that either
            status, _, _ = fetch(server.url + "health")
            assert status == 200
    finally:
        server.shutdown()
        server.server_close()
        thread.join(TIMEOUT_S)
