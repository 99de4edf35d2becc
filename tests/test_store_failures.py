"""The store never kills or blocks the user's process: a full filesystem is an error, not a
SIGBUS; a forked child holds none of its parent's locks; the shared counters stay equal to what
is on disk while processes write and evict at the same time."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers.entry_bytes import bytes_on_disk, stored

from afml_cache import Cache, StoreError, fingerprint

needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a tmpfs)")


# --- a full filesystem --------------------------------------------------------------------------


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    """A 1 MB tmpfs mounted at ``where`` for the block."""
    where.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(where)], check=True)
    try:
        yield where
    finally:
        subprocess.run(["umount", str(where)], check=True)


def fill(filesystem: Path, free_pages: int) -> None:
    """Fills a filesystem with one-page files until exactly ``free_pages`` pages are free."""
    filler = filesystem / "filler"
    filler.mkdir()
    page = os.sysconf("SC_PAGE_SIZE")
    for i in range(100_000):
        try:
            (filler / str(i)).write_bytes(b"x" * page)
        except OSError:
            (filler / str(i)).unlink(missing_ok=True)
            break
    for i in range(free_pages):
        (filler / str(i)).unlink()


@needs_root
def test_a_new_cache_on_a_full_filesystem_is_a_store_error_not_a_crash(run_python, tmp_path):
    with tmpfs(tmp_path / "fs") as fs:
        fill(fs, free_pages=1)  # room for mac.key, none for the counters
        out = run_python(
            f"""
            import afml_cache
            try:
                afml_cache.Cache({str(fs / "cache")!r})
                print("opened")
            except afml_cache.StoreError as exc:
                print("StoreError", exc.errno)
            """
        )
    assert out.split() == ["StoreError", "28"]  # ENOSPC


@needs_root
@pytest.mark.parametrize("free_pages", [1, 4])
def test_decorated_calls_on_a_full_filesystem_compute_and_return(run_python, tmp_path, free_pages):
    """One free page: the new directory cannot be used (one warning, uncached). Four: the key,
    the counters, the entry and the function's name fit; the function's counters do not."""
    with tmpfs(tmp_path / "fs") as fs:
        fill(fs, free_pages)
        out = run_python(
            f"""
            import warnings, afml_cache
            afml_cache.configure(directory={str(fs / "cache")!r})
            calls = []

            @afml_cache.cacheable
            def double(x):
                calls.append(x)
                return 2 * x

            with warnings.catch_warnings(record=True) as warned:
                warnings.simplefilter("always")
                print(double(4), double(4), len(calls))
            print(len(warned), [str(w.message) for w in warned])
            """
        )
    results, warned = out.splitlines()
    if free_pages == 1:
        assert results.split() == ["8", "8", "2"]
        assert warned.startswith("1 ") and "cannot be used" in warned
    else:
        assert results.split() == ["8", "8", "1"]
        assert warned == "0 []"


# --- fork ---------------------------------------------------------------------------------------


FORKED_CHILD = """
import os, subprocess, sys, threading, numpy as np, afml_cache
directory, how = sys.argv[1], sys.argv[2]
cache = afml_cache.Cache(directory)
key = afml_cache.fingerprint("k")
lock = cache.by_digest.lock(key, 0)
if how == "writing behind":
    writing, may_finish = threading.Event(), threading.Event()

    def behind(*outcome, lock=lock):  # on the writer thread, the entry on disk, the lock held
        writing.set()
        may_finish.wait()
        lock.release()

    cache.by_digest.put(key, np.arange(1_000_000), behind=behind)
    del lock
    writing.wait()
read, write = os.pipe()
child = os.fork()
if child == 0:  # a long-lived child: a pool worker, a server
    os.close(write)
    os.read(read, 1)
    mine = afml_cache.Cache(directory).by_digest.lock(key, 0)
    os._exit(0 if mine is not None else 3)
os.close(read)
if how == "writing behind":
    may_finish.set()
    afml_cache.flush_writes()
else:
    lock.release()
