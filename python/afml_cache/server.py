"""A small read-only HTTP server for a cache directory (``afml-cache serve``).

- ``GET /metrics``: Prometheus metrics (see `afml_cache.prometheus`; answers 501 naming the
  extra to install when ``prometheus_client`` is missing, while the other paths still work);
- ``GET /health``: a quick check as JSON, 200 when ``status`` is ``ok`` and 503 when
  ``degraded``. Quick means the directory, its key and its shared counters are checked, not
  every entry (that reads every byte in the cache: too slow for a probe polled every few
  seconds); ``afml-cache health`` runs the full check;
- ``GET /stats``: the per-function statistics as JSON (`stats_document`).

Other paths answer 404, other methods than GET and HEAD 405. Without ``admin`` the server only
reads: nothing a request says can change the cache. It listens on loopback unless told otherwise.

With ``admin`` (``afml-cache serve --admin``), requests that carry ``Authorization: Bearer
TOKEN`` (the token of `admin_token`'s file) may also change it:

- ``POST /admin/clear``: every entry and the statistics; ``?function=NAME``: one function's
  entries; ``?tag=TAG``: the entries carrying a tag;
- ``DELETE /admin/entry?function=NAME&digest=DIGEST``: one entry;
- ``POST /admin/warm?name=MODULE:FUNCTION``: runs a warm-up registered at start, answering the
  reports of its ``f.warm`` calls when it is done;
- ``GET /admin/export`` (``?function=NAME``: one function's): an archive of the entries, as
  ``afml-cache export`` writes (``afml-cache import`` reads it).

No token: 401; a wrong one: 403; either way nothing changes. Every change and every refusal is
logged (logger ``afml_cache.admin``, INFO and WARNING).

Idle and half-open clients cannot take it down: a connection waits in one watcher thread until its
request arrives, and only then does one of a few worker threads answer it; a connection that
sends nothing (or never finishes its request) for ``idle_timeout`` seconds is closed.
"""

from __future__ import annotations

import contextlib
import datetime
import hmac
import ipaddress
import itertools
import json
import logging
import os
import queue
import re
import secrets
import selectors
import shutil
import socket
import stat
import sys
import tempfile
import threading
import time
import urllib.parse
from collections import OrderedDict
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

from afml_cache import config
from afml_cache.cache import Cache
from afml_cache.errors import CacheError
from afml_cache.monitoring import names_like

