"""Inference off the event loop: a fixed pool of worker threads (`jobs` at once) and a bounded
queue behind it (`queue` waiting). A request beyond that is answered at once with "busy" instead of
piling up memory; the page and the API keep responding while models run."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Busy(RuntimeError):
    """Every worker is busy and the queue is full."""


class JobRunner:
    def __init__(self, jobs: int = 2, queue: int = 32) -> None:
        if jobs < 1 or queue < 0:
            raise ValueError(f"jobs must be >= 1 and queue >= 0, got jobs={jobs}, queue={queue}")
        self.jobs, self.queue = int(jobs), int(queue)
        self._pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="wbc-job")
        self._pending = 0
        self._lock = threading.Lock()

    @property
    def pending(self) -> int:
        """Jobs running or waiting."""
        return self._pending

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """fn(*args) on a worker thread; Busy when `jobs + queue` are already in."""
        with self._lock:
            if self._pending >= self.jobs + self.queue:
                raise Busy(f"the server is busy ({self._pending} jobs running or waiting); try again in a moment")
            self._pending += 1
        try:
            fut = self._pool.submit(fn, *args)
        except BaseException:
            self._release()
            raise
        # released when the thread is done, not when the request goes away (a client that hangs up
        # does not stop its job, so the job still counts)
        fut.add_done_callback(self._release)
        return await asyncio.wrap_future(fut)

    def _release(self, _fut: object = None) -> None:
        with self._lock:
            self._pending -= 1

    def shutdown(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
