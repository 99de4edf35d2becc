"""A small read-only HTTP server for a cache directory (``afml-cache serve``).

- ``GET /metrics``: Prometheus metrics (see `afml_cache.prometheus`; answers 501 naming the
  extra to install when ``prometheus_client`` is missing, while the other paths still work);
- ``GET /health``: a quick check as JSON, 200 when ``status`` is ``ok`` and 503 when
  ``degraded``. Quick means the directory, its key and its shared counters are checked, not
  every entry (that reads every byte in the cache: too slow for a probe polled every few
  seconds); ``afml-cache health`` runs the full check;
- ``GET /stats``: the per-function statistics as JSON (`stats_document`).

Other paths answer 404, other methods than GET and HEAD 405. The server only reads: nothing a
request says can change the cache. It listens on loopback unless told otherwise.

Idle and half-open clients cannot take it down: a connection waits in one watcher thread until its
request arrives, and only then does one of a few worker threads answer it; a connection that
sends nothing (or never finishes its request) for ``idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import contextlib
import datetime
import ipaddress
import json
import logging
import os
import queue
import selectors
import socket
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from afml_cache import config
from afml_cache.cache import Cache

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "CacheServer",
    "health_document",
    "is_loopback",
    "make_server",
    "stats_document",
]

DEFAULT_HOST = "127.0.0.1"
#: The port ``afml-cache serve`` listens on by default (near other Prometheus exporters').
DEFAULT_PORT = 9464
#: Threads answering requests, and how long a connection may stay silent before it is closed.
DEFAULT_WORKERS = 4
DEFAULT_IDLE_TIMEOUT = 10.0
# Connections waiting for their request beyond this many: the oldest is closed (a bound on the
# file descriptors idle clients can hold).
_MAX_WAITING = 512
_ENDPOINTS = ("/metrics", "/health", "/stats")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_log = logging.getLogger("afml_cache")


def stats_document(cache: Cache | None) -> dict[str, Any]:
    """What ``/stats`` and ``afml-cache stats --json`` show: ``directory``, ``store`` (the
    directory's shared counters: entries as ``count``, ``bytes``, ``hits``, ``misses``,
    ``sets``, ``deletes``, ``evictions``) and ``functions`` (`get_cache_stats`'s rows, by
    qualified name)."""
    from afml_cache.monitoring import get_cache_stats

    if cache is None:
        return {"directory": None, "store": None, "functions": {}}
    counters = cache.stats()
    store = {k: v for k, v in counters.items() if not k.startswith("memory_")}
    rows = get_cache_stats(cache)
    return {
        "directory": str(cache.directory),
        "store": store,
        "functions": {name: dict(row) for name, row in rows.items()},
    }


def health_document(cache: Cache | None) -> dict[str, Any]:
    """What ``/health`` shows: ``status`` (``ok`` or ``degraded``), ``directory``, ``entries``,
    ``bytes``, ``problems`` (what the quick check found) and ``check`` (what it covers)."""
    problems: list[str] = []
    entries = size = None
    directory = cache.directory if cache is not None else config.CACHE_DIRS["base"]
    if cache is None:
        problems.append(f"the cache directory {directory} cannot be used; caching is disabled")
    elif not directory.is_dir():
        problems.append(f"the cache directory {directory} is missing")
    else:
        if not (directory / "mac.key").is_file():
            problems.append(f"the key file {directory / 'mac.key'} is missing")
        if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
            problems.append(f"this process cannot read and write {directory}")
        try:
            counters = cache.stats()
            entries, size = counters["count"], counters["bytes"]
        except OSError as exc:
            problems.append(f"the shared counters cannot be read: {exc}")
    return {
        "status": "degraded" if problems else "ok",
        "directory": str(directory),
        "entries": entries,
        "bytes": size,
        "problems": problems,
        "check": (
            "quick: the directory, its key and its counters, not each entry; "
            "`afml-cache health` verifies every entry"
        ),
    }


class CacheServer(HTTPServer):
    """Serves ``/metrics``, ``/health`` and ``/stats`` of ``cache`` (None: the configured cache,
    looked up at each request). ``server_address`` holds the bound host and port.

    ``workers`` threads answer requests; connections wait for their request in one watcher
    thread, and one silent for ``idle_timeout`` seconds is closed, so idle clients cost a file
    descriptor each, never a thread.
    """

    request_queue_size = 128  # the listen backlog: bursts of probes are queued, not refused

    def __init__(
        self,
        address: tuple[str, int],
        cache: Cache | None = None,
        *,
        workers: int = DEFAULT_WORKERS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ) -> None:
        if workers < 1 or not idle_timeout > 0:
            raise ValueError(
                f"workers={workers!r} and idle_timeout={idle_timeout!r} must be positive"
            )
        self._cache = cache
        self.idle_timeout = float(idle_timeout)
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        # Ready before binding: a failed bind calls server_close(), which stops all of this.
        self._workers = ThreadPoolExecutor(workers, thread_name_prefix="afml-cache-serve")
        self._arrivals: queue.SimpleQueue[tuple[socket.socket, Any]] = queue.SimpleQueue()
        self._wake_watcher, self._wake = socket.socketpair()
        self._wake.setblocking(False)
        self._closing = threading.Event()
        self._watcher = threading.Thread(
            target=self._watch, name="afml-cache-serve-watcher", daemon=True
        )
        self._watcher.start()
        super().__init__(address, _Handler)

    def process_request(self, request: Any, client_address: Any) -> None:
        # Called by serve_forever for each accepted connection: it waits for its request in the
        # watcher, not in a thread of its own.
        self._arrivals.put((request, client_address))
        self._nudge()

    def _nudge(self) -> None:
        with contextlib.suppress(OSError):  # already nudged (a full buffer), or closing
            self._wake.send(b"\0")

    def _watch(self) -> None:
        """Hands each connection to a worker once its request arrives; closes the silent."""
        waiting: OrderedDict[socket.socket, tuple[float, Any]] = OrderedDict()  # oldest first
        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_watcher, selectors.EVENT_READ)
            while not self._closing.is_set():
                first = next(iter(waiting.values()), None)
                wait = None if first is None else max(0.0, first[0] - time.monotonic())
                for key, _ in selector.select(wait):
                    connection = key.fileobj
                    if connection is self._wake_watcher:
                        self._wake_watcher.recv(4096)
                        continue
                    assert isinstance(connection, socket.socket)
                    selector.unregister(connection)
                    _, address = waiting.pop(connection)
                    self._workers.submit(self._answer, connection, address)
                while not self._arrivals.empty():
                    connection, address = self._arrivals.get()
                    if len(waiting) >= _MAX_WAITING:
                        oldest, _ = waiting.popitem(last=False)
                        selector.unregister(oldest)
                        self.shutdown_request(oldest)
                    selector.register(connection, selectors.EVENT_READ)
                    waiting[connection] = (time.monotonic() + self.idle_timeout, address)
                now = time.monotonic()
                while waiting and next(iter(waiting.values()))[0] <= now:
                    silent, _ = waiting.popitem(last=False)
                    selector.unregister(silent)
                    self.shutdown_request(silent)
        for connection in waiting:
            self.shutdown_request(connection)

    def _answer(self, connection: socket.socket, address: Any) -> None:
        try:
            self.finish_request(connection, address)
        except Exception:
            self.handle_error(connection, address)
        finally:
            self.shutdown_request(connection)

    def server_close(self) -> None:
        super().server_close()
        self._closing.set()
        self._nudge()
        self._watcher.join()
        self._workers.shutdown(wait=False, cancel_futures=True)
        self._wake.close()
        self._wake_watcher.close()
        while not self._arrivals.empty():  # accepted after the watcher stopped
            self.shutdown_request(self._arrivals.get()[0])

    @property
    def cache(self) -> Cache | None:
        return self._cache if self._cache is not None else config.shared_cache()

    @property
    def url(self) -> str:
        host, port = self.server_address[:2]
        host = host.decode() if isinstance(host, bytes) else host
        shown = f"[{host}]" if ":" in host else host
        return f"http://{shown}:{port}/"


def make_server(
    cache: Cache | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    workers: int = DEFAULT_WORKERS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
) -> CacheServer:
    """A `CacheServer` bound to ``host:port`` (port 0: any free port), not yet serving: call
    ``serve_forever()`` (in a thread, if need be), then ``shutdown()`` and ``server_close()``."""
    return CacheServer((host, port), cache, workers=workers, idle_timeout=idle_timeout)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: CacheServer
    server_version = "afml-cache"

    def setup(self) -> None:
        # A request that stops halfway frees its worker after the idle timeout too.
        self.timeout = self.server.idle_timeout
        super().setup()

    def do_GET(self) -> None:
        self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def _refuse(self) -> None:
        # The body of a refused request is not read, so the connection cannot be reused.
        self.close_connection = True
        message = f"{self.command} is not allowed: this server is read-only; use GET\n"
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, message.encode(), {"Allow": "GET, HEAD"})

    do_POST = do_PUT = do_DELETE = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _answer(self, send_body: bool) -> None:
        path = urllib.parse.urlsplit(self.path).path
        route: dict[str, Callable[[], tuple[HTTPStatus, str, bytes]]] = {
            "/metrics": self._metrics,
            "/health": self._health,
            "/stats": self._stats,
        }
        answer = route.get(path)
        if answer is None:
            message = f"not found: {path}; this server answers {', '.join(_ENDPOINTS)}\n"
            status, kind, body = HTTPStatus.NOT_FOUND, _TEXT, message.encode()
        else:
            try:
                status, kind, body = answer()
            except Exception as exc:
                _log.exception("afml-cache serve: %s failed", path)
                message = f"{path} failed: {type(exc).__name__}: {exc}\n"
                status, kind, body = HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, message.encode()
        self._send(status, kind, body, {}, send_body=send_body)

    def _metrics(self) -> tuple[HTTPStatus, str, bytes]:
        try:
            from afml_cache.prometheus import exposition
        except ImportError as exc:  # its message names the extra to install
            message = f"/metrics is not available: {exc}\n"
            return HTTPStatus.NOT_IMPLEMENTED, _TEXT, message.encode()
        body, kind = exposition(self.server.cache, self.headers.get("Accept", ""))
        return HTTPStatus.OK, kind, body

    def _health(self) -> tuple[HTTPStatus, str, bytes]:
        document = health_document(self.server.cache)
        status = HTTPStatus.OK if document["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _JSON, _json_bytes(document)

    def _stats(self) -> tuple[HTTPStatus, str, bytes]:
        return HTTPStatus.OK, _JSON, _json_bytes(stats_document(self.server.cache))

    def _send(
        self,
        status: HTTPStatus,
        kind: str,
        body: bytes,
        headers: dict[str, str],
        *,
        send_body: bool = True,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", kind)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        for name, value in headers.items():
            self.send_header(name, value)
        self.end_headers()
        if send_body:  # not for HEAD
            self.wfile.write(body)

    def log_message(self, format: str, *args: Any) -> None:
        # Requests go to the library's logger (DEBUG), not straight to stderr.
        _log.debug("afml-cache serve: %s %s", self.address_string(), format % args)


def _json_bytes(document: Any) -> bytes:
    return (json.dumps(document, indent=2, allow_nan=False, default=_plain) + "\n").encode()


def _plain(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, datetime.datetime):  # a statistic's last_accessed, a pd.Timestamp
        return value.isoformat()
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")
