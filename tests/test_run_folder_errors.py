"""`evaluate -o` and `batch -o` folders that cannot take the run fail before any work with one sentence
(exit 2, no traceback): a folder under a regular file, a read-only folder, a file where `cases/` goes,
a `run.json` nested too deeply for Python's JSON reader."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from eval_helpers import link, plain_ct_dataset

from sam2volume.cli import main

CORE = Path(__file__).resolve().parents[1] / "core"
DEEP = "[" * 100000 + "]" * 100000  # json.loads raises RecursionError on it


@pytest.fixture()
def dataset(totalseg, tmp_path):
    return plain_ct_dataset(totalseg, tmp_path / "ds", ["a"], ["liver"])


def _evaluate(root, out):
    return ["evaluate", str(root), "--protocol", "box-middle", "-o", str(out), "--engine", "baseline", "-q", "--no-overlays"]


def _one_error_line(capsys, command):
    err = capsys.readouterr().err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    assert err.startswith(f"sam2volume {command}: error: ")
    return err


def test_evaluate_into_a_folder_under_a_regular_file(dataset, tmp_path, capsys):
    (tmp_path / "afile").write_text("not a folder")
    assert main(_evaluate(dataset, tmp_path / "afile" / "run")) == 2
    err = _one_error_line(capsys, "evaluate")
    assert f"{tmp_path / 'afile'} is a file, not a folder" in err and "another -o folder" in err
    assert (tmp_path / "afile").read_text() == "not a folder"


def test_a_file_where_the_run_keeps_its_cases_folder(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_evaluate(dataset, run)) == 0
    shutil.rmtree(run / "cases")
    (run / "cases").write_text("in the way")
    capsys.readouterr()
    assert main(_evaluate(dataset, run)) == 2
    err = _one_error_line(capsys, "evaluate")
    assert f"{run / 'cases'} is a file where the run folder keeps its cases/ folder" in err and "move it away" in err
    assert (run / "cases").read_text() == "in the way" and not list(run.glob(".*partial*"))


def test_a_folder_where_a_case_record_goes(dataset, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(_evaluate(dataset, run)) == 0
    (run / "cases/a.json").unlink()
    (run / "cases/a.json").mkdir()
    capsys.readouterr()
    assert main(_evaluate(dataset, run)) == 2
    assert f"{run / 'cases/a.json'} is a folder where case 'a' keeps its record" in _one_error_line(capsys, "evaluate")


@pytest.mark.parametrize("command", ["evaluate", "batch"])
def test_settings_nested_too_deeply(dataset, totalseg, tmp_path, capsys, command):
    out = tmp_path / "out"
    out.mkdir()
    if command == "evaluate":
        (out / "run.json").write_text(DEEP)
        argv = _evaluate(dataset, out)
    else:
        (out / "batch_settings.json").write_text(DEEP)
        link(totalseg / "example_ct_sm.nii.gz", tmp_path / "in" / "one.nii.gz")
        argv = ["batch", str(tmp_path / "in"), "-o", str(out), "--engine", "baseline", "-q"]
    assert main(argv) == 2
    err = _one_error_line(capsys, command)
    assert "is corrupt (nested too deeply)" in err and "new -o folder" in err


def _read_only_bind(folder: Path, argv: list[str]) -> subprocess.CompletedProcess:
    """Run the CLI in a private mount namespace where ``folder`` is a read-only bind mount (root ignores
    file modes, so chmod would not stop it); skips where mount namespaces are not allowed."""
    if shutil.which("unshare") is None:
        pytest.skip("no unshare here to make a read-only bind mount")
    probe = subprocess.run(["unshare", "--mount", "sh", "-c", f"mount --bind {folder} {folder} && mount -o remount,bind,ro {folder}"],
                           capture_output=True)
    if probe.returncode != 0:
        pytest.skip(f"cannot make a read-only bind mount here: {probe.stderr.decode()[:200]}")
    script = f'mount --bind "$1" "$1" && mount -o remount,bind,ro "$1" && shift && exec "$@"'
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [os.environ.get("PYTHONPATH"), str(CORE)]))}
    return subprocess.run(["unshare", "--mount", "sh", "-c", script, "sh", str(folder), sys.executable, "-m", "sam2volume", *argv],
                          capture_output=True, text=True, env=env)


@pytest.mark.parametrize("inside", [False, True])
def test_evaluate_into_a_read_only_folder(dataset, tmp_path, inside):
    ro = tmp_path / "ro"
    ro.mkdir()
    out = ro / "run" if inside else ro
    done = _read_only_bind(ro, _evaluate(dataset, out))
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and len(done.stderr.strip().splitlines()) == 1
    assert f"cannot write to the run folder {out} (Read-only file system)" in done.stderr
    assert list(ro.iterdir()) == []


def test_a_normal_resume_passes_the_folder_checks(dataset, tmp_path):
    """The folder checks leave a normal resume alone."""
    run = tmp_path / "run"
    assert main(_evaluate(dataset, run)) == 0
    assert main(_evaluate(dataset, run)) == 0
    assert json.loads((run / "report.json").read_text())["resumed"]["cases_already_done"] == 1


def test_compare_with_a_run_json_nested_too_deeply(dataset, tmp_path, capsys):
    for name in ("r1", "r2"):
        assert main(_evaluate(dataset, tmp_path / name)) == 0
    (tmp_path / "r2/run.json").write_text(DEEP)
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2")]) == 2
    assert f"{tmp_path / 'r2/run.json'} is corrupt" in _one_error_line(capsys, "compare")


def test_a_dataset_label_file_nested_too_deeply(dataset, tmp_path, capsys):
    (dataset / "labels.json").write_text(DEEP)
    assert main(_evaluate(dataset, tmp_path / "run")) == 2
    assert "labels.json: cannot read it as JSON (nested too deeply)" in _one_error_line(capsys, "evaluate")
    assert not (tmp_path / "run").exists()
