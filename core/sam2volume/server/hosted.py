"""A session as the server hosts it (engine session, locks, idle clock) and its propagation jobs."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from typing import Any, Iterator

from ..errors import CancelledError, Sam2VolumeError
from .store import Busy, RequestIdReused
from .wire import pack_mask

log = logging.getLogger("sam2volume.server")


class HostedSession:
    """One client's engine session; every call on it is serialised, model calls also per device."""

    def __init__(self, sid: str, engine: str, session: Any, device_lock: Any, volume_id: str, release: Any):
        self.id = sid
        self.engine = engine
        self.session = session
        self.device_lock = device_lock  # a FairLock for SAM2, None for the baseline (no model)
        self.volume_id = volume_id
        self._release = release
        self.lock = threading.Lock()
        self.job: Job | None = None
        self.last_used = time.monotonic()
        self.closed = False
        self._replies: OrderedDict[str, tuple[str, Any]] = OrderedDict()  # request id -> (what, answer), the last few

    def once(self, rid: str | None, work: Any, what: str = "") -> Any:
        """``work()``, unless request ``rid`` was answered already (then that answer again). ``what`` (the
        endpoint and a hash of the body) must match the first request's: a reused id on another call is refused."""
        if rid is not None and rid in self._replies:
            first, out = self._replies[rid]
            if first != what:
                raise RequestIdReused(f"request id {rid!r} was used by another request on this session ({first.split(' #')[0]}); "
                                      "send a new X-Request-Id for each call (the same one only to retry the same call)")
            return out
        out = work()
        if rid is not None:
            self._replies[rid] = (what, out)
            while len(self._replies) > 16:
                self._replies.popitem(last=False)
        return out

    def touch(self) -> None:
        self.last_used = time.monotonic()

    def encoding_ahead(self) -> bool:
        """True while the engine session encodes slices ahead in the background (SAM2's ``encode_ahead``)."""
        session = self.session
        done = getattr(session, "wait_for_background", None)
        return done is not None and not done(0)

    @contextlib.contextmanager
    def call(self) -> Iterator[Any]:
        """Run one request's work on the engine session (refused while a propagation runs)."""
        with self.lock:
            if self.closed:
                raise Busy("this session was closed")
            if self.job is not None and not self.job.done:
                raise Busy(f"propagation job {self.job.id} is running on this session; wait for it or cancel it first")
            with self.device_lock or contextlib.nullcontext():
                yield self.session
        self.touch()

    def start_job(self, rid: str | None = None, what: str = "", **kwargs: Any) -> "Job":
        with self.lock:
            if self.closed:
                raise Busy("this session was closed")
            if rid is not None and self.job is not None and self.job.request_id == rid:
                if self.job.request_what != what:
                    raise RequestIdReused(f"request id {rid!r} started job {self.job.id} with other settings; send a new "
                                          "X-Request-Id for each call (the same one only to retry the same call)")
                return self.job  # a retried request: the job it started
            if self.job is not None and not self.job.done:
                raise Busy(f"propagation job {self.job.id} is already running on this session; wait for it or cancel it first")
            self.job = Job(self, kwargs, rid)
            self.job.request_what = what
            self.job.start()
            return self.job

    def close(self) -> None:
        with self.lock:
            if self.closed:
                return
            self.closed = True
            job = self.job
        if job is not None:
            job.cancel_event.set()
        stop = getattr(self.session, "stop_background", None)  # slices encoded ahead (SAM2 sessions)
        if stop is not None:
            stop()
        self.session = None  # the engine session (frames, features, results) goes with its last reference
        self._release(self.volume_id)


