"""The process's writer thread, for values written behind."""

from __future__ import annotations

import atexit
import logging
import multiprocessing
import multiprocessing.util
import queue
import threading
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

    def flush(self) -> None:
        if self._thread is not None and threading.current_thread() is not self._thread:
            self._jobs.join()

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


def may_write_behind() -> bool:
    """Whether a value may be written after its call returns: not in a worker that is ended
    by a signal, with the writes still in flight (their results were lost without a word): a
    ``multiprocessing.Pool``'s, whose ``terminate()`` (which ``with Pool() as pool:`` calls on
    leaving) kills them, and a Dask worker process, which its nanny ends as the cluster closes.
    Other workers end by returning (``ProcessPoolExecutor``, loky), and their writes finish
    first."""
    name = multiprocessing.current_process().name
    return "PoolWorker-" not in name and not name.startswith("Dask Worker")


def flush_writes() -> None:
    """Waits until every value this process wrote behind is on disk."""
    WRITER.flush()
