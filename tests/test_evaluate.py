"""`sam2volume evaluate / compare / batch` end to end on datasets made from the real CT."""

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from eval_helpers import link, plain_ct_dataset, relabel

from sam2volume import InputError, read_volume, write_volume
from sam2volume.cli import main
from sam2volume.evaluation import evaluate, read_dataset

ORGANS = ["liver", "spleen", "kidney_right", "kidney_left"]
# measured (box on the middle axial slice, the four organs in one session, so overlaps are shared):
# liver 0.890, spleen 0.827, kidney_right 0.816, kidney_left 0.848
THRESHOLDS = {"liver": 0.85, "spleen": 0.78, "kidney_right": 0.77, "kidney_left": 0.80}


def _rows(run):
    with open(run / "scores.csv", newline="") as fh:
        return list(csv.DictReader(fh))


def test_baseline_end_to_end_on_two_real_ct_cases(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ORGANS)
    # the second case is the same CT stored with another axis order and direction (LPS, transposed):
    # scores must not depend on how the file is laid out
    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    import SimpleITK as sitk

    from sam2volume.io.readers import volume_from_sitk, volume_to_sitk

    img = sitk.DICOMOrient(volume_to_sitk(ct), "PSL")
    lab = sitk.DICOMOrient(sitk.ReadImage(str(root / "labels/ct_a.nii.gz")), "PSL")
    write_volume(volume_from_sitk(img), root / "images/ct_b.nrrd")
    sitk.WriteImage(lab, str(root / "labels/ct_b.nrrd"))
    run = tmp_path / "run"
    report = evaluate(root, "box-middle", run, engine="baseline")
    rows = _rows(run)
    assert len(rows) == 2 * len(ORGANS) and {r["engine"] for r in rows} == {"baseline"}
    by = {(r["case"], r["object"]): float(r["dice"]) for r in rows}
    for organ, minimum in THRESHOLDS.items():
        assert by[("ct_a", organ)] > minimum, (organ, by)
        assert by[("ct_b", organ)] == pytest.approx(by[("ct_a", organ)], abs=1e-6)
    summary = {(r["engine"], r["object"]): r for r in csv.DictReader(open(run / "summary.csv"))}
    assert float(summary[("baseline", "liver")]["dice_mean"]) == pytest.approx(by[("ct_a", "liver")], abs=1e-5)
    assert report["settings"]["seed"] == 0 and report["versions"]["sam2volume"]
    assert set(report["seconds_per_case"]) == {"ct_a", "ct_b"} and report["cases"]["finished"] == 2
    assert (run / "plots/dice_boxplot.png").stat().st_size > 1000
    assert sorted(p.name for p in (run / "overlays").iterdir()) == ["ct_a_key.png", "ct_a_worst.png", "ct_b_key.png", "ct_b_worst.png"]
    case = json.loads((run / "cases/ct_a.json").read_text())
    assert case["prompts"]["baseline"]["liver"][0]["box"]  # the prompts sent are on record
    assert not list(run.rglob(".*.partial*"))


@pytest.mark.sam2
def test_sam2_random_weights_on_a_tiny_volume_gives_a_complete_report(totalseg, tmp_path):
    import SimpleITK as sitk
    from sam2_helpers import engine_config

    root = tmp_path / "tiny"
    relabel(totalseg, "example_ct_sm.nii.gz", "example_seg.nii.gz", "ct_total", {1: "liver", 2: "kidney_left"}, tmp_path / "full.nii.gz")
    for src, dst in ((totalseg / "example_ct_sm.nii.gz", root / "images/tiny.nii.gz"), (tmp_path / "full.nii.gz", root / "labels/tiny.nii.gz")):
        dst.parent.mkdir(parents=True, exist_ok=True)
        img = sitk.ReadImage(str(src))
        sitk.WriteImage(img[:, :, 8:14], str(dst))  # 6 slices around both organs, geometry kept
    (root / "labels.json").write_text('{"1": "liver", "2": "kidney_left"}')
    run = tmp_path / "run"
    report = evaluate(root, "box-middle:corrections=1", run, engine="sam2", config=engine_config())
    rows = _rows(run)
    assert {(r["engine"], r["object"]) for r in rows} == {(e, o) for e in ("sam2", "baseline") for o in ("liver", "kidney_left")}
    assert all(0.0 <= float(r["dice"]) <= 1.0 for r in rows)
    assert report["settings"]["config"]["random_weights"] is True and report["settings"]["protocol"]["corrections"] == 1
    assert report["cases"]["errors"] == [] and report["cases"]["engine_errors"] == []
    case = json.loads((run / "cases/tiny.json").read_text())
    assert set(case["seconds"]) >= {"read", "sam2", "baseline"}
    assert all(len(v) <= 1 for v in case["corrections"]["sam2"].values())
    assert (run / "overlays/tiny_worst.png").is_file()


