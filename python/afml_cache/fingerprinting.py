"""Fingerprint rules for values the Rust walker does not read itself.

The walker (``src/bindings/walk.rs``) reads builtin values and numpy arrays directly. For any
other value it calls :func:`_canonicalize`, which answers with a rule name and a *canonical
form*: a value made of things the walker knows (tuples, arrays, …) that holds everything that
makes two such values different. The rule name is hashed with the form, so two types that
decompose alike never collide. No rule loops over data: arrays go back to Rust whole.

The rules are part of the fingerprint spec (``docs/fingerprint.md``); changing what one returns
changes digests and needs a spec version bump.
"""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import enum
import fractions
import functools
import glob
import itertools
import json
import operator
import os
import pathlib
import re
import sys
import threading
import time
import types
import uuid
import warnings
import weakref
import zoneinfo
from collections import OrderedDict, defaultdict, deque
from collections.abc import Callable, Iterator
from typing import Any, Final

from afml_cache.errors import CacheWarning

__all__ = ["register_fingerprint"]

# How the walker reads the canonical form (kept in step with `mod kind` in walk.rs).
_VALUE = 0  # a value to walk
_ARROW_STREAM = 1  # an object exporting __arrow_c_stream__
_ARROW_ARRAY = 2  # an object exporting __arrow_c_array__
_MASKED = 3  # (values, mask): 1-d arrays, masked slots do not count
_UNSUPPORTED = 4  # a message: the value cannot be fingerprinted
_ARROW_SCHEMA = 5  # an object exporting __arrow_c_schema__ (a field, schema or type)

Rule = tuple[int, str, Any]

_registry: dict[type, Callable[[Any], Any]] = {}
_UNSET: Final = ("unset",)  # an attrs field with init=False that has no value yet
_warned_types: set[type] = set()


def register_fingerprint(cls: type, fn: Callable[[Any], Any]) -> None:
    """Fingerprint instances of ``cls`` (and its subclasses) by ``fn(obj)``.

    ``fn`` returns any fingerprintable value that holds everything that makes two instances
    different, e.g. ``lambda model: (model.params, model.coef_)``. The instance's qualified type
    name is hashed with it. A registration replaces an earlier one for the same type.
    """
    if not isinstance(cls, type):
        raise TypeError(f"register_fingerprint(cls, fn): cls must be a class, got {cls!r}")
    if not callable(fn):
        raise TypeError(f"register_fingerprint({cls.__qualname__}, fn): fn must be callable")
    _registry[cls] = fn


def _name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _canonicalize(obj: Any, strict: bool) -> Rule:
    """The rule for ``obj``: ``(how to read it, rule name, canonical form)``."""
    cls = type(obj)
    for base in cls.__mro__:
        fn = _registry.get(base)
        if fn is not None:
            return _VALUE, f"registered:{_name(cls)}", _with_code(cls, fn(obj))
    if hasattr(cls, "__cache_key__"):
        return _VALUE, f"cache_key:{_name(cls)}", _with_code(cls, obj.__cache_key__())
    exact = _EXACT_RULES.get(cls)
    if exact is not None:
        return exact(obj)
    library = _LIBRARY_RULES.get(cls.__module__.partition(".")[0])
    if library is not None:
        found = library(obj)
        if found is not None:
            return found
    found = _protocol_rule(obj, cls)
    if found is not None:
        return found
    return _pickle_reduction(obj, cls, strict)


# --- the standard library -------------------------------------------------------------------


def _function(fn: types.FunctionType) -> Rule:
    # The same code fingerprint as a decorated function's (helpers, classes, constants), plus
    # the mutable globals and closure cells it reads, as they are now.
    from afml_cache.codehash import function_key

    return _VALUE, "function", function_key(fn)


def _module(module: types.ModuleType) -> Rule:
    # A library module by its name; one of the user's code also by what is in it (a module
    # passed as an argument or kept in a registry: its functions' code and its values).
    from afml_cache.codehash import _is_user_module, module_content

    if not _is_user_module(module):
        return _VALUE, "module", module.__name__
    return _VALUE, "module", (module.__name__, module_content(module))


def _zoneinfo(tz: zoneinfo.ZoneInfo) -> Rule:
    # By its key, which names the zone's rules only for a zone loaded by its key (ZoneInfo(key)
    # or no_cache): one read with from_file has no key, or any key its caller chose, and is
    # the one kind that refuses to pickle (it could not be loaded again by its key).
    key = tz.key
    try:
        tz.__reduce__()
        canonical = key is not None
    except Exception:
        canonical = False
    if not canonical:
        message = (
            f"a ZoneInfo read with from_file (key {key!r}) is not told apart by its key; pass "
            "zoneinfo.ZoneInfo(key), or the zone file's path"
        )
        return _UNSUPPORTED, "zoneinfo", message
    return _VALUE, "zoneinfo", key


def _wrapper(obj: Any) -> Rule:
    # functools.lru_cache/cache: by the function it wraps, which decides what it returns, and
    # by whether it keys 1.0 and True apart (`typed=`), which decides what it hands back.
    parts = (_name(type(obj)), obj.__wrapped__)
    typed = obj.cache_parameters().get("typed", False)
    return _VALUE, "wrapped", (*parts, "typed") if typed else parts


def _code_parts(code: types.CodeType, consts: tuple[Any, ...] | None = None) -> tuple[Any, ...]:
    # Line numbers, positions and the file name are left out, so moving a function within its
    # file, or adding blank lines and comments, keeps its fingerprint.
    return (
        code.co_argcount,
        code.co_posonlyargcount,
        code.co_kwonlyargcount,
        code.co_flags,
        code.co_code,
        code.co_consts if consts is None else consts,
        code.co_names,
        code.co_varnames,
        code.co_freevars,
        code.co_cellvars,
        code.co_exceptiontable,
    )


