"""What a code object refers to, read from its bytecode, and its digest without docstrings."""

from __future__ import annotations

import collections
import dis
import functools
import inspect
import sys
import types
from collections.abc import Iterator
from typing import Any, Final

from afml_cache._core import fingerprint
from afml_cache.fingerprinting import _code_parts

_COMPREHENSIONS: Final = frozenset({"<listcomp>", "<setcomp>", "<dictcomp>", "<genexpr>"})
_CO_HAS_DOCSTRING: Final = 0x4000000  # Python 3.14+

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


@functools.lru_cache(maxsize=4096)
def _changes(
    code: types.CodeType, name: str, rebinding: bool = True, accumulating: bool = False
) -> bool:
    """Whether ``code`` (or the code nested in it) changes the container a local, argument or
    free variable ``name`` holds: ``cache[key] = value``, ``counts[key] += 1``, ``del
    cache[key]``, ``cache.setdefault(...)``, ``sink.append(x)``, ``weights.sort()``; with
    ``rebinding``, binds the cell again too (``nonlocal calls; calls += 1``). With
    ``accumulating``, only the changes that grow or drain it as it runs (a memo's store under
    a computed key, an append): not those that leave it as they found it the second time (a
    sort, a default filled in, a store under a constant key). What a wrapper or a helper
    changes as it runs is its state (a memo, a sink for timings), not a setting it was made
    with."""
    for c in _code_objects(code):
        instructions = list(dis.get_instructions(c))
        for i, ins in enumerate(instructions):
            if ins.argval != name:
                continue
            if rebinding and ins.opname in ("STORE_DEREF", "DELETE_DEREF"):
                return True
            if ins.opname not in ("LOAD_FAST", "LOAD_DEREF", "LOAD_CLOSURE"):
                continue
            change = _changed_at(instructions, i)
            if change is not None and (not accumulating or change in _ACCUMULATES):
                return True
    return False


def _changed_at(instructions: list[dis.Instruction], i: int) -> str | None:
    """How the container loaded at ``i`` is changed by what follows: the name of a method that
    changes it called on it, ``"store"`` for a subscript stored into or deleted from it under
    a computed key, ``"constant key"`` under a constant one; None if it is not (its place on
    the stack followed until the store, through COPY and SWAP, or until something takes it)."""
    following = instructions[i + 1] if i + 1 < len(instructions) else None
    if following is not None and following.opname in _LOADS_ATTR:
        return following.argval if following.argval in _CHANGES else None
    at = 0  # how far below the top of the stack the container is
    for k in range(i + 1, len(instructions)):
        ins = instructions[k]
        if ins.opname in ("STORE_SUBSCR", "DELETE_SUBSCR"):
            if at != 1:  # not the container under the key
                return None
            return "constant key" if instructions[k - 1].opname == "LOAD_CONST" else "store"
        if ins.opname.startswith(("JUMP", "POP_JUMP", "RETURN", "FOR_ITER", "YIELD", "SEND")):
            return None
        if ins.opname == "SWAP":
            at = ins.arg - 1 if at == 0 else 0 if at == ins.arg - 1 else at
            continue
        if ins.opname == "COPY":
            at += 1
            continue
        try:
            effect = dis.stack_effect(ins.opcode, ins.arg, jump=False)
        except ValueError:
            effect = dis.stack_effect(ins.opcode)
        two = ins.opname == "LOAD_METHOD" or (ins.opname == "LOAD_GLOBAL" and ins.arg & 1)
        if (2 if two else 1) - effect > at:  # may take the container (counted high: no guess)
            return None
        at += effect
    return None


# Methods that change a list, set, dict or deque in place.
_CHANGES: Final = _WRITES | {
    "setdefault", "pop", "popitem", "popleft", "remove", "discard", "move_to_end", "sort",
    "reverse", "__setitem__", "__delitem__", "__iadd__",
}  # fmt: skip
# The changes that grow or drain a container as it runs (a memo, a sink), rather than leave it
# as they found it the second time (a sort, a default filled in).
_ACCUMULATES: Final = frozenset(
    {
        "store", "append", "extend", "insert", "add", "appendleft", "extendleft", "pop",
        "popitem", "popleft", "remove", "discard", "clear", "__setitem__", "__delitem__",
        "__iadd__",
    }
)  # fmt: skip


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


# --- the environment variables a code object reads ------------------------------------------------

_ENVIRONMENT_NAMES: Final = frozenset({"environ", "environb", "getenv", "getenvb"})
_ENVIRONMENT_MAPPINGS: Final = frozenset({"environ", "environb"})
_LOADS: Final = _LOADS_GLOBAL | _LOADS_LOCAL | _LOADS_ATTR


@functools.lru_cache(maxsize=4096)
def _environment_variables(
    code: types.CodeType, names: frozenset[tuple[str, bool]]
) -> tuple[str, ...] | None:
    """The environment variables ``code`` reads by constant names through ``names`` (each a
    name it loads ``os.environ`` (True) or ``os.getenv`` (False) by: ``environ``, ``getenv``,
    an alias, a global holding it): ``os.environ["K"]``, ``os.environ.get("K")``,
    ``os.getenv("K")``, ``"K" in os.environ``; None when it reads the environment any other way
    (``dict(os.environ)``, a name it computes) or by a name not in ``names`` (an alias bound in
    its body), so that no read is found. Another object's ``environ`` only adds a name."""
    mappings = {name: is_mapping for name, is_mapping in names}
    found: dict[str, None] = {}
    for c in _code_objects(code):
        instructions = list(dis.get_instructions(c))
        for i, ins in enumerate(instructions):
            if ins.opname not in _LOADS or ins.argval not in mappings:
                continue
            start = i
            while start > 0 and instructions[start].opname in _LOADS_ATTR:
                start -= 1  # `os.environ`: the chain starts at `os`
            subscript = mappings[ins.argval]
            after = i + 1
            if subscript and _is(instructions, after, _LOADS_ATTR, "get"):
                subscript, after = False, after + 1
            name = _constant_key(instructions, after, subscript)
            if name is None and _is(instructions, after, {"CONTAINS_OP"}):
                name = _constant(instructions, start - 1)
            if name is None:
                return None
            found[name] = None
    return tuple(sorted(found)) if found else None


def _constant_key(instructions: list[dis.Instruction], at: int, subscript: bool) -> str | None:
    """The string constant at ``at`` if it is the whole key of a subscript or the whole first
    argument of a call (``environ["K"]``, ``getenv("K")``, ``getenv("K", "default")``; not
    ``environ["K" + suffix]``)."""
    name = _constant(instructions, at)
    if name is None:
        return None
    if subscript:
        whole = _is(instructions, at + 1, {"BINARY_SUBSCR", "STORE_SUBSCR", "DELETE_SUBSCR"})
    else:
        call = at + 2 if _is(instructions, at + 1, {"LOAD_CONST"}) else at + 1
        whole = _is(instructions, call, {"PRECALL", "CALL"})
    return name if whole else None


def _constant(instructions: list[dis.Instruction], at: int) -> str | None:
    if _is(instructions, at, {"LOAD_CONST"}) and isinstance(instructions[at].argval, str):
        return str(instructions[at].argval)
    return None


def _is(instructions: list[dis.Instruction], at: int, opnames: Any, argval: Any = None) -> bool:
    """Whether instruction ``at`` exists, is one of ``opnames``, and has ``argval`` (if given)."""
    if not 0 <= at < len(instructions) or instructions[at].opname not in opnames:
        return False
    return argval is None or instructions[at].argval == argval
