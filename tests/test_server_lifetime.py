"""A local engine server never outlives the process that started it (issue 20, item 1).

In Slicer, ``PythonSlicer`` is a launcher (CTKAppLauncher): it starts the real interpreter as its child and
forwards no signal. The tests put a launcher-like wrapper (a TEST DOUBLE for PythonSlicer: a Python script
that starts the real interpreter with the same arguments, ignores SIGTERM and SIGINT and forwards nothing)
between the client and a real ``sam2volume serve`` process, and check that ``/health`` stops answering
after ``LocalServer.stop()`` and after the parent is SIGKILLed. POSIX only (process groups, SIGKILL).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
import urllib.request
from pathlib import Path

import pytest

from server_helpers import wait_for

pytestmark = pytest.mark.skipif(os.name != "posix", reason="process groups and SIGKILL: POSIX")

ROOT = Path(__file__).resolve().parents[1]
GONE_WITHIN_S = 30.0  # a bound for a shared, loaded test machine; the server stops within about a second

LAUNCHER = """#!{python}
# TEST DOUBLE for Slicer's PythonSlicer launcher: runs the real interpreter as a child, forwards no signal
import signal, subprocess, sys
for sig in (signal.SIGTERM, signal.SIGINT):
    signal.signal(sig, lambda *a: None)  # a handler, not SIG_IGN: the child gets default dispositions
sys.exit(subprocess.call([{python!r}, *sys.argv[1:]], stdin={stdin}))
"""


def launcher(tmp_path: Path, passes_stdin: bool) -> str:
    """The wrapper script; ``passes_stdin=False``: its child's stdin is /dev/null (a launcher that keeps it)."""
    path = tmp_path / ("PythonSlicer" if passes_stdin else "PythonSlicerNoStdin")
    path.write_text(LAUNCHER.format(python=sys.executable, stdin="None" if passes_stdin else "subprocess.DEVNULL"))
    path.chmod(0o755)
    return str(path)


def answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def server_pid(server) -> int:
    """The real interpreter's pid (the server writes it to its ready file), not the launcher's."""
    return int(json.loads((server.folder / "ready.json").read_text())["pid"])


@pytest.mark.parametrize("passes_stdin", [True, False], ids=["launcher-passes-stdin", "launcher-keeps-stdin"])
def test_stop_ends_the_server_behind_a_launcher_that_forwards_no_signal(tmp_path, passes_stdin):
    from sam2volume.client import start_local_server

    server = start_local_server(launcher(tmp_path, passes_stdin), device="cpu", timeout=120)
    pid = server_pid(server)
    assert pid != server.process.pid and answers(server.url)  # the launcher is in between
    server.stop()
    assert wait_for(lambda: not answers(server.url), GONE_WITHIN_S)
    assert wait_for(lambda: not exists(pid), GONE_WITHIN_S)
    assert not server.alive()


QUITTING_LAUNCHER = """#!{python}
# TEST DOUBLE for a launcher that starts the real interpreter and exits at once, leaving it running
import os, subprocess, sys
child = subprocess.Popen([{python!r}, *sys.argv[1:]], stdin=subprocess.DEVNULL)
open(os.environ["CHILD_PID_FILE"], "w").write(str(child.pid))
sys.exit(1)
"""


def test_a_launcher_that_exits_leaves_no_server_behind(tmp_path, monkeypatch):
    from sam2volume.client import ServerError, start_local_server

    path = tmp_path / "QuittingLauncher"
    path.write_text(QUITTING_LAUNCHER.format(python=sys.executable))
    path.chmod(0o755)
    pid_file = tmp_path / "child.pid"
    monkeypatch.setenv("CHILD_PID_FILE", str(pid_file))
    with pytest.raises(ServerError, match="exited with code 1"):
        start_local_server(str(path), device="cpu", timeout=120)
    pid = int(pid_file.read_text())
    assert wait_for(lambda: not exists(pid), GONE_WITHIN_S)


PARENT = """
import json, sys, time
sys.path.insert(0, {core!r})
from sam2volume.client import start_local_server
server = start_local_server({python!r}, device="cpu", timeout=120)
print(json.dumps({{"url": server.url, "pid": json.load(open(server.folder / "ready.json"))["pid"]}}), flush=True)
time.sleep(600)
"""


@pytest.mark.parametrize("passes_stdin", [True, False], ids=["stdin-and-pid-watch", "pid-watch-only"])
def test_the_server_ends_when_its_parent_is_killed(tmp_path, passes_stdin):
    """The parent (standing for Slicer) is SIGKILLed: nothing stops the server but its own watches."""
    code = PARENT.format(core=str(ROOT / "core"), python=launcher(tmp_path, passes_stdin))
    parent = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        line = parent.stdout.readline()
        assert line, "the parent did not start the server"
        info = json.loads(line)
        assert answers(info["url"])
    finally:
        parent.kill()
        parent.wait(30)
    assert wait_for(lambda: not answers(info["url"]), GONE_WITHIN_S)
    assert wait_for(lambda: not exists(info["pid"]), GONE_WITHIN_S)


def _serve(tmp_path: Path, *extra: str, stdin=subprocess.DEVNULL) -> tuple[subprocess.Popen, str]:
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "sam2volume", "serve", "--port", "0", "--device", "cpu",
                             "--ready-file", str(ready), *extra], stdin=stdin, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: ready.is_file() or proc.poll() is not None, 120), "server did not start"
    assert proc.poll() is None, proc.stderr.read()
    return proc, json.loads(ready.read_text())["url"]


def test_serve_exit_with_stdin_stops_when_the_pipe_closes(tmp_path):
    proc, url = _serve(tmp_path, "--exit-with-stdin", stdin=subprocess.PIPE)
    try:
        assert answers(url)
        proc.stdin.close()
        assert proc.wait(GONE_WITHIN_S) == 0  # a clean shutdown, not a kill
        assert not answers(url)
        assert "standard input was closed" in proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()


def test_serve_parent_pid_stops_when_that_process_ends(tmp_path):
    sleeper = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    proc, url = _serve(tmp_path, "--parent-pid", str(sleeper.pid))
    try:
        assert answers(url)
        time.sleep(1.0)  # a few polls while the parent lives: the server stays
        assert answers(url)
        sleeper.kill()
        sleeper.wait(30)
        assert proc.wait(GONE_WITHIN_S) == 0
        assert f"parent process {sleeper.pid} ended" in proc.stderr.read()
    finally:
        for p in (sleeper, proc):
            if p.poll() is None:
                p.kill()


def test_serve_refuses_a_parent_pid_that_is_not_running(capsys):
    from sam2volume.cli import main

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait(30)
    assert main(["serve", "--parent-pid", str(dead.pid)]) == 2
    err = capsys.readouterr().err
    assert f"--parent-pid {dead.pid} is not a running process" in err and "Traceback" not in err