class Job:
    """A propagation on a worker thread; events (one per finished slice) wait in a list for the client.

    Events the client has acknowledged (``after=N`` on a poll) are dropped, so memory is bounded by
    how far the client lags, not by the volume's length.
    """

    def __init__(self, hosted: HostedSession, kwargs: dict[str, Any], request_id: str | None = None):
        self.id = secrets.token_urlsafe(12)
        self.request_id = request_id
        self.request_what = ""  # endpoint and body hash of the request that started it
        self.session = hosted
        self.kwargs = kwargs
        self.cancel_event = threading.Event()
        self._cond = threading.Condition()
        self._waiters: set[tuple[Any, asyncio.Event]] = set()  # long polls waiting on the event loop (no thread)
        self._events: list[dict[str, Any]] = []
        self._base = 0  # index of self._events[0]
        self.progress = (0, 0)
        self.done = False
        self.report: dict[str, Any] | None = None
        self.error: tuple[str, str] | None = None
        self.present: dict[str, list[int]] = {}

    def start(self) -> None:
        threading.Thread(target=self._run, name=f"sam2volume-job-{self.id[:6]}", daemon=True).start()

    def _run(self) -> None:
        hosted = self.session
        session = hosted.session
        lock = hosted.device_lock

        def on_slice(s: int, labels: list[int]) -> None:
            masks = {str(label): pack_mask(session.frame_mask(label, s)) for label in labels}
            with self._cond:
                self._events.append({"slice": int(s), "masks": masks})
                self._cond.notify_all()
                self._wake()

        def progress(done: int, total: int) -> None:
            with self._cond:
                self.progress = (done, total)
                self._cond.notify_all()
                self._wake()
            if lock is not None:
                lock.yield_to_waiters()

        t0 = time.perf_counter()
        cache = getattr(session, "feature_cache", None)  # SAM2 sessions: slices encoded by this propagation
        try:
            if session is None:
                raise CancelledError("the session was closed before the propagation started")
            with lock or contextlib.nullcontext():
                # read under the device lock: no slice of this session is being encoded ahead meanwhile
                stored = None if cache is None else cache.stored
                report = session.propagate(**self.kwargs, progress=progress, cancel=self.cancel_event, on_slice=on_slice)
            self.report = {"slices_run": report.slices_run, "cancelled": report.cancelled,
                           "stopped": {str(k): v for k, v in asdict(report)["stopped"].items()},
                           "slices_encoded": None if cache is None else cache.stored - stored}
        except Sam2VolumeError as exc:
            self.error = (type(exc).__name__, str(exc))
        except Exception:
            log.exception("propagation job %s failed", self.id)
            self.error = ("InternalError", "the propagation failed inside the server (see the server log)")
        finally:
            present = {}
            if session is not None:
                present = {str(label): session.computed_slices(label) for label in list(session.objects)}
            with self._cond:
                self.present = present
                self.done = True
                self._cond.notify_all()
                self._wake()
            log.info("job %s done in %.2f s: %s", self.id[:8], time.perf_counter() - t0, self.error[0] if self.error else "ok")

    def waiting(self) -> int:
        """Long polls waiting on this job now."""
        with self._cond:
            return len(self._waiters)

    def _wake(self) -> None:
        """Wake the long polls (called with ``self._cond`` held, from the job's thread)."""
        for loop, event in self._waiters:
            with contextlib.suppress(RuntimeError):  # a loop that closed meanwhile
                loop.call_soon_threadsafe(event.set)

    async def wait_events(self, after: int, wait: float) -> dict[str, Any]:
        """:meth:`events` as a long poll that waits on the event loop, holding no worker thread."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        while True:
            event = asyncio.Event()
            with self._cond:
                self._waiters.add((loop, event))
            try:
                out = self.events(after, 0.0)
                left = deadline - loop.time()
                if out["events"] or out["done"] or left <= 0:
                    return out
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(event.wait(), left)
            finally:
                with self._cond:
                    self._waiters.discard((loop, event))

    def events(self, after: int, wait: float) -> dict[str, Any]:
        """Events from number ``after`` on, waiting up to ``wait`` s for one (a long poll)."""
        deadline = time.monotonic() + wait
        with self._cond:
            drop = min(max(0, after - self._base), len(self._events))
            if drop:
                del self._events[:drop]
                self._base += drop
            while not self.done and self._base + len(self._events) <= after:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._cond.wait(left)
            start = max(0, after - self._base)
            out = {"events": self._events[start:], "first": self._base + start, "next": self._base + len(self._events),
                   "progress": list(self.progress), "done": self.done}
            if self.done and out["next"] == out["first"] + len(out["events"]):
                out.update(report=self.report, present=self.present,
                           error=None if self.error is None else {"type": self.error[0], "message": self.error[1]})
        return out
