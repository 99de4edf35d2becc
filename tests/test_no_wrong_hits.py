"""A hit is never wrong: everything a cached result depends on is in its key (issue 9).

Each test runs a real decorated function, changes something its result depends on (a global, a
closure cell, a class, a function passed in), calls it again and compares the cached result with
the uncached computation. Notebook code is imitated with ``exec`` in a namespace named
``__main__``; module code is written to a temporary directory and imported from there.
"""

from __future__ import annotations

import collections
import functools
import itertools
import os
import random
import subprocess
import sys
import textwrap
import threading
import types
import uuid
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import afml_cache

Loader = Callable[..., types.ModuleType]


class Notebook:
    """Cells run one after the other in one ``__main__`` namespace, as in Jupyter."""

    def __init__(self) -> None:
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.cells = itertools.count()

    def run(self, cell: str) -> None:
        name = f"<ipython-input-{next(self.cells)}-{uuid.uuid4().hex[:8]}>"
        exec(compile(textwrap.dedent(cell), name, "exec"), self.namespace)

    def __getitem__(self, name: str) -> Any:
        return self.namespace[name]


def same(got: Any, want: Any) -> None:
    if isinstance(got, pd.DataFrame):
        pd.testing.assert_frame_equal(got, want)
    elif isinstance(got, pd.Series):
        pd.testing.assert_series_equal(got, want)
    elif isinstance(got, pd.Index):
        pd.testing.assert_index_equal(got, want)
    else:
        np.testing.assert_equal(got, want)


def check(f: Any, *args: Any, **kwargs: Any) -> Any:
    """Call the decorated ``f`` and assert its result equals the uncached computation."""
    got = f(*args, **kwargs)
    same(got, f.uncached(*args, **kwargs))
    return got


def hits(f: Any) -> int:
    return int(f.cache_info()["cache_hits"])


# --- globals ------------------------------------------------------------------------------------


def test_a_global_dict_edited_in_a_cell_is_a_miss(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import numpy as np
    from afml_cache import cacheable

    CONFIG = {"window": 2}

    @cacheable
    def smooth(x):
        return np.convolve(x, np.ones(CONFIG["window"]), "valid")
    """)
    x = np.arange(10.0)
    check(nb["smooth"], x)
    nb.run('CONFIG["window"] = 3')
    check(nb["smooth"], x)
    nb.run('CONFIG["window"] = 2')
    check(nb["smooth"], x)
    assert hits(nb["smooth"]) == 1


def test_a_module_array_edited_in_place_is_a_miss(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import numpy as np
    from afml_cache import cacheable

    WEIGHTS = np.array([1.0, 2.0, 3.0])

    @cacheable
    def score(x):
        return float(WEIGHTS @ x)
    """)
    x = np.ones(3)
    assert check(module.score, x) == 6.0
    module.WEIGHTS[0] = 10.0
    assert check(module.score, x) == 15.0


def test_params_edited_on_disk_are_a_miss_after_a_restart(cache_dir: Path, tmp_path: Path) -> None:
    source = textwrap.dedent("""
    from afml_cache import cacheable

    PARAMS = {"k": 1.0}

    @cacheable
    def scaled(x):
        return x * PARAMS["k"]
    """)
    run = Restarts(tmp_path, cache_dir, "research_params", "scaled(2.0)")
    assert run(source) == "2.0"
    assert run(source) == "2.0"
    assert run(source.replace('{"k": 1.0}', '{"k": 3.0}')) == "6.0"


class Restarts:
    """Writes a module to a project directory and prints one call of it in a new interpreter
    each time, as a user editing code between runs of a script."""

    def __init__(self, tmp_path: Path, cache_dir: Path, module: str, call: str) -> None:
        self.directory = tmp_path / "project"
        self.directory.mkdir()
        self.file = self.directory / f"{module}.py"
        self.script = f"import {module}; print({module}.{call})"
        self.env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}

    def __call__(self, source: str) -> str:
        self.file.write_text(source)
        done = subprocess.run(
            [sys.executable, "-c", self.script],
            cwd=self.directory,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr  # what failed, not only that it did
        return done.stdout.strip()


@pytest.mark.parametrize(
    ("setup", "before", "after"),
    [
        (
            "import dataclasses\n"
            "@dataclasses.dataclass(frozen=True)\n"
            "class Config:\n    window: int\n",
            "Config(window=20)",
            "Config(window=50)",
        ),
        (
            "import typing\nclass Config(typing.NamedTuple):\n    window: int\n",
            "Config(20)",
            "Config(50)",
        ),
        ("import datetime\n", "datetime.date(2020, 1, 20)", "datetime.date(2020, 2, 19)"),
        ("import numpy as np\n", "np.int64(20)", "np.int64(50)"),
        ("import pandas as pd\n", 'pd.Timestamp("2020-01-20")', 'pd.Timestamp("2020-02-19")'),
    ],
    ids=["frozen-dataclass", "namedtuple", "date", "np.int64", "pd.Timestamp"],
)
def test_an_immutable_global_rebound_in_a_cell_is_a_miss(
    cache_dir: Path, setup: str, before: str, after: str
) -> None:
    nb = Notebook()
    nb.run(setup)
    nb.run(f"CFG = {before}")
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def f(x):
        return repr(CFG) + str(x)
    """)
    first = check(nb["f"], 1)
    nb.run(f"CFG = {after}")
    second = check(nb["f"], 1)
    assert first != second
    nb.run(f"CFG = {before}")
    check(nb["f"], 1)
    assert hits(nb["f"]) == 1


# Globals with no fingerprint rule until they had one: the setup, the value with a hole for one
# of two arguments (which give different results), and what the cached function returns.
NAMESPACE_PATTERN_OPERATOR = {
    "SimpleNamespace": (
        "import types",
        "types.SimpleNamespace(window={})",
        (2, 5),
        "CFG.window * x",
    ),
    "argparse.Namespace": (
        "import argparse",
        "argparse.Namespace(window={})",
        (2, 5),
        "CFG.window * x",
    ),
    "re-flags": ("import re", 're.compile("a+", {})', (0, "re.I"), 'len(CFG.findall("aAa" * x))'),
    "re-pattern": ("import re", "re.compile({!r})", ("a+", "a*"), 'len(CFG.findall("ab" * x))'),
    "itemgetter": ("import operator", "operator.itemgetter({})", (0, 1), "CFG([x, 2 * x])"),
    "attrgetter": (
        "import operator",
        "operator.attrgetter({!r})",
        ("real", "imag"),
        "CFG(complex(x, 2 * x))",
    ),
    "methodcaller": (
        "import operator",
        'operator.methodcaller("count", {})',
        (1, 2),
        "CFG([1, 2, 2, 2, x])",
    ),
    "methodcaller-kwargs": (
        "import operator",
        'operator.methodcaller("split", maxsplit={})',
        (1, 2),
        'len(CFG("a b c d" * x))',
    ),
}


@pytest.mark.parametrize("kind", list(NAMESPACE_PATTERN_OPERATOR))
def test_a_namespace_pattern_or_operator_global_rebound_in_a_cell_is_a_miss(
    cache_dir: Path, kind: str
) -> None:
    setup, template, values, use = NAMESPACE_PATTERN_OPERATOR[kind]
    before, after = (template.format(v) for v in values)
    nb = Notebook()
    nb.run(setup)
    nb.run(f"CFG = {before}")
    nb.run(f"""
    from afml_cache import cacheable

    @cacheable
    def f(x):
        return {use}
    """)
    first = check(nb["f"], 1)
    nb.run(f"CFG = {after}")
    second = check(nb["f"], 1)
    assert first != second
    nb.run(f"CFG = {before}")
    check(nb["f"], 1)
    assert hits(nb["f"]) == 1


@pytest.mark.parametrize("namespace", ["types.SimpleNamespace", "argparse.Namespace"])
def test_a_namespace_edited_in_place_is_a_miss(cache_dir: Path, namespace: str) -> None:
    nb = Notebook()
    nb.run(f"""
    import argparse, types
    from afml_cache import cacheable

    cfg = {namespace}(window=2)

    @cacheable
    def f(x):
        return cfg.window * x
    """)
    assert check(nb["f"], 3) == 6
    nb.run("cfg.window = 5")
    assert check(nb["f"], 3) == 15
    nb.run("cfg.window = 2")
    assert check(nb["f"], 3) == 6
    assert hits(nb["f"]) == 1


def test_a_tuple_of_helpers_counts_their_code(cache_dir: Path) -> None:
    nb = Notebook()
    helper = "def clip(x):\n    return min(x, 1)\n"
    nb.run(helper)
    nb.run("STEPS = (clip,)")
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def run(x):
        for step in STEPS:
            x = step(x)
        return x
    """)
    assert check(nb["run"], 5) == 1
    nb.run(helper.replace("min(x, 1)", "min(x, 2)"))
    nb.run("STEPS = (clip,)")
    assert check(nb["run"], 5) == 2


def test_a_dict_of_helpers_counts_their_code(cache_dir: Path) -> None:
    nb = Notebook()
    helper = "def clip(x):\n    return min(x, 1)\n"
    nb.run(helper)
    nb.run('STEPS = {"clip": clip}')
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def run(x):
        return STEPS["clip"](x)
    """)
    assert check(nb["run"], 5) == 1
    nb.run(helper.replace("min(x, 1)", "min(x, 2)"))
    nb.run('STEPS["clip"] = clip')
    assert check(nb["run"], 5) == 2


@pytest.mark.filterwarnings("ignore:afml_cache. __main__.Momentum has no fingerprint rule")
def test_a_registry_of_strategy_objects_counts_their_classes_code(cache_dir: Path) -> None:
    # Each a wrong hit before: the dict and the list counted their objects' state and class
    # name, not what the class's methods do.
    nb = Notebook()
    strategy = """
    import dataclasses

    class Momentum:
        def __init__(self, n):
            self.n = n

        def signal(self, x):
            return x * self.n

    @dataclasses.dataclass
    class Reversal:
        n: int
        sign = 1

        def signal(self, x):
            return -x * self.n * self.sign
    """
    nb.run(strategy)
    nb.run('STRATEGIES = {"mom": Momentum(3)}\nFEATURES = [Reversal(2)]')
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def run(name, x):
        return STRATEGIES[name].signal(x)

    @cacheable
    def run_all(x):
        return [f.signal(x) for f in FEATURES]
    """)
    assert (check(nb["run"], "mom", 1), check(nb["run_all"], 1)) == (3, [-2])
    nb.run(strategy.replace("x * self.n\n", "x * self.n * 10\n").replace("sign = 1", "sign = -1"))
    nb.run('STRATEGIES["mom"] = Momentum(3)\nFEATURES[0] = Reversal(2)')  # in place
    assert (check(nb["run"], "mom", 1), check(nb["run_all"], 1)) == (30, [2])
    assert (check(nb["run"], "mom", 1), check(nb["run_all"], 1)) == (30, [2])
    assert (hits(nb["run"]), hits(nb["run_all"])) == (1, 1)


def test_a_bound_method_passed_in_counts_its_class_code(cache_dir: Path, tmp_path: Path) -> None:
    # `evaluate(model.signal, 1)`: only a helper method of the class is edited between runs.
    call = "evaluate(strategies.Momentum(3).signal, 1)"
    run = Restarts(tmp_path, cache_dir, "strategies", call)
    source = """
from afml_cache import cacheable

class Momentum:
    def __init__(self, n):
        self.n = n

    def signal(self, x):
        return self._weigh(x)

    def _weigh(self, x):
        return x * self.n * 2

@cacheable
def evaluate(signal, x):
    return signal(x)
"""
    assert run(source) == "6"
    assert run(source.replace("self.n * 2", "self.n * 5")) == "15"


def test_globals_read_through_a_helper_and_a_user_module(cache_dir: Path, load: Loader) -> None:
    cfg = load('PARAMS = {"k": 1.0}\n', name=f"cfg_{uuid.uuid4().hex}")
    module = load(f"""
    import {cfg.__name__} as cfg
    from afml_cache import cacheable

    LEVELS = [1.0]

    def level():
        return LEVELS[0]

    @cacheable
    def f(x):
        return x * cfg.PARAMS["k"] + level()
    """)
    assert check(module.f, 2.0) == 3.0
    cfg.PARAMS["k"] = 3.0
    assert check(module.f, 2.0) == 7.0
    module.LEVELS[0] = 10.0
    assert check(module.f, 2.0) == 16.0


