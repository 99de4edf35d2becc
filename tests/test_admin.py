"""`afml-cache serve --admin`: the write endpoints, fetched with a real HTTP client (urllib) from
a server on 127.0.0.1 and a free port, in a thread and as `afml-cache serve --admin` in a
subprocess. No token: 401, a wrong one: 403, and nothing changes (the entries' files stay on
disk); the right one: the entries are gone, the archive imports, the warm-up ran. The token
file: made 0600 on first use, refused when others can read it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers.entry_bytes import Located, locate

import afml_cache
from afml_cache.cache import Cache
from afml_cache.errors import CacheError
from afml_cache.server import Admin, CacheServer, admin_token, make_server

TIMEOUT_S = 30
TOKEN = "s3cret-token-" + "x" * 20


class Served:
    """A cache with two functions' entries (one of them tagged ``daily``), and an admin server
    of it in a thread with one registered warm-up."""

    def __init__(self, directory: Path, admin: bool = True) -> None:
        self.cache = Cache(directory)
        self.warmed: list[int] = []

        @afml_cache.robust_cacheable(cache=self.cache, tags=("daily",))
        def cube(x: int) -> int:
            return x**3

        # What it computed is kept on self, which must not count in its keys.
        @afml_cache.robust_cacheable(cache=self.cache, ignore_globals=("self",))
        def half(x: int) -> float:
            self.warmed.append(x)
            return x / 2

        for x in (1, 2, 3):
            cube(x), half(x)
        self.cube, self.half = cube, half
        warmups = {"grid:halves": lambda: half.warm([(x,) for x in range(6)])}
        self.server: CacheServer = make_server(
            self.cache, "127.0.0.1", 0, admin=Admin(TOKEN, warmups) if admin else None
        )
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()
        self.url = self.server.url.rstrip("/")

    def files(self) -> dict[str, set[tuple[str, Located]]]:
        """Each function's entries on disk (files, or records in packs), by digest."""
        found: dict[str, set[tuple[str, Located]]] = {}
        for f in (self.cube, self.half):
            name = f.__afml_cache__.name
            found[name] = {(e["digest"], self.where(name, e["digest"])) for e in f.cache_entries()}
            assert all(at is not None and at.read()[:6] == b"AFMLCE" for _, at in found[name])
        return found

    def where(self, function: str, digest: str) -> Located | None:
        return locate(self.cache.directory, digest=digest, namespace=function)

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(TIMEOUT_S)


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    running = Served(tmp_path / "cache")
    yield running
    running.stop()


def fetch(url: str, method: str = "GET", token: str | None = TOKEN) -> Any:
    """(status, headers, body) of a request, including error statuses."""
    headers = {} if token is None else {"Authorization": f"Bearer {token}"}
    request = urllib.request.Request(url, method=method, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=TIMEOUT_S) as answer:
            return answer.status, answer.headers, answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.headers, error.read()


WRITES = [
    ("POST", "/admin/clear"),
    ("POST", "/admin/clear?tag=daily"),
    ("POST", "/admin/clear?function={half}"),
    ("DELETE", "/admin/entry?function={half}&digest={digest}"),
    ("POST", "/admin/warm?name=grid:halves"),
    ("GET", "/admin/export"),
]


def written(served: Served, path: str) -> str:
    half = served.half.__afml_cache__.name
    return path.format(half=half, digest=served.half.cache_entries()[0]["digest"])


@pytest.mark.parametrize(("method", "path"), WRITES)
def test_no_token_401_and_wrong_token_403_change_nothing(served, caplog, method, path):
    before = served.files()
    url = served.url + written(served, path)
    caplog.set_level(logging.INFO, logger="afml_cache.admin")
    status, headers, body = fetch(url, method, token=None)
    assert status == 401
    assert headers["WWW-Authenticate"].startswith("Bearer")
    assert b"nothing was changed" in body
    for wrong in ("wrong", TOKEN[:-1], TOKEN + "x"):
        status, _, body = fetch(url, method, token=wrong)
        assert status == 403
        assert body == b"wrong token; nothing was changed\n"
    assert served.files() == before
    assert served.warmed == [1, 2, 3]  # the warm-up did not run
    refused = [r for r in caplog.records if r.name == "afml_cache.admin"]
    assert len(refused) == 4 and all(r.levelno == logging.WARNING for r in refused)


