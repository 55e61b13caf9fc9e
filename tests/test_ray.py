"""evaluate on a local Ray cluster (issue 11): identical scores to a local run; a killed driver resumes;
a killed worker costs only its case, which is retried on a fresh worker."""

import csv
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from eval_helpers import plain_ct_dataset

ray = pytest.importorskip("ray")

from sam2volume.evaluation import evaluate  # noqa: E402

ORGANS = ["liver", "spleen"]


def _scores(run):
    with open(run / "scores.csv", newline="") as fh:
        return sorted(tuple(sorted(r.items())) for r in csv.DictReader(fh))


@pytest.fixture(scope="module")
def ray_local():
    """One local Ray instance (2 CPUs) for the module: starting Ray takes seconds."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, configure_logging=False)
    yield
    ray.shutdown()


def test_ray_gives_the_same_scores_as_a_local_run(totalseg, tmp_path, ray_local):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b", "c"], ORGANS)
    local = tmp_path / "local"
    evaluate(root, "box-middle", local, engine="baseline", overlays=True)
    remote = tmp_path / "ray"
    report = evaluate(root, "box-middle", remote, engine="baseline", overlays=True, ray=True, ray_workers=2)
    assert _scores(remote) == _scores(local)
    assert json.loads((remote / "report.json").read_text())["summary"] == json.loads((local / "report.json").read_text())["summary"]
    ex = report["executor"]
    assert ex["executor"] == "ray" and ex["workers"] == 2 and sum(ex["cases_per_worker"].values()) == 3
    assert sorted(p.name for p in (remote / "overlays").iterdir()) == sorted(p.name for p in (local / "overlays").iterdir())
    assert not list(remote.rglob(".*.partial*"))


def test_a_killed_worker_costs_only_its_case(totalseg, tmp_path, ray_local):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b", "c", "d"], ORGANS)
    run = tmp_path / "run"
    killed = []

    def kill_one_worker():  # SIGKILL the first worker process seen running a case (bounded wait)
        end = time.monotonic() + 120
        while time.monotonic() < end and not killed:
            out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
            for line in out.splitlines():
                if "CaseWorker.run" in line:
                    pid = int(line.split()[0])
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                    break
            time.sleep(0.05)

    t = threading.Thread(target=kill_one_worker, daemon=True)
    t.start()
    report = evaluate(root, "box-middle", run, engine="baseline", overlays=True, ray=True, ray_workers=2)
    t.join(5)
    assert killed, "no worker was seen running a case"
    assert report["cases"]["finished"] == 4 and report["cases"]["errors"] == []
    assert len(report["executor"]["retried_cases"]) == 1
    assert len({r["case"] for r in csv.DictReader(open(run / "scores.csv"))}) == 4


def test_a_killed_driver_resumes_without_redoing(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b", "c"], ORGANS)
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sam2volume", "evaluate", str(root), "--protocol", "box-middle", "-o", str(run),
           "--engine", "baseline", "--ray", "--ray-workers", "1", "-q"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    end = time.monotonic() + 180
    while time.monotonic() < end and not list((run / "cases").glob("*.json")):
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)  # the driver and its local Ray instance
    proc.wait()
    done = {p.name: p.stat().st_mtime_ns for p in (run / "cases").glob("*.json")}
    assert 1 <= len(done) < 3
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert {p.name: p.stat().st_mtime_ns for p in (run / "cases").glob("*.json") if p.name in done} == done  # nothing redone
    assert len(list((run / "cases").glob("*.json"))) == 3


def test_batch_on_ray_writes_the_same_files(totalseg, tmp_path, ray_local):
    import shutil

    import numpy as np

    from sam2volume import read_labelmap
    from sam2volume.batch import batch

    src = tmp_path / "in"
    src.mkdir()
    prompts = {"objects": [{"name": "liver", "boxes": [[[45, 27, 14], [104, 85, 14]]]}]}
    for name in ("x", "y"):
        shutil.copy(totalseg / "example_ct_sm.nii.gz", src / f"{name}.nii.gz")
        (src / f"{name}.prompts.json").write_text(json.dumps(prompts))
    (src / "z.nii.gz").symlink_to(totalseg / "example_ct_sm.nii.gz")  # no prompts: listed as an error
    local = batch([src], tmp_path / "local", engine="baseline")
    remote = batch([src], tmp_path / "ray", engine="baseline", ray=True, ray_workers=2)
    assert remote["executor"]["workers"] == 2 and len(remote["done"]) == 2 and len(remote["errors"]) == 1 == len(local["errors"])
    names = sorted(p.name for p in (tmp_path / "local").iterdir() if not p.name.startswith("batch_"))
    assert sorted(p.name for p in (tmp_path / "ray").iterdir() if not p.name.startswith("batch_")) == names
    for name in ("x.nii.gz", "y.nii.gz"):
        assert np.array_equal(read_labelmap(tmp_path / "ray" / name).array, read_labelmap(tmp_path / "local" / name).array)
        # the run reports name the files where they are (before: the Ray worker's deleted scratch folder)
        reports = {where: json.loads((tmp_path / where / f"{name}.report.json").read_text()) for where in ("local", "ray")}
        for key in ("output", "label_names", "color_table"):
            assert Path(reports["ray"][key]) == (tmp_path / "ray" / Path(reports["local"][key]).name), (key, reports["ray"][key])
            assert Path(reports["ray"][key]).is_file()


@pytest.mark.sam2
def test_ray_with_sam2_random_weights_equals_local(totalseg, tmp_path, ray_local):
    """Each worker builds SAM2 itself (random weights, seed 0): the same scores as the local run."""
    import SimpleITK as sitk
    from sam2_helpers import engine_config

    root = tmp_path / "tiny"
    for name in ("t1", "t2"):
        for src, sub in ((totalseg / "example_ct_sm.nii.gz", "images"), (totalseg / "example_seg.nii.gz", "labels")):
            dst = root / sub / f"{name}.nii.gz"
            dst.parent.mkdir(parents=True, exist_ok=True)
            sitk.WriteImage(sitk.ReadImage(str(src))[:, :, 10:14], str(dst))  # 4 slices, geometry kept
    (root / "labels.json").write_text('{"5": "liver"}')
    local = tmp_path / "local"
    evaluate(root, "box-middle", local, engine="sam2", config=engine_config(), overlays=False, baseline=False)
    remote = tmp_path / "ray"
    evaluate(root, "box-middle", remote, engine="sam2", config=engine_config(), overlays=False, baseline=False, ray=True, ray_workers=2)
    assert _scores(remote) == _scores(local)
