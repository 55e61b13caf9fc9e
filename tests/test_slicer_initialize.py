"""Initialize (issue 20 item 2): the engine server starts and the chosen model loads in the background,
stepped from the GUI timer, with download progress; the first prompt then builds no model.

On slicer-core with a real ``sam2volume serve`` on 127.0.0.1 (started as the module starts it). The
checkpoint download comes from a local HTTP server on 127.0.0.1 (a TEST DOUBLE of the model host,
real HTTP, sending slowly so that progress can be seen); the engine server finds it because its Python
gets a ``sitecustomize.py`` (a TEST DOUBLE for the registry's address) that points the registry's
``sam2.1-hiera-tiny`` and ``sam2.1-hiera-small`` at that server. The model cache is a temporary folder
(``SAM2VOLUME_CACHE``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import http.server
import sys
import threading
import time

import numpy as np
import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)

from SegmentWithSAM2Lib.engine_link import EngineLink, Settings  # noqa: E402
from SegmentWithSAM2Lib.logic import EngineStarting, SegmentWithSAM2Logic  # noqa: E402

from server_helpers import raw  # noqa: E402

SAM2 = Settings(mode="local", engine="sam2", model="sam2.1-hiera-tiny", device="cpu", window="abdomen", stopAfter=0)
BASELINE = Settings(mode="local", engine="baseline", device="cpu", window="abdomen", stopAfter=0)
STEP_BOUND_S = 2.0  # a property (no step waits on the server), not a benchmark: generous on a shared machine


@pytest.fixture
def ct(totalseg):
    sc.fresh_scene()
    return sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")


@pytest.fixture
def logic():
    """The module's logic with the tests' engine link (random-weight SAM2 at 128 px), closed afterwards."""
    lg = SegmentWithSAM2Logic(link=sc.engine_link())
    yield lg
    lg.close()


def initialize(logic, settings, timeout=300.0):
    """Step Initialize as the widget's 50 ms timer does (logic.poll); every step's duration and state."""
    init = logic.startInitialize(settings)
    steps = []
    end = time.monotonic() + timeout
    while not init.done and time.monotonic() < end:
        t0 = time.monotonic()
        logic.poll()
        steps.append((time.monotonic() - t0, init.stage, init.bytes_done, init.bytes_total, init.message))
        time.sleep(0.05)
    assert init.done, f"Initialize did not end within {timeout:g} s: {steps[-3:]}"
    return init, steps


def server_json(link, path):
    status, out = raw(link.server, "GET", path)
    assert status == 200, out
    return out


def prompt(logic, ct, settings):
    """One positive point in the middle of axial slice 14 (a new segment)."""
    seg, sid = logic.prepareSegmentation(ct)
    dims = ct.GetImageData().GetDimensions()
    ijk = [dims[0] // 2, dims[1] // 2, 14]
    return logic.addPoints(ct, seg, sid, [sc.ras_of(ct, ijk)], [True], sc.slice_node("Red", sc.ras_of(ct, ijk)), settings)


def test_initialize_never_blocks_a_step_and_the_first_prompt_builds_no_model(ct, logic):
    link = logic.link  # random weights at 128 px: no download
    init, steps = initialize(logic, SAM2)
    assert init.ready, init.message
    assert max(d for d, *_ in steps) < STEP_BOUND_S, max(steps)
    stages = [s for _, s, *_ in steps]
    assert "waiting" in stages and stages[-1] == "ready", stages
    assert "ready" in init.message and "sam2.1-hiera-tiny" in init.message
    server = link.server
    models = server_json(link, "/v1/models")
    assert any(m.startswith("sam2.1-hiera-tiny@128px") for m in models["loaded"]), models
    assert server_json(link, "/v1/stats")["models_built"] == 1
    u = prompt(logic, ct, SAM2)
    assert u.mask_kji.shape[0] == 1  # the slice's mask came back
    assert link.server is server and server.alive()  # no second server was started
    stats = server_json(link, "/v1/stats")
    assert stats["models_built"] == 1 and stats["sessions"] == 1, stats  # the session took the loaded model
    # Initialize again: already loaded, ready at once, nothing built
    init, _ = initialize(logic, SAM2)
    assert init.ready and server_json(link, "/v1/stats")["models_built"] == 1


def test_a_prompt_while_initializing_is_refused_with_a_message(ct, logic):
    logic.startInitialize(SAM2)
    with pytest.raises(EngineStarting, match="the engine is still starting.*prompt again once it is ready"):
        prompt(logic, ct, SAM2)
    init, _ = initialize(logic, SAM2)
    assert init.ready, init.message


# ------------------------------------------------------------- download from a local model host
class _SlowFiles(http.server.BaseHTTPRequestHandler):
    """TEST DOUBLE of the model host: serves in-memory files by path, in 256 KiB pieces with a pause
    between them, with the digest header Hugging Face sends (X-Linked-Etag) where one is set."""

    files: dict = {}  # path -> (bytes, sha256 to announce or None)
    pause = 0.01

    def do_GET(self):  # noqa: N802
        if self.path not in self.files:
            self.send_response(404)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        data, sha = self.files[self.path]
        self.send_response(200)
        self.send_header("Content-Length", str(len(data)))
        if sha:
            self.send_header("X-Linked-Etag", f'"{sha}"')
        self.end_headers()
        for i in range(0, len(data), 1 << 18):
            self.wfile.write(data[i:i + (1 << 18)])
            time.sleep(self.pause)

    def log_message(self, *a):
        pass


SITECUSTOMIZE = """
# TEST DOUBLE for the registry's download address: the models come from the local test host
import os
from dataclasses import replace
from sam2volume.models import registry
for _name, _var in (("sam2.1-hiera-tiny", "TEST_TINY_URL"), ("sam2.1-hiera-small", "TEST_SMALL_URL")):
    registry.MODELS[_name] = replace(registry.MODELS[_name], url=os.environ[_var])