code = f"import afml_cache; print(afml_cache.Cache({directory!r}).by_digest.lock({key!r}, 0))"
other = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
os.write(write, b"x")
_, status = os.waitpid(child, 0)
print("held" if other.stdout.strip() == "None" else "free", os.waitstatus_to_exitcode(status))
"""


@pytest.mark.parametrize("how", ["writing behind", "computing"])
def test_a_forked_child_holds_none_of_its_parents_locks(tmp_path, how):
    """A child forked while the parent holds a key's lock shares the lock's open file: once the
    parent releases it, another process (and the child itself) takes the key at once."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(FORKED_CHILD), str(tmp_path / "cache"), how],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    ).stdout
    assert out.split() == ["free", "0"]


KILLED_PARENT = """
import os, signal, sys, time, afml_cache
lock = afml_cache.Cache(sys.argv[1]).by_digest.lock(afml_cache.fingerprint("k"), 0)
child = os.fork()
if child == 0:
    quiet = os.open(os.devnull, os.O_WRONLY)
    os.dup2(quiet, 1)
    os.dup2(quiet, 2)
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""


def test_the_lock_of_a_killed_parent_is_free_while_its_forked_child_lives(tmp_path):
    directory = tmp_path / "cache"
    killed = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(KILLED_PARENT), str(directory)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert killed.returncode == -signal.SIGKILL
    child = int(killed.stdout)
    try:
        held = Cache(directory).by_digest.lock(fingerprint("k"), 0)
        assert held is not None
        held.release()
    finally:
        os.kill(child, signal.SIGKILL)


# --- counters under concurrent eviction ---------------------------------------------------------

CHURN = """
import os, sys, numpy as np
from afml_cache import Cache, fingerprint
cache = Cache(sys.argv[1], size_limit="256KB", memory_limit=1)
rng = np.random.default_rng(int(sys.argv[2]))
for i in range(400):
    key = int(rng.integers(0, 80))
    if i % 9 == 0:
        cache.delete(key)
    else:
        cache.set(key, rng.bytes(int(rng.integers(2_000, 12_000))))
