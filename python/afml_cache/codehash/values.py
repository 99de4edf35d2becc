"""How a value a function refers to counts in its code fingerprint: by value, by content at
each call (*live*), by type, by name and version, or walked in turn; and how each is checked
again on a later call."""

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
import inspect
import itertools
import logging
import os
import pathlib
import random
import sys
import types
import uuid
import warnings
import weakref
import zoneinfo
from collections.abc import Callable
from typing import Any, Final

from afml_cache._core import fingerprint
from afml_cache.codehash.bytecode import _WRITES, _WRITTEN_TYPES, _changes, _code_objects
from afml_cache.codehash.scope import (
    _class_functions,
    _defining_module,
    _is_own_package,
    _is_user_class,
    _is_user_function,
    _is_user_module,
    _module_of,
    _qualified,
    _version_of,
)
from afml_cache.errors import FingerprintError

_log = logging.getLogger("afml_cache")


_MISSING: Final = object()  # a name that resolves to nothing
_EMPTY_CELL: Final = object()  # a closure cell not filled yet

_ATOMS: Final = (int, float, complex, str, bytes)
_KEY_WRAPPER: Final = type(functools.cmp_to_key(lambda a, b: 0))

# How a reference is checked again on a later call: the object it resolves to must be the
# expected one (`_SAME`), or of the expected type (`_TYPE`), or wrap the same functions (`_PARTS`,
# for staticmethod/classmethod/property, which cannot be weakly referenced), or be the same
# single-dispatch function with the same implementations registered (`_REGISTRY`).
_SAME: Final = 0
_TYPE: Final = 1
_PARTS: Final = 2
_REGISTRY: Final = 3

Getter = Callable[[], Any]
Check = tuple[int, Any]

# --- values ---------------------------------------------------------------------------------------


def _is_constant(value: object) -> bool:
    """Immutable values that count by value: numbers, strings, bytes, None, and tuples and
    frozensets of them."""
    if value is None:
        return True
    if isinstance(value, _ATOMS) and not isinstance(value, enum.Enum):
        return _adds_no_state(value, _ATOMS)
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


def _adds_no_state(value: object, bases: tuple[type, ...]) -> bool:
    """Whether ``value`` holds no more than the immutable type it derives from: an instance
    of a subclass with a ``__dict__`` or slots of its own changes in place (``ES =
    Symbol("ES")``, then ``ES.multiplier = 20``). pandas' own scalars keep a ``__dict__`` they
    never fill."""
    cls = type(value)
    if cls in bases:
        return True
    if hasattr(value, "__dict__"):
        return cls.__module__.partition(".")[0] == "pandas"
    for klass in cls.__mro__:
        if klass in bases:
            return True
        if vars(klass).get("__slots__"):
            return False
    return True


def cached_properties(cls: type) -> set[str]:
    """The names of the ``functools.cached_property`` attributes of ``cls`` and its bases."""
    return {
        name
        for klass in cls.__mro__
        for name, attribute in vars(klass).items()
        if isinstance(attribute, functools.cached_property)
    }


def _holds_only_filled_fields(value: object, fields: tuple[Any, ...]) -> bool:
    """Whether a frozen dataclass's ``__dict__`` holds its fields and its cached properties,
    each filled (made from the fields once, when first read), and nothing else. One still to
    be filled may hold a list the program then changes: until then the instance counts at each
    call (a call that fills one is then a miss once)."""
    held = getattr(value, "__dict__", {})
    cached = cached_properties(type(value))
    return held.keys() <= {f.name for f in fields} | cached and cached <= held.keys()


