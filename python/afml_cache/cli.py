"""The ``afml-cache`` command: see, tend and serve a cache directory from a terminal or a script.

``afml-cache stats``, ``health``, ``clear``, ``prune``, ``export``, ``import``, ``report``,
``backtests``, ``serve`` and ``demo``; ``afml-cache COMMAND --help`` explains each.
Every command takes ``--dir`` and the reporting ones ``--json`` (one JSON document on stdout,
messages on stderr). Exit codes are listed in ``afml-cache --help``.

``afml-cache demo`` runs the demo in `afml_cache.demo`. The benchmark that measures this
machine beside joblib, diskcache and cachier is ``benches/bench_machine.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import re
import signal
import sys
import tarfile
import textwrap
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import afml_cache
from afml_cache import config
from afml_cache.cache import Cache, parse_size
from afml_cache.demo import run_demo
from afml_cache.errors import CacheError
from afml_cache.report import MB, format_size, format_when

OK, PROBLEMS, USAGE, UNUSABLE, INTERRUPTED = 0, 1, 2, 3, 130
# The command never evicts on its own: only `prune` removes entries to fit a size.
_NO_LIMIT = 2**62
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_log = logging.getLogger("afml_cache")

_EPILOG = """\
The cache directory is --dir, else $AFML_CACHE_DIR, else $AFML_CACHE, else
~/.cache/afml_cache (as for the decorators). Sizes are written like 500MB or 2GB
(1 KB = 1024 bytes), durations like 90m, 12h, 30d or 2w.

exit codes:
  0    success
  1    problems found or work left undone: damaged entries (health, even when
       --fix removed them), entries that could not be removed (clear, prune),
       a file that could not be written or read (export, import, report), a
       clear that was not confirmed
  2    usage error: an unknown option, a bad size or duration, an unknown function
  3    the cache directory is missing or cannot be used
  130  interrupted (Ctrl-C); `serve` exits 0 when stopped by Ctrl-C or SIGTERM
  141  the reader of the output went away (`afml-cache stats | head -1`)

examples:
  afml-cache stats                          per-function hits, misses, time saved
  afml-cache health --fix                   verify every entry, remove damaged ones
  afml-cache clear --older-than 30d         remove entries created over 30 days ago
  afml-cache prune --max-size 5GB           remove least recently used entries to fit
  afml-cache report cache.html              a self-contained HTML report with charts
  afml-cache serve --port 9464              Prometheus /metrics, /health and /stats
  afml-cache stats --json | jq '.functions | keys'
"""


class _Failure(Exception):
    """A failure the command explains itself: the message goes to stderr (and, with ``--json``,
    into a JSON document on stdout), and the process exits with ``code``."""

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return USAGE
    if args.command == "demo" and args.rows < 5_000:
        parser.error("--rows must be at least 5,000 (the pipeline needs a few days of bars)")
    with _library_messages_on_stderr():
        try:
            return int(args.run(args))
        except _Failure as failure:
            if getattr(args, "json", False):
                _write_json({"error": str(failure), "exit_code": failure.code})
            sys.stderr.write(f"afml-cache {args.command}: {failure}\n")
            return failure.code
        except KeyboardInterrupt:
            sys.stderr.write(f"\nafml-cache {args.command}: interrupted\n")
            return INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`afml-cache demo | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141


@contextlib.contextmanager
def _library_messages_on_stderr() -> Iterator[None]:
    """Shows the library's warnings (store failures) on stderr while a command runs."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setLevel(logging.WARNING)
    handler.setFormatter(logging.Formatter("afml-cache: %(message)s"))
    _log.addHandler(handler)
    try:
        yield
    finally:
        _log.removeHandler(handler)


