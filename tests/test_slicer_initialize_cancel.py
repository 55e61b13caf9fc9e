"""Cancel for Initialize: the Initialize button reads Cancel while it runs (logic.cancelInitialize).

On slicer-core with a real ``sam2volume serve`` on 127.0.0.1 (started as the module starts it). The
checkpoint comes from a local HTTP server on 127.0.0.1: a TEST DOUBLE of the model host (real HTTP, a
strong ETag and Range / If-Range answered as a CDN does) that sends the first 3 MiB of a whole-file request,
then holds it until the test lets it go on, so that Cancel surely lands part-way through the download. The
engine server's Python gets a ``sitecustomize.py`` (a TEST DOUBLE for the registry's download address, and,
where TEST_BUILD_GATE is set, a hold before the real model build until the test removes that file, so that
Cancel surely lands while the model is being built). The model cache is a temporary folder.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import http.server
import json
import os
import re
import threading
import time

import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)

from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic  # noqa: E402

from server_helpers import raw  # noqa: E402
from test_slicer_initialize import SAM2, STEP_BOUND_S, initialize, served_models, server_json, tiny_checkpoint  # noqa: E402

HOLD_AT = 3 << 20  #: the model host holds a whole-file request after this many bytes
SMALL = dataclasses.replace(SAM2, model="sam2.1-hiera-small")

SITECUSTOMIZE = """
# TEST DOUBLE for the registry's download address: the models come from the local test host
import os
from dataclasses import replace
from sam2volume.models import registry
for _name, _var in (("sam2.1-hiera-tiny", "TEST_TINY_URL"), ("sam2.1-hiera-small", "TEST_SMALL_URL")):
    if os.environ.get(_var):
        registry.MODELS[_name] = replace(registry.MODELS[_name], url=os.environ[_var])
# TEST DOUBLE: the real model build, held while the file TEST_BUILD_GATE exists (at most 120 s)
if os.environ.get("TEST_BUILD_GATE"):
    import time
    from sam2volume.engine import predictor as _predictor
    _build = _predictor.build_predictor
    def _held_build(*args, **kwargs):
        end = time.monotonic() + 120
        while os.path.exists(os.environ["TEST_BUILD_GATE"]) and time.monotonic() < end:
            time.sleep(0.05)
        return _build(*args, **kwargs)
    _predictor.build_predictor = _held_build
