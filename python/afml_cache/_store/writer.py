"""The process's writer thread, for values written behind."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import os
import queue
import signal
import threading
import time
from collections.abc import Callable

from afml_cache import forking

_log = logging.getLogger("afml_cache")


class Writer:
    """Runs the jobs of values written behind (``Entries.put(behind=...)``) one at a time,
    in order. ``flush`` waits for every job submitted so far; it runs at exit, before listings,
    and at the end of multiprocessing workers (which skip atexit). ``pending``: the bytes of the
    values submitted and not yet written, which the caller bounds."""

    def __init__(self) -> None:
        self._jobs: queue.Queue[tuple[Callable[[], None], int]] = queue.Queue()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self.pending = 0

    def submit(self, job: Callable[[], None], nbytes: int = 0) -> None:
        """Queues ``job``, which writes a value of ``nbytes``."""
        with self._lock:
            self.pending += nbytes
            if self._thread is None:
                self._thread = threading.Thread(
                    target=self._run, name="afml-cache-writer", daemon=True
                )
                self._thread.start()
                if multiprocessing.parent_process() is not None:
                    # A multiprocessing child leaves through os._exit: atexit never runs there.
                    multiprocessing.util.Finalize(None, self.flush, exitpriority=100)
                    _finish_on_terminate()
        self._jobs.put((job, nbytes))

    def _run(self) -> None:
        while True:
            job, nbytes = self._jobs.get()
            try:
                job()
            except Exception:  # jobs report their own failures; this is a last resort
                _log.exception("afml_cache: a background write failed")
            finally:
                with self._lock:
                    self.pending -= nbytes
                self._jobs.task_done()

    def flush(self, timeout: float | None = None) -> bool:
        """Waits for every job submitted so far, at most ``timeout`` seconds; whether they
        are done."""
        if self._thread is None or threading.current_thread() is self._thread:
            return True
        jobs = self._jobs
        deadline = None if timeout is None else time.monotonic() + timeout
        with jobs.all_tasks_done:
            while jobs.unfinished_tasks:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                jobs.all_tasks_done.wait(left)
        return True

    def after_fork(self) -> None:
        """In a forked child: the parent's jobs and thread are the parent's (a job's lock, held
        through an inherited descriptor, must not be released here)."""
        self._jobs = queue.Queue()
        self._thread = None
        self._lock = threading.Lock()
        self.pending = 0


WRITER = Writer()
atexit.register(WRITER.flush)
forking.renew_after_fork(WRITER)

# How long a worker told to stop (SIGTERM) takes to finish its writes before it stops.
_TERMINATE_FLUSH_SECONDS = 30.0


def _finish_on_terminate() -> None:
    """In a multiprocessing worker: SIGTERM, which ``Pool.terminate()`` sends (and ``with
    Pool() as pool:`` on leaving), first finishes the values written behind, then ends the
    worker as it would have (their results were lost, silently). Only where nothing else
    handles SIGTERM, and from the main thread, where handlers are set."""
    if threading.current_thread() is not threading.main_thread():
        return
    try:
        if signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
            return
        signal.signal(signal.SIGTERM, _flush_then_terminate)
    except (ValueError, OSError):  # not the main interpreter
        return


def _flush_then_terminate(signum: int, frame: object) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    if not WRITER.flush(_TERMINATE_FLUSH_SECONDS):
        _log.warning("afml_cache: a worker stopped before its last results were written")
    os.kill(os.getpid(), signal.SIGTERM)


def flush_writes() -> None:
    """Waits until every value this process wrote behind is on disk."""
    WRITER.flush()
