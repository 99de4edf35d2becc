"""The code fingerprint of a function: a digest of what it computes, for cache keys.

:func:`code_fingerprint` answers with 64 hex digits that change when any code the function
depends on changes, and stay when only comments, blank lines, docstrings or line positions do.

What counts
-----------

*The function's own code.* Its code object as :func:`afml_cache.fingerprinting._code_parts` reads
it (argument counts, flags, bytecode, constants, names, variable names, free and cell variables,
exception table; never line numbers, positions or the file name). The docstring
(``co_consts[0]`` when it equals ``fn.__doc__``) is replaced by ``None``, and so are the
docstrings of the functions defined inside it. Its qualified name counts; its module does not
(a caller keys on the function's identity separately).

*Its defaults and keyword defaults*, each by value: immutable constants as themselves, functions
and classes as references (below), any other value by its fingerprint in strict mode, or, when it
has none, by its type's qualified name. A default counts as it was when first seen; a mutable
default changed in place later does not change the digest.

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
  (methods, static and class methods, property accessors, nested classes, class-level
  constants by value, other attributes by type), walked the same way; an *instance* of a user
  class counts by its class (the class's code counts, never the instance's state);
- an immutable constant (``int``, ``float``, ``complex``, ``bool``, ``str``, ``bytes``, ``None``,
  tuples and frozensets of these): by value; an enum member by its class, name and value;
- a mutable object (dict, list, set, a client object, an instance of a library class): by its
  type's qualified name only, since its state changes at run time and must not churn keys; so
  does a global the function itself assigns (``global CALLS; CALLS += 1``), whatever its type;
- a module, function or class of the standard library or an installed package: by qualified
  name plus version (the distribution's version for packages, ``python X.Y`` for the standard
  library, the name alone when no version is found). A library callable that wraps a user
  function (``__wrapped__``, e.g. another cached function or ``functools.lru_cache``) also counts
  the wrapped function;
- a builtin: by name. ``functools.partial``: its function, positional and keyword arguments;
  a bound method: its function and what it is bound to;
- anything the walker cannot read: its qualified name (and a debug line on the ``afml_cache``
  logger). ``code_fingerprint`` never raises.

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
recomputed. Mutating a dict or an instance in place is deliberately not noticed; neither is
assigning a new ``__defaults__`` tuple that happens to reuse the old one's address (defaults are
checked by ``id``, to hold no reference from the cache to them), nor editing ``__kwdefaults__``
in place.

A repeated call for a function with five helpers costs a few microseconds (one dictionary lookup
and identity test per reference, no hashing); the first call per function reads its bytecode
and hashes it (milliseconds, once, plus the first lookup of library versions).

Concurrent calls from several threads are safe without a lock: the caches are only read and
replaced whole, every node's digest is a pure function of what it was computed from, and two
threads computing the same node store equal values.
"""

from __future__ import annotations

import contextlib
import dis
import enum
import functools
import importlib
import importlib.metadata
import importlib.util
import inspect
import itertools
import logging
import os
import site
import sys
import sysconfig
import types
import weakref
from collections.abc import Callable, Iterator
from typing import Any, Final

from afml_cache._core import fingerprint
from afml_cache.fingerprinting import _code_parts

__all__ = ["code_fingerprint"]

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

    User functions and classes found are appended to ``children``, to be walked in turn.
    """
    try:
        return _classify(obj, children)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(obj), exc)
        return ("unknown", _qualified(obj)), _same(obj)


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
        args = tuple(_value(a, children) for a in obj.args)
        keywords = tuple((k, _value(v, children)) for k, v in sorted(obj.keywords.items()))
        return ("partial", function, args, keywords), _same(obj)
    if isinstance(obj, enum.Enum):
        owner, _ = _ref(cls, children)
        value = obj.value if _is_constant(obj.value) else _qualified(obj.value)
        return ("enum", owner, obj.name, value), _same(obj)
    if _is_user_class(cls):
        children.append(cls)
        return ("instance", cls.__qualname__), _of_type(obj)
    if callable(obj) and isinstance(getattr(obj, "__name__", None), str):
        return _library_callable(obj, children), _same(obj)
    return ("object", _qualified(cls)), _of_type(obj)


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
            inner = getattr(inner, "__wrapped__", None)
        except Exception:
            return None
        if inner is None or isinstance(inner, type):
            return None
        if isinstance(inner, types.FunctionType) and _is_user_function(inner):
            return inner
    return None


def _defining_module(fn: types.FunctionType) -> str:
    """The module whose code defined ``fn`` (``__module__`` may have been copied by wraps)."""
    name = fn.__globals__.get("__name__")
    return name if isinstance(name, str) else _module_of(fn)


def _value(value: object, children: list[object]) -> Any:
    """A default or a partial's argument: by value."""
    try:
        return _by_value(value, children)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(value), exc)
        return ("unknown", _qualified(value))


