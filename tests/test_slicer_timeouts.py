"""Issue 20 item 7: in remote mode a stalled server never holds Slicer's GUI thread for long; on
Slicer's real libraries (slicer-core), with a real ``sam2volume serve`` process on 127.0.0.1 that the
test stops with SIGSTOP (the kernel still accepts its connections; nothing answers: a stalled server).

The logic's request timeout is set short (1.5 s; the module's default is
``REMOTE_CALL_TIMEOUT_S``): a prompt fails with a message naming the server's URL and the timeout,
each poll of a propagation blocks at most ``GUI_POLL_TIMEOUT_S`` and the propagation ends with a
message, and Cancel ends a propagation at once. The time bounds below are loose (30 s, against the
60 s every call took before), not measurements.
"""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)

from SegmentWithSAM2Lib.engine_link import EngineLink, Settings  # noqa: E402
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic  # noqa: E402
from test_slicer_logic import ct, labels, red_at  # noqa: E402,F401  (the same fixtures)
from test_slicer_overwrite import K, liver_point  # noqa: E402

from sam2volume.client import ServerError, start_local_server  # noqa: E402

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGSTOP"), reason="SIGSTOP stalls the server (POSIX)")

SHORT = 1.5  # s
LOOSE = 30.0  # s: far under the 60 s of one call before, far over SHORT


@pytest.fixture
def server():
    srv = start_local_server(sys.executable, device="cpu")
    yield srv
    os.kill(srv.process.pid, signal.SIGCONT)
    srv.stop()


@pytest.fixture
def remote(server, ct, labels):
    """A logic in remote mode on ``server``, with one prompt answered (the session exists)."""
    link = EngineLink(python=sys.executable)
    link.remote_call_timeout = SHORT
    logic = SegmentWithSAM2Logic(link=link)
    settings = Settings(mode="remote", engine="baseline", serverUrl=server.url, serverToken=server.token, window="abdomen")
    seg, sid = logic.prepareSegmentation(ct)
    logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), settings)
    yield logic, seg, sid, settings
    os.kill(server.process.pid, signal.SIGCONT)
    logic.reset()


def stall(server) -> None:
    os.kill(server.process.pid, signal.SIGSTOP)


def test_a_prompt_to_a_stalled_server_fails_soon_naming_the_url_and_the_timeout(server, remote, ct, labels):
    logic, seg, sid, settings = remote
    stall(server)
    t0 = time.monotonic()
    with pytest.raises(ServerError) as err:
        logic.addPoints(ct, seg, sid, [liver_point(ct, labels, K + 1)], [True], red_at(ct, [0, 0, K + 1]), settings)
    took = time.monotonic() - t0
    assert server.url in str(err.value) and f"within {SHORT:g} s" in str(err.value)
    assert took < LOOSE, took


def test_polls_of_a_propagation_on_a_stalled_server_end_it_with_a_message(server, remote, ct):
    logic, seg, sid, settings = remote
    errors = []
    task = logic.startPropagation(ct, seg, settings, onError=errors.append)
    stall(server)
    longest, t0 = 0.0, time.monotonic()
    while logic.busy and time.monotonic() - t0 < LOOSE:
        t = time.monotonic()
        logic.poll()
        longest = max(longest, time.monotonic() - t)
        time.sleep(0.05)  # the widget's timer
    assert not logic.busy and task.finished
    assert len(errors) == 1 and server.url in errors[0] and "has not answered" in errors[0]
    assert longest < LOOSE / 3, longest  # each poll: about GUI_POLL_TIMEOUT_S, never a whole request timeout of 60 s


def test_cancel_on_a_stalled_server_ends_the_propagation_here(server, remote, ct):
    logic, seg, sid, settings = remote
    errors = []
    task = logic.startPropagation(ct, seg, settings, onError=errors.append)
    stall(server)
    t0 = time.monotonic()
    logic.cancel()
    took = time.monotonic() - t0
    assert task.finished and not logic.busy
    assert len(errors) == 1 and errors[0].startswith("cancelled here") and server.url in errors[0]
    assert took < LOOSE, took
    logic.reset()  # Reset after that returns at once too


def test_a_first_prompt_to_a_server_that_never_answers_fails_soon(ct, labels):
    """Test double of a stalled server: a socket on 127.0.0.1 that listens (the kernel accepts the
    connection) and never answers; the first prompt opens the session there."""
    with socket.socket() as stalled:
        stalled.bind(("127.0.0.1", 0))
        stalled.listen(8)
        url = f"http://127.0.0.1:{stalled.getsockname()[1]}"
        link = EngineLink(python=sys.executable)
        link.remote_call_timeout = SHORT
        logic = SegmentWithSAM2Logic(link=link)
        settings = Settings(mode="remote", engine="baseline", serverUrl=url, serverToken="token", window="abdomen")
        seg, sid = logic.prepareSegmentation(ct)
        t0 = time.monotonic()
        with pytest.raises(ServerError) as err:
            logic.addPoints(ct, seg, sid, [liver_point(ct, labels)], [True], red_at(ct, [0, 0, K]), settings)
        took = time.monotonic() - t0
    assert url in str(err.value) and f"within {SHORT:g} s" in str(err.value)
    assert took < LOOSE, took