"""


class _HeldFiles(http.server.BaseHTTPRequestHandler):
    """TEST DOUBLE of the model host: in-memory files by path with a strong ETag (their SHA-256, which the
    weights manager also takes as the digest) and Range / If-Range; a whole-file request is held after
    :data:`HOLD_AT` bytes until ``go[path]`` is set (then it goes on, or breaks off for a path in ``drop``);
    every request is recorded in ``requests``."""

    files: dict = {}  # path -> bytes
    go: dict = {}  # path -> threading.Event
    drop: set = set()
    requests: list = []

    def do_GET(self):  # noqa: N802
        data = self.files.get(self.path)
        if data is None:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        etag = f'"{hashlib.sha256(data).hexdigest()}"'
        rng, if_range = self.headers.get("Range"), self.headers.get("If-Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        start = int(m.group(1)) if m and if_range in (None, etag) and int(m.group(1)) < len(data) else 0
        rec = {"path": self.path, "range": rng, "if_range": if_range, "start": start, "sent": start, "hung_up": False,
               "ended": threading.Event()}
        self.requests.append(rec)
        self.send_response(206 if start else 200)
        self.send_header("Content-Length", str(len(data) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("ETag", etag)
        self.send_header("Accept-Ranges", "bytes")
        self.end_headers()
        try:
            while rec["sent"] < len(data):
                if start == 0 and rec["sent"] == HOLD_AT:
                    self.go[self.path].wait(120)
                    if self.path in self.drop:
                        return  # the connection closes short of its Content-Length
                piece = data[rec["sent"]:min(rec["sent"] + (1 << 18), len(data))]
                self.wfile.write(piece)
                self.wfile.flush()
                rec["sent"] += len(piece)
                time.sleep(0.02 if start == 0 else 0.0)
        except (BrokenPipeError, ConnectionResetError):
            rec["hung_up"] = True  # the client closed the connection: the download stopped
        finally:
            rec["ended"].set()

    def log_message(self, *a):
        pass


def _site(folder):
    """A PYTHONPATH whose first folder holds this file's sitecustomize.py."""
    (folder / "site").mkdir(exist_ok=True)
    (folder / "site" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    return os.pathsep.join([str(folder / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)


@pytest.fixture(scope="module")
def held_host(tmp_path_factory):
    """The held model host with a real sam2.1-hiera-tiny checkpoint (random weights, 128 px, float16) and an
    8 MiB 'small' one (never completed here), and an engine link whose server downloads from it."""
    _HeldFiles.files = {"/tiny.pt": tiny_checkpoint(), "/small.pt": b"\1" * (8 << 20)}
    _HeldFiles.go = {path: threading.Event() for path in _HeldFiles.files}
    _HeldFiles.requests = []
    with served_models(_HeldFiles, tmp_path_factory.mktemp("held_host"), SITECUSTOMIZE) as (link, cache):
        try:
            yield link, cache, _HeldFiles
        finally:
            for event in _HeldFiles.go.values():
                event.set()  # no request stays held


def step_until(logic, init, until, timeout=300.0):
    """Step as the widget's timer does until ``until()``; every step's duration."""
    took = []
    end = time.monotonic() + timeout
    while not until() and not init.done and time.monotonic() < end:
        t0 = time.monotonic()
        logic.poll()
        took.append(time.monotonic() - t0)
        time.sleep(0.05)
    assert until(), f"not reached within {timeout:g} s: {init.stage}: {init.message}"
    return took


def load_state_until(link, model, stages, timeout=120.0):
    end = time.monotonic() + timeout
    while True:
        state = server_json(link, f"/v1/models/{model}/load")
        if state["stage"] in stages or time.monotonic() > end:
            return state
        time.sleep(0.1)


def timed(fn):
    t0 = time.monotonic()
    out = fn()
    return out, time.monotonic() - t0


def test_cancel_stops_the_download_and_initialize_again_resumes_it(held_host):
    link, cache, host = held_host
    data = host.files["/tiny.pt"]
    sc.fresh_scene()
    logic = SegmentWithSAM2Logic(link=link)
    init = logic.startInitialize(SAM2)
    took = step_until(logic, init, lambda: init.stage == "downloading" and init.bytes_done >= HOLD_AT)
    assert init.bytes_done == HOLD_AT and init.bytes_total == len(data)  # the host holds the rest back
    _, cancel_took = timed(logic.cancelInitialize)
    assert max(took + [cancel_took]) < STEP_BOUND_S, (max(took), cancel_took)
    assert init.stage == "cancelled" and init.done and not init.ready and not logic.initializing
    assert init.message.startswith("Initialize cancelled: the download of sam2.1-hiera-tiny stopped at 3.1 of"), init.message
    assert "press Initialize again to resume the download where it stopped" in init.message
    assert init.progress == (3, len(data) // 1_000_000)  # the bar shows where it stopped
    # the worker waits for the host's next bytes: cancelling until its next chunk, then cancelled
    assert server_json(link, "/v1/models/sam2.1-hiera-tiny/load")["stage"] == "cancelling"
    host.go["/tiny.pt"].set()
    state = load_state_until(link, "sam2.1-hiera-tiny", ("cancelled",))
    assert state["stage"] == "cancelled" and state["error"] is None, state
    first = host.requests[0]
    assert first["ended"].wait(60) and first["hung_up"] and first["sent"] < len(data), first  # the download stopped
    part = cache / "sam2.1_hiera_tiny.pt.part"
    kept = part.stat().st_size
    assert kept == state["bytes_done"] and HOLD_AT < kept <= HOLD_AT + (1 << 20)  # the chunk it was reading, then no more
    assert not (cache / "sam2.1_hiera_tiny.pt").exists()
    assert server_json(link, "/v1/models/sam2.1-hiera-tiny/load")["bytes_done"] == kept and part.stat().st_size == kept
    stats, models = server_json(link, "/v1/stats"), server_json(link, "/v1/models")
    assert stats["models_built"] == 0 and models["loaded"] == [], (stats, models)  # no predictor was built
    # Initialize again: the download resumes from the kept part and the model loads
    init, steps = initialize(logic, SAM2)
    assert init.ready, init.message
    assert max(d for d, *_ in steps) < STEP_BOUND_S, max(steps)
    resumed = host.requests[1]
    assert resumed["range"] == f"bytes={kept}-" and resumed["if_range"] == f'"{hashlib.sha256(data).hexdigest()}"', resumed
    assert all(done >= kept for _, stage, done, *_ in steps if stage == "downloading")
    installed = cache / "sam2.1_hiera_tiny.pt"
    assert installed.read_bytes() == data and not part.exists()
    record = json.loads((cache / "sam2.1_hiera_tiny.pt.sha256.json").read_text())
    assert record["sha256"] == record["verified_against"] == hashlib.sha256(data).hexdigest()  # checksum verified
    assert server_json(link, "/v1/stats")["models_built"] == 1
    logic.reset()


def test_a_load_cancelled_by_another_client_ends_initialize_as_cancelled(held_host):
    link, cache, host = held_host
    sc.fresh_scene()
    logic = SegmentWithSAM2Logic(link=link)
    init = logic.startInitialize(SMALL)
    step_until(logic, init, lambda: init.stage == "downloading" and init.bytes_done >= HOLD_AT)
    status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-small/load/cancel")  # another client
    assert status == 200 and out["cancelled"] and out["stage"] == "cancelling", out
    assert "stops at its next chunk" in out["message"] and "loading again resumes it" in out["message"], out
    took = step_until(logic, init, lambda: init.done)
    assert max(took) < STEP_BOUND_S
    assert init.stage == "cancelled" and "was cancelled on the engine server" in init.message, init.message
    # the host breaks the connection off before the next chunk (as a read timeout would): still cancelled, not failed
    host.drop.add("/small.pt")
    host.go["/small.pt"].set()
    state = load_state_until(link, "sam2.1-hiera-small", ("cancelled", "failed"))
    assert state["stage"] == "cancelled" and state["error"] is None, state
    assert (cache / "sam2.1_hiera_small.pt.part").stat().st_size == HOLD_AT


def test_cancel_while_building_says_the_build_finishes(tmp_path, monkeypatch):
    """Random weights (no download); the build is held (TEST_BUILD_GATE) so that Cancel lands while building."""
    sc.fresh_scene()
    gate = tmp_path / "gate"
    gate.touch()
    monkeypatch.setenv("PYTHONPATH", _site(tmp_path))
    monkeypatch.setenv("TEST_BUILD_GATE", str(gate))
    logic = SegmentWithSAM2Logic(link=sc.engine_link())
    link = logic.link
    try:
        init = logic.startInitialize(SAM2)
        took = step_until(logic, init, lambda: init.stage == "building")
        _, cancel_took = timed(logic.cancelInitialize)
        assert max(took + [cancel_took]) < STEP_BOUND_S
        assert init.stage == "cancelled" and not logic.initializing, init.message
        assert "sam2.1-hiera-tiny was being built already, which cannot be interrupted: the server finishes building it" in init.message
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-tiny/load/cancel")  # the endpoint's own answer
        assert status == 200 and out["stage"] == "building" and out["cancelled"] is False, out
        assert "cannot be interrupted: it finishes and stays loaded" in out["message"], out
        again = logic.startInitialize(SAM2)  # Initialize again while it builds: it follows the same load
        step_until(logic, again, lambda: again.stage == "building")
        gate.unlink()
        assert load_state_until(link, "sam2.1-hiera-tiny", ("ready", "failed"))["stage"] == "ready"
        logic.cancelInitialize()  # Cancel after the server finished, before a step saw it: ready, not cancelled
        assert again.ready and "had finished loading before Cancel" in again.message, again.message
        assert server_json(link, "/v1/stats")["models_built"] == 1
        # a finished load, and one never asked for: no-ops answered with their stage
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-tiny/load/cancel")
        assert status == 200 and out["stage"] == "ready" and out["cancelled"] is False, out
        assert out["message"] == "nothing to cancel: the load of sam2.1-hiera-tiny is ready"
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-small/load/cancel")
        assert status == 200 and out["stage"] == "idle" and out["cancelled"] is False, out
        # the same guards as the other routes
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-tiny/load/cancel", token="wrong")
        assert status == 401 and out["error"]["type"] == "AuthError", out
        status, out = raw(link.server, "GET", "/v1/models/sam2.1-hiera-tiny/load/cancel")
        assert status == 405 and out["error"]["type"] == "MethodNotAllowed", out
        init, _ = initialize(logic, SAM2)  # and again: the model the cancelled one built is ready at once
        assert init.ready and init is not again and server_json(link, "/v1/stats")["models_built"] == 1, init.message
    finally:
        logic.close()


def test_cancel_while_the_local_server_starts_stops_it():
    """Cancel before the local server answers: the process is stopped (nothing Initialize started runs on
    for nothing); Initialize again starts a new one."""
    sc.fresh_scene()
    logic = SegmentWithSAM2Logic(link=sc.engine_link())
    link = logic.link
    try:
        init = logic.startInitialize(SAM2)
        logic.poll()  # starting -> waiting: the process is started, importing
        server = link.server
        assert init.stage == "waiting" and server is not None and not server.ready, init.message
        _, took = timed(logic.cancelInitialize)
        assert took < STEP_BOUND_S
        assert init.stage == "cancelled" and not logic.initializing
        assert "the engine server that was starting was stopped; press Initialize to start it again" in init.message
        assert server.process.poll() is not None and link.server is None
        assert logic.cancelInitialize() is init and init.stage == "cancelled"  # pressed again: nothing more
        init, steps = initialize(logic, SAM2)
        assert init.ready, init.message
        assert max(d for d, *_ in steps) < STEP_BOUND_S
        assert link.server is not server and link.server.alive()
    finally:
        logic.close()


def test_the_widget_button_reads_cancel_while_initialize_runs_and_cancels_it():
    """The widget (Qt, not run here): from its source, the Initialize button calls logic.cancelInitialize while
    Initialize runs, and its text is Cancel until Initialize ends (then Initialize again)."""
    tree = ast.parse((sc.MODULE / "SegmentWithSAM2.py").read_text())
    methods = {n.name: n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)}
    first = methods["onInitialize"].body[1]  # after the docstring
    assert isinstance(first, ast.If) and ast.unparse(first.test) == "self.logic.initializing"
    assert "self.logic.cancelInitialize()" in ast.unparse(first)
    shown = ast.unparse(methods["_showInitialize"])
    assert "self.ui.initializeButton.text = 'Initialize' if init.done else 'Cancel'" in shown
    assert "setEnabled(init.done)" not in shown  # the button stays pressable while Initialize runs
