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
