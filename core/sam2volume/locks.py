"""One writer per folder and per cache file: a lock file that names its holder (PID and host).

A lock whose holder is a process of this host that no longer exists is stale and taken over; a lock
held by a live process (or by another host, which cannot be checked) makes the second process wait
or stop with a message naming the holder. Nothing here deletes files another process made.
"""

from __future__ import annotations

import json
import os
import socket
import time
from pathlib import Path
from typing import Callable

from .errors import InputError


class LockedError(InputError):
    """Another live process holds the lock."""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_holder(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        return data if isinstance(data, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # being written, or garbage: treated as held (and stale if old, see _stale)


def _stale(path: Path, holder: dict) -> bool:
    if holder.get("host") == socket.gethostname() and isinstance(holder.get("pid"), int):
        return not _alive(holder["pid"])
    if not holder:  # unreadable lock file: stale once nobody has touched it for a minute
        try:
            return time.time() - path.stat().st_mtime > 60
        except FileNotFoundError:
            return True
    return False


class FileLock:
    """``with FileLock(folder / ".sam2volume.lock", what="run folder X"):`` ... exclusive holder.

    ``wait``: seconds to wait for a live holder (0: refuse at once). ``on_wait(message)`` is called once
    when waiting starts (e.g. to print it).
    """

    def __init__(self, path: str | os.PathLike[str], what: str, wait: float = 0.0, on_wait: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what
        self.wait = wait
        self.on_wait = on_wait
        self._held = False

    def _describe(self, holder: dict) -> str:
        return f"process {holder.get('pid', '?')} on {holder.get('host', '?')} (lock file {self.path})"

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.wait
        told = False
        while True:
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                holder = read_holder(self.path)
                if holder is None:
                    continue  # released meanwhile
                if _stale(self.path, holder):
                    try:
                        self.path.unlink()  # a dead process's lock: take it over
                    except FileNotFoundError:
                        pass
                    continue
                if time.monotonic() >= deadline:
                    raise LockedError(
                        f"{self.what} is in use by {self._describe(holder)}; wait for it to finish "
                        "(or, if that process is gone, delete the lock file)"
                    ) from None
                if not told and self.on_wait is not None:
                    self.on_wait(f"waiting for {self._describe(holder)} to finish with {self.what} ...")
                    told = True
                time.sleep(0.2)
                continue
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}, fh)
            self._held = True
            return

    def release(self) -> None:
        if self._held:
            holder = read_holder(self.path)
            if holder and holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname():
                self.path.unlink(missing_ok=True)
            self._held = False

    def __enter__(self) -> "FileLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
