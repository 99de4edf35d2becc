"""The code fingerprint of a function: a digest of what it computes, for cache keys.

:func:`code_fingerprint` answers with 64 hex digits that change when any code the function
depends on changes, and stay when only comments, blank lines, docstrings or line positions do.
:func:`code_state` adds the *live values*: what the code reads that can change in place (a
``PARAMS`` dict, a module-level array, a list in a closure), as it is at the call, for the key to
hold by content. The rules for users are in ``docs/code_fingerprint.md``.

What counts
-----------

*The function's own code.* Its code object as :func:`afml_cache.fingerprinting._code_parts` reads
it (argument counts, flags, bytecode, constants, names, variable names, free and cell variables,
exception table; never line numbers, positions or the file name). The docstring
(``co_consts[0]`` when it equals ``fn.__doc__``) is replaced by ``None``, and so are the
docstrings of the functions defined inside it. Its qualified name counts; its module does not
(a caller keys on the function's identity separately).

*Its defaults and keyword defaults*, each as a reference (below).

*What it refers to*, transitively. The global names its bytecode and that of the code nested in
it (comprehensions, lambdas, inner functions and classes) loads (``LOAD_GLOBAL``/``LOAD_NAME``,
with the attribute chain that follows, so ``helpers.smooth`` is one reference): this is the
subset of ``co_names`` that names globals, without the attribute names that merely coincide with
one. Also the modules it imports in its body (``import``/``from … import``, with the attributes
used on them) and the values in its closure cells; resolved through ``fn.__globals__``, its
builtins, ``sys.modules`` and ``fn.__closure__``. A chain is followed with ``getattr`` only while
it passes through the user's own modules (``np.mean`` counts as ``np``). Names reached only
dynamically (``globals()[name]``, ``eval``) are not seen. A module of the user's own that the
function imports in its body and that is not imported yet is imported then, so that its code
counts from the first call (library modules are only named, never imported). What a reference
reaches counts as:

- a function of the user's own code: a reference by qualified name, and the function is walked
  in turn (each function and class once, so recursion and mutual recursion terminate);
- a class of the user's own code: its bases, metaclass and every entry of its ``__dict__``
  (methods, static and class methods, property accessors, nested classes, class attributes),
  each by these rules, walked the same way; an *instance* of a user class also walks its class;
- an immutable constant (``int``, ``float``, ``complex``, ``bool``, ``str``, ``bytes``, ``None``,
  tuples and frozensets of these): by value; an enum member by its class, name and value; a
  tuple of functions and constants: each item by these rules;
- any other value with a fingerprint (``afml_cache.fingerprint(value, strict=True)``): by value
  when it cannot change (`_is_frozen`: dates, numpy scalars, ``pd.Timestamp``, frozen dataclasses
  and namedtuples of such values), computed once; otherwise it is *live*: the digest holds its
  type, and `code_state` returns the value itself on each call. A list, set, dict or deque the
  code only writes to (``LOG.append(x)`` as a statement, see `_written_only`) counts by type;
- a value with no fingerprint (a client, a lock): by its type's qualified name; so does a global
  the function itself assigns (``global CALLS; CALLS += 1``), whatever its type;
- a module, function or class of the standard library or an installed package: by qualified
  name plus version (the distribution's version for packages, ``python X.Y`` for the standard
  library, the name alone when no version is found). A library callable that wraps a user
  function (``__wrapped__``, e.g. another cached function or ``functools.lru_cache``) also counts
  the wrapped function;
- a builtin: by name. ``functools.partial``: its function, positional and keyword arguments;
  a bound method: its function and what it is bound to;
- anything the walker cannot read: its qualified name (and a debug line on the ``afml_cache``
  logger). ``code_fingerprint`` never raises; `function_key`, for a function passed as a value,
  raises `FingerprintError` instead, since a name alone cannot tell two functions apart.

*The user's own code* is any module whose file lies outside the standard library
(``sysconfig`` ``stdlib``/``platstdlib``) and outside every ``site-packages``/``dist-packages``
directory; modules without a file (``__main__`` of a notebook or REPL, code run with ``exec``)
and notebook cells (``<ipython-input-…>``, ``ipykernel_…/…py``) are user code too. afml-cache's
own modules are not. The function passed in is always walked, wherever it lives.

The digest is BLAKE3 (:func:`afml_cache.fingerprint`) over a tagged list: the digest of each
function and class reached, in a fixed walk order. It does not depend on object identity, hash
seed or process: the same source gives the same digest in every fresh interpreter.

Caching
-------

Each function and class reached keeps its digest in a :class:`weakref.WeakKeyDictionary`,
together with what it was computed from: the code object, the defaults, and for every reference
the object it resolved to (a weak reference, the object itself for constants and objects that
cannot be weakly referenced, or the type for objects that count by type). A call re-resolves every
reference and compares identities, so rebinding a name (a notebook cell re-executed, a module
reloaded, ``__code__`` swapped by autoreload) is noticed on the next call and only what changed is
recomputed. Mutating a dict or an instance in place does not change the digest: live values are
read again on every call instead, through the path recorded for each (a global name, an
attribute chain, a closure cell, a default, a class attribute). Assigning a new ``__defaults__``
tuple that happens to reuse the old one's address is not noticed (defaults are checked by
``id``, to hold no reference from the cache to them), nor is editing ``__kwdefaults__`` in place.

A repeated call for a function with five helpers costs one dictionary lookup and identity test
per reference and no hashing, plus reading each live value; the first call per function reads
its bytecode and hashes it (once, plus the first lookup of library versions).

Concurrent calls from several threads are safe without a lock: the caches are only read and
replaced whole, every node's digest is a pure function of what it was computed from, and two
threads computing the same node store equal values.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import datetime
import decimal
import dis
import enum
import fractions
import functools
import gc
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import logging
import os
import pathlib
import site
import sys
import sysconfig
import threading
import types
import uuid
import weakref
import zoneinfo
from collections.abc import Callable, Collection, Iterator
from typing import Any, Final

from afml_cache._core import fingerprint
from afml_cache.errors import FingerprintError
from afml_cache.fingerprinting import _code_parts

__all__ = ["arguments_code", "code_fingerprint", "code_state", "function_key"]

_log = logging.getLogger("afml_cache")

# Part of every digest; bump it when what is hashed changes.
_FORMAT: Final = "afml-cache code fingerprint v1"

_MISSING: Final = object()  # a name that resolves to nothing
_NOT_IMPORTED: Final = object()  # a module an import statement names, not imported yet
_EMPTY_CELL: Final = object()  # a closure cell not filled yet

_ATOMS: Final = (int, float, complex, str, bytes)
_SKIPPED_CLASS_KEYS: Final = frozenset(
    {
        "__module__",
        "__qualname__",
        "__doc__",
        "__dict__",
        "__weakref__",
        "__firstlineno__",
        "__static_attributes__",
        "__slotnames__",  # copyreg caches it on the class when an instance is first pickled
    }
)
_COMPREHENSIONS: Final = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
_CO_HAS_DOCSTRING: Final = 0x4000000  # Python 3.14+

# How a reference is checked again on a later call: the object it resolves to must be the
# expected one (`_SAME`), or of the expected type (`_TYPE`), or wrap the same functions (`_PARTS`,
# for staticmethod/classmethod/property, which cannot be weakly referenced).
_SAME: Final = 0
_TYPE: Final = 1
_PARTS: Final = 2

Getter = Callable[[], Any]
Check = tuple[int, Any]
# A value counted by its content at each call: what names it (`PARAMS`, `cfg.PARAMS`), and how to
# read it from the function or class that refers to it.
Live = tuple[str, Callable[[Any], Any]]

# --- where code comes from --------------------------------------------------------------------


@functools.cache
def _excluded_roots() -> tuple[str, ...]:
    """Directories whose modules are not the user's own code."""
    roots: set[str] = set()
    paths = sysconfig.get_paths()
    for key in ("stdlib", "platstdlib", "purelib", "platlib"):
        if paths.get(key):
            roots.add(paths[key])
    # Old virtualenv tools ship a `site` without these.
    with contextlib.suppress(Exception):
        roots.update(site.getsitepackages())
    with contextlib.suppress(Exception):
        roots.add(site.getusersitepackages())
    roots.add(os.path.dirname(os.path.abspath(__file__)))  # afml_cache itself
    return tuple(sorted(os.path.realpath(r) for r in roots if r))


