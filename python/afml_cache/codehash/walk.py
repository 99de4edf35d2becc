"""The walk over the functions and classes a function reaches, with the cache of their nodes,
and the public answers: `code_fingerprint`, `code_state`, `function_key`, `arguments_code`."""

from __future__ import annotations

import builtins
import contextlib
import enum
import functools
import importlib
import importlib.util
import inspect
import itertools
import logging
import os
import random
import re
import sys
import threading
import types
import warnings
import weakref
from collections.abc import Callable, Collection, Iterable, Iterator
from typing import Any, Final

from afml_cache._core import fingerprint
from afml_cache.codehash.bytecode import (
    _ENVIRONMENT_MAPPINGS,
    _ENVIRONMENT_NAMES,
    _WRITTEN_TYPES,
    Ref,
    _cached_references,
    _code_digest,
    _code_objects,
    _environment_variables,
    _written_only,
)
from afml_cache.codehash.scope import (
    _defining_module,
    _is_own_package,
    _is_stdlib_name,
    _is_user_class,
    _is_user_function,
    _is_user_module,
    _packages_distributions,
    _qualified,
    _version_of,
)
from afml_cache.codehash.values import (
    _EMPTY_CELL,
    _MISSING,
    _SAME,
    Check,
    Getter,
    _bound_item,
    _held,
    _is_live,
    _is_user_module_part,
    _library_callable,
    _matches,
    _of_type,
    _proxy_view,
    _ref,
    _same,
    _view,
    is_random_generator,
)
from afml_cache.errors import FingerprintError

_log = logging.getLogger("afml_cache")


# Part of every digest; bump it when what is hashed changes.
_FORMAT: Final = "afml-cache code fingerprint v1"

_NOT_IMPORTED: Final = object()  # a module an import statement names, not imported yet
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
# Dunder members Python makes from a class's body (its annotations; a dataclass's fields, whose
# defaults count as the class attributes and `__init__` defaults they also are) or a library
# derives from its others (pydantic's schema, validator and serializer from its fields) or fills
# in as instances are used: by type (`_made_with_class`).
_BY_TYPE_CLASS_KEYS: Final = frozenset(
    {
        "__annotations__",
        "__dataclass_fields__",
        "__dataclass_params__",
        "__orig_bases__",
        "__parameters__",
        "__type_params__",
        "__protocol_attrs__",
        "__non_callable_proto_members__",
        "__signature__",
        "__pydantic_core_schema__",
        "__pydantic_validator__",
        "__pydantic_serializer__",
        "__pydantic_setattr_handlers__",
        "__pydantic_parent_namespace__",
    }
)
# Builtins through which code reads its module's globals by names it computes.
_READ_GLOBALS: Final = (builtins.globals, builtins.eval, builtins.exec)
# Attributes through which code reads a namespace's globals by names it computes.
_GLOBALS_ATTRIBUTES: Final = frozenset({"f_globals", "__globals__"})
# The process environment's readers, reached as `os.<name>` or bound to a name of their own.
_ENVIRONMENT: Final = tuple(getattr(os, name) for name in _ENVIRONMENT_NAMES if hasattr(os, name))
# Functions that read environment variables named in their argument, not in the code.
_EXPANDING: Final = (os.path.expandvars, os.path.expanduser)
# Globals no code reads by a computed name: dunders, and IPython's history of a notebook's inputs
# and outputs (which change at every cell).
_UNREAD_GLOBALS: Final = re.compile(
    r"__\w+__|_{1,3}|_i{1,3}|_[ido]h|_i?\d+|In|Out|get_ipython|exit|quit"
)
# A value counted by its content at each call: what names it (`PARAMS`, `cfg.PARAMS`), and how to
# read it from the function or class that refers to it.
Live = tuple[str, Callable[[Any], Any]]
# The values that count by content as read at a call, each with its name.
LiveValues = tuple[tuple[str, Any], ...]

# --- the nodes of the walk: functions and classes -------------------------------------------------


