"""Registry (no torch), weights download against a local HTTP server, checkpoint loading."""

import hashlib
import http.server
import os
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest

from sam2volume.errors import ModelError, WeightsNotAvailableError
from sam2volume.models import MODELS, WeightsManager, get_model


def test_registry_imports_without_torch():
    code = "import sys, sam2volume.models, sam2volume.engine.config, sam2volume; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_registry_lists_sam2_and_medsam2():
    for name in ["sam2.1-hiera-tiny", "sam2.1-hiera-small", "sam2.1-hiera-base-plus", "sam2.1-hiera-large",
                 "sam2-hiera-tiny", "sam2-hiera-large", "medsam2-latest"]:
        assert name in MODELS
    assert get_model("medsam2-latest").image_size == 512
    assert get_model("SAM2.1-Hiera-Tiny").image_size == 1024
    with pytest.raises(ModelError, match="unknown model 'sam3'.*choose one of"):
        get_model("sam3")


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves one in-memory file with Range/If-Range support; class attributes configure it per test
    (a test double of a download server: real HTTP over loopback)."""

    payload = b""
    etag: str | None = None
    extra_headers: dict = {}
    cut_after: int | None = None
    send_length = True
    answer_416 = False
    # a server (or cache in front of it) that answers a Range with 206 whatever If-Range says
    ignore_if_range = False
    last_modified: str | None = None
    content_range: str | None = "bytes {start}-{end}/{total}"  # None: a 206 without Content-Range
    range_start_shift = 0  # the 206 starts this many bytes before the asked offset
    requests: list = []

    def do_GET(self):  # noqa: N802
        data = self.payload
        start = 0
        rng = self.headers.get("Range")
        if_range = self.headers.get("If-Range")
        type(self).requests.append({"range": rng, "if_range": if_range})
        if rng and self.answer_416:
            self.send_response(416)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if rng and (if_range is None or if_range in (self.etag, self.last_modified) or self.ignore_if_range):
            start = int(rng.split("=")[1].split("-")[0]) - self.range_start_shift
            self.send_response(206)
            if self.content_range:
                self.send_header("Content-Range", self.content_range.format(start=start, end=len(data) - 1, total=len(data)))
        else:
            self.send_response(200)
        body = data[start:]
        if self.send_length:
            self.send_header("Content-Length", str(len(body)))
        if self.etag:
            self.send_header("ETag", self.etag)
        if self.last_modified:
            self.send_header("Last-Modified", self.last_modified)
        for k, v in self.extra_headers.items():
            self.send_header(k, v)
        self.end_headers()
        if self.cut_after is not None:
            self.wfile.write(body[: self.cut_after])
            self.wfile.flush()
            self.connection.shutdown(2)
            return
        self.wfile.write(body)
        if not self.send_length:
            self.close_connection = True

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Handler.payload = bytes(range(256)) * 4096  # 1 MiB
    _Handler.etag = '"v1"'
    _Handler.extra_headers = {}
    _Handler.cut_after = None
    _Handler.send_length = True
    _Handler.answer_416 = False
    _Handler.ignore_if_range = False
    _Handler.last_modified = None
    _Handler.content_range = "bytes {start}-{end}/{total}"
    _Handler.range_start_shift = 0
    _Handler.requests = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _spec(url, sha=None):
    return replace(get_model("sam2.1-hiera-tiny"), url=f"{url}/sam2.1_hiera_tiny.pt", sha256=sha)


def test_download_verifies_checksum_and_records_it(tmp_path, server):
    sha = hashlib.sha256(_Handler.payload).hexdigest()
    wm = WeightsManager(tmp_path)
    ticks = []
    path = wm.download(_spec(server, sha), on_progress=lambda d, t: ticks.append((d, t)))
    assert path.read_bytes() == _Handler.payload and ticks[-1] == (len(_Handler.payload),) * 2
    assert wm.status(_spec(server, sha)) == "downloaded"
    assert wm.ensure(_spec(server)) == path  # verified again against the recorded digest
    path.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="checksum mismatch.*delete it and download again"):
        wm.ensure(_spec(server))


def test_download_resumes_a_broken_transfer(tmp_path, server):
    sha = hashlib.sha256(_Handler.payload).hexdigest()
    wm = WeightsManager(tmp_path)
    _Handler.cut_after = 300_000
    with pytest.raises(WeightsNotAvailableError, match="resume"):
        wm.download(_spec(server, sha))
    part = tmp_path / "sam2.1_hiera_tiny.pt.part"
    assert part.exists() and 0 < part.stat().st_size < len(_Handler.payload)
    assert wm.status(_spec(server, sha)) == "partial"
    _Handler.cut_after = None
    path = wm.download(_spec(server, sha))
    assert path.read_bytes() == _Handler.payload and not part.exists()
    assert _Handler.requests[-1] == {"range": "bytes=300000-", "if_range": '"v1"'}  # resumed, with a validator


def test_checksum_mismatch_deletes_download(tmp_path, server):
    wm = WeightsManager(tmp_path)
    with pytest.raises(ModelError, match="checksum mismatch"):
        wm.download(_spec(server, "0" * 64))
    assert list(tmp_path.iterdir()) == []


def test_server_published_sha256_is_checked(tmp_path, server):
    _Handler.extra_headers = {"X-Linked-Etag": '"' + "a" * 64 + '"'}
    with pytest.raises(ModelError, match="expected a{64}"):
        WeightsManager(tmp_path).download(_spec(server))
    _Handler.extra_headers = {"X-Linked-Etag": '"' + hashlib.sha256(_Handler.payload).hexdigest() + '"'}
    assert WeightsManager(tmp_path).download(_spec(server)).exists()


def test_offline_error_says_where_to_put_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("SAM2VOLUME_CACHE", str(tmp_path / "cache"))
    wm = WeightsManager(offline=True)
    spec = get_model("medsam2-latest")
    with pytest.raises(WeightsNotAvailableError, match=r"put it at .*cache/MedSAM2_latest.pt"):
        wm.ensure(spec)
    # a closed port on loopback: the network error names the fix too
    import socket

    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(WeightsNotAvailableError, match="network error.*SAM2VOLUME_CACHE"):
        WeightsManager(tmp_path, timeout=5).download(replace(spec, url=f"http://127.0.0.1:{port}/x.pt"))


@pytest.mark.sam2
def test_checkpoint_loading_good_corrupt_and_wrong_architecture(tmp_path):
    import torch

    from sam2_helpers import engine_config
    from sam2volume.engine.predictor import build_predictor

    ref = build_predictor(engine_config(seed=3))
    good = tmp_path / "good.pt"
    torch.save({"model": ref.state_dict()}, good)
    loaded = build_predictor(engine_config(random_weights=False, checkpoint=str(good), seed=9))
    for (k, a), b in zip(ref.state_dict().items(), loaded.state_dict().values()):
        assert torch.equal(a, b), k
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(good.read_bytes()[:5000])
    with pytest.raises(ModelError, match="corrupt or not a PyTorch checkpoint"):
        build_predictor(engine_config(random_weights=False, checkpoint=str(corrupt)))
    with pytest.raises(ModelError, match="does not fit model sam2.1-hiera-small"):
        build_predictor(engine_config(model="sam2.1-hiera-small", random_weights=False, checkpoint=str(good)))
    with pytest.raises(ModelError, match="does not exist"):
        build_predictor(engine_config(random_weights=False, checkpoint=str(tmp_path / "missing.pt")))
    # weights_only=True: a pickle that would run code is refused
    evil = tmp_path / "evil.pt"
    torch.save({"model": ref.state_dict(), "x": Path("/")}, evil)
    with pytest.raises(ModelError, match="corrupt or not a PyTorch checkpoint"):
        build_predictor(engine_config(random_weights=False, checkpoint=str(evil)))


def test_custom_config_file(tmp_path):
    from sam2_helpers import engine_config
    from sam2volume.engine.config import EngineConfig

    with pytest.raises(Exception, match="needs checkpoint"):
        EngineConfig(config_file="x.yaml").spec()
    assert engine_config(config_file="configs/sam2.1/sam2.1_hiera_t.yaml").spec().is_custom


def test_resume_after_the_server_file_changed_starts_again(tmp_path, server):
    """Before: the resumed download appended the new file's tail to the old file's head."""
    wm = WeightsManager(tmp_path)
    _Handler.cut_after = 300_000
    with pytest.raises(WeightsNotAvailableError):
        wm.download(_spec(server))
    _Handler.cut_after = None
    _Handler.payload = bytes(reversed(range(256))) * 4096
    _Handler.etag = '"v2"'
    path = wm.download(_spec(server))
    assert path.read_bytes() == _Handler.payload  # If-Range failed: the server sent the whole new file


def _break_off_first_download(wm, spec):
    _Handler.cut_after = 300_000
    with pytest.raises(WeightsNotAvailableError, match="resume"):
        wm.download(spec)
    _Handler.cut_after = None


@pytest.mark.parametrize("validator", ["etag", "last_modified"])
def test_a_206_for_a_changed_file_is_not_joined_to_the_old_part(tmp_path, server, validator):
    """Before: a server that answered the resumed Range with 206 despite If-Range (the file had changed:
    new ETag / Last-Modified) got its new tail appended to the old head, and that mix was installed."""
    if validator == "last_modified":
        _Handler.etag = None
        _Handler.last_modified = "Mon, 01 Jan 2024 00:00:00 GMT"
    wm = WeightsManager(tmp_path)
    _break_off_first_download(wm, _spec(server))
    _Handler.payload = bytes(reversed(range(256))) * 4096
    _Handler.ignore_if_range = True
    if validator == "etag":
        _Handler.etag = '"v2"'
    else:
        _Handler.last_modified = "Tue, 02 Jan 2024 00:00:00 GMT"
    path = wm.download(_spec(server))
    assert path.read_bytes() == _Handler.payload  # the whole new file, fetched again from byte 0
    sent = '"v1"' if validator == "etag" else "Mon, 01 Jan 2024 00:00:00 GMT"
    assert _Handler.requests[-2] == {"range": "bytes=300000-", "if_range": sent}
    assert _Handler.requests[-1] == {"range": None, "if_range": None}


@pytest.mark.parametrize("content_range, shift", [(None, 1000), ("bytes {start}-{end}/{total}", 1000), ("bytes */{total}", 0)])
def test_a_206_that_does_not_start_at_the_resume_offset_restarts(tmp_path, server, content_range, shift):
    """Before: a 206 without Content-Range, or one starting elsewhere than the part's end, was appended as
    if it continued the part (without Content-Range the mix was installed)."""
    wm = WeightsManager(tmp_path)
    _break_off_first_download(wm, _spec(server))
    _Handler.content_range, _Handler.range_start_shift = content_range, shift
    path = wm.download(_spec(server))
    assert path.read_bytes() == _Handler.payload
    assert _Handler.requests[-1] == {"range": None, "if_range": None}


def test_no_length_and_no_digest_is_never_installed(tmp_path, server):
    """Before: a dropped connection without Content-Length or digest was installed as complete (rc 0)."""
    _Handler.send_length = False
    _Handler.etag = None
    _Handler.cut_after = 300_000
    wm = WeightsManager(tmp_path)
    with pytest.raises(WeightsNotAvailableError, match="cannot be confirmed complete"):
        wm.download(_spec(server))
    assert not (tmp_path / "sam2.1_hiera_tiny.pt").exists()


def test_no_digest_published_is_said_in_the_record(tmp_path, server):
    wm = WeightsManager(tmp_path)
    wm.download(_spec(server))
    record = wm.record(_spec(server))
    assert record["verified_against"] is None and "no digest" in record["note"] and record["bytes"] == len(_Handler.payload)


def test_oversized_stale_part_on_416_is_not_installed(tmp_path, server):
    """Before: a .part larger than the file, answered with 416, was installed as the checkpoint."""
    wm = WeightsManager(tmp_path)
    _Handler.cut_after = 300_000
    with pytest.raises(WeightsNotAvailableError):
        wm.download(_spec(server))
    part = tmp_path / "sam2.1_hiera_tiny.pt.part"
    part.write_bytes(b"x" * (2 * len(_Handler.payload)))
    _Handler.cut_after = None
    _Handler.answer_416 = True
    path = wm.download(_spec(server))
    assert path.read_bytes() == _Handler.payload  # fetched again whole, never the stale part
    assert _Handler.requests[-1]["range"] is None


@pytest.mark.parametrize("content", ["not json", "[1, 2]", '{"sha256": "abc"}'])
def test_corrupt_digest_record_fails_closed(tmp_path, server, content):
    """Before: a corrupt record silently turned verification off."""
    wm = WeightsManager(tmp_path)
    path = wm.download(_spec(server))
    (tmp_path / "sam2.1_hiera_tiny.pt.sha256.json").write_text(content)
    path.write_bytes(b"tampered")
    with pytest.raises(ModelError, match="digest record .* is corrupt"):
        wm.ensure(_spec(server))


def test_two_downloads_of_one_checkpoint_at_once(tmp_path, server):
    """Before: the second of two concurrent downloads crashed with FileNotFoundError."""
    import multiprocessing as mp

    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_download_in_process, args=(str(tmp_path), server)) for _ in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "sam2.1_hiera_tiny.pt").read_bytes() == _Handler.payload
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sam2.1_hiera_tiny.pt", "sam2.1_hiera_tiny.pt.sha256.json"]


def _download_in_process(root, url):
    WeightsManager(root).download(_spec(url, hashlib.sha256(bytes(range(256)) * 4096).hexdigest()))


@pytest.mark.parametrize("target", ["builtins.open", "os.system", "sam2.modeling.${oc.env:X}"])
def test_config_yaml_may_only_build_sam2_classes(tmp_path, target):
    """Before: `--config` YAML with `_target_: builtins.open` wrote a file before the build failed."""
    import sam2
    from sam2_helpers import CONFIG, engine_config

    from sam2volume.engine.predictor import build_predictor

    text = (Path(sam2.__file__).parent / CONFIG).read_text()
    marker = tmp_path / "written_by_config.txt"
    evil = text.replace("_target_: sam2.modeling.memory_encoder.Fuser",
                        f"_target_: {target}\n        file: {marker}\n        mode: w", 1)
    assert evil != text
    cfg = tmp_path / "evil.yaml"
    cfg.write_text(evil)
    with pytest.raises(ModelError, match="is not one of SAM2's model classes"):
        build_predictor(engine_config(config_file=str(cfg)))
    assert not marker.exists()


def test_config_yaml_that_does_not_parse(tmp_path):
    from sam2_helpers import engine_config

    from sam2volume.engine.predictor import build_predictor

    cfg = tmp_path / "broken.yaml"
    cfg.write_text("model:\n  a: b: c\n")
    with pytest.raises(ModelError, match="broken.yaml.*is not valid YAML"):
        build_predictor(engine_config(config_file=str(cfg)))


@pytest.fixture
def mount(tmp_path):
    """Makes mounts for a test (a read-only bind mount, a tiny tmpfs) and undoes them; skips where this
    user cannot mount (root in a container without CAP_SYS_ADMIN, any other user)."""
    import shutil

    made = []

    def _mount(target, *options):
        target.mkdir(parents=True, exist_ok=True)
        if shutil.which("mount") is None:
            pytest.skip("no mount command here")
        done = subprocess.run(["mount", *options, str(target)], capture_output=True, text=True)
        if done.returncode:
            pytest.skip(f"cannot mount here: {done.stderr.strip()}")
        made.append(target)
        return target

    yield _mount
    for target in reversed(made):
        subprocess.run(["umount", str(target)], check=False)


def _cache_case(tmp_path, mount, case):
    if case == "a file on its path":
        (tmp_path / "not_a_folder").write_text("x")
        return tmp_path / "not_a_folder" / "cache", "cannot be made: .*not_a_folder is a file"
    if case == "read-only file system":
        (tmp_path / "src").mkdir()
        root = mount(tmp_path / "ro", "--bind", "-o", "ro", str(tmp_path / "src"))
        if os.access(root, os.W_OK):  # an older mount(8) ignores ro on the first bind
            subprocess.run(["mount", "-o", "remount,ro,bind", str(root)], check=True)
        return root, "is not writable"
    if os.geteuid() == 0:  # mode bits do not stop root
        pytest.skip("a folder without write permission is writable for root")
    root = tmp_path / "locked"
    root.mkdir(mode=0o555)
    return root, "is not writable"


@pytest.mark.parametrize("case", ["a file on its path", "read-only file system", "no write permission"])
def test_unwritable_cache_is_a_clear_error_before_downloading(tmp_path, server, mount, case):
    """Before: mkdir / the lock file raised NotADirectoryError, OSError (EROFS) or PermissionError, a traceback."""
    root, why = _cache_case(tmp_path, mount, case)
    with pytest.raises(WeightsNotAvailableError, match=rf"model cache folder {root} {why}.*point SAM2VOLUME_CACHE at a writable folder"):
        WeightsManager(root).download(_spec(server))
    assert _Handler.requests == []  # refused before the network


def test_full_cache_disk_says_so_and_keeps_the_part(tmp_path, server, mount):
    """Before: a full disk was reported as a broken-off download ('run again to resume'), as if the network failed."""
    root = mount(tmp_path / "small", "-t", "tmpfs", "-o", "size=256k", "tmpfs")
    with pytest.raises(WeightsNotAvailableError, match=rf"model cache folder {root} cannot be written \(No space left on device.*free space"):
        WeightsManager(root).download(_spec(server))
    assert not (root / "sam2.1_hiera_tiny.pt").exists() and (root / "sam2.1_hiera_tiny.pt.part").exists()  # resumable


def test_cli_unwritable_cache_exits_2_in_one_line(tmp_path, capsys, monkeypatch):
    """Before: `models download` with SAM2VOLUME_CACHE under a regular file ended in a NotADirectoryError traceback."""
    from sam2volume.cli import main

    (tmp_path / "not_a_folder").write_text("x")
    monkeypatch.setenv("SAM2VOLUME_CACHE", str(tmp_path / "not_a_folder" / "cache"))
    monkeypatch.delenv("SAM2VOLUME_OFFLINE", raising=False)
    assert main(["models", "download", "sam2.1-hiera-tiny"]) == 2
    err = capsys.readouterr().err
    assert "not_a_folder is a file; point SAM2VOLUME_CACHE at a writable folder" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