def test_globals_reached_dynamically_count_every_global_of_the_module(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import sys
    from afml_cache import cacheable

    SCALE = 1
    WEIGHTS = [1.0]

    def run_momentum(x):
        return x + 1

    @cacheable
    def by_globals(x):
        return x * globals()["SCALE"]

    @cacheable
    def by_eval(name, x):
        return eval(f"run_{name}")(x) * eval("WEIGHTS")[0]

    @cacheable
    def by_exec(x):
        found = {}
        exec("y = SCALE", None, found)
        return x * found["y"]
    """)
    functions = [nb["by_globals"], nb["by_exec"]]
    for f in functions:
        assert check(f, 2) == 2
    assert check(nb["by_eval"], "momentum", 2) == 3.0
    nb.run("SCALE = 5")
    for f in functions:
        assert check(f, 2) == 10
    nb.run("WEIGHTS[0] = 2.0")
    assert check(nb["by_eval"], "momentum", 2) == 6.0
    nb.run("def run_momentum(x):\n    return x + 2")
    assert check(nb["by_eval"], "momentum", 2) == 8.0
    nb.run("NEW = 1")  # a global added later: the function may read it too
    assert check(nb["by_eval"], "momentum", 2) == 8.0
    assert hits(nb["by_eval"]) == 0
    # Every global counts, so each change above was a miss; unchanged, a hit.
    assert check(nb["by_eval"], "momentum", 2) == 8.0
    for f in [*functions, *functions]:
        assert check(f, 2) == 10
    assert [hits(f) for f in [*functions, nb["by_eval"]]] == [1, 1, 1]


def test_a_user_module_used_as_a_value_counts_by_its_globals(cache_dir: Path, load: Loader) -> None:
    steps = load(
        "def compute_range(x):\n    return x * 2\n\nLEVELS = {'k': 1}\n",
        name=f"steps_{uuid.uuid4().hex}",
    )
    module = load(f"""
    import sys
    import {steps.__name__} as steps
    from afml_cache import cacheable

    SCALE = 1

    @cacheable
    def feature(name, x):
        return getattr(steps, "compute_" + name)(x) + vars(steps)["LEVELS"]["k"]

    @cacheable
    def scaled(x):
        return x * getattr(sys.modules[__name__], "SCALE")
    """)
    assert check(module.feature, "range", 3) == 7
    assert check(module.scaled, 3) == 3
    module.SCALE = 2
    assert check(module.scaled, 3) == 6
    steps.LEVELS["k"] = 2
    assert check(module.feature, "range", 3) == 8
    exec("def compute_range(x):\n    return x * 3\n", vars(steps))
    assert check(module.feature, "range", 3) == 11
    steps.compute_mean = lambda x: x  # an attribute added later
    assert check(module.feature, "mean", 3) == 5
    assert hits(module.feature) == 0
    assert check(module.feature, "range", 3) == 11
    assert check(module.feature, "range", 3) == 11 and hits(module.feature) == 1
    # `scaled` may read any global of its module, `steps` among them, whose names changed.
    assert check(module.scaled, 3) == 6 and hits(module.scaled) == 0
    assert check(module.scaled, 3) == 6 and hits(module.scaled) == 1


def test_the_environment_counts_for_a_function_that_reads_it(
    cache_dir: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "1")
    module = load("""
    import os
    import time
    from os import environ, getenv
    from afml_cache import cacheable

    @cacheable
    def by_environ(x):
        return x * int(os.environ.get("AFML_TEST_LOOKBACK", "1"))

    @cacheable
    def by_getenv(x):
        return x * int(os.getenv("AFML_TEST_LOOKBACK", "1"))

    @cacheable
    def by_names(x):
        return x * int(environ["AFML_TEST_LOOKBACK"]) + int(getenv("AFML_TEST_LOOKBACK"))

    @cacheable
    def by_import(x):
        import os as system
        return x * int(system.environ["AFML_TEST_LOOKBACK"])

    @cacheable
    def by_computed_name(x, suffix):
        return x * int(os.environ["AFML_TEST_" + suffix])

    @cacheable(ignore_globals=('os.environ["AFML_TEST_PAUSE"]',))
    def paused(x):
        time.sleep(float(os.environ.get("AFML_TEST_PAUSE", "0")))
        return x * int(os.environ["AFML_TEST_LOOKBACK"])

    @cacheable(ignore_globals=("os.environ",))
    def told(x):
        return x * int(os.environ["AFML_TEST_LOOKBACK"])

    from os import environ as env, getenv as ge
    ENV = os.environ

    @cacheable
    def by_aliases(x):
        return x * int(env["AFML_TEST_LOOKBACK"]) + int(ge("AFML_TEST_LOOKBACK"))

    @cacheable
    def by_global(x):
        return x * int(ENV.get("AFML_TEST_LOOKBACK", "1"))

    @cacheable
    def by_local_alias(x):
        from os import environ as variables
        return x * int(variables["AFML_TEST_LOOKBACK"])

    @cacheable
    def by_expanding(x):
        return x * int(os.path.expandvars("$AFML_TEST_LOOKBACK"))

    @cacheable
    def unrelated(x):
        return os.path.join("a", str(x))
    """)
    readers = [module.by_environ, module.by_getenv, module.by_names, module.by_import]
    # Under other names (each a wrong hit before): only the first two know the variable.
    named = [module.by_aliases, module.by_global]
    unnamed = [module.by_local_alias, module.by_expanding]
    assert [check(f, 2) for f in named + unnamed] == [3, 2, 2, 2]
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "5")
    assert [check(f, 2) for f in named + unnamed] == [15, 10, 10, 10]
    monkeypatch.setenv("AFML_TEST_UNRELATED", "1")
    assert [check(f, 2) for f in named + unnamed] == [15, 10, 10, 10]
    assert [hits(f) for f in named + unnamed] == [1, 1, 0, 0]
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "1")
    computed = module.by_computed_name
    assert [check(f, 2) for f in readers] == [2, 2, 3, 2]
    assert check(computed, 2, "LOOKBACK") == 2
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "3")
    assert [check(f, 2) for f in readers] == [6, 6, 9, 6]
    assert check(computed, 2, "LOOKBACK") == 6
    # Only the variables a function names count, unless it computes the name.
    monkeypatch.setenv("AFML_TEST_OTHER", "1")
    assert [check(f, 2) for f in readers] == [6, 6, 9, 6]
    assert [hits(f) for f in readers] == [1, 1, 1, 1]
    assert check(computed, 2, "LOOKBACK") == 6 and hits(computed) == 0
    # ignore_globals leaves out one variable, or all of them: the caller's word.
    assert check(module.paused, 2) == 6 and module.told(2) == 6
    monkeypatch.setenv("AFML_TEST_PAUSE", "0.01")
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "4")
    assert check(module.paused, 2) == 8 and module.told(2) == 6
    monkeypatch.setenv("AFML_TEST_PAUSE", "0.02")
    assert check(module.paused, 2) == 8
    assert [hits(module.paused), hits(module.told)] == [1, 1]
    check(module.unrelated, 2)
    monkeypatch.setenv("AFML_TEST_LOOKBACK", "4")
    check(module.unrelated, 2)
    assert hits(module.unrelated) == 1  # reads no variable: the environment does not count


def test_draws_inside_library_calls_count_the_global_generators(
    cache_dir: Path, load: Loader
) -> None:
    # Seeded once at the top of a notebook, then `df.sample()`, a split or a model without
    # random_state: the draw happens inside the library, where no walk of the user's code
    # looks. Each a wrong hit before (the seed-7 call returned the seed-42 result).
    module = load("""
    import random
    import numpy as np
    import pandas as pd
    from sklearn.model_selection import train_test_split
    from afml_cache import cacheable

    BARS = pd.DataFrame({"close": np.arange(10.0)})

    @cacheable
    def bootstrap(n):
        return BARS.sample(n=n)["close"].tolist()

    @cacheable
    def holdout(n):
        train, test = train_test_split(BARS, test_size=n)
        return test["close"].tolist()

    @cacheable
    def shuffled(n):
        return random.sample(range(10), n)  # random's own module draw, read by the walk too

    @cacheable
    def seeded_inside(n):
        np.random.seed(1)
        return BARS.sample(n=n)["close"].tolist()
    """)
    drawing = [module.bootstrap, module.holdout, module.shuffled]
    outcomes = {}
    for seed in (42, 7, 42):
        np.random.seed(seed)
        random.seed(seed)
        got = []
        for f in drawing:
            state = (np.random.get_state(), random.getstate())
            cached = f(3)
            np.random.set_state(state[0])
            random.setstate(state[1])
            assert cached == f.uncached(3), f.__name__
            got.append(cached)
        outcomes.setdefault(seed, got)
        assert got == outcomes[seed]
    assert outcomes[42] != outcomes[7]
    # The first call of each could not know it draws: it stored under the seed's state too.
    assert [hits(f) for f in drawing] == [1, 1, 1]
    # A function that seeds the generator itself does not depend on the state before it.
    np.random.seed(3)
    first = check(module.seeded_inside, 3)
    np.random.seed(4)
    assert check(module.seeded_inside, 3) == first and hits(module.seeded_inside) == 1


def test_a_thread_drawing_from_random_meanwhile_does_not_make_a_function_miss(
    cache_dir: Path,
) -> None:
    # Distributed's threads draw from random's generator all the time: counted, a Dask task
    # that ran long enough was never a hit.
    stop = threading.Event()

    def background() -> None:
        while not stop.is_set():
            random.random()
            stop.wait(0.001)

    @afml_cache.cacheable
    def slow_double(x: int) -> int:
        stop.wait(0.05)
        return 2 * x

    thread = threading.Thread(target=background, daemon=True)
    thread.start()
    try:
        assert [check(slow_double, 1) for _ in range(3)] == [2, 2, 2]
        assert hits(slow_double) == 2
    finally:
        stop.set()
        thread.join()


def test_what_another_thread_changes_while_a_miss_runs_is_not_stored_under_its_key(
    cache_dir: Path, load: Loader, tmp_path: Path
) -> None:
    # The key holds the globals and files as the call began; the function read them later, as
    # another thread had changed them: that result was stored under the first values' key, and
    # every later call with those values (any process, any day) got it.
    module = load("""
    import threading
    from afml_cache import cacheable

    CONFIG = {"window": 20}
    STARTED, EDITED = threading.Event(), threading.Event()

    @cacheable
    def feature(x):
        STARTED.set()
        EDITED.wait(30)
        return x * CONFIG["window"]

    @cacheable
    def load(path):
        STARTED.set()
        EDITED.wait(30)
        return path.read_text()
    """)
    bars = tmp_path / "bars.csv"
    bars.write_text("1\n")

    def race(call: Callable[[], object], edit: Callable[[], None]) -> None:
        module.STARTED.clear()
        module.EDITED.clear()
        thread = threading.Thread(target=call)
        thread.start()
        assert module.STARTED.wait(30)
        edit()
        module.EDITED.set()
        thread.join()

    with pytest.warns(afml_cache.CacheWarning, match="changed while it ran") as caught:
        race(lambda: module.feature(10), lambda: module.CONFIG.update(window=50))
        race(lambda: module.load(bars), lambda: bars.write_text("2\n"))
    said = " ".join(str(w.message) for w in caught)
    assert "the globals it reads" in said and "the files its Path arguments name" in said
    module.CONFIG["window"] = 20
    bars.write_text("1\n")
    assert (check(module.feature, 10), check(module.load, bars)) == (200, "1\n")
    assert (hits(module.feature), hits(module.load)) == (0, 0)
    assert (check(module.feature, 10), check(module.load, bars)) == (200, "1\n")
    assert (hits(module.feature), hits(module.load)) == (1, 1)


def test_a_draw_from_the_global_generator_in_a_thread_pool_is_not_stored(cache_dir: Path) -> None:
    # Which thread drew first decided each result, stored under the seed's state: after
    # np.random.seed(0), noisy(0) returned another thread's draws.
    from concurrent.futures import ThreadPoolExecutor

    gate = threading.Barrier(4)

    @afml_cache.cacheable
    def noisy(i: int) -> float:
        gate.wait(30)  # all four draw at once
        return float(np.random.normal(size=100).sum()) + i

    np.random.seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(noisy, range(4)))
    gate = threading.Barrier(1)
    np.random.seed(0)
    cached = noisy(0)
    np.random.seed(0)
    assert cached == noisy.uncached(0)

    # One that seeds it itself too: another thread may seed between its seed and its draw.
    both = threading.Barrier(2)

    @afml_cache.cacheable
    def seeded(n: int) -> float:
        np.random.seed(n)
        both.wait(30)  # the other seeds now
        return float(np.random.rand(3).sum())

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)
        with ThreadPoolExecutor(2) as pool:
            list(pool.map(seeded, [1, 2]))
    assert seeded.cache_info()["entries"] == 0
    both = threading.Barrier(1)
    assert [seeded(1), seeded(1)] == [seeded.uncached(1)] * 2  # alone: stored, then a hit
    assert seeded.cache_info()["cache_hits"] == 1


def test_a_library_draw_not_seeded_again_warns_once(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import numpy as np
    import pandas as pd
    from afml_cache import cacheable

    BARS = pd.DataFrame({"close": np.arange(10.0)})

    @cacheable
    def bootstrap(n):
        return BARS.sample(n=n)["close"].tolist()
    """)
    np.random.seed(42)
    module.bootstrap(3)
    with pytest.warns(afml_cache.CacheWarning, match="draws from numpy's global random generator"):
        module.bootstrap(3)  # the state the first call left: a miss
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        module.bootstrap(3)
    assert hits(module.bootstrap) == 0


def test_a_lazy_frame_scanning_a_file_counts_the_file(cache_dir: Path, tmp_path: Path) -> None:
    # The morning download rewrites the file under the same path: the plan names the path only
    # (a wrong hit before). A glob's files count too; a remote scan has no fingerprint.
    pl = pytest.importorskip("polars")
    daily = tmp_path / "daily"
    daily.mkdir()
    path = daily / "bars.parquet"

    @afml_cache.cacheable
    def total(frame: Any) -> float:
        return float(frame.select(pl.col("close").sum()).collect().item())

    pl.DataFrame({"close": [1.0, 2.0]}).write_parquet(path)
    assert check(total, pl.scan_parquet(path)) == 3.0
    assert check(total, pl.scan_parquet(str(daily / "*.parquet"))) == 3.0
    pl.DataFrame({"close": [10.0, 20.0]}).write_parquet(path)
    assert check(total, pl.scan_parquet(path)) == 30.0
    pl.DataFrame({"close": [5.0]}).write_parquet(daily / "more.parquet")
    assert check(total, pl.scan_parquet(str(daily / "*.parquet"))) == 35.0
    assert check(total, pl.scan_parquet(path)) == 30.0 and hits(total) == 1
    lazy = pl.LazyFrame({"close": [1.0, 2.0]})  # no file: its plan holds the data, as before
    assert check(total, lazy) == check(total, lazy) == 3.0 and hits(total) == 2
    with pytest.raises(afml_cache.FingerprintError, match=r"s3://bucket/bars\.parquet"):
        afml_cache.fingerprint(pl.scan_parquet("s3://bucket/bars.parquet"))


def test_a_frame_subclass_counts_its_own_attributes(cache_dir: Path, load: Loader) -> None:
    # `_metadata` names what pandas carries along a subclass's frames: `symbol` here, which the
    # fingerprint left out (NQ's bars hit ES's result).
    module = load("""
    import pandas as pd
    from afml_cache import cacheable

    class Bars(pd.DataFrame):
        _metadata = ["symbol"]

        @property
        def _constructor(self):
            return Bars

    def bars(symbol):
        frame = Bars({"close": [1.0, 2.0]})
        frame.symbol = symbol
        return frame

    @cacheable
    def tick_value(frame):
        return {"ES": 12.5, "NQ": 5.0}[frame.symbol] * frame["close"].iloc[-1]
    """)
    assert check(module.tick_value, module.bars("ES")) == 25.0
    assert check(module.tick_value, module.bars("NQ")) == 10.0
    assert check(module.tick_value, module.bars("NQ")) == 10.0 and hits(module.tick_value) == 1


def test_attributes_set_on_a_function_count(cache_dir: Path, load: Loader) -> None:
    # `winsorize.cap = 3.0` between calls kept the result of 2.0 (a wrong hit before).
    module = load("""
    from afml_cache import cacheable

    def winsorize(x):
        return min(x, winsorize.cap) * winsorize.scale["k"]

    winsorize.cap = 2.0
    winsorize.scale = {"k": 10}

    @cacheable
    def feature(x):
        return winsorize(x)
    """)
    assert check(module.feature, 5.0) == 20.0
    module.winsorize.cap = 3.0
    assert check(module.feature, 5.0) == 30.0
    module.winsorize.scale["k"] = 100  # in place
    assert check(module.feature, 5.0) == 300.0
    assert check(module.feature, 5.0) == 300.0 and hits(module.feature) == 1