def test_a_killed_run_resumes_without_losing_or_redoing_cases(totalseg, tmp_path):
    cases = [f"case{n}" for n in range(4)]
    root = plain_ct_dataset(totalseg, tmp_path / "ds", cases, ["liver", "spleen"])
    run = tmp_path / "run"
    cmd = [sys.executable, "-m", "sam2volume", "evaluate", str(root), "--protocol", "box-middle", "-o", str(run), "--engine", "baseline", "-q"]
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1] / "core")}
    proc = subprocess.Popen(cmd, env=env)
    deadline = time.time() + 120
    while time.time() < deadline and not list(run.glob("cases/*.json")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    finished = {p.name: (p.stat().st_mtime_ns, p.read_text()) for p in (run / "cases").glob("*.json")}
    assert 1 <= len(finished) < 4, "the run should have been killed part-way"
    for p in run.rglob("*"):
        if p.is_file() and p.suffix == ".json" and ".partial" not in p.name:
            json.loads(p.read_text())  # whatever is there is whole
    subprocess.run(cmd, env=env, check=True)
    report = json.loads((run / "report.json").read_text())
    assert report["cases"]["finished"] == 4 and report["resumed"]["cases_already_done"] == len(finished)
    for name, (mtime, text) in finished.items():  # not redone
        p = run / "cases" / name
        assert p.stat().st_mtime_ns == mtime and p.read_text() == text
    assert len(_rows(run)) == 8 and not list(run.rglob(".*.partial*"))
    # a third run finds everything done
    again = evaluate(root, "box-middle", run, engine="baseline")
    assert again["resumed"]["cases_already_done"] == 4


def test_bad_inputs_fail_early_or_are_listed_in_the_report(totalseg, tmp_path, capsys):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["good"], ["liver", "spleen", "pancreas", "urinary_bladder"])
    # a case whose label is on another grid (the MR's labels next to the CT)
    link(totalseg / "example_ct_sm.nii.gz", root / "images/mismatch.nii.gz")
    link(totalseg / "example_seg_mr.nii.gz", root / "labels/mismatch.nii.gz")
    # a case whose label has a value the label map lacks (9)
    lab = read_volume(root / "labels/good.nii.gz")
    arr = lab.array.copy()
    arr[0, 0, 0] = 9
    link(totalseg / "example_ct_sm.nii.gz", root / "images/extra.nii.gz")
    write_volume(lab.with_array(arr), root / "labels/extra.nii.gz")
    run = tmp_path / "run"
    with pytest.raises(InputError, match="unknown protocol"):
        evaluate(root, "clicks", run, engine="baseline")
    with pytest.raises(InputError, match="organ.*heart.*not in dataset"):
        evaluate(root, "box-middle", run, engine="baseline", organs=["heart"])
    assert not run.exists()  # nothing was started
    report = evaluate(root, "box-middle", run, engine="baseline", organs=["liver", "urinary_bladder"], overlays=False)
    errors = {e["case"]: e["error"] for e in report["cases"]["errors"]}
    assert set(errors) == {"mismatch"} and "GeometryMismatchError" in errors["mismatch"]
    absent = {a["case"]: a["objects"] for a in report["cases"]["objects_absent"]}
    assert absent["good"] == ["urinary_bladder"]  # not in this CT: not prompted, not scored, listed
    warnings = {w["case"]: w["warnings"] for w in report["cases"]["warnings"]}
    assert "[9]" in warnings["extra"][0]
    assert {r["object"] for r in _rows(run)} == {"liver"}
    with pytest.raises(InputError, match="other settings.*seed"):
        evaluate(root, "box-middle", run, engine="baseline", organs=["liver", "urinary_bladder"], overlays=False, seed=3)
    # the command exits 1 when a case failed, and -q still prints the summary and the failure (issue 12)
    capsys.readouterr()
    code = main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(run), "--engine", "baseline", "-q",
                 "--organs", "liver", "urinary_bladder", "--no-overlays"])
    out, err = capsys.readouterr()
    assert code == 1 and "1 of 3 cases failed" in err and "failed: mismatch" in err
    assert "n=2" in out and "Dice 0." in out and "nan" not in out


