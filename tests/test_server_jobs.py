"""Propagation jobs on a real server: cancel between slices keeps results, a busy session says so."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from sam2volume import read_volume
from sam2volume.client import RemoteSession, ServerError
from sam2volume.errors import CancelledError

from server_helpers import big_ct, local_server, wait_for


@pytest.fixture(scope="module")
def big(totalseg):
    return big_ct(read_volume(totalseg / "example_ct_sm.nii.gz"))


@pytest.fixture(scope="module")
def server():
    with local_server() as srv:
        yield srv


@pytest.fixture(scope="module")
def session(big, server):
    with RemoteSession(server.url, big, "axial", engine="baseline", token=server.token) as s:
        s.add_points(1, [[241, 201, 14]])
        yield s


def test_progress_true_shows_the_propagation(big, server, capsys):
    # off a terminal the bar is plain lines on stderr, the last one at the end of the propagation
    with RemoteSession(server.url, big, "axial", engine="baseline", token=server.token, progress=True) as s:
        s.add_points(1, [[241, 201, 14]])
        rep = s.propagate("forward", stop_after=None)
    lines = [line for line in capsys.readouterr().err.splitlines() if line.startswith("propagate: ")]
    assert len(lines) >= 2
    assert lines[-1].startswith(f"propagate: {rep.slices_run}/{rep.slices_run} slice")


def test_cancel_between_slices_keeps_results(session):
    job = session.start_propagation("both", stop_after=None)
    assert wait_for(lambda: job.poll(wait=0.1) is not None and job.progress[0] >= 5, 30, 0.01)
    job.cancel()
    with pytest.raises(CancelledError, match="propagation cancelled at slice"):
        job.wait(timeout=30)
    done, total = job.progress
    assert 5 <= done < total
    kept = session.computed_slices(1)
    assert 5 <= len(kept) < session.num_slices  # the slices finished before the cancel are kept
    assert any(session.frame_mask(1, s).any() for s in kept if s != 14)


def test_propagate_with_a_cancel_event(session):
    stop = threading.Event()

    def progress(done, total):
        if done >= 3:
            stop.set()

    with pytest.raises(CancelledError):
        session.propagate("both", stop_after=None, progress=progress, cancel=stop)


def test_a_running_job_makes_the_session_busy(session):
    job = session.start_propagation("both", stop_after=None)
    with pytest.raises(ServerError, match="is running on this session; wait for it or cancel it") as info:
        session.add_points(1, [[241, 205, 14]])
    assert info.value.status == 409
    report = job.wait(timeout=60)  # then it finishes and the session works again
    assert report.slices_run == session.num_slices + 1 and not report.cancelled  # both ways from slice 14
    assert session.add_points(1, [[241, 205, 14]]).any()
    assert np.asarray(session.result().array).any()
