"""The code fingerprint of a function: what it computes, not how its source is laid out.

Test modules are written to a temporary directory and imported from there, so they are genuinely
the user's own code; notebook code is imitated with ``exec`` in a namespace named ``__main__``.
"""

from __future__ import annotations

import functools
import math
import re
import sys
import textwrap
import threading
import types
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from afml_cache import codehash, fingerprint
from afml_cache.codehash import code_fingerprint, code_state, function_key
from afml_cache.errors import FingerprintError

HEX64 = re.compile(r"[0-9a-f]{64}")

Loader = Callable[..., types.ModuleType]

PIPELINE = '''
import math

import numpy as np

WINDOW = 20
COUNTS = {"calls": 0}


def smooth(x):
    return np.mean(x) * WINDOW


def scale(x):
    return math.sqrt(abs(smooth(x)))


def unrelated(x):
    return x - 1


class Model:
    FACTOR = 2.0

    def __init__(self, k):
        self.k = k

    def predict(self, x):
        return scale(x) * self.FACTOR * self.k


def pipeline(x):
    """Turn prices into a signal."""
    COUNTS["calls"] += 1
    return Model(3).predict(x) + scale(x)
'''


def digest_of(load: Loader, source: str, name: str = "pipeline") -> str:
    return code_fingerprint(getattr(load(source), name))


def notebook(*cells: str) -> dict[str, Any]:
    """Run ``cells`` one after the other in one namespace, as a notebook's ``__main__``."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for i, cell in enumerate(cells):
        exec(compile(textwrap.dedent(cell), f"<ipython-input-{i}-cell>", "exec"), namespace)
    return namespace


# --- the basics -----------------------------------------------------------------------------


def test_digest_is_64_hex_and_repeatable(load: Loader) -> None:
    module = load(PIPELINE)
    first = code_fingerprint(module.pipeline)
    assert HEX64.fullmatch(first)
    assert code_fingerprint(module.pipeline) == first
    # The same source imported again (new function objects, another module name) agrees.
    assert digest_of(load, PIPELINE) == first


def test_comments_blank_lines_docstrings_and_line_shifts_do_not_count(load: Loader) -> None:
    base = digest_of(load, PIPELINE)
    variants = {
        "comments": PIPELINE.replace(
            "def smooth(x):", "# smoothing\ndef smooth(x):  # fast"
        ).replace("    return Model(3)", "    # the signal\n    return Model(3)"),
        "blank lines": PIPELINE.replace("\n\n", "\n\n\n\n"),
        "docstring edited": PIPELINE.replace("Turn prices into a signal.", "Other words."),
        "docstring removed": PIPELINE.replace('    """Turn prices into a signal."""\n', ""),
        "helper docstring added": PIPELINE.replace(
            "def smooth(x):\n", 'def smooth(x):\n    """Mean times the window."""\n'
        ),
        "class docstring added": PIPELINE.replace(
            "class Model:\n", 'class Model:\n    """A model."""\n'
        ),
        "moved down": "\n\n\ndef padding():\n    return 0\n\n\n" + PIPELINE,
    }
    for label, source in variants.items():
        assert source != PIPELINE, label
        assert digest_of(load, source) == base, label


def test_nested_function_docstrings_do_not_count(load: Loader) -> None:
    source = """
    def outer(x):
        def inner(y):
            '''First words.'''
            return y + 1
        return inner(x)
    """
    base = digest_of(load, source, "outer")
    assert digest_of(load, source.replace("First words.", "Others."), "outer") == base
    # A string constant that is not a docstring does count.
    other = source.replace("return y + 1", "return y + 'a'")
    assert digest_of(load, other, "outer") != digest_of(load, other.replace("'a'", "'b'"), "outer")


def test_editing_the_body_counts(load: Loader) -> None:
    base = digest_of(load, PIPELINE)
    assert digest_of(load, PIPELINE.replace("+ scale(x)", "- scale(x)")) != base
    assert digest_of(load, PIPELINE.replace("Model(3)", "Model(4)")) != base


def test_editing_a_helper_counts_two_levels_deep(load: Loader) -> None:
    base = digest_of(load, PIPELINE)
    # pipeline -> scale -> smooth
    assert digest_of(load, PIPELINE.replace("np.mean(x)", "np.median(x)")) != base
    assert digest_of(load, PIPELINE.replace("math.sqrt(", "math.exp(")) != base


def test_editing_an_unrelated_function_does_not_count(load: Loader) -> None:
    base = digest_of(load, PIPELINE)
    assert digest_of(load, PIPELINE.replace("return x - 1", "return x - 2")) == base


def test_a_module_constant_counts_by_value(load: Loader) -> None:
    module = load(PIPELINE)
    base = code_fingerprint(module.pipeline)
    assert digest_of(load, PIPELINE.replace("WINDOW = 20", "WINDOW = 21")) != base
    # Rebinding at run time (a notebook cell, a reload) is noticed too, and undone.
    module.WINDOW = 21
    assert code_fingerprint(module.pipeline) != base
    module.WINDOW = 20
    assert code_fingerprint(module.pipeline) == base


def test_tuple_and_frozenset_constants_count_by_value(load: Loader) -> None:
    source = """
    LAGS = (1, 2, (3, "x"))
    SIDES = frozenset({"buy", "sell"})

    def f(x):
        return [x * lag for lag in LAGS if SIDES]
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source.replace('(3, "x")', '(3, "y")'), "f") != base
    assert digest_of(load, source.replace('"sell"', '"short"'), "f") != base