@functools.lru_cache(maxsize=4096)
def _is_user_path(path: str) -> bool:
    if path.startswith("<"):
        # `<frozen importlib._bootstrap>` is the standard library; `<string>`, `<stdin>`,
        # `<ipython-input-…>` are code typed or generated in the user's session.
        return not path.startswith("<frozen")
    real = os.path.realpath(os.path.abspath(path))
    segments = real.split(os.sep)
    if "site-packages" in segments or "dist-packages" in segments:
        return False
    return not any(real == root or real.startswith(root + os.sep) for root in _excluded_roots())


def _is_own_package(module_name: object) -> bool:
    return isinstance(module_name, str) and (
        module_name == "afml_cache" or module_name.startswith("afml_cache.")
    )


def _is_stdlib_name(module_name: str) -> bool:
    top = module_name.partition(".")[0]
    return top in sys.stdlib_module_names or top in sys.builtin_module_names


def _is_user_module(module: types.ModuleType) -> bool:
    name = getattr(module, "__name__", None)
    if not isinstance(name, str) or _is_own_package(name):
        return False
    file = getattr(module, "__file__", None)
    if isinstance(file, str):
        return _is_user_path(file)
    if name != "__main__" and _is_stdlib_name(name):
        return False
    for entry in getattr(module, "__path__", None) or ():  # a namespace package
        if isinstance(entry, str):
            return _is_user_path(entry)
    return True


def _is_user_function(fn: types.FunctionType) -> bool:
    module_name = _defining_module(fn)
    if _is_own_package(module_name):
        return False
    filename = fn.__code__.co_filename
    if not filename.startswith("<") or filename.startswith("<frozen"):
        return _is_user_path(filename)
    # Generated code (exec, dataclasses, namedtuple) belongs to the module it was made for.
    module = sys.modules.get(module_name)
    if module is not None and module_name != "__main__":
        return _is_user_module(module)
    return True


def _class_functions(cls: type) -> Iterator[types.FunctionType]:
    for value in vars(cls).values():
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        if type(value) is types.FunctionType:
            yield value


def _is_user_class(cls: type) -> bool:
    module_name = getattr(cls, "__module__", None)
    if not isinstance(module_name, str) or module_name == "builtins":
        return False
    if _is_own_package(module_name):
        return False
    module = sys.modules.get(module_name)
    if module is not None and module_name != "__main__":
        return _is_user_module(module)
    # `__main__` of a script run under another tool, or a module not registered: the class's
    # own methods say where it was written.
    for fn in _class_functions(cls):
        return _is_user_function(fn)
    return module_name == "__main__" or not _is_stdlib_name(module_name)


# --- versions of libraries ----------------------------------------------------------------------


@functools.cache
def _packages_distributions() -> dict[str, list[str]]:
    try:
        return dict(importlib.metadata.packages_distributions())
    except Exception as exc:
        _log.debug("afml_cache: cannot list installed distributions: %r", exc)
        return {}


@functools.lru_cache(maxsize=1024)
def _version_of(module_name: str) -> str | None:
    """The version a library module comes with: its distribution's, or Python's for the
    standard library; None when none is found."""
    top = module_name.partition(".")[0]
    if top == "builtins" or _is_stdlib_name(top):
        return "python {}.{}".format(*sys.version_info[:2])
    try:
        return importlib.metadata.version(top)
    except Exception:
        pass
    # An import name that differs from its distribution's (sklearn: scikit-learn).
    for dist in _packages_distributions().get(top, ()):
        try:
            return importlib.metadata.version(dist)
        except Exception:
            continue
    version = getattr(sys.modules.get(top), "__version__", None)
    return version if isinstance(version, str) else None


# --- names ----------------------------------------------------------------------------------------