def _is_frozen(value: object) -> bool:
    """Values that cannot change in place and hold nothing that can: constants, dates and
    times, numpy scalars, frozen dataclasses and namedtuples of such values."""
    if _is_constant(value):
        return True
    if isinstance(value, _FROZEN_TYPES):
        return _adds_no_state(value, _FROZEN_TYPES)
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
        # Frozen as declared on its own class: a plain subclass of a frozen dataclass takes new
        # attributes, and any instance may hold some beside its fields (`__post_init__`).
        params = vars(type(value)).get("__dataclass_params__")
        fields = dataclasses.fields(value)
        return (
            bool(getattr(params, "frozen", False))
            and _holds_only_filled_fields(value, fields)
            and all(_is_frozen(getattr(value, f.name)) for f in fields)
            and all(_is_frozen(item) for item in getattr(value, "__dict__", {}).values())
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
    if mode == _REGISTRY:
        function, registered = expected
        if function() is not current:
            return False
        # A singledispatchmethod keeps its registry in its dispatcher.
        registry = getattr(current, "dispatcher", current).registry  # type: ignore[attr-defined]
        return len(registry) == len(registered) and all(
            registry.get(cls) is implementation for cls, implementation in registered
        )
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
        if _is_user_class(type(obj)):
            # An instance of the user's class holds settings (an `AttrDict` whose __getattr__
            # raises KeyError): by its content at each call; with none, the call runs uncached.
            _log.debug("afml_cache: code fingerprint counts %s by content: %r", type(obj), exc)
            return _live(obj), _same(obj)
        # A library's object that refuses questions (an unbound `flask.request`): by name.
        _log.debug("afml_cache: code fingerprint counts %s by name: %r", _qualified(obj), exc)
        return ("unknown", _qualified(obj)), _same(obj)


def _live(obj: object, view: str | None = None) -> Any:
    """The part of a value that counts by content at each call; ``view``: read as `_view`
    ("viewed") or `_lenient` ("lenient") shows it (walk.py, `_live_reader`)."""
    return ("live", _qualified(type(obj)), view) if view else ("live", _qualified(type(obj)))


def _is_live(part: Any) -> bool:
    return type(part) is tuple and bool(part) and part[0] == "live"


def _is_user_module_part(part: Any) -> bool:
    """Whether a part is a module of the user's code, which a value holding it (a tuple, a
    class attribute) counts by what it holds (`codehash.module_content`)."""
    return type(part) is tuple and bool(part) and part[0] == "module"


def _classify(obj: object, children: list[object]) -> tuple[Any, Check]:
    if obj is _MISSING or obj is _EMPTY_CELL:
        return ("missing",), (_SAME, _held(obj))
    if _is_constant(obj):
        return ("const", obj), (_SAME, _held(obj))
    if obj is os.environ or obj is getattr(os, "environb", None):
        # The variables a function reads count where it reads them (walk.py), not all of them.
        return ("environment",), _same(obj)
    cls = type(obj)
    if isinstance(obj, types.FunctionType):
        if cls is not types.FunctionType:  # a proxy that passes for a function
            return _proxy_form(obj, children), _same(obj)
        if _is_user_function(obj):
            children.append(obj)
            return ("function", obj.__qualname__), _same(obj)
        if isinstance(getattr(obj, "registry", None), types.MappingProxyType):
            return _single_dispatch(obj, children)
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
            # Reached by name, its names count one by one (walk.py, `_function_reference`);
            # held in a tuple or a class attribute, by what it holds at each call (`_held`).
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
    if isinstance(obj, functools.cached_property):
        function, _ = _ref(obj.func, children)
        return ("cached_property", function), (_PARTS, (cls, (("func", _same(obj.func)[1]),)))
    if isinstance(obj, functools.partial):
        # Its keywords are a dict that can change in place, even when empty now
        # (`SCALE.keywords["w"] = 3`): a partial a name holds counts by what it binds at each
        # call; a connection among that (`partial(query, conn=CONN)`) by type, as a global
        # holding it (walk.py, `_partial_view`).
        _ref(obj.func, children)
        return _live(obj, "viewed"), _same(obj)
    if isinstance(obj, functools.partialmethod):
        return _bound_form(obj, children), _same(obj)
    if isinstance(obj, functools.singledispatchmethod):  # a class's `@go.register def _(...)`s
        dispatcher = obj.dispatcher
        part, _ = _single_dispatch(dispatcher, children)  # type: ignore[arg-type]
        registered = tuple(dispatcher.registry.items())
        return ("singledispatchmethod", part), (_REGISTRY, (_same(obj)[1], registered))
    np = sys.modules.get("numpy")
    if _foreign_ufunc(obj, np):
        # Another library's ufunc by the module exposing it; one made in the user's code
        # (numba's vectorize), whose code it does not show, by its rule at each call, which
        # refuses it (`fingerprinting._ufunc_rule`): such a call runs uncached.
        from afml_cache.fingerprinting import _ufunc_home

        home = _ufunc_home(obj)
        if home is None:
            return _live(obj), _same(obj)
        return ("ufunc", *home), _same(obj)
    if np is not None and isinstance(obj, np.vectorize):
        # Its function and the options that shape its results (it has no __wrapped__).
        function, _ = _ref(obj.pyfunc, children)
        options = (obj.otypes, tuple(sorted(obj.excluded, key=str)), obj.signature, obj.cache)
        return ("vectorize", function, options), _same(obj)
    if isinstance(obj, enum.Enum):
        owner, _ = _ref(cls, children)
        value = obj.value if _is_constant(obj.value) else _ref(obj.value, children)[0]
        if _is_live(value):  # `Profile.FAST.value["window"] = 7` changes what it reads
            return _live(obj), _same(obj)
        return ("enum", owner, obj.name, value), _same(obj)
    if cls is _KEY_WRAPPER:  # functools.cmp_to_key(compare): what the comparison is
        compare = next(r for r in gc.get_referents(obj) if r is not cls)
        part, _ = _ref(compare, children)
        if _is_live(part):
            return _live(obj), _same(obj)
        return ("cmp_to_key", part), _same(obj)
    # `GET = PARAMS.get`, `SCALE = W.__mul__`: a builtin method (or slot wrapper) of a container
    # reads what the container holds. One
    # that only writes to it (`record = LOG.append`) reads nothing, as `LOG.append(x)` does not
    # (walk.py, `_unless_written_only`); the global generators' draws count where they are read
    # (walk.py, `_random_draws`).
    is_method = isinstance(obj, types.BuiltinMethodType | types.MethodWrapperType)
    owner = obj.__self__ if is_method else None  # type: ignore[union-attr]
    if (
        is_method
        and owner is not None
        and not isinstance(owner, types.ModuleType)
        and not (obj.__name__ in _WRITES and type(owner) in _WRITTEN_TYPES)
        and not is_random_generator(owner)
        and _is_live(_ref(owner, children)[0])
    ):
        return _live(obj), _same(obj)
    if cls is tuple:  # a tuple of helpers (`STEPS = (clip, zscore)`): each by what it is
        items = tuple(_ref(item, children)[0] for item in obj)  # type: ignore[attr-defined]
        if any(_is_live(item) or _is_user_module_part(item) for item in items):
            return _live(obj, "viewed" if _view(obj) is not obj else None), _same(obj)
        return ("tuple", items), _same(obj)
    if _is_user_class(cls):
        children.append(cls)
    elif callable(obj) and isinstance(getattr(obj, "__name__", None), str):
        return _library_callable(obj, children), _same(obj)
    return _by_content(obj)


def _proxy_form(obj: Any, children: list[object]) -> Any:
    """A proxy that passes for the function it wraps (wrapt's ``FunctionWrapper``, under
    ``@deprecated`` and many tracing or retrying decorators): by that function, the wrapper
    function it calls first and the instance it is bound to, each by what it is."""
    module = _module_of(type(obj))
    # A test's Mock(spec=fn) wraps nothing: by content, or, with none, the call runs uncached.
    if getattr(obj, "__wrapped__", None) is None:
        return _live(obj)
    parts = tuple(_ref(getattr(obj, name, None), children)[0] for name in _PROXY_PARTS)
    if any(_is_live(part) for part in parts):  # a wrapper bound to an object with state
        return _live(obj, "proxy")
    return ("proxy", _qualified(type(obj)), _version_of(module), parts)


_PROXY_PARTS: Final = ("__wrapped__", "_self_wrapper", "_self_instance")


def _proxy_view(obj: object) -> Any:
    """A proxy whose wrapper holds state, as it counts at each call: what `_proxy_form` reads,
    each by content (`_lenient`)."""
    parts = [getattr(obj, name, None) for name in _PROXY_PARTS]
    shown = [lenient_now(part) for part in parts]
    return ("proxy", _qualified(type(obj)), *shown)


def _held_part(value: object, found: list[object]) -> Any:
    if type(value) is functools.partial:  # its own function and arguments, as it holds them
        return _bound_form(value, found)
    return _ref(value, found)[0]


def _bound_form(obj: Any, children: list[object]) -> Any:
    """A partial method, or a partial a library's callable holds (``toolz.curry``): by its
    function and what it binds, or by content at each call when that can change."""
    function, _ = _ref(obj.func, children)
    args = tuple(_ref(a, children)[0] for a in obj.args)
    keywords = tuple((k, _ref(v, children)[0]) for k, v in sorted(obj.keywords.items()))
    if keywords or any(_is_live(p) for p in (function, *args)):
        return _live(obj)
    return (type(obj).__name__, function, args, keywords)


def _view(value: object) -> Any:
    """A live value as it is fingerprinted: a partial by `_partial_view`, also inside tuples,
    lists and dicts (`STEPS = [partial(query, conn=CONN)]`, `{"load": (partial(...),)}`);
    anything else as it is."""
    if type(value) is functools.partial:
        return _partial_view(value)
    if not _holds_partial(value, _VIEWED_DEPTH):
        return value
    if type(value) is dict:
        return {key: _view(item) for key, item in value.items()}
    return type(value)(map(_view, value))  # type: ignore[call-arg]


def _holds_partial(value: object, depth: int) -> bool:
    """Whether a tuple, list or dict of at most `_VIEWED_ITEMS` items holds a partial, within
    ``depth`` levels (a pipeline's steps, not a scan of a long list of numbers)."""
    cls = type(value)
    if cls is functools.partial:
        return True
    if depth == 0 or cls not in (tuple, list, dict) or len(value) > _VIEWED_ITEMS:  # type: ignore[arg-type]
        return False
    items = value.values() if cls is dict else value  # type: ignore[attr-defined]
    return any(_holds_partial(item, depth - 1) for item in items)  # type: ignore[attr-defined]


_VIEWED_DEPTH: Final = 3
_VIEWED_ITEMS: Final = 256
_LENIENT_DEPTH: Final = 8
_LENIENT_PATHS: Final = 4096


def _partial_view(partial: functools.partial[Any]) -> tuple[Any, ...]:
    """A partial's function and the arguments it binds, each by its fingerprint, or by type if
    it has none (a connection: `partial(query, conn=CONN)`, counted as a global holding it)."""
    return (
        "partial",
        partial.func,
        tuple(map(_bound_item, partial.args)),
        {name: _bound_item(value) for name, value in partial.keywords.items()},
    )


def _bound_item(value: object) -> Any:
    """A value by its fingerprint (its pickle reduction, without a warning, if it has no rule),
    or by its type if it has none at all (a connection)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return ("value", fingerprint(value))
    except FingerprintError:
        return ("object", _qualified(type(value)))


def _by_content(obj: object) -> tuple[Any, Check]:
    """A value: by value, computed once, if it cannot change; by its content at each call if it
    has a fingerprint, or else a pickle reduction (an instance of a plain class, whose state
    may decide the result); by its type's qualified name if it has neither (a lock, an open
    connection)."""
    shown = _view(obj)  # a tuple or dict of partials: what they bind
    view = "viewed" if shown is not obj else None
    try:
        digest = fingerprint(shown, strict=True)
    except FingerprintError:
        if _fingerprints(shown):
            return _live(obj, view), _of_type(obj)
        try:
            leaves = _unreadable_paths(shown)
        except _TooMuch:  # its content cannot all be read: at each call, it has no fingerprint
            return _live(obj, view), _of_type(obj)
        if leaves is None:  # its type is all there is
            return ("object", _qualified(type(obj))), _of_type(obj)
        # A settings dict or object holding a lock or an engine: what else it holds counts.
        return (*_live(obj, "lenient"), _Paths(leaves)), _of_type(obj)
    if _is_frozen(obj):
        return ("value", _qualified(type(obj)), digest), _same(obj)
    return _live(obj, view), _of_type(obj)


def _fingerprints(value: object) -> bool:
    """Whether ``value`` has a fingerprint, its pickle reduction's included (said elsewhere)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fingerprint(value)
    except FingerprintError:
        return False
    return True


