"""One persistent worker thread for all model work; results are handed back on the GUI thread.

The GUI thread submits jobs and calls :meth:`Worker.poll` from a timer (Slicer: a ``qt.QTimer``);
callbacks (done, error, progress) run inside ``poll``, so they may touch Qt and MRML safely. A job
that fails (any exception, out of memory included) reports its error and the worker goes on.
"""

from __future__ import annotations

import queue
import threading
import traceback
from dataclasses import dataclass, field
from typing import Any, Callable


@dataclass
class Job:
    fn: Callable[..., Any]
    args: tuple = ()
    kwargs: dict[str, Any] = field(default_factory=dict)
    on_done: Callable[[Any], None] | None = None
    on_error: Callable[[str, BaseException], None] | None = None
    on_progress: Callable[[int, int], None] | None = None
    cancel: threading.Event = field(default_factory=threading.Event)
    name: str = "job"


class Worker:
    def __init__(self) -> None:
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._events: queue.Queue[tuple[Callable[..., None], tuple]] = queue.Queue()
        self._thread = threading.Thread(target=self._run, name="SegmentWithSAM2-worker", daemon=True)
        self.current: Job | None = None
        self._thread.start()

    @property
    def thread_id(self) -> int | None:
        return self._thread.ident

    @property
    def busy(self) -> bool:
        return self.current is not None or not self._jobs.empty()

    def submit(self, job: Job) -> Job:
        if not self._thread.is_alive():
            raise RuntimeError("the worker thread has stopped; reload the module")
        self._jobs.put(job)
        return job

    def cancel_all(self) -> None:
        """Ask the running job to stop (between slices) and drop the queued ones."""
        if self.current is not None:
            self.current.cancel.set()
        while True:
            try:
                job = self._jobs.get_nowait()
            except queue.Empty:
                break
            if job is None:
                self._jobs.put(None)
                break

    def poll(self, limit: int = 100) -> int:
        """Run pending callbacks on the calling (GUI) thread; returns how many ran."""
        n = 0
        while n < limit:
            try:
                fn, args = self._events.get_nowait()
            except queue.Empty:
                break
            fn(*args)
            n += 1
        return n

    def stop(self, timeout: float = 5.0) -> None:
        self.cancel_all()
        self._jobs.put(None)
        self._thread.join(timeout)

    def _run(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self.current = job
            try:
                kwargs = dict(job.kwargs)
                if job.on_progress is not None:
                    kwargs["progress"] = lambda done, total, cb=job.on_progress: self._events.put((cb, (done, total)))
                result = job.fn(*job.args, cancel=job.cancel, **kwargs) if _takes_cancel(job.fn) else job.fn(*job.args, **kwargs)
            except BaseException as exc:  # noqa: BLE001 - every failure must reach the user, and the worker must live on
                if isinstance(exc, MemoryError) or "out of memory" in str(exc).lower():
                    message = f"{job.name}: out of memory ({exc}). Use a smaller model, a slice range, or the CPU offload option."
                else:
                    message = f"{job.name}: {exc}"
                if job.on_error is not None:
                    self._events.put((job.on_error, (message, exc)))
                else:
                    self._events.put((_log_error, (message, traceback.format_exc())))
            else:
                if job.on_done is not None:
                    self._events.put((job.on_done, (result,)))
            finally:
                self.current = None


def _takes_cancel(fn: Callable[..., Any]) -> bool:
    import inspect

    try:
        return "cancel" in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def _log_error(message: str, tb: str) -> None:
    import logging

    logging.getLogger("SegmentWithSAM2").error("%s\n%s", message, tb)