def _qualified(obj: object) -> str:
    """``module.qualname`` of a function, class or module, or of the type of anything else."""
    try:
        if isinstance(obj, types.ModuleType):
            return str(obj.__name__)
        named = obj if _has_own_name(obj) else type(obj)
        module = getattr(named, "__module__", None)
        if not isinstance(module, str):
            module = type(obj).__module__
        name = getattr(named, "__qualname__", None)
        if not isinstance(name, str):
            name = getattr(named, "__name__", None)
        if not isinstance(name, str):
            name = type(obj).__qualname__
        return f"{module}.{name}"
    except Exception:
        return "<unnamed>"


def _has_own_name(obj: object) -> bool:
    return isinstance(obj, type) or (
        callable(obj) and isinstance(getattr(obj, "__name__", None), str)
    )


def _module_of(obj: object) -> str:
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else type(obj).__module__


# --- values ---------------------------------------------------------------------------------------


def _is_constant(value: object) -> bool:
    """Immutable values that count by value: numbers, strings, bytes, None, and tuples and
    frozensets of them."""
    if value is None:
        return True
    if isinstance(value, _ATOMS) and not isinstance(value, enum.Enum):
        return True
    # Exactly tuples and frozensets: a namedtuple or subclass may carry more than its items.
    if isinstance(value, tuple | frozenset) and type(value) in (tuple, frozenset):
        return all(_is_constant(item) for item in value)
    return False


# Values of these types cannot change once made: they count by value, computed once.
_FROZEN_TYPES: Final = (
    datetime.date,  # and datetime, pd.Timestamp
    datetime.time,
    datetime.timedelta,  # and pd.Timedelta
    datetime.timezone,
    zoneinfo.ZoneInfo,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
    range,
    pathlib.PurePath,
)


