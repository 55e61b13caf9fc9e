"""`sam2volume segment` end to end (random weights, small image size) and its bad inputs."""

import hashlib
import json
import shutil

import pytest

from sam2volume import read_labelmap, read_volume
from sam2volume.cli import main

ROOT_EXAMPLES = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples"


def _args(totalseg, out, prompts, *extra):
    return ["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(prompts), "-o", str(out),
            "--random-weights", "--image-size", "128", "--device", "cpu", "-q", *extra]


@pytest.mark.sam2
def test_segment_writes_labelmap_report_and_png(tmp_path, totalseg):
    out = tmp_path / "res" / "ct.seg.nrrd"
    assert main(_args(totalseg, out, ROOT_EXAMPLES / "prompts_ct_abdomen.json", "--png", str(tmp_path / "res" / "ct.png"))) == 0
    lab = read_labelmap(out, reference=read_volume(totalseg / "example_ct_sm.nii.gz"))
    assert {s["name"] for s in lab.meta["segments"]} <= {"liver", "spleen", "kidney_right"}
    report = json.loads((tmp_path / "res" / "ct.seg.nrrd.report.json").read_text())
    assert report["random_weights"] is True and report["axis"] == "axial"
    assert [o["name"] for o in report["objects"]] == ["liver", "spleen", "kidney_right"]
    assert report["versions"]["sam2volume"] and report["seconds"]["propagate"] > 0
    assert (tmp_path / "res" / "ct.png").read_bytes()[:4] == b"\x89PNG"
    rep = report["reproduce"]  # what reproduces the run (issue 12)
    assert rep["image_sha256"] == hashlib.sha256((totalseg / "example_ct_sm.nii.gz").read_bytes()).hexdigest()
    assert rep["prompts_sha256"] == hashlib.sha256((ROOT_EXAMPLES / "prompts_ct_abdomen.json").read_bytes()).hexdigest()
    assert rep["model"]["random_weights"] is True and rep["model"]["image_size"] == 128 and "checkpoint" not in rep
    assert sorted(p.name for p in (tmp_path / "res").iterdir()) == ["ct.png", "ct.seg.nrrd", "ct.seg.nrrd.report.json"]


def _write(tmp_path, data):
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    return p


BAD = {
    "outside": ({"objects": [{"name": "a", "points": [[500, 1, 1]]}]}, "lies outside the volume"),
    "empty box": ({"objects": [{"name": "a", "boxes": [[[10, 10, 5], [10, 40, 5]]]}]}, "is empty"),
    "box across slices": ({"objects": [{"name": "a", "boxes": [[[10, 10, 5], [40, 40, 6]]]}]}, "different axial slices"),
    "no prompts": ({"objects": [{"name": "a"}]}, "has no points, boxes, masks, scribbles or lassos"),
    "no objects": ({"objects": []}, "non-empty \"objects\""),
    "bad label": ({"objects": [{"name": "a", "label": 0, "points": [[1, 1, 1]]}]}, "label must be an integer"),
    "duplicate label": ({"objects": [{"name": "a", "label": 2, "points": [[1, 1, 1]]}, {"name": "b", "label": 2, "points": [[1, 1, 1]]}]}, "used by two objects"),
    "bad coords": ({"coordinates": "mm", "objects": [{"name": "a", "points": [[1, 1, 1]]}]}, "coordinates"),
    "only negative": ({"objects": [{"name": "a", "points": [{"position": [5, 5, 5], "positive": False}]}]}, "only negative points"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_prompts_fail_before_model_and_write_nothing(tmp_path, totalseg, capsys, case, monkeypatch):
    import sam2volume.engine.predictor as pred

    def no_build(*a, **k):  # test double: proves the model is never built for bad input
        raise AssertionError("model was built")

    monkeypatch.setattr(pred, "build_predictor", no_build)
    data, pattern = BAD[case]
    out = tmp_path / "out" / "x.nii.gz"
    assert main(_args(totalseg, out, _write(tmp_path, data))) == 2
    assert pattern in capsys.readouterr().err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_unknown_model_and_bad_output(tmp_path, totalseg, capsys):
    prompts = ROOT_EXAMPLES / "prompts_ct_abdomen.json"
    assert main(_args(totalseg, tmp_path / "x.nii.gz", prompts, "--model", "sam9")) == 2
    assert "unknown model 'sam9'" in capsys.readouterr().err
    assert main(_args(totalseg, tmp_path / "x.png", prompts)) == 2
    assert "cannot write this file type" in capsys.readouterr().err
    assert main(_args(totalseg, tmp_path / "x.dcm", prompts)) == 2
    assert "DICOM-SEG output needs a DICOM series" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_missing_checkpoint_offline_says_where_to_put_it(tmp_path, totalseg, capsys, monkeypatch):
    monkeypatch.setenv("SAM2VOLUME_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("SAM2VOLUME_OFFLINE", "1")
    args = _args(totalseg, tmp_path / "x.nii.gz", ROOT_EXAMPLES / "prompts_ct_abdomen.json")
    args.remove("--random-weights")
    assert main(args) == 2
    err = capsys.readouterr().err
    assert "MedSAM2_latest.pt" in err and str(tmp_path / "cache") in err
    assert not (tmp_path / "x.nii.gz").exists()


@pytest.mark.sam2
def test_mask_prompt_from_file(tmp_path, totalseg):
    from sam2volume.api import segment
    from sam2_helpers import engine_config

    shutil.copy(totalseg / "example_seg.nii.gz", tmp_path / "seg.nii.gz")
    prompts = {"objects": [{"name": "liver", "label": 7, "masks": [{"file": str(tmp_path / "seg.nii.gz"), "value": 5, "slice": 14}]}]}
    lab, report = segment(totalseg / "example_ct_sm.nii.gz", prompts, tmp_path / "liver.nii.gz", config=engine_config(), direction="forward", stop_after=None)
    ref = read_labelmap(totalseg / "example_seg.nii.gz").array[:, :, 14] == 5
    got = lab.array[:, :, 14] == 7
    assert 2 * (ref & got).sum() / (ref.sum() + got.sum()) > 0.85
    assert report["slices_run"] == 16


@pytest.mark.sam2
def test_report_names_the_checkpoint_and_its_digest(tmp_path, totalseg):
    """A custom checkpoint: the report records that file's SHA-256 and the config actually used, not the
    default model's name (issue 12)."""
    import torch
    from sam2_helpers import CONFIG, engine_config

    from sam2volume.engine.predictor import build_predictor

    ckpt = tmp_path / "mine.pt"
    torch.save({"model": build_predictor(engine_config()).state_dict()}, ckpt)
    args = _args(totalseg, tmp_path / "o.nii.gz", ROOT_EXAMPLES / "prompts_ct_abdomen.json", "--checkpoint", str(ckpt), "--config", CONFIG,
                 "--stop-after", "1")
    args.remove("--random-weights")
    assert main(args) == 0
    rep = json.loads((tmp_path / "o.nii.gz.report.json").read_text())["reproduce"]
    assert rep["checkpoint"] == {"path": str(ckpt), "sha256": hashlib.sha256(ckpt.read_bytes()).hexdigest(), "verified_against": None}
    assert rep["model"]["config"] == CONFIG and rep["model"]["name"] is None
