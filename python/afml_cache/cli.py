"""The ``afml-cache`` command: see, tend and serve a cache directory from a terminal or a script.

``afml-cache stats``, ``health``, ``clear``, ``prune``, ``export``, ``import``, ``report``,
``backtests``, ``serve``, ``warm`` and ``demo``; ``afml-cache COMMAND --help`` explains each.
Every command takes ``--dir`` and the reporting ones ``--json`` (one JSON document on stdout,
messages on stderr). Exit codes are listed in ``afml-cache --help``. This module holds the parser;
what each command does is in `afml_cache.commands`.

``afml-cache demo`` runs the demo in `afml_cache.demo`. The benchmark that measures this
machine beside joblib, diskcache and cachier is ``benches/bench_machine.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import sys
import textwrap
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import afml_cache
from afml_cache import commands, config
from afml_cache._store.remote import is_remote
from afml_cache.cache import parse_size
from afml_cache.commands import INTERRUPTED, PROBLEMS, UNUSABLE, USAGE, Failure, write_json
from afml_cache.demo import run_demo
from afml_cache.errors import CacheError

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
  afml-cache warm mypkg.warmups:nightly     run a warm-up function (cron, CI)
  afml-cache stats --json | jq '.functions | keys'
"""


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return USAGE
    if args.command == "demo" and args.rows < 5_000:
        parser.error("--rows must be at least 5,000 (the pipeline needs a few days of bars)")
    if is_remote(getattr(args, "dir", None) or ""):
        args.run = _on_remote
    with _library_messages_on_stderr():
        try:
            return int(args.run(args))
        except Failure as failure:
            if getattr(args, "json", False):
                write_json({"error": str(failure), "exit_code": failure.code})
            sys.stderr.write(f"afml-cache {args.command}: {failure}\n")
            return failure.code
        except KeyboardInterrupt:
            sys.stderr.write(f"\nafml-cache {args.command}: interrupted\n")
            return INTERRUPTED
        except BrokenPipeError:
            # The reader went away (`afml-cache demo | head`): stop quietly, as Unix tools do.
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            return 141


def _on_remote(args: argparse.Namespace) -> int:
    """A command on a prefix of an object store (``--dir s3://bucket/prefix``)."""
    from afml_cache import remote_admin

    if args.command not in remote_admin.COMMANDS:
        raise Failure(
            f"{args.command} works on a cache directory, not on {args.dir}; the commands for a "
            f"remote prefix are {', '.join(remote_admin.COMMANDS)}",
            USAGE,
        )
    try:
        return remote_admin.run(args)
    except remote_admin.Unusable as exc:
        raise Failure(str(exc), UNUSABLE) from None
    except (CacheError, ValueError) as exc:
        raise Failure(str(exc), PROBLEMS) from None


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
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")

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
        sub = subparsers.add_parser(
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
    stats.set_defaults(run=commands.run_stats)

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
    health.set_defaults(run=commands.run_health)

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
    clear.set_defaults(run=commands.run_clear)

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
    prune.set_defaults(run=commands.run_prune)

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
    export.set_defaults(run=commands.run_export)

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
    imports.set_defaults(run=commands.run_import)

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
    report.set_defaults(run=commands.run_report)

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
    backtests.set_defaults(run=commands.run_backtests)

    from afml_cache.server import DEFAULT_HOST, DEFAULT_PORT

    serve = command(
        "serve",
        "serve /metrics, /health and /stats over HTTP (read-only unless --admin)",
        "Serve the cache's Prometheus metrics (/metrics; needs prometheus_client), a quick "
        "health check (/health, JSON; 503 when degraded) and the statistics (/stats, JSON). "
        "Read-only unless --admin, which adds the write endpoints for requests bearing its "
        "token (README: The afml-cache command). Listens on loopback unless --host says "
        "otherwise. Ctrl-C stops it.",
        "  afml-cache serve\n  afml-cache serve --host 0.0.0.0 --port 9464   # other machines\n"
        "  afml-cache serve --admin --warmup mypkg.warmups:nightly\n",
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
    serve.add_argument(
        "--admin",
        action="store_true",
        help="add the write endpoints (clear, delete, warm, export) for requests bearing the "
        "token in --token-file",
    )
    serve.add_argument(
        "--token-file",
        metavar="FILE",
        help="the admin token, made (0600) on first use (default: "
        "$XDG_CONFIG_HOME/afml-cache/admin.token, else ~/.config/afml-cache/admin.token)",
    )
    serve.add_argument(
        "--warmup",
        metavar="MODULE:FUNCTION",
        action="append",
        default=[],
        help="a warm-up POST /admin/warm?name=MODULE:FUNCTION may run (repeatable)",
    )
    serve.set_defaults(run=commands.run_serve)

    warm = command(
        "warm",
        "run a warm-up function (from cron or CI); exit 1 if a call failed",
        "Import MODULE (from the current directory or the installed packages) and call its "
        "FUNCTION with no arguments; it warms caches with f.warm(calls). Prints what each "
        "f.warm computed; exits 1 if a call failed or the function raised.",
        "  afml-cache warm warmups:nightly\n  afml-cache warm my_project.features:warm --json\n",
        scripted,
    )
    warm.add_argument("warmup", metavar="MODULE:FUNCTION", help="the warm-up function")
    warm.set_defaults(run=commands.run_warm)

    demo = subparsers.add_parser(
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
    demo.set_defaults(run=_demo)
    return parser


def _demo(args: argparse.Namespace) -> int:
    if args.dir is not None:  # a new, empty or cache directory: never scatter into another
        commands.check_directory(Path(args.dir).expanduser(), True, "give another with --dir")
    return run_demo(args.rows, args.dir)


def _size(text: str) -> int:
    try:
        return parse_size(text, "size")
    except (TypeError, ValueError) as exc:
        # parse_size says what was wrong, and with what: not a size, not positive, too large.
        raise argparse.ArgumentTypeError(str(exc)) from None


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


if __name__ == "__main__":
    raise SystemExit(main())
