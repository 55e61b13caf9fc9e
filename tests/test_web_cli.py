"""``sam2volume web`` without a browser: user errors before anything starts, and the trame-slicer pin.

trame-slicer 2.0.0 needs slicer-layer-dm, whose 2.0.0 declares slicer-core 5.11 only; the project installs it
with --no-deps next to its slicer-core 5.13 (scripts/setup_env.sh). The browser tests
(tests/test_web_frontend.py) run the whole page on that pair; here the pin itself is checked.
"""

from __future__ import annotations

import importlib.metadata
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _web(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam2volume", "web", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.mark.parametrize("argv, words", [
    (["--host", "0.0.0.0"], ["--host 0.0.0.0", "loopback", "--page-token-file"]),
    (["--host", "192.168.1.5", "--engine", "baseline"], ["--host 192.168.1.5", "loopback", "--page-token-file"]),
    (["--host", "0.0.0.0", "--no-token"], ["--host 0.0.0.0", "--page-token-file"]),
    (["--no-token", "--page-token-file", "t"], ["--no-token", "--page-token-file"]),
    (["--port", "70000"], ["--port 70000"]),
    (["--server", "gpu-host:8765"], ["--server gpu-host:8765", "http"]),
    (["--stop-after", "-1"], ["--stop-after -1"]),
    (["--max-upload-mb", "-5"], ["--max-upload-mb -5", "0 (no upload)"]),
])
def test_web_user_errors_are_one_sentence(totalseg, argv, words):
    proc = _web(str(totalseg / "example_ct_sm.nii.gz"), *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


@pytest.mark.parametrize("content, words", [("short\n", ["at least 16 characters"]), (b"\xff\xfe-not-text-at-all", ["not UTF-8"])])
def test_web_bad_page_token_file_is_one_sentence(totalseg, tmp_path, content, words):
    """--page-token-file is read as the engine server reads its --token-file (server.config.read_token_file)."""
    path = tmp_path / "page.token"
    path.write_bytes(content if isinstance(content, bytes) else content.encode())
    proc = _web(str(totalseg / "example_ct_sm.nii.gz"), "--host", "0.0.0.0", "--page-token-file", str(path))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and str(path) in lines[0], proc.stderr[-2000:]
    assert all(w in lines[0] for w in words) and "Traceback" not in proc.stderr


def test_web_missing_image_is_named(tmp_path):
    proc = _web(str(tmp_path / "nothing.nii.gz"))
    assert proc.returncode == 2 and "nothing.nii.gz is not a file" in proc.stderr and "Traceback" not in proc.stderr


def test_trame_slicer_pin_loads_on_the_project_slicer_core():
    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    pyproject = (ROOT / "pyproject.toml").read_text()
    setup = (ROOT / "scripts" / "setup_env.sh").read_text()
    assert '"trame-slicer==2.0.0"' in pyproject
    assert 'pipi --no-deps "slicer-layer-dm==2.0.0"' in setup
    core_pin = re.search(r'slicer-core==([0-9.]+)', pyproject).group(1)
    assert importlib.metadata.version("slicer-core") == core_pin
    assert importlib.metadata.version("slicer-layer-dm") == "2.0.0"
    assert importlib.metadata.version("trame-slicer") == "2.0.0"
    # its compiled displayable managers load against this slicer-core, and trame-slicer's views import them
    from slicer import vtkMRMLLayerDMObjectEventObserverScripted  # noqa: F401
    from trame_slicer.views import SliceView, ThreeDView  # noqa: F401


WS = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}


def _get(port: int, path: str, **headers: str):
    """(status, headers, body) of one GET to the page's server on loopback."""
    import http.client

    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    conn.request("GET", path, headers=headers)
    response = conn.getresponse()
    result = response.status, response.headers, response.read() if response.status != 101 else b""
    conn.close()
    return result


@pytest.fixture(scope="module")
def ct_app(totalseg, tmp_path_factory):
    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    from web_helpers import web_app

    with web_app(totalseg / "example_ct_sm.nii.gz", tmp_path_factory.mktemp("web") / "web.log") as app:
        yield app


def test_page_and_websocket_need_the_token(ct_app):
    """Like Jupyter: the page's server refuses every request without its token (401, JSON error), the
    websocket's included; ?token= opens the page and sets an HttpOnly cookie the page's later requests
    (assets, websocket) carry; a wrong token or cookie is refused too."""
    import json

    port, token = ct_app.port, ct_app.token
    assert len(token) >= 32
    for path in ("/", "/index.html", "/?token=" + token[:-1] + "x", "/?token="):
        status, _, body = _get(port, path)
        assert status == 401, path
        assert json.loads(body)["error"]["type"] == "AuthError" and "?token=" in json.loads(body)["error"]["message"]
    assert _get(port, "/ws", **WS)[0] == 401
    assert _get(port, "/ws", Origin=f"http://127.0.0.1:{port}", **WS)[0] == 401
    assert _get(port, "/", Cookie=f"sam2volume-web-token-{port}=wrong-token-wrong-token")[0] == 401
    assert _get(port, "/", Cookie=f"sam2volume-web-token-{port + 1}={token}")[0] == 401  # another page's cookie

    jar = f"sam2volume-web-token-{port}={token}"
    for path in ("/?token=" + token, "/index.html?token=" + token):  # / redirects to index.html
        status, headers, body = _get(port, path)
        assert status in (200, 302), path
        cookie = headers["Set-Cookie"]
        assert cookie.startswith(jar + ";") and "HttpOnly" in cookie and "SameSite=Strict" in cookie
    assert status == 200 and b"<html" in body.lower()
    assert _get(port, "/index.html", Cookie=jar)[0] == 200
    assert _get(port, "/ws", Cookie=jar, Origin=f"http://127.0.0.1:{port}", **WS)[0] == 101
    assert _get(port, "/index.html", Authorization=f"Bearer {token}")[0] == 200


