"""What each ``afml-cache`` command does, one ``run_*`` function per command.

`afml_cache.cli` parses the arguments and calls these with the parsed ``argparse.Namespace``;
a command returns its exit code or raises `Failure`, whose message the command line shows.
"""

from __future__ import annotations

import argparse
import json
import logging
import re
import shutil
import signal
import sys
import tarfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from afml_cache import config
from afml_cache._store import EntryInfo
from afml_cache.cache import Cache
from afml_cache.errors import CacheError
from afml_cache.monitoring import names_like
from afml_cache.report import MB, format_size, format_when

OK, PROBLEMS, USAGE, UNUSABLE, INTERRUPTED = 0, 1, 2, 3, 130
# The command never evicts on its own: only `prune` removes entries to fit a size.
_NO_LIMIT = 2**62
_log = logging.getLogger("afml_cache")


class Failure(Exception):
    """A failure the command explains itself: the message goes to stderr (and, with ``--json``,
    into a JSON document on stdout), and the process exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


# --- shared pieces ----------------------------------------------------------------------------


def _open_cache(args: argparse.Namespace, *, create: bool = False) -> Cache:
    """The cache in ``--dir`` (or the configured directory), which must already be an
    afml-cache directory unless ``create``; the decorators' configuration is pointed at it
    too, so the monitoring functions report on it."""
    directory = Path(args.dir).expanduser() if args.dir else config.CACHE_DIRS["base"]
    hint = "give the cache's directory with --dir, or set AFML_CACHE_DIR"
    try:
        check_directory(directory, create, hint)
    except OSError as exc:  # a directory this user may not read or search
        raise Failure(
            f"cannot read the cache directory {directory} ({exc.strerror or exc}); run the "
            "command as a user who may read it, or give another with --dir",
            UNUSABLE,
        ) from None
    try:
        cache = Cache(directory, size_limit=_NO_LIMIT)
    except (CacheError, OSError, ValueError) as exc:
        raise Failure(f"cannot use the cache directory {directory}: {exc}", UNUSABLE) from None
    config.configure(directory=directory)
    return cache


def check_directory(directory: Path, create: bool, hint: str) -> None:
    """Raises `Failure` (an `OSError` if it cannot be read) unless ``directory`` is an
    afml-cache directory (or, with ``create``, missing or empty)."""
    if not directory.exists():
        if not create:
            raise Failure(
                f"no cache at {directory}: the directory does not exist; {hint}", UNUSABLE
            )
    elif not directory.is_dir():
        raise Failure(f"{directory} is not a directory; {hint}", UNUSABLE)
    elif not (directory / "mac.key").exists():
        if not any(directory.iterdir()):
            if not create:
                raise Failure(f"{directory} holds no cache yet (it is empty); {hint}", UNUSABLE)
        else:
            # Never scatter cache files into a directory that holds something else.
            raise Failure(
                f"{directory} is not an afml-cache directory (it has no mac.key); {hint}", UNUSABLE
            )


def write_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")


# Control characters other than newline and tab (ESC, which drives a terminal, among them).
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def _write(text: str) -> None:
    # Names come from scripts' paths and users' tags: one holding ESC must not drive the
    # terminal of whoever reads the report. Shown escaped, as Python writes them.
    sys.stdout.write(_CONTROL.sub(lambda found: repr(found.group())[1:-1], text))


def _interactive_progress() -> bool:
    """Progress lines go to stderr only when a person watches it."""
    return sys.stderr.isatty()


def _count(n: int, noun: str) -> str:
    """``1 entry``, ``5 entries``, ``1,200 calls``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


# --- stats ------------------------------------------------------------------------------------


def run_stats(args: argparse.Namespace) -> int:
    from afml_cache import report
    from afml_cache.server import stats_document

    cache = _open_cache(args)
    document = stats_document(cache)
    if args.json:
        write_json(document)
        return OK
    store, rows = document["store"], document["functions"]
    _write(
        f"Cache directory: {document['directory']}\n"
        f"  {_count(store['count'], 'entry')}, {format_size(store['bytes'])}; "
        f"{store['evictions']:,} evicted so far\n\n"
    )
    if not rows:
        _write("No cached function has been called with this cache directory yet.\n")
        return OK
    width = max(len("function"), *(len(name) for name in rows))
    _write(
        f"{'function':<{width}} {'calls':>8} {'hits':>8} {'misses':>8} {'hit rate':>9} "
        f"{'avg compute':>12} {'saved':>9} {'MB':>9} {'hit p50':>9} {'miss p50':>9}  "
        "last used (UTC)\n"
    )
    for name, row in rows.items():
        _write(
            f"{name:<{width}} {row['total_calls']:>8,} {row['cache_hits']:>8,} "
            f"{row['cache_misses']:>8,} {row['hit_rate']:>9.1%} "
            f"{report.format_latency(row['avg_computation_time']):>12} "
            f"{report.format_duration(row['time_saved']):>9} {row['cache_size_mb']:>9,.2f} "
            f"{report.format_latency(row.get('hit_latency_p50')):>9} "
            f"{report.format_latency(row.get('miss_latency_p50')):>9}  "
            f"{format_when(row['last_accessed'])}\n"
        )
    calls = sum(r["total_calls"] for r in rows.values())
    hits = sum(r["cache_hits"] for r in rows.values())
    saved = sum(r["time_saved"] for r in rows.values())
    _write(
        f"\n{_count(len(rows), 'function')}, {_count(calls, 'call')}, "
        f"hit rate {hits / calls if calls else 0.0:.1%}, "
        f"{report.format_duration(saved)} saved\n"
    )
    return OK