"""


def test_shared_counters_equal_the_files_on_disk_after_concurrent_writes_and_evictions(
    tmp_path,
):
    directory = tmp_path / "cache"
    Cache(directory)
    workers = [
        subprocess.Popen([sys.executable, "-c", textwrap.dedent(CHURN), str(directory), str(seed)])
        for seed in range(4)
    ]
    assert [w.wait(timeout=300) for w in workers] == [0, 0, 0, 0]
    stats = Cache(directory).stats()
    assert stats["evictions"] > 0
    # Values of 2 to 12 KB: some entries packed, some in files of their own.
    assert stats["count"] == len(stored(directory))
    assert stats["bytes"] == bytes_on_disk(directory)


# --- what stands where only entries belong ----------------------------------------------------


def test_a_dangling_link_in_place_of_a_namespace_is_a_store_error_not_a_crash(run_python, tmp_path):
    # A cleanup script, or a scratch disk not mounted: creating the entry's directory met
    # "not found" under a parent that exists, and called itself until the stack overflowed.
    directory = tmp_path / "cache"
    out = run_python(f"""
        import os, shutil
        from afml_cache import Cache, StoreError
        cache = Cache({str(directory)!r})
        cache.set("a", b"x" * 10_000)
        namespace = {str(directory / "entries" / "default")!r}
        shutil.rmtree(namespace)
        os.symlink({str(tmp_path / "nowhere")!r}, namespace)
        try:
            cache.set("b", b"y" * 10_000)
        except StoreError as exc:
            print("StoreError", "cannot create the directory" in str(exc))
        """)
    assert out.split() == ["StoreError", "True"]


def test_a_pipe_in_place_of_an_entry_neither_blocks_nor_hides_from_health(run_python, tmp_path):
    directory = tmp_path / "cache"
    out = run_python(
        f"""
        import os, warnings
        import afml_cache
        from afml_cache import Cache, StoreError
        cache = Cache({str(directory)!r})
        cache.set("big", b"x" * 10_000)
        (entry,) = [os.path.join(d, f) for d, _, fs in os.walk({str(directory / "entries")!r})
                    for f in fs if f.endswith(".afc")]
        os.remove(entry)
        os.mkfifo(entry)
        fresh = Cache({str(directory)!r})
        try:
            fresh.get("big")
        except StoreError as exc:
            print("get: StoreError", "not a regular file" in str(exc))
        problems = fresh.check()
        print("check:", [p["path"] == entry and "not a regular" in p["problem"] for p in problems])
        print("left by check():", os.path.exists(entry))
        fresh.check(fix=True)
        print("fixed:", os.path.exists(entry), fresh.check())
        """,
        timeout=60,
    )
    assert out.splitlines() == [
        "get: StoreError True",
        "check: [True]",
        "left by check(): True",  # only --fix removes it
        "fixed: False []",
    ]


def test_health_finds_nothing_wrong_while_another_process_writes(tmp_path):
    # Every check during ordinary writes reported the writer's temp files and the entries it
    # deleted between the listing and the read; none is a problem.
    directory = tmp_path / "cache"
    cache = Cache(directory)
    for k in range(50):
        cache.set(k, b"v" * 20_000)
    writer = subprocess.Popen(
        [
            sys.executable,
            "-c",
            textwrap.dedent(f"""
            from afml_cache import Cache
            cache = Cache({str(directory)!r})
            print("writing", flush=True)
            for i in range(1_000_000):
                cache.set(i % 50, b"v" * (20_000 + i % 7))
                if i % 3 == 0:
                    cache.delete(i % 50)
            """),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert writer.stdout is not None and writer.stdout.readline() == "writing\n"
        found = []
        for _ in range(20):
            found.extend(Cache(directory).check())
        assert writer.poll() is None, "the writer stopped before the checks ended"
        assert found == []
    finally:
        writer.kill()
        writer.communicate()


@needs_root
def test_a_cache_on_a_read_only_mount_still_serves_its_entries(run_python, tmp_path):
    # A team's cache published read-only: opening its counters for writing failed, so the
    # whole cache was unusable and every call computed.
    directory, mount = tmp_path / "cache", tmp_path / "read-only"
    job = """
        import warnings
        import numpy as np
        from afml_cache import Cache, robust_cacheable

        @robust_cacheable
        def f(n):
            return np.full(n, 3)

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print([int(f(n).sum()) for n in (10, 100_000)], f.cache_info()["cache_hits"])
            print(Cache(AT).get("k"), len(caught))
        """
    run_python(
        f"AT = {str(directory)!r}\n" + textwrap.dedent(job) + "Cache(AT).set('k', 'v')",
        env={"AFML_CACHE_DIR": str(directory)},
    )
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        out = run_python(
            f"AT = {str(mount)!r}\n" + textwrap.dedent(job), env={"AFML_CACHE_DIR": str(mount)}
        )
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert out.splitlines() == ["[30, 300000] 2", "v 0"]


# --- the counters file replaced, a key file that is no file ---------------------------------------


def test_a_counters_file_deleted_under_a_running_process_does_not_keep_old_values(
    run_python, tmp_path
):
    # The memory tier trusts a copy while the shared generation counter stands still; with the
    # stats file deleted, this process watched the old one and returned v1 for good.
    directory = tmp_path / "cache"
    reader = Cache(directory)
    reader.set("k", "v1")
    assert reader.get("k") == "v1"  # now in the memory tier
    (directory / "stats").unlink()
    run_python(f"from afml_cache import Cache; Cache({str(directory)!r}).set('k', 'v2')")
    seen = [reader.get("k") for _ in range(200) if not time.sleep(0.01)]
    assert seen[-1] == "v2" and set(seen) <= {"v1", "v2"}


@pytest.mark.parametrize("how", ["removed", "emptied"])
def test_a_counters_file_made_anew_counts_the_entries_already_there(tmp_path, how):
    # A restore from backup, `: > stats` or `rm stats`: the entries on disk were never counted
    # again, so reports said 0 entries and the cache stayed far over its size limit for good.
    import numpy as np

    directory = tmp_path / "cache"
    limit = 2 * 2**20
    cache = Cache(directory, size_limit=limit, compression="none")
    for i in range(20):
        cache.set(("a", i), np.random.default_rng(i).random(12_000))
    before = cache.stats()
    assert before["count"] == 20
    del cache
    if how == "removed":
        (directory / "stats").unlink()
    else:
        (directory / "stats").write_bytes(b"")
    cache = Cache(directory, size_limit=limit, compression="none")
    assert (cache.stats()["count"], cache.stats()["bytes"]) == (20, before["bytes"])
    for i in range(20, 80):
        cache.set(("a", i), np.random.default_rng(i).random(12_000))
    on_disk = sum(e.size for e in cache.scan())
    assert on_disk <= limit
    assert (cache.stats()["count"], cache.stats()["bytes"]) == (len(cache.scan()), on_disk)


@pytest.mark.parametrize("kind", ["directory", "fifo", "dangling link"])
def test_a_counters_file_that_is_no_file_says_to_remove_it(tmp_path, kind):
    # Cache() raised "Is a directory", "Illegal seek" or "No such file" (a dangling link).
    directory = tmp_path / "cache"
    Cache(directory).set("k", "v")
    stats = directory / "stats"
    stats.unlink()
    if kind == "directory":
        stats.mkdir()
    elif kind == "fifo":
        os.mkfifo(stats)
    else:
        stats.symlink_to(tmp_path / "nowhere")
    with pytest.raises(StoreError, match=r"stats: not a regular file .*remove it and the counters"):
        Cache(directory)
    if stats.is_dir():
        stats.rmdir()
    else:
        stats.unlink()
    assert Cache(directory).get("k") == "v"
    assert Cache(directory).stats()["count"] == 1


@pytest.mark.parametrize("where", ["pack lock", "locks directory", "evict lock"])
def test_health_finds_and_fix_removes_what_stands_where_a_lock_belongs(tmp_path, where):
    # A directory where a pack's lock file belongs failed every small set of its shard, and
    # check() said nothing was wrong.
    directory = tmp_path / "cache"
    cache = Cache(directory)
    cache.set("k", "v")
    (lock,) = (directory / "locks" / "packs" / "default").glob("*.lock")
    place = {
        "pack lock": lock,
        "locks directory": directory / "locks",
        "evict lock": directory / "evict.lock",
    }[where]
    if place.is_dir():
        subprocess.run(["rm", "-rf", str(place)], check=True)
        place.write_text("")  # a file where the locks' directory belongs
    else:
        place.unlink(missing_ok=True)
        place.mkdir()
    (problem,) = cache.check(fix=True)
    assert problem["path"] == str(place) and problem["fixed"]
    assert "not what belongs among the locks" in problem["problem"]
    cache.set("k", "v2")
    assert Cache(directory).get("k") == "v2"
    assert cache.check() == []


def test_a_namespace_named_like_a_lock_is_no_misplaced_lock(tmp_path):
    # `utils.lock` (a function `lock` of a module `utils`) holds its packs' locks in a
    # directory of that name: health --fix removed it, with the locks a writer may hold.
    directory = tmp_path / "cache"
    cache = Cache(directory).namespaced("utils.lock")
    for i in range(5):
        cache.set(i, i)
    assert cache.check(fix=True) == []
    assert len(list((directory / "locks" / "packs" / "utils.lock").glob("*.lock"))) > 0


@needs_root
def test_health_reports_a_directory_it_cannot_list_and_checks_the_rest() -> None:
    # The check stopped at the first such directory with a traceback (root lists any, so the
    # cache's owner here is another user), checking nothing else.
    import json
    import pwd
    import shutil
    import tempfile

    nobody = pwd.getpwnam("nobody")
    base = Path(tempfile.mkdtemp(prefix="afml-unlistable-"))  # under /tmp: every user reaches it
    base.chmod(0o755)
    os.chown(base, nobody.pw_uid, nobody.pw_gid)
    directory = base / "cache"
    script = f"""
