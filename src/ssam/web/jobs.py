"""A bounded job queue: a few worker threads, a fixed number of waiting places, progress.

Admission is counted, not queued: ``workers + queue_size`` jobs may be admitted (running or
waiting) at once and one more is refused with ``QueueFull`` (HTTP 429), so a burst of
requests never piles up behind a slow CPU model. Jobs the web page polls are kept (the last
``keep_results`` finished ones) for their slice views and downloads.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ssam.web.errors import JobCancelled, QueueFull, RequestError

log = logging.getLogger(__name__)


@dataclass(eq=False)
class Job:
    """One unit of work and what the page sees of it.

    ``state``: queued, running, done, failed or cancelled; ``phase`` a finer word for the
    page (reading, segmenting, ...); ``done``/``total`` slices; times from ``time.monotonic``.
    """

    id: str
    created: float = field(default_factory=time.monotonic)
    started: float | None = None
    finished: float | None = None
    state: str = "queued"
    phase: str = "queued"
    done: int = 0
    total: int = 0
    result: Any = None
    error: str | None = None
    error_status: int | None = None
    cancel_event: threading.Event = field(default_factory=threading.Event)
    future: Future | None = None

    @property
    def is_finished(self) -> bool:
        return self.state in ("done", "failed", "cancelled")

    def cancel(self) -> None:
        """Stop the job: before it runs, or at its next slice batch."""
        self.cancel_event.set()
        if self.future is not None:
            self.future.cancel()

    def should_stop(self) -> bool:
        return self.cancel_event.is_set()

    def report(self, done: int, total: int, phase: str | None = None) -> None:
        """Progress from the worker: slices done of total (and the phase, if it changed)."""
        self.done, self.total = done, total
        if phase is not None:
            self.phase = phase

    def elapsed(self) -> float:
        """Seconds since admission, until finished."""
        return (self.finished or time.monotonic()) - self.created


class JobQueue:
    """Runs ``work(job)`` callables on ``workers`` threads with ``queue_size`` waiting places."""

    def __init__(self, workers: int, queue_size: int, keep_results: int) -> None:
        self.capacity = workers + queue_size
        self.keep_results = keep_results
        self._executor = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="ssam-job")
        self._lock = threading.Lock()
        self._active: OrderedDict[str, Job] = OrderedDict()
        self._kept: OrderedDict[str, Job] = OrderedDict()
        self._closed = False

    def submit(self, work: Callable[[Job], Any], keep: bool = False) -> Job:
        """Admit a job or raise ``QueueFull``; ``keep`` makes it findable by ``get``."""
        job = Job(id=uuid.uuid4().hex)
        with self._lock:
            if self._closed:
                raise RequestError("the server is shutting down", status=503)
            if len(self._active) >= self.capacity:
                raise QueueFull(
                    f"server busy: {len(self._active)} jobs running or waiting "
                    f"(capacity {self.capacity}); retry shortly",
                    retry_after=max(1, len(self._active)),
                )
            self._active[job.id] = job
            if keep:
                self._kept[job.id] = job
        job.future = self._executor.submit(self._run, job, work)
        job.future.add_done_callback(lambda _: self._finish(job))
        return job

    def _run(self, job: Job, work: Callable[[Job], Any]) -> Any:
        job.started, job.state, job.phase = time.monotonic(), "running", "starting"
        try:
            if job.should_stop():
                raise JobCancelled("cancelled before it started")
            job.result = work(job)
            job.state, job.phase = "done", "done"
            return job.result
        except JobCancelled as err:
            job.state, job.error = "cancelled", str(err)
            raise
        except RequestError as err:
            job.state, job.error, job.error_status = "failed", str(err), err.status
            raise
        except Exception as err:
            log.exception("job %s failed", job.id)
            job.state, job.error_status = "failed", 500
            job.error = f"internal error ({type(err).__name__}); see the server log"
            raise
        finally:
            job.finished = time.monotonic()

    def _finish(self, job: Job) -> None:
        """Done callback: free the admission slot; drop the oldest kept finished jobs."""
        if job.future is not None and job.future.cancelled():
            job.state, job.finished = "cancelled", time.monotonic()
        with self._lock:
            self._active.pop(job.id, None)
            finished = [j for j in self._kept.values() if j.is_finished]
            for old in finished[: max(0, len(finished) - self.keep_results)]:
                del self._kept[old.id]

    def get(self, job_id: str) -> Job | None:
        with self._lock:
            return self._kept.get(job_id)

    def forget(self, job_id: str) -> Job | None:
        """Cancel a kept job and drop it (its result goes with it)."""
        with self._lock:
            job = self._kept.pop(job_id, None)
        if job is not None:
            job.cancel()
        return job

    def position(self, job: Job) -> int:
        """Jobs waiting ahead of a queued ``job`` (0 once it runs)."""
        if job.state != "queued":
            return 0
        with self._lock:
            ahead = [j for j in self._active.values() if j.state == "queued" and j is not job]
            return sum(j.created <= job.created for j in ahead)

    def stats(self) -> dict[str, int]:
        with self._lock:
            running = sum(j.state == "running" for j in self._active.values())
            return {
                "running": running,
                "waiting": len(self._active) - running,
                "capacity": self.capacity,
            }

    def shutdown(self) -> None:
        """Refuse new jobs, cancel waiting and running ones, stop the threads."""
        with self._lock:
            self._closed = True
            active = list(self._active.values())
        for job in active:
            job.cancel()
        self._executor.shutdown(wait=False, cancel_futures=True)
