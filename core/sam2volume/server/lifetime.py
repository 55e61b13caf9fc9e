"""A server that ends with the process that started it (``serve --exit-with-stdin``, ``--parent-pid``).

A front-end that starts a server for itself (Slicer's local mode, :func:`sam2volume.client.start_local_server`)
may die without stopping it: a crash, a kill, or a launcher in between that forwards no signal (Slicer's
``PythonSlicer``). Two watches, each a daemon thread, end the server then:

* ``stdin``: the parent holds the write end of a pipe that is the server's standard input; when the parent
  closes it or dies (even by SIGKILL, the operating system closes it), the server reads end-of-file. A stdin
  that is no pipe (``/dev/null`` from a launcher in between) is not watched.
* ``parent_pid``: the parent's process id is polled every :data:`POLL_S` s (POSIX only; on Windows the
  stdin watch is the one that works, and a job object that kills the server with its parent is a TODO).

Either one asks uvicorn to shut down; a server still running :data:`GRACE_S` s later (a propagation that
does not end) exits hard: nobody is left to want its results.
"""

from __future__ import annotations

import logging
import os
import stat
import sys
import threading
import time
from typing import Callable

log = logging.getLogger("sam2volume.server")

POLL_S = 0.5
GRACE_S = 10.0


def process_exists(pid: int) -> bool:
    """True while process ``pid`` exists (POSIX: signal 0 checks without sending anything)."""
    if sys.platform == "win32":
        raise NotImplementedError("watching a parent process id is not supported on Windows; use --exit-with-stdin")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # it exists, under another user
    return True


def check_parent_pid(pid: int) -> None:
    """A clear error for a ``--parent-pid`` that cannot be watched, before anything heavy."""
    from ..errors import InputError

    if sys.platform == "win32":
        raise InputError("--parent-pid is not supported on Windows; use --exit-with-stdin (the parent holds the pipe)")
    if pid <= 0 or not process_exists(pid):
        raise InputError(f"--parent-pid {pid} is not a running process; give the id of the process the server serves")


def stdin_is_pipe() -> bool:
    """Only a pipe (or socket) means a parent on the other end; /dev/null or a file ends at once."""
    try:
        mode = os.fstat(sys.stdin.fileno()).st_mode
    except (OSError, ValueError, AttributeError):
        return False
    return stat.S_ISFIFO(mode) or stat.S_ISSOCK(mode)


def _watch_stdin(stop: Callable[[str], None]) -> None:
    try:
        fd = sys.stdin.fileno()
        while os.read(fd, 65536):
            pass  # anything the parent writes is ignored; only end-of-file counts
    except (OSError, ValueError):
        pass  # the pipe broke: the same as end-of-file
    stop("its standard input was closed (the process that started it ended)")


def _watch_pid(pid: int, stop: Callable[[str], None], poll_s: float) -> None:
    while True:
        time.sleep(poll_s)
        if not process_exists(pid):
            stop(f"its parent process {pid} ended")
            return


def watch_parent(shutdown: Callable[[], None], *, parent_pid: int | None = None, exit_with_stdin: bool = False,
                 poll_s: float = POLL_S, grace_s: float = GRACE_S) -> list[threading.Thread]:
    """Start the watches asked for; ``shutdown()`` is called once when one fires (from its thread)."""
    fired = threading.Lock()

    def stop(why: str) -> None:
        if not fired.acquire(blocking=False):
            return
        log.warning("sam2volume server stopping: %s", why)
        shutdown()
        hard = threading.Timer(grace_s, os._exit, (3,))
        hard.daemon = True
        hard.start()

    threads = []
    if exit_with_stdin and not stdin_is_pipe():
        log.warning("--exit-with-stdin: standard input is not a pipe (a launcher in between?); not watched")
    elif exit_with_stdin:
        threads.append(threading.Thread(target=_watch_stdin, args=(stop,), name="sam2volume-stdin-watch", daemon=True))
    if parent_pid is not None:
        threads.append(threading.Thread(target=_watch_pid, args=(parent_pid, stop, poll_s), name="sam2volume-parent-watch",
                                        daemon=True))
    for t in threads:
        t.start()
    return threads