def test_clear_by_tag_removes_only_the_tagged_entries(served, caplog):
    cube, half = served.cube.__afml_cache__.name, served.half.__afml_cache__.name
    before = served.files()
    caplog.set_level(logging.INFO, logger="afml_cache.admin")
    status, _, body = fetch(served.url + "/admin/clear?tag=daily", "POST")
    assert (status, json.loads(body)["entries_removed"]) == (200, 3)
    after = served.files()
    assert after == {cube: set(), half: before[half]}
    assert not any(served.where(cube, digest) for digest, _ in before[cube])
    assert "removed 3 entries tagged 'daily'" in caplog.text


@pytest.mark.parametrize(
    "query",
    ["?tag=", "?function=", "?tag=%20", "?tags=daily", "?Function=x", "?tag=a&tag=b", "?all=1"],
)
def test_a_clear_with_an_empty_or_unknown_parameter_changes_nothing(served, query):
    # `?tag=$TAG` with TAG unset, or a misspelt name, fell back to removing every entry.
    before = served.files()
    status, _, body = fetch(served.url + "/admin/clear" + query, "POST")
    assert status == 400 and body.endswith(b"; nothing was changed\n"), body
    assert served.files() == before


def test_clear_one_function(served):
    cube, half = served.cube.__afml_cache__.name, served.half.__afml_cache__.name
    before = served.files()
    status, _, body = fetch(served.url + f"/admin/clear?function={half}", "POST")
    assert (status, json.loads(body)["entries_removed"]) == (200, 3)
    assert served.files() == {cube: before[cube], half: set()}
    status, _, body = fetch(served.url + "/admin/clear?function=no.such", "POST")
    assert status == 404 and b"no cached function is named 'no.such'" in body


def test_clear_everything(served):
    before = served.files()
    status, _, body = fetch(served.url + "/admin/clear", "POST")
    assert (status, json.loads(body)["entries_removed"]) == (200, 6)
    assert all(not paths for paths in served.files().values())
    assert not any(served.where(f, digest) for f, found in before.items() for digest, _ in found)
    assert all(row.calls == 0 for row in served.cache.function_stats())  # statistics too


def test_delete_one_entry(served):
    half = served.half.__afml_cache__.name
    entries = served.half.cache_entries()
    gone = entries[0]
    status, _, _ = fetch(
        served.url + f"/admin/entry?function={half}&digest={gone['digest']}", "DELETE"
    )
    assert status == 200
    assert served.where(half, gone["digest"]) is None
    assert {e["digest"] for e in served.half.cache_entries()} == {e["digest"] for e in entries[1:]}
    status, _, body = fetch(
        served.url + f"/admin/entry?function={half}&digest={gone['digest']}", "DELETE"
    )
    assert status == 404 and b"has no entry" in body
    status, _, body = fetch(served.url + f"/admin/entry?function={half}&digest=../x", "DELETE")
    assert status == 400 and b"64 lowercase hex digits" in body


def test_warm_runs_the_registered_warm_up(served):
    status, _, body = fetch(served.url + "/admin/warm?name=grid:halves", "POST")
    assert status == 200
    document = json.loads(body)
    assert document["failed"] == 0
    [report] = document["reports"]
    assert (report["computed"], report["already_cached"]) == (3, 3)
    assert sorted(served.warmed) == [0, 1, 2, 3, 4, 5]  # 1, 2, 3 computed once, before
    assert [served.half(x) for x in range(6)] == [x / 2 for x in range(6)]
    assert sorted(served.warmed) == [0, 1, 2, 3, 4, 5]
    status, _, body = fetch(served.url + "/admin/warm?name=other", "POST")
    assert status == 404 and b"registered: grid:halves" in body


