"""Cached functions defined in ``__main__``: a script run with ``python script.py``.

Such a function travels to worker processes by value (cloudpickle, as loky and Dask pickle
``__main__`` functions) at any time, even after it has been called, and rebuilds its runtime
state where it lands; functions of importable modules keep travelling by reference. Two scripts
that define a function of the same name are two functions: each has its own entries and
statistics, and maintenance run from one never removes the other's entries.

Each script runs in a fresh interpreter; its cached functions count their computations by
appending a line to a file (an ignored argument), so counting lines counts computations.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import cloudpickle
import pytest
from conftest import SUBPROCESS_TIMEOUT_S
from helpers import decorated
from helpers.entry_bytes import stored


def run_script(path: Path, source: str, cache: Path, *args: str) -> dict[str, Any]:
    """Writes ``source`` to ``path``, runs it as a script with the cache in ``cache``, and
    returns the JSON object it prints last."""
    path.write_text(textwrap.dedent(source))
    env = {**os.environ, "AFML_CACHE_DIR": str(cache)}
    env.pop("AFML_CACHE_DISABLE", None)
    proc = subprocess.run(
        [sys.executable, str(path), *args],
        capture_output=True,
        text=True,
        env=env,
        cwd=path.parent,
        timeout=SUBPROCESS_TIMEOUT_S,
    )
    assert proc.returncode == 0, f"{path.name} failed:\n{proc.stdout}\n{proc.stderr}"
    return json.loads(proc.stdout.strip().splitlines()[-1])


def computed(counter: Path) -> list[int]:
    return sorted(int(x) for x in counter.read_text().split()) if counter.exists() else []


# A script's cached function, called once, then mapped over workers that get it by value.
PARALLEL = """
    import json
    import multiprocessing
    import sys

    import joblib

    from afml_cache import robust_cacheable

    COUNTER = sys.argv[1]


    def offset():
        return 1


    @robust_cacheable(ignore=("counter",))
    def square(x, counter):
        with open(counter, "a") as fh:
            fh.write(f"{x}\\n")
        return x * x + offset()


    if __name__ == "__main__":
        first = square(3, COUNTER)
        cached = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x, COUNTER) for x in range(6))
        again = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x, COUNTER) for x in range(6))
        # By reference: a spawned process imports this script as __mp_main__.
        with multiprocessing.get_context("spawn").Pool(2) as pool:
            spawned = pool.starmap(square, [(x, COUNTER) for x in range(6)])
        uncached = [square.uncached(x, "/dev/null") for x in range(6)]
        print(json.dumps({
            "first": first,
            "cached": cached,
            "again": again,
            "spawned": spawned,
            "uncached": uncached,
        }))
"""


def test_workers_run_a_script_function_after_it_was_called(tmp_path: Path) -> None:
    counter = tmp_path / "computed.txt"
    out = run_script(tmp_path / "sweep.py", PARALLEL, tmp_path / "cache", str(counter))
    assert out["first"] == 10
    expected = [x * x + 1 for x in range(6)]
    assert out["cached"] == out["again"] == out["spawned"] == out["uncached"] == expected
    # The workers share the script's entries: 3 was computed by the script only, and the
    # second sweep and the spawned processes computed nothing.
    assert computed(counter) == [0, 1, 2, 3, 4, 5]


DASK = """
    import json
    import sys

    from dask.distributed import Client, LocalCluster

    from afml_cache import robust_cacheable

    COUNTER = sys.argv[1]


    @robust_cacheable(ignore=("counter",))
    def cube(x, counter):
        with open(counter, "a") as fh:
            fh.write(f"{x}\\n")
        return x**3


    if __name__ == "__main__":
        first = cube(2, COUNTER)
        with LocalCluster(
            n_workers=2, threads_per_worker=1, processes=True, dashboard_address="127.0.0.1:0"
        ) as cluster, Client(cluster) as client:
            cached = client.gather(client.map(cube, range(5), counter=COUNTER, pure=False))
            again = client.gather(client.map(cube, range(5), counter=COUNTER, pure=False))
        print(json.dumps({"first": first, "cached": cached, "again": again}))
