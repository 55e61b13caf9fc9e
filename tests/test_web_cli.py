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
