"""The module's self-test and imports on a Slicer Python without the engine server's packages (issue 20,
item 6): a fresh Slicer or an extension build machine has no FastAPI, uvicorn or SciPy, and the tests
registered in CMake (the self-test, the generic module tests) must pass there.

The child Python gets a ``sitecustomize.py``, a TEST DOUBLE for "package not installed": it marks fastapi,
uvicorn, torch and sam2 missing in ``sys.modules`` before anything runs, so imports of them fail and
``importlib.util.find_spec`` finds nothing, in the child and in every Python it starts (the local engine
server inherits PYTHONPATH).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys

import slicer_scene as sc

MISSING = ("fastapi", "uvicorn", "torch", "sam2")

SITECUSTOMIZE = f"""
# TEST DOUBLE for a Slicer Python without these packages: importing them fails, find_spec finds nothing
import sys
for name in {MISSING!r}:
    sys.modules[name] = None
"""

CHILD = """
import json, os, sys, unittest
sys.path[:0] = [sys.argv[1], sys.argv[2]]
import slicer_scene as sc
# what SegmentWithSAM2.py imports besides qt and slicer, and the module's library
import SegmentWithSAM2Lib.controller, SegmentWithSAM2Lib.geometry, SegmentWithSAM2Lib.writeback
from SegmentWithSAM2Lib import dependencies, selftest
from SegmentWithSAM2Lib.engine_link import EngineLink
from SegmentWithSAM2Lib.logic import SegmentWithSAM2Logic
from sam2volume.models.registry import DEFAULT_MODEL, MODELS
from sam2volume.windowing import CT_PRESETS
import sam2volume.client

sc.fresh_scene()
logic = SegmentWithSAM2Logic(EngineLink(python=sys.executable, log_file=os.path.abspath("server.log")))
shown = []

class SelfTest(unittest.TestCase):  # as ctest runs SegmentWithSAM2Test: not interactive, skip = skipTest
    def test_phantom(self):
        dice = selftest.run_self_test(logic, show=shown.append, skip=self.skipTest, interactive=False)
        self.assertGreater(dice, 0.85)

with open(os.devnull, "w") as devnull:
    result = unittest.TextTestRunner(stream=devnull).run(SelfTest("test_phantom"))
started = logic.link.server is not None

asked, gui_shown = [], []
declined = selftest.run_self_test(logic, show=gui_shown.append, interactive=True,
                                  install=lambda found: asked.append([p.module for p, _ in found]) or False)

try:  # the self-test as it was: straight to run(), which starts the local engine server
    selftest.run(logic)
    old = "ran"
except Exception as exc:
    old = f"{type(exc).__name__}: {exc}"
logic.close()
print(json.dumps({"ok": result.wasSuccessful(), "skipped": [r for _, r in result.skipped], "errors": len(result.errors),
                  "failures": len(result.failures), "shown": shown, "started": started, "asked": asked,
                  "declined": declined, "gui_shown": gui_shown, "old": old[-2000:]}))
"""


def test_self_test_skips_with_a_message_where_fastapi_and_uvicorn_are_missing(tmp_path):
    (tmp_path / "sitecustomize.py").write_text(SITECUSTOMIZE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
    out = subprocess.run([sys.executable, "-c", CHILD, str(sc.MODULE), str(sc.ROOT / "tests")], capture_output=True,
                         text=True, env=env, timeout=300, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    rep = json.loads(out.stdout.strip().splitlines()[-1])
    # ctest: skipped (a success), with a message naming what is missing, and no server was started
    assert rep["ok"] and rep["errors"] == rep["failures"] == 0 and len(rep["skipped"]) == 1, rep
    reason = rep["skipped"][0]
    assert reason.startswith("SegmentWithSAM2 self-test skipped") and "fastapi" in reason and "uvicorn" in reason, reason
    assert rep["shown"] == [reason] and not rep["started"]
    # GUI: asked to install the missing packages; declined, the reason is shown and nothing fails
    assert rep["asked"] == [["fastapi", "uvicorn"]] and rep["declined"] is None and rep["gui_shown"] == [reason]
    # the test double works: the self-test as it was fails there (the server cannot start without FastAPI)
    assert rep["old"].startswith("ServerError") and "exited" in rep["old"], rep["old"]
    assert "needs the optional package" in (tmp_path / "server.log").read_text()