def test_compare_two_runs_and_the_cli(totalseg, tmp_path, capsys):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b"], ["liver", "spleen"])
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(tmp_path / "r1"), "--engine", "baseline", "-q", "--no-overlays"]) == 0
    assert main(["evaluate", str(root), "--protocol", "mask-middle", "-o", str(tmp_path / "r2"), "--engine", "baseline", "-q", "--no-overlays"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r2"), "-o", str(tmp_path / "cmp.csv")]) == 0
    out = capsys.readouterr().out
    assert "liver" in out and "spleen" in out
    assert "note: protocol differs" in out and "box-middle" in out  # the comparison says what it compares
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(tmp_path / "r4"), "--engine", "baseline", "-q",
                 "--no-overlays", "--tolerances", "5", "--limit", "1"]) == 0
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r4"), "--metric", "nsd"]) == 2
    assert "different tolerance tables" in capsys.readouterr().err
    assert main(["compare", str(tmp_path / "r1"), str(tmp_path / "r4")]) == 0
    assert "cases differ: 1 shared, 1 only in A" in capsys.readouterr().out
    cmp = {r["object"]: r for r in csv.DictReader(open(tmp_path / "cmp.csv"))}
    a = {(r["case"], r["object"]): float(r["dice"]) for r in _rows(tmp_path / "r1")}
    b = {(r["case"], r["object"]): float(r["dice"]) for r in _rows(tmp_path / "r2")}
    expected = np.mean([b[(c, "liver")] - a[(c, "liver")] for c in ("a", "b")])
    assert float(cmp["liver"]["difference"]) == pytest.approx(expected, abs=1e-5) and cmp["liver"]["cases"] == "2"
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(tmp_path / "r3"), "--engine", "baseline",
                 "--tolerances", "mystery"]) == 2
    assert "mystery" in capsys.readouterr().err


