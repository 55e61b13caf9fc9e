"""Issue 20 item 9: sidecars are named after the whole output name (``OUT.report.json``, ``OUT.labels.json``,
``OUT.labels.csv``), so outputs of several formats in one folder keep their own.

Before: ``out/ct.nii.gz``, ``out/ct.nrrd`` and ``out/ct.seg.nrrd`` all wrote ``out/ct.report.json`` (and the first
two ``out/ct.labels.json``): each run overwrote the previous run's report and names.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from sam2volume import read_volume
from sam2volume.api import report_path, segment
from sam2volume.batch import batch
from sam2volume.cli import main

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture
def ct(totalseg):
    return read_volume(totalseg / "example_ct_sm.nii.gz")


@pytest.fixture
def one_organ():
    prompts = json.loads((EXAMPLES / "prompts_ct_abdomen.json").read_text())
    prompts["objects"] = [{k: v for k, v in o.items() if k != "color"} for o in prompts["objects"] if o["name"] == "liver"]
    return prompts  # no colour given: the outputs take Slicer's colour for the liver


def test_three_formats_in_one_folder_keep_their_own_sidecars(tmp_path, ct, one_organ):
    out = tmp_path / "out"
    for name in ("ct.nii.gz", "ct.nrrd", "ct.seg.nrrd"):
        segment(ct, one_organ, out / name, engine="baseline")
    assert sorted(p.name for p in out.iterdir()) == [
        "ct.nii.gz", "ct.nii.gz.labels.csv", "ct.nii.gz.labels.json", "ct.nii.gz.report.json",
        "ct.nrrd", "ct.nrrd.labels.csv", "ct.nrrd.labels.json", "ct.nrrd.report.json",
        "ct.seg.nrrd", "ct.seg.nrrd.report.json"]
    for name in ("ct.nii.gz", "ct.nrrd", "ct.seg.nrrd"):
        report = json.loads((out / f"{name}.report.json").read_text())
        assert Path(report["output"]).name == name
    for name in ("ct.nii.gz", "ct.nrrd"):
        report = json.loads((out / f"{name}.report.json").read_text())
        assert report["label_names"] == str(out / f"{name}.labels.json") and report["color_table"] == str(out / f"{name}.labels.csv")
        side = json.loads((out / f"{name}.labels.json").read_text())
        assert side["labelmap"] == name and [(d["value"], d["name"]) for d in side["labels"]] == [(1, "liver")]
        assert (out / f"{name}.labels.csv").read_text().splitlines()[1].startswith("1,liver,221,130,101,255,")
    from sam2volume import read_labelmap

    liver = read_labelmap(out / "ct.seg.nrrd").meta["segments"][0]  # .seg.nrrd carries the same name and colour
    assert liver["name"] == "liver" and [round(c * 255) for c in liver["color"]] == [221, 130, 101]


def test_the_cli_names_every_file_it_wrote(tmp_path, totalseg, capsys):
    out = tmp_path / "seg.nrrd"
    assert main(["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(EXAMPLES / "prompts_ct_abdomen.json"),
                 "-o", str(out), "--engine", "baseline"]) == 0
    wrote = [line for line in capsys.readouterr().out.splitlines() if line.startswith("wrote ")]
    assert wrote == [f"wrote {out}, {out}.labels.json, {out}.labels.csv and {out}.report.json"]


def test_a_sidecar_that_is_an_input_is_refused_before_any_work(tmp_path, ct, one_organ):
    """The colour table is checked like the other outputs: it may not overwrite an input."""
    from sam2volume import InputError

    prompts = tmp_path / "ct.nii.gz.labels.csv"
    prompts.write_text(json.dumps(one_organ))
    with pytest.raises(InputError, match="colour table .*ct.nii.gz.labels.csv is the input"):
        segment(ct, prompts, tmp_path / "ct.nii.gz", engine="baseline")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz.labels.csv"]


def _batch_inputs(tmp_path, totalseg, one_organ) -> Path:
    from eval_helpers import link

    inputs = tmp_path / "in"
    link(totalseg / "example_ct_sm.nii.gz", inputs / "one.nii.gz")
    (inputs / "one.prompts.json").write_text(json.dumps(one_organ))
    return inputs


def test_batch_resume_trusts_a_report_at_the_earlier_name(tmp_path, totalseg, one_organ):
    """A folder finished by an earlier version (report ``one.report.json``) is resumed, not segmented again."""
    inputs, out = _batch_inputs(tmp_path, totalseg, one_organ), tmp_path / "out"
    batch([inputs], out, engine="baseline")
    assert report_path(out / "one.nii.gz") == out / "one.nii.gz.report.json"
    (out / "one.nii.gz.report.json").rename(out / "one.report.json")
    report = batch([inputs], out, engine="baseline")
    assert report["done"] == [] and report["skipped_finished"] == [str(out / "one.nii.gz")] and report["redone"] == []


def test_batch_resume_refuses_an_earlier_name_report_of_another_format(tmp_path, totalseg, one_organ):
    """``one.report.json`` written for ``one.nrrd`` is not the report of ``one.nii.gz``."""
    inputs, out = _batch_inputs(tmp_path, totalseg, one_organ), tmp_path / "out"
    batch([inputs], out, engine="baseline")
    legacy = json.loads((out / "one.nii.gz.report.json").read_text())
    (out / "one.nii.gz.report.json").unlink()
    (out / "one.report.json").write_text(json.dumps({**legacy, "output": str(out / "one.nrrd")}))
    with pytest.warns(Warning, match="one.report.json: report not trusted, it is the report of output"):
        report = batch([inputs], out, engine="baseline")
    assert report["done"] == [str(out / "one.nii.gz")] and "one.nrrd" in report["redone"][0]["reason"]
    assert Path(json.loads((out / "one.nii.gz.report.json").read_text())["output"]).name == "one.nii.gz"
    shutil.rmtree(out)


def test_convert_of_a_seg_nrrd_to_nifti_keeps_names_and_colours_beside_it(tmp_path):
    """Before: `sam2volume convert x.seg.nrrd x.nii.gz --labelmap` wrote the labels only (their names were lost)."""
    import numpy as np

    from sam2volume import write_labelmap
    from sam2volume.volume import Volume

    array = np.zeros((10, 10, 4), np.uint8)
    array[1:4, 1:4, 1] = 3
    array[5:8, 5:8, 2] = 7
    segs = [{"label": 3, "name": "spleen"}, {"label": 7, "name": "needle tip", "color": [0.0, 1.0, 0.0]}]
    write_labelmap(Volume(array), tmp_path / "x.seg.nrrd", segments=segs)
    assert main(["convert", str(tmp_path / "x.seg.nrrd"), str(tmp_path / "x.nii.gz"), "--labelmap", "-q"]) == 0
    rows = (tmp_path / "x.nii.gz.labels.csv").read_text().splitlines()[1:]
    assert [r.split(",")[:5] for r in rows] == [["3", "spleen", "157", "108", "162"], ["7", "needle tip", "0", "255", "0"]]
    side = json.loads((tmp_path / "x.nii.gz.labels.json").read_text())
    assert [(d["value"], d["name"]) for d in side["labels"]] == [(3, "spleen"), (7, "needle tip")]