"""


def test_dask_workers_run_a_script_function_after_it_was_called(tmp_path: Path) -> None:
    counter = tmp_path / "computed.txt"
    out = run_script(tmp_path / "grid.py", DASK, tmp_path / "cache", str(counter))
    assert out["first"] == 8
    assert out["cached"] == out["again"] == [x**3 for x in range(5)]
    assert computed(counter) == [0, 1, 2, 3, 4]


def test_a_called_script_function_pickles_by_value_and_rebuilds_its_state(
    tmp_path: Path,
) -> None:
    source = """
        import json
        import pickle
        import sys

        import cloudpickle

        from afml_cache import robust_cacheable

        COUNTER = sys.argv[1]


        @robust_cacheable(ignore=("counter",))
        def double(x, counter):
            with open(counter, "a") as fh:
                fh.write(f"{x}\\n")
            return 2 * x


        if __name__ == "__main__":
            double(21, COUNTER)
            payload = cloudpickle.dumps(double)
            copy = pickle.loads(payload)
            engine = copy.__afml_cache__
            print(json.dumps({
                "name": engine.name == double.__afml_cache__.name,
                "fresh": engine is not double.__afml_cache__,
                "hit": copy(21, COUNTER),
                "miss": copy(5, COUNTER),
                "info": copy.cache_info()["cache_hits"],
            }))
    """
    counter = tmp_path / "computed.txt"
    out = run_script(tmp_path / "clone.py", source, tmp_path / "cache", str(counter))
    assert out == {"name": True, "fresh": True, "hit": 42, "miss": 10, "info": 1}
    assert computed(counter) == [5, 21]


def test_a_script_function_with_its_own_cache_finds_it_where_it_lands(tmp_path: Path) -> None:
    source = """
        import json
        import sys

        import joblib

        from afml_cache import Cache, robust_cacheable

        COUNTER, OWN = sys.argv[1], sys.argv[2]


        @robust_cacheable(ignore=("counter",), cache=Cache(OWN, size_limit="64MB"))
        def negate(x, counter):
            with open(counter, "a") as fh:
                fh.write(f"{x}\\n")
            return -x


        if __name__ == "__main__":
            negate(1, COUNTER)
            values = joblib.Parallel(n_jobs=2)(
                joblib.delayed(negate)(x, COUNTER) for x in [1, 2, 2, 3]
            )
            print(json.dumps(values))
    """
    counter, own = tmp_path / "computed.txt", tmp_path / "own-cache"
    out = run_script(tmp_path / "own.py", source, tmp_path / "cache", str(counter), str(own))
    assert out == [-1, -2, -2, -3]
    assert computed(counter) == [1, 2, 3]  # single flight: one worker computes 2, one reads
    assert not (tmp_path / "cache" / "entries").exists()  # only the function's own cache
    assert len(stored(own)) == 3


def test_functions_of_importable_modules_still_pickle_by_reference(
    cache_dir: Path, tmp_path: Path
) -> None:
    counter = str(tmp_path / "computed.txt")
    assert decorated.square(4, counter) == 16  # after a call, as in the scripts above
    for dumps in (pickle.dumps, cloudpickle.dumps):
        payload = dumps(decorated.square)
        assert b"helpers.decorated" in payload and len(payload) < 200
        assert pickle.loads(payload) is decorated.square


# Two programs with a `load_data` of their own; the second argument says whether to run the
# maintenance that removes entries of code that has changed.
LOADER = """
    import json
    import sys

    from afml_cache import maintain_cache, robust_cacheable, smart_cache_clear

    COUNTER, MAINTAIN = sys.argv[1], sys.argv[2] == "maintain"


    @robust_cacheable(ignore=("counter",))
    def load_data(n, counter):
        with open(counter, "a") as fh:
            fh.write(f"{n}\\n")
        return [STEP * i for i in range(n)]


    if __name__ == "__main__":
        data = load_data(3, COUNTER)
        removed = []
        if MAINTAIN:
            removed.append(smart_cache_clear()["entries_removed"])
            removed.append(maintain_cache()["entries_removed"])
        info = load_data.cache_info()
        print(json.dumps({
            "data": data,
            "uncached": load_data.uncached(3, "/dev/null"),
            "removed": removed,
            "name": load_data.__afml_cache__.name,
            "stats": [info["total_calls"], info["cache_hits"], info["cache_misses"]],
        }))