def test_mutable_state_is_read_at_each_call_not_hashed_into_the_digest(load: Loader) -> None:
    module = load(PIPELINE)
    base, live = code_state(module.pipeline)
    assert base == code_fingerprint(module.pipeline)
    assert live == (("COUNTS", module.COUNTS),)
    module.pipeline(np.arange(5.0))  # mutates COUNTS
    module.COUNTS["other"] = [1, 2, 3]
    assert code_state(module.pipeline) == (base, (("COUNTS", module.COUNTS),))
    module.COUNTS = {"calls": 99}  # rebound to another dict: read afresh, same digest
    assert code_state(module.pipeline) == (base, (("COUNTS", {"calls": 99}),))
    module.COUNTS = [0]  # now a list: the name points to another kind of thing
    assert code_fingerprint(module.pipeline) != base


def test_values_that_cannot_change_are_hashed_once_not_read_per_call(load: Loader) -> None:
    source = """
    import dataclasses
    import datetime

    import numpy as np

    @dataclasses.dataclass(frozen=True)
    class Config:
        window: int = 20

    def clip(x):
        return min(x, 1)

    CFG = Config()
    START = datetime.date(2020, 1, 1)
    SCALE = np.int64(3)
    STEPS = (clip, abs)

    def f(x):
        for step in STEPS:
            x = step(x)
        return x * CFG.window * SCALE, START
    """
    module = load(source)
    base, live = code_state(module.f)
    assert live == ()
    for old, new in [("window: int = 20", "window: int = 21"), ("(2020, 1, 1)", "(2020, 1, 2)")]:
        assert digest_of(load, source.replace(old, new), "f") != base
    assert digest_of(load, source.replace("np.int64(3)", "np.int64(4)"), "f") != base
    assert digest_of(load, source.replace("min(x, 1)", "min(x, 2)"), "f") != base


def test_live_values_are_found_through_every_path(load: Loader) -> None:
    cfg = load('PARAMS = {"k": 1}\n', name=f"cfg_{uuid.uuid4().hex}")
    module = load(f"""
    import {cfg.__name__} as cfg

    LEVELS = [1.0]

    class Model:
        TABLE = {{"a": 1}}

    def level(scale=[2.0]):
        return LEVELS[0] * scale[0]

    def make(weights):
        def f(x):
            return x * cfg.PARAMS["k"] + level() + Model.TABLE["a"] + sum(weights)
        return f
    """)
    weights = [1, 2]
    _, live = code_state(module.make(weights))
    found = dict(live)
    assert found["weights"] is weights
    assert found["cfg.PARAMS"] is cfg.PARAMS
    assert found["LEVELS"] is module.LEVELS
    assert found["level.__defaults__[0]"] == [2.0]
    assert found["Model.TABLE"] is module.Model.TABLE


def test_containers_only_written_to_are_not_live(load: Loader) -> None:
    module = load("""
    LOG = []
    SEEN = set()
    COUNTS = {"n": 0}

    def f(x):
        LOG.append(x if x > 0 else -x)
        SEEN.add(len(str(x)))
        COUNTS["n"] += 1
        return x

    def g(x):
        LOG.append(x)
        return len(LOG)
    """)
    assert codehash._written_only(module.f.__code__) == frozenset({"LOG", "SEEN"})
    assert [name for name, _ in code_state(module.f)[1]] == ["COUNTS"]
    assert [name for name, _ in code_state(module.g)[1]] == ["LOG"]


