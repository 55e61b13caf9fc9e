"""The web front-end's thread split on Slicer's real libraries (slicer-core), without a browser: the
propagation's polls run on a worker thread (``FetchedJob.fetch``), its slices are written on the event
loop by the module's own ``PropagationTask``. A real local engine server (baseline) is killed mid-job."""

from __future__ import annotations

import os
import signal

import numpy as np

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)

from SegmentWithSAM2Lib.engine_link import Settings  # noqa: E402
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic  # noqa: E402

from sam2volume.web.app import FetchedJob  # noqa: E402

BASELINE = Settings(mode="local", engine="baseline", device="cpu", window="abdomen", stopAfter=3)


def _prompted(totalseg, link):
    sc.fresh_scene()
    ct = sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")
    logic = SegmentWithSAM2Logic(link=link)
    seg, sid = logic.prepareSegmentation(ct)
    point = sc.ras_of(ct, [84, 56, 15])
    logic.addPoints(ct, seg, sid, [point], [True], sc.slice_node("Red", point), BASELINE)
    return logic, ct, seg, sid


def test_fetched_job_writes_what_the_worker_fetched(totalseg):
    link = sc.engine_link()
    try:
        logic, ct, seg, sid = _prompted(totalseg, link)
        task = logic.startPropagation(ct, seg, BASELINE)
        job = task.job = FetchedJob(task.job)
        for _ in range(200):
            if task.finished:
                break
            job.fetch(0.5)  # the worker thread's part: requests only
            task.poll()  # the loop's part: no request but the final result, the write-back
        assert task.finished and task.error is None and task.written > 1
        expected = sc.result_kji(logic.controllers[(ct.GetID(), seg.GetID())].result_masks([sid])[sid])
        assert np.array_equal(sc.segment_array(seg, sid, ct), expected)
    finally:
        link.stop()


def test_engine_server_killed_mid_job_ends_the_task_with_a_message_and_frees_the_logic(totalseg):
    link = sc.engine_link()
    try:
        logic, ct, seg, sid = _prompted(totalseg, link)
        task = logic.startPropagation(ct, seg, BASELINE)
        job = task.job = FetchedJob(task.job)
        os.kill(link.server.process.pid, signal.SIGKILL)
        link.server.process.wait(30)
        job.fetch(0.5)  # on the worker thread: must not raise there (nobody would see it)
        task.poll()
        assert task.finished and task.error, task.error
        assert "engine server stopped" in task.error  # the module's own message, naming the restart
        assert not logic.busy  # a new Propagate is not refused as "already running"
    finally:
        link.stop()