class _FunctionNode:
    """What a function's digest was computed from, to tell on a later call whether it holds."""

    __slots__ = (
        "attributes",
        "cells",
        "children",
        "code",
        "defaults",
        "digest",
        "globals_size",
        "imported",
        "kwdefaults",
        "live",
        "names",
        "namespaces",
        "paths",
        "readable",
        "same",
    )

    def __init__(self, fn: types.FunctionType) -> None:
        self.code = fn.__code__
        # The defaults themselves, not their id: a tuple set twice since may reuse an address.
        # Keyword defaults live in a dict that can also change in place: their items too.
        self.defaults = fn.__defaults__
        self.kwdefaults = _kwdefaults(fn)
        # Attributes set on the function (`winsorize.cap = 3.0`), which it may read.
        self.attributes = _attributes(fn)
        # Global names not followed further: those that must resolve to the same object (most),
        # and the others (by type, or wrapping the same functions).
        self.same: list[tuple[str, Getter]] = []
        self.names: list[tuple[str, Check]] = []
        self.paths: list[tuple[Ref, tuple[Getter, ...], Check]] = []  # chains and imports
        self.cells: list[Check] = []
        # Where the function may read any name (`globals()`, `eval`, `getattr(module, name)`):
        # every name there counts, and one added later changes the digest. The size of its
        # module's globals (-1 if not), and of each user module's namespace it uses as a value.
        self.globals_size = -1
        self.namespaces: list[tuple[Getter, int]] = []
        self.children: tuple[weakref.ref[Any], ...] = ()
        self.digest = ""
        self.live: list[Live] = []  # values counted by their content at each call
        self.readable = True  # False when something reached could only be named
        # What its references read from modules a worker imports rather than receives with a
        # function sent by value (`imported_code`): ``helpers.SCALE``, a body's imports.
        self.imported: list[tuple[Any, Any]] = []

    def current_children(self, fn: types.FunctionType) -> list[object] | None:
        """The functions and classes to walk next, or None when the digest no longer holds."""
        # This runs for every function reached on every call: keep it to lookups and `is`.
        if (
            fn.__code__ is not self.code
            or fn.__defaults__ is not self.defaults
            or (
                (self.kwdefaults is not None or fn.__kwdefaults__ is not None)
                and not _same_kwdefaults(fn, self.kwdefaults)
            )
            or ((self.attributes or fn.__dict__) and not _same_attributes(fn, self.attributes))
        ):
            return None
        missing = _MISSING
        scope = fn.__globals__
        if self.globals_size >= 0 and len(scope) != self.globals_size:
            return None
        for module, size in self.namespaces:
            current_module = module()
            if current_module is None or len(vars(current_module)) != size:
                return None
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
    imported yet, so its functions can be read. Library modules are named, never imported;
    one whose import failed is not tried again in this process (an optional backend that
    needs what is not installed: its import may cost seconds, at each walk)."""
    if name in sys.modules or name in _UNIMPORTABLE or not name or name.startswith("."):
        return
    top = name.partition(".")[0]
    if _is_stdlib_name(top) or _packages_distributions().get(top) or _is_own_package(top):
        return
    try:
        importlib.import_module(name)
    except Exception as exc:
        _UNIMPORTABLE.add(name)
        _log.debug("afml_cache: code fingerprint cannot import %s: %r", name, exc)


_UNIMPORTABLE: set[str] = set()  # user modules whose import by `_import_if_user` failed


def _function_node(fn: types.FunctionType) -> tuple[_FunctionNode, list[object]]:
    node = _FunctionNode(fn)
    children: list[object] = []
    try:
        doc = fn.__doc__
        own = _code_digest(fn.__code__, doc if isinstance(doc, str) else None)
        refs: dict[tuple[str, ...], Any] = {}
        references = _cached_references(fn.__code__)
        for ref in references:
            _function_reference(fn, ref, node, refs, children)
        for name in _expression_names(fn, references):
            if (name,) not in refs:
                _function_reference(fn, ("global", name, ()), node, refs, children)
        environment = _environment_names(fn, references)
        if environment != frozenset():
            # Settings read from the environment count by content: the variables it names
            # (`os.environ["LOOKBACK"]`), or all of them if it reads it otherwise.
            variables = environment and _environment_variables(fn.__code__, environment)
            for name, reader in _environment_readers(variables):
                refs[(name,)] = ("live", name)
                node.live.append((name, reader))
        for name, reader in [*_random_draws(fn, references), *_command_line(fn, references)]:
            refs[(name,)] = ("live", name)
            node.live.append((name, reader))
        if _reads_globals_by_name(fn, references):
            scope = dict(fn.__globals__)  # one snapshot, even if another thread edits it
            node.globals_size = len(scope)
            for name in _read_names(scope):
                _function_reference(fn, ("global", name, ()), node, refs, children)
        cells = []
        for i, (name, cell) in enumerate(
            zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=True)
        ):
            value = _cell_contents(cell)
            part, check = _ref(value, children)
            part = _unless_written_only(fn, name, value, part)
            if _is_live(part):
                node.live.append((name, _live_reader(part, _cell_reader(i))))
            node.cells.append(check)
            cells.append((name, part))
        defaults = tuple(_ref(d, children)[0] for d in fn.__defaults__ or ())
        for i, part in enumerate(defaults):
            if _is_live(part):
                reader = _live_reader(part, _default_reader(i))
                node.live.append((f"{fn.__qualname__}.__defaults__[{i}]", reader))
        kwdefaults = tuple(
            (k, _ref(v, children)[0]) for k, v in sorted((fn.__kwdefaults__ or {}).items())
        )
        for name, part in kwdefaults:
            if _is_live(part):
                reader = _live_reader(part, _kwdefault_reader(name))
                node.live.append((f"{fn.__qualname__}.__kwdefaults__[{name!r}]", reader))
        attributes = tuple((k, _ref(v, children)[0]) for k, v in node.attributes)
        for name, part in attributes:
            if _is_live(part):
                reader = _live_reader(part, _attribute_reader(name))
                node.live.append((f"{fn.__qualname__}.{name}", reader))
        held = [
            *map(_cell_contents, fn.__closure__ or ()),
            *(fn.__defaults__ or ()),
            *(fn.__kwdefaults__ or {}).values(),
        ]
        for value in held:
            # A module of the user's code held as a value (`make(cfg)`, `def f(x, m=cfg)`):
            # every name in it counts, as for one a global names (`_function_reference`).
            if _is_user_module_value(value):
                _function_reference(fn, ("import", 0, value.__name__, ()), node, refs, children)
        form = (
            "function",
            fn.__qualname__,
            own,
            defaults,
            kwdefaults,
            tuple(refs.items()),
            tuple(cells),
        )
        if attributes:  # functions without any keep their digests
            form = (*form, ("attributes", attributes))
        node.digest = _digest(form, fn)
        node.readable = _readable(form)
    except Exception as exc:
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(fn), exc)
        node.same, node.names, node.paths, node.cells, children = [], [], [], [], []
        node.globals_size, node.namespaces, node.imported = -1, [], []
        node.live, node.readable = [], False
        # Its own code still counts: an edit of the function is a miss, whatever it reaches.
        node.digest = fingerprint((_FORMAT, "unknown", _qualified(fn), _own_code(fn)))
        node.code = None  # never holds: tried again on the next call
    node.children = _weak_children(children)
    return node, children


def _own_code(fn: types.FunctionType) -> str | None:
    try:
        return _code_digest(fn.__code__, None)
    except Exception:  # a constant with no fingerprint: by name alone
        return None


def _expression_names(fn: types.FunctionType, references: tuple[Ref, ...]) -> list[str]:
    """The globals a function has pandas read from the strings it evaluates: each ``@NAME``
    of a frame's query or eval (``df.query("ret > @THRESH")``, in a comprehension or lambda
    too), and, when it calls pandas' own ``pd.eval``, every name in its strings, which that
    reads from the caller's variables (a frame's ``eval`` reads bare names from its columns:
    a global ``close`` beside a ``"close > open"`` is not read)."""
    codes = list(_code_objects(fn.__code__))
    pandas = sys.modules.get("pandas")
    top_level = pandas is not None and any(
        (start is pandas and attrs[:1] == ("eval",)) or start is getattr(pandas, "eval", None)
        for _, start, attrs in _starts(fn, references)
    )
    pattern = _IDENTIFIER if top_level else _LOCAL_VARIABLE
    strings = [c for code in codes for c in code.co_consts if isinstance(c, str)]
    # ...and the expressions it reads from globals, their attributes and defaults (``LIQUID =
    # "volume > @MIN_VOLUME"``, a dict of named filters, ``CFG.liquid`` of a namespace).
    held = [v for ref in references if ref[0] == "global" for v in _along(fn.__globals__, ref)]
    for value in (*held, *(fn.__defaults__ or ()), *(fn.__kwdefaults__ or {}).values()):
        strings.extend(held_strings(value))
    if not top_level:
        # `@NAME`s count in a function that passes the string on, too: a helper's
        # `df.query(rule)` reads them from its own module, most often this one.
        strings = [string for string in strings if "@" in string]
    names = dict.fromkeys(
        name for string in strings if string is not fn.__doc__ for name in pattern.findall(string)
    )
    return [name for name in names if name in fn.__globals__]


def argument_expressions(
    fn: types.FunctionType, values: Iterable[object]
) -> tuple[tuple[str, Any], ...]:
    """The globals of ``fn``'s module that strings among its arguments name for pandas to
    read, each with its value now: ``keep(df, "ret > @THRESH")``, whose ``df.query(rule)``
    reads ``THRESH`` from the function's globals (and, when its code calls an ``eval``, every
    name in such a string). The strings themselves count as arguments do."""
    strings = [string for value in values for string in held_strings(value)]
    if not strings:
        return ()
    evaluates = _evaluates(fn.__code__)
    names: dict[str, None] = {}
    for string in strings:
        # Every name, where the code calls an eval, of a string short enough to be an
        # expression (a 20 MB text argument took a second a call); the @NAMEs of any.
        if evaluates and len(string) <= _EXPRESSION_LENGTH:
            names.update(dict.fromkeys(_IDENTIFIER.findall(string)))
        elif len(string) <= _EXPRESSION_LENGTH:
            if "@" in string:
                names.update(dict.fromkeys(_LOCAL_VARIABLE.findall(string)))
        else:  # a long one, scanned once per string (a query listing thousands of symbols)
            names.update(dict.fromkeys(_long_string_names(string)))
    namespace = fn.__globals__
    return tuple((name, namespace[name]) for name in names if name in namespace)


@functools.lru_cache(maxsize=1024)
def _evaluates(code: types.CodeType) -> bool:
    """Whether code calls an ``eval`` (pandas', a frame's or Python's), which may read bare
    names from its caller's variables."""
    return any("eval" in nested.co_names for nested in _code_objects(code))


def _along(namespace: dict[str, Any], ref: Ref) -> list[object]:
    """The values a global reference passes through: the global's, then each attribute's it
    reads (found without running a property or ``__getattr__``), as far as they are found."""
    value = namespace.get(ref[1], _MISSING)
    values = [] if value is _MISSING else [value]
    for name in ref[-1][:_EXPRESSION_DEPTH] if values else ():
        try:
            value = inspect.getattr_static(value, name)
        except Exception:  # not an attribute it holds (a property's, a method's result)
            break
        values.append(value)
    return values


def held_strings(value: object) -> list[str]:
    """The strings a value holds where an expression may be kept: itself, the items of a dict,
    list or tuple (a named tuple too), or the attributes of a namespace, a config object or a
    class, and theirs in turn (at most `_EXPRESSION_ITEMS` items looked at,
    `_EXPRESSION_DEPTH` levels down). Read as stored: no method of the value runs."""
    found: list[str] = []
    budget = [_EXPRESSION_ITEMS]

    def look(item: object, depth: int) -> None:
        cls = type(item)
        if cls is str:
            found.append(item)  # type: ignore[arg-type]
            return
        if depth == 0 or budget[0] <= 0 or _is_constant_atom(item):
            return
        items: Iterable[object]
        if issubclass(cls, dict):
            items = dict.values(item)  # type: ignore[arg-type]
        elif issubclass(cls, list):
            items = list.__iter__(item)  # type: ignore[arg-type]
        elif issubclass(cls, tuple):
            items = tuple.__iter__(item)  # type: ignore[arg-type]
        elif issubclass(cls, types.ModuleType | types.FunctionType):
            return  # a module's names and a function's strings count where they are read
        else:
            try:  # past a hostile ``__getattribute__``
                attributes = object.__getattribute__(item, "__dict__")
            except Exception:  # a slotted object: nothing kept here
                return
            if isinstance(attributes, dict):
                items = dict.values(attributes)
            elif isinstance(attributes, types.MappingProxyType):
                items = attributes.values()
            else:
                return
        for part in itertools.islice(items, max(budget[0], 0)):
            budget[0] -= 1
            look(part, depth - 1)

    look(value, _EXPRESSION_DEPTH)
    return found


def _is_constant_atom(value: object) -> bool:
    return type(value) in (int, float, bool, bytes, complex) or value is None


# Methods that evaluate a string naming the caller's variables, and the names in one: any
# identifier for pandas' own eval, ``@name`` for a frame's.
_EVALUATES: Final = frozenset({"query", "eval"})
_IDENTIFIER: Final = re.compile(r"[A-Za-z_]\w*")
_LOCAL_VARIABLE: Final = re.compile(r"@([A-Za-z_]\w*)")
_EXPRESSION_ITEMS: Final = 256  # the strings of a global container looked at, at most
_EXPRESSION_LENGTH: Final = 4096  # the longest string argument whose every name is read


def _long_string_names(string: str) -> tuple[str, ...]:
    """The @NAMEs of a long string argument, remembered by its digest (a hash pass, as its key
    already takes; the strings themselves are not kept): passed at each call, a 26 MB text of
    e-mail addresses was scanned again at each hit (0.4 s)."""
    if "@" not in string:
        return ()
    digest = fingerprint(string)
    found = _LONG_STRINGS.get(digest)
    if found is None:
        found = tuple(dict.fromkeys(_LOCAL_VARIABLE.findall(string)))
        if len(_LONG_STRINGS) >= 256:
            _LONG_STRINGS.clear()
        _LONG_STRINGS[digest] = found
    return found


_LONG_STRINGS: dict[str, tuple[str, ...]] = {}  # by the string's digest
_EXPRESSION_DEPTH: Final = 8  # attributes of a reference followed, levels of a value looked in


def _read_names(namespace: dict[str, Any]) -> list[str]:
    """The names of a namespace that code may read by a name it computes."""
    return [name for name in namespace if not _UNREAD_GLOBALS.fullmatch(name)]


def _is_user_module_value(value: object) -> bool:
    # type(), not isinstance(): a hostile object's __class__ may raise.
    return issubclass(type(value), types.ModuleType) and _is_user_module(value)  # type: ignore[arg-type]


def _reads_globals_by_name(fn: types.FunctionType, references: tuple[Ref, ...]) -> bool:
    """Whether ``fn`` can read its module's globals by names it computes: it calls
    ``globals()``, ``eval`` or ``exec``, reads ``sys.modules``, or a namespace's globals as an
    attribute (``inspect.currentframe().f_globals[name]``, ``helper.__globals__[name]``)."""
    if not _GLOBALS_ATTRIBUTES.isdisjoint(fn.__code__.co_names):
        return True
    for _, start, attrs in _starts(fn, references):
        if start is sys:
            if attrs[:1] == ("modules",):
                return True
        elif not attrs and any(start is read for read in _READ_GLOBALS):
            return True
    return False


def _environment_names(
    fn: types.FunctionType, references: tuple[Ref, ...]
) -> frozenset[tuple[str, bool]] | None:
    """The names ``fn`` loads the process environment by, each with whether it is the mapping
    (``os.environ``, an alias of it, a global holding it) or the function (``os.getenv``);
    empty when it does not read the environment, None when it reads it through a function that
    names no variable (``os.path.expandvars("$DATA")``, ``os.path.expanduser``)."""
    names: set[tuple[str, bool]] = set()
    for name, start, attrs in _starts(fn, references):
        if start is os and attrs[:1] and attrs[0] in _ENVIRONMENT_NAMES:
            names.add((attrs[0], attrs[0] in _ENVIRONMENT_MAPPINGS))
        elif any(start is reader for reader in _ENVIRONMENT):
            names.add((name, start is os.environ or start is getattr(os, "environb", None)))
        elif _reaches(start, attrs, _EXPANDING) or _holds_environment_reader(start):
            return None
    return frozenset(names)


def _holds_environment_reader(obj: object) -> bool:
    """Whether ``obj`` reads the environment by a name its code does not show: a method of
    ``os.environ`` (``GET = os.environ.get``) or a partial of a reader
    (``functools.partial(os.getenv, "LOOKBACK")``)."""
    while type(obj) is functools.partial:  # by type: any other question may run user code
        obj = obj.func
    if type(obj) in (types.MethodType, types.BuiltinMethodType):
        owner = obj.__self__  # type: ignore[attr-defined]
        return owner is os.environ or owner is getattr(os, "environb", None)
    return any(obj is reader for reader in _ENVIRONMENT)


def _reaches(start: object, attrs: Any, targets: tuple[object, ...]) -> bool:
    """Whether ``start`` or an attribute chain from it (modules only) names one of
    ``targets``: ``os.path.expandvars`` from ``os``, or ``expandvars`` itself."""
    current = start
    for attr in (None, *attrs):
        if attr is not None:
            if not issubclass(type(current), types.ModuleType):
                return False
            current = getattr(current, attr, _MISSING)
        if any(current is target for target in targets):
            return True
    return False


def _starts(
    fn: types.FunctionType, references: tuple[Ref, ...]
) -> Iterator[tuple[str, object, Any]]:
    """The name each reference that reads (not a global the function assigns) starts from (a
    global's, or an imported module's), the object it names, and the attributes that follow."""
    for ref in references:
        if ref[0] == "import":
            ref = _absolute_import(fn, ref)
            yield ref[2], _start(fn, ref), ref[-1]
        elif ref[0] != "state":
            yield ref[1], _start(fn, ref), ref[-1]


def _random_draws(fn: types.FunctionType, references: tuple[Ref, ...]) -> list[Live]:
    """The process-wide random generators ``fn`` draws from through a module
    (``np.random.normal``, ``random.choice``, ``from random import random``): the state
    ``np.random.seed`` or ``random.seed`` left before the call decides the result, so each
    counts by its state at each call, named as the code reads the draw. A function that seeds
    the generator itself decides that state on its own: that generator does not count."""
    draws: dict[int, tuple[str, object]] = {}  # by generator: the first draw's name
    seeded: set[int] = set()
    for name, chain, current in _module_chains(fn, references):
        if not chain and type(current) is not types.BuiltinMethodType:
            continue  # a global bound method of Python code (numpy's) is live already
        generator = _seeded_by(current)
        if generator is not None:
            seeded.add(id(generator))
            continue
        generator = getattr(current, "__self__", None)
        if is_random_generator(generator) and id(generator) not in draws:
            draws[id(generator)] = (".".join((name, *chain)), generator)
    return [
        (name, _state_reader(generator))
        for key, (name, generator) in draws.items()
        if key not in seeded
    ]


def _module_chains(
    fn: types.FunctionType, references: tuple[Ref, ...]
) -> Iterator[tuple[str, list[str], object]]:
    """Each reference ``fn`` reads, followed through modules: the name it starts from, the
    attributes followed, and the object they lead to (``np.random.seed``)."""
    for name, current, attrs in _starts(fn, references):
        chain = []
        for attr in attrs:
            if not issubclass(type(current), types.ModuleType):
                break
            current = getattr(current, attr, None)
            chain.append(attr)
        yield name, chain, current


def seeds_a_global_generator(fn: types.FunctionType) -> bool:
    """Whether ``fn``'s own code seeds random's or numpy's process-wide generator
    (``np.random.seed(42)``): what it then draws does not depend on the state before it."""
    references = _cached_references(fn.__code__)
    return any(_seeded_by(current) is not None for *_, current in _module_chains(fn, references))


def global_generators() -> tuple[str, ...]:
    """The digest of numpy's process-wide (legacy) generator's state, once ``numpy.random`` is
    imported: what a draw inside a library reads (``df.sample()``, ``train_test_split``, a
    model without ``random_state``), which no walk of the user's code sees. random's own
    generator is left out: frameworks' threads draw from it all the time (distributed's do), so
    its state moving during a call says nothing of the call; a draw from it in the user's code
    counts where the walk sees it (`_random_draws`)."""
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is None:
        return ()
    return (fingerprint(numpy_random.mtrand._rand.get_state(legacy=False)),)


def _seeded_by(function: object) -> object | None:
    """The generator ``function`` seeds: ``random.seed``'s, or ``np.random.seed``'s (a function
    of numpy's, not a method); None for any other function."""
    owner = getattr(function, "__self__", None)
    if isinstance(owner, random.Random) and getattr(function, "__name__", None) == "seed":
        return owner
    numpy_random = sys.modules.get("numpy.random")
    if numpy_random is not None and function is getattr(numpy_random, "seed", None):
        return numpy_random.mtrand._rand
    return None


def _command_line(fn: types.FunctionType, references: tuple[Ref, ...]) -> list[Live]:
    """``sys.argv``, if ``fn`` reads it through ``sys`` (``from sys import argv`` is a global
    list, counted by content already) or has argparse read it (``parser.parse_args()``): a
    script run again with other arguments gets them."""
    if not _PARSES_ARGUMENTS.isdisjoint(fn.__code__.co_names):
        return [_COMMAND_LINE]
    for _, current, attrs in _starts(fn, references):
        if current is sys and attrs[:1] == ("argv",):
            return [_COMMAND_LINE]
    return []


_COMMAND_LINE: Final[Live] = ("sys.argv", lambda _fn: list(sys.argv))
# argparse's methods that read sys.argv when given no arguments.
_PARSES_ARGUMENTS: Final = frozenset(
    {"parse_args", "parse_known_args", "parse_intermixed_args", "parse_known_intermixed_args"}
)


def _state_reader(generator: object) -> Callable[[Any], Any]:
    if isinstance(generator, random.Random):
        return lambda _fn: generator.getstate()
    return lambda _fn: generator.get_state(legacy=False)  # type: ignore[attr-defined]


def _environment_readers(variables: tuple[str, ...] | None) -> list[Live]:
    """The live values of the environment a function reads: each variable it names, as
    ``os.environ["K"]`` (which ``ignore_globals`` may list), or all of them, as ``os.environ``."""
    if variables is None:
        return [("os.environ", lambda _fn: dict(os.environ))]
    return [(f'os.environ["{name}"]', _variable_reader(name)) for name in variables]


def _variable_reader(name: str) -> Callable[[Any], str | None]:
    return lambda _fn: os.environ.get(name)


def _unless_written_only(fn: types.FunctionType, name: str, value: object, part: Any) -> Any:
    """A list, set, dict or deque the function only appends or adds to (a log, a call counter)
    counts by type: its content does not decide the result."""
    if _is_live(part) and type(value) in _WRITTEN_TYPES and name in _written_only(fn.__code__):
        return ("written", _qualified(type(value)))
    return part


def _cell_reader(i: int) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__closure__[i].cell_contents  # type: ignore[index]


def _kwdefaults(fn: types.FunctionType) -> tuple[Any, tuple[tuple[str, Any], ...]] | None:
    """The keyword defaults' dict and its items, or None when the function has none."""
    kwdefaults = fn.__kwdefaults__
    return None if kwdefaults is None else (kwdefaults, tuple(kwdefaults.items()))


def _same_kwdefaults(
    fn: types.FunctionType, known: tuple[Any, tuple[tuple[str, Any], ...]] | None
) -> bool:
    current = fn.__kwdefaults__
    if known is None or current is None:
        return known is None and current is None
    kwdefaults, items = known
    return (
        current is kwdefaults
        and len(current) == len(items)
        and all(current.get(name, _MISSING) is value for name, value in items)
    )


def _default_reader(i: int) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__defaults__[i]  # type: ignore[index]


def _attributes(fn: types.FunctionType) -> tuple[tuple[str, Any], ...]:
    """The attributes set on ``fn`` by name, less the names ``functools.wraps`` and
    decorators' bookkeeping use (``__wrapped__``, ``__afml_cache__``)."""
    found = ((k, v) for k, v in fn.__dict__.items() if not k.startswith("__"))
    return tuple(sorted(found, key=lambda item: item[0]))


def _same_attributes(fn: types.FunctionType, known: tuple[tuple[str, Any], ...]) -> bool:
    current = _attributes(fn)
    return len(current) == len(known) and all(
        name == known_name and value is known_value
        for (name, value), (known_name, known_value) in zip(current, known, strict=True)
    )


def _attribute_reader(name: str) -> Callable[[types.FunctionType], Any]:
    return lambda fn: fn.__dict__.get(name)


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
    whole_modules: bool = True,
) -> None:
    """Resolve one reference of ``fn``: record what it counts as in ``refs`` under its label
    (the names followed), and how to check it again in ``node``. A user module the reference
    ends at is a value the code may read any name of (`getattr(module, name)`, `vars(module)`):
    with ``whole_modules``, every name in it counts too."""
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
        if not (issubclass(type(current), types.ModuleType) and _is_user_module(current)):
            break
        modules.append(weakref.ref(current))
        found = getattr(current, attr, _MISSING)
        if found is _MISSING and ref[0] == "import":
            # A submodule the body imports (`from . import helpers`), which its package does
            # not import: imported now, as the call would, so its code counts from the first.
            _import_if_user(f"{current.__name__}.{attr}")
            found = getattr(current, attr, _MISSING)
        current = found
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
            node.live.append((ref[1], _live_reader(part, _global_reader(ref[1]))))
    else:
        node.paths.append((followed, tuple(modules), check))
        node.imported.append((label, part))
        if _is_live(part):
            reader = _live_reader(part, _path_reader(followed))
            node.live.append((".".join(label[1:] if ref[0] == "import" else label), reader))
    refs[label] = part
    if whole_modules and _is_user_module_value(current):
        namespace = dict(vars(current))  # one snapshot, even if another thread edits it
        node.namespaces.append((weakref.ref(current), len(namespace)))
        for name in _read_names(namespace):
            member = (*followed[:-1], (*followed[-1], name))
            # A submodule (`getattr(pkg, name).f`) is read as a value too, once per node (two
            # modules may import each other).
            value = namespace[name]
            nested = _is_user_module_value(value) and not any(
                seen() is value for seen, _ in node.namespaces
            )
            _function_reference(fn, member, node, refs, children, whole_modules=nested)