def test_a_library_function_as_a_value_counts_by_name_and_version() -> None:
    module, digest, live = function_key(textwrap.dedent)
    assert (module, live) == ("textwrap", ())
    assert digest == function_key(textwrap.dedent)[1] != function_key(textwrap.indent)[1]


def test_a_function_as_a_value_whose_code_cannot_be_read_has_no_key(load: Loader) -> None:
    module = load("""
    HOSTILE = None

    def f(x):
        return HOSTILE, x
    """)
    module.HOSTILE = _Hostile()
    # An object of the user's that refuses every question counts by its content, which it
    # does not give: the function passed as a value has no fingerprint.
    with pytest.raises(FingerprintError, match="fingerprint of a _Hostile raised"):
        fingerprint(module.f)
    assert HEX64.fullmatch(code_fingerprint(module.f))  # its code is read all the same


def test_a_global_the_function_assigns_is_state(load: Loader) -> None:
    source = """
    CALLS = 0

    def f(x):
        global CALLS
        CALLS += 1
        return x
    """
    module = load(source)
    base = code_fingerprint(module.f)
    module.f(1)
    module.f(2)
    assert module.CALLS == 2
    assert code_fingerprint(module.f) == base


def test_instances_count_by_class_not_state(load: Loader) -> None:
    source = """
    class Client:
        def fetch(self, key):
            return key * 2

    CLIENT = Client()

    def f(x):
        return CLIENT.fetch(x)
    """
    module = load(source)
    base = code_fingerprint(module.f)
    module.CLIENT.session = object()
    module.CLIENT.calls = 5
    assert code_fingerprint(module.f) == base
    assert digest_of(load, source.replace("key * 2", "key * 3"), "f") != base


def test_a_class_it_instantiates_counts_by_its_code(load: Loader) -> None:
    base = digest_of(load, PIPELINE)
    changed_method = PIPELINE.replace("* self.FACTOR * self.k", "* self.FACTOR + self.k")
    assert digest_of(load, changed_method) != base
    assert digest_of(load, PIPELINE.replace("FACTOR = 2.0", "FACTOR = 2.5")) != base
    init = PIPELINE.replace("self.k = k", "self.k = k + 1")
    assert digest_of(load, init) != base


def test_a_method_replaced_at_run_time_is_noticed(load: Loader) -> None:
    module = load(PIPELINE)
    base = code_fingerprint(module.pipeline)
    edited = load(PIPELINE.replace("* self.FACTOR * self.k", "* self.FACTOR + self.k"))
    original = module.Model.predict
    module.Model.predict = edited.Model.predict
    assert code_fingerprint(module.pipeline) != base
    module.Model.predict = original
    assert code_fingerprint(module.pipeline) == base
    module.Model.FACTOR = 3.0
    assert code_fingerprint(module.pipeline) != base


def test_class_members_of_every_kind_count(load: Loader) -> None:
    source = """
    import functools

    class Base:
        def weight(self):
            return 1

    class Strategy(Base):
        @staticmethod
        def clip(x):
            return min(x, 1)

        @classmethod
        def make(cls):
            return cls()

        @property
        def size(self):
            return 10

        @functools.cached_property
        def span(self):
            return 5

    def f(x):
        return Strategy.make().size * x + Strategy().span
    """
    base = digest_of(load, source, "f")
    edits = [
        ("return min(x, 1)", "return min(x, 2)"),
        ("return cls()", "return cls() or None"),
        ("return 10", "return 11"),
        ("return 5", "return 6"),  # a cached property
        ("return 1\n", "return 2\n"),  # the base class
    ]
    for old, new in edits:
        assert digest_of(load, source.replace(old, new), "f") != base, old
    # Replaced at run time (the originals kept alive): a property, a static method.
    module = load(source)
    assert code_fingerprint(module.f) == base
    originals = dict(vars(module.Strategy))
    module.Strategy.size = property(lambda self: 11)
    changed = code_fingerprint(module.f)
    assert changed != base
    module.Strategy.clip = staticmethod(lambda x: x)
    assert code_fingerprint(module.f) not in {base, changed}
    module.Strategy.size = originals["size"]
    module.Strategy.clip = originals["clip"]
    assert code_fingerprint(module.f) == base