def test_a_script_reading_its_command_line_counts_it(
    cache_dir: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `python tag.py AAPL`, then `python tag.py MSFT`: sys counted by its version only.
    module = load("""
    import sys
    from afml_cache import cacheable

    @cacheable
    def tag(x):
        return f"{sys.argv[1]}-{x}"
    """)
    monkeypatch.setattr(sys, "argv", ["tag.py", "AAPL"])
    assert check(module.tag, 1) == "AAPL-1"
    monkeypatch.setattr(sys, "argv", ["tag.py", "MSFT"])
    assert check(module.tag, 1) == "MSFT-1"
    assert check(module.tag, 1) == "MSFT-1" and hits(module.tag) == 1


def test_a_single_dispatch_helper_counts_every_implementation(
    cache_dir: Path, tmp_path: Path, load: Loader
) -> None:
    source = textwrap.dedent("""
    import functools
    from afml_cache import cacheable

    @functools.singledispatch
    def scale(x):
        return x

    @scale.register
    def _(x: float):
        return x * 1

    @cacheable
    def feature(x):
        return scale(x)
    """)
    run = Restarts(tmp_path, cache_dir, "research_dispatch", "feature(2.0)")
    assert run(source) == "2.0"
    assert run(source.replace("x * 1", "x * 2")) == "4.0"  # an implementation edited

    module = load(source)
    assert check(module.feature, 2.0) == 2.0
    exec("@scale.register\ndef _(x: float):\n    return x * 3\n", vars(module))
    assert check(module.feature, 2.0) == 6.0  # registered again in the process
    exec("@scale.register\ndef _(x: int):\n    return x * 5\n", vars(module))
    assert check(module.feature, 2) == 10  # a type registered later
    assert check(module.feature, 2.0) == 6.0
    assert check(module.feature, 2.0) == 6.0 and hits(module.feature) == 1


def test_a_single_dispatch_function_held_or_passed_and_a_dispatch_method_count_every_one(
    cache_dir: Path, tmp_path: Path, load: Loader
) -> None:
    # Held in a dict or passed in, the dispatcher counted its default only; a class's
    # singledispatchmethod counted the last `_` its body defines.
    source = textwrap.dedent("""
    import functools
    from afml_cache import cacheable

    @functools.singledispatch
    def scale(x):
        return x

    @scale.register
    def _(x: int):
        return x * 2

    OPS = {"scale": scale}

    class Scaler:
        @functools.singledispatchmethod
        def go(self, x):
            return x

        @go.register
        def _(self, x: int):
            return x * 2

        @go.register
        def _(self, x: str):
            return x + "!"

    @cacheable
    def held(x):
        return OPS["scale"](x)

    @cacheable
    def passed(op, x):
        return op(x)

    @cacheable
    def method(x):
        return Scaler().go(x)

    def calls():
        return held(3), passed(scale, 3), method(3)
    """)
    run = Restarts(tmp_path, cache_dir, "research_dispatch_values", "calls()")
    assert run(source) == "(6, 6, 6)"
    assert run(source.replace("x * 2", "x * 5")) == "(15, 15, 15)"  # the int versions edited

    module = load(source)
    assert [check(module.held, 3), check(module.passed, module.scale, 3)] == [6, 6]
    exec("@scale.register\ndef _(x: int):\n    return x * 7\n", vars(module))
    assert [check(module.held, 3), check(module.passed, module.scale, 3)] == [21, 21]
    assert check(module.method, 3) == 6
    module.Scaler.__dict__["go"].register(int, lambda self, x: x * 9)
    assert check(module.method, 3) == 27


def test_a_library_wrapper_counts_what_it_holds_beside_the_function(
    cache_dir: Path, tmp_path: Path
) -> None:
    # `@scaled(2)` (a @contextmanager helper used as a decorator), `@np.errstate(...)` and a
    # `decorator.decorator` caller counted as "the library's wrapper of helper": their
    # arguments and the caller's code did not, so editing them kept the old result.
    pytest.importorskip("decorator")
    source = textwrap.dedent("""
    import contextlib
    import decorator
    import numpy as np
    from afml_cache import cacheable

    STATE = {"k": 1}

    @contextlib.contextmanager
    def scaled(k):
        k = int(k)  # rebinds its own argument (a cell: the lambda reads it), changes nothing
        old, STATE["k"] = STATE["k"], (lambda: k)()
        try:
            yield
        finally:
            STATE["k"] = old

    @scaled(2)
    def helper(x):
        return x * STATE["k"]

    @np.errstate(divide="ignore")
    def inverse(a):
        return 1.0 / a

    @decorator.decorator
    def times(f, k=1, *args, **kwargs):
        return f(*args, **kwargs) * k * 1

    @times(k=2)
    def plus_one(x):
        return x + 1

    @decorator.decorator
    def weighted(f, weights=(), *args, **kwargs):
        return f(*args, **kwargs) * sum(weights)

    @weighted(weights=[1, 2])
    def weigh(x):
        return x

    @cacheable
    def features(x):
        try:
            inverted = float(inverse(np.array([0.0]))[0])
        except FloatingPointError:
            inverted = "raised"
        return helper(x), inverted, plus_one(x) + weigh(x) - 9

    def calls():
        return features(3)
    """)
    run = Restarts(tmp_path, cache_dir, "research_wrappers", "calls()")
    assert run(source) == "(6, inf, 8)"
    assert run(source.replace("@scaled(2)", "@scaled(5)")) == "(15, inf, 8)"
    edited = source.replace("@scaled(2)", "@scaled(5)").replace('divide="ignore"', 'divide="raise"')
    assert run(edited) == "(15, 'raised', 8)"
    assert run(edited.replace("k * 1", "k * 3")) == "(15, 'raised', 24)"  # the caller's code
    assert run(edited.replace("[1, 2]", "[1, 5]")) == "(15, 'raised', 17)"  # a list argument


def test_a_library_wrapper_holding_state_keys_alike_in_every_process(
    cache_dir: Path, tmp_path: Path
) -> None:
    # A timer used as a decorator keeps its last reading in the object contextlib's wrapper
    # holds; counted by content, every process made a new key (as a rate limiter's clock or a
    # memo's contents did).
    source = textwrap.dedent("""
    import contextlib
    import time
    from afml_cache import cacheable

    class Timer(contextlib.ContextDecorator):
        def __enter__(self):
            self.started = time.perf_counter()
            return self

        def __exit__(self, *exc):
            self.elapsed = time.perf_counter() - self.started
            return False

    @Timer()
    def helper(x):
        return x * 2

    helper(1)

    @cacheable
    def feature(x):
        return helper(x)

    def calls():
        return feature(3), feature.cache_info()["cache_misses"]
    """)
    run = Restarts(tmp_path, cache_dir, "research_timer", "calls()")
    assert run(source) == "(6, 1)"
    assert run(source) == "(6, 1)"  # the misses of every process: no second one
    # ...and the class's own code still counts.
    assert run(source.replace("x * 2", "x * 2 + 0")) == "(6, 2)"
    assert run(source.replace("return False", "return None")) == "(6, 3)"


def test_instances_of_plain_classes_count_by_their_state(cache_dir: Path, load: Loader) -> None:
    module = load("""
    from afml_cache import cacheable

    class Params:
        def __init__(self, window):
            self.window = window

    PARAMS = Params(2)
    STRATEGIES = {"fast": Params(3)}

    @cacheable
    def span(x):
        return x * PARAMS.window + STRATEGIES["fast"].window
    """)
    assert check(module.span, 1) == 5
    module.PARAMS.window = 10
    assert check(module.span, 1) == 13
    module.STRATEGIES["fast"].window = 30
    assert check(module.span, 1) == 40
    assert check(module.span, 1) == 40 and hits(module.span) == 1


def test_a_global_the_call_changes_is_named_once(cache_dir: Path, load: Loader) -> None:
    # A session or a counter read as a global counts by its state, which the call itself
    # changes: every call is a miss. The user hears which global, once, and ignore_globals=
    # makes the calls hit.
    source = """
    from afml_cache import cacheable

    class Session:
        def __init__(self):
            self.requests = 0

        def get(self, x):
            self.requests += 1
            return x * 2

    SESSION = Session()
    CALLS = {"n": 0}

    @cacheable
    def fetch(x):
        CALLS["n"] += 1
        return SESSION.get(x)

    @cacheable(ignore_globals=("SESSION",))
    def fetch_ignoring(x):
        return SESSION.get(x)
    """
    module = load(source)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module.fetch(1) == 2  # it may be the only call: nothing to say yet
    with pytest.warns(afml_cache.CacheWarning) as caught:
        assert module.fetch(1) == 2  # reads them as the first call left them
    assert len(caught) == 1
    assert "changed 'CALLS', 'SESSION' as it ran" in str(caught[0].message)
    assert "ignore_globals=('CALLS', 'SESSION',)" in str(caught[0].message)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module.fetch(1) == 2 and hits(module.fetch) == 0  # warned once only
        assert module.fetch_ignoring(1) == 2
        assert module.fetch_ignoring(1) == 2 and hits(module.fetch_ignoring) == 1


def test_a_vectorized_helper_and_a_partial_method_count_by_what_they_call(
    cache_dir: Path,
) -> None:
    nb = Notebook()
    nb.run("""
    import functools
    import numpy as np
    from afml_cache import cacheable

    def label(x):
        return x + 1

    LABEL = np.vectorize(label)

    class Barrier:
        def width(self, k):
            return k

        narrow = functools.partialmethod(width, 1)

    @cacheable
    def labels(x):
        return LABEL(x)

    @cacheable
    def width(x):
        return Barrier().narrow() * x
    """)
    x = np.arange(3)
    check(nb["labels"], x)
    check(nb["width"], 2)
    nb.run("def label(x):\n    return x + 2\nLABEL = np.vectorize(label)")
    np.testing.assert_equal(check(nb["labels"], x), x + 2)
    nb.run("LABEL = np.vectorize(label, otypes=[float])")
    assert check(nb["labels"], x).dtype == np.float64
    nb.run(
        "class Barrier:\n"
        "    def width(self, k):\n        return k\n"
        "    narrow = functools.partialmethod(width, 3)\n"
    )
    assert check(nb["width"], 2) == 6


def test_a_method_of_a_dict_reads_what_the_dict_holds(cache_dir: Path) -> None:
    # `PARAMS.get` is a builtin method: it counted as "builtin dict.get", its dict not at all.
    nb = Notebook()
    nb.run("""
    import functools
    from afml_cache import cacheable

    PARAMS = {"window": 5}
    GET = PARAMS.get
    RATES = {"ES": 1.0}
    RATE = functools.partial(RATES.get, "ES")

    @cacheable
    def window_of(x):
        return x * GET("window")

    @cacheable
    def value(x):
        return x * RATE()
    """)
    assert (check(nb["window_of"], 2), check(nb["value"], 10)) == (10, 10.0)
    nb.run('PARAMS["window"] = 50\nRATES["ES"] = 2.0')
    assert (check(nb["window_of"], 2), check(nb["value"], 10)) == (100, 20.0)
    assert (check(nb["window_of"], 2), check(nb["value"], 10)) == (100, 20.0)
    assert (hits(nb["window_of"]), hits(nb["value"])) == (1, 1)
    # A method that only writes to its container reads nothing of it, as `LOG.append(x)`.
    nb.run("""
    LOG = []
    record = LOG.append

    @cacheable
    def logged(x):
        record(x)
        return x * 2
    """)
    assert [nb["logged"](3) for _ in range(3)] == [6, 6, 6] and hits(nb["logged"]) == 2


def test_callables_libraries_make_count_by_the_functions_they_hold(cache_dir: Path) -> None:
    # A sort key from `cmp_to_key` and a `toolz.curry` counted by type or by name: the user's
    # function inside, and what it reads, never counted.
    nb = Notebook()
    nb.run("""
    import functools
    import toolz
    from afml_cache import cacheable

    DESCENDING = False
    SCALE = 2

    def compare(a, b):
        return (b - a) if DESCENDING else (a - b)

    def weigh(k, x):
        return k * x * SCALE

    KEY = functools.cmp_to_key(compare)
    WEIGHED = toolz.curry(weigh)(10)

    @cacheable
    def ranked(xs):
        return sorted(xs, key=KEY)

    @cacheable
    def weighed(x):
        return WEIGHED(x)
    """)
    assert (check(nb["ranked"], [3, 1, 2]), check(nb["weighed"], 5)) == ([1, 2, 3], 100)
    nb.run("DESCENDING = True\nSCALE = 3")
    assert (check(nb["ranked"], [3, 1, 2]), check(nb["weighed"], 5)) == ([3, 2, 1], 150)
    nb.run("def weigh(k, x):\n    return k + x\nWEIGHED = toolz.curry(weigh)(10)")
    assert check(nb["weighed"], 5) == 15
    assert check(nb["weighed"], 5) == 15
    assert (hits(nb["ranked"]), hits(nb["weighed"])) == (0, 1)


def test_a_read_only_view_of_a_dict_counts_by_the_dict(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import types
    from afml_cache import cacheable

    _settings = {"window": 5}
    SETTINGS = types.MappingProxyType(_settings)

    @cacheable
    def scaled(x):
        return x * SETTINGS["window"]
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(module.scaled, 2) == 10
        module._settings["window"] = 50
        assert check(module.scaled, 2) == 100
        assert check(module.scaled, 2) == 100
    assert hits(module.scaled) == 1


def test_objects_that_hold_data_but_do_not_pickle_count_by_what_they_hold(
    cache_dir: Path, load: Loader
) -> None:
    # Each counted by its type only: a dict's view, this thread's settings, a registry of weak
    # references, an array's flat iterator.
    module = load("""
    import threading
    import weakref
    import numpy as np
    from afml_cache import cacheable

    WEIGHTS = {"mom": 1.0, "vol": 2.0}
    ACTIVE = WEIGHTS.items()
    SETTINGS = threading.local()
    SETTINGS.scale = 2
    PRICES = np.array([1.0, 2.0])
    FLAT = PRICES.flat

    class Instrument:
        def __init__(self, multiplier):
            self.multiplier = multiplier

    ES = Instrument(50)
    REGISTRY = weakref.WeakValueDictionary({"ES": ES})

    @cacheable
    def score(x):
        return sum(w * x for _, w in ACTIVE)

    @cacheable
    def scaled(x):
        return x * SETTINGS.scale

    @cacheable
    def first(x):
        return x + FLAT[0]

    @cacheable
    def notional(x):
        return x * REGISTRY["ES"].multiplier
    """)
    functions = (module.score, module.scaled, module.first, module.notional)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Instrument goes through its pickle reduction
        assert [check(f, 1.0) for f in functions] == [3.0, 2.0, 2.0, 50.0]
        module.WEIGHTS["vol"] = 10.0
        module.SETTINGS.scale = 5
        module.PRICES[0] = 100.0
        module.ES.multiplier = 20
        assert [check(f, 1.0) for f in functions] == [11.0, 5.0, 101.0, 20.0]
        assert [check(f, 1.0) for f in functions] == [11.0, 5.0, 101.0, 20.0]
    assert [hits(f) for f in functions] == [1, 1, 1, 1]


@pytest.mark.parametrize("where", ["module", "package with a version"])
def test_an_extension_module_built_in_the_project_counts_by_its_file(
    cache_dir: Path, tmp_path: Path, where: str
) -> None:
    # Its functions are builtins of a module without a version: they counted by name only (or
    # by their package's __version__, which a rebuild keeps), so after a rebuild a new process
    # returned what the old build computed.
    import shutil
    import sysconfig

    if shutil.which("gcc") is None:
        pytest.skip("needs gcc to build an extension module")
    project = tmp_path / "project"
    project.mkdir()
    home = project
    if where != "module":
        home = project / "proj"
        home.mkdir()
        (home / "__init__.py").write_text('__version__ = "0.1.0"\n')
    (project / "run.py").write_text(
        textwrap.dedent(f"""
        import afml_cache
        {"import fast" if where == "module" else "from proj import fast"}

        @afml_cache.cacheable
        def f(x):
            return x + fast.k()

        print(f(0), f.uncached(0))
        """)
    )
    module = home / f"fast{sysconfig.get_config_var('EXT_SUFFIX')}"
    env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}

    def build_and_run(k: int) -> str:
        source = project / "fast.c"
        source.write_text(
            "#include <Python.h>\n"
            f"static PyObject* k(PyObject* s, PyObject* a) {{ return PyLong_FromLong({k}); }}\n"
            'static PyMethodDef M[] = {{"k", k, METH_NOARGS, ""}, {0}};\n'
            'static struct PyModuleDef D = {PyModuleDef_HEAD_INIT, "fast", 0, -1, M};\n'
            "PyMODINIT_FUNC PyInit_fast(void) { return PyModule_Create(&D); }\n"
        )
        include = sysconfig.get_paths()["include"]
        command = ["gcc", "-shared", "-fPIC", f"-I{include}", str(source), "-o", str(module)]
        subprocess.run(command, check=True, capture_output=True, timeout=120)
        return subprocess.run(
            [sys.executable, "run.py"],
            cwd=project,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.strip()

    assert build_and_run(1) == "1 1"
    assert build_and_run(2) == "2 2"
    assert build_and_run(2) == "2 2"


def test_an_enum_member_holding_a_dict_counts_by_the_dict(cache_dir: Path, load: Loader) -> None:
    # In a module its value counted by type; in a notebook the Enum itself counted as enum's
    # (the metaclass puts enum's own functions in its body).
    source = """
    import enum
    from afml_cache import cacheable

    class Profile(enum.Enum):
        FAST = {"window": 5}
        SLOW = {"window": 50}

    @cacheable
    def smooth(x):
        return x * Profile.FAST.value["window"]
    """
    nb = Notebook()
    nb.run(source)
    module = load(source)
    functions = [nb["smooth"], module.smooth]
    assert [check(f, 2) for f in functions] == [10, 10]
    nb.run('Profile.FAST.value["window"] = 7')
    module.Profile.FAST.value["window"] = 7
    assert [check(f, 2) for f in functions] == [14, 14]
    assert [check(f, 2) for f in functions] == [14, 14]
    assert [hits(f) for f in functions] == [1, 1]


def test_defaults_set_again_count_by_their_values(cache_dir: Path, load: Loader) -> None:
    # The node held the defaults' id: a tuple set twice may take the freed address of the one
    # before, and a keyword default changed in place kept its dict's.
    module = load("""
    def scale(x, k=1.5):
        return x * k

    def shift(x, *, by=1.0):
        return x + by
    """)
    scale = afml_cache.cacheable(module.scale)
    shift = afml_cache.cacheable(module.shift)
    for i in range(20):
        module.scale.__defaults__ = (i + 0.25,)
        module.scale.__defaults__ = (i + 0.5,)
        assert check(scale, 2) == 2 * (i + 0.5)
        module.shift.__kwdefaults__["by"] = float(i)
        assert check(shift, 2) == 2 + i
    assert (hits(scale), hits(shift)) == (0, 0)
    assert (check(scale, 2), check(shift, 2)) == (39.0, 21.0)
    assert (hits(scale), hits(shift)) == (1, 1)


def test_a_call_relying_on_a_default_changed_since_decoration_binds_the_new_one(
    cache_dir: Path, load: Loader
) -> None:
    # The signature read at decoration bound `f(1)` as `f(1, 1)`: both shared a key, and the
    # call relying on the default returned the explicit call's result.
    module = load("""
    def f(x, y=1):
        return x + y

    def g(x, *, y=1):
        return x + y

    def h(x, /, y=1):
        return x + y
    """)
    f, g, h = (afml_cache.cacheable(fn) for fn in (module.f, module.g, module.h))
    module.f.__defaults__ = (10,)
    module.g.__kwdefaults__["y"] = 10  # in place: the same dict
    module.h.__defaults__ = (10,)
    assert [check(f, 1, 1), check(g, 1, y=1), check(h, 1, 1)] == [2, 2, 2]
    assert [check(f, 1), check(g, 1), check(h, 1)] == [11, 11, 11]
    assert [check(f, 1), check(g, 1), check(h, 1)] == [11, 11, 11]
    assert [hits(f), hits(g), hits(h)] == [1, 1, 1]


@pytest.mark.filterwarnings("ignore:afml_cache. __main__.(Day|Price) has no fingerprint rule")
def test_instances_of_immutable_types_that_hold_attributes_count_them(cache_dir: Path) -> None:
    # A subclass of str, int, date or Decimal, a plain subclass of a frozen dataclass, and a
    # frozen dataclass given an attribute beside its fields were taken for values that cannot
    # change, counted once: their attributes changed, the hit did not.
    nb = Notebook()
    nb.run("""
    import dataclasses, datetime, decimal
    from afml_cache import cacheable

    class Symbol(str): pass
    class Quantity(int): pass
    class Day(datetime.date): pass
    class Price(decimal.Decimal): pass

    @dataclasses.dataclass(frozen=True)
    class Contract:
        root: str

    class Future(Contract): pass

    @dataclasses.dataclass(frozen=True)
    class Universe:
        name: str
        def __post_init__(self):
            object.__setattr__(self, "symbols", [])

    ES = Symbol("ES"); ES.multiplier = 50
    LOTS = Quantity(3); LOTS.unit = 10
    EXPIRY = Day(2024, 3, 15); EXPIRY.roll = 1
    TICK = Price("0.25"); TICK.ticks = 2
    FRONT = Future("ES"); FRONT.month = 3
    FUTURES = Universe("futures"); FUTURES.symbols.append("ES")

    @cacheable
    def sized(x):
        return (x * ES.multiplier, LOTS.unit, EXPIRY.roll, TICK.ticks, FRONT.month,
                len(FUTURES.symbols))
    """)
    assert check(nb["sized"], 2) == (100, 10, 1, 2, 3, 1)
    nb.run("ES.multiplier = 20")
    assert check(nb["sized"], 2) == (40, 10, 1, 2, 3, 1)
    nb.run("LOTS.unit = 1; EXPIRY.roll = 9; TICK.ticks = 7; FRONT.month = 6")
    assert check(nb["sized"], 2) == (40, 1, 9, 7, 6, 1)
    nb.run('FUTURES.symbols.append("NQ")')
    assert check(nb["sized"], 2) == (40, 1, 9, 7, 6, 2)
    assert check(nb["sized"], 2) == (40, 1, 9, 7, 6, 2)
    assert hits(nb["sized"]) == 1


class _Bars(pd.DataFrame):
    @property
    def _constructor(self) -> type:
        return _Bars


class _Params(collections.OrderedDict):  # type: ignore[type-arg]
    pass


class _Order(uuid.UUID):
    pass


def _kind(x: Any) -> str:
    return type(x).__name__


class _Quantity(np.ma.MaskedArray):
    pass


def _renamed(name: str) -> Callable[[Any], Any]:
    def stat(x: Any) -> Any:
        return x.sum()

    stat.__name__ = name
    return stat


def _with(value: Any, **attributes: Any) -> Any:
    for name, attribute in attributes.items():
        object.__setattr__(value, name, attribute)
    return value


def _moved(params: Any) -> Any:
    params.move_to_end("a")
    return params


# Pairs of arguments a function tells apart, which shared a digest: what each reads of them.
_TOLD_APART: dict[str, tuple[Callable[[], Any], Callable[[], Any], Callable[[Any], Any]]] = {
    "a frame's attribute": (
        lambda: _with(pd.DataFrame({"close": [1.0]}), symbol="ES"),
        lambda: _with(pd.DataFrame({"close": [1.0]}), symbol="NQ"),
        lambda df: df.symbol,
    ),
    "a series' attribute": (
        lambda: _with(pd.Series([1.0]), unit="m"),
        lambda: _with(pd.Series([1.0]), unit="km"),
        lambda s: s.unit,
    ),
    "an index's attribute": (
        lambda: _with(pd.Index([1, 2]), unit="m"),
        lambda: _with(pd.Index([1, 2]), unit="km"),
        lambda i: i.unit,
    ),
    "a frame subclass's attrs": (
        lambda: _with(_Bars({"close": [1.0]}), attrs={"currency": "USD"}),
        lambda: _with(_Bars({"close": [1.0]}), attrs={"currency": "EUR"}),
        lambda df: df.attrs["currency"],
    ),
    "a frame subclass's attribute": (
        lambda: _with(_Bars({"close": [1.0]}), symbol="ES"),
        lambda: _with(_Bars({"close": [1.0]}), symbol="NQ"),
        lambda df: df.symbol,
    ),
    "a UUID subclass's attribute": (
        lambda: _with(_Order(int=7), venue="CME"),
        lambda: _with(_Order(int=7), venue="ICE"),
        lambda order: order.venue,
    ),
    "an lru_cache's typed flag": (
        lambda: functools.lru_cache(maxsize=None)(_kind),
        lambda: functools.lru_cache(maxsize=None, typed=True)(_kind),
        lambda g: (g(1.0), g(True)),
    ),
    "a frame subclass's flags": (
        lambda: _Bars({"close": [1.0]}),
        lambda: _Bars({"close": [1.0]}).set_flags(allows_duplicate_labels=False),
        lambda df: df.flags.allows_duplicate_labels,
    ),
    "an OrderedDict subclass's order": (
        lambda: _Params(a=1, b=2),
        lambda: _moved(_Params(a=1, b=2)),
        lambda params: list(params),
    ),
    "a masked array subclass's attribute": (
        lambda: _with(np.ma.array([1.0, 2.0], mask=[0, 1]).view(_Quantity), unit="m"),
        lambda: _with(np.ma.array([1.0, 2.0], mask=[0, 1]).view(_Quantity), unit="km"),
        lambda q: q.unit,
    ),
    "a record array's element type": (
        lambda: np.rec.array([(1.0,)], dtype=[("price", "f8")]).view(np.ndarray),
        lambda: np.array([(1.0,)], dtype=[("price", "f8")]),
        lambda a: hasattr(a[0], "price"),
    ),
    "a function's name": (
        lambda: _renamed("total"),
        lambda: _renamed("pnl"),
        lambda fn: pd.Series([1.0, 2.0]).agg([fn]).index.tolist(),
    ),
}


@pytest.mark.filterwarnings("ignore::UserWarning")  # pandas: "doesn't allow columns to be..."
@pytest.mark.filterwarnings("ignore:afml_cache. .*has no fingerprint rule")
@pytest.mark.parametrize("case", list(_TOLD_APART))
def test_arguments_that_differ_in_what_pandas_numpy_or_python_keeps_beside_them_are_a_miss(
    cache_dir: Path, case: str
) -> None:
    one, other, read = _TOLD_APART[case]
    cached = afml_cache.cacheable(read)
    assert afml_cache.fingerprint(one()) != afml_cache.fingerprint(other())
    assert check(cached, one()) != check(cached, other())
    assert hits(cached) == 0


@pytest.mark.filterwarnings("ignore:afml_cache. .*changed 'CFG' as it ran")
def test_a_frozen_dataclass_counts_its_cached_properties_values(cache_dir: Path) -> None:
    # Made from its fields, a cached property's value may still be a list the program changes:
    # filled with one that cannot change, the instance counts once; with a list, or before it
    # is filled, at each call.
    nb = Notebook()
    nb.run("""
    import dataclasses, functools
    from afml_cache import cacheable

    @dataclasses.dataclass(frozen=True)
    class Config:
        window: int

        @functools.cached_property
        def weights(self):
            return tuple(range(self.window))

        @functools.cached_property
        def symbols(self):
            return []

    CFG = Config(3)

    @cacheable
    def score(x):
        return x * sum(CFG.weights) + len(CFG.symbols)
    """)
    assert check(nb["score"], 2) == 6  # fills both
    nb.run('CFG.symbols.append("ES")')
    assert check(nb["score"], 2) == 7
    nb.run('CFG.symbols.append("NQ")')
    assert check(nb["score"], 2) == 8
    assert check(nb["score"], 2) == 8
    assert hits(nb["score"]) == 1
    nb.run("""
    FILLED = Config(4)
    FILLED.weights  # a tuple: it cannot change

    @cacheable
    def total(x):
        return x * sum(FILLED.weights)
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(nb["total"], 2) for _ in range(3)] == [12, 12, 12]
    assert hits(nb["total"]) == 2


@pytest.mark.filterwarnings("ignore:afml_cache. .*has no fingerprint rule")
def test_what_is_set_on_an_enum_member_or_a_path_subclass_counts(
    cache_dir: Path, tmp_path: Path
) -> None:
    nb = Notebook()
    nb.run("""
    import enum, functools, pathlib, threading
    from afml_cache import cacheable

    class Profile(enum.Enum):
        FAST = 5

        def __init__(self, window):
            self.params = {"window": window}
            self.lock = threading.Lock()  # no fingerprint: it does not count

        @functools.cached_property
        def seconds(self):  # made from the value: it does not count, read or not
            return self.value * 60

    class Side(enum.IntEnum):
        BUY = 1

    class DataFile(type(pathlib.Path())):
        pass

    @cacheable
    def lookback(profile):
        return profile.params["window"] * 2 + profile.seconds

    @cacheable
    def signed(side, qty):
        return int(side) * qty * getattr(side, "leverage", 1)

    @cacheable
    def rows(file):
        return file.read_text().count("\\n") - getattr(file, "header_rows", 0)
    """)
    data = nb["DataFile"](tmp_path / "bars.csv")
    data.write_text("h\n1\n2\n")
    profile, side = nb["Profile"].FAST, nb["Side"].BUY
    assert [check(nb["lookback"], profile), check(nb["signed"], side, 10)] == [310, 10]
    assert check(nb["rows"], data) == 3
    profile.params["window"] = 7
    side.leverage = 3
    data.header_rows = 1
    assert [check(nb["lookback"], profile), check(nb["signed"], side, 10)] == [314, 30]
    assert check(nb["rows"], data) == 2
    assert [hits(nb[f]) for f in ("lookback", "signed", "rows")] == [0, 0, 0]
    assert check(nb["lookback"], profile) == 314
    assert hits(nb["lookback"]) == 1


@pytest.mark.filterwarnings("ignore:afml_cache. .*has no fingerprint rule")
def test_masked_memory_maps_and_subclass_frames_holding_duplicates_stay_cached(
    cache_dir: Path, tmp_path: Path
) -> None:
    # Reading a masked array's attributes took in the memmap's (its mmap has no fingerprint),
    # and re-setting a frame subclass's flags re-checked its labels: both ran uncached.
    np.save(tmp_path / "prices.npy", np.array([1.0, -999.0, 3.0]))
    prices = np.load(tmp_path / "prices.npy", mmap_mode="r")
    valid = np.ma.masked_array(prices, mask=prices == -999.0)
    bars = _Bars({"close": [1.0, 2.0]}).set_flags(allows_duplicate_labels=False)
    bars.index = pd.to_datetime(["2024-01-02", "2024-01-02"])  # pandas does not check this

    @afml_cache.cacheable
    def mean(a: Any) -> float:
        return float(a.mean())

    @afml_cache.cacheable
    def total(b: Any) -> float:
        return float(b.to_numpy().sum())

    with warnings.catch_warnings():
        warnings.simplefilter("error", afml_cache.CacheWarning)
        assert [check(mean, valid), check(mean, valid)] == [2.0, 2.0]
        assert [check(total, bars), check(total, bars)] == [3.0, 3.0]
    assert (hits(mean), hits(total)) == (1, 1)


def test_arguments_a_fingerprint_would_use_up_run_uncached(cache_dir: Path) -> None:
    # Reading a RecordBatchReader's stream emptied it: the function counted 0 rows, stored,
    # and served to every later reader; a used-up `combinations` pickles as a fresh one.
    pa = pytest.importorskip("pyarrow")

    def reader(n: int) -> Any:
        table = pa.table({"x": list(range(n))})
        return pa.RecordBatchReader.from_batches(table.schema, table.to_batches())

    @afml_cache.cacheable
    def rows(stream: Any) -> int:
        return stream.read_all().num_rows

    @afml_cache.cacheable
    def drain(items: Any) -> list[Any]:
        return list(items)

    used = itertools.combinations([1, 2], 0)
    list(used)
    with pytest.warns(afml_cache.CacheWarning, match="used up when it is read"):
        assert [rows(reader(3)), rows(reader(5))] == [3, 5]
    with pytest.warns(afml_cache.CacheWarning, match="combinations iterator"):
        assert [drain(used), drain(itertools.combinations((), 0))] == [[], [()]]
    assert hits(rows) + hits(drain) == 0


def test_an_enum_member_whose_attributes_hold_a_cycle_or_a_lock_inside_runs_uncached(
    cache_dir: Path,
) -> None:
    # Each attribute fingerprinted apart lost the walk's record of where it was: a cycle
    # through two members never ended, and an object holding a lock was dropped whole, with
    # the cap beside it (a wrong hit).
    nb = Notebook()
    nb.run("""
    import enum, threading
    from afml_cache import cacheable

    class Side(enum.Enum):
        BUY = 1
        SELL = -1

    Side.BUY.opposite = Side.SELL
    Side.SELL.opposite = Side.BUY

    class Limits:
        def __init__(self, cap):
            self.cap = cap
            self.lock = threading.Lock()

    class Venue(enum.Enum):
        CME = 1

        def __init__(self, _):
            self.limits = Limits(100)

    @cacheable
    def flip(side):
        return side.opposite.value

    @cacheable
    def sized(venue, qty):
        return min(qty, venue.limits.cap)
    """)
    with pytest.raises(afml_cache.FingerprintError, match="contains itself"):
        afml_cache.fingerprint(nb["Side"].BUY)
    with pytest.warns(afml_cache.CacheWarning, match="runs uncached"):
        assert check(nb["flip"], nb["Side"].BUY) == -1
    with pytest.warns(afml_cache.CacheWarning, match="runs uncached"):
        assert check(nb["sized"], nb["Venue"].CME, 500) == 100
    nb.run("Venue.CME.limits.cap = 10")
    assert check(nb["sized"], nb["Venue"].CME, 500) == 10
    assert hits(nb["flip"]) + hits(nb["sized"]) == 0


def test_a_categorical_dtype_counts_by_its_categories(cache_dir: Path) -> None:
    # Alone, a CategoricalDtype counted as its name, "category".
    @afml_cache.cacheable
    def codes(symbols: list[str], dtype: Any) -> list[int]:
        return pd.Series(symbols).astype(dtype).cat.codes.tolist()

    assert check(codes, ["ES", "NQ"], pd.CategoricalDtype(["ES", "NQ"])) == [0, 1]
    assert check(codes, ["ES", "NQ"], pd.CategoricalDtype(["NQ", "ES"])) == [1, 0]
    ordered = pd.CategoricalDtype(["NQ", "ES"], ordered=True)
    assert afml_cache.fingerprint(ordered) != afml_cache.fingerprint(
        pd.CategoricalDtype(["NQ", "ES"])
    )
    assert check(codes, ["ES", "NQ"], ordered) == [1, 0]
    assert check(codes, ["ES", "NQ"], pd.CategoricalDtype(["NQ", "ES"])) == [1, 0]
    assert hits(codes) == 1


def test_a_panel_filtered_by_a_mask_is_not_the_panel_built_fresh(cache_dir: Path) -> None:
    # pandas keeps the symbols a mask dropped in `index.levels`: equal frames, other symbols.
    @afml_cache.cacheable
    def symbols(panel: pd.DataFrame) -> list[str]:
        return list(panel.index.levels[1])

    index = pd.MultiIndex.from_product(
        [pd.date_range("2024-01-01", periods=3), ["CL", "ES", "NQ"]], names=["time", "symbol"]
    )
    panel = pd.DataFrame({"close": np.arange(9.0)}, index=index)
    filtered = panel[panel.index.get_level_values("symbol") != "CL"]
    fresh = pd.DataFrame(
        {"close": filtered["close"].to_numpy()},
        index=pd.MultiIndex.from_tuples(list(filtered.index), names=["time", "symbol"]),
    )
    assert filtered.equals(fresh)
    assert check(symbols, fresh) == ["ES", "NQ"]
    assert check(symbols, filtered) == ["CL", "ES", "NQ"]
    assert check(symbols, fresh.copy()) == ["ES", "NQ"]
    assert hits(symbols) == 1


def test_a_user_module_held_in_a_closure_or_a_default_counts_by_its_globals(
    cache_dir: Path, load: Loader
) -> None:
    cfg = load("K = 2\n", name=f"cfg_{uuid.uuid4().hex}")
    module = load(f"""
    import {cfg.__name__} as cfg
    from afml_cache import cacheable

    def make(settings):
        @cacheable
        def closed(x):
            return settings.K * x
        return closed

    closed = make(cfg)

    @cacheable
    def defaulted(x, settings=cfg):
        return settings.K * x
    """)
    functions = [module.closed, module.defaulted]
    assert [check(f, 3) for f in functions] == [6, 6]
    cfg.K = 5
    assert [check(f, 3) for f in functions] == [15, 15]
    assert [check(f, 3) for f in functions] == [15, 15]
    assert [hits(f) for f in functions] == [1, 1]


def test_objects_without_a_fingerprint_count_by_type_and_name(
    cache_dir: Path, load: Loader
) -> None:
    module = load("""
    import threading
    from afml_cache import cacheable

    LOCK = threading.Lock()

    @cacheable
    def f(x):
        with LOCK:
            return x + 1
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(module.f, 1) == 2
        assert check(module.f, 1) == 2
    assert hits(module.f) == 1


WRAPT_CODE = """
import wrapt
from afml_cache import cacheable

@wrapt.decorator
def traced(wrapped, instance, args, kwargs):
    return wrapped(*args, **kwargs) * WRAPPER_FACTOR

@traced
def zscore(x):
    return (x - 1.0) / HELPER_SCALE

@cacheable
def feature(x):
    return zscore(x) + 1

@cacheable
@traced
def wrapped_feature(x):
    return x * 2
"""


@pytest.mark.parametrize(
    ("edit", "feature", "doubled"),
    [
        ("WRAPPER_FACTOR = 1", 2.0, 6.0),
        ("WRAPPER_FACTOR = 3", 4.0, 18.0),
        ("HELPER_SCALE = 4.0", 1.5, 6.0),
    ],
)
def test_a_wrapt_proxy_counts_the_function_it_wraps_and_its_wrapper(
    cache_dir: Path, load: Loader, edit: str, feature: float, doubled: float
) -> None:
    # wrapt's FunctionWrapper passes isinstance(obj, FunctionType): the walker took it for a
    # class and every call raised AttributeError from inside the cache.
    name = f"wrapt_user_{uuid.uuid4().hex}"
    first = load(f"WRAPPER_FACTOR = 1\nHELPER_SCALE = 2.0\n{WRAPT_CODE}", name=name)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(first.feature, 3.0) == 2.0
        assert check(first.wrapped_feature, 3.0) == 6.0
    # The wrapper's or the helper's code edited (a constant it reads), in a module of that name.
    edited = load(f"WRAPPER_FACTOR = 1\nHELPER_SCALE = 2.0\n{edit}\n{WRAPT_CODE}", name=name)
    assert check(edited.feature, 3.0) == feature
    assert check(edited.wrapped_feature, 3.0) == doubled
    assert check(edited.feature, 3.0) == feature and hits(edited.feature) >= 1


def test_a_failure_inside_the_cache_runs_the_call_uncached_with_one_warning(
    cache_dir: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = load("""
    from afml_cache import cacheable

    @cacheable
    def f(x):
        return x + 1
    """)

    def broken(*_: Any) -> Any:
        raise AttributeError("a walker's bug")

    monkeypatch.setattr(afml_cache.decorators, "code_state", broken)
    monkeypatch.setattr(afml_cache.decorators, "lone_code_state", lambda fn: None)
    with pytest.warns(afml_cache.CacheWarning, match="keying its call failed inside afml-cache"):
        assert module.f(1) == 2
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert module.f(1) == 2  # warned once
    assert module.f.cache_info()["entries"] == 0


def test_a_function_that_adds_a_column_to_its_argument_runs_uncached(cache_dir: Path) -> None:
    # AFML style: `events["trgt"] = ...; return events`. A hit returned the result but left the
    # caller's frame without the column, which the code after the call reads.
    @afml_cache.cacheable
    def add_target(events: pd.DataFrame, close: pd.Series) -> pd.DataFrame:
        events["trgt"] = close.pct_change().rolling(3).std().reindex(events.index)
        return events

    @afml_cache.cacheable(ignore=("calls",))
    def counted(calls: list[int], x: int) -> int:  # a test's counter: a hit must not add to it
        calls.append(x)
        return x * 2

    index = pd.date_range("2024-01-01", periods=10, freq="D")
    close = pd.Series(np.linspace(100.0, 110.0, 10), index=index)
    with pytest.warns(afml_cache.CacheWarning, match="changed its argument 'events' in place"):
        add_target(pd.DataFrame({"t1": index.shift(2)}, index=index), close)
    for _ in range(2):  # a notebook cell run again: the column is there each time
        events = pd.DataFrame({"t1": index.shift(2)}, index=index)
        add_target(events, close)
        assert list(events.columns) == ["t1", "trgt"]
    assert add_target.cache_info()["entries"] == 0
    calls: list[int] = []
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [counted(calls, 2), counted(calls, 2)] == [4, 4] and calls == [2]


def test_a_function_that_names_its_arguments_labels_runs_uncached(cache_dir: Path) -> None:
    # `df.index.name = "date"` renames the same index object: a hit left the caller's frame
    # unnamed, which the code after the call reads.
    @afml_cache.cacheable
    def label(df: pd.DataFrame) -> float:
        df.index.name = "date"
        df.columns.name = "field"
        return float(df["v"].sum())

    with pytest.warns(afml_cache.CacheWarning, match="changed its argument 'df' in place"):
        label(pd.DataFrame({"v": [1.0, 2.0]}))
    for _ in range(2):
        frame = pd.DataFrame({"v": [1.0, 2.0]})
        assert check(label, frame) == 3.0
        assert (frame.index.name, frame.columns.name) == ("date", "field")
    assert label.cache_info()["entries"] == 0


def test_a_function_that_only_reads_its_frame_is_cached(cache_dir: Path) -> None:
    # A frame read (pandas 2 consolidates its blocks in place on some reads) is not changed.
    @afml_cache.cacheable
    def total(frame: pd.DataFrame) -> float:
        return float(frame.iloc[0].sum() + frame.iloc[1].sum())

    frame = pd.DataFrame({"a": [1.0, 2.0]})
    for name in "bcd":  # one block per column, until something consolidates them
        frame[name] = [3.0, 4.0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(total, frame) == 24.0
        assert check(total, frame.copy()) == 24.0
    assert hits(total) == 1


def test_settings_beside_an_object_without_a_fingerprint_still_count(
    cache_dir: Path, load: Loader
) -> None:
    # One lock (an engine, a pool) in a settings dict or object made the whole of it count by
    # type: `CONFIG["window"] = 10` kept the result of 3.
    module = load("""
    import collections
    import dataclasses
    import threading
    from afml_cache import cacheable

    CONFIG = {"window": 3, "lock": threading.Lock()}

    @dataclasses.dataclass
    class Settings:
        scale: int
        lock: object

    @dataclasses.dataclass(slots=True)
    class Slotted:
        shift: int
        lock: object

    SETTINGS = Settings(2, threading.Lock())
    SLOTTED = Slotted(0, threading.Lock())
    ORDERED = collections.OrderedDict(extra=0, lock=threading.Lock())

    @cacheable
    def feature(x):
        return x * CONFIG["window"] * SETTINGS.scale + SLOTTED.shift + ORDERED["extra"]
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(module.feature, 2) == 12
        assert check(module.feature, 2) == 12 and hits(module.feature) == 1
        module.CONFIG["window"] = 10
        assert check(module.feature, 2) == 40
        module.SETTINGS.scale = 5
        assert check(module.feature, 2) == 100
        module.CONFIG["lock"] = __import__("threading").Lock()  # another lock: the same key
        assert check(module.feature, 2) == 100 and hits(module.feature) == 2
        module.SLOTTED.shift = 1
        assert check(module.feature, 2) == 101
        module.ORDERED["extra"] = 10
        assert check(module.feature, 2) == 111
        module.CONFIG["lock"] = {"mode": 2}  # what sits where the lock was counts by content
        assert check(module.feature, 2) == 111
        module.CONFIG["lock"]["mode"] = 3  # read where the lock was: a miss, not an error
        assert check(module.feature, 2) == 111 and hits(module.feature) == 2
    # A user object as a key beside a lock, a lock per symbol, a dict subclass's attribute.
    many = load("""
    import threading
    from afml_cache import cacheable

    class Symbol:
        def __init__(self, name):
            self.name = name

    class Settings(dict):
        pass

    KEYED = {"window": 3, Symbol("ES"): threading.Lock()}
    LOCKS = {"window": 1, "locks": {f"S{i}": threading.Lock() for i in range(100)}}
    SETTINGS = Settings(lock=threading.Lock())
    SETTINGS.scale = 1

    @cacheable
    def feature(x):
        return x * KEYED["window"] * LOCKS["window"] * SETTINGS.scale
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)  # Symbol counts by its pickle
        assert check(many.feature, 2) == 6
        many.KEYED["window"] = 4
        assert check(many.feature, 2) == 8
        many.LOCKS["window"] = 2
        assert check(many.feature, 2) == 16
        many.SETTINGS.scale = 10
        assert check(many.feature, 2) == 160


def test_settings_objects_that_hide_their_attributes_still_count(
    cache_dir: Path, load: Loader
) -> None:
    # An AttrDict (`__getattr__ = dict.__getitem__`, which raises KeyError) counted by name; one
    # holding a lock too, and a DotMap-like one gained a `default_factory` key from the look
    # for a defaultdict's factory (which changed its result); slotted classes, slots in a base
    # class, a slotted dict subclass and settings five levels down beside a lock counted by type.
    module = load("""
    import threading
    from afml_cache import cacheable

    class AttrDict(dict):
        __getattr__ = dict.__getitem__
        __setattr__ = dict.__setitem__

    class Tree(dict):
        def __getattr__(self, name):
            if name.startswith("__"):
                raise AttributeError(name)
            return self.setdefault(name, Tree())

    class Params:
        __slots__ = ("window", "lock")

        def __init__(self):
            self.window, self.lock = 3, threading.Lock()

    class Base:
        __slots__ = ("__scale",)

    class Mixed(Base):
        def __init__(self):
            self._Base__scale, self.lock = 3, threading.Lock()

    class SlotDict(dict):
        __slots__ = ("shift",)

    PLAIN = AttrDict(window=3)
    LOCKED = AttrDict(window=3, lock=threading.Lock())
    TREE = Tree(window=3, lock=threading.Lock())
    PARAMS, MIXED = Params(), Mixed()
    SLOTTED = SlotDict(lock=threading.Lock())
    SLOTTED.shift = 3
    DEEP = {"a": {"b": {"c": {"d": {"e": {"lock": threading.Lock(), "w": 3}}}}}}

    @cacheable
    def feature(x):
        return (
            x * PLAIN.window * LOCKED["window"] * PARAMS.window * MIXED._Base__scale
            + SLOTTED.shift + DEEP["a"]["b"]["c"]["d"]["e"]["w"] + TREE["window"] + len(TREE)
        )
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(module.feature, 1) for _ in range(2)] == [92, 92]
        assert list(module.TREE) == ["window", "lock"] and hits(module.feature) == 1
        changes = [
            lambda: setattr(module.PLAIN, "window", 1),
            lambda: module.LOCKED.__setitem__("window", 1),
            lambda: setattr(module.PARAMS, "window", 1),
            lambda: setattr(module.MIXED, "_Base__scale", 1),
            lambda: setattr(module.SLOTTED, "shift", 0),
            lambda: module.DEEP["a"]["b"]["c"]["d"]["e"].__setitem__("w", 0),
            lambda: module.TREE.__setitem__("window", 0),
        ]
        results = []
        for change in changes:
            change()
            results.append(check(module.feature, 1))
        assert results == [38, 20, 14, 12, 9, 6, 3]
        assert hits(module.feature) == 1


def test_settings_with_too_many_objects_without_a_fingerprint_run_uncached(
    cache_dir: Path, load: Loader
) -> None:
    # Past 4,096 locks, or nested deeper than it looks, a settings dict counted by type alone:
    # a changed window kept the old result. Now such a call runs uncached, with one warning.
    module = load("""
    import threading
    from afml_cache import cacheable

    MANY = {"window": 3, "locks": {f"S{i}": threading.Lock() for i in range(5000)}}

    @cacheable
    def feature(x):
        return x * MANY["window"]
    """)
    with pytest.warns(afml_cache.CacheWarning, match="'MANY'.*cannot be fingerprinted"):
        assert check(module.feature, 2) == 6
    module.MANY["window"] = 5
    assert check(module.feature, 2) == 10
    assert module.feature.cache_info()["entries"] == 0


def test_a_hit_does_not_try_again_to_fingerprint_what_had_none(
    cache_dir: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A lock a settings dict holds was tried again at each hit (a raised FingerprintError, 6 µs
    # each: 8 ms a hit beside 1,000 locks). And a settings global rebound to a dict of another
    # shape ran uncached for the rest of the process.
    from afml_cache.codehash import values

    module = load("""
    import threading
    from afml_cache import cacheable

    CONFIG = {"window": 3, "locks": {f"S{i}": threading.Lock() for i in range(50)}}

    @cacheable
    def feature(x):
        return x * CONFIG["window"]
    """)
    tries = []
    real = values._fingerprints
    monkeypatch.setattr(values, "_fingerprints", lambda v: tries.append(v) or real(v))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(module.feature, 2) == 6
        tries.clear()
        assert [module.feature(2) for _ in range(3)] == [6, 6, 6]
        assert tries == [] and hits(module.feature) == 3
        module.CONFIG = {"lock": __import__("threading").Lock(), "w": 1, "window": 4}
        assert [check(module.feature, 2) for _ in range(2)] == [8, 8]
        assert hits(module.feature) == 4
        module.CONFIG["window"] = 5
        assert check(module.feature, 2) == 10


def test_operations_in_place_that_change_nothing_keep_a_function_cached(cache_dir: Path) -> None:
    # An index set again to the same times, lower-casing lower-case names (as `dropna` or
    # `sort_index` in place on clean data): a new index or columns object equal to the old one
    # is no change.
    @afml_cache.cacheable
    def cleaned(df: pd.DataFrame) -> float:
        df.index = pd.DatetimeIndex(df.index.to_numpy(), name="t")
        df.columns = df.columns.str.lower()
        return float(df["close"].sum())

    @afml_cache.cacheable
    def named(series: pd.Series) -> float:
        series.name = "".join(series.name)  # an equal name, another object
        return float(series.sum())

    times = pd.DatetimeIndex(["2024-01-01", "2024-01-02", "2024-01-04"], name="t")
    frame = pd.DataFrame({"close": [1.0, 2.0, 3.0]}, index=times)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(cleaned, frame) for _ in range(3)] == [6.0, 6.0, 6.0]
        assert [check(named, frame["close"].copy()) for _ in range(3)] == [6.0, 6.0, 6.0]
    assert hits(cleaned) == hits(named) == 2


def test_a_stateful_wrapt_decorator_and_a_mock_with_a_spec_count_their_state(
    cache_dir: Path, load: Loader
) -> None:
    module = load("""
    from unittest import mock
    import wrapt
    from afml_cache import cacheable

    class InUnits:
        def __init__(self, factor):
            self.factor = factor

        @wrapt.decorator
        def __call__(self, wrapped, instance, args, kwargs):
            return wrapped(*args, **kwargs) * self.factor

    UNITS = InUnits(100)

    @UNITS
    def price(x):
        return x * 1.5

    def fetch(symbol):
        return 1.0

    @cacheable
    def value(x):
        return price(x) + FETCH("ES")

    @cacheable
    @UNITS
    def direct(x):
        return x * 2

    FETCH = fetch
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)  # the Mock counts by its pickle
        assert [check(module.value, 1) for _ in range(2)] == [151.0, 151.0]
        assert [check(module.direct, 1) for _ in range(2)] == [200, 200]
        assert hits(module.value) == hits(module.direct) == 1
        module.UNITS.factor = 10_000
        assert (check(module.value, 1), check(module.direct, 1)) == (15001.0, 20_000)
        module.FETCH = module.mock.Mock(spec=module.fetch, return_value=250.0)
        assert check(module.value, 1) == 15250.0
        module.FETCH = module.mock.Mock(spec=module.fetch, return_value=500.0)
        assert check(module.value, 1) == 15500.0


def test_a_query_kept_in_a_global_counts_the_names_it_reads(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import pandas as pd
    from afml_cache import cacheable

    MIN_VOLUME = 10
    LIQUID = "volume > @MIN_VOLUME"
    FILTERS = {"liquid": "volume > @MIN_VOLUME"}

    @cacheable
    def universe(df):
        return list(df.query(LIQUID).index) + list(df.query(FILTERS["liquid"]).index)
    """)
    frame = pd.DataFrame({"volume": [5, 20, 30, 40]}, index=list("ABCD"))
    assert check(module.universe, frame) == list("BCD") * 2
    module.MIN_VOLUME = 35
    assert check(module.universe, frame) == ["D", "D"]


def test_a_query_in_a_namespace_or_passed_in_counts_the_names_it_reads(
    cache_dir: Path, load: Loader
) -> None:
    # The @NAME of a query kept in a namespace's or a class's attribute, or given as an
    # argument (alone, in a list or in a config object), is read from the function's globals:
    # MIN_VOLUME did not count, and changing it kept the old rows.
    module = load("""
    import dataclasses
    import types
    import pandas as pd
    from afml_cache import cacheable

    MIN_VOLUME = 10
    CFG = types.SimpleNamespace(liquid="volume > @MIN_VOLUME")

    class Filters:
        liquid = "volume > @MIN_VOLUME"

    @dataclasses.dataclass
    class Spec:
        rule: str

    @cacheable
    def kept(df):
        return list(df.query(CFG.liquid).index) + list(df.query(Filters.liquid).index)

    @cacheable
    def given(df, rule, rules=(), spec=None):
        rules = [rule, *rules] + ([spec.rule] if spec else [])
        return [list(df.query(r).index) for r in rules]

    @cacheable
    def symbols(rule):
        return list(pd.DataFrame({"volume": [5, 20, 30, 40]}, index=list("ABCD")).query(rule).index)
    """)
    frame = pd.DataFrame({"volume": [5, 20, 30, 40]}, index=list("ABCD"))
    rule = "volume > @MIN_VOLUME"
    long_rule = f"volume > @MIN_VOLUME and index != {'x' * 5000!r}"  # over 4,096 characters
    calls = [
        lambda: check(module.given, frame, long_rule),
        lambda: check(module.kept, frame),
        lambda: check(module.given, frame, rule),
        lambda: check(module.given, frame, "volume > 0", rules=[rule]),
        lambda: check(module.given, frame, "volume > 0", spec=module.Spec(rule)),
        lambda: check(module.symbols, rule),  # scalar arguments: its key may be remembered
    ]
    before = [call() for call in calls]
    assert [call() for call in calls] == before
    module.MIN_VOLUME = 35
    assert [call() for call in calls] == [
        [["D"]],
        ["D", "D"],
        [["D"]],
        [list("ABCD"), ["D"]],
        [list("ABCD"), ["D"]],
        ["D"],
    ]


def test_a_library_wrappers_argument_changed_in_place_is_a_miss(
    cache_dir: Path, load: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A library's decorator holding a list it was given (`@scaled(weights=W)`, then
    # `W.append(10)`) counted the list as it was when the code was first walked: the edit kept
    # the old result. And a list among its keyword arguments counted by type only, so editing
    # it on the decorator line was a wrong hit in the next process too.
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "weighing_library.py").write_text(
        textwrap.dedent("""
        import functools

        def scaled(**settings):
            def decorate(func):
                @functools.wraps(func)
                def wrapper(*args):
                    return func(*args) * sum(settings["weights"])
                return wrapper
            return decorate

        def scaled_by(config=None):  # the caller's dict under another name
            settings = config if config is not None else {}

            def decorate(func):
                @functools.wraps(func)
                def wrapper(*args):
                    settings.setdefault("scale", 1)
                    return func(*args) * settings["scale"]
                return wrapper
            return decorate

        def copied(weights):  # a copy of what it is given, put in order at each call
            own = list(weights)

            def decorate(func):
                @functools.wraps(func)
                def wrapper(x):
                    own.sort()
                    return func(x) * own[0]
                return wrapper
            return decorate

        def biased(weights):  # appends to what it is given, then puts it back
            def decorate(func):
                @functools.wraps(func)
                def wrapper(x):
                    weights.append(x)
                    try:
                        return func(x) * sum(weights)
                    finally:
                        weights.pop()
                return wrapper
            return decorate

        def topped(weights, options):  # normalises what it is given, in place, at each call
            def decorate(func):
                @functools.wraps(func)
                def wrapper(*args):
                    weights.sort()
                    options.setdefault("shift", 0)
                    return func(*args) * weights[-1] + options["shift"]
                return wrapper
            return decorate
        """)
    )
    monkeypatch.syspath_prepend(str(library))
    monkeypatch.delitem(sys.modules, "weighing_library", raising=False)
    source = """
    from afml_cache import cacheable
    from weighing_library import scaled

    W = [1, 2]

    @scaled(weights=W)
    def weigh(x):
        return x

    @cacheable
    def total(x):
        return weigh(x) + 1
    """
    module = load(source)
    assert [check(module.total, 1) for _ in range(2)] == [4, 4]
    module.W.append(10)
    assert check(module.total, 1) == 14
    assert hits(module.total) == 1
    # What the wrapper is given stays the caller's, even when it changes it in place: sorted
    # and given a default, the list and dict counted by type (a wrong hit).
    given = load("""
    from afml_cache import cacheable
    from weighing_library import biased, scaled_by, topped

    TOPS, OPTIONS = [1, 3], {"shift": 0}  # as the wrapper leaves them
    SCALE = {"scale": 1}
    BIAS = [0]

    @scaled_by(SCALE)
    def unit(x):
        return x

    @biased(BIAS)
    def one(x):
        return 1 if x else 0

    @topped(TOPS, OPTIONS)
    def top(x):
        return x

    @cacheable
    def tops(x):
        return top(x) * unit(1) * one(1)
    """)
    assert [check(given.tops, 2) for _ in range(2)] == [6, 6]
    given.TOPS.append(5)
    assert check(given.tops, 2) == 10
    given.OPTIONS["shift"] = 1
    assert check(given.tops, 2) == 11
    given.SCALE["scale"] = 2
    assert check(given.tops, 2) == 22
    given.BIAS.append(1)  # one(1) is now 1 * (0 + 1 + 1)
    assert check(given.tops, 2) == 44
    # A copy the decorator made of what it was given is the caller's data too: edited on the
    # decorator line, the next run computes again.
    inherited = os.environ.get("PYTHONPATH")
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(filter(None, [str(library), inherited])))
    (tmp_path / "copy").mkdir()
    copy = Restarts(tmp_path / "copy", cache_dir, "research_copied", "least(3)")
    copy_source = textwrap.dedent("""
    from afml_cache import cacheable
    from weighing_library import copied

    @copied([2, 1])
    def scaled(x):
        return x

    @cacheable
    def least(x):
        return scaled(x)
    """)
    assert copy(copy_source) == "3"
    assert copy(copy_source.replace("[2, 1]", "[5, 9]")) == "15"
    run = Restarts(tmp_path, cache_dir, "research_weighing", "total(1)")
    assert run(textwrap.dedent(source)) == "4"
    assert run(textwrap.dedent(source).replace("W = [1, 2]", "W = [1, 5]")) == "7"


def test_a_query_in_nested_settings_or_passed_to_a_helper_counts_its_names(
    cache_dir: Path, load: Loader
) -> None:
    # `FILTERS["liquid"]["expr"]`, a list of (name, rule) pairs, and a rule written in the
    # function but evaluated by a helper: THRESH did not count.
    module = load("""
    from afml_cache import cacheable

    THRESH = 2
    FILTERS = {"liquid": {"expr": "v > @THRESH"}}
    PAIRS = [("liquid", "v > @THRESH")]

    def keep(df, rule):
        return df.query(rule)

    @cacheable
    def nested(df):
        return len(df.query(FILTERS["liquid"]["expr"]))

    @cacheable
    def pairs(df):
        return len(df.query(PAIRS[0][1]))

    @cacheable
    def helped(df):
        return len(keep(df, "v > @THRESH"))
    """)
    frame = pd.DataFrame({"v": range(10)})
    functions = (module.nested, module.pairs, module.helped)
    assert [check(f, frame) for f in functions] == [7, 7, 7]
    module.THRESH = 7
    assert [check(f, frame) for f in functions] == [2, 2, 2]


def test_a_context_decorator_of_the_users_counts_its_settings(
    cache_dir: Path, tmp_path: Path
) -> None:
    # `@precision(5)`, a ContextDecorator instance of the user's, counted by its class alone:
    # `@precision(12)` in the next run returned the five-digit result.
    source = textwrap.dedent("""
    import contextlib
    import decimal
    from afml_cache import cacheable

    class precision(contextlib.ContextDecorator):
        def __init__(self, digits):
            self.digits = digits

        def __enter__(self):
            self._context = decimal.localcontext()
            self._context.__enter__().prec = self.digits
            return self

        def __exit__(self, *exc):
            return self._context.__exit__(*exc)

    @precision(5)
    def third(x):
        return str(decimal.Decimal(1) / decimal.Decimal(x))

    @cacheable
    def f(x):
        return third(x)
    """)
    run = Restarts(tmp_path, cache_dir, "research_precision", "f(3)")
    assert run(source) == "0.33333"
    assert run(source.replace("@precision(5)", "@precision(12)")) == "0.333333333333"


def test_what_a_wrapper_or_helper_changes_as_it_runs_is_state_not_a_setting(
    cache_dir: Path, load: Loader, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A library's memo (`cache[args] = ...` in its wrapper) and a @contextmanager's sink for
    # timings counted by content at each call: every call missed ("changed 'prices' as it
    # ran"), and a hit over a filled memo fingerprinted all of it.
    library = tmp_path / "site-packages"
    library.mkdir()
    (library / "memo_library.py").write_text(
        textwrap.dedent("""
        import functools

        def memo(f):
            cache = {}

            @functools.wraps(f)
            def wrapper(*args):
                if args not in cache:
                    cache[args] = f(*args)
                return cache[args]

            return wrapper

        """)
    )
    monkeypatch.syspath_prepend(str(library))
    monkeypatch.delitem(sys.modules, "memo_library", raising=False)
    module = load("""
    import contextlib
    import time
    from afml_cache import cacheable
    from memo_library import memo

    TIMINGS = {}

    @contextlib.contextmanager
    def timed(name, sink):
        started = time.perf_counter()
        yield
        sink[name] = time.perf_counter() - started

    @memo
    def prices(day):
        return day * 10

    @timed("load", TIMINGS)
    def load(n):
        return list(range(n))


    @cacheable
    def report(days):
        return sum(prices(d) for d in range(days)) + sum(load(days))
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(module.report, n) for n in (3, 3, 4, 4, 3)] == [33, 33, 66, 66, 33]
        assert hits(module.report) == 3


def test_sql_expressions_count_by_their_sql(cache_dir: Path, tmp_path: Path) -> None:
    # A global `sa.column("close")` counted by type (its comparator, built by a look at it,
    # does not pickle): `sa.column("volume")` in the next run returned the closes.
    pytest.importorskip("sqlalchemy")
    source = textwrap.dedent("""
    import sqlalchemy as sa
    from afml_cache import cacheable

    ENGINE = sa.create_engine("sqlite://")
    with ENGINE.begin() as connection:
        connection.exec_driver_sql("create table px (sym text, close real, volume real)")
        connection.exec_driver_sql("insert into px values ('A', 1.0, 10.0), ('B', 3.0, 30.0)")
    SYM, FIELD = sa.column("sym"), sa.column("close")

    @cacheable
    def load(sym):
        query = sa.select(FIELD).select_from(sa.table("px")).where(SYM == sym)
        with ENGINE.connect() as connection:
            return [row[0] for row in connection.execute(query)]

    def calls():
        return load("A"), load("A"), load.cache_info()["cache_misses"]
    """)
    run = Restarts(tmp_path, cache_dir, "research_sql", "calls()")
    assert run(source) == "([1.0], [1.0], 1)"
    assert run(source) == "([1.0], [1.0], 1)"  # no miss in the second run
    assert run(source.replace('sa.column("close")', 'sa.column("volume")')) == "([10.0], [10.0], 2)"
    # A type the SQL does not show: the values come back as decimals.
    typed = source.replace('sa.column("close")', 'sa.column("close", sa.Numeric(10, 2))')
    assert run(typed) == "([Decimal('1.00')], [Decimal('1.00')], 3)"
    # A type of the user's, by its code: editing its conversion is a miss.
    converted = source.replace(
        'SYM, FIELD = sa.column("sym"), sa.column("close")',
        textwrap.dedent("""
        class Tenths(sa.types.TypeDecorator):
            impl = sa.Float
            cache_ok = True

            def process_result_value(self, value, dialect):
                return value / 10

        SYM, FIELD = sa.column("sym"), sa.column("close", Tenths())
        """),
    )
    assert run(converted) == "([0.1], [0.1], 4)"
    assert run(converted.replace("value / 10", "value / 100")) == "([0.01], [0.01], 5)"


def test_settings_holding_a_lock_in_a_named_tuple_a_namespace_or_a_cycle_count(
    cache_dir: Path, load: Loader
) -> None:
    # A named tuple or a SimpleNamespace holding a lock counted by type; a parent pointer met
    # again inside the settings, pointed elsewhere, counted by type; a lazy proxy whose
    # __class__ raises made the whole function count by its own code (PARAMS did not count).
    module = load("""
    import collections
    import os
    import threading
    import types
    from afml_cache import cacheable

    Resources = collections.namedtuple("Resources", "lock window")

    class Node:
        def __init__(self, w, parent=None):
            self.w, self.parent = w, parent

    class Lazy:
        def __init__(self, factory):
            object.__setattr__(self, "_factory", factory)

        @property
        def __class__(self):
            return type(object.__getattribute__(self, "_factory")())

    def _connect():
        raise RuntimeError("DB_URL is not set")

    RES = Resources(threading.Lock(), 3)
    NS = types.SimpleNamespace(lock=threading.Lock(), window=3)
    ROOT = Node(3)
    ROOT.lock = threading.Lock()
    ROOT.child = Node(2, parent=ROOT)
    DB = Lazy(_connect)
    PARAMS = {"scale": 3}

    @cacheable
    def feature(x):
        return x * RES.window * NS.window * ROOT.child.parent.w * PARAMS["scale"]

    @cacheable
    def guarded(x, remote=False):
        if remote:
            return DB.fetch(x)
        return x * PARAMS["scale"]
    """)
    with pytest.warns(afml_cache.CacheWarning, match="guarded runs uncached: global 'DB'"):
        assert check(module.guarded, 1) == 3
    assert [check(module.feature, 1) for _ in range(2)] == [81, 81]
    module.RES = module.RES._replace(window=1)
    assert check(module.feature, 1) == 27
    module.NS.window = 1
    assert check(module.feature, 1) == 9
    module.ROOT.child.parent = module.Node(1)
    assert check(module.feature, 1) == 3
    module.PARAMS["scale"] = 1
    assert check(module.feature, 1) == 1 and check(module.guarded, 1) == 1
    assert hits(module.feature) == 1


def test_ignore_globals_leaves_a_counter_out_of_the_key(cache_dir: Path, load: Loader) -> None:
    module = load("""
    from afml_cache import cacheable

    CALLS = {"n": 0}
    LOG = []

    @cacheable(ignore_globals=("CALLS",))
    def f(x):
        CALLS["n"] += 1
        return x * 2

    @cacheable
    def g(x):
        CALLS["n"] += 1
        return x * 2

    @cacheable
    def h(x):
        LOG.append(x)  # only written to: its content cannot decide the result
        return x * 2
    """)
    for fn in (module.f, module.g, module.h):
        assert fn(1) == 2
        if fn is module.g:  # its call changes what it reads: every call misses, it warns once
            with pytest.warns(afml_cache.CacheWarning, match="g changed 'CALLS' as it ran"):
                assert fn(1) == 2
        else:
            assert fn(1) == 2
    assert (hits(module.f), hits(module.g), hits(module.h)) == (1, 0, 1)
    assert module.CALLS == {"n": 3} and module.LOG == [1]


def test_ignore_globals_must_be_names() -> None:
    with pytest.raises(TypeError, match="ignore_globals takes names of globals"):
        afml_cache.cacheable(ignore_globals=(1,))


# --- closures, classes, functions as arguments ------------------------------------------------


def test_factory_closures_over_numpy_scalars_are_separate(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import numpy as np
    from afml_cache import cacheable

    def make_feature(window):
        @cacheable
        def feature(x):
            return np.convolve(x, np.ones(int(window)), "valid")
        return feature
    """)
    x = np.arange(30.0)
    features = {w: module.make_feature(w) for w in np.arange(5, 25, 5)}
    for feature in features.values():
        check(feature, x)


def test_factory_closures_over_timestamps_and_lists(cache_dir: Path, load: Loader) -> None:
    module = load("""
    import pandas as pd
    from afml_cache import cacheable

    def make_loader(start):
        @cacheable
        def load(n):
            return pd.date_range(start, periods=n, freq="D")
        return load

    def make_weighted(weights):
        @cacheable
        def weighted(x):
            return sum(w * x for w in weights)
        return weighted
    """)
    check(module.make_loader(pd.Timestamp("2020-01-01")), 3)
    check(module.make_loader(pd.Timestamp("2023-06-01")), 3)
    assert check(module.make_weighted([1, 2, 3]), 1.0) == 6.0
    weights = [10, 20, 30]
    weighted = module.make_weighted(weights)
    assert check(weighted, 1.0) == 60.0
    weights.append(40)
    assert check(weighted, 1.0) == 100.0


STRATEGY = """
import dataclasses
from afml_cache import cacheable

@dataclasses.dataclass
class Strategy:
    FEE = 0.0
    threshold: float = 1.0

    def signal(self, x):
        return x > self.threshold

    @cacheable
    def backtest(self, x):
        return float(self.signal(x)) - self.FEE
"""


@pytest.mark.parametrize(
    ("old", "new"),
    [("x > self.threshold", "x >= self.threshold"), ("FEE = 0.0", "FEE = 0.5")],
    ids=["method-through-self", "class-constant"],
)
def test_class_code_reached_through_self_counts(cache_dir: Path, old: str, new: str) -> None:
    nb = Notebook()
    nb.run(STRATEGY)
    check(nb["Strategy"].backtest, nb["Strategy"](), 1.0)
    nb.run(STRATEGY.replace(old, new))
    check(nb["Strategy"].backtest, nb["Strategy"](), 1.0)


def test_a_class_passed_as_an_argument_counts_by_its_code(cache_dir: Path) -> None:
    nb = Notebook()
    scaler = "class Scaler:\n    def transform(self, x):\n        return x * 2\n"
    nb.run(scaler)
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def use_scaler(cls, x):
        return cls().transform(x)

    def make_model(k):
        class Model:
            def predict(self, x):
                return x * k
        return Model
    """)
    assert check(nb["use_scaler"], nb["Scaler"], 1) == 2
    nb.run(scaler.replace("x * 2", "x * 3"))
    assert check(nb["use_scaler"], nb["Scaler"], 1) == 3
    predict = nb["use_scaler"]
    nb.run("Model1, Model2 = make_model(1), make_model(2)")
    # Not `transform` but `predict`: the code differs, so these must not share an entry.
    nb.run("Model1.transform = Model1.predict; Model2.transform = Model2.predict")
    assert check(predict, nb["Model1"], 5) == 5
    assert check(predict, nb["Model2"], 5) == 10


@pytest.mark.parametrize(
    ("call", "holder"),
    [
        ("run({'strategy': Strategy}, 1)", "a dict argument"),
        ("run((Strategy, 'sma'), 1)", "a tuple argument"),
        ("run_registry('sma', 1)", "a global registry"),
    ],
)
def test_a_class_held_inside_a_value_counts_by_its_code(
    cache_dir: Path, call: str, holder: str
) -> None:
    """A class reached inside an argument or a global counts by its code, not only its name:
    the cell edited and run again must not find the old class's results."""
    nb = Notebook()
    strategy = "class Strategy:\n    size = 0.5\n    def buy(self, x):\n        return x * 0.5\n"
    nb.run(strategy)
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def run(spec, x):
        cls = spec["strategy"] if isinstance(spec, dict) else spec[0]
        return cls().buy(x) + cls.size

    @cacheable
    def run_registry(name, x):
        return REGISTRY[name]().buy(x)
    """)
    nb.run("REGISTRY = {'sma': Strategy}")
    nb.run(f"got = {call}")
    assert nb["got"] in (1.0, 0.5), holder
    for edit in ("x * 0.5", "x * 0.9"), ("size = 0.5", "size = 0.7"):
        strategy = strategy.replace(*edit)
        nb.run(strategy)
        nb.run("REGISTRY = {'sma': Strategy}")
        nb.run(f"got = {call}; want = {call.replace('(', '.uncached(', 1)}")
        assert nb["got"] == nb["want"], f"{holder}: {edit}"


def test_a_function_argument_counts_its_globals(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    from afml_cache import cacheable
    SCALE = 2

    @cacheable
    def transform(x, fn):
        return fn(x)
    """)
    nb.run("out = transform(1, lambda d: d * SCALE)")
    assert nb["out"] == 2
    nb.run("SCALE = 3")
    nb.run("out = transform(1, lambda d: d * SCALE)")
    assert nb["out"] == 3


def test_a_function_held_in_a_wrappers_closure_counts_by_code(
    cache_dir: Path, load: Loader
) -> None:
    module = load("""
    import functools
    from afml_cache import cacheable

    def shift_by(n):
        def shift(x):
            return x + n
        return shift

    def logged(fn):
        @functools.wraps(fn)
        def wrapper(x):
            return fn(x)
        return wrapper

    @cacheable
    def apply(fn, x):
        return fn(x)
    """)
    assert check(module.apply, module.logged(module.shift_by(1)), 1) == 2
    assert check(module.apply, module.logged(module.shift_by(100)), 1) == 101


def test_an_lru_cache_argument_counts_by_the_code_it_wraps(cache_dir: Path) -> None:
    nb = Notebook()
    helper = "import functools\n@functools.lru_cache\ndef table(n):\n    return n * 2\n"
    nb.run(helper)
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def apply(fn, x):
        return fn(x)
    """)
    assert check(nb["apply"], nb["table"], 1) == 2
    nb.run(helper.replace("n * 2", "n * 3"))
    assert check(nb["apply"], nb["table"], 1) == 3


def test_frompyfunc_ufuncs_count_by_the_function_they_wrap(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import numpy as np
    from afml_cache import cacheable

    @cacheable
    def apply(fn, x):
        return fn(x).astype(float)
    """)
    x = np.arange(3.0)
    check(nb["apply"], np.frompyfunc(lambda v: v + 1, 1, 1), x)
    check(nb["apply"], np.frompyfunc(lambda v: v + 2, 1, 1), x)


def test_a_decorated_function_as_an_argument_counts_by_its_function(cache_dir: Path) -> None:
    nb = Notebook()
    feature = "@cacheable\ndef feature(x):\n    return x * 2\n"
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def apply(fn, x):
        return fn(x)
    """)
    nb.run(feature)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(nb["apply"], nb["feature"], 1) == 2
        assert check(nb["apply"], nb["feature"], 1) == 2
        assert hits(nb["apply"]) == 1
        nb.run(feature.replace("x * 2", "x * 3"))
        assert check(nb["apply"], nb["feature"], 1) == 3


class Unreadable:
    """An object every question to which fails: the code walker can only name it."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")


def test_a_function_argument_that_cannot_be_read_runs_uncached(
    cache_dir: Path, load: Loader
) -> None:
    module = load("""
    from afml_cache import cacheable

    THING = None

    def helper(x):
        return THING is not None, x

    @cacheable
    def apply(fn, x):
        return fn(x)
    """)
    module.THING = Unreadable()
    with pytest.warns(UserWarning, match="runs uncached: argument 'fn'") as caught:
        assert module.apply(module.helper, 1) == (True, 1)
        assert module.apply(module.helper, 1) == (True, 1)
    assert len(caught) == 1
    assert module.apply.cache_entries() == []


def test_draws_from_the_global_random_generators_count_their_seed(
    cache_dir: Path, load: Loader
) -> None:
    module = load("""
    import random
    from random import random as uniform

    import numpy as np
    from afml_cache import cacheable

    @cacheable
    def bootstrap(n):
        return float(np.random.choice(np.arange(100.0), n).mean())

    @cacheable
    def jitter(x):
        return x + random.gauss(0, 1) + uniform()

    @cacheable
    def unseeded(n):
        return float(np.random.normal(size=n).sum())

    @cacheable
    def reseeding(n):
        np.random.seed(5)  # decides the state itself: the seed before the call does not count
        return float(np.random.normal(size=n).sum())
    """)

    def seeded(seed: int, f: Any, *args: Any) -> Any:
        np.random.seed(seed)
        random.seed(seed)
        got = f(*args)
        np.random.seed(seed)
        random.seed(seed)
        same(got, f.uncached(*args))
        return got

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # seeded before each call: nothing to warn about
        for f, arg in ((module.bootstrap, 10), (module.jitter, 1.0)):
            first = seeded(1, f, arg)
            assert seeded(2, f, arg) != first  # was the first seed's result
            assert seeded(1, f, arg) == first and hits(f) == 1
        results = {module.reseeding(3) for _ in range(3)}
        assert len(results) == 1 and hits(module.reseeding) == 2
    module.unseeded(10)
    with pytest.warns(afml_cache.CacheWarning, match="seed the random generator"):
        module.unseeded(10)  # not seeded again: it draws on from where the last call left


# --- files that Path arguments name ------------------------------------------------------------


def test_a_file_rewritten_under_the_same_path_is_a_miss(cache_dir: Path, tmp_path: Path) -> None:
    calls = []

    @afml_cache.cacheable
    def load(path):
        calls.append(path)
        return pd.read_csv(path)

    data = tmp_path / "ES.csv"
    data.write_text("close\n1.0\n2.0\n")
    assert check(load, data)["close"].sum() == 3.0
    data.write_text("close\n1.0\n5.0\n")  # the morning's download, same size
    assert check(load, data)["close"].sum() == 6.0
    before = data.stat()
    data.write_text("close\n1.0\n7.0\n")
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))  # a copy that keeps the times
    assert check(load, data)["close"].sum() == 8.0
    replacement = tmp_path / "ES.csv.new"
    replacement.write_text("close\n1.0\n2.0\n")
    replacement.replace(data)  # the first bytes again, by rename: a new inode, the old entry
    hits_before = hits(load)
    assert check(load, data)["close"].sum() == 3.0
    assert hits(load) == hits_before + 1
    assert len(calls) == 7  # three misses, each with its uncached check, and the last check