def _is_frozen(value: object) -> bool:
    """Values that cannot change in place and hold nothing that can: constants, dates and
    times, numpy scalars, frozen dataclasses and namedtuples of such values."""
    if _is_constant(value) or isinstance(value, _FROZEN_TYPES):
        return True
    if value is NotImplemented or value is Ellipsis:
        return True
    np = sys.modules.get("numpy")
    # A void scalar can be a view into an array.
    if np is not None and isinstance(value, np.generic | np.dtype):
        return not isinstance(value, np.void)
    pd = sys.modules.get("pandas")
    if pd is not None and isinstance(value, pd.Period | pd.DateOffset):
        return True
    if isinstance(value, tuple) and not hasattr(value, "__dict__"):  # tuples and namedtuples
        return all(_is_frozen(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        params = getattr(type(value), "__dataclass_params__", None)
        return bool(getattr(params, "frozen", False)) and all(
            _is_frozen(getattr(value, f.name)) for f in dataclasses.fields(value)
        )
    return False


def _held(obj: object) -> Getter:
    """A getter that holds ``obj``: for constants and sentinels, and objects that cannot be
    weakly referenced."""
    return itertools.repeat(obj).__next__


def _same(obj: object) -> Check:
    try:
        return _SAME, weakref.ref(obj)
    except TypeError:
        return _SAME, _held(obj)


def _of_type(obj: object) -> Check:
    return _TYPE, _same(type(obj))[1]


def _matches(check: Check, current: object) -> bool:
    mode, expected = check
    if mode == _SAME:
        return expected() is current
    if mode == _TYPE:
        return expected() is type(current)
    kind, parts = expected
    if type(current) is not kind:
        return False
    return all(getattr(current, name, _MISSING) is get() for name, get in parts)


# --- references -----------------------------------------------------------------------------------


def _ref(obj: object, children: list[object]) -> tuple[Any, Check]:
    """What ``obj``, reached through a reference, counts as, and how to check it again.

    User functions and classes found are appended to ``children``, to be walked in turn. A part
    that `_is_live` counts by the content the value has at each call.
    """
    try:
        return _classify(obj, children)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(obj), exc)
        return ("unknown", _qualified(obj)), _same(obj)


def _live(obj: object) -> Any:
    return ("live", _qualified(type(obj)))


def _is_live(part: Any) -> bool:
    return type(part) is tuple and bool(part) and part[0] == "live"


def _classify(obj: object, children: list[object]) -> tuple[Any, Check]:
    if obj is _MISSING or obj is _EMPTY_CELL:
        return ("missing",), (_SAME, _held(obj))
    if _is_constant(obj):
        return ("const", obj), (_SAME, _held(obj))
    cls = type(obj)
    if isinstance(obj, types.FunctionType):
        if _is_user_function(obj):
            children.append(obj)
            return ("function", obj.__qualname__), _same(obj)
        return _library_callable(obj, children), _same(obj)
    if isinstance(obj, type):
        if _is_user_class(obj):
            children.append(obj)
            return ("class", obj.__qualname__), _same(obj)
        if obj.__module__ == "builtins":
            return ("builtin", obj.__qualname__), _same(obj)
        return _library_callable(obj, children), _same(obj)
    if isinstance(obj, types.ModuleType):
        if _is_user_module(obj):
            return ("module", obj.__name__), _same(obj)
        return ("library", obj.__name__, _version_of(obj.__name__)), _same(obj)
    if isinstance(obj, types.MethodType):
        function, _ = _ref(obj.__func__, children)
        owner, _ = _ref(obj.__self__, children)
        if _is_live(owner):  # bound to an object whose state counts
            return _live(obj), _same(obj)
        return ("method", function, owner), _same(obj)
    if isinstance(obj, staticmethod | classmethod):
        function, _ = _ref(obj.__func__, children)
        getters: tuple[tuple[str, Getter], ...] = (("__func__", _same(obj.__func__)[1]),)
        return (cls.__name__, function), (_PARTS, (cls, getters))
    if isinstance(obj, property):
        names = ("fget", "fset", "fdel")
        accessors = tuple(getattr(obj, name) for name in names)
        parts = tuple(_ref(a, children)[0] if a is not None else None for a in accessors)
        getters = tuple((n, _same(a)[1]) for n, a in zip(names, accessors, strict=True))
        return ("property", *parts), (_PARTS, (cls, getters))
    if isinstance(obj, functools.partial):
        function, _ = _ref(obj.func, children)
        args = tuple(_ref(a, children)[0] for a in obj.args)
        keywords = tuple((k, _ref(v, children)[0]) for k, v in sorted(obj.keywords.items()))
        if any(_is_live(p) for p in (*args, *(v for _, v in keywords))):
            return _live(obj), _same(obj)
        return ("partial", function, args, keywords), _same(obj)
    if isinstance(obj, enum.Enum):
        owner, _ = _ref(cls, children)
        value = obj.value if _is_constant(obj.value) else _qualified(obj.value)
        return ("enum", owner, obj.name, value), _same(obj)
    if cls is tuple:  # a tuple of helpers (`STEPS = (clip, zscore)`): each by what it is
        items = tuple(_ref(item, children)[0] for item in obj)  # type: ignore[attr-defined]
        if any(_is_live(item) for item in items):
            return _live(obj), _same(obj)
        return ("tuple", items), _same(obj)
    if _is_user_class(cls):
        children.append(cls)
    elif callable(obj) and isinstance(getattr(obj, "__name__", None), str):
        return _library_callable(obj, children), _same(obj)
    return _by_content(obj)


def _by_content(obj: object) -> tuple[Any, Check]:
    """A value: by value, computed once, if it cannot change; by its content at each call if it
    has a fingerprint; by its type's qualified name if it has none (a client, a lock)."""
    try:
        digest = fingerprint(obj, strict=True)
    except FingerprintError:
        return ("object", _qualified(type(obj))), _of_type(obj)
    if _is_frozen(obj):
        return ("value", _qualified(type(obj)), digest), _same(obj)
    return _live(obj), _of_type(obj)


def _library_callable(obj: object, children: list[object]) -> tuple[Any, ...]:
    """A function, class or callable of a library: by name and version, plus the user function
    it wraps, if any (a cached function, an ``lru_cache``)."""
    module = _module_of(obj)
    if module == "builtins":
        return ("builtin", getattr(obj, "__qualname__", None) or _qualified(obj))
    inner = _wrapped_user_function(obj)
    if inner is None:
        return ("library", _qualified(obj), _version_of(module))
    children.append(inner)
    # A wrapper carries the wrapped function's names (functools.wraps): name it by its code.
    if isinstance(obj, types.FunctionType):
        module = _defining_module(obj)
        name = f"{module}.{obj.__code__.co_qualname}"
    else:
        module = type(obj).__module__
        name = _qualified(type(obj))
    return ("wrapped", name, _version_of(module), ("function", inner.__qualname__))


def _wrapped_user_function(obj: object) -> types.FunctionType | None:
    inner: object = obj
    for _ in range(16):  # wrappers of wrappers; a loop of __wrapped__ must end
        try:
            inner = getattr(inner, "__wrapped__", None) or _frompyfunc_function(inner)
        except Exception:
            return None
        if inner is None or isinstance(inner, type):
            return None
        if isinstance(inner, types.FunctionType) and _is_user_function(inner):
            return inner
    return None


def _frompyfunc_function(obj: object) -> types.FunctionType | None:
    """The function an ``np.frompyfunc`` ufunc calls: it holds it without naming it."""
    np = sys.modules.get("numpy")
    if np is None or not isinstance(obj, np.ufunc) or not obj.__name__.endswith(" (vectorized)"):
        return None
    functions = [r for r in gc.get_referents(obj) if isinstance(r, types.FunctionType)]
    return functions[0] if len(functions) == 1 else None


def _defining_module(fn: types.FunctionType) -> str:
    """The module whose code defined ``fn`` (``__module__`` may have been copied by wraps)."""
    name = fn.__globals__.get("__name__")
    return name if isinstance(name, str) else _module_of(fn)


# --- what a code object refers to -----------------------------------------------------------------

_LOADS_GLOBAL: Final = frozenset({"LOAD_GLOBAL", "LOAD_NAME", "LOAD_FROM_DICT_OR_GLOBALS"})
_LOADS_ATTR: Final = frozenset({"LOAD_ATTR", "LOAD_METHOD"})
_STORES: Final = frozenset({"STORE_FAST", "STORE_NAME", "STORE_DEREF", "STORE_GLOBAL"})
_LOADS_LOCAL: Final = frozenset({"LOAD_FAST", "LOAD_DEREF", "LOAD_NAME", "LOAD_CLASSDEREF"})

# A reference read from bytecode: ("global", name, attrs) or ("import", level, module, attrs).
Ref = tuple[Any, ...]


def _code_objects(code: types.CodeType) -> Iterator[types.CodeType]:
    yield code
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _code_objects(const)


def _references(code: types.CodeType) -> tuple[Ref, ...]:
    """The globals and imports ``code`` (and the code nested in it) loads, each with the
    attribute chain that follows it, in bytecode order, without repeats."""
    found: dict[Ref, None] = {}
    for c in _code_objects(code):
        instructions = list(dis.get_instructions(c))
        aliases: dict[str, Ref] = {}  # local names bound by an import statement
        for i, ins in enumerate(instructions):
            base: Ref | None = None
            if ins.opname == "IMPORT_NAME":
                base = _import_ref(instructions, i)
                target = instructions[i + 1] if i + 1 < len(instructions) else None
                if target is not None and target.opname in _STORES:
                    aliases[target.argval] = base
            elif ins.opname == "IMPORT_FROM":
                module = _import_ref(instructions, _last_import(instructions, i))
                base = (*module[:-1], (ins.argval,))
                target = instructions[i + 1] if i + 1 < len(instructions) else None
                if target is not None and target.opname in _STORES:
                    aliases[target.argval] = base
            elif ins.opname in _LOADS_LOCAL and ins.argval in aliases:
                base = aliases[ins.argval]
            elif ins.opname in _LOADS_GLOBAL:
                base = ("global", ins.argval, ())
            if base is None:
                continue
            attrs = list(base[-1])
            j = i + 1
            while j < len(instructions) and instructions[j].opname in _LOADS_ATTR:
                attrs.append(instructions[j].argval)
                j += 1
            found[(*base[:-1], tuple(attrs))] = None
    # A global the function itself assigns (`global CALLS; CALLS += 1`) is state, not a
    # constant: it counts by type, or every call would change the digest.
    written = {
        ins.argval
        for c in _code_objects(code)
        for ins in dis.get_instructions(c)
        if ins.opname in ("STORE_GLOBAL", "DELETE_GLOBAL")
    }
    return tuple(
        ("state", *ref[1:]) if ref[0] == "global" and ref[1] in written else ref for ref in found
    )


# Methods of list, set, dict and deque that change the container without reading its content
# into what they return (None): `calls.append(x)` as a statement does not make a result depend
# on `calls`.
_WRITES: Final = frozenset(
    {"append", "extend", "insert", "add", "update", "clear", "appendleft", "extendleft"}
)
_WRITTEN_TYPES: Final = (list, set, dict, collections.deque)
_LOADS_VARIABLE: Final = frozenset(
    {"LOAD_GLOBAL", "LOAD_NAME", "LOAD_DEREF", "LOAD_CLASSDEREF", "LOAD_FROM_DICT_OR_GLOBALS"}
)


@functools.lru_cache(maxsize=4096)
def _written_only(code: types.CodeType) -> frozenset[str]:
    """The global and free variable names ``code`` (and the code nested in it) only writes to
    with statements like ``log.append(x)``, never reading them otherwise."""
    written: set[str] = set()
    read: set[str] = set()
    for c in _code_objects(code):
        instructions = list(dis.get_instructions(c))
        for i, ins in enumerate(instructions):
            if ins.opname in _LOADS_VARIABLE:
                name = ins.argval
                (written if _is_write_statement(instructions, i) else read).add(name)
    return frozenset(written - read)


def _is_write_statement(instructions: list[dis.Instruction], i: int) -> bool:
    """Whether the value loaded at ``i`` is used only as ``value.<write method>(...)`` whose
    result is thrown away: the stack is followed to the call that consumes it, along one path
    (the compiler keeps the stack depth equal where paths meet)."""
    following = instructions[i + 1] if i + 1 < len(instructions) else None
    if following is None or following.opname not in _LOADS_ATTR or following.argval not in _WRITES:
        return False
    at = {ins.offset: k for k, ins in enumerate(instructions)}
    depth, j = 0, i
    while j < len(instructions):
        ins = instructions[j]
        if ins.opname == "JUMP_FORWARD":  # the end of one branch of `a if c else b`
            j = at.get(ins.argval, len(instructions))
            continue
        if "BACKWARD" in ins.opname:
            return False
        try:
            depth += dis.stack_effect(ins.opcode, ins.arg, jump=False)
        except ValueError:
            depth += dis.stack_effect(ins.opcode)
        if depth < 1:
            return False
        if depth == 1 and ins.opname.startswith("CALL"):
            after = instructions[j + 1] if j + 1 < len(instructions) else None
            return after is not None and after.opname == "POP_TOP"
        j += 1
    return False


def _last_import(instructions: list[dis.Instruction], i: int) -> int:
    while i > 0 and instructions[i].opname != "IMPORT_NAME":
        i -= 1
    return i


def _import_ref(instructions: list[dis.Instruction], i: int) -> Ref:
    """``import a.b`` binds ``a``; ``from .m import x`` reads ``x`` from ``m`` at level 1."""
    ins = instructions[i]
    level = instructions[i - 2].argval if i >= 2 else 0
    fromlist = instructions[i - 1].argval if i >= 1 else None
    name = str(ins.argval)
    if not isinstance(level, int):
        level = 0
    if fromlist is None and level == 0:
        following = instructions[i + 1] if i + 1 < len(instructions) else None
        if following is None or following.opname != "IMPORT_FROM":
            name = name.partition(".")[0]
    return ("import", level, name, ())


# --- the nodes of the walk: functions and classes -------------------------------------------------


class _FunctionNode:
    """What a function's digest was computed from, to tell on a later call whether it holds."""

    __slots__ = (
        "cells",
        "children",
        "code",
        "defaults_id",
        "digest",
        "kwdefaults_id",
        "live",
        "names",
        "paths",
        "readable",
        "same",
    )

    def __init__(self, fn: types.FunctionType) -> None:
        self.code = fn.__code__
        self.defaults_id = id(fn.__defaults__)
        self.kwdefaults_id = id(fn.__kwdefaults__)
        # Global names not followed further: those that must resolve to the same object (most),
        # and the others (by type, or wrapping the same functions).
        self.same: list[tuple[str, Getter]] = []
        self.names: list[tuple[str, Check]] = []
        self.paths: list[tuple[Ref, tuple[Getter, ...], Check]] = []  # chains and imports
        self.cells: list[Check] = []
        self.children: tuple[weakref.ref[Any], ...] = ()
        self.digest = ""
        self.live: list[Live] = []  # values counted by their content at each call
        self.readable = True  # False when something reached could only be named

    def current_children(self, fn: types.FunctionType) -> list[object] | None:
        """The functions and classes to walk next, or None when the digest no longer holds."""
        # This runs for every function reached on every call: keep it to lookups and `is`.
        if (
            fn.__code__ is not self.code
            or id(fn.__defaults__) != self.defaults_id
            or id(fn.__kwdefaults__) != self.kwdefaults_id
        ):
            return None
        missing = _MISSING
        scope = fn.__globals__
        for name, expected in self.same:
            current = scope.get(name, missing)
            if current is missing:
                current = fn.__builtins__.get(name, missing)  # type: ignore[attr-defined]
            if expected() is not current:
                return None
        for name, check in self.names:
            current = scope.get(name, missing)
            if current is missing:
                current = fn.__builtins__.get(name, missing)  # type: ignore[attr-defined]
            if not _matches(check, current):
                return None
        for ref, modules, check in self.paths:
            current = _start(fn, ref)
            for module, attr in zip(modules, ref[-1], strict=False):
                if current is not module():
                    return None
                current = getattr(current, attr, missing)
            if not _matches(check, current):
                return None
        if self.cells:
            for cell, check in zip(fn.__closure__ or (), self.cells, strict=False):
                if not _matches(check, _cell_contents(cell)):
                    return None
        return _alive(self.children) if self.children else []

    def add_name(self, name: str, check: Check) -> None:
        if check[0] == _SAME:
            self.same.append((name, check[1]))
        else:
            self.names.append((name, check))


class _ClassNode:
    __slots__ = (
        "bases",
        "children",
        "digest",
        "live",
        "members",
        "metaclass",
        "readable",
        "same",
        "size",
    )

    def __init__(self, cls: type) -> None:
        self.size = len(vars(cls))
        self.same: list[tuple[str, Getter]] = []
        self.members: list[tuple[str, Check]] = []
        self.bases: tuple[Getter, ...] = tuple(_same(b)[1] for b in cls.__bases__)
        self.metaclass: Getter = _same(type(cls))[1]
        self.children: tuple[weakref.ref[Any], ...] = ()
        self.digest = ""
        self.live: list[Live] = []
        self.readable = True

    def current_children(self, cls: type) -> list[object] | None:
        namespace = vars(cls)
        if len(namespace) != self.size or type(cls) is not self.metaclass():
            return None
        bases = cls.__bases__
        if len(bases) != len(self.bases):
            return None
        for base, expected in zip(bases, self.bases, strict=True):
            if base is not expected():
                return None
        missing = _MISSING
        for name, expected in self.same:
            if namespace.get(name, missing) is not expected():
                return None
        for name, check in self.members:
            if not _matches(check, namespace.get(name, missing)):
                return None
        return _alive(self.children)

    def add_member(self, name: str, check: Check) -> None:
        if check[0] == _SAME:
            self.same.append((name, check[1]))
        else:
            self.members.append((name, check))


def _alive(refs: tuple[weakref.ref[Any], ...]) -> list[object] | None:
    children = [r() for r in refs]
    for child in children:
        if child is None:  # gone: what refers to it must have changed
            return None
    return children


def _weak_children(children: list[object]) -> tuple[weakref.ref[Any], ...]:
    return tuple(weakref.ref(c) for c in children)


def _builtins_of(fn: types.FunctionType) -> dict[str, Any]:
    return fn.__builtins__  # type: ignore[attr-defined,no-any-return]  # 3.10+, not in typeshed


def _cell_contents(cell: types.CellType) -> object:
    try:
        return cell.cell_contents
    except ValueError:
        return _EMPTY_CELL


def _start(fn: types.FunctionType, ref: Ref) -> object:
    """The object a reference starts from: a global (or builtin) name, or an imported module."""
    if ref[0] != "import":
        current = fn.__globals__.get(ref[1], _MISSING)
        if current is _MISSING:
            current = _builtins_of(fn).get(ref[1], _MISSING)
        return current
    return sys.modules.get(ref[2], _NOT_IMPORTED)


def _absolute_import(fn: types.FunctionType, ref: Ref) -> Ref:
    _, level, name, attrs = ref
    if level:
        package = fn.__globals__.get("__package__") or ""
        try:
            name = importlib.util.resolve_name("." * level + name, package)
        except Exception:
            name = "." * level + name
    return ("import", 0, name, attrs)


def _import_if_user(name: str) -> None:
    """Import a module a function imports in its body, if it is the user's own and not
    imported yet, so its functions can be read. Library modules are named, never imported."""
    if name in sys.modules or not name or name.startswith("."):
        return
    top = name.partition(".")[0]
    if _is_stdlib_name(top) or _packages_distributions().get(top) or _is_own_package(top):
        return
    try:
        importlib.import_module(name)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint cannot import %s: %r", name, exc)


@functools.lru_cache(maxsize=4096)
def _code_digest(code: types.CodeType, doc: str | None) -> str:
    """The digest of a code object without its docstrings (``doc`` is the function's)."""
    consts = list(code.co_consts)
    if consts and doc is not None and consts[0] == doc:
        consts[0] = None
    consts = [_without_docstrings(c) if isinstance(c, types.CodeType) else c for c in consts]
    return fingerprint(("code", _code_parts(code, tuple(consts))), strict=True)


def _without_docstrings(code: types.CodeType) -> types.CodeType:
    """A nested function's code with its docstring (and those of the code inside it) as None."""
    consts = list(code.co_consts)
    if consts and isinstance(consts[0], str) and _has_docstring_slot(code):
        consts[0] = None
    for i, const in enumerate(consts):
        if isinstance(const, types.CodeType):
            consts[i] = _without_docstrings(const)
    if all(a is b for a, b in zip(consts, code.co_consts, strict=True)):
        return code
    return code.replace(co_consts=tuple(consts))


def _has_docstring_slot(code: types.CodeType) -> bool:
    """Whether ``co_consts[0]`` is the docstring (or None): for function bodies up to 3.13,
    and where the compiler flags it from 3.14."""
    if sys.version_info >= (3, 14):
        return bool(code.co_flags & _CO_HAS_DOCSTRING)
    return bool(code.co_flags & inspect.CO_NEWLOCALS) and code.co_name not in _COMPREHENSIONS


@functools.lru_cache(maxsize=4096)
def _cached_references(code: types.CodeType) -> tuple[Ref, ...]:
    return _references(code)


def _function_node(fn: types.FunctionType) -> tuple[_FunctionNode, list[object]]:
    node = _FunctionNode(fn)
    children: list[object] = []
    try:
        doc = fn.__doc__
        own = _code_digest(fn.__code__, doc if isinstance(doc, str) else None)
        refs: dict[tuple[str, ...], Any] = {}
        for ref in _cached_references(fn.__code__):
            _function_reference(fn, ref, node, refs, children)
        cells = []
        for i, (name, cell) in enumerate(
            zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True)
        ):
            value = _cell_contents(cell)
            part, check = _ref(value, children)
            part = _unless_written_only(fn, name, value, part)
            if _is_live(part):
                node.live.append((name, _cell_reader(i)))
            node.cells.append(check)
            cells.append((name, part))
        defaults = tuple(_ref(d, children)[0] for d in fn.__defaults__ or ())
        for i, part in enumerate(defaults):
            if _is_live(part):
                node.live.append((f"{fn.__qualname__}.__defaults__[{i}]", _default_reader(i)))
        kwdefaults = tuple(
            (k, _ref(v, children)[0]) for k, v in sorted((fn.__kwdefaults__ or {}).items())
        )
        for name, part in kwdefaults:
            if _is_live(part):
                node.live.append(
                    (f"{fn.__qualname__}.__kwdefaults__[{name!r}]", _kwdefault_reader(name))
                )
        references = tuple(refs.items())
        form = ("function", fn.__qualname__, own, defaults, kwdefaults, references, tuple(cells))
        node.digest = _digest(form, fn)
        node.readable = _readable(form)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(fn), exc)
        node.same, node.names, node.paths, node.cells, children = [], [], [], [], []
        node.live, node.readable = [], False
        node.digest = fingerprint((_FORMAT, "unknown", _qualified(fn)))
        node.defaults_id = -1  # never holds: tried again on the next call
    node.children = _weak_children(children)
    return node, children