# --- the parser -------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    """The ``afml-cache`` argument parser, every subcommand included."""
    parser = argparse.ArgumentParser(
        prog="afml-cache",
        description="Content-addressed disk cache for quant-research functions: see what a "
        "cache directory holds and saves, keep it healthy, serve its metrics.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    version = f"afml-cache {afml_cache.__version__}"
    parser.add_argument("--version", action="version", version=version)
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--dir",
        metavar="PATH",
        help="the cache directory (default: $AFML_CACHE_DIR, $AFML_CACHE or "
        f"~/.cache/afml_cache; here {config.CACHE_DIRS['base']})",
    )
    scripted = argparse.ArgumentParser(add_help=False)
    scripted.add_argument(
        "--json",
        action="store_true",
        help="print one JSON document on stdout (for scripts); messages go to stderr",
    )

    def command(name: str, summary: str, description: str, examples: str, *parents: Any) -> Any:
        sub = commands.add_parser(
            name,
            help=summary,
            description=textwrap.fill(description, 79),
            epilog="examples:\n" + examples,
            parents=[where, *parents],
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        return sub

    stats = command(
        "stats",
        "per-function statistics and the directory's counters",
        "Show every cached function's calls, hits, misses, hit rate, average compute time, "
        "time saved, size on disk and hit/miss latency (p50), read from the counters that "
        "every process using the directory updates.",
        "  afml-cache stats\n  afml-cache stats --dir /data/cache --json\n",
        scripted,
    )
    stats.set_defaults(run=_stats)

    health = command(
        "health",
        "verify every entry, then show the health report",
        "Verify every entry (its MAC, framing and location; this reads the whole cache) and "
        "show the health report: totals, top and worst performers, stale caches and "
        "recommendations. Exits 1 when damaged entries or abandoned temp files are found.",
        "  afml-cache health\n  afml-cache health --fix     # also remove what is damaged\n",
        scripted,
    )
    health.add_argument(
        "--fix",
        action="store_true",
        help="remove damaged entries and abandoned temp files, and recount the sizes",
    )
    health.set_defaults(run=_health)

    clear = command(
        "clear",
        "remove entries: all, or those of a function, a tag or an age",
        "Remove entries. Filters combine: an entry is removed when it matches every filter "
        "given. Without a filter every entry is removed, with the per-function statistics "
        "(like afml_cache.clear_afml_cache()); that asks for confirmation on a terminal and "
        "needs --yes otherwise.",
        "  afml-cache clear --function mypkg.labels.triple_barrier_labels\n"
        "  afml-cache clear --tag features --older-than 30d\n"
        "  afml-cache clear --yes             # everything, without asking\n",
        scripted,
    )
    clear.add_argument(
        "--function",
        metavar="NAME",
        help="the entries of this function, by its qualified name as `stats` shows it "
        "(module.qualname; exact, no pattern)",
    )
    clear.add_argument("--tag", metavar="TAG", help="the entries carrying this tag")
    clear.add_argument(
        "--older-than",
        metavar="AGE",
        type=_duration,
        help="the entries created more than AGE ago (30d, 12h, 90m, 3600s)",
    )
    clear.add_argument("-y", "--yes", action="store_true", help="remove everything without asking")
    clear.set_defaults(run=_clear)

    prune = command(
        "prune",
        "remove expired and least recently used entries to fit a size",
        "Remove expired entries, then (with --max-age) entries created longer ago than that, "
        "then least recently used entries until the cache takes at most --max-size. "
        "Protected entries stay until they expire. Uses afml_cache.maintain_cache.",
        "  afml-cache prune --max-size 5GB\n"
        "  afml-cache prune --max-size 500MB --max-age 30d --dry-run\n",
        scripted,
    )
    prune.add_argument(
        "--max-size", metavar="SIZE", type=_size, help="the most the entries may take (5GB)"
    )
    prune.add_argument(
        "--max-age", metavar="AGE", type=_duration, help="remove entries created before (30d)"
    )
    prune.add_argument(
        "--dry-run", action="store_true", help="report what would be removed; remove nothing"
    )
    prune.set_defaults(run=_prune)

    export = command(
        "export",
        "write the entries into an archive file",
        "Write the entries (of every function, or of one) into one archive file, which "
        "`afml-cache import` adds to another cache directory, on this machine or another. "
        "Each entry is sealed with a key kept in the archive and verified when imported.",
        "  afml-cache export cache.tar\n"
        "  afml-cache export labels.tar --function mypkg.labels.triple_barrier_labels\n",
        scripted,
    )
    export.add_argument("file", metavar="FILE", help="the archive to write (replaced if present)")
    export.add_argument("--function", metavar="NAME", help="only this function's entries")
    export.set_defaults(run=_export)

    imports = command(
        "import",
        "add the entries of an archive file",
        "Add the entries of an archive written by `afml-cache export` (the directory is "
        "created if missing). Entries under the same key are replaced. Nothing is evicted: "
        "run `afml-cache prune --max-size` afterwards if the cache must fit a size.",
        "  afml-cache import cache.tar --dir /data/cache\n",
        scripted,
    )
    imports.add_argument("file", metavar="FILE", help="an archive written by `afml-cache export`")
    imports.set_defaults(run=_import)

    report = command(
        "report",
        "write an HTML or CSV report",
        "Write a report of every cached function: FILE.html is a self-contained page (no "
        "network or scripts) with the health summary, the statistics table and charts of hit "
        "rate, size and time saved per function; FILE.csv has one row per function.",
        "  afml-cache report cache.html\n  afml-cache report cache.csv\n",
        scripted,
    )
    report.add_argument("file", metavar="FILE", help="the report to write: .html, .htm or .csv")
    report.set_defaults(run=_report)

    backtests = command(
        "backtests",
        "list cached backtest runs, the best parameters, or write their HTML report",
        "List the backtest runs cached by cached_backtest or BacktestCache: each strategy's "
        "newest runs, or with --best METRIC its top runs by that metric (sharpe_ratio finds "
        "'Sharpe Ratio'). --report FILE.html writes a self-contained page instead: the runs "
        "ranked, the top runs' equity curves, and a heatmap when two parameters vary.",
        "  afml-cache backtests\n"
        "  afml-cache backtests --strategy sma_cross --best sharpe_ratio --top 3\n"
        "  afml-cache backtests --report backtests.html --best sharpe_ratio\n",
        scripted,
    )
    backtests.add_argument("--strategy", metavar="S", help="only the runs of this strategy")
    backtests.add_argument("--best", metavar="METRIC", help="rank the runs by this metric")
    backtests.add_argument(
        "--top", metavar="N", type=int, default=10, help="how many runs to show (default 10)"
    )
    backtests.add_argument("--report", metavar="FILE", help="write the HTML report to FILE")
    backtests.set_defaults(run=_backtests)

    from afml_cache.server import DEFAULT_HOST, DEFAULT_PORT

    serve = command(
        "serve",
        "serve /metrics, /health and /stats over HTTP (read-only)",
        "Serve the cache's Prometheus metrics (/metrics; needs prometheus_client), a quick "
        "health check (/health, JSON; 503 when degraded) and the statistics (/stats, JSON). "
        "Read-only. Listens on loopback unless --host says otherwise. Ctrl-C stops it.",
        "  afml-cache serve\n  afml-cache serve --host 0.0.0.0 --port 9464   # other machines\n",
    )
    serve.add_argument(
        "--host", default=DEFAULT_HOST, help=f"the address to listen on (default {DEFAULT_HOST})"
    )
    serve.add_argument(
        "--port",
        type=_port,
        default=DEFAULT_PORT,
        help=f"the port (default {DEFAULT_PORT}; 0 picks a free one)",
    )
    serve.set_defaults(run=_serve)

    demo = commands.add_parser(
        "demo",
        help="run a cached AFML pipeline on synthetic minute bars, three times",
        description=(
            "Run an AFML pipeline on synthetic minute bars with every step cached: cold, from "
            "the cache, and after changing one parameter; then show what the keys see."
        ),
    )
    demo.add_argument(
        "--rows", type=int, default=1_500_000, help="minute bars to generate (default 1,500,000)"
    )
    demo.add_argument(
        "--dir", help="cache directory for the demo (default: a temporary one, removed after)"
    )
    demo.set_defaults(run=lambda args: run_demo(args.rows, args.dir))
    return parser


def _size(text: str) -> int:
    try:
        return parse_size(text, "size")
    except (TypeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a size; write it like 500MB, 2GB or 1.5GiB"
        ) from None


def _duration(text: str) -> float:
    """Seconds from ``30d``, ``12h``, ``90m``, ``3600s`` or ``2w``."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smhdw])\s*", text.lower())
    if match is None:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a duration; write a number and a unit: 30d, 12h, 90m, 3600s or 2w"
        )
    seconds = float(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError(f"{text!r}: the duration must be more than zero")
    return seconds


def _port(text: str) -> int:
    if not text.isdigit() or int(text) > 65535:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port; give 0 to 65535")
    return int(text)


# --- shared pieces ----------------------------------------------------------------------------


def _open_cache(args: argparse.Namespace, *, create: bool = False) -> Cache:
    """The cache in ``--dir`` (or the configured directory), which must already be an
    afml-cache directory unless ``create``; the decorators' configuration is pointed at it
    too, so the monitoring functions report on it."""
    directory = Path(args.dir).expanduser() if args.dir else config.CACHE_DIRS["base"]
    hint = "give the cache's directory with --dir, or set AFML_CACHE_DIR"
    if not directory.exists():
        if not create:
            raise _Failure(
                f"no cache at {directory}: the directory does not exist; {hint}", UNUSABLE
            )
    elif not directory.is_dir():
        raise _Failure(f"{directory} is not a directory; {hint}", UNUSABLE)
    elif not (directory / "mac.key").exists():
        if not any(directory.iterdir()):
            if not create:
                raise _Failure(f"{directory} holds no cache yet (it is empty); {hint}", UNUSABLE)
        else:
            # Never scatter cache files into a directory that holds something else.
            raise _Failure(
                f"{directory} is not an afml-cache directory (it has no mac.key); {hint}", UNUSABLE
            )
    try:
        cache = Cache(directory, size_limit=_NO_LIMIT)
    except (CacheError, OSError, ValueError) as exc:
        raise _Failure(f"cannot use the cache directory {directory}: {exc}", UNUSABLE) from None
    config.configure(directory=directory)
    return cache


def _write_json(document: Any) -> None:
    sys.stdout.write(json.dumps(document, indent=2, allow_nan=False, default=str) + "\n")


def _write(text: str) -> None:
    sys.stdout.write(text)


def _interactive_progress() -> bool:
    """Progress lines go to stderr only when a person watches it."""
    return sys.stderr.isatty()


def _count(n: int, noun: str) -> str:
    """``1 entry``, ``5 entries``, ``1,200 calls``."""
    if n == 1:
        return f"1 {noun}"
    return f"{n:,} {noun[:-1] + 'ies' if noun.endswith('y') else noun + 's'}"


# --- stats ------------------------------------------------------------------------------------


def _stats(args: argparse.Namespace) -> int:
    from afml_cache import report
    from afml_cache.server import stats_document

    cache = _open_cache(args)
    document = stats_document(cache)
    if args.json:
        _write_json(document)
        return OK
    store, rows = document["store"], document["functions"]
    _write(
        f"Cache directory: {document['directory']}\n"
        f"  {store['count']:,} entries, {format_size(store['bytes'])}; "
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
        f"\n{_count(len(rows), 'function')}, {_count(calls, 'call')}, hit rate {hits / calls:.1%}, "
        f"{report.format_duration(saved)} saved\n"
    )
    return OK


# --- health -----------------------------------------------------------------------------------


def _health(args: argparse.Namespace) -> int:
    from afml_cache.monitoring import get_cache_health

    cache = _open_cache(args)
    count = cache.stats()["count"]
    if _interactive_progress():
        sys.stderr.write(f"afml-cache health: verifying {count:,} entries in {cache.directory}\n")
    problems = cache.check(fix=args.fix)
    health = get_cache_health()
    if args.json:
        _write_json(
            {
                "directory": str(cache.directory),
                "entries": cache.stats()["count"],
                "problems": problems,
                "fixed": sum(p["fixed"] for p in problems),
                "report": _health_summary(health),
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


def _health_summary(health: Any) -> dict[str, Any]:
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
        "recommendations": health.recommendations,
    }


# --- clear ------------------------------------------------------------------------------------


def _clear(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    if args.function is None and args.tag is None and args.older_than is None:
        return _clear_everything(cache, args)
    entries = cache.scan(None)
    if args.function is not None:
        _check_function_name(cache, entries, args.function)
    cutoff = time.time() - args.older_than if args.older_than is not None else None
    chosen = [
        e
        for e in entries
        if (args.function is None or e["namespace"] == args.function)
        and (args.tag is None or args.tag in e["tags"])
        and (cutoff is None or e["created"] < cutoff)
    ]
    removed, size, errors = 0, 0, []
    for entry in chosen:
        try:
            if cache.namespaced(entry["namespace"]).delete_digest(entry["key"]):
                removed += 1
                size += entry["size"]
        except OSError as exc:
            errors.append(f"{entry['path']}: {exc}")
    if args.json:
        _write_json(
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


def _check_function_name(cache: Cache, entries: list[dict[str, Any]], name: str) -> None:
    """A name that is neither among the entries nor the statistics is a typo, not 'nothing to
    clear': say so, with the names that end like it."""
    known = {e["namespace"] for e in entries}
    known |= {raw["namespace"] for raw in cache.function_stats()}
    if name in known:
        return
    alike = sorted(n for n in known if n.endswith("." + name) or n.endswith(name))
    hint = f" (did you mean {', '.join(alike)}?)" if alike else ""
    raise _Failure(
        f"no cached function is named {name!r} in {cache.directory}{hint}; give the qualified "
        "name (module.qualname) as `afml-cache stats` shows it",
        USAGE,
    )


def _clear_everything(cache: Cache, args: argparse.Namespace) -> int:
    count, size = cache.stats()["count"], cache.volume()
    if not args.yes:
        if not sys.stdin.isatty():
            raise _Failure(
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
            raise _Failure("not confirmed; nothing was removed", PROBLEMS)
    try:
        removed = config.clear_afml_cache(warn=False)
    except OSError as exc:
        raise _Failure(f"could not clear {cache.directory}: {exc}", PROBLEMS) from None
    if args.json:
        _write_json(
            {
                "directory": str(cache.directory),
                "entries_removed": removed,
                "bytes_removed": size,
                "errors": [],
            }
        )
    else:
        _write(
            f"Removed {_count(removed, 'entry')} ({format_size(size)}) and the statistics from "
            f"{cache.directory}.\n"
        )
    return OK


# --- prune ------------------------------------------------------------------------------------


def _prune(args: argparse.Namespace) -> int:
    from afml_cache.maintenance import maintain_cache

    if args.max_size is None and args.max_age is None:
        raise _Failure("say what to prune to: --max-size SIZE and/or --max-age AGE", USAGE)
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
        _write_json(document)
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


def _export(args: argparse.Namespace) -> int:
    cache = _open_cache(args)
    if args.function is not None:
        _check_function_name(cache, cache.scan(args.function), args.function)
    try:
        if args.function is not None:
            count = cache.namespaced(args.function).export(args.file)
        else:
            count = cache.export(args.file, every_namespace=True)
    except (OSError, tarfile.TarError) as exc:
        raise _Failure(f"could not write {args.file}: {exc}", PROBLEMS) from None
    if args.json:
        _write_json({"directory": str(cache.directory), "file": args.file, "entries": count})
    else:
        _write(f"Exported {_count(count, 'entry')} from {cache.directory} to {args.file}.\n")
    return OK


def _import(args: argparse.Namespace) -> int:
    if not Path(args.file).is_file():
        raise _Failure(f"{args.file} is not a file; give an archive written by export", USAGE)
    cache = _open_cache(args, create=True)
    try:
        count = cache.import_(args.file)
    except CacheError as exc:  # it names the archive, the member and what is wrong
        raise _Failure(str(exc), PROBLEMS) from None
    if args.json:
        _write_json({"directory": str(cache.directory), "file": args.file, "entries": count})
    else:
        _write(f"Imported {_count(count, 'entry')} from {args.file} into {cache.directory}.\n")
    return OK


def _report(args: argparse.Namespace) -> int:
    from afml_cache.monitoring import get_cache_monitor

    suffix = Path(args.file).suffix.lower()
    if suffix not in (".html", ".htm", ".csv"):
        raise _Failure(
            f"cannot tell the report format of {args.file!r}; name it FILE.html or FILE.csv",
            USAGE,
        )
    cache = _open_cache(args)
    try:
        written = get_cache_monitor().export_report(args.file)
    except OSError as exc:
        raise _Failure(f"could not write {args.file}: {exc}", PROBLEMS) from None
    if args.json:
        _write_json({"directory": str(cache.directory), "file": str(written)})
    else:
        _write(f"Wrote the report of {cache.directory} to {written}.\n")
    return OK


def _backtests(args: argparse.Namespace) -> int:
    from afml_cache.backtest_cache import BacktestCache, backtests_command

    backtests = BacktestCache(_open_cache(args))
    try:
        document, text = backtests_command(
            backtests, args.strategy, args.best, args.top, args.report
        )
    except (KeyError, ValueError) as exc:
        raise _Failure(str(exc.args[0]), USAGE) from None
    except OSError as exc:
        raise _Failure(f"could not write {args.report}: {exc}", PROBLEMS) from None
    if args.json:
        _write_json(document)
    else:
        _write(text)
    return OK


# --- serve ------------------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from afml_cache.server import is_loopback, make_server

    cache = _open_cache(args)
    if not is_loopback(args.host):
        sys.stderr.write(
            f"afml-cache serve: warning: listening on {args.host or 'every address'}, not "
            "loopback: anyone who can reach this machine can read the cache's statistics "
            "(function names, sizes, timings)\n"
        )
    try:
        server = make_server(cache, args.host, args.port)
    except OSError as exc:
        raise _Failure(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; choose another "
            "--port or --host",
            PROBLEMS,
        ) from None
    _write(
        f"afml-cache: serving {cache.directory} at {server.url} (metrics, health, stats); "
        "Ctrl-C stops\n"
    )
    sys.stdout.flush()
    restore = _stop_on_sigterm()
    try:
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


if __name__ == "__main__":
    raise SystemExit(main())
