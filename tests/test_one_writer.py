"""One writer per run folder (issue 13): a second evaluate/batch on a folder in use is refused with the
holder's PID and host and deletes nothing; a dead process's lock is taken over; a corrupt run.json stops
with a message naming it; a truncated case record is redone; a foreign non-empty folder is refused."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest
from eval_helpers import plain_ct_dataset

from sam2volume.cli import main
from sam2volume.evaluation import evaluate

HOLD = "import sys, time; from sam2volume.locks import FileLock; FileLock(sys.argv[1], 'x').acquire(); print('held', flush=True); time.sleep(60)"


def _hold(lock_path):
    """A real second process holding the folder's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(lock_path)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "held"
    return proc


@pytest.fixture()
def batch_input(tmp_path, totalseg):
    src = tmp_path / "in"
    src.mkdir()
    shutil.copy(totalseg / "example_ct_sm.nii.gz", src / "ct.nii.gz")
    (src / "ct.prompts.json").write_text(json.dumps({"objects": [{"name": "liver", "boxes": [[[45, 27, 14], [104, 85, 14]]]}]}))
    return src


def test_batch_folder_in_use_is_refused_then_taken_over_when_the_holder_dies(tmp_path, batch_input, capsys):
    out = tmp_path / "out"
    out.mkdir()
    inflight = out / ".ct.abc.partial.nii.gz"  # the other process's temporary file
    inflight.write_bytes(b"in flight")
    proc = _hold(out / ".sam2volume.lock")
    try:
        assert main(["batch", str(batch_input), "-o", str(out), "--engine", "baseline", "-q"]) == 2
        err = capsys.readouterr().err
        assert f"process {proc.pid}" in err and "in use" in err
        assert inflight.read_bytes() == b"in flight"  # nothing of the holder's was deleted
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert main(["batch", str(batch_input), "-o", str(out), "--engine", "baseline", "-q"]) == 0  # stale lock taken over
    assert (out / "ct.nii.gz").is_file() and not (out / ".sam2volume.lock").exists()


def test_evaluate_resume_cases(tmp_path, totalseg, capsys):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver"])
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", overlays=False)
    record = run / "cases" / "ct_a.json"
    good = json.loads(record.read_text())
    record.write_text(record.read_text()[:40])  # truncated
    evaluate(root, "box-middle", run, engine="baseline", overlays=False)
    assert json.loads(record.read_text())["rows"] == good["rows"]  # redone
    (run / "run.json").write_text("{ not json")
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(run), "--engine", "baseline"]) == 2
    assert "run.json is corrupt" in capsys.readouterr().err


def test_evaluate_refuses_a_foreign_non_empty_folder(tmp_path, totalseg, capsys):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver"])
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "chapter1.tex").write_text("precious")
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(foreign), "--engine", "baseline"]) == 2
    assert "holds no run of ours" in capsys.readouterr().err
    assert os.listdir(foreign) == ["chapter1.tex"]


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path):
    from sam2volume.locks import FileLock, LockedError

    lock = tmp_path / "x.lock"
    proc = _hold(lock)
    with pytest.raises(LockedError, match=str(proc.pid)):
        FileLock(lock, "the folder").acquire()
    t = time.monotonic()
    waiter = FileLock(lock, "the folder", wait=30)
    proc.kill()
    proc.wait()
    waiter.acquire()
    assert time.monotonic() - t < 30
    waiter.release()
    assert not lock.exists()


def test_resume_by_relative_path_and_save_predictions_added_later(tmp_path, totalseg, monkeypatch):
    """Before: the same dataset by a relative path was refused as 'other settings', and --save-predictions
    added on resume wrote nothing for the finished cases."""
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver"])
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", overlays=False)
    monkeypatch.chdir(tmp_path)
    report = evaluate("ds", "box-middle", run, engine="baseline", overlays=False)
    assert report["resumed"]["cases_already_done"] == 1
    evaluate("ds", "box-middle", run, engine="baseline", overlays=False, save_predictions=True)
    assert (run / "predictions" / "ct_a.baseline.nii.gz").is_file()