# --- recursion ------------------------------------------------------------------------------


def test_self_and_mutual_recursion_terminate_and_are_stable(load: Loader) -> None:
    source = """
    def fact(n):
        return 1 if n <= 1 else n * fact(n - 1)

    def is_even(n):
        return True if n == 0 else is_odd(n - 1)

    def is_odd(n):
        return False if n == 0 else is_even(n - 1)
    """
    module = load(source)
    again = load(source)
    for name in ("fact", "is_even", "is_odd"):
        first = code_fingerprint(getattr(module, name))
        assert code_fingerprint(getattr(module, name)) == first
        assert code_fingerprint(getattr(again, name)) == first
    assert code_fingerprint(module.is_even) != code_fingerprint(module.is_odd)
    edited = load(source.replace("is_even(n - 1)", "is_even(n - 2)"))
    assert code_fingerprint(edited.is_even) != code_fingerprint(module.is_even)


def test_a_deep_chain_of_helpers_does_not_hit_the_recursion_limit(load: Loader) -> None:
    depth = sys.getrecursionlimit() + 100
    lines = [f"def h{i}(x):\n    return h{i + 1}(x) + 1\n" for i in range(depth)]
    lines.append(f"def h{depth}(x):\n    return x\n")
    module = load("\n".join(lines))
    assert HEX64.fullmatch(code_fingerprint(module.h0))
    assert len(codehash._walk([module.h0])[0]) == depth + 1


# --- notebooks ------------------------------------------------------------------------------

HELPER_CELL = """
def helper(x):
    return x * 2
"""
CALLER_CELL = """
import numpy as np

def f(x):
    return np.sum(helper(x))
"""


def test_notebook_functions_are_user_code() -> None:
    base = code_fingerprint(notebook(HELPER_CELL, CALLER_CELL)["f"])
    changed = notebook(HELPER_CELL.replace("x * 2", "x * 3"), CALLER_CELL)
    assert code_fingerprint(changed["f"]) != base
    assert code_fingerprint(notebook(HELPER_CELL, CALLER_CELL)["f"]) == base


def test_re_executing_a_helper_cell_changes_the_callers_digest() -> None:
    namespace = notebook(HELPER_CELL, CALLER_CELL)
    f = namespace["f"]
    base = code_fingerprint(f)
    exec(HELPER_CELL.replace("x * 2", "x * 3"), namespace)  # the cell edited and re-run
    assert code_fingerprint(f) != base
    exec(HELPER_CELL, namespace)  # edited back
    assert code_fingerprint(f) == base
    # Twice in a row without asking in between: still noticed.
    exec(HELPER_CELL.replace("x * 2", "x * 4"), namespace)
    exec(HELPER_CELL.replace("x * 2", "x * 5"), namespace)
    assert code_fingerprint(f) not in {base}
    assert code_fingerprint(f) == code_fingerprint(
        notebook(HELPER_CELL.replace("x * 2", "x * 5"), CALLER_CELL)["f"]
    )


def test_a_name_defined_later_is_noticed() -> None:
    namespace = notebook(CALLER_CELL)
    before = code_fingerprint(namespace["f"])  # `helper` not defined yet
    exec(HELPER_CELL, namespace)
    assert code_fingerprint(namespace["f"]) != before


def test_classes_defined_in_a_notebook_count_by_code() -> None:
    cell = """
    class Scaler:
        def apply(self, x):
            return x * 2

    def f(x):
        return Scaler().apply(x)
    """
    base = code_fingerprint(notebook(cell)["f"])
    assert code_fingerprint(notebook(cell.replace("x * 2", "x * 3"))["f"]) != base


def test_swapping_code_in_place_is_noticed(load: Loader) -> None:
    """IPython's autoreload assigns a new ``__code__`` to the existing function object."""
    module = load(PIPELINE)
    base = code_fingerprint(module.pipeline)
    edited = load(PIPELINE.replace("np.mean(x)", "np.median(x)"))
    module.smooth.__code__ = edited.smooth.__code__
    assert code_fingerprint(module.pipeline) != base


# --- closures, defaults, wrappers -----------------------------------------------------------


