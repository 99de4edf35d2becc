"""The code fingerprint of a function: a digest of what it computes, for cache keys.

The package reads in four parts: `scope` (which code is the user's own; library versions),
`bytecode` (what a code object refers to), `values` (how each value it reaches counts) and
`walk` (the walk, the cache of its nodes and the answers below).

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
attribute chain, a closure cell, a default, a class attribute). The defaults tuple is held and
compared by identity (an id alone let a tuple set twice take its freed address back), and the
keyword defaults by their dict and items, so editing ``__kwdefaults__`` in place is noticed too.

A repeated call for a function with five helpers costs one dictionary lookup and identity test
per reference and no hashing, plus reading each live value; the first call per function reads
its bytecode and hashes it (once, plus the first lookup of library versions).

Concurrent calls from several threads are safe without a lock: the caches are only read and
replaced whole, every node's digest is a pure function of what it was computed from, and two
threads computing the same node store equal values.
"""

# The private names (`x as x`) are re-exported for fingerprinting.py and the tests.
from afml_cache.codehash.bytecode import _written_only as _written_only
from afml_cache.codehash.scope import _is_user_class as _is_user_class
from afml_cache.codehash.scope import _is_user_function as _is_user_function
from afml_cache.codehash.scope import _is_user_module as _is_user_module
from afml_cache.codehash.scope import _is_user_path as _is_user_path
from afml_cache.codehash.scope import _version_of as _version_of
from afml_cache.codehash.values import _frompyfunc_function as _frompyfunc_function
from afml_cache.codehash.walk import _walk as _walk
from afml_cache.codehash.walk import (
    argument_expressions,
    arguments_code,
    class_code,
    code_fingerprint,
    code_state,
    function_key,
    imported_code,
    module_content,
    reading_classes,
    type_code,
)

__all__ = [
    "argument_expressions",
    "arguments_code",
    "class_code",
    "code_fingerprint",
    "code_state",
    "function_key",
    "imported_code",
    "module_content",
    "reading_classes",
    "type_code",
]