def _class_node(cls: type) -> tuple[_ClassNode, list[object]]:
    node = _ClassNode(cls)
    children: list[object] = []
    try:
        members = []
        namespace = tuple(vars(cls).items())  # one snapshot, even if another thread edits it
        node.size = len(namespace)
        for name, value in namespace:
            if name in _SKIPPED_CLASS_KEYS or (name == "__hash__" and _attrs_hash(value)):
                continue
            part, check = _ref(value, children)
            if _is_user_module_part(part):  # `library = strategy_module`: what it holds
                part = ("live", part[1])
            elif _is_live(part) and name.startswith("__") and name.endswith("__"):
                part, check = _made_with_class(name, value)
            node.add_member(name, check)
            if _is_live(part):
                reader = _live_reader(part, _member_reader(name))
                node.live.append((f"{cls.__qualname__}.{name}", reader))
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


def _attrs_hash(value: object) -> bool:
    """Whether ``value`` is the ``__hash__`` attrs writes for a frozen class: its code holds
    ``hash()`` of a string, which differs in every process (PYTHONHASHSEED), and the fields it
    hashes count as the class's own."""
    return type(value) is types.FunctionType and value.__code__.co_filename.startswith(
        "<attrs generated"
    )


def _made_with_class(name: str, value: object) -> tuple[Any, Check]:
    """A mutable dunder member: by its content as the class is met, and again whenever it is
    replaced, not at each call. Libraries keep what a class's body says in them (pydantic's
    ``__pydantic_fields__``, with the defaults, and its schema, which takes 6 ms to hash), so a
    default edited in the file counts; `_BY_TYPE_CLASS_KEYS` count by type."""
    if name not in _BY_TYPE_CLASS_KEYS:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return ("made", _qualified(type(value)), fingerprint(value)), _same(value)
        except Exception as exc:
            _log.debug("afml_cache: code fingerprint counts %s by type: %r", name, exc)
    return ("object", _qualified(type(value))), _same(value)


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