__all__ = [
    "DEFAULT_HOST",
    "DEFAULT_PORT",
    "Admin",
    "CacheServer",
    "admin_token",
    "default_token_file",
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
# How often a connection holding part of a request is looked at again, and the most of a
# request's head looked for (a longer one goes to a worker, which answers 431).
_SNOOZE = 0.05
_HEAD_LIMIT = 65536
_ENDPOINTS = ("/metrics", "/health", "/stats")
_JSON = "application/json"
_TEXT = "text/plain; charset=utf-8"
_TAR = "application/x-tar"
_log = logging.getLogger("afml_cache")
# Every change made and every request refused on the admin endpoints.
_audit = logging.getLogger("afml_cache.admin")
_ADMIN_ENDPOINTS = (
    "POST /admin/clear[?function=NAME|?tag=TAG]",
    "DELETE /admin/entry?function=NAME&digest=DIGEST",
    "POST /admin/warm?name=MODULE:FUNCTION",
    "GET /admin/export[?function=NAME]",
)
_ADMIN_HELP = "; ".join(_ADMIN_ENDPOINTS)
_DIGEST = re.compile(r"[0-9a-f]{64}")
_EXPORT_CHUNK = 1 << 20


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


def _gone(cache: Cache | None) -> str | None:
    """Why the cache served cannot be read without making it anew (its directory moved away or
    its key removed: reading the counters would recreate both, empty), or None."""
    if cache is None:
        return None
    directory = cache.directory
    if not (directory / "mac.key").is_file():
        return f"the cache directory {directory} is missing or has no key; see /health"
    return None


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


def default_token_file() -> Path:
    """Where ``afml-cache serve --admin`` keeps its token unless told otherwise:
    ``$XDG_CONFIG_HOME/afml-cache/admin.token`` (``~/.config/afml-cache/admin.token``)."""
    base = os.environ.get("XDG_CONFIG_HOME") or "~/.config"
    return Path(base).expanduser() / "afml-cache" / "admin.token"


def admin_token(path: str | os.PathLike[str]) -> str:
    """The bearer token kept in ``path``, created with a random token on first use (the file
    0600, a directory made for it 0700). A file that others could read, that belongs to another
    user or is a symbolic link, or a directory others could write (where they could swap the
    file for one holding their token), is refused with a `CacheError` naming the fix: its token
    opens the cache. The file is checked and read through one descriptor."""
    path = Path(path).expanduser()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    folder = path.parent.stat()
    if folder.st_uid not in (os.getuid(), 0) or folder.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise CacheError(
            f"the admin token file's directory {path.parent} can be written by others (mode "
            f"{stat.S_IMODE(folder.st_mode):04o}, owner uid {folder.st_uid}), who could put "
            f"their own token in its place; keep the token in a directory of yours only "
            f"(chmod 700 {path.parent}, or --token-file in another)"
        )
    with contextlib.suppress(FileExistsError):  # made before, or by another server meanwhile
        descriptor = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        with os.fdopen(descriptor, "w") as file:
            file.write(secrets.token_urlsafe(32) + "\n")
        _audit.info("afml-cache serve: created the admin token file %s", path)
    try:
        descriptor = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as exc:
        raise CacheError(
            f"the admin token file {path} cannot be opened ({exc.strerror}); it must be a file "
            "of yours, not a symbolic link"
        ) from None
    with os.fdopen(descriptor, "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode):
            raise CacheError(f"the admin token file {path} is not a file; remove it")
        if info.st_uid != os.getuid():
            raise CacheError(
                f"the admin token file {path} belongs to another user (uid {info.st_uid}); use "
                "a token file of your own (--token-file)"
            )
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise CacheError(
                f"the admin token file {path} can be read or written by others (mode "
                f"{stat.S_IMODE(info.st_mode):04o}); make it yours only: chmod 600 {path}"
            )
        content = file.read(4096)
    try:
        token = content.decode("ascii").strip()
    except UnicodeDecodeError:
        token = ""
    if len(token) < 16 or not token.isprintable() or " " in token:
        raise CacheError(
            f"the admin token file {path} holds no token of at least 16 printable characters; "
            "remove it and a new one is made at the next start"
        )
    return token


@dataclass(frozen=True)
class Admin:
    """What the admin endpoints need: the bearer ``token`` (kept in ``token_file``) and the
    warm-ups they may run, by name (``MODULE:FUNCTION``)."""

    token: str
    warmups: dict[str, Callable[[], Any]] = field(default_factory=dict)
    token_file: Path | None = None


def admin_from(token_file: str | os.PathLike[str] | None, warmups: Iterable[str]) -> Admin:
    """The `Admin` of ``afml-cache serve --admin``: the token in ``token_file`` (None: the
    `default_token_file`) and the warm-ups named ``MODULE:FUNCTION``, imported now."""
    from afml_cache.warming import load_warmup

    path = Path(token_file).expanduser() if token_file is not None else default_token_file()
    return Admin(admin_token(path), {spec: load_warmup(spec) for spec in warmups}, path)


@contextlib.contextmanager
def audit_on_stderr() -> Iterator[None]:
    """Writes the admin endpoints' log (every change, every refusal) on stderr, with the time."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
    level, propagate = _audit.level, _audit.propagate
    _audit.addHandler(handler)
    _audit.setLevel(logging.INFO)
    _audit.propagate = False  # once, not again through the library's own handlers
    try:
        yield
    finally:
        _audit.removeHandler(handler)
        _audit.setLevel(level)
        _audit.propagate = propagate


class CacheServer(HTTPServer):
    """Serves ``/metrics``, ``/health`` and ``/stats`` of ``cache`` (None: the configured cache,
    looked up at each request), and with ``admin`` the write endpoints. ``server_address``
    holds the bound host and port.

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
        admin: Admin | None = None,
    ) -> None:
        if workers < 1 or not idle_timeout > 0:
            raise ValueError(
                f"workers={workers!r} and idle_timeout={idle_timeout!r} must be positive"
            )
        self._cache = cache
        self.admin = admin
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
        """Hands each connection to a worker once its request's head has arrived; closes those
        that have not sent it within ``idle_timeout`` of connecting: silent ones, and ones
        sending a byte at a time, so that neither holds a worker."""
        waiting: OrderedDict[socket.socket, tuple[float, Any]] = OrderedDict()  # oldest first
        # Connections holding part of a request: out of the selector (their data would wake it
        # at once, again and again) until this time.
        snoozed: dict[socket.socket, float] = {}

        def drop(connection: socket.socket) -> None:
            if snoozed.pop(connection, None) is None:
                selector.unregister(connection)
            self.shutdown_request(connection)

        with selectors.DefaultSelector() as selector:
            selector.register(self._wake_watcher, selectors.EVENT_READ)
            while not self._closing.is_set():
                times = [t for t, _ in itertools.islice(waiting.values(), 1)]
                times.extend(itertools.islice(sorted(snoozed.values()), 1))
                wait = None if not times else max(0.0, min(times) - time.monotonic())
                for key, _ in selector.select(wait):
                    connection = key.fileobj
                    if connection is self._wake_watcher:
                        self._wake_watcher.recv(4096)
                        continue
                    assert isinstance(connection, socket.socket)
                    selector.unregister(connection)
                    if not _head_arrived(connection):
                        snoozed[connection] = time.monotonic() + _SNOOZE
                        continue
                    _, address = waiting.pop(connection)
                    self._workers.submit(self._answer, connection, address)
                while not self._arrivals.empty():
                    connection, address = self._arrivals.get()
                    if len(waiting) >= _MAX_WAITING:
                        oldest, _ = waiting.popitem(last=False)
                        drop(oldest)
                    selector.register(connection, selectors.EVENT_READ)
                    waiting[connection] = (time.monotonic() + self.idle_timeout, address)
                now = time.monotonic()
                for connection in [c for c, at in snoozed.items() if at <= now]:
                    del snoozed[connection]
                    selector.register(connection, selectors.EVENT_READ)
                while waiting and next(iter(waiting.values()))[0] <= now:
                    silent, _ = waiting.popitem(last=False)
                    drop(silent)
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


def _head_arrived(connection: socket.socket) -> bool:
    """Whether ``connection`` holds a whole request head (or has closed, or failed, or sent
    more than a head may hold): a worker can then read it without waiting."""
    try:
        data = connection.recv(_HEAD_LIMIT, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True  # the worker meets the error and closes it
    return not data or b"\r\n\r\n" in data or b"\n\n" in data or len(data) >= _HEAD_LIMIT


def make_server(
    cache: Cache | None = None,
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    *,
    workers: int = DEFAULT_WORKERS,
    idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    admin: Admin | None = None,
) -> CacheServer:
    """A `CacheServer` bound to ``host:port`` (port 0: any free port), not yet serving: call
    ``serve_forever()`` (in a thread, if need be), then ``shutdown()`` and ``server_close()``.
    ``admin``: the write endpoints are on, for requests with its token."""
    return CacheServer((host, port), cache, workers=workers, idle_timeout=idle_timeout, admin=admin)


def is_loopback(host: str) -> bool:
    """Whether ``host`` names this machine only (127.0.0.0/8, ::1, localhost, and short forms
    of them such as ``127.1``, which the resolver reads as 127.0.0.1)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    try:  # inet_aton's forms: what binding to the name would use
        return ipaddress.ip_address(socket.inet_aton(host)).is_loopback
    except OSError:
        return False


class _Handler(BaseHTTPRequestHandler):
    server: CacheServer
    server_version = "afml-cache"

    def setup(self) -> None:
        # A request that stops halfway frees its worker after the idle timeout too.
        self.timeout = self.server.idle_timeout
        super().setup()

    def do_GET(self) -> None:
        if self._is_admin_path():
            self._administer()
        else:
            self._answer(send_body=True)

    def do_HEAD(self) -> None:
        self._answer(send_body=False)

    def do_POST(self) -> None:
        if self.server.admin is not None and self._is_admin_path():
            self._administer()
        else:
            self._refuse()

    do_DELETE = do_POST

    def _refuse(self) -> None:
        # The body of a refused request is not read, so the connection cannot be reused.
        self.close_connection = True
        if self.server.admin is None:
            message = (
                f"{self.command} is not allowed: this server is read-only; use GET (the write "
                "endpoints need `afml-cache serve --admin`)\n"
            )
        else:
            message = f"{self.command} is not allowed here; use GET, or {_ADMIN_HELP}\n"
        self._send(HTTPStatus.METHOD_NOT_ALLOWED, _TEXT, message.encode(), {"Allow": "GET, HEAD"})

    do_PUT = do_PATCH = do_OPTIONS = do_TRACE = do_CONNECT = _refuse

    def _is_admin_path(self) -> bool:
        return urllib.parse.urlsplit(self.path).path.startswith("/admin/")

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
        gone = _gone(self.server.cache)
        if gone is not None:
            return HTTPStatus.SERVICE_UNAVAILABLE, _TEXT, f"{gone}\n".encode()
        body, kind = exposition(self.server.cache, self.headers.get("Accept", ""))
        return HTTPStatus.OK, kind, body

    def _health(self) -> tuple[HTTPStatus, str, bytes]:
        document = health_document(self.server.cache)
        status = HTTPStatus.OK if document["status"] == "ok" else HTTPStatus.SERVICE_UNAVAILABLE
        return status, _JSON, _json_bytes(document)

    def _stats(self) -> tuple[HTTPStatus, str, bytes]:
        gone = _gone(self.server.cache)
        if gone is not None:
            return HTTPStatus.SERVICE_UNAVAILABLE, _JSON, _json_bytes({"error": gone})
        return HTTPStatus.OK, _JSON, _json_bytes(stats_document(self.server.cache))

    # --- the admin endpoints ----------------------------------------------------------------

    def _administer(self) -> None:
        # A body is never read: the connection cannot be reused after one.
        if self.headers.get("Content-Length", "0") != "0" or self.headers.get("Transfer-Encoding"):
            self.close_connection = True
        admin = self.server.admin
        if admin is None:
            message = (
                "the admin endpoints are off; start the server with `afml-cache serve --admin`\n"
            )
            self._send(HTTPStatus.NOT_FOUND, _TEXT, message.encode(), {})
            return
        given = self.headers.get("Authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            self._deny(
                HTTPStatus.UNAUTHORIZED,
                "no token: send the admin token as `Authorization: Bearer TOKEN`",
                {"WWW-Authenticate": 'Bearer realm="afml-cache admin"'},
            )
            return
        if not hmac.compare_digest(token.strip().encode(), admin.token.encode()):
            self._deny(HTTPStatus.FORBIDDEN, "wrong token", {})
            return
        url = urllib.parse.urlsplit(self.path)
        route: dict[tuple[str, str], tuple[Callable[[dict[str, str]], None], tuple[str, ...]]] = {
            ("POST", "/admin/clear"): (self._clear, ("function", "tag")),
            ("DELETE", "/admin/entry"): (self._delete_entry, ("function", "digest")),
            ("POST", "/admin/warm"): (self._warm, ("name",)),
            ("GET", "/admin/export"): (self._export, ("function",)),
        }
        found = route.get((self.command, url.path))
        if found is None:
            message = f"no admin endpoint {self.command} {url.path}; there are {_ADMIN_HELP}\n"
            self._send(HTTPStatus.NOT_FOUND, _TEXT, message.encode(), {})
            return
        act, accepted = found
        query = self._query(url.query, accepted)
        if query is None:
            return
        try:
            act(query)
        except Exception as exc:
            _audit.exception("%s %s %s failed", self.address_string(), self.command, self.path)
            message = f"{self.command} {url.path} failed: {type(exc).__name__}: {exc}\n"
            self._send(HTTPStatus.INTERNAL_SERVER_ERROR, _TEXT, message.encode(), {})

    def _query(self, text: str, accepted: tuple[str, ...]) -> dict[str, str] | None:
        """The parameters of an admin request, or None once it is answered 400: a parameter
        the endpoint does not take, one given twice or empty (``?tag=$TAG`` with TAG unset)
        would otherwise fall back to doing the most (``/admin/clear``: every entry)."""
        given = urllib.parse.parse_qs(text, keep_blank_values=True)
        takes = " and ".join(f"?{name}=" for name in accepted) or "no parameters"
        for name, values in given.items():
            problem = None
            if name not in accepted:
                problem = f"this endpoint takes {takes}, not ?{name}="
            elif len(values) > 1:
                problem = f"?{name}= is given {len(values)} times; give it once"
            elif not values[0].strip():
                problem = f"?{name}= is empty; give a value, or leave the parameter out"
            if problem is not None:
                self._bad(HTTPStatus.BAD_REQUEST, f"{problem}; nothing was changed")
                return None
        return {name: values[0] for name, values in given.items()}

    def _logged_path(self) -> str:
        """The request's path for the log, its query's values hidden when a request is refused
        (a client may have put the token there)."""
        url = urllib.parse.urlsplit(self.path)
        if not url.query:
            return url.path
        names = [part.partition("=")[0] for part in url.query.split("&")]
        return f"{url.path}?" + "&".join(f"{name}=..." for name in names)

    def _deny(self, status: HTTPStatus, why: str, headers: dict[str, str]) -> None:
        _audit.warning(
            "afml-cache serve: refused %s %s from %s: %s",
            self.command,
            self._logged_path(),
            self.address_string(),
            why,
        )
        self._send(status, _TEXT, f"{why}; nothing was changed\n".encode(), headers)

    def _done(self, what: str, document: dict[str, Any]) -> None:
        """Logs a change and answers it."""
        _audit.info(
            "afml-cache serve: %s %s from %s: %s",
            self.command,
            self.path,
            self.address_string(),
            what,
        )
        self._send(HTTPStatus.OK, _JSON, _json_bytes(document), {})

    def _bad(self, status: HTTPStatus, message: str) -> None:
        self._send(status, _TEXT, f"{message}\n".encode(), {})

    def _admin_cache(self) -> Cache:
        cache = self.server.cache
        if cache is None:
            raise CacheError("the cache directory cannot be used; see the server's log")
        return cache

    def _known_function(self, cache: Cache, name: str) -> bool:
        if name in cache.sizes_by_namespace():
            return True
        counted = {row.namespace for row in cache.function_stats()}
        if name in counted:
            return True
        alike = names_like(name, counted | set(cache.sizes_by_namespace()))
        hint = f" (did you mean {', '.join(alike)}?)" if alike else ""
        self._bad(
            HTTPStatus.NOT_FOUND,
            f"no cached function is named {name!r}{hint}; give the qualified name "
            "(module.qualname) as /stats shows it",
        )
        return False

    def _clear(self, query: dict[str, str]) -> None:
        cache = self._admin_cache()
        function, tag = query.get("function"), query.get("tag")
        if function is not None and tag is not None:
            self._bad(HTTPStatus.BAD_REQUEST, "give ?function=NAME or ?tag=TAG, not both")
            return
        if function is not None:
            if not self._known_function(cache, function):
                return
            view = cache.namespaced(function)
            removed = view.remove_entries(view.entries())
            what = f"removed {removed} entries of {function}"
        elif tag is not None:
            removed = sum(
                cache.namespaced(name).invalidate_by_tag(tag) for name in cache.sizes_by_namespace()
            )
            what = f"removed {removed} entries tagged {tag!r}"
        else:
            removed = cache.clear()
            cache.reset_function_stats()
            what = f"removed every entry ({removed}) and the statistics"
        self._done(what, {"directory": str(cache.directory), "entries_removed": removed})

    def _delete_entry(self, query: dict[str, str]) -> None:
        cache = self._admin_cache()
        function, digest = query.get("function"), query.get("digest", "")
        if function is None or not _DIGEST.fullmatch(digest):
            self._bad(
                HTTPStatus.BAD_REQUEST,
                "give ?function=NAME&digest=DIGEST (64 lowercase hex digits, as an entry's "
                "`digest` in f.cache_entries())",
            )
            return
        view = cache.namespaced(function)
        removed = view.remove_entries(e for e in view.entries() if e["digest"] == digest)
        if not removed:
            self._bad(HTTPStatus.NOT_FOUND, f"{function} has no entry {digest}")
            return
        self._done(f"removed entry {digest} of {function}", {"entries_removed": removed})

    def _warm(self, query: dict[str, str]) -> None:
        from afml_cache.warming import failures, run_warmup

        warmups = self.server.admin.warmups if self.server.admin is not None else {}
        name = query.get("name", "")
        warmup = warmups.get(name)
        if warmup is None:
            known = ", ".join(sorted(warmups)) or "none (register them with --warmup)"
            self._bad(HTTPStatus.NOT_FOUND, f"no warm-up named {name!r}; registered: {known}")
            return
        reports = run_warmup(warmup)
        failed = failures(reports)
        computed = sum(r["computed"] for r in reports)
        self._done(
            f"ran warm-up {name}: {computed} computed, {failed} failed",
            {"warmup": name, "failed": failed, "reports": reports},
        )

    def _export(self, query: dict[str, str]) -> None:
        cache = self._admin_cache()
        function = query.get("function")
        if function is not None and not self._known_function(cache, function):
            return
        with tempfile.TemporaryDirectory(prefix="afml-cache-export-") as scratch:
            archive = Path(scratch) / "export.tar"
            if function is not None:
                count = cache.namespaced(function).export(archive)
            else:
                count = cache.export(archive, every_namespace=True)
            size = archive.stat().st_size
            _audit.info(
                "afml-cache serve: GET %s from %s: exported %d entries (%d bytes)",
                self.path,
                self.address_string(),
                count,
                size,
            )
            self.send_response(HTTPStatus.OK)
            self.send_header("Content-Type", _TAR)
            self.send_header("Content-Length", str(size))
            self.send_header("Content-Disposition", 'attachment; filename="afml-cache.tar"')
            self.send_header("Cache-Control", "no-store")
            self.end_headers()
            with archive.open("rb") as file:
                shutil.copyfileobj(file, self.wfile, _EXPORT_CHUNK)

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