def _unless_written_only(fn: types.FunctionType, name: str, value: object, part: Any) -> Any:
    """A list, set, dict or deque the function only appends or adds to (a log, a call counter)
    counts by type: its content does not decide the result."""
    if _is_live(part) and type(value) in _WRITTEN_TYPES and name in _written_only(fn.__code__):
        return ("written", _qualified(type(value)))
    return part


def _cell_reader(i: int) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__closure__[i].cell_contents  # type: ignore[index]


def _default_reader(i: int) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__defaults__[i]  # type: ignore[index]


def _kwdefault_reader(name: str) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__kwdefaults__[name]  # type: ignore[index]


def _global_reader(name: str) -> Callable[[types.FunctionType], Any]:
    def read(fn: types.FunctionType) -> Any:
        value = fn.__globals__.get(name, _MISSING)
        return _builtins_of(fn).get(name) if value is _MISSING else value

    return read


def _path_reader(ref: Ref) -> Callable[[types.FunctionType], Any]:
    def read(fn: types.FunctionType) -> Any:
        current = _start(fn, ref)
        for attr in ref[-1]:
            current = getattr(current, attr, None)
        return current

    return read


def _member_reader(name: str) -> Callable[[type], Any]:
    return lambda cls: vars(cls).get(name)


def _readable(form: Any) -> bool:
    """False when a part of ``form`` could only be named (``("unknown", name)``)."""
    if type(form) is not tuple:
        return True
    if form and form[0] == "unknown":
        return False
    return all(_readable(item) for item in form)


