"""Which code is the user's own (and is walked), and the versions of the libraries that are
not (which count by name and version). The rules are in ``docs/code_fingerprint.md``."""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.machinery
import importlib.metadata
import logging
import os
import site
import sys
import sysconfig
import types
import weakref
from collections.abc import Iterator

_log = logging.getLogger("afml_cache")


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
    # afml_cache itself: the package this module's folder sits in.
    roots.add(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
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
    """The functions written in the class's body: not those its metaclass put there (an Enum
    gets enum's ``_generate_next_value_``), nor functions assigned to it. A decorated method
    is the function it wraps: a wrapper (a cached method, a ``contextmanager``) carries the
    method's names, but its code is the decorator's, in the decorator's module."""
    own = f"{cls.__qualname__}."
    for value in vars(cls).values():
        if isinstance(value, staticmethod | classmethod):
            value = value.__func__
        elif isinstance(value, property):
            value = value.fget
        for _ in range(16):  # wrappers of wrappers; a loop of __wrapped__ must end
            inner = (
                getattr(value, "__wrapped__", None) if type(value) is types.FunctionType else None
            )
            if type(inner) is not types.FunctionType:
                break
            value = inner
        if type(value) is types.FunctionType and value.__code__.co_qualname.startswith(own):
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
    # own methods say where it was written, once per class (a list of a notebook's records
    # asks for each one).
    try:
        return _UNREGISTERED_CLASSES[cls]
    except (KeyError, TypeError):  # not seen yet, or a metaclass that makes it unhashable
        pass
    found = next((_is_user_function(fn) for fn in _class_functions(cls)), None)
    if found is None:
        found = module_name == "__main__" or not _is_stdlib_name(module_name)
    with contextlib.suppress(TypeError):
        _UNREGISTERED_CLASSES[cls] = found
    return found


_UNREGISTERED_CLASSES: weakref.WeakKeyDictionary[type, bool] = weakref.WeakKeyDictionary()


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
    standard library; None when none is found. An extension built in the project counts by
    its file's bytes too (`_file_version`): a rebuild keeps the package's version."""
    version = _package_version(module_name)
    module = sys.modules.get(module_name)
    file = getattr(module, "__file__", None)
    if version is None:
        return _file_version(module)
    if isinstance(file, str) and file.endswith(_EXTENSIONS) and _is_user_path(file):
        return f"{version} {_file_version(module)}"
    return version


_EXTENSIONS = tuple(importlib.machinery.EXTENSION_SUFFIXES)


def _package_version(module_name: str) -> str | None:
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


def _file_version(module: types.ModuleType | None) -> str | None:
    """A module of no distribution and no version, by the bytes of its file: an extension
    built in the project (C, Cython, pybind11), whose functions cannot be read as code, is
    another after a rebuild. Read once, as its code was loaded once."""
    file = getattr(module, "__file__", None)
    if not isinstance(file, str):
        return None
    try:
        with open(file, "rb") as f:
            return "file " + hashlib.file_digest(f, "sha256").hexdigest()
    except OSError:
        return None


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


def _defining_module(fn: types.FunctionType) -> str:
    """The module whose code defined ``fn`` (``__module__`` may have been copied by wraps);
    ``""`` for code run by ``exec``/``eval`` in a namespace of its own (``sympy.lambdify``, a
    strategy built from a formula), which belongs to no module: the user's, not ``builtins``."""
    name = fn.__globals__.get("__name__")
    if isinstance(name, str):
        return name
    module = getattr(fn, "__module__", None)
    return module if isinstance(module, str) else ""
