"""A process forked after the parent hashed or stored in parallel must not hang: it inherits
rayon's bookkeeping but none of its threads (multiprocessing's "fork" start method, joblib and
Dask fork workers)."""

from __future__ import annotations


def test_a_forked_child_fingerprints_and_stores_large_values_after_the_parent_did(
    run_python, tmp_path
):
    out = run_python(
        f"""
        import os, numpy as np, afml_cache
        big = np.arange(4_000_000, dtype=np.float64)     # 32 MB: hashed and compressed in parallel
        cache = afml_cache.Cache({str(tmp_path / "cache")!r})
        parent = afml_cache.fingerprint(big)
        cache.set("parent", big)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            child = afml_cache.fingerprint(big)
            cache.set("child", big + 1)
            back = afml_cache.Cache({str(tmp_path / "cache")!r}, memory_limit=1).get("child")
            ok = child == parent and bool((back == big + 1).all())
            os.write(write, b"ok" if ok else b"wrong")
            os._exit(0)
        os.close(write)
        os.waitpid(pid, 0)
        print(os.read(read, 16).decode())
        """,
        timeout=120,
    )
    assert out.strip() == "ok"


def test_a_child_forked_while_the_parent_holds_the_caches_locks_runs(run_python, tmp_path):
    # Another thread of the parent inside the cache at the fork (a thread pool of cached
    # loaders beside a fork Pool): the child inherits the locks it held, which nothing in the
    # child releases. Held here by the forking thread itself, so the child meets each for sure.
    out = run_python(
        f"""
        import os, afml_cache
        from afml_cache import backtest_runs, cache, config

        afml_cache.configure(directory={str(tmp_path / "cache")!r})

        @afml_cache.cacheable
        def double(x):
            return [x * 2]

        double(1)
        entries = double.__afml_cache__.cache()._entries
        held = [entries.memory._lock, entries._accesses._lock, config._lock]
        held += [cache._OPENED_LOCK, backtest_runs._global_lock]
        for lock in held:
            lock.acquire()
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(read)
            afml_cache.configure(directory={str(tmp_path / "cache")!r})
            ok = double(1) == [2] and double(2) == [4] and double(2) == [4]
            afml_cache.flush_writes()
            os.write(write, b"ok" if ok else b"wrong")
            os._exit(0)
        os.close(write)
        for lock in held:
            if lock.locked():
                lock.release()
        print(os.read(read, 16).decode())
        os.waitpid(pid, 0)
        """,
        timeout=60,
    )
    assert out.strip() == "ok"


def test_children_forked_while_threads_use_the_cache_run(run_python, tmp_path):
    # The same with the core's own locks (a pack's index, the counters), which another thread
    # takes and releases with the GIL released: a race, so many forks; 2 children in 100 hung.
    out = run_python(
        f"""
        import os, threading, time, afml_cache

        afml_cache.configure(directory={str(tmp_path / "cache")!r})

        @afml_cache.cacheable
        def small(i):
            return i * 2

        stop = threading.Event()
        def work(seed):
            k = 0
            while not stop.is_set():
                small(seed * 1_000_000 + k)
                small(seed * 1_000_000 + k // 2)
                k += 1

        threads = [threading.Thread(target=work, args=(s,), daemon=True) for s in range(3)]
        for t in threads:
            t.start()
        time.sleep(0.2)
        stuck = 0
        for n in range(60):
            pid = os.fork()
            if pid == 0:
                ok = small(7) == 14 and small(10**9 + n) == 2 * (10**9 + n)
                os._exit(0 if ok else 1)
            deadline = time.time() + 20
            while not (done := os.waitpid(pid, os.WNOHANG))[0]:
                if time.time() > deadline:
                    stuck += 1
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                    break
                time.sleep(0.005)
            else:
                assert os.waitstatus_to_exitcode(done[1]) == 0
        stop.set()
        print("stuck", stuck)
        """,
        timeout=600,
    )
    assert out.strip() == "stuck 0"


def test_a_child_forked_while_a_result_is_written_behind_reads_the_disk(run_python, tmp_path):
    # The parent's writer writes what it had queued; the child cannot tell when, nor that the
    # parent cleared it since: it reads the disk, never a copy kept as pending.
    source = tmp_path / "source.txt"
    out = run_python(
        f"""
        import os, numpy as np, afml_cache
        afml_cache.configure(directory={str(tmp_path / "cache")!r})
        source = {str(source)!r}
        open(source, "w").write("1")

        @afml_cache.robust_cacheable
        def feature(n):
            return np.full(n, float(open(source).read()))  # 8 MB: written behind

        feature(1_000_000)
        read, write = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.read(read, 1)
            os.write(write, str(feature(1_000_000)[0]).encode())
            os._exit(0)
        afml_cache.flush_writes()
        open(source, "w").write("2")  # the vendor revised the data, and the user clears
        afml_cache.Cache({str(tmp_path / "cache")!r}).clear()
        os.write(write, b"x")
        os.waitpid(pid, 0)
        print(os.read(read, 16).decode())
        """,
        timeout=120,
    )
    assert out.strip() == "2.0"