def _walk(roots: list[object], visited: list[tuple[object, Any]] | None = None) -> Walked:
    """The digests of every function and class reachable from ``roots``, each once, depth
    first, and the values among what they refer to that count by content; each object reached
    and its node appended to ``visited``, if given."""
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
        if visited is not None:
            visited.append((obj, node))
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


def _current(live: Found) -> LiveValues:
    """The values that count by content, as they are now, each with the name it is read by."""
    values = []
    for entries, owner in live:
        for label, read in entries:
            try:
                value = read(owner)
            except Exception as exc:  # rebound or deleted by another thread since the walk
                raise FingerprintError(f"cannot read {label}: {exc!r}") from None
            values.append((label, value))
    return tuple(values)


def _live_reader(part: Any, reader: Callable[[Any], Any]) -> Callable[[Any], Any]:
    """``reader``, giving the value as `_view` shows it when its part says it must be (a
    partial, or a container of partials binding a connection), or as `_lenient` does (a
    container or object holding one that has no fingerprint); else as it is, at no cost."""
    view = part[2:3]
    if view == ("viewed",):
        return lambda owner: _view(reader(owner))
    if view == ("lenient",):
        held = part[3]  # values._Paths
        return lambda owner: held.view(_view(reader(owner)))
    if view == ("proxy",):
        return lambda owner: _proxy_view(reader(owner))
    return reader