# Where an object without a fingerprint sits in a value (keys, positions, attribute names), and
# its type then, or, for one met again inside itself, `_Again`.
Leaf = tuple[tuple[Any, ...], Any]


class _Again:
    """An object met again inside itself (its parts point back to it), there: its content counts
    where it was first met."""

    __slots__ = ("held",)

    def __init__(self, held: object) -> None:
        self.held = held


class _TooMuch(Exception):
    """A value holds objects without a fingerprint deeper or more of them than are looked for."""


def _unreadable_paths(value: object) -> tuple[Leaf, ...] | None:
    """Where in ``value`` the objects that neither have a fingerprint nor pickle sit (a lock,
    an engine, a pool beside the settings of ``CONFIG = {"window": 3, "lock": ...}``), through
    dicts, lists, tuples and instances of the user's classes, found once when the code is
    walked; None when the value itself is such an object. One met again inside itself (an
    object its parts point back to) is such an object there. Raises `_TooMuch` past
    `_LENIENT_DEPTH` levels or `_LENIENT_PATHS` such objects: counting the rest by type would
    hide a change in it."""
    found: list[Leaf] = []
    seen: set[int] = set()

    def search(item: object, where: tuple[Any, ...], depth: int) -> None:
        steps = None if id(item) in seen else _steps(item)
        if steps is None:
            found.append((where, _Again(item) if id(item) in seen else type(item)))
            if len(found) > _LENIENT_PATHS:
                raise _TooMuch(f"more than {_LENIENT_PATHS} objects without a fingerprint")
            return
        if depth == 0:
            raise _TooMuch(f"objects without a fingerprint deeper than {_LENIENT_DEPTH} levels")
        seen.add(id(item))
        try:
            for step, part in steps:
                if not _fingerprints(part):
                    search(part, (*where, step), depth - 1)
        finally:
            seen.discard(id(item))

    search(value, (), _LENIENT_DEPTH)
    if found and found[0][0] == ():
        return None
    return tuple(found)