"""


def tiny_checkpoint() -> bytes:
    """A real sam2.1-hiera-tiny checkpoint file's bytes (random weights, float16)."""
    import io

    import torch

    from sam2_helpers import engine_config
    from sam2volume.engine.predictor import build_predictor

    model = build_predictor(engine_config(seed=3))
    buf = io.BytesIO()
    torch.save({"model": {k: v.half() for k, v in model.state_dict().items()}}, buf)
    return buf.getvalue()


@pytest.fixture(scope="module")
def model_host(tmp_path_factory):
    """The local model host with a real sam2.1-hiera-tiny checkpoint (random weights, 128 px, float16) and a
    corrupt 'small' one (its announced digest is not its content's), and the environment the engine server needs."""
    tiny = tiny_checkpoint()
    _SlowFiles.files = {"/tiny.pt": (tiny, hashlib.sha256(tiny).hexdigest()),
                        "/small.pt": (b"\0" * (3 << 20), "0" * 64)}
    with served_models(_SlowFiles, tmp_path_factory.mktemp("model_host")) as (link, cache):
        yield link, cache, len(tiny)


@contextlib.contextmanager
def served_models(handler, folder, site_code=SITECUSTOMIZE):
    """The model host ``handler`` on 127.0.0.1 serving /tiny.pt and /small.pt, and an engine link (not started)
    whose server gets ``site_code`` as its sitecustomize.py and its models from that host into folder/cache."""
    import os

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    (folder / "site").mkdir(exist_ok=True)
    (folder / "site" / "sitecustomize.py").write_text(site_code)
    url = f"http://127.0.0.1:{httpd.server_address[1]}"
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("SAM2VOLUME_CACHE", str(folder / "cache"))
            mp.delenv("SAM2VOLUME_OFFLINE", raising=False)
            mp.setenv("TEST_TINY_URL", f"{url}/tiny.pt")
            mp.setenv("TEST_SMALL_URL", f"{url}/small.pt")
            mp.setenv("PYTHONPATH", os.pathsep.join([str(folder / "site"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep))
            link = EngineLink(python=sys.executable, config_overrides={"image_size": 128, "seed": 0},
                              engine_args=("--model", "sam2.1-hiera-tiny", "--model", "sam2.1-hiera-small"))
            try:
                yield link, folder / "cache"
            finally:
                link.stop()
    finally:
        httpd.shutdown()


def test_initialize_reports_the_checkpoint_download_and_the_first_prompt_builds_no_model(ct, model_host):
    link, cache, size = model_host
    logic = SegmentWithSAM2Logic(link=link)
    init, steps = initialize(logic, SAM2)
    assert init.ready, init.message
    assert max(d for d, *_ in steps) < STEP_BOUND_S, max(steps)
    downloading = [(done, total) for _, stage, done, total, _ in steps if stage == "downloading"]
    # progress as it came: part of the file, its total, growing; then all of it
    assert any(0 < done < total == size for done, total in downloading), downloading
    assert [d for d, _ in downloading] == sorted(d for d, _ in downloading)
    assert any("downloading sam2.1-hiera-tiny" in m and " MB" in m for *_, m in steps)
    assert init.bytes_done == init.bytes_total == size
    assert (cache / "sam2.1_hiera_tiny.pt").stat().st_size == size
    assert "building" in [s for _, s, *_ in steps]
    assert server_json(link, "/v1/stats")["models_built"] == 1
    load = server_json(link, "/v1/models/sam2.1-hiera-tiny/load")
    assert load["stage"] == "ready" and load["bytes_done"] == size and load["error"] is None, load
    u = prompt(logic, ct, SAM2)
    assert u.mask_kji.shape[0] == 1
    assert server_json(link, "/v1/stats")["models_built"] == 1  # the checkpoint's model, built once, by Initialize
    logic.reset()


def test_a_failed_load_says_why_and_the_module_stays_usable(ct, model_host):
    link, cache, _ = model_host
    logic = SegmentWithSAM2Logic(link=link)
    small = dataclasses.replace(SAM2, model="sam2.1-hiera-small")
    init, steps = initialize(logic, small)
    assert init.stage == "failed", init.message
    assert max(d for d, *_ in steps) < STEP_BOUND_S
    assert "Initialize failed: loading sam2.1-hiera-small: checksum mismatch downloading" in init.message, init.message
    assert "press Initialize again" in init.message
    assert not (cache / "sam2.1_hiera_small.pt").exists() and not logic.initializing
    assert link.server.alive()  # the server survived the failed load
    # the module goes on: a prompt with the baseline engine on the same server, and Initialize again
    u = prompt(logic, ct, BASELINE)
    assert np.asarray(u.mask_kji).ndim == 3
    init, _ = initialize(logic, SAM2)
    assert init.ready, init.message
    logic.reset()


def test_load_endpoint_refuses_bad_settings_at_once_and_names_them():
    link = sc.engine_link()
    try:
        link.local_server(SAM2)
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-tiny/load", {"config": {"model": "sam2.1-hiera-large"}})
        assert status == 400 and "the path names 'sam2.1-hiera-tiny'" in out["error"]["message"], out
        status, out = raw(link.server, "POST", "/v1/models/sam2.1-hiera-tiny/load", {"config": {"image_size": 4096, "random_weights": True}})
        assert status == 200, out
        deadline = time.monotonic() + 60
        while out["stage"] not in ("ready", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
            out = raw(link.server, "GET", "/v1/models/sam2.1-hiera-tiny/load")[1]
        assert out["stage"] == "failed" and out["error"]["type"] == "InputError", out
        assert "image_size 4096 is over this server's limit" in out["error"]["message"]
    finally:
        link.stop()


def test_a_model_loaded_ahead_is_kept_until_a_session_takes_it():
    """The server's pool (in process, a random-weight tiny model at 128 px): a load ahead outlives the
    sessions open at the time; the next session takes it, and it is freed with that session."""
    from sam2volume.server.config import ServerConfig
    from sam2volume.server.pool import ModelPool

    pool = ModelPool(ServerConfig(allow_random_weights=True, device="cpu"))
    cfg = pool.engine_config({"model": "sam2.1-hiera-tiny", "random_weights": True, "image_size": 128})
    first = pool.predictor(cfg)  # session A
    assert pool.predictor(cfg, user=False) is first  # Initialize while A is open: already built
    pool.release(cfg)  # A closes
    assert pool.is_loaded(cfg) and pool.builds == 1  # kept for the session Initialize was for
    assert pool.predictor(cfg) is first  # session B takes it
    pool.release(cfg)  # B closes: freed as any model but the server's default
    assert not pool.is_loaded(cfg) and pool.builds == 1


def test_initialize_in_remote_mode_loads_the_model_on_that_server():
    """Remote mode: a server someone started (here `sam2volume serve` on 127.0.0.1); Initialize reaches it
    with the URL and token typed and loads the model there."""
    from server_helpers import local_server

    sc.fresh_scene()
    with local_server("--model", "sam2.1-hiera-tiny", random_weights=True) as server:
        link = sc.engine_link()
        logic = SegmentWithSAM2Logic(link=link)
        remote = dataclasses.replace(SAM2, mode="remote", serverUrl=server.url, serverToken=server.token)
        init, steps = initialize(logic, remote)
        assert init.ready, init.message
        assert max(d for d, *_ in steps) < STEP_BOUND_S
        assert link.server is None  # no local server was started
        status, models = raw(server, "GET", "/v1/models")
        assert any(m.startswith("sam2.1-hiera-tiny@128px") for m in models["loaded"]), models
        wrong = dataclasses.replace(remote, serverToken="not-the-token")
        init, _ = initialize(logic, wrong)
        assert init.stage == "failed" and "token" in init.message, init.message


def test_a_server_that_cannot_start_fails_initialize_with_its_log():
    sc.fresh_scene()
    link = EngineLink(python=sys.executable, engine_args=("--max-sessions", "-3"))
    logic = SegmentWithSAM2Logic(link=link)
    try:
        init, steps = initialize(logic, BASELINE, timeout=120)
        assert init.stage == "failed", init.message
        assert max(d for d, *_ in steps) < STEP_BOUND_S
        assert "exited with code" in init.message and "max-sessions" in init.message, init.message
        assert not logic.initializing
    finally:
        logic.close()


def test_initialize_again_with_other_settings_starts_over_and_close_ends_it(ct, logic):
    link = logic.link
    first = logic.startInitialize(SAM2)
    assert logic.startInitialize(SAM2) is first  # pressed again: it goes on
    other = logic.startInitialize(BASELINE)  # other settings: started over for those
    assert other is not first
    prompt(logic, ct, SAM2)  # not the settings being initialized: not refused (it waits for the server itself)
    init, _ = initialize(logic, BASELINE)
    assert init is other and init.ready and "baseline" in init.message, init.message
    logic.startInitialize(SAM2)
    logic.close()  # the module closes while Initialize runs: nothing is left initializing
    assert not logic.initializing and link.server is None


def test_a_first_prompt_without_initialize_starts_it_in_the_background(ct, logic):
    """As the widget sets it (initializeOnFirstPrompt): the first prompt does not start the server on the
    GUI thread; it starts Initialize, is refused with a message, and the prompt after "ready" builds nothing."""
    logic.initializeOnFirstPrompt = True
    t0 = time.monotonic()
    with pytest.raises(EngineStarting, match="the engine is starting in the background.*prompt again once it says ready"):
        prompt(logic, ct, SAM2)
    assert time.monotonic() - t0 < STEP_BOUND_S and logic.initializing
    init, steps = initialize(logic, SAM2)
    assert init.ready, init.message
    assert max(d for d, *_ in steps) < STEP_BOUND_S
    prompt(logic, ct, SAM2)
    assert server_json(logic.link, "/v1/stats")["models_built"] == 1
    # the local server stops (a crash): the next prompt starts Initialize again instead of a blocking restart,
    # and the prompt after it replays the segment's prompts into the new server
    seg, sid = logic.prepareSegmentation(ct, segmentName="kept")
    dims = ct.GetImageData().GetDimensions()
    point = sc.ras_of(ct, [dims[0] // 2, dims[1] // 2, 14])
    logic.addPoints(ct, seg, sid, [point], [True], sc.slice_node("Red", point), SAM2)
    logic.link.server.stop()
    with pytest.raises(EngineStarting, match="the engine is starting in the background"):
        logic.addPoints(ct, seg, sid, [point + np.array([2.0, 2.0, 0.0])], [True], sc.slice_node("Red", point), SAM2)
    init, _ = initialize(logic, SAM2)
    assert init.ready, init.message
    u = logic.addPoints(ct, seg, sid, [point + np.array([2.0, 2.0, 0.0])], [True], sc.slice_node("Red", point), SAM2)
    assert u.mask_kji.shape[0] == 1 and "restarted" in logic.lastMessage, logic.lastMessage
    assert server_json(logic.link, "/v1/stats")["models_built"] == 1  # the new server's model: Initialize's
    # it stops again and Initialize is pressed (no prompt in between): the next prompt still replays there
    logic.link.server.stop()
    init, _ = initialize(logic, SAM2)
    assert init.ready, init.message
    u = logic.addPoints(ct, seg, sid, [point + np.array([-2.0, 2.0, 0.0])], [True], sc.slice_node("Red", point), SAM2)
    assert u.mask_kji.shape[0] == 1 and "restarted" in logic.lastMessage, logic.lastMessage