def test_closures_count(load: Loader) -> None:
    source = """
    def helper(x):
        return x + 1

    def make(window):
        def f(x):
            return helper(x) * window
        return f
    """
    module = load(source)
    assert code_fingerprint(module.make(5)) == code_fingerprint(module.make(5))
    assert code_fingerprint(module.make(5)) != code_fingerprint(module.make(6))
    edited = load(source.replace("x + 1", "x + 2"))
    assert code_fingerprint(edited.make(5)) != code_fingerprint(module.make(5))


def test_a_closure_cell_rebound_is_noticed(load: Loader) -> None:
    source = """
    def make(window):
        def f(x):
            return x * window

        def set_window(value):
            nonlocal window
            window = value

        return f, set_window
    """
    f, set_window = load(source).make(5)
    base = code_fingerprint(f)
    set_window(6)
    assert code_fingerprint(f) != base
    set_window(5)
    assert code_fingerprint(f) == base


def test_defaults_count_by_value(load: Loader) -> None:
    source = """
    import datetime

    def f(x, window=20, *, start=datetime.date(2020, 1, 1)):
        return x
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source.replace("window=20", "window=21"), "f") != base
    assert digest_of(load, source.replace("(2020, 1, 1)", "(2021, 1, 1)"), "f") != base


def test_a_function_passed_as_default_is_walked(load: Loader) -> None:
    source = """
    def transform(x):
        return x * 2

    def f(x, fn=transform):
        return fn(x)
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source.replace("x * 2", "x * 3"), "f") != base


def test_helpers_behind_a_library_wrapper_are_walked(load: Loader) -> None:
    source = """
    import functools

    @functools.lru_cache(maxsize=None)
    def table(n):
        return tuple(range(n))

    def f(x):
        return table(x)
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source.replace("range(n)", "range(n + 1)"), "f") != base


def test_user_decorators_are_followed_through_their_closure(load: Loader) -> None:
    source = """
    import functools

    def traced(fn):
        @functools.wraps(fn)
        def wrapper(*args):
            return fn(*args)
        return wrapper

    @traced
    def helper(x):
        return x * 2

    def f(x):
        return helper(x)
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source.replace("x * 2", "x * 3"), "f") != base


def test_cached_functions_calling_cached_functions(load: Loader) -> None:
    """The decorator's wrapper lives in afml_cache; the function it wraps is walked."""
    source = """
    import afml_cache

    @afml_cache.cacheable
    def features(x):
        return x * 2

    @afml_cache.cacheable
    def labels(x):
        return features(x) + 1
    """
    module = load(source)
    base = code_fingerprint(module.labels.__wrapped__)
    assert code_fingerprint(module.labels.__wrapped__) == base
    edited = load(source.replace("x * 2", "x * 3"))
    assert code_fingerprint(edited.labels.__wrapped__) != base


def test_dataclasses_and_enums_count_by_value(load: Loader) -> None:
    source = """
    import dataclasses
    import enum

    class Side(enum.Enum):
        BUY = 1
        SELL = -1

    @dataclasses.dataclass(frozen=True)
    class Params:
        window: int = 20
        side: Side = Side.BUY

    def f(x):
        p = Params()
        return x * p.window * p.side.value
    """
    base = digest_of(load, source, "f")
    assert digest_of(load, source, "f") == base
    assert digest_of(load, source.replace("window: int = 20", "window: int = 30"), "f") != base
    assert digest_of(load, source.replace("SELL = -1", "SELL = -2"), "f") != base


def test_partials_and_methods(load: Loader) -> None:
    source = """
    import functools

    def power(x, n):
        return x ** n

    SQUARE = functools.partial(power, n=2)

    class Model:
        def predict(self, x):
            return SQUARE(x)

    def f(x):
        return SQUARE(x)
    """
    module = load(source)
    base = code_fingerprint(module.f)
    # A partial's keywords are a dict that can change in place: they count as the call's live
    # values, by content at each call (`code_state`), not in the code fingerprint.
    keyed = fingerprint(code_state(module.f))
    assert fingerprint(code_state(load(source.replace("n=2", "n=3")).f)) != keyed
    assert digest_of(load, source.replace("x ** n", "x ** (n + 1)"), "f") != base
    # Partials and bound methods can be what is fingerprinted, too.
    assert HEX64.fullmatch(code_fingerprint(functools.partial(module.power, n=2)))
    # (as an argument, a partial counts by its keywords: the value rule)
    assert fingerprint(functools.partial(module.power, n=2)) != fingerprint(
        functools.partial(module.power, n=3)
    )
    assert code_fingerprint(module.Model().predict) == code_fingerprint(module.Model.predict)