"""


def test_two_scripts_functions_of_one_name_keep_their_own_entries(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first, second = tmp_path / "a" / "prepare.py", tmp_path / "b" / "prepare.py"
    counter_a, counter_b = tmp_path / "a.txt", tmp_path / "b.txt"
    sources = {first: LOADER.replace("STEP", "1"), second: LOADER.replace("STEP", "10")}
    for script in sources:
        script.parent.mkdir()

    a = run_script(first, sources[first], cache, str(counter_a), "keep")
    b = run_script(second, sources[second], cache, str(counter_b), "maintain")
    again = run_script(first, sources[first], cache, str(counter_a), "keep")

    assert a["data"] == a["uncached"] == again["data"] == [0, 1, 2]
    assert b["data"] == b["uncached"] == [0, 10, 20]
    # The second script's maintenance left the first's entry alone: the rerun was a hit.
    assert b["removed"] == [0, 0]
    assert computed(counter_a) == [3] and computed(counter_b) == [3]
    assert a["name"] == again["name"] == f"__main__[{first}].load_data"
    assert b["name"] == f"__main__[{second}].load_data"
    assert again["stats"] == [2, 1, 1] and b["stats"] == [1, 0, 1]


def main_function(namespace: dict[str, Any], module: str = "__main__") -> Any:
    """A cached ``load_data`` defined in ``namespace``, as a cell or a script defines it."""
    code = "from afml_cache import robust_cacheable\n"
    code += "@robust_cacheable\ndef load_data(n):\n    return list(range(n))\n"
    defined = {"__name__": module, **namespace}
    exec(code, defined)
    return defined["load_data"]


@pytest.mark.parametrize(
    ("namespace", "path"),
    [
        ({"__vsc_ipynb_file__": "/home/ana/vs.ipynb", "__session__": "/x"}, "/home/ana/vs.ipynb"),
        ({"__session__": "/home/ana/lab.ipynb", "__file__": "/x.py"}, "/home/ana/lab.ipynb"),
        ({"__file__": "/home/ana/run.py"}, "/home/ana/run.py"),
    ],
)
def test_a_main_function_is_named_by_the_path_its_namespace_gives(
    namespace: dict[str, str], path: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ana/other.ipynb")
    fn = main_function(namespace)
    assert fn.__afml_cache__.name == f"__main__[{path}].load_data"


def test_a_main_function_is_named_by_the_kernels_notebook_or_not_at_all(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv("JPY_SESSION_NAME", raising=False)
    assert main_function({}).__afml_cache__.name == "__main__.load_data"  # a REPL, python -c
    monkeypatch.setenv("JPY_SESSION_NAME", "/home/ana/lab.ipynb")
    assert main_function({}).__afml_cache__.name == "__main__[/home/ana/lab.ipynb].load_data"


def test_a_script_imported_by_a_spawned_process_keeps_its_name() -> None:
    # multiprocessing's spawn runs the script again as __mp_main__.
    namespace = {"__file__": "/home/ana/run.py"}
    spawned = main_function(namespace, module="__mp_main__")
    assert spawned.__afml_cache__.name == main_function(namespace).__afml_cache__.name


# A script function reaching a helper module the workers import by name, whose copy in the
# script's process was changed after import (an attribute set; a file edited and reloaded).
IMPORTED = """
    import importlib
    import json
    import pathlib
    import sys
    import time

    import joblib

    from afml_cache import cacheable

    HERE = pathlib.Path(__file__).resolve().parent
    (HERE / "helpers_mod.py").write_text("SCALE = 1\\ndef smooth(x):\\n    return x * SCALE\\n")
    sys.path.insert(0, str(HERE))
    import helpers_mod


    @cacheable
    def f(x):
        return helpers_mod.smooth(x)


    if __name__ == "__main__":
        helpers_mod.SCALE = 3  # the workers import the file: theirs is 1
        swept = joblib.Parallel(n_jobs=2)(joblib.delayed(f)(x) for x in range(1, 5))
        cached = [f(x) for x in range(1, 5)]
        print(json.dumps({
            "swept": swept,
            "cached": cached,
            "uncached": [f.uncached(x) for x in range(1, 5)],
        }))
"""


def test_workers_whose_imported_helpers_differ_keep_their_results_apart(tmp_path: Path) -> None:
    # A worker keyed what it computed with its own copy of helpers_mod (SCALE = 1) under the
    # script's fingerprint (SCALE = 3): the script then read [1, 2, 3, 4] for [3, 6, 9, 12].
    out = run_script(tmp_path / "sweep.py", IMPORTED, tmp_path / "cache")
    assert out["swept"] == [1, 2, 3, 4]  # what the workers' copy computes
    assert out["cached"] == out["uncached"] == [3, 6, 9, 12]


# A script that configures its cache in its main block, which loky's workers never run.
CONFIGURED = """
    import json
    import sys

    import joblib

    import afml_cache
    from afml_cache import robust_cacheable

    COUNTER = sys.argv[1]


    @robust_cacheable(ignore=("counter",))
    def square(x, counter):
        with open(counter, "a") as fh:
            fh.write(f"{x}\\n")
        return x * x


    if __name__ == "__main__":
        afml_cache.configure(directory=sys.argv[2])
        swept = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x, COUNTER) for x in range(4))
        here = [square(x, COUNTER) for x in range(4)]  # hits: the workers wrote here
        afml_cache.configure(enabled=False)
        off = joblib.Parallel(n_jobs=2)(joblib.delayed(square)(x, COUNTER) for x in range(4))
        afml_cache.configure(enabled=True)
        # The same workers, reused: a function of an importable module caches there again.
        import sweep_helpers
        for _ in range(2):
            joblib.Parallel(n_jobs=2)(
                joblib.delayed(sweep_helpers.cube)(x, sys.argv[4]) for x in range(3)
            )
        print(json.dumps({"swept": swept, "here": here, "off": off}))
