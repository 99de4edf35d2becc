"""Values that could make a naive walker loop forever or exhaust memory get a clear error."""

from __future__ import annotations

import resource
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import afml_cache
from afml_cache import FingerprintError


def test_an_object_array_that_contains_itself_is_a_cycle():
    arr = np.empty(2, dtype=object)
    arr[0] = 1
    arr[1] = arr
    with pytest.raises(FingerprintError, match=r"contains itself.*\(at obj\[1\]\)"):
        afml_cache.fingerprint(arr)


def test_a_cache_key_that_returns_new_objects_of_its_own_kind_is_refused():
    class Endless:
        def __cache_key__(self):
            return Endless()

    with pytest.raises(FingerprintError, match="nested more than 200000 levels"):
        afml_cache.fingerprint(Endless())


def test_a_value_nested_100_000_deep_is_fingerprinted():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    shallower: list = []
    for _ in range(99_999):
        shallower = [shallower]
    assert afml_cache.fingerprint(deep) != afml_cache.fingerprint(shallower)


def test_a_value_nested_100_000_deep_is_fingerprinted_on_a_thread_with_a_small_stack():
    deep: list = []
    for _ in range(100_000):
        deep = [deep]
    digests: list[str] = []
    previous = threading.stack_size(256 * 1024)
    try:
        worker = threading.Thread(target=lambda: digests.append(afml_cache.fingerprint(deep)))
        worker.start()
        worker.join()
    finally:
        threading.stack_size(previous)
    assert digests == [afml_cache.fingerprint(deep)]


@pytest.mark.skipif(shutil.which("setarch") is None, reason="needs setarch (util-linux)")
def test_a_deep_value_on_a_small_thread_stack_after_the_stack_limit_was_raised():
    # The walker trusts the main thread's stack down to half of RLIMIT_STACK, capped: a limit
    # raised after exec does not move other mappings away, and without address randomisation a
    # thread's stack lies 128 MiB below the main one, inside "half of 1 GiB" (it crashed so).
    script = textwrap.dedent(
        """
        import resource, threading
        resource.setrlimit(
            resource.RLIMIT_STACK, (1 << 30, resource.getrlimit(resource.RLIMIT_STACK)[1])
        )
        import afml_cache

        deep = []
        for _ in range(100_000):
            deep = [deep]
        digests = []
        threading.stack_size(256 * 1024)
        worker = threading.Thread(target=lambda: digests.append(afml_cache.fingerprint(deep)))
        worker.start()
        worker.join()
        print(digests == [afml_cache.fingerprint(deep)])
        """
    )
    hard = resource.getrlimit(resource.RLIMIT_STACK)[1]
    if hard != resource.RLIM_INFINITY and hard < 1 << 30:
        pytest.skip("the hard stack limit is below 1 GiB")
    run = subprocess.run(
        ["setarch", "-R", sys.executable, "-c", script], capture_output=True, text=True
    )
    assert (run.returncode, run.stdout.strip()) == (0, "True"), run.stderr[-2000:]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/io")
def test_the_first_fingerprint_of_a_process_does_not_scan_its_memory_map():
    # The stack-overflow guard once asked glibc where the main thread's stack ends, which reads
    # /proc/self/maps a kilobyte at a time: ~100 reads with numpy and pandas loaded.
    script = textwrap.dedent(
        """
        import numpy, pandas
        import afml_cache

        def reads():
            with open("/proc/self/io") as io:
                return int(next(line for line in io if line.startswith("syscr")).split()[1])

        before = reads()
        afml_cache.fingerprint({"window": [1, 2.5, "close"]})
        print(reads() - before)
        """
    )
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert int(run.stdout) < 20, run.stdout


def test_an_error_inside_a_cache_key_names_the_type_and_keeps_the_cause():
    class Broken:
        def __cache_key__(self):
            raise ValueError("no key today")

    with pytest.raises(
        FingerprintError, match=r"Broken raised ValueError: no key today \(at obj\[0\]\)"
    ) as info:
        afml_cache.fingerprint([Broken()])
    assert isinstance(info.value.__cause__, ValueError)