def test_modules_imported_inside_the_function_are_followed(load: Loader) -> None:
    helpers_name = f"codehash_helpers_{uuid.uuid4().hex}"
    helpers = "def smooth(x):\n    return x * 2\n"
    caller = f"""
    def f(x):
        import {helpers_name} as h
        from {helpers_name} import smooth
        return h.smooth(x) + smooth(x)
    """
    load(helpers, helpers_name)
    base = digest_of(load, caller, "f")
    load(helpers.replace("x * 2", "x * 3"), helpers_name)  # replaces the module
    assert digest_of(load, caller, "f") != base


def test_attribute_chains_through_user_modules(load: Loader) -> None:
    helpers_name = f"codehash_helpers_{uuid.uuid4().hex}"
    helpers = "def smooth(x):\n    return x * 2\n\ndef other(x):\n    return x\n"
    caller = f"""
    import {helpers_name} as helpers

    def f(x):
        return helpers.smooth(x)
    """
    module_helpers = load(helpers, helpers_name)
    module = load(caller)
    base = code_fingerprint(module.f)
    # Editing a function of the helper module it does not use does not count.
    assert code_fingerprint(load(caller).f) == base
    module_helpers.smooth = load(helpers.replace("x * 2", "x * 3")).smooth
    assert code_fingerprint(module.f) != base


# --- libraries ------------------------------------------------------------------------------


def test_library_references_count_by_name_and_version(
    load: Loader, monkeypatch: pytest.MonkeyPatch
) -> None:
    source = """
    import math
    from math import sqrt

    import numpy as np
    import pandas as pd
    from numpy import mean

    def f(x):
        return pd.DataFrame({"a": [np.mean(x), math.sqrt(2), sqrt(3), mean(x), len(x)]})
    """
    module = load(source)
    base = code_fingerprint(module.f)
    assert digest_of(load, source, "f") == base
    # Only f itself is walked: nothing inside numpy, pandas or math.
    assert len(codehash._walk([module.f])[0]) == 1
    # A library's internals being patched does not count...
    monkeypatch.setattr(np, "mean", np.median)
    monkeypatch.setattr(pd.DataFrame, "sum", pd.DataFrame.max)
    assert code_fingerprint(module.f) == base
    # ...but which library function is called does.
    assert digest_of(load, source.replace("np.mean(x)", "np.std(x)"), "f") != base
    assert (
        digest_of(
            load, source.replace("from numpy import mean", "from numpy import std as mean"), "f"
        )
        != base
    )
    assert codehash._version_of("numpy") == np.__version__
    assert codehash._version_of("pandas.core.frame") == pd.__version__
    assert codehash._version_of("math") == "python {}.{}".format(*sys.version_info[:2])


def test_afml_cache_itself_is_not_user_code(load: Loader) -> None:
    assert not codehash._is_user_module(codehash)
    assert not codehash._is_user_function(codehash.code_fingerprint)
    module = load("import afml_cache\n\ndef f(x):\n    return afml_cache.fingerprint(x)\n")
    assert len(codehash._walk([module.f])[0]) == 1


def test_what_counts_as_user_code(tmp_path: Path) -> None:
    import sysconfig

    stdlib = sysconfig.get_paths()["stdlib"]
    assert not codehash._is_user_path(f"{stdlib}/json/__init__.py")
    assert not codehash._is_user_path("/opt/venv/lib/python3.11/site-packages/x/y.py")
    assert not codehash._is_user_path("/usr/lib/python3/dist-packages/x.py")
    assert not codehash._is_user_path("<frozen importlib._bootstrap>")
    assert codehash._is_user_path("<ipython-input-3-0123abcd>")
    assert codehash._is_user_path("<string>")
    assert codehash._is_user_path(str(tmp_path / "research.py"))
    assert not codehash._is_user_module(math)
    assert not codehash._is_user_module(np)
    assert not codehash._is_user_class(pd.DataFrame)
    assert codehash._is_user_module(types.ModuleType("scratch"))


# --- across processes -----------------------------------------------------------------------