def test_a_directory_counts_by_every_file_under_it(cache_dir: Path, tmp_path: Path) -> None:
    @afml_cache.cacheable
    def load(folder):
        return sum(pd.read_csv(f)["x"].sum() for f in sorted(folder.rglob("*.csv")))

    dataset = tmp_path / "bars"
    (dataset / "year=2024").mkdir(parents=True)
    (dataset / "year=2024" / "a.csv").write_text("x\n1\n")
    assert check(load, dataset) == 1
    (dataset / "year=2025").mkdir()
    (dataset / "year=2025" / "a.csv").write_text("x\n2\n")  # a partition added
    assert check(load, dataset) == 3
    (dataset / "year=2024" / "a.csv").write_text("x\n5\n")  # a file changed deep inside
    assert check(load, dataset) == 7
    assert check(load, dataset) == 7 and hits(load) == 1

    @afml_cache.cacheable
    def partitions(folder):
        return sorted(p.name for p in folder.iterdir())

    assert check(partitions, dataset) == ["year=2024", "year=2025"]
    (dataset / "year=2026").mkdir()  # a partition made, not filled yet
    assert check(partitions, dataset) == ["year=2024", "year=2025", "year=2026"]
    assert check(partitions, dataset) == ["year=2024", "year=2025", "year=2026"]
    assert hits(partitions) == 1