def _steps(value: object) -> list[tuple[Any, Any]] | None:
    """``(step, part)`` of what a dict, list, tuple or user instance holds; None for others (a
    library's object, an engine whose pool's counters change with use, counts by its type)."""
    cls = type(value)
    if isinstance(value, dict):  # an OrderedDict, a defaultdict, a user's dict subclass too
        items = [(("key", key), item) for key, item in value.items()]
        return items + [(("attr", n), item) for n, item in _mapping_attributes(value).items()]
    if cls is list or isinstance(value, tuple):  # a named tuple too
        return [(("item", i), item) for i, item in enumerate(tuple.__iter__(value))]  # type: ignore[arg-type]
    state = _attributes(value) if _is_user_class(cls) or cls is types.SimpleNamespace else None
    if state is not None:
        return [(("attr", name), item) for name, item in state.items()]
    return None


def _mapping_attributes(value: dict[Any, Any]) -> dict[str, Any]:
    """A dict subclass's attributes beside its items, a defaultdict's factory among them; none
    for a plain dict."""
    if type(value) is dict:
        return {}
    held = _attributes(value) or {}
    if isinstance(value, collections.defaultdict):
        held["default_factory"] = value.default_factory
    return held


def _attributes(value: object) -> dict[str, Any] | None:
    """An instance's attributes: its ``__dict__`` and its slots, over its classes (a slotted
    dataclass's fields too), read as stored, without running its ``__getattr__`` (an
    ``AttrDict``'s raises KeyError, a ``DotMap``'s adds the key) or a property; None for an
    object with neither."""
    try:
        state = object.__getattribute__(value, "__dict__")
    except Exception:  # slotted, or a C type's
        state = None
    held = dict(state) if type(state) is dict else None
    for owner in type(value).__mro__:
        slots = owner.__dict__.get("__slots__", ())
        for name in (slots,) if isinstance(slots, str) else slots:
            if name.startswith("__") and not name.endswith("__"):
                name = f"_{owner.__name__.lstrip('_')}{name}"  # a private slot's mangled name
            descriptor = owner.__dict__.get(name)
            if name in ("__dict__", "__weakref__") or not hasattr(descriptor, "__get__"):
                continue
            held = {} if held is None else held
            try:
                held.setdefault(name, descriptor.__get__(value, owner))
            except AttributeError:  # not set
                continue
    return held