_EXACT_RULES: dict[type, Callable[[Any], Rule]] = {
    range: lambda r: (_VALUE, "range", (r.start, r.stop, r.step)),
    slice: lambda s: (_VALUE, "slice", (s.start, s.stop, s.step)),
    # A writable view (of a bytearray) can be written through, a read-only one cannot.
    memoryview: lambda m: (
        _VALUE,
        "memoryview",
        (m.format, m.shape, m.tobytes()) + (() if m.readonly else ("writable",)),
    ),
    type(Ellipsis): lambda _: (_VALUE, "Ellipsis", None),
    type(NotImplemented): lambda _: (_VALUE, "NotImplemented", None),
    # The UTC offset counts beside the tzinfo: one pytz zone object's wall times an hour apart
    # (01:30 EDT and EST) are told apart only by it.
    datetime.datetime: lambda d: (
        _VALUE,
        "datetime",
        (
            (d.year, d.month, d.day, d.hour, d.minute, d.second, d.microsecond, d.fold),
            d.tzinfo,
            d.utcoffset(),
        ),
    ),
    datetime.date: lambda d: (_VALUE, "date", (d.year, d.month, d.day)),
    datetime.time: lambda t: (
        _VALUE,
        "time",
        ((t.hour, t.minute, t.second, t.microsecond, t.fold), t.tzinfo, t.utcoffset()),
    ),
    datetime.timedelta: lambda t: (_VALUE, "timedelta", (t.days, t.seconds, t.microseconds)),
    datetime.timezone: lambda tz: (_VALUE, "timezone", (tz.utcoffset(None), tz.tzname(None))),
    zoneinfo.ZoneInfo: _zoneinfo,
    # as_tuple keeps the exponent: Decimal("1.0") and Decimal("1.00") print and round differently.
    decimal.Decimal: lambda d: (_VALUE, "decimal", tuple(d.as_tuple())),
    fractions.Fraction: lambda f: (_VALUE, "fraction", (f.numerator, f.denominator)),
    uuid.UUID: lambda u: (
        _VALUE,
        "uuid",
        u.bytes if u.is_safe is uuid.SafeUUID.unknown else (u.bytes, u.is_safe.name),
    ),
    functools.partial: lambda p: (_VALUE, "partial", (p.func, p.args, p.keywords)),
    functools._lru_cache_wrapper: _wrapper,
    types.FunctionType: _function,
    types.MethodType: lambda m: (_VALUE, "method", (m.__func__, m.__self__)),
    types.BuiltinFunctionType: lambda f: (
        _VALUE,
        "builtin",
        (
            f.__module__,
            f.__qualname__,
            None if isinstance(f.__self__, types.ModuleType) else f.__self__,
        ),
    ),
    # `W.__mul__`: the slot's name and the object it is bound to.
    types.MethodWrapperType: lambda m: (_VALUE, "method-wrapper", (m.__name__, m.__self__)),
    types.CodeType: lambda c: (_VALUE, "code", _code_parts(c)),
    types.ModuleType: _module,
    defaultdict: lambda d: (_VALUE, "defaultdict", (d.default_factory, dict(d))),
    # Unlike dicts, OrderedDicts compare (and iterate) by order, so order counts.
    OrderedDict: lambda d: (_VALUE, "OrderedDict", list(d.items())),
    deque: lambda d: (_VALUE, "deque", (list(d), d.maxlen)),
    # A read-only view of a dict (`SETTINGS = MappingProxyType(_settings)`): what it shows now.
    types.MappingProxyType: lambda p: (_VALUE, "mappingproxy", dict(p)),
    # Live views of a dict (`ACTIVE = WEIGHTS.items()`), which do not pickle: what they show
    # now, in their order.
    type({}.keys()): lambda v: (_VALUE, "dict_keys", list(v)),
    type({}.values()): lambda v: (_VALUE, "dict_values", list(v)),
    type({}.items()): lambda v: (_VALUE, "dict_items", list(v)),
    type(OrderedDict().keys()): lambda v: (_VALUE, "dict_keys", list(v)),
    type(OrderedDict().values()): lambda v: (_VALUE, "dict_values", list(v)),
    type(OrderedDict().items()): lambda v: (_VALUE, "dict_items", list(v)),
    # A pattern is what it was compiled from; flags hold re.I, re.M, ... (and str's re.U).
    re.Pattern: lambda p: (_VALUE, "re.Pattern", (p.pattern, p.flags)),
    # Their reduction is how they were made: the items, attribute names, or method name and
    # arguments (keyword arguments in a partial).
    operator.itemgetter: lambda g: (_VALUE, "operator.itemgetter", g.__reduce__()),
    operator.attrgetter: lambda g: (_VALUE, "operator.attrgetter", g.__reduce__()),
    operator.methodcaller: lambda c: (_VALUE, "operator.methodcaller", c.__reduce__()),
}

_COMBINATORIC: Final = (
    itertools.combinations,
    itertools.combinations_with_replacement,
    itertools.permutations,
    itertools.product,
)

_BUILTIN_BASES: tuple[type, ...] = (
    int,
    float,
    complex,
    str,
    bytes,
    bytearray,
    tuple,
    list,
    dict,
    set,
    frozenset,
)


def _or_type(value: Any) -> Any:
    """``value``, or its type's name where it has no fingerprint (a lock, a client), as a
    function's global holding one counts (`codehash`)."""
    from afml_cache._core import fingerprint
    from afml_cache.errors import FingerprintError

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fingerprint(value)
    except FingerprintError:
        return ("object", _name(type(value)))
    return value


def _by_digest(items: list[Any]) -> list[Any]:
    """``items`` in the order of their digests: the same in every process."""
    from afml_cache._core import fingerprint

    return [item for _, item in sorted(((fingerprint(i), i) for i in items), key=lambda p: p[0])]