def _function_reference(
    fn: types.FunctionType,
    ref: Ref,
    node: _FunctionNode,
    refs: dict[tuple[str, ...], Any],
    children: list[object],
) -> None:
    """Resolve one reference of ``fn``: record what it counts as in ``refs`` under its label
    (the names followed), and how to check it again in ``node``."""
    if ref[0] == "state":
        if (ref[1],) not in refs:
            current = _start(fn, ref)
            node.add_name(ref[1], _of_type(current))
            refs[(ref[1],)] = ("state", None if current is _MISSING else _qualified(type(current)))
        return
    if ref[0] == "import":
        ref = _absolute_import(fn, ref)
        _import_if_user(ref[2])
        label: tuple[str, ...] = ("import", ref[2])
    else:
        label = (ref[1],)
    current = _start(fn, ref)
    modules: list[Getter] = []
    for attr in ref[-1]:
        if not (isinstance(current, types.ModuleType) and _is_user_module(current)):
            break
        modules.append(weakref.ref(current))
        current = getattr(current, attr, _MISSING)
        label = (*label, attr)
    if label in refs:  # `np.mean` and `np.std` both stop at `np`
        return
    if current is _NOT_IMPORTED:
        part: Any = ("library", ref[2], _version_of(ref[2]))
        check: Check = (_SAME, _held(_NOT_IMPORTED))
    else:
        part, check = _ref(current, children)
        if ref[0] == "global" and not modules:
            part = _unless_written_only(fn, ref[1], current, part)
    followed = (*ref[:-1], ref[-1][: len(modules)])
    if ref[0] == "global" and not modules:
        node.add_name(ref[1], check)
        if _is_live(part):
            node.live.append((ref[1], _global_reader(ref[1])))
    else:
        node.paths.append((followed, tuple(modules), check))
        if _is_live(part):
            node.live.append(
                (".".join(label[1:] if ref[0] == "import" else label), _path_reader(followed))
            )
    refs[label] = part