# --- health -----------------------------------------------------------------------------------


def run_health(args: argparse.Namespace) -> int:
    from afml_cache.monitoring import get_cache_health

    cache = _open_cache(args)
    count = cache.stats()["count"]
    if _interactive_progress():
        sys.stderr.write(f"afml-cache health: verifying {count:,} entries in {cache.directory}\n")
    problems = cache.check(fix=args.fix)
    health = get_cache_health()
    unfixed = [p for p in problems if not p["fixed"]]
    if args.json:
        write_json(
            {
                "directory": str(cache.directory),
                "entries": cache.stats()["count"],
                "problems": problems,
                "fixed": sum(p["fixed"] for p in problems),
                "report": _health_summary(health, unfixed),
            }
        )
    else:
        _write(_problems_text(problems, args.fix, cache.stats()["count"]) + "\n" + str(health))
        _write("\n")
    return PROBLEMS if problems else OK


def _problems_text(problems: list[dict[str, Any]], fix: bool, entries: int) -> str:
    if not problems:
        return f"Verified every entry ({entries:,}): no problems.\n"
    fixed = sum(p["fixed"] for p in problems)
    lines = [f"Found {len(problems)} problem(s); {fixed} fixed:"]
    for p in problems:
        lines.append(f"  {'fixed' if p['fixed'] else 'NOT FIXED'}: {p['path']}: {p['problem']}")
    if not fix:
        lines.append("Run `afml-cache health --fix` to remove damaged entries and temp files.")
    return "\n".join(lines) + "\n"


def _health_summary(health: Any, unfixed: list[dict[str, Any]]) -> dict[str, Any]:
    def names(rows: Sequence[dict[str, Any]]) -> list[str]:
        return [r["function_name"] for r in rows]

    return {
        "functions": len(health.functions),
        "total_calls": health.total_calls,
        "cache_hits": health.cache_hits,
        "hit_rate": health.hit_rate,
        "size_bytes": health.size_bytes,
        "time_saved": health.time_saved,
        "top_performers": names(health.top_performers),
        "worst_performers": names(health.worst_performers),
        "stale_caches": names(health.stale_caches),
        "patterns": health.patterns,
        "recommendations": (
            [f"Run `afml-cache health --fix`: {len(unfixed)} problem(s) found in the entries."]
            if unfixed
            else []
        )
        + health.recommendations,
    }


# --- clear ------------------------------------------------------------------------------------