import json, os, sys
import numpy as np
from afml_cache import Cache  # before: that user cannot read this interpreter's packages
os.setgroups([]); os.setresgid({nobody.pw_gid}, {nobody.pw_gid}, {nobody.pw_gid})
os.setresuid({nobody.pw_uid}, {nobody.pw_uid}, {nobody.pw_uid})
cache = Cache({str(directory)!r})
if sys.argv[1] == "fill":
    for i in range(8):
        cache.set(("k", i), np.random.default_rng(i).random(100_000))  # files, not packed
else:
    print(json.dumps(cache.check()))
"""

    def run(step: str) -> str:
        done = subprocess.run(
            [sys.executable, "-c", script, step], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr
        return done.stdout

    try:
        run("fill")
        hidden = next(p for p in (directory / "entries" / "default").iterdir() if p.is_dir())
        hidden.chmod(0o000)
        (problem,) = json.loads(run("check"))
    finally:
        shutil.rmtree(base)
    assert problem["path"] == str(hidden) and not problem["fixed"]
    assert problem["problem"].startswith("cannot list: Permission denied")
    assert "chmod 700" in problem["problem"]


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_a_key_file_that_is_no_file_is_refused_without_blocking(run_python, tmp_path, kind):
    # mac.key was read with a plain blocking read: a pipe hung every call and command, and a
    # link to /dev/zero read until memory ran out.
    directory = tmp_path / "cache"
    (directory / "entries").mkdir(parents=True, mode=0o700)
    directory.chmod(0o700)
    if kind == "fifo":
        os.mkfifo(directory / "mac.key", 0o600)
    else:
        (directory / "mac.key").symlink_to("/dev/zero")
    out = run_python(
        """
        import warnings
        from afml_cache import robust_cacheable

        @robust_cacheable
        def f(x):
            return x + 1

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            print(f(1), f(1), len(caught), "mac.key" in str(caught[0].message))
        """,
        env={"AFML_CACHE_DIR": str(directory)},
        timeout=60,
    )
    assert out.split() == ["2", "2", "1", "True"]
    done = subprocess.run(
        [sys.executable, "-m", "afml_cache.cli", "stats", "--dir", str(directory)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 3 and "not a 32-byte key" in done.stderr


@needs_root
def test_a_read_only_mount_sees_writes_made_elsewhere_and_warns_once_a_function(
    run_python, tmp_path
):
    # Its counters are private: the memory tier trusted its copies for good (a value set
    # through the writable path never showed), a miss warned twice (lock, then store), and
    # calls were not counted (functions/ is read-only too).
    directory, mount = tmp_path / "cache", tmp_path / "read-only"
    Cache(directory).set("k", "v1")
    mount.mkdir()
    subprocess.run(["mount", "--bind", str(directory), str(mount)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(mount)], check=True)
        reader = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(f"""
                import sys, warnings
                from afml_cache import Cache, configure, robust_cacheable

                configure(directory={str(mount)!r})
                cache = Cache({str(mount)!r})
                print(cache.get("k"), flush=True)
                sys.stdin.readline()
                print(cache.get("k"), flush=True)

                @robust_cacheable
                def f(x):
                    return x * 2

                @robust_cacheable
                def g(x):
                    return x * 3

                with warnings.catch_warnings(record=True) as caught:
                    warnings.simplefilter("always")
                    results = [f(1), f(1), g(1), g(1)]
                print(results, len(caught), f.cache_info()["total_calls"], flush=True)
                """),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert reader.stdin is not None and reader.stdout is not None
        assert reader.stdout.readline() == "v1\n"
        Cache(directory).set("k", "v2")
        out, _ = reader.communicate("go\n", timeout=120)
    finally:
        subprocess.run(["umount", str(mount)], check=True)
    assert out.splitlines() == ["v2", "[2, 2, 3, 3] 2 2"]


@pytest.mark.parametrize("which", ["stats", "functions"])
def test_a_counters_file_truncated_under_a_running_process_does_not_kill_it(tmp_path, which):
    # The counters are a mapped file: truncated under a running process (a backup copied over
    # the directory, `: > stats`), its next update touched a page that no longer existed, and
    # the kernel killed the process with SIGBUS.
    directory = tmp_path / "cache"
    looping = textwrap.dedent(f"""
        import os, afml_cache
        afml_cache.configure(directory={str(directory)!r})

        @afml_cache.robust_cacheable
        def f(x):
            return x * 2

        assert f(1) == 2
        print("running", flush=True)
        n = 0
        while n % 1000 or not os.path.exists({str(tmp_path / "stop")!r}):
            assert f(n % 50) == (n % 50) * 2
            n += 1
        print("survived", afml_cache.Cache({str(directory)!r}).get("missing", "ok"), flush=True)
        """)
    process = subprocess.Popen(
        [sys.executable, "-c", looping], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True
    )
    assert process.stdout is not None and process.stdout.readline() == "running\n"
    time.sleep(0.2)
    targets = (
        [directory / "stats"] if which == "stats" else list(directory.glob("functions/*.stats"))
    )
    assert targets
    for target in targets:
        os.truncate(target, 0)
    time.sleep(0.2)
    (tmp_path / "stop").write_text("stop")
    out, _ = process.communicate(timeout=120)
    assert (process.returncode, out) == (0, "survived ok\n")