def _itself(value: Any) -> Any:
    return value


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


def class_code(cls: type) -> str:
    """The code fingerprint of a class, as an instance's fingerprint counts it: the digests of
    its walk, combined as `code_state` combines them, and the values it reads that count by
    content as they are now (a class attribute ``params = {"w": 2}`` its methods read; not an
    Enum's members, which count by themselves); without `code_fingerprint`'s wrapping of a
    non-function, a third of the cost, paid once per instance (once per class inside
    `reading_classes`). Raises `FingerprintError` when such a value has no fingerprint."""
    reading = _classes_read.__dict__
    memo = reading.get("memo")
    # By id (a metaclass may make its classes unhashable); the memo holds the class, so its id
    # stays its own while the block lasts.
    key = id(cls)
    if memo is not None and key in memo:
        return memo[key][1]
    busy = reading.setdefault("busy", set())
    if key in busy:  # its values hold its own instances (a registry of them): by name there
        return fingerprint((_FORMAT, "class being read", _qualified(cls)))
    busy.add(key)
    try:
        try:
            digests, live, _ = _walk([cls])
        except Exception as exc:
            _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(cls), exc)
            return fingerprint((_FORMAT, "unknown", _qualified(cls)))
        code = _combine(digests)
        live = _without_enum_tables(live)
        if live:
            code = fingerprint((code, _current(live)))
    finally:
        busy.discard(key)
    if memo is not None:
        memo[key] = (cls, code)
    return code