def _lenient(value: object, leaves: tuple[Leaf, ...]) -> Any:
    """``value`` as it counts at each call (`_unreadable_paths`): what it holds by content, the
    objects at ``leaves`` by their type, a user instance as its type and attributes. Costs a
    copy of the containers on those paths; `_SHAPE_CHANGED` for a value no longer shaped as
    they say."""
    cls = type(value)
    if len(leaves) == 1 and leaves[0][0] == ():
        # What sits there now: as it was, by its type, not tried again (6 µs a lock); another
        # object by content if it has a fingerprint (a lock replaced by settings, a parent
        # pointed elsewhere).
        was = leaves[0][1]
        same = value is was.held if isinstance(was, _Again) else cls is was
        if same or not _fingerprints(value):
            return ("object", _qualified(cls))
        return value
    if not leaves:
        return value
    below: dict[Any, list[Leaf]] = {}
    for path, leaf in leaves:
        if not path:
            return _SHAPE_CHANGED
        below.setdefault(path[0], []).append((path[1:], leaf))
    attributes = None
    if isinstance(value, dict):
        shown: Any = dict(value)
        attributes = _mapping_attributes(value)
    elif cls is list or isinstance(value, tuple):
        shown = list(value) if cls is list else list(tuple.__iter__(value))  # type: ignore[call-overload,arg-type]
    elif (attributes := _attributes(value)) is not None:
        shown = attributes
    else:
        return _SHAPE_CHANGED
    mapping = isinstance(value, dict)
    for (kind, where), inner in below.items():
        target = attributes if mapping and kind == "attr" else shown
        reachable = where < len(target) if kind == "item" else where in target  # type: ignore[arg-type,operator]
        if not reachable:
            return _SHAPE_CHANGED
        target[where] = _lenient(target[where], tuple(inner))  # type: ignore[index]
        if target[where] is _SHAPE_CHANGED:  # type: ignore[index]
            return _SHAPE_CHANGED
    if cls is tuple:
        return tuple(shown)
    if cls is dict or cls is list:
        return shown
    if isinstance(value, tuple):
        return ("tuple", _qualified(cls), shown)
    if mapping:
        return ("mapping", _qualified(cls), shown, attributes)
    return ("instance", _qualified(cls), shown)


def lenient_now(value: object) -> Any:
    """``value`` as `_lenient` shows it, its objects without a fingerprint found now; as it is if
    it has a fingerprint; an object without one (the call runs uncached) if it holds too many."""
    if _fingerprints(value):
        return value
    try:
        leaves = _unreadable_paths(value)
    except _TooMuch as exc:
        return _Unreadable(str(exc))
    return ("object", _qualified(type(value))) if leaves is None else _lenient(value, leaves)


