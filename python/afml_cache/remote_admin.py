"""``afml-cache stats|health|clear|prune|export|import --dir s3://bucket/prefix``: the commands
on a shared prefix of an object store.

An object store keeps no access times and no counters, so these work from the listing (size
and write time of each entry object); ``health`` and ``export`` read every entry and verify it
as a lookup would, through a scratch local directory that is removed afterwards.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Iterator
from typing import Any

from afml_cache._store import Store
from afml_cache._store.archive import import_archive, write_archive
from afml_cache._store.remote import Remote, brief, client_errors
from afml_cache.errors import CacheError
from afml_cache.report import format_size, format_when

__all__ = ["COMMANDS", "Unusable", "run"]

#: The commands that accept a remote prefix as ``--dir``.
COMMANDS = ("stats", "health", "clear", "prune", "export", "import")
OK, PROBLEMS = 0, 1
# A scratch directory holds whatever passes through it: no size limit.
_NO_LIMIT = 2**62


class Unusable(CacheError):
    """The prefix could not be used at all (not reached, refused, no credentials): what a
    missing cache directory is to the local commands."""


def run(args: argparse.Namespace) -> int:
    """Runs ``args.command`` on the prefix ``args.dir``; raises ``CacheError`` (the message says
    what to do) for what cannot be done there."""
    remote = Remote(args.dir)
    try:
        document, text, code = _COMMANDS[args.command](remote, args)
    except CacheError:
        raise  # it says what is wrong and what to do (a StoreError: the scratch directory's)
    except client_errors() as exc:
        raise Unusable(f"the remote cache {remote.url} failed: {brief(exc)}") from None
    if args.json:
        sys.stdout.write(json.dumps({"remote": remote.url, **document}, indent=2) + "\n")
    else:
        sys.stdout.write(text)
    return code


def _stats(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    entries = remote.scan()
    functions: dict[str, dict[str, Any]] = {}
    for entry in entries:
        row = functions.setdefault(entry.namespace, {"entries": 0, "bytes": 0, "last_write": 0.0})
        row["entries"] += 1
        row["bytes"] += entry.size
        row["last_write"] = max(row["last_write"], entry.written)
    total = sum(e.size for e in entries)
    document = {"count": len(entries), "bytes": total, "functions": functions}
    lines = [f"Remote cache: {remote.url}\n  {len(entries):,} entries, {format_size(total)}\n"]
    if functions:
        width = max(len("function"), *(len(name) for name in functions))
        lines.append(f"\n{'function':<{width}} {'entries':>8} {'size':>10}  last write (UTC)\n")
        for name, row in sorted(functions.items()):
            lines.append(
                f"{name:<{width}} {row['entries']:>8,} {format_size(row['bytes']):>10}  "
                f"{format_when(row['last_write'])}\n"
            )
    return document, "".join(lines), OK


def _health(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    entries = remote.scan()
    problems = []
    with _scratch() as store:
        for entry in entries:
            problem = remote.verify(store, entry)
            if problem is not None:
                if args.fix:
                    remote.remove([entry])
                problems.append({"path": entry.path, "problem": problem, "fixed": args.fix})
    document = {"entries": len(entries), "problems": problems}
    if not problems:
        text = f"Verified every entry ({len(entries):,}) in {remote.url}: no problems.\n"
    else:
        lines = [f"Found {len(problems)} damaged entries in {remote.url}:"]
        lines += [
            f"  {'removed' if args.fix else 'damaged'}: {p['path']}: {p['problem']}"
            for p in problems
        ]
        if not args.fix:
            lines.append("Run `afml-cache health --fix --dir URL` to remove them.")
        text = "\n".join(lines) + "\n"
    return document, text, PROBLEMS if problems else OK


def _clear(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    if args.tag is not None:
        raise CacheError(
            "--tag cannot select entries on a remote prefix (tags are inside the entries); "
            "use --function or --older-than"
        )
    everything = args.function is None and args.older_than is None
    if everything and not args.yes:
        raise CacheError(
            "removing every entry of a shared prefix needs --yes (or narrow it with --function "
            "or --older-than)"
        )
    entries = remote.scan(args.function)
    if args.older_than is not None:
        cutoff = time.time() - args.older_than
        entries = [e for e in entries if e.written < cutoff]
    size = sum(e.size for e in entries)
    removed = remote.clear() if everything else remote.remove(entries)
    document = {"entries_removed": removed, "bytes_removed": size}
    return document, f"Removed {removed:,} entries ({format_size(size)}) from {remote.url}.\n", OK


def _prune(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    if args.max_size is None and args.max_age is None:
        raise CacheError("say what to prune to: --max-size SIZE and/or --max-age AGE")
    doomed, left = remote.prune(args.max_size, args.max_age, dry_run=args.dry_run)
    freed = sum(e.size for e in doomed)
    document = {"entries_removed": len(doomed), "bytes_removed": freed, "bytes_after": left}
    verb = "Would remove" if args.dry_run else "Removed"
    text = (
        f"{verb} {len(doomed):,} entries ({format_size(freed)}, oldest written first) from "
        f"{remote.url}; {format_size(left)} {'would ' if args.dry_run else ''}remain.\n"
    )
    return document, text, OK


def _export(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    with _scratch() as store:
        listed = remote.scan(args.function)
        damaged = len(listed) - remote.pull(store, listed)
        count = write_archive(store, store.scan(None), args.file)
    document = {"file": args.file, "entries": count, "damaged": damaged}
    text = f"Exported {count:,} entries from {remote.url} to {args.file}.\n"
    if damaged:
        text += f"Skipped and removed {damaged:,} damaged entries.\n"
    return document, text, OK


def _import(remote: Remote, args: argparse.Namespace) -> tuple[dict[str, Any], str, int]:
    with _scratch() as store:
        import_archive(store, args.file)  # all or nothing, verified, before anything is sent
        count = remote.push(store)
    document = {"file": args.file, "entries": count}
    return document, f"Imported {count:,} entries from {args.file} into {remote.url}.\n", OK


@contextlib.contextmanager
def _scratch() -> Iterator[Store]:
    """A private local directory for entries passing through, removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="afml-cache-remote-") as directory:
        yield Store(f"{directory}/cache", _NO_LIMIT, "lru", trust_group=False)


_COMMANDS = {
    "stats": _stats,
    "health": _health,
    "clear": _clear,
    "prune": _prune,
    "export": _export,
    "import": _import,
}