def _without_enum_tables(live: Found) -> Found:
    """``live`` without an Enum's members and its tables of them (``_member_map_``...): the
    members count by themselves (`_with_code`). What its methods read, and its other class
    attributes, stay."""
    kept: Found = []
    for entries, owner in live:
        if isinstance(owner, enum.EnumMeta):
            members = owner.__members__
            entries = [
                (label, read)
                for label, read in entries
                if not _is_enum_own(label.rpartition(".")[2], members)
            ]
        if entries:
            kept.append((entries, owner))
    return kept


def _is_enum_own(name: str, members: Any) -> bool:
    sunder = len(name) > 2 and name[0] == name[-1] == "_" and name[1] != "_" and name[-2] != "_"
    return sunder or name in members


_classes_read = threading.local()  # the classes `class_code` is reading, and its memo


class reading_classes:
    """Within the block, each class's `class_code` is read once (a key holding many instances
    of a class, or a list of a class's registered instances, reads its values once). A class,
    not a generator: a key pays a fifth of the microsecond a generator's block costs."""

    __slots__ = ("_outer",)

    def __enter__(self) -> None:
        reading = _classes_read.__dict__
        self._outer = reading.get("memo") is None
        if self._outer:
            reading["memo"] = {}

    def __exit__(self, *_: object) -> None:
        if self._outer:
            _classes_read.__dict__["memo"] = None