def _by_value(value: object, children: list[object]) -> Any:
    if _is_constant(value):
        return ("const", value)
    if callable(value) or isinstance(value, types.ModuleType | enum.Enum):
        return _ref(value, children)[0]
    cls = type(value)
    if _is_user_class(cls):
        children.append(cls)
    try:
        return ("value", _qualified(cls), fingerprint(value, strict=True))
    except Exception:
        return ("object", _qualified(cls))


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
        "names",
        "paths",
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
                current = _builtins_of(fn).get(name, missing)
            if expected() is not current:
                return None
        for name, check in self.names:
            current = scope.get(name, missing)
            if current is missing:
                current = _builtins_of(fn).get(name, missing)
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
        return _alive(self.children)

    def add_name(self, name: str, check: Check) -> None:
        if check[0] == _SAME:
            self.same.append((name, check[1]))
        else:
            self.names.append((name, check))


class _ClassNode:
    __slots__ = ("bases", "children", "digest", "members", "metaclass", "same", "size")

    def __init__(self, cls: type) -> None:
        self.size = len(vars(cls))
        self.same: list[tuple[str, Getter]] = []
        self.members: list[tuple[str, Check]] = []
        self.bases: tuple[Getter, ...] = tuple(_same(b)[1] for b in cls.__bases__)
        self.metaclass: Getter = _same(type(cls))[1]
        self.children: tuple[weakref.ref[Any], ...] = ()
        self.digest = ""

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
        for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True):
            part, check = _ref(_cell_contents(cell), children)
            node.cells.append(check)
            cells.append((name, part))
        defaults = tuple(_value(d, children) for d in fn.__defaults__ or ())
        kwdefaults = tuple(
            (k, _value(v, children)) for k, v in sorted((fn.__kwdefaults__ or {}).items())
        )
        references = tuple(refs.items())
        form = ("function", fn.__qualname__, own, defaults, kwdefaults, references, tuple(cells))
        node.digest = _digest(form, fn)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(fn), exc)
        node.same, node.names, node.paths, node.cells, children = [], [], [], [], []
        node.digest = fingerprint((_FORMAT, "unknown", _qualified(fn)))
        node.defaults_id = -1  # never holds: tried again on the next call
    node.children = _weak_children(children)
    return node, children


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
        node.add_name(ref[1], check)
    else:
        node.paths.append(((*ref[:-1], ref[-1][: len(modules)]), tuple(modules), check))
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
            node.add_member(name, check)
            members.append((name, part))
        members.sort(key=lambda item: item[0])
        bases = tuple(_ref(b, children)[0] for b in cls.__bases__)
        metaclass, _ = _ref(type(cls), children)
        form = ("class", cls.__qualname__, bases, metaclass, tuple(members))
        node.digest = _digest(form, cls)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(cls), exc)
        node.same, node.members, children = [], [], []
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


def _walk(roots: list[object]) -> tuple[str, ...]:
    """The digests of every function and class reachable from ``roots``, each once, depth
    first."""
    digests: list[str] = []
    seen: set[int] = set()
    pinned: list[object] = []  # keeps each visited object alive, so its id stays its own
    stack: list[Any] = roots[::-1]
    nodes = _nodes
    while stack:
        obj = stack.pop()
        if id(obj) in seen:
            continue
        seen.add(id(obj))
        pinned.append(obj)
        try:
            node = nodes.get(obj)
        except TypeError:  # a class whose metaclass makes it unhashable
            node = None
        children = None
        if node is not None:
            try:
                children = node.current_children(obj)
            except Exception:  # a module's __getattr__ that raises, say: compute afresh
                children = None
        if node is None or children is None:
            if type(obj) is types.FunctionType:
                node, children = _function_node(obj)
            else:
                node, children = _class_node(obj)
            with contextlib.suppress(TypeError):  # not weakly referenceable: recomputed each call
                nodes[obj] = node
        digests.append(node.digest)
        if children:
            stack.extend(reversed(children))
    return tuple(digests)


def code_fingerprint(fn: Callable[..., Any]) -> str:
    """The 64-hex-digit fingerprint of what ``fn`` computes (see the module docstring).

    It changes when the code of ``fn`` or of any user function, class or module-level constant
    it depends on changes, and stays when only comments, blank lines, docstrings or line
    positions do. It never raises: what cannot be read counts by name.
    """
    try:
        if isinstance(fn, types.MethodType):
            fn = fn.__func__
        if type(fn) is types.FunctionType:
            # Fast path: the walk checks every node's inputs; the combination is memoised.
            digests = _walk([fn])
            combined = _combined.get(digests)
            if combined is None:
                combined = fingerprint((_FORMAT, "function", digests))
                if len(_combined) >= _COMBINED_LIMIT:
                    _combined.clear()
                _combined[digests] = combined
            return combined
        children: list[object] = []
        head, _ = _ref(fn, children)
        return fingerprint((_FORMAT, "object", _digest((head,), fn), _walk(children)))
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(fn), exc)
        return fingerprint((_FORMAT, "unknown", _qualified(fn)))