def test_export_answers_an_archive_that_imports(served, tmp_path):
    listed = {(e.namespace, e.digest) for e in served.cache.scan(None)}
    status, headers, body = fetch(served.url + "/admin/export")
    assert (status, headers["Content-Type"]) == (200, "application/x-tar")
    archive = tmp_path / "export.tar"
    archive.write_bytes(body)
    elsewhere = Cache(tmp_path / "elsewhere")
    assert elsewhere.import_(archive) == 6
    assert {(e.namespace, e.digest) for e in elsewhere.scan(None)} == listed
    status, _, body = fetch(
        served.url + f"/admin/export?function={served.half.__afml_cache__.name}"
    )
    assert status == 200
    archive.write_bytes(body)
    assert Cache(tmp_path / "again").import_(archive) == 3


def test_without_admin_the_write_endpoints_are_off(tmp_path):
    running = Served(tmp_path / "cache", admin=False)
    try:
        before = running.files()
        status, _, body = fetch(running.url + "/admin/clear", "POST")
        assert status == 405 and b"serve --admin" in body
        status, _, body = fetch(running.url + "/admin/export")
        assert status == 404 and b"serve --admin" in body
        assert running.files() == before
    finally:
        running.stop()


def test_the_token_file_is_made_0600_once_and_refused_when_others_can_read_it(tmp_path):
    path = tmp_path / "config" / "afml-cache" / "admin.token"
    token = admin_token(path)
    assert len(token) >= 32
    assert os.stat(path).st_mode & 0o777 == 0o600
    assert os.stat(path.parent).st_mode & 0o777 == 0o700
    assert admin_token(path) == token  # made once, read after
    path.chmod(0o644)
    with pytest.raises(CacheError, match=r"mode 0644\); make it yours only: chmod 600"):
        admin_token(path)


def test_a_token_file_others_could_swap_is_refused(tmp_path):
    # In a directory others can write, another user could put a file holding their own token
    # in its place between the check and the read (won 5,601 of 20,000 tries before).
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)
    with pytest.raises(CacheError, match=r"directory .*shared can be written by others"):
        admin_token(shared / "admin.token")
    mine = tmp_path / "mine"
    mine.mkdir(mode=0o700)
    real = mine / "real.token"
    token = admin_token(real)
    (mine / "link.token").symlink_to(real)  # a link passes a check that follows it
    with pytest.raises(CacheError, match="not a symbolic link"):
        admin_token(mine / "link.token")
    assert admin_token(real) == token


# --- `afml-cache serve --admin` in a subprocess ------------------------------------------------


def test_serve_admin_prints_the_token_file_and_logs_every_change(tmp_path):
    served = Served(tmp_path / "cache", admin=False)
    served.stop()
    token_file = tmp_path / "admin.token"
    child = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "afml_cache.cli",
            "serve",
            "--dir",
            str(tmp_path / "cache"),
            "--port",
            "0",
            "--admin",
            "--token-file",
            str(token_file),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert child.stdout is not None
        first, second = child.stdout.readline(), child.stdout.readline()
        url = re.search(r"at (http://127\.0\.0\.1:\d+)/", first)
        assert url is not None, first
        assert second == f"afml-cache: admin endpoints on; the token is in {token_file}\n"
        token = token_file.read_text().strip()
        assert fetch(url.group(1) + "/admin/clear?tag=daily", "POST", token="no")[0] == 403
        status, _, body = fetch(url.group(1) + "/admin/clear?tag=daily", "POST", token=token)
        assert (status, json.loads(body)["entries_removed"]) == (200, 3)
    finally:
        child.send_signal(signal.SIGTERM)
        _, err = child.communicate(timeout=TIMEOUT_S)
    assert child.returncode == 0, err
    assert "refused POST /admin/clear?tag=... from" in err  # values hidden: a token may be there
    assert "removed 3 entries tagged 'daily'" in err
    assert token not in err  # the token is never logged