def code_state(obj: types.FunctionType | type) -> tuple[str, tuple[tuple[str, Any], ...]]:
    """The code fingerprint of a function or user class, and the values it reads that count by
    their content at this moment (mutable globals, closure cells, class attributes, defaults),
    each as ``(name, value)``: a key holds both.

    Raises `FingerprintError` when a value cannot be read (a race with another thread), or
    when the code cannot be read at all (the caller then runs it uncached).
    """
    try:
        if type(obj) is types.FunctionType or isinstance(obj, type):
            digests, live, _ = _walk([obj])
            return _combine(digests), _current(live) if live else ()
        # A proxy that passes for a function (wrapt's): by what it wraps and calls, and, when
        # that holds state (a wrapper bound to an object), by that state at each call.
        children: list[object] = []
        head, _ = _ref(obj, children)
        digests, live, _ = _walk(children)
        code = fingerprint((_FORMAT, "object", _digest((head,), obj), _combine(digests)))
        current = _current(live) if live else ()
        if _is_live(head):
            current = (*current, ("the decorated proxy", _live_reader(head, _itself)(obj)))
        return code, current
    except FingerprintError:
        raise
    except Exception as exc:
        raise FingerprintError(f"its code could not be read ({exc!r})") from exc


def lone_code_state(
    fn: types.FunctionType,
) -> tuple[str, Callable[[types.FunctionType], object], Callable[[], LiveValues] | None] | None:
    """For a function whose walk ends at its own node (it reaches no other user function or
    class, as most small functions do): its code fingerprint, its node's check, ``check(fn)``,
    None once that fingerprint no longer holds, and what reads the values that count by content
    (None when there are none). While the check passes, ``code_state(fn)`` is the fingerprint
    and what that reads: a caller that asks on every call spares the walk. None for other
    functions."""
    if type(fn) is not types.FunctionType:  # a proxy hashes and compares as what it wraps
        return None
    node = _nodes.get(fn)
    if not isinstance(node, _FunctionNode) or node.children or node.current_children(fn) is None:
        return None
    reads = functools.partial(_current, [(node.live, fn)]) if node.live else None
    return _combine((node.digest,)), node.current_children, reads


