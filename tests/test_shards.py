"""Shards (issue 12): `--num-parts N --part-id I` on evaluate and batch, into one folder, one writer at a
time; the shards together give the same tables as a single run."""

import csv
import json
import shutil
import threading
import time

import pytest
from eval_helpers import plain_ct_dataset

from sam2volume import InputError
from sam2volume.batch import batch
from sam2volume.evaluation import evaluate
from sam2volume.locks import FileLock


def _scores(run):
    with open(run / "scores.csv", newline="") as fh:
        return sorted(tuple(sorted(r.items())) for r in csv.DictReader(fh))


def test_evaluate_shards_merge_to_the_single_run(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b", "c"], ["liver", "spleen"])
    single = tmp_path / "single"
    evaluate(root, "box-middle", single, engine="baseline", overlays=False)
    shards = tmp_path / "shards"
    r0 = evaluate(root, "box-middle", shards, engine="baseline", overlays=False, num_parts=2, part_id=0)
    assert r0["cases"]["finished"] == 2 and r0["cases"]["not_finished"] == ["b"]  # a and c: every second case
    r1 = evaluate(root, "box-middle", shards, engine="baseline", overlays=False, num_parts=2, part_id=1)
    assert r1["cases"]["finished"] == 3 and r1["cases"]["not_finished"] == []
    assert _scores(shards) == _scores(single)
    assert json.loads((shards / "report.json").read_text())["summary"] == json.loads((single / "report.json").read_text())["summary"]
    with pytest.raises(InputError, match="part_id 2 must be below num_parts 2"):
        evaluate(root, "box-middle", shards, engine="baseline", num_parts=2, part_id=2)


def test_a_shard_waits_for_the_writer(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b"], ["liver"])
    run = tmp_path / "run"
    run.mkdir()
    lock = FileLock(run / ".sam2volume.lock", "test holder")
    lock.acquire()
    threading.Timer(1.5, lock.release).start()
    t = time.monotonic()
    report = evaluate(root, "box-middle", run, engine="baseline", overlays=False, num_parts=2, part_id=0)
    assert time.monotonic() - t >= 1.4 and report["cases"]["finished"] == 1


def test_batch_shards(totalseg, tmp_path):
    src = tmp_path / "in"
    src.mkdir()
    prompts = {"objects": [{"name": "liver", "boxes": [[[45, 27, 14], [104, 85, 14]]]}]}
    for name in ("x", "y", "z"):
        shutil.copy(totalseg / "example_ct_sm.nii.gz", src / f"{name}.nii.gz")
        (src / f"{name}.prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    rep = batch([src], out, engine="baseline", num_parts=3, part_id=1)
    assert [p.split("/")[-1] for p in rep["done"]] == ["y.nii.gz"]
    for part in (0, 2):
        batch([src], out, engine="baseline", num_parts=3, part_id=part)
    assert sorted(p.name for p in out.glob("*.nii.gz")) == ["x.nii.gz", "y.nii.gz", "z.nii.gz"]