CHILD = """
import sys
sys.path.insert(0, {directory!r})
import {name} as module
from afml_cache.codehash import code_fingerprint
print(code_fingerprint(module.pipeline))
"""


def test_digest_is_the_same_in_fresh_processes(
    tmp_path: Path, run_python: Callable[..., str]
) -> None:
    suffix = uuid.uuid4().hex
    helpers, main = f"codehash_helpers_{suffix}", f"codehash_main_{suffix}"
    (tmp_path / f"{helpers}.py").write_text(PIPELINE)
    (tmp_path / f"{main}.py").write_text(
        f"from {helpers} import Model, scale\n\n\ndef pipeline(x):\n"
        "    return {1, 2, 3} and Model(2).predict(x) + scale(x)\n"
    )
    child = CHILD.format(directory=str(tmp_path), name=main)
    env = {"PYTHONDONTWRITEBYTECODE": "1"}
    digests = {
        seed: run_python(child, env={**env, "PYTHONHASHSEED": seed}).strip()
        for seed in ("0", "1", "4242")
    }
    assert len(set(digests.values())) == 1, digests
    assert HEX64.fullmatch(digests["0"])
    # The helper file edited between two runs: a new digest.
    (tmp_path / f"{helpers}.py").write_text(PIPELINE.replace("WINDOW = 20", "WINDOW = 200"))
    edited = run_python(child, env={**env, "PYTHONHASHSEED": "0"}).strip()
    assert edited != digests["0"]


# --- threads --------------------------------------------------------------------------------


def test_concurrent_calls_while_names_are_rebound(load: Loader) -> None:
    module = load(PIPELINE)
    expected = code_fingerprint(module.pipeline)
    results: list[str] = []

    def worker() -> None:
        for _ in range(300):
            results.append(code_fingerprint(module.pipeline))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for thread in threads:
        thread.start()
    for i in range(3000):
        module.WINDOW = 21 if i % 2 else 20
        module.smooth = load(PIPELINE).smooth if i % 500 == 0 else module.smooth
    for thread in threads:
        thread.join()
    module.WINDOW = 20
    assert len(results) == 8 * 300
    assert all(HEX64.fullmatch(r) for r in results)
    assert code_fingerprint(module.pipeline) == expected


# --- never raises ---------------------------------------------------------------------------


class _Hostile:
    """An object every question to which fails."""

    def __getattribute__(self, name: str) -> Any:
        raise RuntimeError(f"no {name}")

    def __eq__(self, other: object) -> bool:
        raise RuntimeError("no ==")

    __hash__ = None  # type: ignore[assignment]


def test_what_cannot_be_read_counts_by_name(load: Loader) -> None:
    module = load(
        """
    class Meta(type):
        def __eq__(cls, other):
            raise RuntimeError("no ==")
        __hash__ = None

    class Odd(metaclass=Meta):
        def go(self):
            return 1

    HOSTILE = None

    def f(x, opt=None):
        return HOSTILE, Odd().go(), x
    """
    )
    module.HOSTILE = _Hostile()
    module.f.__defaults__ = (_Hostile(),)
    first = code_fingerprint(module.f)
    assert HEX64.fullmatch(first)
    assert code_fingerprint(module.f) == first
    # f, Odd, Odd.go, Meta and Meta.__eq__ are still walked; only the odd objects count by name.
    assert len(codehash._walk([module.f])[0]) == 5
    for odd in (None, 42, "text", len, math, np.sqrt, _Hostile(), lambda x: x, object()):
        assert HEX64.fullmatch(code_fingerprint(odd))  # type: ignore[arg-type]


def test_long_string_arguments_count_only_their_at_names(load: Loader) -> None:
    # Every string argument was searched for names at each call: a 20 MB text argument of a
    # function whose code calls any `.eval` (a model's) cost a second a hit. A long one counts
    # its @NAMEs only (a query listing thousands of symbols), scanned once per string.
    from afml_cache.codehash import argument_expressions

    module = load("""
    T = 1

    def f(model, rule):
        model.eval()
        return rule
    """)
    assert argument_expressions(module.f, ["v > @T", {"rule": "T"}]) == (("T", 1),)
    assert argument_expressions(module.f, ["T " * 3000]) == ()
    huge = "".join(f"user{i}@T.com, " for i in range(100_000))  # 1.5 MB of addresses
    assert argument_expressions(module.f, [huge]) == (("T", 1),)
