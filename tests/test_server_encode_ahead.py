"""Encoding ahead (``encode_ahead``) on a real engine server process: two users' sessions prompting and
propagating at the same time get the labelmaps they get without it, a propagation after the background
work starts warm, and closing a session while it encodes ahead neither hangs nor disturbs the other.

SAM2 hiera tiny with random weights at 128 px, real CT slices (../shared/data), server on 127.0.0.1 (CPU).
"""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest

from sam2volume import read_labelmap, read_volume
from sam2volume.client import RemoteSession

from sam2_helpers import engine_config
from server_helpers import local_server, raw, run_concurrently, slab, stats, wait_for

pytest.importorskip("sam2")

N, AHEAD = 12, 6  # slices of the short volume; slices user A's session encodes ahead
LIVER, SPLEEN = 5, 1


@pytest.fixture(scope="module")
def server():
    # user C below asks to encode 200 slices ahead: over the default cap (--max-encode-ahead 64)
    with local_server("--idle-timeout", "120", "--max-encode-ahead", "256", random_weights=True) as s:
        yield s


@pytest.fixture(scope="module")
def ct(totalseg):
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    return ct, read_labelmap(totalseg / "example_seg.nii.gz", reference=ct)


@pytest.fixture(scope="module")
def short(ct):
    return slab(ct[0], 10, N), slab(ct[1], 10, N)


def _organ_point(lab, value, k):
    ij = np.argwhere(lab.array[:, :, k] == value)
    return [*ij[len(ij) // 2].tolist(), k]


def _prompt_a(s, lab):  # a box around the liver on slice 5
    ij = np.argwhere(lab.array[:, :, 5] == LIVER)
    s.add_box(1, [[*ij.min(0).tolist(), 5], [*ij.max(0).tolist(), 5]], name="liver")


def _prompt_b(s, lab):  # a click on the spleen on slice 6
    s.add_points(1, [_organ_point(lab, SPLEEN, 6)], name="spleen")


PROMPTS = {"A": _prompt_a, "B": _prompt_b}


def _session(server, vol, ahead, axis="axial"):
    return RemoteSession(server.url, vol, axis, engine_config(encode_ahead=ahead), token=server.token, timeout=120)


def _cpu_seconds(pid):
    """CPU time (user + system) a process has used so far, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _propagate(s):
    job = s.start_propagation("both", stop_after=None)
    report = job.wait(timeout=180)
    return report, job.slices_encoded, s.result().array


@pytest.fixture(scope="module")
def plain(server, short):
    """Each user's run without encoding ahead (same server, weights, volume and prompts)."""
    vol, lab = short
    out = {}
    for name, prompt in PROMPTS.items():
        with _session(server, vol, 0) as s:
            prompt(s, lab)
            out[name] = _propagate(s)
    return out


def test_without_encoding_ahead_the_propagation_encodes_every_unprompted_slice(plain):
    for report, encoded, result in plain.values():
        assert report.slices_run == N + 1  # the prompted slice starts both directions
        assert encoded == N - 1  # the prompt encoded its own slice
        assert result.any()


def test_two_sessions_encoding_ahead_at_once_get_the_plain_results(server, short, plain):
    """User A waits for the slices around the prompt to be encoded before propagating (its propagation
    starts warm); user B propagates at once, stopping its own background work; both run at the same
    time, sharing the server's model and device lock."""
    vol, lab = short
    barrier = threading.Barrier(2, timeout=60)

    def user(name, ahead, look_first):
        with _session(server, vol, ahead) as s:
            barrier.wait()
            PROMPTS[name](s, lab)
            if look_first:  # the user looks at the mask a moment: no background work left anywhere
                assert wait_for(lambda: stats(server)["encoding_ahead"] == 0, 120)
            return _propagate(s)

    out = run_concurrently({"A": lambda: user("A", AHEAD, True), "B": lambda: user("B", N, False)}, 300)
    for name in PROMPTS:
        report, _, result = out[name]
        assert report == plain[name][0]
        assert np.array_equal(result, plain[name][2]), name
    assert out["A"][1] == N - 1 - AHEAD  # warm: the AHEAD slices nearest the prompt were encoded already
    assert 0 <= out["B"][1] <= N - 1  # whatever its background had done before the propagation stopped it


def test_closing_a_session_while_it_encodes_ahead_neither_hangs_nor_disturbs_the_other(server, ct, short, plain):
    vol, lab = short
    with _session(server, vol, AHEAD) as a:
        _prompt_a(a, lab)
        assert wait_for(lambda: stats(server)["encoding_ahead"] == 0, 120)
        # user C: the whole CT cut coronally (101 slices), all of them to encode ahead
        c = _session(server, ct[0], 200, axis="coronal")
        try:
            c.add_points(1, [_organ_point(ct[1], LIVER, 15)])
            assert stats(server)["encoding_ahead"] == 1  # C's background work runs
            t0 = time.monotonic()
            status, body = raw(server, "DELETE", f"/v1/sessions/{c.id}", timeout=30)
            assert status == 200 and body == {"closed": c.id}
            assert time.monotonic() - t0 < 5.0
        finally:
            c.close()  # the client's side (the server answers 404 now)
        assert stats(server)["sessions"] == 1 and stats(server)["encoding_ahead"] == 0
        # C's background work stopped with it: the idle server uses next to no CPU (encoding C's 100
        # slices ahead takes about 7 s of one core on this project's machines)
        if os.path.exists(f"/proc/{server.process.pid}/stat"):
            c0 = _cpu_seconds(server.process.pid)
            time.sleep(1.0)
            assert _cpu_seconds(server.process.pid) - c0 < 0.3
        # A goes on as if C had never been there: warm, and the plain run's result
        report, encoded, result = _propagate(a)
        assert report == plain["A"][0] and encoded == N - 1 - AHEAD
        assert np.array_equal(result, plain["A"][2])
    assert server.alive()
    log = server.log_tail(200_000)
    assert "Traceback" not in log and "encoding slices ahead stopped" not in log
    assert "closed" in log  # the log is the server's own (sessions opened and closed are logged)
