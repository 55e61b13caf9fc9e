"""Uploaded volumes (by content id) and open sessions, with limits, idle expiry and a reaper thread."""

from __future__ import annotations

import gc
import logging
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from .config import ServerConfig

log = logging.getLogger("sam2volume.server")


class LimitError(Exception):
    """A request over one of the server's limits (HTTP 413 or 429); the message names the limit."""

    def __init__(self, message: str, status: int = 413):
        super().__init__(message)
        self.status = status


class NotFound(Exception):
    """An unknown (or expired) session, job or volume (HTTP 404)."""


class Busy(Exception):
    """The session is running a propagation (HTTP 409)."""


class RequestIdReused(Exception):
    """An X-Request-Id already answered for another endpoint or body on this session (HTTP 409)."""


@dataclass
class StoredVolume:
    volume: Any
    nbytes: int
    users: int = 0
    last_used: float = field(default_factory=time.monotonic)


class VolumeStore:
    def __init__(self, config: ServerConfig):
        self.config = config
        self._items: dict[str, StoredVolume] = {}
        self._lock = threading.Lock()
        self._reserved = 0

    def has(self, vid: str) -> bool:
        with self._lock:
            item = self._items.get(vid)
            if item is not None:
                item.last_used = time.monotonic()
            return item is not None

    def reserve(self, nbytes: int) -> None:
        """Make room for an upload of ``nbytes`` (evicting unused volumes), or raise LimitError."""
        with self._lock:
            used = sum(v.nbytes for v in self._items.values()) + self._reserved
            if used + nbytes > self.config.max_stored_bytes:
                for vid in sorted((k for k, v in self._items.items() if v.users == 0), key=lambda k: self._items[k].last_used):
                    used -= self._items.pop(vid).nbytes
                    if used + nbytes <= self.config.max_stored_bytes:
                        break
            if used + nbytes > self.config.max_stored_bytes:
                raise LimitError(
                    f"the server holds {used} bytes of volumes in use; another {nbytes} would pass its limit of "
                    f"{self.config.max_stored_bytes} (--max-stored-mb); close sessions or try later", 429)
            self._reserved += nbytes

    def unreserve(self, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes

    def put(self, vid: str, volume: Any, nbytes: int) -> None:
        with self._lock:
            self._reserved -= nbytes
            if vid not in self._items:
                self._items[vid] = StoredVolume(volume, nbytes)

    def acquire(self, vid: str) -> Any:
        with self._lock:
            item = self._items.get(vid)
            if item is None:
                raise NotFound(f"volume {vid} is not on the server (upload it with PUT /v1/volumes/{vid})")
            item.users += 1
            item.last_used = time.monotonic()
            return item.volume

    def release(self, vid: str) -> None:
        with self._lock:
            item = self._items.get(vid)
            if item is not None:
                item.users -= 1
                item.last_used = time.monotonic()

    def expire(self, now: float) -> int:
        with self._lock:
            old = [k for k, v in self._items.items() if v.users == 0 and now - v.last_used > self.config.volume_ttl_s]
            for k in old:
                del self._items[k]
            return len(old)

    def stats(self) -> dict[str, int]:
        with self._lock:
            return {"volumes": len(self._items), "volume_bytes": sum(v.nbytes for v in self._items.values()),
                    "upload_bytes_reserved": self._reserved}


class SessionRegistry:
    """Open sessions by id; a reaper closes idle ones and drops unused volumes."""

    def __init__(self, config: ServerConfig, volumes: VolumeStore):
        self.config = config
        self.volumes = volumes
        self._items: dict[str, Any] = {}
        self._jobs: dict[str, Any] = {}
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def add(self, make: Any) -> Any:
        """Register the session ``make(sid)`` builds, unless the session cap is reached."""
        with self._lock:
            if len(self._items) >= self.config.max_sessions:
                raise LimitError(f"the server has {len(self._items)} open sessions, its limit (--max-sessions "
                                 f"{self.config.max_sessions}); close one or try later", 429)
            sid = secrets.token_urlsafe(16)
            self._items[sid] = None  # held while it is built
        try:
            session = make(sid)
        except BaseException:
            with self._lock:
                self._items.pop(sid, None)
            raise
        with self._lock:
            self._items[sid] = session
        return session

    def get(self, sid: str) -> Any:
        with self._lock:
            session = self._items.get(sid)
        if session is None:
            raise NotFound(f"unknown session {sid!r} (closed, expired after {self.config.idle_timeout_s:g} s idle, or from a restarted server); open a new session")
        session.touch()
        return session

    def add_job(self, job: Any) -> None:
        with self._lock:
            self._jobs[job.id] = job

    def job(self, jid: str) -> Any:
        with self._lock:
            job = self._jobs.get(jid)
        if job is None:
            raise NotFound(f"unknown job {jid!r} (its session closed or expired, or the server restarted)")
        job.session.touch()
        return job

    def close(self, sid: str, why: str = "closed") -> bool:
        with self._lock:
            session = self._items.pop(sid, None)
            if session is not None:
                for jid in [j for j, job in self._jobs.items() if job.session is session]:
                    self._jobs.pop(jid)
        if session is None:
            return False
        session.close()
        log.info("session %s %s", sid[:8], why)
        return True

    def reap(self) -> int:
        now = time.monotonic()
        with self._lock:
            idle = [sid for sid, s in self._items.items() if s is not None and now - s.last_used > self.config.idle_timeout_s]
        for sid in idle:
            self.close(sid, f"expired after {self.config.idle_timeout_s:g} s idle")
        dropped = self.volumes.expire(now)
        if idle or dropped:
            gc.collect()
        trim_heap()  # also after a job thread of a closed session ended between passes
        return len(idle)

    def start_reaper(self) -> None:
        def loop() -> None:
            while not self._stop.wait(self.config.reaper_interval_s):
                try:
                    self.reap()
                except Exception:  # the reaper must keep running
                    log.exception("reaper failed")

        self._thread = threading.Thread(target=loop, name="sam2volume-reaper", daemon=True)
        self._thread.start()

    def shutdown(self) -> None:
        self._stop.set()
        with self._lock:
            sids = list(self._items)
        for sid in sids:
            self.close(sid, "closed at shutdown")

    def long_polls(self) -> int:
        """Long polls of job events waiting now, on every job."""
        with self._lock:
            jobs = list(self._jobs.values())
        return sum(j.waiting() for j in jobs)

    def stats(self) -> dict[str, int]:
        with self._lock:
            sessions = [s for s in self._items.values() if s is not None]
            jobs_running = sum(1 for j in self._jobs.values() if not j.done)
        return {"sessions": len(sessions), "jobs_running": jobs_running, "long_polls": self.long_polls(),
                "encoding_ahead": sum(1 for s in sessions if s.encoding_ahead())}


def trim_heap() -> None:
    """Hand freed heap memory back to the OS (glibc keeps it otherwise); no-op elsewhere."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def rss_bytes() -> int | None:
    """This process's resident memory (Linux /proc), or None."""
    try:
        with open("/proc/self/statm") as f:
            import os

            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None