def _protocol_rule(obj: Any, cls: type) -> Rule | None:
    """Rules that follow from what a value is or exports rather than from its exact type."""
    if isinstance(obj, enum.Enum):
        value: Any = (obj.name, obj.value)
        own = _set_on(obj, cls, dict(_attributes(obj) or ()))
        if own:
            value = (*value, ("attributes", own))
        return _VALUE, f"enum:{_name(cls)}", _with_code(cls, value)
    if dataclasses.is_dataclass(obj):
        fields = {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
        value = (fields, _attributes(obj, skip=fields))
        return _VALUE, f"dataclass:{_name(cls)}", _with_code(cls, value)
    found = _scipy_rule(obj)  # a user's subclass of a scipy distribution too
    if found is not None:
        return found
    attr = sys.modules.get("attr")  # attrs classes, as dataclasses: their fields by name
    if attr is not None and attr.has(cls):
        # A field with init=False may be unset yet; a hash attrs caches (cache_hash=True) is
        # hash() of the fields, which differs in every process.
        fields = {f.name: getattr(obj, f.name, _UNSET) for f in attr.fields(cls)}
        skip = {*fields, "_attrs_cached_hash", "__attrs_cached_hash"}
        value = (fields, _attributes(obj, skip=skip))
        return _VALUE, f"attrs:{_name(cls)}", _with_code(cls, value)
    if isinstance(obj, tuple) and isinstance(getattr(cls, "n_sequence_fields", None), int):
        # A struct sequence (os.stat_result, time.struct_time) holds fields beyond its tuple
        # part (st_mtime_ns, tm_zone), which its reduction gives.
        visible, hidden = obj.__reduce__()[1]
        return _VALUE, f"structseq:{_name(cls)}", (tuple(visible), dict(hidden))
    # Objects that hold data but do not pickle: what they hold now (this thread's attributes
    # of a threading.local).
    # A client or a lock kept there (a session per thread) counts by its type.
    if isinstance(obj, threading.local):
        held = {name: _or_type(value) for name, value in vars(obj).items()}
        return _VALUE, f"threading.local:{_name(cls)}", _with_code(cls, held)
    if isinstance(obj, weakref.WeakValueDictionary):
        held = {key: _or_type(value) for key, value in obj.items()}
        return _VALUE, f"weak mapping:{_name(cls)}", _with_code(cls, held)
    # Keys and members hashed by identity iterate in another order in each process.
    if isinstance(obj, weakref.WeakKeyDictionary):
        pairs = _by_digest([(_or_type(key), _or_type(value)) for key, value in obj.items()])
        return _VALUE, f"weak mapping:{_name(cls)}", _with_code(cls, pairs)
    if isinstance(obj, weakref.WeakSet):
        members = _by_digest([_or_type(i) for i in obj])
        return _VALUE, f"weak set:{_name(cls)}", _with_code(cls, members)
    if isinstance(obj, tuple) and hasattr(cls, "_fields"):
        value = (cls._fields, tuple(tuple.__iter__(obj)))
        attributes = _attributes(obj)  # a subclass without __slots__ carries a __dict__
        if attributes is not None:
            value = (value, attributes)
        return _VALUE, f"namedtuple:{_name(cls)}", _with_code(cls, value)
    if isinstance(obj, pathlib.PurePath):
        own = _set_on(obj, cls, getattr(obj, "__dict__", None) or {})  # pathlib's are slots
        if own:
            return _VALUE, f"path:{_name(cls)}", (str(obj), own)
        return _VALUE, f"path:{_name(cls)}", str(obj)
    # A namespace is its attributes, in the order they were set, as a dict is its items.
    argparse = sys.modules.get("argparse")  # its Namespace exists only once it is imported
    if isinstance(obj, types.SimpleNamespace) or (
        argparse is not None and isinstance(obj, argparse.Namespace)
    ):
        return _VALUE, f"namespace:{_name(cls)}", dict(vars(obj))
    numpy = sys.modules.get("numpy")  # an ndarray subclass defined outside numpy
    if numpy is not None and isinstance(obj, numpy.ndarray):
        return _numpy_rule(obj)
    found = _pandas_subclass_rule(obj, cls)
    if found is not None:
        return found
    arrow = sys.modules.get("pyarrow")
    if arrow is not None and isinstance(obj, arrow.RecordBatchReader):
        # Reading its stream uses it up: the function would get an empty reader.
        message = (
            f"a {_name(cls)} is used up when it is read, so it cannot be fingerprinted without "
            "emptying it for the function; pass reader.read_all() (a Table) instead"
        )
        return _UNSUPPORTED, _name(cls), message
    if isinstance(obj, _COMBINATORIC):
        # Pickled when used up, one is a fresh iterator over nothing (`combinations((), 0)`
        # yields one empty tuple): their reduction does not say what is left.
        message = f"an {_name(cls)} iterator cannot be fingerprinted; pass list(...) of it instead"
        return _UNSUPPORTED, _name(cls), message
    if hasattr(cls, "__arrow_c_stream__"):
        return _ARROW_STREAM, f"arrow:{_name(cls)}", obj
    if hasattr(cls, "__arrow_c_array__"):
        return _ARROW_ARRAY, f"arrow:{_name(cls)}", obj
    # A subclass of a builtin: its value as the builtin, plus any attributes it carries.
    if isinstance(obj, defaultdict):
        value = (obj.default_factory, dict(obj))
        return _VALUE, f"subclass:{_name(cls)}", (value, _attributes(obj))
    if isinstance(obj, OrderedDict):  # in its own order, which `move_to_end` changes, not dict's
        value = (list(OrderedDict.items(obj)), _attributes(obj))
        return _VALUE, f"subclass:{_name(cls)}", _with_code(cls, value)
    for base in _BUILTIN_BASES:
        if isinstance(obj, base):
            value = (_as_base(base, obj), _attributes(obj))
            return _VALUE, f"subclass:{_name(cls)}", _with_code(cls, value)
    return None


def _set_on(obj: Any, cls: type, found: dict[str, Any]) -> tuple[tuple[str, Any], ...]:
    """What the code of a user's class set on an instance of a value-like type (an enum
    member's `__init__`, `DataFile(path).header_rows = 1`), sorted by name: not enum's own
    `_sunder_` names, nor cached properties (made from the value, filled when first read), nor
    a lock held directly (the value never depended on it; anything else without a
    fingerprint makes the call run uncached). Nothing for a library's class: its members
    carry what it wrote."""
    from afml_cache.codehash.values import cached_properties

    if not found or not (_is_users(cls) or cls.__module__ == "builtins"):  # `exec` made it
        return ()
    cached = cached_properties(cls)
    return tuple(
        (name, value)
        for name, value in sorted(found.items(), key=lambda kv: kv[0])
        if not (_is_sunder(name) or name in cached or isinstance(value, _LOCKS))
    )


_LOCKS: Final = (type(threading.Lock()), type(threading.RLock()))


def _is_sunder(name: str) -> bool:
    return len(name) > 2 and name[0] == name[-1] == "_"


def _as_base(base: type, obj: Any) -> Any:
    """``obj``'s value as its builtin base, read by the base's own methods: ``str(obj)`` or
    ``list(obj)`` would call a subclass's ``__str__`` or ``__iter__``, which may show less."""
    if base in (list, tuple, set, frozenset):
        return base(base.__iter__(obj))
    if base is dict:
        return dict(dict.items(obj))
    if base is bytearray:
        return bytearray(memoryview(obj))
    if base is str:
        return str.__str__(obj)
    convert = {int: int.__int__, float: float.__float__, complex: complex.__complex__}
    if base in convert:
        return convert[base](obj)
    if base is bytes:
        return bytes(memoryview(obj))
    return base(obj)


def _with_code(cls: type, value: Any) -> Any:
    """``value``, plus the code fingerprint of ``cls`` when it is a class of the user's own
    code that says how its instances behave (`_has_behaviour`): an instance read through its
    fields or state does what its methods say, and an edited method must not find the results
    of the old one (``STRATEGIES = {"mom": Momentum(3)}``), as a function counts its code.
    Classes of libraries, and classes that only hold data, count by their name, as before."""
    from afml_cache.codehash import _is_user_class, class_code

    if not any(_has_behaviour(c) for c in cls.__mro__[:-1] if _is_user_class(c)):
        return value
    return (value, ("code", class_code(cls)))


# What `typing.NamedTuple` puts in a class body besides its fields (dataclasses add dunders, and
# `__slots__` member descriptors, which `_has_behaviour` passes over too).
_GENERATED: Final = frozenset({"_fields", "_field_defaults", "_make", "_replace", "_asdict"})


def _has_behaviour(cls: type) -> bool:
    """Whether the body of ``cls`` holds code the user wrote (a method, property, static or
    class method, ``__call__``...) or a class attribute its instances read (``threshold =
    0.5``), beyond the fields, slots and methods that dataclasses and named tuples generate."""
    from afml_cache.codehash import _is_user_function

    fields = getattr(cls, "__dataclass_fields__", None) or {}
    for name, attribute in vars(cls).items():
        function = getattr(attribute, "__func__", None) or getattr(attribute, "fget", attribute)
        if isinstance(function, types.FunctionType):
            # Generated methods (a dataclass's __init__) are compiled from "<string>".
            if _is_user_function(function) and function.__code__.co_filename != "<string>":
                return True
        elif not (
            name.startswith("__")
            or name in fields
            or name in _GENERATED
            or isinstance(attribute, types.MemberDescriptorType)
            or type(attribute).__name__ == "_tuplegetter"
        ):
            return True
    return False


def _attributes(obj: Any, skip: Any = ()) -> tuple[tuple[str, Any], ...] | None:
    """An instance's attributes (``__dict__`` and set ``__slots__``) sorted by name, leaving out
    the names in ``skip``; None when it has none. The order they were set in does not count."""
    found = dict(getattr(obj, "__dict__", None) or {})
    for klass in type(obj).__mro__:
        slots = klass.__dict__.get("__slots__", ())
        for slot in (slots,) if isinstance(slots, str) else slots:
            if slot in ("__dict__", "__weakref__"):
                continue
            # Private slots are stored under their mangled name.
            private = slot.startswith("__") and not slot.endswith("__")
            name = f"_{klass.__name__.lstrip('_')}{slot}" if private else slot
            if hasattr(obj, name):  # an unset slot has no value to count
                found[name] = getattr(obj, name)
    items = tuple(sorted(((k, v) for k, v in found.items() if k not in skip), key=lambda kv: kv[0]))
    return items or None


# Value types of the standard library whose pickle reduction holds the value alone.
_VALUE_TYPES: Final = (
    datetime.date,
    datetime.time,
    datetime.timedelta,
    decimal.Decimal,
    fractions.Fraction,
    uuid.UUID,
)


def _is_users(cls: type) -> bool:
    from afml_cache.codehash import _is_user_class

    return bool(_is_user_class(cls))


def _pickle_reduction(obj: Any, cls: type, strict: bool) -> Rule:
    name = _name(cls)
    advice = (
        f"give {cls.__qualname__} a __cache_key__() method or call "
        f"afml_cache.register_fingerprint({cls.__qualname__}, fn) with a function that returns "
        "what identifies it"
    )
    if strict:
        return _UNSUPPORTED, name, f"{name} has no fingerprint rule (strict mode); {advice}"
    try:
        reduced = obj.__reduce_ex__(5)
    except Exception as exc:
        message = (
            f"{name} cannot be fingerprinted: it has no fingerprint rule and cannot be "
            f"pickled ({exc}); pass a value that describes it instead, or {advice}"
        )
        return _UNSUPPORTED, name, message
    if cls not in _warned_types:
        _warned_types.add(cls)
        # stacklevel 3: past this function and _canonicalize, to the caller of fingerprint().
        warnings.warn(
            f"afml_cache: {name} has no fingerprint rule, so it is fingerprinted through its "
            f"pickle reduction; {advice} to make this explicit and fast",
            CacheWarning,
            stacklevel=3,
        )
    if isinstance(reduced, str):  # a global, named by its module-level name in its module
        named = (getattr(obj, "__module__", None), reduced)
        return _VALUE, f"reduce:{name}", _with_code(cls, named)
    parts = list(reduced)
    if len(parts) < 3 or parts[2] is None:
        # The reduction of a value type (date's, Decimal's) leaves out the attributes a user's
        # subclass gives its instances: they count as its state. Only there: a library's
        # reduction without state is how it chose to be rebuilt, and its instance's `__dict__`
        # may hold caches filled lazily, or the whole process (a Logger's manager).
        attributes = _attributes(obj) if isinstance(obj, _VALUE_TYPES) else None
        if attributes is not None and _is_users(cls):
            parts = [*parts[:2], dict(attributes), *parts[3:]]
    elif isinstance(obj, uuid.UUID) and _is_users(cls):  # its state is the number alone
        parts.append(("attributes", _attributes(obj)))
    # The state is most often the instance's __dict__: the order attributes were set in does
    # not change the object, so it does not count (dicts inside it keep their order).
    if len(parts) > 2 and isinstance(parts[2], dict) and all(isinstance(k, str) for k in parts[2]):
        parts[2] = tuple(sorted(parts[2].items(), key=lambda kv: kv[0]))
    # Items 3 and 4, when present, are iterators over list items and dict items.
    for i in (3, 4):
        if len(parts) > i and parts[i] is not None:
            parts[i] = list(parts[i])
    return _VALUE, f"reduce:{name}", _with_code(cls, tuple(parts))


# --- numpy ----------------------------------------------------------------------------------


def _numpy_rule(obj: Any) -> Rule | None:
    import numpy as np

    if isinstance(obj, np.generic):
        # A 0-d array carries the scalar's dtype and bytes; the rule name keeps it apart from one.
        return _VALUE, "numpy.scalar", np.asarray(obj)
    if isinstance(obj, np.dtype):
        return _VALUE, "numpy.dtype", _numpy_dtype(obj)
    if isinstance(obj, np.ufunc):
        return _ufunc_rule(obj)
    if type(obj) is type(np.trace) and not isinstance(obj, types.FunctionType):
        # numpy's functions (np.trace, np.linalg.trace) pickle as a bare name: by module too.
        return _VALUE, "numpy.function", (obj.__module__, obj.__qualname__)
    if isinstance(obj, np.busdaycalendar):
        return _VALUE, "numpy.busdaycalendar", (obj.weekmask, obj.holidays)
    if obj is np.ma.masked:  # the constant, whose fill_value cannot be read
        return _VALUE, "numpy.ma.masked", None
    if isinstance(obj, np.flatiter):  # `FLAT = PRICES.flat`: the array, and where it stands
        return _VALUE, "numpy.flatiter", (obj.base, obj.index)
    if isinstance(obj, np.ma.MaskedArray):
        mask = np.ma.getmaskarray(obj)
        # What sits under the mask is arbitrary: fill it with the dtype's zero. fill_value
        # decides filled(), and a hard mask decides what assignments do.
        data = obj.filled(np.zeros((), obj.dtype))
        parts = (mask, data, obj.fill_value, obj.hardmask)
        if obj.mask is np.ma.nomask:  # `x.mask is nomask` tells it from an all-False mask
            parts = (*parts, "nomask")
        attributes = _attributes(obj, skip=_masked_state())  # a `unit` set on it, a subclass's
        if attributes is not None:
            parts = (*parts, ("attributes", attributes))
        return _VALUE, f"numpy.ma:{_name(type(obj))}", _with_code(type(obj), parts)
    if isinstance(obj, np.memmap):
        # Its attributes say which file backs it, not what it holds.
        return _VALUE, "ndarray:numpy.memmap", np.asarray(obj)
    if isinstance(obj, np.ndarray):
        value = (np.asarray(obj), _attributes(obj))
        return _VALUE, f"ndarray:{_name(type(obj))}", _with_code(type(obj), value)
    return None


def _is_record(dtype: Any) -> bool:
    import numpy as np

    return dtype.type is not np.void


@functools.cache
def _masked_state() -> frozenset[str]:
    """The attributes numpy keeps on every masked array (its mask, fill value, ...)."""
    import numpy as np

    # And a memmap's, which a masked array made from one copies (which file backs it does
    # not count, as for the memmap itself).
    memmap = frozenset({"_mmap", "filename", "mode", "offset"})
    return frozenset(vars(np.ma.masked_array([0], mask=[False]))) | memmap


def _numpy_dtype(dtype: Any) -> Any:
    """``dtype.str``, or ``dtype.descr`` when structured; a subarray dtype (``("<f8", (2, 3))``,
    whose ``str`` is ``|V48``) by its base and shape; and what else it carries, when it does:
    metadata, and the alignment of an aligned struct."""
    if dtype.subdtype is not None:
        base, shape = dtype.subdtype
        return ("subarray", _numpy_dtype(base), shape)
    form = dtype.descr if dtype.names is not None else dtype.str
    extra = tuple(
        part
        for part in (
            ("metadata", dict(dtype.metadata)) if dtype.metadata else None,
            ("aligned",) if dtype.isalignedstruct else None,
            # np.record elements read their fields as attributes (`a[0].price`), void's do not.
            ("type", _name(dtype.type)) if dtype.names is not None and _is_record(dtype) else None,
        )
        if part is not None
    )
    return (form, *extra) if extra else form


def _ufunc_rule(ufunc: Any) -> Rule:
    """numpy's ufuncs by name; another library's (scipy.special's ``exp2`` is not numpy's) by
    the module that exposes it and that library's version; an ``np.frompyfunc`` ufunc by the
    function it calls."""
    if not ufunc.__name__.endswith(" (vectorized)"):
        import numpy as np

        if getattr(np, ufunc.__name__, None) is ufunc:
            return _VALUE, "numpy.ufunc", ufunc.__name__
        home = _ufunc_home(ufunc)
        if home is None:
            # Made in the user's code (numba's vectorize), its code cannot be read from it.
            message = (
                f"the ufunc {ufunc.__name__!r} is not a library's (none exposes it), and its "
                "code cannot be read from it; pass the function it was made from instead"
            )
            return _UNSUPPORTED, "ufunc", message
        return _VALUE, "ufunc", home
    from afml_cache.codehash import _frompyfunc_function

    function = _frompyfunc_function(ufunc)
    if function is None:
        message = (
            f"the np.frompyfunc ufunc {ufunc.__name__!r} does not show the function it calls; "
            "pass that function instead"
        )
        return _UNSUPPORTED, "numpy.frompyfunc", message
    return _VALUE, "numpy.frompyfunc", (function, ufunc.nin, ufunc.nout)


_ufunc_homes: dict[int, tuple[Any, tuple[str, str, str | None] | None]] = {}


def _ufunc_home(ufunc: Any) -> tuple[str, str, str | None] | None:
    """(module, name, version) of a library's module exposing ``ufunc`` (ufuncs carry no
    module of their own), found once per ufunc: a public module before a private one, the
    shortest name first, then in order of names; the user's modules do not count (``from
    scipy.special import expit`` in a script must not make the script its home), and a ufunc
    only they expose (numba's vectorize) has none: None."""
    known = _ufunc_homes.get(id(ufunc))
    if known is not None and known[0] is ufunc:
        return known[1]
    from afml_cache.codehash import _is_user_module, _version_of

    name = ufunc.__name__
    # (the user's, private, length, name) of each module exposing it: the least one is its home.
    found = [
        (
            _is_user_module(module),
            module_name != "__main__" and any(p.startswith("_") for p in module_name.split(".")),
            len(module_name),
            module_name,
        )
        for module_name, module in list(sys.modules.items())
        if getattr(module, "__dict__", {}).get(name) is ufunc
    ]
    user, _, _, module_name = min(found, default=(True, False, 0, ""))
    # None for a ufunc only the user's code exposes (numba's vectorize): not a library's.
    home = None if user else (module_name, name, _version_of(module_name))
    _ufunc_homes[id(ufunc)] = (ufunc, home)  # holds it: the id stays its own
    return home


# --- pandas ---------------------------------------------------------------------------------


def _pandas_rule(obj: Any) -> Rule | None:
    import pandas as pd

    if isinstance(obj, pd.DataFrame):
        columns = tuple(_column(values) for values in obj._iter_column_arrays())
        flags = obj.flags.allows_duplicate_labels
        parts = (obj.columns, columns, obj.index, obj.attrs, flags)
        return _VALUE, "pandas.DataFrame", _with_set_attributes(obj, parts)
    if isinstance(obj, pd.Series):
        flags = obj.flags.allows_duplicate_labels
        parts = (obj.name, _dtype(obj.dtype), _held(obj.array), obj.index, obj.attrs, flags)
        return _VALUE, "pandas.Series", _with_set_attributes(obj, parts)
    if isinstance(obj, pd.Index):
        kind, name, parts = _index_rule(obj)
        return kind, name, _with_set_attributes(obj, parts)
    if isinstance(obj, pd.api.extensions.ExtensionArray):
        return _extension_array_rule(obj)
    if isinstance(obj, pd.CategoricalDtype):
        # Alone, not as a column's: no values carry its categories, and `astype` to it codes
        # by their order.
        return _VALUE, "pandas.CategoricalDtype", (obj.categories, obj.ordered)
    if isinstance(obj, pd.api.extensions.ExtensionDtype):
        return _VALUE, "pandas.dtype", _dtype(obj)
    if obj is pd.NaT:
        return _VALUE, "pandas.NaT", None
    if obj is pd.NA:
        return _VALUE, "pandas.NA", None
    if isinstance(obj, pd.Timestamp):
        # asm8 keeps the resolution (unit) and the UTC value; the tz is its own part.
        return _VALUE, "pandas.Timestamp", (obj.asm8, obj.tz)
    if isinstance(obj, pd.Timedelta):
        return _VALUE, "pandas.Timedelta", obj.asm8
    if isinstance(obj, pd.Period):
        return _VALUE, "pandas.Period", (obj.ordinal, obj.freqstr)
    if isinstance(obj, pd.Interval):
        return _VALUE, "pandas.Interval", (obj.left, obj.right, obj.closed)
    if isinstance(obj, pd.offsets.BaseOffset):
        # kwds holds the whole definition (holidays, weekmask, calendar, business hours, …),
        # which freqstr leaves out.
        definition = tuple(sorted(obj.kwds.items(), key=lambda kv: kv[0]))
        return _VALUE, f"pandas.offset:{type(obj).__qualname__}", (obj.n, obj.normalize, definition)
    return None


# Attributes pandas keeps on its objects without an underscore (the rest of its own have one).
_PANDAS_PUBLIC: Final = frozenset({"sortorder"})


def _with_set_attributes(
    obj: Any, parts: tuple[Any, ...], skip: frozenset[str] = _PANDAS_PUBLIC
) -> tuple[Any, ...]:
    """``parts``, and the attributes the user set on a pandas object, if any (``bars.symbol =
    "ES"``: pandas keeps it on the instance, and a function may read it)."""
    found = getattr(obj, "__dict__", None) or {}
    own = [(k, v) for k, v in found.items() if not k.startswith("_") and k not in skip]
    if not own:
        return parts
    return (*parts, ("attributes", tuple(sorted(own, key=lambda kv: kv[0]))))


def _pandas_subclass_rule(obj: Any, cls: type) -> Rule | None:
    """A DataFrame or Series subclass: its data as the base class, and the attributes of its
    own that pandas propagates (``_metadata``: ``Bars`` with a ``symbol``). Not through the
    Arrow interface, which fails on columns of mixed objects (backtesting.py's statistics)."""
    pandas = sys.modules.get("pandas")
    if pandas is None or cls in (pandas.DataFrame, pandas.Series):
        return None
    base = next((b for b in (pandas.DataFrame, pandas.Series) if isinstance(obj, b)), None)
    if base is None:
        return None
    own = [n for n in getattr(cls, "_metadata", ()) if n not in base._metadata]
    values = tuple((name, getattr(obj, name, None)) for name in own)
    # As the base class, with what converting to it drops: attrs, flags, attributes set.
    parts: tuple[Any, ...] = (base(obj), values)
    if obj.attrs:
        parts = (*parts, ("attrs", obj.attrs))
    if not obj.flags.allows_duplicate_labels:
        parts = (*parts, ("allows_duplicate_labels", False))
    parts = _with_set_attributes(obj, parts, _PANDAS_PUBLIC | frozenset(own))
    return _VALUE, f"pandas subclass:{_name(cls)}", _with_code(cls, parts)


def _column(values: Any) -> Any:
    """A frame column as its block stores it: a numpy array (which carries its dtype) as
    itself, an extension array with its dtype. Reading the blocks, rather than a Series per
    column, keeps the rule's cost per column in microseconds."""
    import numpy as np

    return values if type(values) is np.ndarray else (_dtype(values.dtype), _held(values))


class _ArrowData:
    """The Arrow data of a pandas array held by a Series, an Index or a frame column, whose
    rule counts the dtype beside it (a bare array counts its own: `_extension_array_rule`)."""

    __slots__ = ("array",)

    def __init__(self, array: Any) -> None:
        self.array = array


_EXACT_RULES[_ArrowData] = lambda held: (
    _ARROW_STREAM,
    "pandas.arrow",
    held.array.__arrow_array__(),
)


def _held(values: Any) -> Any:
    import pandas as pd

    return _ArrowData(values) if isinstance(values, pd.arrays.ArrowExtensionArray) else values


def _dtype(dtype: Any) -> Any:
    """A column dtype: numpy dtypes as themselves, pandas extension dtypes by their parameters."""
    import numpy as np

    if isinstance(dtype, np.dtype):
        return dtype
    # str() names the parameters (unit, tz, freq, storage); categories are part of the values.
    na_value = getattr(dtype, "na_value", None) if hasattr(dtype, "storage") else None
    # A fixed-offset tz is named by a free label (two datetime.timezone can share one).
    tz = getattr(dtype, "tz", None)
    offset = tz.utcoffset(None) if tz is not None else None
    parts = (
        type(dtype).__qualname__,
        str(dtype),
        getattr(dtype, "storage", None),
        na_value,
        offset,
    )
    zone = _zone_kind(tz)
    return parts if zone is None else (*parts, zone)


def _zone_kind(tz: Any) -> Any:
    """What a zone's name leaves out, for zones other than zoneinfo's and fixed offsets: a
    pytz and a zoneinfo zone of one name resolve wall times differently (``datetime(...,
    tzinfo=pytz_zone)`` is local mean time), and dateutil's ``tzlocal()`` is whatever zone the
    machine is in."""
    if isinstance(tz, zoneinfo.ZoneInfo) and str(tz) == "UTC":
        # The one zoneinfo name a datetime.timezone also has (timezone.utc, pandas' "UTC"):
        # told apart, as a hit hands its zone on (only a ZoneInfo has .key).
        return "zoneinfo.ZoneInfo"
    if tz is None or isinstance(tz, zoneinfo.ZoneInfo | datetime.timezone):
        return None
    kind = _name(type(tz))
    if kind == "dateutil.tz.tz.tzlocal":
        return (kind, time.tzname, time.timezone, time.altzone, os.environ.get("TZ"))
    return kind


def _index_rule(index: Any) -> Rule:
    import pandas as pd

    if isinstance(index, pd.RangeIndex):
        return _VALUE, "pandas.RangeIndex", (index.start, index.stop, index.step, index.name)
    if isinstance(index, pd.MultiIndex):
        # Level values position by position; and the levels themselves where they are not the
        # sorted values used (which the values decide): a frame filtered by a mask keeps the
        # symbols it dropped in `index.levels`, which code iterates (`for s in
        # df.index.levels[1]`), and a fresh frame of the same rows lists only its own.
        values = tuple(index.get_level_values(i) for i in range(index.nlevels))
        parts: tuple[Any, ...] = (list(index.names), values)
        if not _plain_levels(index):
            parts = (*parts, tuple(index.levels))
        return _VALUE, "pandas.MultiIndex", parts
    # DatetimeIndex, TimedeltaIndex, PeriodIndex: the offset itself, as freqstr leaves out
    # holidays, weekmasks and business hours.
    freq = getattr(index, "freq", None)
    parts = (index.name, _dtype(index.dtype), _held(index.array), freq)
    return _VALUE, f"pandas.Index:{type(index).__qualname__}", parts


def _plain_levels(index: Any) -> bool:
    """Whether each level of a MultiIndex is sorted and used by some row."""
    import numpy as np

    for level, codes in zip(index.levels, index.codes, strict=True):
        if not level.is_monotonic_increasing:
            return False
        # A row without a value (code -1) turns an int level's values to float: its dtype
        # is then the level's only.
        if len(codes) and codes.min() < 0:
            return False
        used = np.bincount(codes[codes >= 0], minlength=len(level))
        if len(used) and not used.all():
            return False
    return True


def _extension_array_rule(values: Any) -> Rule:
    import numpy as np
    import pandas as pd

    if type(values) is pd.arrays.NumpyExtensionArray:
        return _VALUE, "pandas.values", values.to_numpy()
    if isinstance(values, pd.arrays.NumpyExtensionArray):
        # A StringArray: "string" (missing: <NA>) and "str" (missing: NaN) hold the same objects.
        return _VALUE, "pandas.values", (_dtype(values.dtype), values.to_numpy())
    if isinstance(
        values, (pd.arrays.DatetimeArray, pd.arrays.TimedeltaArray, pd.arrays.PeriodArray)
    ):
        # int64 counts since the epoch (or period ordinals); unit, tz and freq are in the dtype.
        return _VALUE, "pandas.datetimelike", (_dtype(values.dtype), np.asarray(values.asi8))
    if isinstance(values, pd.Categorical):
        parts = (values.categories, values.ordered, values.codes)
        return _VALUE, "pandas.Categorical", parts
    if isinstance(values, pd.arrays.ArrowExtensionArray):
        # Alone, with its dtype: "str", "string[pyarrow]" and ArrowDtype(pa.string()) export
        # the same Arrow data but give different results (`s == x` on a null: NaN, <NA>, False).
        return _VALUE, "pandas.arrow array", (_dtype(values.dtype), _ArrowData(values))
    if isinstance(values, pd.arrays.SparseArray):
        # Which positions are stored, and how, count beside the values (`npoints`, `density`,
        # `sp_values` and `kind` tell them apart); the fill value is in the dtype.
        stored = np.asarray(values.sp_index.indices)
        parts = (_dtype(values.dtype), len(values), values.kind, stored, values.sp_values)
        return _VALUE, "pandas.sparse", parts
    masked = _masked_parts(values)
    if masked is not None:
        return _MASKED, f"pandas.masked:{values.dtype}", masked
    # Any other extension array: its elements as Python objects, and its dtype.
    elements = np.asarray(values, dtype=object)
    return _VALUE, f"pandas.array:{type(values).__qualname__}", (_dtype(values.dtype), elements)


def _masked_parts(values: Any) -> tuple[Any, Any] | None:
    """(values, mask) of a pandas nullable array (Int64, Float64, boolean), else None."""
    import numpy as np

    data = getattr(values, "_data", None)
    mask = getattr(values, "_mask", None)
    if not (isinstance(data, np.ndarray) and isinstance(mask, np.ndarray)):
        return None
    if data.ndim != 1 or data.dtype.hasobject:
        return None
    native = data.dtype.newbyteorder("=")
    return np.ascontiguousarray(data, dtype=native), np.ascontiguousarray(mask, dtype=bool)


# --- pyarrow and polars objects without the C data interface ---------------------------------


def _pyarrow_rule(obj: Any) -> Rule | None:
    import pyarrow as pa

    if isinstance(obj, pa.Scalar):
        # As a one-element array: as_py() would drop what Python cannot hold (nanoseconds).
        return _ARROW_ARRAY, "pyarrow.Scalar", pa.repeat(obj, 1)
    if isinstance(obj, (pa.Schema, pa.DataType, pa.Field)):
        # Through the C interface: every parameter, nested field and metadata entry.
        return _ARROW_SCHEMA, f"pyarrow.{type(obj).__qualname__}", obj
    return None


def _polars_rule(obj: Any) -> Rule | None:
    """A LazyFrame: its plan (the data it holds, the steps) and the content of each file it
    scans, which its plan only names (``pl.scan_parquet(path)``: the morning download rewrites
    the file under the same path). One scanning what cannot be read here (``s3://``) has no
    fingerprint; one whose plan polars cannot write as JSON (a Python function in it) reads
    through its pickle reduction, its files unread, as before this rule."""
    import polars as pl

    if isinstance(obj, (pl.DataFrame, pl.Series)):
        return _polars_data_rule(obj)
    if not isinstance(obj, pl.LazyFrame):
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plan = json.loads(obj.serialize(format="json"))
            binary = obj.serialize()
    except Exception:
        return None
    from afml_cache.files import content_digest

    if _python_scans(plan):
        message = (
            "a polars LazyFrame over a Python source (scan_pyarrow_dataset, an IO plugin) "
            "cannot be fingerprinted: what it reads is known only when it is collected; "
            "collect() it and pass the frame, or pass the files it reads as paths"
        )
        return _UNSUPPORTED, "polars.LazyFrame", message
    sources = sorted(set(_scanned(plan)))
    scanned = []
    for source in sources:
        if "://" in source:
            message = (
                f"a polars LazyFrame scanning {source} cannot be fingerprinted: the files it "
                "scans are read by content, and this one is not a local file; collect() it "
                "and pass the frame, or pass what identifies the data (a version, a date)"
            )
            return _UNSUPPORTED, "polars.LazyFrame", message
        paths = sorted(glob.glob(source)) if glob.has_magic(source) else [source]
        scanned.append((source, tuple((p, content_digest(pathlib.Path(p))) for p in paths)))
    return _VALUE, "polars.LazyFrame", (binary, tuple(scanned))


def _polars_data_rule(obj: Any, flags: bool = True) -> Rule | None:
    """A polars frame or series with Object columns (Python objects, which polars exports to
    Arrow as their addresses: never a key's) or Null ones (all None, which Arrow's import
    refuses): those columns by what they hold, the others through Arrow as before; with
    ``flags``, the order its columns claim too."""
    import polars as pl

    if flags:
        # set_sorted() claims an order that polars then trusts (max(), search_sorted); it is
        # not in the Arrow export.
        series = obj.iter_columns() if isinstance(obj, pl.DataFrame) else [obj]
        claimed = tuple(
            (s.name, flag)
            for s in series
            for flag, on in s.flags.items()
            if on and "SORTED" in flag and not _bears_out(s, flag)
        )
        if claimed:
            return _VALUE, "polars.sorted", (claimed, _PolarsUnflagged(obj))
    schema = obj.schema if isinstance(obj, pl.DataFrame) else {obj.name: obj.dtype}
    objects = [name for name, dtype in schema.items() if dtype == pl.Object]
    nulls = [name for name, dtype in schema.items() if dtype == pl.Null]
    if not objects and not nulls:
        return None
    if isinstance(obj, pl.Series):
        held = obj.to_list() if objects else len(obj)
        return _VALUE, "polars.Series", (obj.name, str(obj.dtype), held)
    rest = obj.drop(objects + nulls)
    held = tuple((name, obj[name].to_list()) for name in objects)
    return _VALUE, "polars.DataFrame", (obj.columns, tuple(nulls), obj.height, rest, held)


def _bears_out(series: Any, flag: str) -> bool:
    """Whether a polars series is in the order its flag claims: then the flag changes no
    result, and the same data read back from a file (which drops it) keeps its digest."""
    import polars as pl

    plain = pl.Series(series.name, series.to_arrow())  # without the flag: checked, not trusted
    # The flag says nothing of where the nulls are (sort(nulls_last=True) sets it too).
    nulls_last = bool(plain.null_count()) and plain[-1] is None
    return bool(plain.is_sorted(descending=flag == "SORTED_DESC", nulls_last=nulls_last))


class _PolarsUnflagged:
    """A polars frame or series whose claimed order counts beside it: the rest of it, as a
    frame or series that claims none."""

    __slots__ = ("data",)

    def __init__(self, data: Any) -> None:
        self.data = data


_EXACT_RULES[_PolarsUnflagged] = lambda held: (
    _polars_data_rule(held.data, flags=False)
    or (
        _ARROW_STREAM,
        f"arrow:{_name(type(held.data))}",
        held.data,
    )
)


def _python_scans(plan: Any) -> bool:
    """Whether a LazyFrame's JSON plan reads through a Python function (``PythonScan``)."""
    if isinstance(plan, dict):
        return "PythonScan" in plan or any(_python_scans(value) for value in plan.values())
    if isinstance(plan, list):
        return any(_python_scans(value) for value in plan)
    return False


def _scanned(plan: Any) -> Iterator[str]:
    """The paths the Scan nodes of a LazyFrame's JSON plan read."""
    if isinstance(plan, dict):
        for key, value in plan.items():
            if key == "Scan" and isinstance(value, dict):
                paths = (value.get("sources") or {}).get("Paths") or ()
                for path in paths:
                    found = path.get("inner") if isinstance(path, dict) else path
                    if isinstance(found, str):
                        yield found
            yield from _scanned(value)
    elif isinstance(plan, list):
        for item in plan:
            yield from _scanned(item)


def _pytz_rule(obj: Any) -> Rule | None:
    if type(obj).__name__ == "_FixedOffset":  # pytz.FixedOffset(-300): its minutes
        return _VALUE, "pytz.FixedOffset", obj._minutes
    zone = getattr(obj, "zone", None)
    if not isinstance(zone, str):
        return None
    # A localized zone object holds one offset (EDT or EST); times ask it, not the calendar.
    state = tuple(getattr(obj, name, None) for name in ("_utcoffset", "_dst", "_tzname"))
    return _VALUE, "pytz", (zone, state)


def _dateutil_rule(obj: Any) -> Rule | None:
    """dateutil's zones by what decides their offsets: a zone file by its transitions (two
    machines' tzdata may differ under one file name), a fixed offset by its name and offset,
    ``tzlocal()`` by the machine's zone."""
    kind = type(obj).__name__
    if kind == "weekday":  # FR(3), as a pandas DateOffset's weekday= holds it
        return _VALUE, "dateutil.weekday", (obj.weekday, obj.n)
    if kind == "relativedelta":
        return (
            _VALUE,
            "dateutil.relativedelta",
            tuple(getattr(obj, name) for name in _RELATIVEDELTA_FIELDS),
        )
    if kind == "tzutc":
        return _VALUE, "dateutil.tzutc", None
    if kind == "tzoffset":
        return _VALUE, "dateutil.tzoffset", (obj._name, obj._offset)
    if kind == "tzlocal":
        return _VALUE, "dateutil.tzlocal", _zone_kind(obj)
    if kind == "tzfile":
        periods = tuple(
            tuple(getattr(period, name) for name in _TTINFO_FIELDS) for period in obj._ttinfo_list
        )
        order = tuple(obj._ttinfo_list.index(period) for period in obj._trans_idx)
        # Not its file name: a zone read from a stream names the stream's address.
        return _VALUE, "dateutil.tzfile", (obj._trans_list_utc, order, periods)
    return None


_TTINFO_FIELDS: Final = ("offset", "delta", "isdst", "abbr", "isstd", "isgmt", "dstoffset")
# What a relativedelta adds (the plural fields) and sets (the singular ones, and weekday).
_RELATIVEDELTA_FIELDS: Final = (
    *("years", "months", "days", "leapdays", "hours", "minutes", "seconds", "microseconds"),
    *("year", "month", "day", "weekday", "hour", "minute", "second", "microsecond"),
)


def _numba_rule(obj: Any) -> Rule | None:
    """A jitted function by the Python function it compiles and how it compiles it
    (`numba_options`): its pickle holds a random id per process, so every process would key
    it anew."""
    py_func = getattr(obj, "py_func", None)
    if not isinstance(py_func, types.FunctionType) or numba_options(obj) is None:
        return None
    return _VALUE, f"numba:{_name(type(obj))}", (py_func, numba_options(obj))


def numba_options(obj: Any) -> tuple[Any, ...] | None:
    """How a numba dispatcher compiles: its options (``fastmath``, ``error_model``...), its
    ``locals``, and the signatures it was given to compile at once (those it compiles lazily,
    at calls, follow from the arguments); None for another object."""
    options = getattr(obj, "targetoptions", None)
    if not isinstance(options, dict):
        return None
    given = () if getattr(obj, "_can_compile", True) else tuple(map(str, obj.signatures))
    typed = sorted((str(k), str(v)) for k, v in (getattr(obj, "locals", None) or {}).items())
    return (sorted((str(k), repr(v)) for k, v in options.items()), typed, given)


def _scipy_rule(obj: Any) -> Rule | None:
    """A scipy.stats distribution by its parameters, with numpy's global generator (the
    default ``random_state``, seeded afresh in every process) named, not read: a draw from it
    counts where a call makes one, as any library's draw does (docs/code_fingerprint.md)."""
    stats = sys.modules.get("scipy.stats")
    if stats is None:
        return None
    if isinstance(obj, stats.rv_continuous | stats.rv_discrete):
        # Its parameters; the methods it binds to itself (vectorized pdf, moments) are its
        # class's code, which counts by the class (scipy's version, or the user's code).
        state = {k: v for k, v in obj.__getstate__().items() if not callable(v)}
        state["_random_state"] = _random_state(obj.__getstate__().get("_random_state"))
        return _VALUE, f"scipy.stats:{_name(type(obj))}", _with_code(type(obj), state)
    frozen = getattr(stats.distributions, "rv_frozen", None)
    if frozen is not None and isinstance(obj, frozen):
        return _VALUE, f"scipy.stats.frozen:{_name(type(obj))}", (obj.dist, obj.args, obj.kwds)
    return None


def _random_state(generator: Any) -> Any:
    import numpy as np

    if generator is np.random.mtrand._rand:
        return "numpy's global generator"
    return generator


def _backtesting_rule(obj: Any) -> Rule | None:
    """backtesting.py's ``Backtest``: what its runs depend on (the data, the broker's settings,
    the strategy class, ``finalize_trades``), without the statistics of its last run, which
    ``run`` replaces and never reads: a Backtest reused across a sweep keeps its key."""
    if _name(type(obj)) != "backtesting.backtesting.Backtest":
        return None
    state = sorted((k, v) for k, v in vars(obj).items() if k != "_results")
    return _VALUE, "backtesting.Backtest", state


def _sqlalchemy_rule(obj: Any) -> Rule | None:
    """A SQLAlchemy expression (a column, a table, a select): its SQL and bound parameters as
    the default dialect compiles them. Its pickle is no fingerprint: the comparators and caches
    it builds as it is used change it, and may make it unpicklable."""
    from sqlalchemy.sql import ClauseElement

    if not isinstance(obj, ClauseElement):
        return None
    try:
        compiled = obj.compile()
        params = sorted(compiled.params.items())
        # The SQL names no types, and a table's own columns only where it is selected from.
        kind = getattr(obj, "type", None)
        columns = getattr(obj, "selected_columns", None)
        if columns is None:
            columns = getattr(obj, "c", ())
        typed = [(str(c.key), _sql_type(c.type)) for c in columns]
    except Exception:  # one that compiles only against a dialect or engine: its pickle, then
        return None
    shown = (str(compiled), params, _sql_type(kind) if kind is not None else None, typed)
    return _VALUE, f"sqlalchemy.{type(obj).__qualname__}", shown


def _sql_type(kind: Any) -> Any:
    """A column's type: its repr, and, for a type of the user's (a ``TypeDecorator`` converting
    values), its class's code too."""
    from afml_cache.codehash import _is_user_class, class_code

    cls = type(kind)
    return (repr(kind), class_code(cls)) if _is_user_class(cls) else repr(kind)


_LIBRARY_RULES: dict[str, Callable[[Any], Rule | None]] = {
    "backtesting": _backtesting_rule,
    "numpy": _numpy_rule,
    "pandas": _pandas_rule,
    "polars": _polars_rule,
    "pyarrow": _pyarrow_rule,
    "pytz": _pytz_rule,
    "dateutil": _dateutil_rule,
    "numba": _numba_rule,
    "sqlalchemy": _sqlalchemy_rule,
}