def _class_node(cls: type) -> tuple[_ClassNode, list[object]]:
    node = _ClassNode(cls)
    children: list[object] = []
    try:
        members = []
        namespace = tuple(vars(cls).items())  # one snapshot, even if another thread edits it
        node.size = len(namespace)
        for name, value in namespace:
            if name in _SKIPPED_CLASS_KEYS:
                continue
            part, check = _ref(value, children)
            if _is_live(part) and name.startswith("__") and name.endswith("__"):
                # Made with the class from its code (`__annotations__`): by type.
                part = ("object", _qualified(type(value)))
            node.add_member(name, check)
            if _is_live(part):
                node.live.append((f"{cls.__qualname__}.{name}", _member_reader(name)))
            members.append((name, part))
        members.sort(key=lambda item: item[0])
        bases = tuple(_ref(b, children)[0] for b in cls.__bases__)
        metaclass, _ = _ref(type(cls), children)
        form = ("class", cls.__qualname__, bases, metaclass, tuple(members))
        node.digest = _digest(form, cls)
        node.readable = _readable(form)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(cls), exc)
        node.same, node.members, children = [], [], []
        node.live, node.readable = [], False
        node.digest = fingerprint((_FORMAT, "unknown", _qualified(cls)))
        node.size = -1  # never holds: tried again on the next call
    node.children = _weak_children(children)
    return node, children


def _digest(form: tuple[Any, ...], owner: object) -> str:
    try:
        return fingerprint(form, strict=True)
    except Exception as exc:
        # A constant the fingerprint cannot read (nested too deep, say): count it by type.
        _log.debug("afml_cache: code fingerprint of %s: %r", _qualified(owner), exc)
        return fingerprint(_constants_by_type(form), strict=True)


def _constants_by_type(form: Any) -> Any:
    if type(form) is tuple:
        if len(form) == 2 and form[0] == "const":
            return ("const-type", _qualified(type(form[1])))
        return tuple(_constants_by_type(item) for item in form)
    return form


# --- the walk -------------------------------------------------------------------------------------

_nodes: weakref.WeakKeyDictionary[Any, _FunctionNode | _ClassNode] = weakref.WeakKeyDictionary()
_combined: dict[tuple[str, ...], str] = {}
_COMBINED_LIMIT: Final = 4096


