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
    (["--host", "0.0.0.0"], ["--host 0.0.0.0", "loopback"]),
    (["--host", "192.168.1.5", "--engine", "baseline"], ["--host 192.168.1.5", "loopback"]),
    (["--port", "70000"], ["--port 70000"]),
    (["--server", "gpu-host:8765"], ["--server gpu-host:8765", "http"]),
    (["--stop-after", "-1"], ["--stop-after -1"]),
])
def test_web_user_errors_are_one_sentence(totalseg, argv, words):
    proc = _web(str(totalseg / "example_ct_sm.nii.gz"), *argv)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and all(w in lines[0] for w in words), proc.stderr


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


def test_page_and_websocket_refuse_other_hosts_and_origins(totalseg, tmp_path):
    """The engine server's web-page checks on the page's own server: DNS rebinding (a foreign Host) and
    another site's page (a foreign Origin, also on the websocket upgrade) get 403; the page itself loads."""
    import http.client

    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    from web_helpers import web_app

    with web_app(totalseg / "example_ct_sm.nii.gz", tmp_path / "web.log") as app:
        port = int(app.url.rsplit(":", 1)[1].strip("/"))

        def get(path: str, **headers: str) -> int:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
            conn.request("GET", path, headers=headers)
            status = conn.getresponse().status
            conn.close()
            return status

        ws = {"Connection": "Upgrade", "Upgrade": "websocket", "Sec-WebSocket-Version": "13",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="}
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