def test_batch_segments_many_volumes_and_resumes(totalseg, tmp_path, capsys):
    inputs = tmp_path / "in"
    link(totalseg / "example_ct_sm.nii.gz", inputs / "one.nii.gz")
    link(totalseg / "example_ct_sm.nii.gz", inputs / "two.nii.gz")
    link(totalseg / "example_ct_sm.nii.gz", inputs / "three.nii.gz")  # has no prompts: listed, the batch goes on
    example = Path(__file__).resolve().parents[1] / "examples" / "prompts_ct_abdomen.json"
    prompts = json.loads(example.read_text())
    prompts["objects"] = [o for o in prompts["objects"] if not o.get("masks")]
    for name in ("one", "two"):
        (inputs / f"{name}.prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(["batch", str(inputs), "-o", str(out), "--engine", "baseline", "-q"]) == 1
    report = json.loads((out / "batch_report.json").read_text())
    assert sorted(Path(p).name for p in report["done"]) == ["one.nii.gz", "two.nii.gz"]
    assert "three" in report["errors"][0]["input"] and "three.prompts.json" in report["errors"][0]["error"]
    first = (out / "one.nii.gz").stat().st_mtime_ns
    seg = read_volume(out / "one.nii.gz")
    assert seg.same_grid(read_volume(inputs / "one.nii.gz")) and len(np.unique(seg.array)) > 2
    assert main(["batch", str(inputs), "-o", str(out), "--engine", "baseline", "-q"]) == 1
    report = json.loads((out / "batch_report.json").read_text())
    assert len(report["skipped_finished"]) == 2 and (out / "one.nii.gz").stat().st_mtime_ns == first
    assert main(["batch", str(inputs), "-o", str(out), "--format", ".png"]) == 2
    assert "png" in capsys.readouterr().err


def test_reader_skips_are_listed_in_the_run_report(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a"], ["liver"])
    link(totalseg / "example_mr_sm.nii.gz", root / "images/unlabelled.nii.gz")
    assert [s["case"] for s in read_dataset(root).skipped] == ["unlabelled"]
    report = evaluate(root, "box-middle", tmp_path / "run", engine="baseline", overlays=False)
    assert report["cases"]["skipped_by_reader"][0]["case"] == "unlabelled"


def test_every_json_written_is_valid_json_without_nan(totalseg, tmp_path):
    """Before: case records and report.json held NaN (not JSON) for undefined metrics, e.g. HD95 of an
    empty prediction. Now null, with a note saying what null means; statistics still treat it as NaN."""
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver", "kidney_left"])
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", overlays=False, stop_after=1)
    from sam2volume.io.atomic import json_text

    assert json_text({"a": float("nan"), "b": [np.float32("inf")], "c": np.int64(3)}) == '{\n  "a": null,\n  "b": [\n    null\n  ],\n  "c": 3\n}'
    for f in list(run.rglob("*.json")):
        json.loads(f.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(AssertionError(f"{f}: {c}")))
    report = json.loads((run / "report.json").read_text())
    assert "null stands for" in report["null_values"]


def test_saved_predictions_carry_the_datasets_label_ids_and_names(totalseg, tmp_path):
    """Before: predictions were written with the session's labels 1..N (BTCV's liver came out as 1, not 6)."""
    from eval_helpers import link

    from sam2volume import read_labelmap
    from sam2volume.evaluation.datasets import BTCV_LABELS

    root = tmp_path / "BTCV"
    link(totalseg / "example_ct_sm.nii.gz", root / "img/img0001.nii.gz")
    relabel(totalseg, "example_ct_sm.nii.gz", "example_seg.nii.gz", "ct_total", BTCV_LABELS, root / "label/label0001.nii.gz")
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", organs=["liver", "spleen"], overlays=False, save_predictions=True)
    pred = read_labelmap(run / "predictions" / "img0001.baseline.nii.gz")
    assert set(np.unique(pred.array).tolist()) == {0, 1, 6}  # BTCV: spleen 1, liver 6
    side = json.loads((run / "predictions" / "img0001.baseline.nii.gz.labels.json").read_text())
    assert {d["value"]: d["name"] for d in side["labels"]} == {6: "liver", 1: "spleen"} and side["label_ids"] == "dataset"
    table = (run / "predictions" / "img0001.baseline.nii.gz.labels.csv").read_text().splitlines()  # Slicer's colour table
    assert [row.split(",")[:5] for row in table[1:]] == [["1", "spleen", "157", "108", "162"], ["6", "liver", "221", "130", "101"]]
    ref = read_labelmap(root / "label/label0001.nii.gz").array
    liver_dice = 2 * ((pred.array == 6) & (ref == 6)).sum() / ((pred.array == 6).sum() + (ref == 6).sum())
    scores = {r["object"]: float(r["dice"]) for r in _rows(run)}
    assert liver_dice == pytest.approx(scores["liver"], abs=1e-6)


def test_progress_off_a_terminal_is_plain_lines(totalseg, tmp_path, capsys):
    """Issue 12: a non-terminal run (a log file, CI) gets one line per step, never carriage-return bars."""
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a", "b"], ["liver"])
    assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(tmp_path / "r"), "--engine", "baseline", "--no-overlays"]) == 0
    err = capsys.readouterr().err
    assert "\r" not in err and "evaluate: 1/2 case" in err and "evaluate: 2/2 case" in err


def test_key_slice_overlay_draws_the_prompts(totalseg, tmp_path, monkeypatch):
    """Issue 12: the prompts sent are drawn on the key-slice overlay (checked on the call, then the file)."""
    import sam2volume.overlay as overlay

    seen = []
    real = overlay.save_overlay_png
    monkeypatch.setattr(overlay, "save_overlay_png", lambda *a, **k: (seen.append(k.get("prompts")), real(*a, **k))[1])
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["a"], ["liver"])
    evaluate(root, "box-middle", tmp_path / "run", engine="baseline")
    key_prompts = seen[0]
    record = json.loads((tmp_path / "run" / "cases" / "a.json").read_text())
    assert key_prompts and key_prompts[0]["box"] == record["prompts"]["baseline"]["liver"][0]["box"]
    assert (tmp_path / "run" / "overlays" / "a_key.png").stat().st_size > 5000