class _Paths:
    """`_unreadable_paths` held in a code part: the value counts by content at each call, so
    the digest of the code needs none of the keys on them (which may have no fingerprint).
    Found again when the value no longer has that shape (rebound, or a key added)."""

    __slots__ = ("leaves",)

    def __init__(self, leaves: tuple[Leaf, ...]) -> None:
        self.leaves = leaves

    def __cache_key__(self) -> str:
        return "paths to objects without a fingerprint"

    def view(self, value: object) -> Any:
        """``value`` as it counts at this call (`_lenient`)."""
        shown = _lenient(value, self.leaves)
        if shown is not _SHAPE_CHANGED:
            return shown
        try:
            leaves = _unreadable_paths(value)
        except _TooMuch as exc:
            return _Unreadable(str(exc))
        if leaves is None:
            return ("object", _qualified(type(value)))
        self.leaves = leaves  # one tuple replaced whole: safe from several threads
        return _lenient(value, leaves)


class _Unreadable:
    """What `_lenient` shows of a value whose content cannot all be read (`_TooMuch`): it has
    no fingerprint, so the call runs uncached."""

    def __init__(self, why: str) -> None:
        self.why = why

    def __reduce__(self) -> Any:
        raise TypeError(f"it holds {self.why}")


class _ShapeChanged:
    """What `_lenient` returns for a value no longer shaped as its paths say."""


_SHAPE_CHANGED: Final = _ShapeChanged()


def _foreign_ufunc(obj: object, np: Any) -> bool:
    """Whether ``obj`` is a ufunc that is not numpy's own nor made by ``np.frompyfunc``."""
    return (
        np is not None
        and isinstance(obj, np.ufunc)
        and getattr(np, obj.__name__, None) is not obj
        and not obj.__name__.endswith(" (vectorized)")
    )


def _single_dispatch(obj: types.FunctionType, children: list[object]) -> tuple[Any, Check]:
    """A ``functools.singledispatch`` function: every implementation registered, by type (the
    function it wraps is the one for ``object``), checked again for one registered since."""
    registered = tuple(obj.registry.items())  # type: ignore[attr-defined]
    implementations = sorted(
        ((_qualified(cls), _ref(function, children)[0]) for cls, function in registered),
        key=lambda item: item[0],
    )
    part = ("singledispatch", _qualified(obj), tuple(implementations))
    return part, (_REGISTRY, (_same(obj)[1], registered))


def _library_callable(obj: object, children: list[object], *, now: bool = False) -> tuple[Any, ...]:
    """A function, class or callable of a library: by name and version, plus the user function
    it wraps, if any (a cached function, an ``lru_cache``), or, for a callable object, what it
    holds of the user's (`_held_parts`). A wrapper holding a container that can change in
    place (`_wrapper_closure`) counts by content at each call, as it is ``now`` when asked."""
    module = _module_of(obj)
    if module == "builtins":
        return ("builtin", getattr(obj, "__qualname__", None) or _qualified(obj))
    if isinstance(obj, types.FunctionType) and isinstance(
        getattr(obj, "registry", None), types.MappingProxyType
    ):  # a singledispatch function passed as a value: every implementation, as by name
        return _single_dispatch(obj, children)[0]  # type: ignore[no-any-return]
    inner = _wrapped_user_function(obj)
    if inner is None:
        held = _held_parts(obj, children)
        if held is None:
            return ("library", _qualified(obj), _version_of(module))
        if any(_is_live(part) for _, part in held):
            return _live(obj)
        return ("holding", _qualified(type(obj)), _version_of(module), held)
    children.append(inner)
    from afml_cache.fingerprinting import numba_options

    compiling = numba_options(obj)  # a numba dispatcher: how it compiles counts too
    if compiling is not None:
        return ("jitted", _qualified(type(obj)), compiling, ("function", inner.__qualname__))
    # A wrapper carries the wrapped function's names (functools.wraps): name it by its code.
    if isinstance(obj, types.FunctionType):
        module = _defining_module(obj)
        name = f"{module}.{obj.__code__.co_qualname}"
        # A cached function counts as the function it caches: its engine is no setting.
        held, changeable = (), False
        if not _is_own_package(module):
            held, changeable = _wrapper_closure(obj, inner, children)
        if changeable and not now:
            return _live(obj)  # read by `walk.function_key` at each call
        if held:  # wrappers that hold nothing else keep their digests
            return ("wrapped", name, _version_of(module), ("function", inner.__qualname__), held)
    else:
        module = type(obj).__module__
        name = _qualified(type(obj))
    return ("wrapped", name, _version_of(module), ("function", inner.__qualname__))


