"""Where the module keeps mode, server URL and token (issue 20, item 4), "Test connection", and which
Python the local engine server runs with (item 1), on Slicer's real libraries (PyPI slicer-core).

The token was a field of the module's parameter node, so every saved scene held it in plain text. Now
mode, URL and token are application settings (QSettings, in the widget) passed to the GUI-free logic,
and the parameter node has none of them.
"""

from __future__ import annotations

import ast
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

import slicer_scene as sc  # noqa: E402  (puts the module folder on sys.path)
import slicer  # noqa: E402

from SegmentWithSAM2Lib.engine_link import CONNECTION_FIELDS, Settings, check_connection, slicer_python  # noqa: E402

from sam2volume.client import ServerError  # noqa: E402

TOKEN = "tok-3f9a1c-never-in-a-scene"


def parameter_node_fields() -> dict[str, str]:
    """The fields of the module's typed parameter node (SegmentWithSAM2ParameterNode in SegmentWithSAM2.py)."""
    tree = ast.parse((sc.MODULE / "SegmentWithSAM2.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "SegmentWithSAM2ParameterNode")
    return {n.target.id: ast.unparse(n.annotation) for n in cls.body if isinstance(n, ast.AnnAssign)}


def test_the_parameter_node_has_no_connection_field():
    fields = parameter_node_fields()
    assert not set(CONNECTION_FIELDS) & set(fields), fields
    assert {"engine", "model", "device"} <= set(fields)  # the rest stays in the scene


def test_a_scene_saved_with_the_module_parameter_node_holds_no_token(tmp_path, totalseg):
    """The module's parameter node, as Slicer's parameterNodeWrapper stores it (one parameter per field,
    its value as a string: serializers.StringSerializer.write), in a node made as
    ScriptedLoadableModuleLogic.createParameterNode makes it, with the settings of a remote session that
    has a token; the scene is written to .mrml by Slicer's own scene writer."""
    scene = sc.fresh_scene()
    sc.load_volume(totalseg / "example_ct_sm.nii.gz", "ct")
    settings = Settings(mode="remote", serverUrl="http://gpu-host:8765", serverToken=TOKEN, engine="baseline")
    node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
    node.UnRegister(None)
    node.SetSingletonTag("SegmentWithSAM2")
    node.SetAttribute("ModuleName", "SegmentWithSAM2")
    node.SetName(scene.GenerateUniqueName("SegmentWithSAM2"))
    scene.AddNode(node)
    written = []
    for name in parameter_node_fields():
        if hasattr(settings, name):
            node.SetParameter(name, str(getattr(settings, name)))
            written.append(name)
    assert "engine" in written
    path = tmp_path / "scene.mrml"
    scene.SetURL(str(path))
    assert scene.Commit()
    text = path.read_text()
    assert "SegmentWithSAM2" in text and 'engine' in text  # the parameter node was saved
    assert TOKEN not in text and "serverToken" not in text


def test_an_older_scene_with_a_token_loses_it_when_saved_again(tmp_path):
    """A scene saved by the module before this change (its parameter node held mode, serverUrl and
    serverToken) is read by Slicer's scene reader; the module's getParameterNode calls forget_connection
    on that node, and the scene written again holds no token."""
    from SegmentWithSAM2Lib.engine_link import forget_connection

    scene = sc.fresh_scene()
    node = scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode")
    node.SetAttribute("ModuleName", "SegmentWithSAM2")
    for name, value in (("mode", "remote"), ("serverUrl", "http://gpu-host:8765"), ("serverToken", TOKEN), ("engine", "sam2")):
        node.SetParameter(name, value)
    old = tmp_path / "old.mrml"
    scene.SetURL(str(old))
    assert scene.Commit() and TOKEN in old.read_text()  # as the old module's scenes were

    scene = sc.fresh_scene()
    scene.SetURL(str(old))
    assert scene.Connect()  # Slicer's scene reader
    loaded = [n for n in slicer.util.getNodesByClass("vtkMRMLScriptedModuleNode") if n.GetAttribute("ModuleName") == "SegmentWithSAM2"]
    assert len(loaded) == 1 and loaded[0].GetParameter("serverToken") == TOKEN
    forget_connection(loaded[0])
    forget_connection(loaded[0])  # twice: nothing left to remove, no error
    again = tmp_path / "again.mrml"
    scene.SetURL(str(again))
    assert scene.Commit()
    text = again.read_text()
    assert TOKEN not in text and "serverToken" not in text and "gpu-host" not in text
    assert loaded[0].GetParameter("engine") == "sam2"  # the rest is kept
    module = (sc.MODULE / "SegmentWithSAM2.py").read_text()
    body = module[module.index("    def getParameterNode(self):"):]
    assert "forget_connection(node)" in body[:body.index("\n\n")]


def test_settings_take_the_connection_only_as_passed_in():
    """A parameter node of an old scene may still hold serverToken: it is never read from there."""
    old_node = SimpleNamespace(mode="remote", serverUrl="http://old:1", serverToken=TOKEN, engine="baseline", stopAfter=5)
    s = Settings.read(old_node)
    assert (s.mode, s.serverUrl, s.serverToken) == ("local", "", "")
    assert (s.engine, s.stopAfter) == ("baseline", 5)
    s = Settings.read(old_node, mode="remote", serverUrl="http://gpu-host:8765", serverToken="t")
    assert (s.mode, s.serverUrl, s.serverToken, s.engine) == ("remote", "http://gpu-host:8765", "t", "baseline")
    with pytest.raises(TypeError, match="engine"):
        Settings.read(old_node, engine="sam2")


@pytest.fixture(scope="module")
def server():
    from sam2volume.client import start_local_server

    srv = start_local_server(sys.executable, device="cpu", timeout=120)
    yield srv
    srv.stop()


def test_check_connection_against_a_real_server(server):
    summary = check_connection(server.url, server.token, timeout=5.0)
    assert summary.startswith("connected to sam2volume ") and "token accepted" in summary
    with pytest.raises(ServerError, match="token") as bad:
        check_connection(server.url, "not-the-token", timeout=5.0)
    assert bad.value.kind == "AuthError"
    with pytest.raises(ServerError, match="token"):
        check_connection(server.url, "", timeout=5.0)
    with pytest.raises(ValueError, match="Server URL"):
        check_connection("", server.token)


def test_check_connection_names_an_unreachable_or_silent_server():
    with socket.socket() as s:  # a free port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ServerError, match="cannot reach"):
        check_connection(f"http://127.0.0.1:{port}", "t", timeout=2.0)
    with socket.socket() as silent:  # accepts connections (backlog), never answers
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = "http://127.0.0.1:%d" % silent.getsockname()[1]
        with pytest.raises(ServerError, match="did not answer GET /health within 1 s"):
            check_connection(url, "t", timeout=1.0)


def test_the_local_server_runs_slicers_real_python_not_its_launcher(tmp_path):
    """PythonSlicer is a launcher that starts python-real beside it and forwards no signal."""
    bin_dir = tmp_path / "Slicer-5.10" / "bin"
    bin_dir.mkdir(parents=True)
    launcher, real = bin_dir / "PythonSlicer", bin_dir / "python-real"
    launcher.write_text("")  # only their names and places matter here
    assert slicer_python((str(launcher),)) == str(launcher)  # no python-real: the launcher (the server watches its parent)
    real.write_text("")
    assert slicer_python((str(launcher),)) == str(real)
    assert slicer_python((None, str(launcher))) == str(real)  # sys.executable in Slicer is PythonSlicer
    win = tmp_path / "win"
    win.mkdir()
    (win / "PythonSlicer.exe").write_text("")
    (win / "python-real.exe").write_text("")
    assert slicer_python((str(win / "PythonSlicer.exe"),)) == str(win / "python-real.exe")
    assert slicer_python((None, "/usr/bin/python3")) == sys.executable  # outside Slicer: this Python
    assert Path(slicer_python((None,))) == Path(sys.executable)