def imported_code(fn: types.FunctionType) -> str:
    """The digest of what ``fn``'s code reaches in modules a process imports by name, rather
    than receives with a function sent by value (cloudpickle sends ``__main__``'s): the code of
    their functions and classes, and what the functions sent by value read from them
    (``helpers.SCALE``). A worker whose copies of those modules differ from its parent's (one
    edited and reloaded there, an attribute set) computes other results than the parent's code
    fingerprint says, so it must not take that fingerprint for its own."""
    visited: list[tuple[object, Any]] = []
    _walk([fn], visited)
    parts = []
    for obj, node in visited:
        if _imported_by_name(obj):
            parts.append((_qualified(obj), node.digest))
        elif isinstance(node, _FunctionNode) and node.imported:
            parts.append((_qualified(obj), tuple(node.imported)))
    return fingerprint(("afml-cache imported code", tuple(parts)))


def _imported_by_name(obj: object) -> bool:
    """Whether a function or class lives in a module a worker imports by name (a file of the
    user's project), not in ``__main__`` or a module made at run time."""
    name = (
        _defining_module(obj)
        if type(obj) is types.FunctionType
        else getattr(obj, "__module__", None)
    )
    if not isinstance(name, str) or name == "__main__":
        return False
    module = sys.modules.get(name)
    return module is not None and isinstance(getattr(module, "__file__", None), str)


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
        library = fingerprint(_library_callable(fn, children, now=True), strict=True)
        digests, live, readable = _walk(children)
        digests = (library, *digests)
    if not readable:
        raise FingerprintError(
            f"the code of {module}.{fn.__qualname__} reaches objects that cannot be read, so it "
            "cannot be told apart from other functions; pass a function of your own code, or "
            "list the argument in ignore="
        )
    key = (module, _combine(digests), _current(live))
    # A name set after the function was made (`stat.__name__ = "pnl"`), which code reads
    # (pandas labels an aggregate by it); the code's own name is in its fingerprint.
    return key if fn.__name__ == fn.__code__.co_name else (*key, fn.__name__)


_library_types: set[type] = set()  # argument types known not to be the user's own classes


_modules_read = threading.local()  # ids of the modules `module_content` is reading


def module_content(module: types.ModuleType) -> dict[str, Any]:
    """What a module of the user's code counts as where a value holds it (an argument, a
    registry's item, a class attribute: ``REGISTRY = {"mom": strategies.momentum}``): each
    name in it that code may read, as a function reaching it would count it (functions and
    classes by their code and the values they read, other modules likewise, values by
    content, objects without a fingerprint by type). A module met again inside itself (two
    modules importing each other) counts by name there."""
    reading = _modules_read.__dict__.setdefault("ids", set())
    if id(module) in reading:
        return {"module being read": module.__name__}
    reading.add(id(module))
    try:
        namespace = dict(vars(module))  # one snapshot, even if another thread edits it
        return {name: _member(namespace[name]) for name in _read_names(namespace)}
    finally:
        reading.discard(id(module))


def _member(value: object) -> Any:
    if type(value) is types.FunctionType:
        return ("function", function_key(value))
    if isinstance(value, type):
        return ("class", _qualified(value), type_code(value))
    if isinstance(value, types.ModuleType):
        # A submodule (`pkg.sub`) is reached through the held module (`held.sub.f(x)`): what it
        # holds counts too (`module_content` guards against modules importing each other).
        if _is_user_module(value):
            return ("module", value.__name__, module_content(value))
        return ("library", value.__name__, _version_of(value.__name__))
    return _bound_item(value)


def type_code(cls: type) -> str | None:
    """The code fingerprint of a class of the user's own (`class_code`) that a value holds as
    itself, wherever in the value (``{"sma": SmaCross}``, a ``Backtest`` holding its strategy);
    None for a library's class, which counts by its name."""
    try:
        if cls in _library_types:
            return None
        if not _is_user_class(cls):
            _library_types.add(cls)
            return None
    except TypeError:  # a metaclass whose instances cannot be hashed: not a library's
        pass
    return class_code(cls)


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