def _wrapper_closure(
    fn: types.FunctionType, inner: object, children: list[object]
) -> tuple[tuple[tuple[str, Any], ...], bool]:
    """What a library's wrapper function holds beside the function it wraps, as it is now: a
    decorator's arguments and its caller (``@decorator.decorator``), a context manager used as
    a decorator (a ``@contextmanager`` helper's function and arguments,
    ``@np.errstate(divide="ignore")``'s settings); and whether some of that can change in
    place (``@weighted(weights=W)``, then ``W.append(3)``). Any other object it holds counts
    by its type: a rate limiter's clock, a memo's contents or a timer's last reading are the
    wrapper's state, not settings, and change from call to call and process to process."""
    held = []
    changeable = False
    for name, cell in zip(fn.__code__.co_freevars, fn.__closure__ or (), strict=False):
        try:
            value = cell.cell_contents
        except ValueError:  # not filled yet
            continue
        if value is inner:
            continue
        if _is_constant(value) or isinstance(value, _CODE_TYPES):
            part = _ref(value, children)[0]  # an argument, the user's caller
            held.append((name, part))
            continue
        origin = _closure_origin(fn, name)
        if origin == "made" and _changes(fn.__code__, name):
            # What the decorator made and the wrapper changes as it runs (a memo, a call
            # count) is its state, not a setting: by type, or each call would read a new key.
            # What it was given stays the caller's, counted by content whatever the wrapper
            # does with it (puts it in order, fills in a default, appends and pops back): a
            # memo it was given makes each call a miss, with a warning, never a wrong hit.
            part = ("object", _qualified(type(value)))
        elif (
            origin == "packed"
            and type(value) in (dict, tuple)
            and _all_constant(value.values() if type(value) is dict else value, ())  # type: ignore[attr-defined]
        ):
            part = ("settings", _settings_digest(value))  # `**settings` of constants: its own
        elif type(value) in (dict, list, tuple, set, frozenset) or _is_array(value):
            part = ("settings", _settings_digest(value))  # `@weighted(weights=[1, 2])`
            changeable = True
        else:
            # Read without its content: a memo's or a limiter's state is not a setting.
            part, changes = _context_settings(value, children)
            changeable = changeable or changes
        held.append((name, part))
    return tuple(held), changeable


def _closure_origin(fn: types.FunctionType, name: str) -> str:
    """Where the value a wrapper's closure holds under ``name`` comes from, found by reading
    the decorator's code along the wrapper's qualified name: ``"given"``, an argument of the
    decorator (the caller's object: `@weighted(W)`); ``"packed"``, its ``*args`` or
    ``**kwargs`` (a container made for the call); ``"made"``, made by its own code (a memo:
    ``cache = {}``); ``"unknown"`` when that code cannot be found."""
    # Its code's names, not those functools.wraps copied from the function it wraps.
    module = sys.modules.get(_defining_module(fn) or "")
    names = [part for part in fn.__code__.co_qualname.split(".") if part != "<locals>"][:-1]
    chain: list[types.CodeType] = []
    current: Any = module
    try:
        for part in names:
            if chain:  # inside a function: its nested code of that name
                nested = [
                    c for c in chain[-1].co_consts if isinstance(c, types.CodeType)
                    and c.co_name == part
                ]  # fmt: skip
                if len(nested) != 1:
                    return "unknown"
                chain.append(nested[0])
                continue
            current = inspect.getattr_static(current, part)
            if isinstance(current, staticmethod | classmethod):
                current = current.__func__
            code = getattr(current, "__code__", None)
            if isinstance(code, types.CodeType):
                chain.append(code)
    except (AttributeError, TypeError):
        return "unknown"
    for code in reversed(chain):
        if name in code.co_cellvars:
            positional = code.co_argcount + code.co_kwonlyargcount
            if name in code.co_varnames[:positional]:
                return "given"
            flags = code.co_flags
            packed = bool(flags & inspect.CO_VARARGS) + bool(flags & inspect.CO_VARKEYWORDS)
            if name in code.co_varnames[positional : positional + packed]:
                return "packed"
            # Made only if every value it is bound to is new (`cache = {}`, `dict()`): one
            # bound to another name's (`w = self.weights`, `cfg = config or {}`) may be the
            # caller's.
            return "made" if _always_new(code, name) else "unknown"
    return "unknown"


def _always_new(code: types.CodeType, name: str) -> bool:
    """Whether every store to the cell ``name`` in ``code`` stores a new, empty container: an
    empty literal, or a container type called without data (`dict()`, `defaultdict(list)`);
    not a copy of what the decorator was given (`list(weights)`)."""
    instructions = list(dis.get_instructions(code))
    stores = [
        i
        for i, ins in enumerate(instructions)
        if ins.opname == "STORE_DEREF" and ins.argval == name
    ]
    for i in stores:
        if instructions[i].is_jump_target:  # reached from elsewhere: `config if ... else {}`
            return False
        before = instructions[i - 1] if i else None
        if before is None:
            return False
        if before.opname in ("BUILD_MAP", "BUILD_LIST", "BUILD_SET") and before.arg == 0:
            continue
        window = instructions[max(0, i - 5) : i]
        types_called = {
            ins.argval
            for ins in window
            if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME", "LOAD_ATTR", "LOAD_METHOD")
        }
        if before.opname == "CALL" and (
            (before.arg == 0 and types_called & _CONTAINER_TYPES)
            or (before.arg == 1 and "defaultdict" in types_called)  # its argument: a factory
        ):
            continue
        return False
    return bool(stores)