def test_page_and_websocket_refuse_other_hosts_and_origins(ct_app):
    """The engine server's web-page checks on the page's own server: DNS rebinding (a foreign Host) and
    another site's page (a foreign Origin, also on the websocket upgrade) get 403; the page itself loads."""
    import http.client

    port = ct_app.port
    jar = f"sam2volume-web-token-{port}={ct_app.token}"

    def get(path: str, **headers: str) -> int:
        return _get(port, path, Cookie=jar, **headers)[0]

    ws = WS
    assert get("/index.html") == 200
    assert get("/index.html", Host=f"evil.example:{port}") == 403
    assert get("/ws", Host=f"evil.example:{port}", **ws) == 403
    assert get("/ws", Origin="http://evil.example", **ws) == 403
    assert get("/ws", Origin=f"http://localhost:{port + 1}", **ws) == 403  # another port is another origin
    assert get("/ws", Origin=f"http://127.0.0.1:{port}", **ws) == 101  # the page's own websocket
    assert get("/index.html", **{"Sec-Fetch-Site": "cross-site"}) == 403
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)  # a foreign page's "simple" POST
    conn.request("POST", "/paraview/", body="{}", headers={"Origin": "http://evil.example", "Content-Type": "text/plain"})
    assert conn.getresponse().status == 403
    conn.close()


def test_page_token_file_and_no_token(totalseg, tmp_path):
    """--page-token-file: the page takes that token (read by the engine server's read_token_file) and the
    URL it prints does not copy it; --no-token on loopback: the page opens without one."""
    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    from web_helpers import web_app

    token = "page-token-from-a-file-0123456789"
    path = tmp_path / "page.token"
    path.write_text(token + "\n")
    path.chmod(0o600)
    image = totalseg / "example_ct_sm.nii.gz"
    with web_app(image, tmp_path / "file.log", "--page-token-file", str(path), token=token) as app:
        assert _get(app.port, "/index.html")[0] == 401
        assert _get(app.port, "/index.html?token=" + token)[0] == 200
        assert _get(app.port, "/index.html", Authorization="Bearer " + token)[0] == 200
    printed = [x for x in (tmp_path / "file.log").read_text().splitlines() if "open the page at" in x]
    assert len(printed) == 1 and token not in printed[0] and str(path) in printed[0], printed
    with web_app(image, tmp_path / "none.log", "--no-token", token="") as app:
        assert _get(app.port, "/index.html")[0] == 200
    printed = [x for x in (tmp_path / "none.log").read_text().splitlines() if "open the page at" in x]
    assert len(printed) == 1 and "no token" in printed[0], printed


def test_web_folder_without_dicom_is_one_sentence(tmp_path):
    (tmp_path / "notes.txt").write_text("not DICOM")
    proc = _web(str(tmp_path))
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and str(tmp_path) in lines[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr


def test_upload_route_needs_the_token_and_origin_and_refuses_bad_files(ct_app, tmp_path):
    """The page's upload (POST /sam2volume-upload, a multipart form) is behind the same token and Origin checks; a
    file name is a name only (a path in it is not used), a non-volume file and a file read_volume refuses get a
    JSON error naming it, and no temporary file is left."""
    import http.client
    import json
    import tempfile

    from web_upload_data import multipart

    port = ct_app.port
    jar = f"sam2volume-web-token-{port}={ct_app.token}"
    before = sorted(Path(tempfile.gettempdir()).glob("sam2volume-web-upload-*"))

    def post(data: bytes, name: str, **headers: str):
        body, content_type = multipart([(name, data)])
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
        conn.request("POST", "/sam2volume-upload", body=body, headers={"Content-Type": content_type, **headers})
        response = conn.getresponse()
        result = response.status, response.read()
        conn.close()
        return result

    assert post(b"x", "a.nii.gz")[0] == 401
    assert post(b"x", "a.nii.gz", Cookie=jar, Origin="http://evil.example")[0] == 403
    status, body = post(b"x", "notes.txt", Cookie=jar)
    assert status == 400 and "notes.txt" in json.loads(body)["error"]["message"]
    status, body = post(b"not a nifti", "../../etc/broken.nii.gz", Cookie=jar)
    error = json.loads(body)["error"]
    assert status == 400 and error["type"] == "InputError" and error["message"].startswith("broken.nii.gz: "), error
    assert sorted(Path(tempfile.gettempdir()).glob("sam2volume-web-upload-*")) == before