"""


def test_workers_cache_where_the_script_configured_and_not_once_it_turned_caching_off(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The workers used their own default directory (AFML_CACHE_DIR here), where the script
    # never looked, and kept caching after configure(enabled=False).
    counter, configured = tmp_path / "computed.txt", tmp_path / "configured"
    helpers, cubes = tmp_path / "helpers", tmp_path / "cubes.txt"
    helpers.mkdir()
    (helpers / "sweep_helpers.py").write_text(
        textwrap.dedent("""
        from afml_cache import robust_cacheable

        @robust_cacheable(ignore=("counter",))
        def cube(x, counter):
            with open(counter, "a") as fh:
                fh.write(f"{x}\\n")
            return x**3
        """)
    )
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(helpers), *sys.path])))
    out = run_script(
        tmp_path / "sweep.py",
        CONFIGURED,
        tmp_path / "default",
        str(counter),
        str(configured),
        str(helpers),
        str(cubes),
    )
    assert out["swept"] == out["here"] == out["off"] == [0, 1, 4, 9]
    assert computed(counter) == [0, 0, 1, 1, 2, 2, 3, 3]  # the sweep, then uncached: twice
    assert stored(configured)
    # Turning caching off reached only the functions sent then, not the workers for good.
    assert computed(cubes) == [0, 1, 2]


def test_loading_a_function_pickled_elsewhere_leaves_this_process_settings(tmp_path: Path) -> None:
    # Unpickling a script's function rewrote the loading process's settings with the script's
    # (its directory, caching off): the process's own functions ran uncached from then on.
    pickled = tmp_path / "pipeline.pkl"
    run_script(
        tmp_path / "save.py",
        """
        import json
        import sys

        import cloudpickle

        import afml_cache

        @afml_cache.robust_cacheable
        def feature(x):
            return x * 2

        afml_cache.configure(directory=sys.argv[1], enabled=False)
        with open(sys.argv[2], "wb") as fh:
            cloudpickle.dump(feature, fh)
        print(json.dumps({}))
        """,
        tmp_path / "cache",
        str(tmp_path / "elsewhere"),
        str(pickled),
    )
    loaded = run_script(
        tmp_path / "load.py",
        """
        import json
        import pickle
        import sys

        import afml_cache
        from afml_cache import config

        @afml_cache.robust_cacheable
        def own(x):
            return x + 1

        before = [config.cache_enabled(), str(config.CACHE_DIRS["base"])]
        with open(sys.argv[1], "rb") as fh:
            feature = pickle.load(fh)
        after = [config.cache_enabled(), str(config.CACHE_DIRS["base"])]
        print(json.dumps({
            "before": before,
            "after": after,
            "results": [feature(2), own(1), own(1)],
            "hits": own.cache_info()["cache_hits"],
        }))
        """,
        tmp_path / "cache",
        str(pickled),
    )
    assert loaded["before"] == loaded["after"] == [True, str(tmp_path / "cache")]
    assert (loaded["results"], loaded["hits"]) == ([4, 2, 2], 1)


CHAIN = """
    import json
    import pickle
    import sys

    import cloudpickle

    import afml_cache

    @afml_cache.robust_cacheable
    def square(x):
        return x * x

    if __name__ == "__main__":
        step, here = sys.argv[1], sys.argv[2]
        if step == "origin":
            afml_cache.configure(directory=here + "/origin", enabled=False)
            sent = square
        else:
            with open(here + "/" + step + ".pkl", "rb") as fh:
                sent = pickle.load(fh)
        results = [sent(3), sent(3)]
        with open(here + "/" + {"origin": "first", "first": "second"}.get(step, "x") + ".pkl",
                  "wb") as fh:
            cloudpickle.dump(sent, fh)
        info = sent.cache_info()
        print(json.dumps({"results": results, "calls": info["total_calls"]}))
"""


def test_a_function_sent_on_by_a_worker_keeps_its_senders_settings(tmp_path: Path) -> None:
    # A worker that sent the function on sent its own caching state: the origin's
    # configure(enabled=False) was lost at the second hop, which cached into its directory.
    here = str(tmp_path)
    for step in ("origin", "first", "second"):
        out = run_script(tmp_path / "chain.py", CHAIN, tmp_path / "cache", step, here)
        assert out == {"results": [9, 9], "calls": 0}, step  # run uncached at every hop
    assert stored(tmp_path / "origin") == [] and stored(tmp_path / "cache") == []