def run_clear(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    if args.function is None and args.tag is None and args.older_than is None:
        return _clear_everything(cache, args)
    entries = cache.scan(None)
    if args.function is not None:
        _check_function_name(cache, entries, args.function)
        entries = _function_entries(cache, args.function, entries)
    cutoff = time.time() - args.older_than if args.older_than is not None else None
    chosen = [
        e
        for e in entries
        if (args.tag is None or args.tag in e.tags) and (cutoff is None or e.created < cutoff)
    ]
    removed, size, errors = 0, 0, []
    for entry in chosen:
        try:
            if cache.namespaced(entry.namespace).by_digest.delete(entry.digest):
                removed += 1
                size += entry.size
        except OSError as exc:
            errors.append(f"{entry.path}: {exc}")
    if args.json:
        write_json(
            {
                "directory": str(cache.directory),
                "entries_removed": removed,
                "bytes_removed": size,
                "errors": errors,
            }
        )
    else:
        _write(
            f"Removed {_count(removed, 'entry')} ({format_size(size)}) from {cache.directory}.\n"
        )
        for error in errors:
            sys.stderr.write(f"afml-cache clear: could not remove {error}\n")
    return PROBLEMS if errors else OK


def _function_entries(cache: Cache, name: str, entries: list[EntryInfo]) -> list[EntryInfo]:
    """The entries of the function ``name`` among ``entries`` (a scan of the directory): of its
    namespace, and the backtest runs it stored, which live in the backtests' namespaces."""
    from afml_cache.backtest_runs import entries_by_function

    runs = {(e.namespace, e.digest) for e in entries_by_function(cache).get(name, [])}
    return [e for e in entries if e.namespace == name or (e.namespace, e.digest) in runs]


def _check_function_name(cache: Cache, entries: list[EntryInfo], name: str) -> None:
    """A name that is neither among the entries nor the statistics is a typo, not 'nothing to
    clear': say so, with the names that end like it."""
    from afml_cache.backtest_runs import entries_by_function

    known = {e.namespace for e in entries}
    known |= {raw.namespace for raw in cache.function_stats()}
    known |= set(entries_by_function(cache))
    if name in known:
        return
    alike = names_like(name, known)
    hint = f" (did you mean {', '.join(alike)}?)" if alike else ""
    raise Failure(
        f"no cached function is named {name!r} in {cache.directory}{hint}; give the qualified "
        "name (module.qualname) as `afml-cache stats` shows it",
        USAGE,
    )


def _clear_everything(cache: Cache, args: argparse.Namespace) -> int:
    count, size = cache.stats()["count"], cache.volume()
    if not args.yes:
        if not sys.stdin.isatty():
            raise Failure(
                "removing every entry needs --yes when not run from a terminal (or narrow it "
                "with --function, --tag or --older-than)",
                USAGE,
            )
        sys.stderr.write(
            f"Remove all {count:,} entries ({format_size(size)}) and the statistics from "
            f"{cache.directory}? [y/N] "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip().lower() not in ("y", "yes"):
            raise Failure("not confirmed; nothing was removed", PROBLEMS)
    try:
        removed = config.clear_afml_cache(warn=False)
    except OSError as exc:
        raise Failure(f"could not clear {cache.directory}: {exc}", PROBLEMS) from None
    # What is still there: a directory this user may read but not write keeps it all, and
    # clearing said nothing.
    left, freed = len(cache.scan()), size - cache.volume()
    errors = []
    if left:
        errors.append(
            f"could not remove {_count(left, 'entry')} from {cache.directory} (do you have "
            "write permission there?)"
        )
    if args.json:
        write_json(
            {
                "directory": str(cache.directory),
                "entries_removed": removed,
                "bytes_removed": freed,
                "errors": errors,
            }
        )
    else:
        _write(
            f"Removed {_count(removed, 'entry')} ({format_size(freed)}) and the statistics from "
            f"{cache.directory}.\n"
        )
        for error in errors:
            sys.stderr.write(f"afml-cache clear: {error}\n")
    return PROBLEMS if errors else OK


# --- prune ------------------------------------------------------------------------------------


def run_prune(args: argparse.Namespace) -> int:
    from afml_cache.maintenance import maintain_cache

    if args.max_size is None and args.max_age is None:
        raise Failure("say what to prune to: --max-size SIZE and/or --max-age AGE", USAGE)
    cache = _open_cache(args)
    before = cache.volume()
    result = maintain_cache(
        auto_clear=not args.dry_run,
        max_size_mb=args.max_size / MB if args.max_size is not None else None,
        max_age_days=args.max_age / 86400 if args.max_age is not None else None,
    )
    cleared = round(result["size_cleared_mb"] * MB)
    # A dry run removed nothing: what would remain is what is there less what would go.
    after = before - cleared if args.dry_run else cache.volume()
    document = {"directory": str(cache.directory), **result, "bytes_after": after}
    if args.json:
        write_json(document)
    else:
        verb = "Would remove" if args.dry_run else "Removed"
        reasons = ", ".join(
            f"{n:,} {why.replace('_', ' ')}" for why, n in result["reasons"].items()
        )
        rest = (
            f"{format_size(after)} would remain of {format_size(before)}"
            if args.dry_run
            else f"{format_size(after)} remain"
        )
        _write(
            f"{verb} {_count(result['entries_removed'], 'entry')} "
            f"({format_size(cleared)}{'; ' + reasons if reasons else ''}) "
            f"from {cache.directory}; {rest}.\n"
        )
        for error in result["errors"]:
            sys.stderr.write(f"afml-cache prune: {error}\n")
    return PROBLEMS if result["errors"] else OK


# --- export, import, report -------------------------------------------------------------------


def run_export(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    if args.function is not None:
        entries = cache.scan(None)
        _check_function_name(cache, entries, args.function)
        entries = _function_entries(cache, args.function, entries)
    try:
        if args.function is not None:
            count = cache.export(args.file, entries=entries)
        else:
            count = cache.export(args.file, every_namespace=True)
    except (OSError, tarfile.TarError) as exc:
        raise Failure(f"could not write {args.file}: {exc}", PROBLEMS) from None
    if args.json:
        write_json({"directory": str(cache.directory), "file": args.file, "entries": count})
    else:
        _write(f"Exported {_count(count, 'entry')} from {cache.directory} to {args.file}.\n")
    return OK


def run_import(args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        raise Failure(f"{args.file} is not a file; give an archive written by export", USAGE)
    directory = Path(args.dir).expanduser() if args.dir else config.CACHE_DIRS["base"]
    made_here = not directory.exists()
    cache = _open_cache(args, create=True)
    try:
        count = cache.import_(args.file)
    except CacheError as exc:  # it names the archive, the member and what is wrong
        if made_here:  # nothing was imported: leave no cache where there was none
            shutil.rmtree(cache.directory, ignore_errors=True)
        raise Failure(str(exc), PROBLEMS) from None
    if args.json:
        write_json({"directory": str(cache.directory), "file": args.file, "entries": count})
    else:
        _write(f"Imported {_count(count, 'entry')} from {args.file} into {cache.directory}.\n")
    return OK


def run_report(args: argparse.Namespace) -> int:
    from afml_cache.monitoring import get_cache_monitor

    suffix = Path(args.file).suffix.lower()
    if suffix not in (".html", ".htm", ".csv"):
        raise Failure(
            f"cannot tell the report format of {args.file!r}; name it FILE.html or FILE.csv",
            USAGE,
        )
    cache = _open_cache(args)
    try:
        written = get_cache_monitor().export_report(args.file)
    except OSError as exc:
        raise Failure(f"could not write {args.file}: {exc}", PROBLEMS) from None
    if args.json:
        write_json({"directory": str(cache.directory), "file": str(written)})
    else:
        _write(f"Wrote the report of {cache.directory} to {written}.\n")
    return OK


def run_backtests(args: argparse.Namespace) -> int:
    from afml_cache.backtest_cache import BacktestCache, backtests_command

    backtests = BacktestCache(_open_cache(args))
    try:
        document, text = backtests_command(
            backtests, args.strategy, args.best, args.top, args.report
        )
    except (KeyError, ValueError) as exc:
        raise Failure(str(exc.args[0]), USAGE) from None
    except OSError as exc:
        raise Failure(f"could not write {args.report}: {exc}", PROBLEMS) from None
    if args.json:
        write_json(document)
    else:
        _write(text)
    return OK


# --- warm, serve ------------------------------------------------------------------------------


def run_warm(args: argparse.Namespace) -> int:
    from afml_cache.warming import failure_lines, failures, load_warmup, run_warmup, summary

    if args.dir:
        _open_cache(args, create=True)
    try:
        reports = run_warmup(load_warmup(args.warmup))
    except ValueError as exc:
        raise Failure(str(exc), USAGE) from None
    except Exception as exc:
        _log.error("warm: %s raised", args.warmup, exc_info=True)
        raise Failure(f"{args.warmup} raised {type(exc).__name__}: {exc}", PROBLEMS) from None
    if args.json:
        write_json({"warmup": args.warmup, "failed": failures(reports), "reports": reports})
    else:
        _write(summary(reports))
    sys.stderr.write(failure_lines(reports))
    return PROBLEMS if failures(reports) else OK


def run_serve(args: argparse.Namespace) -> int:
    from afml_cache.server import admin_from, audit_on_stderr, is_loopback, make_server

    cache = _open_cache(args)
    try:
        admin = admin_from(args.token_file, args.warmup) if args.admin else None
    except ValueError as exc:
        raise Failure(str(exc), USAGE) from None
    except (CacheError, OSError) as exc:
        raise Failure(f"the admin token cannot be used: {exc}", UNUSABLE) from None
    if not is_loopback(args.host):
        sys.stderr.write(
            f"afml-cache serve: warning: listening on {args.host or 'every address'}, not "
            "loopback: anyone who can reach this machine can read the cache's statistics "
            "(function names, sizes, timings)"
            + ("; the admin token travels in clear: put a TLS proxy in front\n" if admin else "\n")
        )
    try:
        server = make_server(cache, args.host, args.port, admin=admin)
    except OSError as exc:
        raise Failure(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; choose another "
            "--port or --host",
            PROBLEMS,
        ) from None
    _write(
        f"afml-cache: serving {cache.directory} at {server.url} (metrics, health, stats); "
        "Ctrl-C stops\n"
    )
    if admin is not None:
        _write(f"afml-cache: admin endpoints on; the token is in {admin.token_file}\n")
    sys.stdout.flush()
    restore = _stop_on_sigterm()
    try:
        with audit_on_stderr():
            server.serve_forever()
    except KeyboardInterrupt:
        pass  # the way to stop a server: a clean exit, not an error
    finally:
        server.server_close()
        restore()
    return OK


def _stop_on_sigterm() -> Callable[[], None]:
    """Makes SIGTERM (systemd, docker stop) stop the server like Ctrl-C; returns the undo."""
    if threading.current_thread() is not threading.main_thread():
        return lambda: None

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)

    def restore() -> None:
        signal.signal(signal.SIGTERM, previous)

    return restore