def test_a_data_root_of_many_files_counts_by_its_path_with_a_warning(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from afml_cache import files

    monkeypatch.setattr(files, "DIRECTORY_FILES", 3)
    root = tmp_path / "bars"
    root.mkdir()
    for symbol in ("ES", "NQ", "CL", "GC"):
        (root / f"{symbol}.csv").write_text("x\n1\n")

    @afml_cache.cacheable
    def load(symbol, root):
        return pd.read_csv(root / f"{symbol}.csv")["x"].sum()

    with pytest.warns(afml_cache.CacheWarning, match="holds more than 3 files") as caught:
        assert load("ES", root) == 1
    assert caught[0].filename == __file__  # pointed at the user's call
    assert load("NQ", root) == 1 and load("ES", root) == 1 and hits(load) == 1


def test_paths_in_a_list_and_a_path_to_be_written(cache_dir: Path, tmp_path: Path) -> None:
    @afml_cache.cacheable
    def total(paths):
        return sum(float(p.read_text()) for p in paths)

    first, second = tmp_path / "a.txt", tmp_path / "b.txt"
    first.write_text("1")
    second.write_text("2")
    assert check(total, [first, second]) == 3.0
    second.write_text("4")
    assert check(total, [first, second]) == 5.0
    first.write_text("8")
    assert check(total, (first, second)) == 12.0
    assert check(total, (first, second)) == 12.0 and hits(total) == 1

    @afml_cache.cacheable(ignore=("out",))
    def report(value, out):
        out.write_text(str(value))
        return value * 2

    out = tmp_path / "report.txt"  # named before it exists: the path alone counts, or ignore=
    assert report(3, out) == 6 and report(3, out) == 6 and hits(report) == 1

    @afml_cache.cacheable
    def sources(config, extra):
        held = sum(float(path.read_text()) for path in extra if path is not None)
        return float(config["bars"]["path"].read_text()) + held

    config = {"bars": {"path": first, "rows": 10}}
    assert check(sources, config, [second, None]) == 12.0
    first.write_text("16")  # a path in a dict of dicts
    assert check(sources, config, [second, None]) == 20.0
    second.write_text("32")  # a path among other values in a list
    assert check(sources, config, [second, None]) == 48.0
    assert check(sources, config, [second, None]) == 48.0
    assert hits(sources) == 1


def test_a_large_file_is_hashed_in_blocks_and_each_byte_counts(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from afml_cache import files

    monkeypatch.setattr(files, "_BLOCK", 4096)
    data = tmp_path / "big.bin"
    payload = bytearray(np.random.default_rng(1).integers(0, 256, 3 * 4096 + 17, dtype=np.uint8))
    data.write_bytes(payload)
    first = files.content_digest(data)
    data.write_bytes(payload)  # rewritten with the same bytes: the same digest
    assert files.content_digest(data) == first
    payload[-1] ^= 1
    data.write_bytes(payload)
    assert files.content_digest(data) != first
    assert files.content_digest(tmp_path / "missing") is None

    @afml_cache.cacheable
    def checksum(path):
        return int(np.frombuffer(path.read_bytes(), dtype=np.uint8).astype(np.int64).sum())

    assert check(checksum, data) == sum(payload)
    payload[4096] ^= 255  # inside a middle block
    data.write_bytes(payload)
    assert check(checksum, data) == sum(payload)

    # Past CONTENT_LIMIT a file counts by its state: a rewrite of the same size and times is
    # still a miss (the change time moves), a copy of the same bytes is another state.
    monkeypatch.setattr(files, "CONTENT_LIMIT", 1024)
    before = data.stat()
    payload[0] ^= 1
    data.write_bytes(payload)
    os.utime(data, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert check(checksum, data) == sum(payload)
    copy = tmp_path / "copy.bin"
    copy.write_bytes(payload)
    assert files.content_digest(copy) != files.content_digest(data)


# --- the decorator never changes what a call means ------------------------------------------


def test_a_call_the_function_rejects_raises_the_same_error(cache_dir: Path) -> None:
    def f(a: int, *, b: int = 1) -> int:
        return a + b

    cached = afml_cache.cacheable(f)
    assert cached(1, b=5) == 6
    with pytest.raises(TypeError) as expected:
        f(1, 5)  # type: ignore[misc]
    with pytest.raises(TypeError) as got:
        cached(1, 5)
    assert str(got.value) == str(expected.value)


def test_a_start_it_cannot_read_means_no_time_range(cache_dir: Path) -> None:
    @afml_cache.time_aware_cacheable
    def load_bars(symbol: str, start: str = "latest", end: str | None = None) -> str:
        return f"{symbol} from {start}"

    assert load_bars("ES", start="latest") == "ES from latest"
    assert load_bars("ES", start="latest") == "ES from latest"
    assert load_bars("ES", start="2020-01-01", end="recent") == "ES from 2020-01-01"
    assert hits(load_bars) == 1
    entries = load_bars.cache_entries()
    assert all(e.get("time_range") is None for e in entries)


# --- the law: cached equals uncached ------------------------------------------------------------

PROPERTY_CELL = """
from afml_cache import cacheable

PARAMS = {"k": 1}
LEVELS = [0]

class Model:
    FEE = 0

    def predict(self, x):
        return x * PARAMS["k"] + self.FEE

def make_adder(weights):
    def add(x):
        return x + sum(weights)
    return add

ADDER_WEIGHTS = [1]
ADDER = make_adder(ADDER_WEIGHTS)

@cacheable
def run(x, fn=None):
    out = Model().predict(x) + LEVELS[0] + ADDER(x)
    return out if fn is None else fn(out)
"""

steps = st.one_of(
    st.tuples(st.just("PARAMS['k'] = {}"), st.integers(-3, 3)),
    st.tuples(st.just("LEVELS[0] = {}"), st.integers(-3, 3)),
    st.tuples(st.just("Model.FEE = {}"), st.integers(-3, 3)),
    st.tuples(st.just("ADDER_WEIGHTS.append({})"), st.integers(-3, 3)),
    st.tuples(st.just("ADDER_WEIGHTS.clear()  # {}"), st.just(0)),
    st.tuples(st.just("CALL {}"), st.integers(-3, 3)),
    st.tuples(st.just("CALL_FN {}"), st.integers(-3, 3)),
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(steps, min_size=1, max_size=12))
def test_cached_results_equal_uncached_over_edits(
    tmp_path_factory: pytest.TempPathFactory, program: list[tuple[str, int]]
) -> None:
    previous = afml_cache.CACHE_DIRS["base"]
    afml_cache.configure(directory=tmp_path_factory.mktemp("cache"))
    try:
        nb = Notebook()
        nb.run(PROPERTY_CELL)
        for template, value in program:
            if template == "CALL {}":
                check(nb["run"], value)
            elif template == "CALL_FN {}":
                nb.run(f"FN = lambda y: y * {value % 3} + LEVELS[0]")
                check(nb["run"], value, nb["FN"])
            else:
                nb.run(template.format(value))
    finally:
        afml_cache.configure(directory=previous)


# --- values whose content the fingerprint missed (a hunt of the value rules) ----------------


def test_a_path_inside_a_config_object_counts_by_the_file(cache_dir: Path, tmp_path: Path) -> None:
    import dataclasses

    @dataclasses.dataclass(frozen=True)
    class Config:
        bars: Path
        window: int = 2

    @afml_cache.cacheable
    def mean_close(config: Any) -> float:
        rows = config.bars.read_text().split()
        return sum(map(float, rows[-config.window :])) / config.window

    attrs = pytest.importorskip("attrs")
    pydantic = pytest.importorskip("pydantic")

    @attrs.define  # slotted: no __dict__
    class AttrsConfig:
        bars: Path
        window: int = 2

    class Settings(pydantic.BaseModel):
        bars: Path
        window: int = 2

    data = tmp_path / "bars.csv"
    data.write_text("1\n2\n3\n")
    makers = (Config, lambda p: types.SimpleNamespace(bars=p, window=2), AttrsConfig)
    for make in (*makers, lambda p: Settings(bars=p)):
        data.write_text("1\n2\n3\n")
        with warnings.catch_warnings():  # pydantic's model counts by its pickle: said once
            warnings.simplefilter("ignore", afml_cache.CacheWarning)
            assert check(mean_close, make(data)) == 2.5
            data.write_text("1\n2\n3\n10\n")  # the morning download rewrites the file
            assert check(mean_close, make(data)) == 6.5


def test_a_bare_arrow_string_array_counts_its_dtype(cache_dir: Path) -> None:
    pytest.importorskip("pyarrow")

    @afml_cache.cacheable
    def lengths(values: Any) -> Any:
        return pd.Series(values).str.len()

    for dtype in ("string[pyarrow]", pd.ArrowDtype(__import__("pyarrow").large_string())):
        values = pd.Series(["ES", None], dtype=dtype).array
        same(lengths(values), lengths.uncached(values))


def test_a_polars_object_column_counts_by_the_objects(cache_dir: Path) -> None:
    pl = pytest.importorskip("polars")

    @afml_cache.cacheable
    def total_weight(frame: Any) -> int:
        return sum(d["w"] for d in frame["params"].to_list())

    params = {"w": 1}
    frame = pl.DataFrame({"sym": ["ES"], "params": pl.Series([params], dtype=pl.Object)})
    assert check(total_weight, frame) == 1
    params["w"] = 5  # the object changes in place; its address, which polars exports, does not
    assert check(total_weight, frame) == 5
    # An all-None column (dtype Null) counts too: before, Arrow's import refused it.
    notes = pl.DataFrame({"close": [1.0, 2.0], "note": [None, None]})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert afml_cache.fingerprint(notes) != afml_cache.fingerprint(notes.drop("note"))
    ds = pytest.importorskip("pyarrow.dataset")
    pa = pytest.importorskip("pyarrow")
    table = cache_dir.parent / "t.parquet"
    __import__("pyarrow.parquet").parquet.write_table(pa.table({"a": [1]}), table)
    with pytest.raises(afml_cache.FingerprintError, match="Python source"):
        afml_cache.fingerprint(pl.scan_pyarrow_dataset(ds.dataset(table)))


def test_numpy_functions_of_one_name_in_two_modules_differ(cache_dir: Path) -> None:
    if not hasattr(np.linalg, "trace"):
        pytest.skip("numpy < 2.0 has no np.linalg.trace")

    @afml_cache.cacheable
    def apply(op: Any, stack: Any) -> Any:
        return op(stack)

    stack = np.arange(18.0).reshape(2, 3, 3)
    same(apply(np.trace, stack), np.trace(stack))
    same(apply(np.linalg.trace, stack), np.linalg.trace(stack))


def test_an_enum_member_inside_a_container_counts_its_class_code(cache_dir: Path) -> None:
    nb = Notebook()
    side = (
        "import enum\n"
        "class Side(enum.Enum):\n"
        "    LONG = 1\n"
        "    def sized(self, n):\n"
        "        return n * 1\n"
    )
    nb.run(side)
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def orders(spec):
        return [s.sized(10) for s in spec["sides"]]
    """)
    nb.run("got = orders({'sides': [Side.LONG]})")
    assert nb["got"] == [10]
    nb.run(side.replace("n * 1", "n * 2"))
    nb.run("got = orders({'sides': [Side.LONG]}); want = orders.uncached({'sides': [Side.LONG]})")
    assert nb["got"] == nb["want"] == [20]


def test_a_value_whose_own_code_raises_runs_uncached_with_a_warning(cache_dir: Path) -> None:
    # numpy's multi-field view has no dtype.descr: a raw ValueError escaped the cached call.
    @afml_cache.cacheable
    def total(records: Any) -> float:
        return float(records["close"].sum())

    records = np.zeros(3, dtype=[("open", "f8"), ("close", "f8")])
    records["close"] = [1.0, 2.0, 3.0]
    view = records[["close", "open"]]
    with pytest.warns(afml_cache.CacheWarning, match="runs uncached"):
        assert total(view) == 6.0


def test_a_global_partial_whose_keywords_change_in_place_is_a_miss(
    cache_dir: Path, load: Loader
) -> None:
    module = load(
        """
        import functools
        from afml_cache import cacheable

        def scale(x, w=1):
            return x * w

        SCALE = functools.partial(scale, w=2)

        @cacheable
        def scaled(x):
            return SCALE(x)
        """
    )
    assert check(module.scaled, 2) == 4
    module.SCALE.keywords["w"] = 3  # the partial's own dict, changed in place
    assert check(module.scaled, 2) == 6


@pytest.mark.filterwarnings("ignore:afml_cache. __main__.Strategy has no fingerprint rule")
def test_an_instance_inside_a_container_counts_its_class_attributes(cache_dir: Path) -> None:
    # `params = {"w": 2}` in the class body, read by its methods: the cell edited and run again
    # must not find the results of the old dict (it is a value read by content, not code).
    nb = Notebook()
    strategy = (
        "class Strategy:\n"
        "    params = {'w': 2}\n"
        "    def score(self, x):\n"
        "        return x * self.params['w']\n"
    )
    nb.run(strategy)
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def run(spec, x):
        return spec["s"].score(x)
    """)
    for w in (2, 3, 4):
        nb.run(strategy.replace("'w': 2", f"'w': {w}"))
        nb.run("got = run({'s': Strategy()}, 1); want = run.uncached({'s': Strategy()}, 1)")
        assert nb["got"] == nb["want"] == w


def test_a_class_keeping_a_registry_of_its_instances_is_read_once_per_call(
    cache_dir: Path, load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `all = []` filled in __init__: reading the class's values meets its own instances, whose
    # class is being read. Each instance of a call's arguments reads the class once, not again
    # for every instance and every instance inside the registry (that took minutes).
    module = load(
        """
        from afml_cache import cacheable

        class Leg:
            all = []

            def __init__(self, w):
                self.w = w
                Leg.all.append(self)

            def value(self):
                return self.w

        @cacheable
        def total(legs):
            return sum(leg.value() for leg in legs)
        """
    )
    from afml_cache.codehash import walk

    reads: list[type] = []
    walk_classes = walk._walk

    def counted(objects: Any) -> Any:
        reads.extend(o for o in objects if isinstance(o, type))
        return walk_classes(objects)

    monkeypatch.setattr(walk, "_walk", counted)
    legs = [module.Leg(i) for i in range(200)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", afml_cache.CacheWarning)  # Leg has no fingerprint rule
        assert check(module.total, legs) == sum(range(200))
        assert check(module.total, legs) == sum(range(200)) and hits(module.total) == 1
    assert 0 < reads.count(module.Leg) <= 4


# --- code made at run time, class members, readers held in globals -------------------------------


def test_functions_made_by_exec_or_eval_count_their_code(cache_dir: Path) -> None:
    # A function exec'd or eval'd into a namespace of its own (a strategy built from a formula,
    # sympy's lambdify) has no module; it counted as a builtin, by its name only.
    nb = Notebook()
    nb.run("""
    import numpy as np
    from afml_cache import cacheable

    def build(expression):
        namespace = {}
        exec(f"def signal(x):\\n    return {expression}\\n", namespace)
        return namespace["signal"]

    @cacheable
    def backtest(signal, prices):
        return float(signal(prices).sum())

    HELPER = build("x * 10")

    @cacheable
    def feature(prices):
        return float(HELPER(prices).sum())

    prices = np.arange(5.0)
    """)
    backtest, prices = nb["backtest"], nb["prices"]
    assert check(backtest, nb["build"]("x * 2"), prices) == 20.0
    assert check(backtest, nb["build"]("x * 3"), prices) == 30.0
    assert check(backtest, eval("lambda x: x + 1", {}), prices) == 15.0
    assert check(backtest, eval("lambda x: x - 1", {}), prices) == 5.0
    assert check(nb["feature"], prices) == 100.0
    nb.run('HELPER = build("x * 20")')
    assert check(nb["feature"], prices) == 200.0
    assert check(backtest, nb["build"]("x * 3"), prices) == 30.0
    assert hits(backtest) == 1


def test_a_dunder_class_member_counts_its_content_after_a_restart(
    cache_dir: Path, tmp_path: Path
) -> None:
    # Mutable dunder members counted by type: a default edited in the file kept the old results.
    source = textwrap.dedent("""
    from afml_cache import cacheable

    class Feature:
        __defaults__ = {"window": 5}

        def apply(self, x):
            return x * self.__defaults__["window"]

    @cacheable
    def run(x):
        return Feature().apply(x)
    """)
    run = Restarts(tmp_path, cache_dir, "research_dunder", "run(10)")
    assert run(source) == "50"
    assert run(source) == "50"
    assert run(source.replace('"window": 5', '"window": 7')) == "70"


def test_a_pydantic_model_counts_its_field_defaults(cache_dir: Path, tmp_path: Path) -> None:
    pytest.importorskip("pydantic")
    # pydantic keeps a field's default in __pydantic_fields__, not as a class attribute.
    source = textwrap.dedent("""
    import pydantic
    from afml_cache import cacheable

    class Params(pydantic.BaseModel):
        w: int = 2

    @cacheable
    def scaled(x):
        return x * Params().w
    """)
    run = Restarts(tmp_path, cache_dir, "research_model", "scaled(10)")
    assert run(source) == "20"
    assert run(source.replace("w: int = 2", "w: int = 3")) == "30"


@pytest.mark.filterwarnings("ignore::afml_cache.CacheWarning")
def test_instances_inside_values_count_their_class_code_whatever_their_rule(
    cache_dir: Path,
) -> None:
    # Held in a list or dict, a user class read by __cache_key__, a registered rule, or as a
    # frame or array subclass counted no code: an edited method kept the old results.
    nb = Notebook()
    nb.run("""
    import numpy as np
    import pandas as pd
    import afml_cache
    from afml_cache import cacheable

    class Momentum:
        def __init__(self, w):
            self.w = w
        def __cache_key__(self):
            return ("Momentum", self.w)
        def signal(self, x):
            return x + self.w

    class Carry:
        def __init__(self, w):
            self.w = w
        def signal(self, x):
            return x - self.w

    afml_cache.register_fingerprint(Carry, lambda c: c.w)

    class Bars(pd.DataFrame):
        @property
        def _constructor(self):
            return Bars
        def score(self):
            return float(self["c"].sum())

    class Prices(np.ndarray):
        def score(self):
            return float(np.asarray(self).sum())

    @cacheable
    def evaluate(strategies, x):
        return [s.signal(x) for s in strategies]

    @cacheable
    def scores(data):
        return {k: v.score() for k, v in data.items()}

    STRATEGIES = [Momentum(3), Carry(1)]
    DATA = {"bars": Bars({"c": [1.0, 2.0]}), "prices": np.arange(3.0).view(Prices)}
    """)
    evaluate, scores = nb["evaluate"], nb["scores"]
    assert check(evaluate, nb["STRATEGIES"], 10) == [13, 9]
    assert check(scores, nb["DATA"]) == {"bars": 3.0, "prices": 3.0}
    nb.run("""
    Momentum.signal = lambda self, x: x * self.w
    Carry.signal = lambda self, x: x / self.w
    Bars.score = lambda self: float(self["c"].max())
    Prices.score = lambda self: float(np.asarray(self).max())
    """)
    assert check(evaluate, nb["STRATEGIES"], 10) == [30, 10.0]
    assert check(scores, nb["DATA"]) == {"bars": 2.0, "prices": 2.0}
    assert check(evaluate, nb["STRATEGIES"], 10) == [30, 10.0]
    assert hits(evaluate) == 1


def test_readers_held_in_globals_count_what_they_read(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A slot wrapper of an array or dict, a method of os.environ, a partial of os.getenv and a
    # namespace's globals read as an attribute counted by name: each change hit the old result.
    monkeypatch.setenv("AFML_TEST_LB", "5")
    nb = Notebook()
    nb.run("""
    import functools
    import inspect
    import os
    import numpy as np
    from afml_cache import cacheable

    W = np.array([1.0, 2.0, 3.0])
    SCALE = W.__mul__
    OVERRIDES = {"a": 1}
    MERGE = OVERRIDES.__or__
    GET = os.environ.get
    LOOKBACK = functools.partial(os.getenv, "AFML_TEST_LB")
    SETTINGS = {"k": 1}

    def anchor():
        pass

    @cacheable
    def scaled(x):
        return float(SCALE(x).sum())

    @cacheable
    def merged(k):
        return MERGE({})[k]

    @cacheable
    def through_get(x):
        return x * int(GET("AFML_TEST_LB"))

    @cacheable
    def through_partial(x):
        return x * int(LOOKBACK())

    @cacheable
    def through_frame(name):
        return inspect.currentframe().f_globals[name]["k"]

    @cacheable
    def through_function(name):
        return anchor.__globals__[name]["k"]
    """)
    calls = [
        ("scaled", 2.0, 12.0, 60.0),
        ("merged", "a", 1, 2),
        ("through_get", 2, 10, 12),
        ("through_partial", 2, 10, 12),
        ("through_frame", "SETTINGS", 1, 2),
        ("through_function", "SETTINGS", 1, 2),
    ]
    assert [check(nb[name], arg) for name, arg, _, _ in calls] == [b for _, _, b, _ in calls]
    nb.run('W[:] = 10.0\nOVERRIDES["a"] = 2\nSETTINGS["k"] = 2')
    monkeypatch.setenv("AFML_TEST_LB", "6")
    assert [check(nb[name], arg) for name, arg, _, _ in calls] == [a for _, _, _, a in calls]
    assert [check(nb[name], arg) for name, arg, _, _ in calls] == [a for _, _, _, a in calls]
    assert [hits(nb[name]) for name, _, _, _ in calls] == [1] * len(calls)


@pytest.mark.filterwarnings("ignore::afml_cache.CacheWarning")
def test_an_enum_inside_a_value_counts_the_globals_its_methods_read(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import dataclasses
    import enum
    from afml_cache import cacheable

    CONFIG = {"mult": 2}

    class Kind(enum.Enum):
        A = 1
        def scale(self, x):
            return x * CONFIG["mult"] * self.value

    @dataclasses.dataclass
    class Spec:
        kind: Kind

    @cacheable
    def in_list(kinds, x):
        return kinds[0].scale(x)

    @cacheable
    def in_dataclass(spec, x):
        return spec.kind.scale(x)
    """)
    kind, spec = nb["Kind"].A, nb["Spec"](nb["Kind"].A)
    assert (check(nb["in_list"], [kind], 10), check(nb["in_dataclass"], spec, 10)) == (20, 20)
    nb.run('CONFIG["mult"] = 3')
    assert (check(nb["in_list"], [kind], 10), check(nb["in_dataclass"], spec, 10)) == (30, 30)


def test_a_partial_holding_a_connection_caches(cache_dir: Path) -> None:
    # Its keywords made it count by content at each call, which a connection has not: every
    # call ran uncached, with a warning.
    nb = Notebook()
    nb.run("""
    import functools
    import sqlite3
    from afml_cache import cacheable

    CONN = sqlite3.connect(":memory:")

    def query(x, conn):
        return conn.execute(f"select {x} * 2").fetchone()[0]

    RUN = functools.partial(query, conn=CONN)

    @cacheable
    def doubled(x):
        return RUN(x)
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(nb["doubled"], 21) for _ in range(3)] == [42, 42, 42]
    assert hits(nb["doubled"]) == 2
    # ...and its keywords, and the values it binds, still count as they are at each call.
    nb.run("""
    WEIGHTS = [1, 2]

    def weighed(conn, weights, scale):
        return sum(weights) * scale

    SCORE = functools.partial(weighed, CONN, WEIGHTS, scale=1)

    @cacheable
    def score():
        return SCORE()
    """)
    assert check(nb["score"]) == 3
    nb.run('SCORE.keywords["scale"] = 10')
    assert check(nb["score"]) == 30
    nb.run("WEIGHTS.append(100)")
    assert check(nb["score"]) == 1030
    # ...held in a tuple or a dict of steps too (they counted by type, or ran uncached).
    nb.run("""
    STEPS = (functools.partial(weighed, CONN, [1], scale=2),)
    REGISTRY = {"q": functools.partial(weighed, CONN, [1], scale=2)}

    @cacheable
    def stepped():
        return STEPS[0]() + REGISTRY["q"]()
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(nb["stepped"]) == 4
        nb.run('STEPS[0].keywords["scale"] = 5\nREGISTRY["q"].keywords["scale"] = 5')
        assert check(nb["stepped"]) == 10
    # ...and in a list, or a dict of tuples (they counted by type: the old result came back).
    nb.run("""
    PIPELINE = [functools.partial(weighed, CONN, [1], scale=2)]
    STAGES = {"load": (functools.partial(weighed, CONN, [1], scale=2),)}

    @cacheable
    def piped():
        return PIPELINE[0]() + STAGES["load"][0]()
    """)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert check(nb["piped"]) == 4
        nb.run("PIPELINE[0] = functools.partial(weighed, CONN, [1], scale=7)")
        assert check(nb["piped"]) == 9
        nb.run('STAGES["load"] = (functools.partial(weighed, CONN, [1], scale=7),)')
        assert check(nb["piped"]) == 14


def test_a_class_with_an_unhashable_metaclass_inside_a_value(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    from afml_cache import cacheable

    class Meta(type):
        def __eq__(cls, other):
            return cls is other
        __hash__ = None

    class Model(metaclass=Meta):
        def predict(self, x):
            return x + 1

    @cacheable
    def run(models, x):
        return models["model"]().predict(x)
    """)
    models = {"model": nb["Model"]}
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(nb["run"], models, 1) for _ in range(2)] == [2, 2]
    nb.run("Model.predict = lambda self, x: x + 2")
    assert check(nb["run"], models, 1) == 3
    assert hits(nb["run"]) == 1


def test_a_registry_of_instances_is_read_once_per_fingerprint(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each instance read its class's registry again: a list of 200 took 40,000 class reads.
    from afml_cache.codehash import walk

    nb = Notebook()
    nb.run("""
    from afml_cache import cacheable

    class Leg:
        all = []
        def __init__(self, w):
            self.w = w
            Leg.all.append(self)
        def weight(self):
            return self.w

    LEGS = [Leg(i) for i in range(200)]

    @cacheable
    def total(x):
        return x * sum(leg.weight() for leg in Leg.all)
    """)
    walks = []
    counted = walk._walk

    def counting(roots: list[object]) -> Any:
        walks.extend(root for root in roots if root is nb["Leg"])
        return counted(roots)

    monkeypatch.setattr(walk, "_walk", counting)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        first = afml_cache.fingerprint(nb["LEGS"])
        assert len(walks) == 1
        assert afml_cache.fingerprint(nb["LEGS"]) == first
        walks.clear()
        assert [check(nb["total"], 2) for _ in range(3)] == [39800] * 3
    # The key and the live values; a miss beside other threads (another test's, in a full run)
    # reads its globals again before and after it runs.
    assert len(walks) <= 2 * 3 + 2 and hits(nb["total"]) == 2
    nb["Leg"](1000)
    assert afml_cache.fingerprint(nb["LEGS"]) != first


@pytest.mark.filterwarnings("ignore:afml_cache. __main__.Model has no fingerprint rule")
def test_a_class_whose_first_method_is_a_decorators_wrapper_counts_its_code(
    cache_dir: Path,
) -> None:
    # A notebook class was judged by its first function: a cached method's or a
    # contextmanager's wrapper lives in a library, so the class counted as a library's.
    nb = Notebook()
    nb.run("""
    import contextlib
    import dataclasses
    from afml_cache import cacheable

    @dataclasses.dataclass
    class Strategy:
        window: int = 2
        bonus = 0

        @cacheable
        def run(self, x):
            return self.signal(x)

        def signal(self, x):
            return x * self.window + self.bonus

    class Model:
        @contextlib.contextmanager
        def session(self):
            yield self

        def predict(self, x):
            return x * 2 + Model.offset

        offset = 0

    @cacheable
    def evaluate(model, x):
        return model.predict(x)
    """)
    strategy, model = nb["Strategy"](), nb["Model"]()
    assert (check(nb["Strategy"].run, strategy, 10), check(nb["evaluate"], model, 10)) == (20, 20)
    nb.run("Strategy.bonus = 100\nModel.offset = 100")
    assert (check(nb["Strategy"].run, strategy, 10), check(nb["evaluate"], model, 10)) == (
        120,
        120,
    )


def test_a_user_module_held_in_a_value_counts_what_it_holds(cache_dir: Path, load: Loader) -> None:
    # A module passed as an argument, or kept in a tuple, dict or class attribute, counted by
    # its name: its globals and its functions' code did not count.
    strategy = load("WINDOW = 2\n\ndef signal(x):\n    return x * WINDOW\n")
    nb = Notebook()
    nb.namespace["strategy"] = strategy
    nb.run("""
    from afml_cache import cacheable

    STEPS = (strategy,)
    REGISTRY = {"mom": strategy}

    class Runner:
        library = strategy

    @cacheable
    def as_argument(module, x):
        return module.signal(x)

    @cacheable
    def in_a_tuple(x):
        return [m.signal(x) for m in STEPS]

    @cacheable
    def in_a_dict(x):
        return REGISTRY["mom"].signal(x)

    @cacheable
    def in_a_class(x):
        return Runner.library.signal(x)
    """)
    calls = [("as_argument", (strategy, 10)), ("in_a_tuple", (10,)), ("in_a_dict", (10,))]
    calls.append(("in_a_class", (10,)))
    assert [check(nb[name], *args) for name, args in calls] == [20, [20], 20, 20]
    strategy.WINDOW = 7
    assert [check(nb[name], *args) for name, args in calls] == [70, [70], 70, 70]
    strategy.signal = lambda x: x - 1
    assert [check(nb[name], *args) for name, args in calls] == [9, [9], 9, 9]


def test_a_submodule_imported_in_the_body_counts_from_the_first_call(
    cache_dir: Path, tmp_path: Path
) -> None:
    # `from . import helpers`, which the package does not import: its code did not count in a
    # new process's first call, which found the old helper's result.
    package = tmp_path / "project" / "research"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "core.py").write_text(
        textwrap.dedent("""
        from afml_cache import cacheable

        @cacheable
        def relative(x):
            from . import helpers
            return helpers.smooth(x)

        @cacheable
        def dotted(x):
            import research.helpers
            return research.helpers.smooth(x)
        """)
    )
    env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}

    def run(factor: int) -> str:
        (package / "helpers.py").write_text(f"def smooth(x):\n    return x * {factor}\n")
        return subprocess.run(
            [
                sys.executable,
                "-c",
                "from research import core; print(core.relative(10), core.dotted(10))",
            ],
            cwd=package.parent,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        ).stdout.strip()

    assert run(2) == "20 20"
    assert run(3) == "30 30"


def test_an_optional_backend_that_fails_to_import_is_tried_once(
    cache_dir: Path, tmp_path: Path
) -> None:
    # `if use_gpu: from . import gpu`, whose import fails here: every walk of the code imported
    # it again (its start-up cost at each call's key).
    package = tmp_path / "optional" / "backends"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "gpu.py").write_text("print('imported')\nimport a_library_not_installed\n")
    (package / "api.py").write_text(
        textwrap.dedent("""
        from afml_cache import cacheable

        @cacheable
        def compute(x, use_gpu=False):
            if use_gpu:
                from . import gpu
                return gpu.run(x)
            return x * 2
        """)
    )
    env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [
            sys.executable,
            "-c",
            "from backends import api\n"
            "print([api.compute(x) for x in (1, 1, 2, 2)],"
            " api.compute.cache_info()['cache_misses'])",
        ],
        cwd=package.parent,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=True,
    )
    assert done.stdout.split("\n")[:2] == ["imported", "[2, 2, 4, 4] 2"]


def test_globals_named_in_strings_pandas_evaluates_count(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import pandas as pd
    from afml_cache import cacheable

    THRESHOLD = 1

    @cacheable
    def above(df):
        return int(df.query("x > @THRESHOLD")["x"].sum())

    @cacheable
    def scaled(df):
        return int(df.eval("x * @THRESHOLD").sum())

    @cacheable
    def evaluated(df):
        x = df["x"]
        return int(pd.eval("x * THRESHOLD").sum())

    @cacheable
    def in_a_comprehension(df):  # the query's code is the comprehension's, not the function's
        return sum(int(part.query("x > @THRESHOLD")["x"].sum()) for part in (df, df))

    @cacheable
    def in_a_lambda(df):
        return int(df.pipe(lambda d: d.eval("x * @THRESHOLD")).sum())

    @cacheable
    def columns_only(df):  # "x" is the frame's column: the global x is not read
        return int(df.eval("x * 2").sum())

    x = [0, 1]
    frame = pd.DataFrame({"x": [1, 2, 3, 4]})
    """)
    names = ("above", "scaled", "evaluated", "in_a_comprehension", "in_a_lambda", "columns_only")
    frame = nb["frame"]
    assert [check(nb[name], frame) for name in names] == [9, 10, 10, 18, 10, 20]
    nb.run("THRESHOLD = 3")
    assert [check(nb[name], frame) for name in names] == [4, 30, 30, 8, 30, 20]
    nb.run("x = [5, 6]")  # a global that only shares the column's name: still a hit
    assert check(nb["columns_only"], frame) == 20
    assert hits(nb["columns_only"]) == 2


def test_a_script_parsing_its_command_line_with_argparse_counts_it(
    cache_dir: Path, tmp_path: Path
) -> None:
    script = tmp_path / "features.py"
    script.write_text(
        textwrap.dedent("""
        import argparse
        from afml_cache import cacheable

        parser = argparse.ArgumentParser()
        parser.add_argument("--window", type=int, default=5)

        @cacheable
        def features(x):
            return x * parser.parse_args().window

        print(features(10))
        """)
    )
    env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir)}

    def run(*arguments: str) -> str:
        done = subprocess.run(
            [sys.executable, str(script), *arguments],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
            check=True,
        )
        return done.stdout.strip()

    assert [run("--window", "2"), run("--window", "3"), run("--window", "2")] == ["20", "30", "20"]


def test_modules_importing_each_other_cache_and_are_not_read_whole_at_each_hit(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A module reached by name counted a module it imports by content at each call: modules
    # importing each other made a cycle (every call uncached), and a hit hashed the big arrays
    # of modules the function never reads.
    import importlib

    from afml_cache.codehash import walk

    project = tmp_path / "project"
    project.mkdir()
    sources = {
        "research_data": "import numpy as np\nBIG = np.arange(1_000_000.0)\n",
        "research_second": (
            "import research_first\nimport research_data\n\ndef one():\n    return 1\n"
        ),
        "research_first": (
            "import research_second\n\ndef run(name):\n"
            "    return getattr(research_second, name)()\n"
        ),
    }
    for name, source in sources.items():
        (project / f"{name}.py").write_text(source)
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.syspath_prepend(str(project))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    first = importlib.import_module("research_first")
    nb = Notebook()
    nb.namespace["research_first"] = first
    nb.run("""
    from afml_cache import cacheable

    @cacheable
    def g(name):
        return research_first.run(name)
    """)
    reads = []
    counted = walk.module_content
    monkeypatch.setattr(walk, "module_content", lambda m: reads.append(m) or counted(m))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert [check(nb["g"], "one") for _ in range(3)] == [1, 1, 1]
        assert reads == [] and hits(nb["g"]) == 2
        assert afml_cache.fingerprint(first) == afml_cache.fingerprint(first)
    for name in sources:
        sys.modules.pop(name, None)


def test_a_package_held_or_read_by_a_computed_name_counts_its_submodules(
    cache_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # `held.sub.f(x)`: the submodule of a package in a tuple, an argument, a closure, or read by
    # `getattr(pkg, name)`, counted by its name only, so an edited `sub.f` kept the old result.
    import importlib

    package = tmp_path / "project" / "research_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("from . import sub\n")
    (package / "sub.py").write_text("FACTOR = 2\n\ndef f(x):\n    return x * FACTOR\n")
    monkeypatch.syspath_prepend(str(package.parent))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)
    for name in ("research_pkg", "research_pkg.sub"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    pkg = importlib.import_module("research_pkg")
    nb = Notebook()
    nb.namespace["research_pkg"] = pkg
    nb.run("""
    from afml_cache import cacheable

    HELD = (research_pkg,)

    def make(p):
        @cacheable
        def in_closure(x):
            return p.sub.f(x)
        return in_closure

    @cacheable
    def in_tuple(x):
        return HELD[0].sub.f(x)

    @cacheable
    def as_argument(p, x):
        return p.sub.f(x)

    @cacheable
    def by_name(x, name="sub"):
        return getattr(research_pkg, name).f(x)

    in_closure = make(research_pkg)
    """)
    calls = [("in_tuple", (10,)), ("as_argument", (pkg, 10)), ("by_name", (10,))]
    calls.append(("in_closure", (10,)))
    assert [check(nb[name], *args) for name, args in calls] == [20] * 4
    pkg.sub.f = lambda x: x * pkg.sub.FACTOR + 1000
    assert [check(nb[name], *args) for name, args in calls] == [1020] * 4
    pkg.sub.FACTOR = 3
    assert [check(nb[name], *args) for name, args in calls] == [1030] * 4
    for name in ("research_pkg", "research_pkg.sub"):
        sys.modules.pop(name, None)


def test_a_partial_given_keywords_after_it_is_first_read(cache_dir: Path) -> None:
    nb = Notebook()
    nb.run("""
    import functools
    from afml_cache import cacheable

    def add(x, w=0):
        return x + w

    P = functools.partial(add)

    @cacheable
    def f(x):
        return P(x)
    """)
    assert check(nb["f"], 3) == 3
    nb.run('P.keywords["w"] = 100')
    assert check(nb["f"], 3) == 103


def test_an_attrs_instance_with_a_field_not_set_yet_counts_its_other_fields(
    cache_dir: Path,
) -> None:
    # An unset init=False field raised in the attrs rule, so the global counted by type.
    nb = Notebook()
    nb.run("""
    import attr
    from afml_cache import cacheable

    @attr.s
    class Settings:
        window = attr.ib()
        _memo = attr.ib(init=False)

    CFG = Settings(3)

    @cacheable
    def score(x):
        return x * CFG.window
    """)
    assert check(nb["score"], 10) == 30
    nb.run("CFG.window = 5")
    assert check(nb["score"], 10) == 50


def test_a_jitted_function_counts_how_numba_compiles_it(cache_dir: Path, tmp_path: Path) -> None:
    # Its options (error_model) and the signatures it was given counted nothing: a hit returned
    # inf where the function raises, an int where it returns a float.
    pytest.importorskip("numba")
    script = tmp_path / "kernels.py"
    env = {**os.environ, "AFML_CACHE_DIR": str(cache_dir)}

    def run(decoration: str) -> str:
        script.write_text(
            textwrap.dedent(f"""
            import numba
            from afml_cache import cacheable

            @numba.njit({decoration})
            def kernel(x):
                return x / 3 if x > 0 else 1.0 / x

            @cacheable
            def by_global(x):
                return kernel(x)

            @cacheable
            def by_argument(fn, x):
                return fn(x)

            for x in (2, 0):
                try:
                    print(by_global(x), by_argument(kernel, x))
                except ZeroDivisionError:
                    print("ZeroDivisionError")
            """)
        )
        done = subprocess.run(
            [sys.executable, str(script)], env=env, capture_output=True, text=True, timeout=300
        )
        return done.stdout.strip()

    assert run('"float64(int64)", error_model="numpy"').splitlines() == [
        "0.6666666666666666 0.6666666666666666",
        "inf inf",
    ]
    assert run('"int64(int64)", error_model="python"').splitlines() == [
        "0 0",
        "ZeroDivisionError",
    ]