_CONTAINER_TYPES: Final = frozenset(
    {"dict", "list", "set", "OrderedDict", "defaultdict", "deque", "Counter"}
)


_CODE_TYPES: Final = (types.FunctionType, types.MethodType, type, types.ModuleType)


def _is_array(value: object) -> bool:
    np = sys.modules.get("numpy")
    return np is not None and type(value) is np.ndarray


def _all_constant(*groups: Any) -> bool:
    """Whether a few (at most 64) values, in groups, are all constants."""
    items = [item for group in groups for item in group]
    return len(items) <= 64 and all(map(_is_constant, items))


def _context_settings(value: object, children: list[object]) -> tuple[Any, bool]:
    """A context manager a wrapper holds, by what it was made with, another object by its type;
    and whether some of that can change in place (a list among its arguments)."""
    cls = type(value)
    if isinstance(value, contextlib._GeneratorContextManager):  # @contextmanager's, as a decorator
        func = getattr(value, "func", None)
        function, _ = _ref(func, children)
        code = func.__code__ if isinstance(func, types.FunctionType) else None
        positional = code.co_varnames[: code.co_argcount] if code is not None else ()
        given = [
            *((positional[i] if i < len(positional) else None, item)
              for i, item in enumerate(getattr(value, "args", ()))),
            *getattr(value, "kwds", {}).items(),
        ]  # fmt: skip
        settings, changes = [], False
        for name, item in given:
            fills = not _is_constant(item) and isinstance(name, str) and code is not None
            if fills and _changes(code, name, rebinding=False, accumulating=True):  # type: ignore[arg-type]
                # An argument the helper fills as it runs (a sink for timings): its state.
                settings.append((name, ("object", _qualified(type(item)))))
            else:  # one by one: a lock among them by its type, the others by content
                settings.append((name, _settings_digest(item)))
                changes = changes or not _is_constant(item)
        return ("context", function, tuple(settings)), changes
    names = _CONTEXT_SETTINGS.get(_qualified(cls))
    if names is not None:
        settings_now = _settings_digest([getattr(value, n, None) for n in names])
        return ("context", _qualified(cls), settings_now), False
    if _is_user_class(cls):
        # A `ContextDecorator` of the user's (`@precision(5)`): its class's code and what it
        # holds as it is met (its settings; a timer's last reading would make one more miss).
        children.append(cls)
        kept = _reassigned(cls)
        state = sorted((k, v) for k, v in (_attributes(value) or {}).items() if k not in kept)
        digests = tuple((k, _settings_digest(v)) for k, v in state)
        return ("object", _qualified(cls), digests), False
    return ("object", _qualified(cls)), False


def _reassigned(cls: type) -> frozenset[str]:
    """The attributes the methods of a user class other than ``__init__`` assign on an
    instance: its state as it is used (a timer's last reading, set in ``__enter__``), not the
    settings it was made with."""
    names: set[str] = set()
    for owner in cls.__mro__:
        if not _is_user_class(owner):
            continue
        for function in _class_functions(owner):
            if function.__name__ in ("__init__", "__post_init__"):
                continue
            for code in _code_objects(function.__code__):
                names.update(
                    i.argval for i in dis.get_instructions(code) if i.opname == "STORE_ATTR"
                )
    return frozenset(names)


# Context managers of libraries used as decorators, by the attributes that hold their settings.
_CONTEXT_SETTINGS: Final = {
    "numpy.errstate": ("_call", "_all", "_divide", "_over", "_under", "_invalid"),
}


def _settings_digest(settings: object) -> str:
    """The digest of a decorator's settings as they are; by type where one has none."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return fingerprint(settings)
        except FingerprintError:
            return fingerprint(("object", _qualified(type(settings))))


def _held_parts(obj: object, children: list[object]) -> tuple[tuple[str, Any], ...] | None:
    """The attributes of a library's callable object that holds user functions or values that
    count by content (``toolz.curry(weigh)(10)`` holds ``weigh``), each by what it is; None for
    one that holds neither, which counts by its name and version."""
    state = getattr(obj, "__dict__", None)
    if isinstance(obj, types.FunctionType | type) or type(state) is not dict:
        return None
    found: list[object] = []
    parts = tuple(
        (name, _held_part(value, found))
        for name, value in sorted(state.items())
        if not name.startswith("__")  # the names functools.wraps copies
    )
    if not found and not any(_is_live(part) for _, part in parts):
        return None
    children.extend(found)
    return parts


def is_random_generator(owner: object) -> bool:
    """Whether ``owner`` is one of the generators random's and numpy's module-level draws use
    (or another instance of their classes)."""
    if isinstance(owner, random.Random):
        return True
    numpy_random = sys.modules.get("numpy.random")
    return numpy_random is not None and isinstance(owner, numpy_random.RandomState)


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