_building = threading.local()  # ids of the objects whose nodes this thread is computing


# The values a function or class refers to that count by content, with the object to read them
# from.
Found = list[tuple[list[Live], object]]
# What a walk found: the digest of each function and class reached, the values that count by
# content, and whether all was readable.
Walked = tuple[tuple[str, ...], Found, bool]


def _walk(roots: list[object]) -> Walked:
    """The digests of every function and class reachable from ``roots``, each once, depth
    first, and the values among what they refer to that count by content."""
    digests: list[str] = []
    live: Found = []
    readable = True
    seen: set[int] = set()
    pinned: list[object] = []  # keeps each visited object alive, so its id stays its own
    stack: list[Any] = roots[::-1]
    nodes = _nodes
    # WeakKeyDictionary.get is `data.get(ref(key))` in Python: calling the dict directly saves a
    # frame for every function and class reached, on every call.
    stored, ref = nodes.data, weakref.ref
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        pinned.append(obj)
        try:
            node = stored.get(ref(obj))
        except TypeError:  # not weakly referenceable, or a metaclass that makes it unhashable
            node = None
        children = None
        if node is not None:
            try:
                children = node.current_children(obj)
            except Exception:  # a module's __getattr__ that raises, say: compute afresh
                children = None
        if node is None or children is None:
            node, children = _build(obj)
            with contextlib.suppress(TypeError):  # not weakly referenceable: recomputed each call
                nodes[obj] = node
        digests.append(node.digest)
        if node.live:
            live.append((node.live, obj))
        if not node.readable:
            readable = False
        if children:
            stack.extend(reversed(children))
    return tuple(digests), live, readable


def _build(obj: object) -> tuple[_FunctionNode | _ClassNode, list[object]]:
    building: set[int] = getattr(_building, "ids", None) or set()
    _building.ids = building
    building.add(id(obj))
    try:
        if type(obj) is types.FunctionType:
            return _function_node(obj)
        return _class_node(obj)  # type: ignore[arg-type]
    finally:
        building.discard(id(obj))


def _combine(digests: tuple[str, ...]) -> str:
    combined = _combined.get(digests)
    if combined is None:
        combined = fingerprint((_FORMAT, "function", digests))
        if len(_combined) >= _COMBINED_LIMIT:
            _combined.clear()
        _combined[digests] = combined
    return combined


def _current(live: Found) -> tuple[tuple[str, Any], ...]:
    """The values that count by content, as they are now, each with the name it is read by."""
    values = []
    for entries, owner in live:
        for label, read in entries:
            try:
                values.append((label, read(owner)))
            except Exception as exc:  # rebound or deleted by another thread since the walk
                raise FingerprintError(f"cannot read {label}: {exc!r}") from None
    return tuple(values)


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """The 64-hex-digit fingerprint of what ``fn`` computes (see the module docstring).

    It changes when the code of ``fn`` or of any user function, class or module-level constant
    it depends on changes, and stays when only comments, blank lines, docstrings or line
    positions do. Values that count by content (see `code_state`) are not in it. It never
    raises: what cannot be read counts by name.
    """
    try:
        if isinstance(fn, types.MethodType):
            fn = fn.__func__
        if type(fn) is types.FunctionType:
            # Fast path: the walk checks every node's inputs; the combination is memoised.
            return _combine(_walk([fn])[0])
        children: list[object] = []
        head, _ = _ref(fn, children)
        return fingerprint((_FORMAT, "object", _digest((head,), fn), _walk(children)[0]))
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(fn), exc)
        return fingerprint((_FORMAT, "unknown", _qualified(fn)))


def code_state(obj: types.FunctionType | type) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The code fingerprint of a function or user class, and the values it reads that count by
    their content at this moment (mutable globals, closure cells, class attributes, defaults),
    each as ``(name, value)``: a key holds both.

    Raises `FingerprintError` only when a value cannot be read (a race with another thread).
    """
    digests, live, _ = _walk([obj])
    return _combine(digests), _current(live) if live else ()


def function_key(fn: types.FunctionType) -> tuple[Any, ...]:
    """What a function passed as a value counts as: its module, its code fingerprint and the
    values it reads that count by content, as for a decorated function. A cached function counts
    as the function it caches; a library function by its name and version (and the user
    function it wraps, if any), as when code refers to it.

    Raises `FingerprintError` when some of the code it reaches cannot be read: a function that
    cannot be told apart from another must not share its entries.
    """
    if _is_own_package(_defining_module(fn)):
        wrapped = getattr(fn, "__wrapped__", None)
        if type(wrapped) is types.FunctionType:
            fn = wrapped
    module = _defining_module(fn)
    if id(fn) in (getattr(_building, "ids", None) or ()):
        # Reached again while its own node is being computed: that node counts its code.
        return (module, fn.__qualname__, "being counted")
    if _is_user_function(fn):
        digests, live, readable = _walk([fn])
    else:
        children: list[object] = []
        library = fingerprint(_library_callable(fn, children), strict=True)
        digests, live, readable = _walk(children)
        digests = (library, *digests)
    if not readable:
        raise FingerprintError(
            f"the code of {module}.{fn.__qualname__} reaches objects that cannot be read, so it "
            "cannot be told apart from other functions; pass a function of your own code, or "
            "list the argument in ignore="
        )
    return (module, _combine(digests), _current(live))


_library_types: set[type] = set()  # argument types known not to be the user's own classes


def arguments_code(values: Collection[Any]) -> tuple[tuple[str, tuple[tuple[str, Any], ...]], ...]:
    """The code states (`code_state`) of the user classes among ``values``, given as classes or
    through an instance (``self``, a strategy object): a value's fingerprint names its class but
    does not read its methods."""
    if _library_types.issuperset(map(type, values)):  # nearly every hit: ints, strings, frames
        return ()
    states = []
    for value in values:
        cls = type(value)
        if cls in _library_types:
            continue
        if isinstance(value, type):  # a class passed as an argument
            cls = value
            if not _is_user_class(cls):
                continue
        elif not _is_user_class(cls):
            _library_types.add(cls)
            continue
        states.append(code_state(cls))
    return tuple(states)
