"""No command destroys an input or mixes two configurations in one folder (issue 13).

Before: `segment IMAGE -o IMAGE` overwrote the CT, `batch DIR -o DIR` overwrote every input, a rerun of
`batch` with another axis silently mixed two settings, a non-ASCII name crashed the .seg.nrrd writer after
the model ran, and `-o` an existing folder failed after the work. Now each is refused before any work.
"""

import json
import os
import shutil

import pytest

from sam2volume.cli import main

PROMPTS = {"objects": [{"name": "liver", "label": 1, "boxes": [[[45, 27, 14], [104, 85, 14]]]}]}


@pytest.fixture()
def case(tmp_path, totalseg):
    img = tmp_path / "in" / "ct.nii.gz"
    img.parent.mkdir()
    shutil.copy(totalseg / "example_ct_sm.nii.gz", img)
    (img.parent / "ct.prompts.json").write_text(json.dumps(PROMPTS))
    return img


def _segment(img, out, *extra, prompts=None):
    return main(["segment", str(img), "--prompts", str(prompts or img.parent / "ct.prompts.json"), "-o", str(out),
                 "--engine", "baseline", "-q", *extra])


def test_segment_refuses_to_overwrite_its_input(case, capsys):
    before = case.read_bytes()
    assert _segment(case, case) == 2
    assert "is the input" in capsys.readouterr().err
    link = case.parent / "link.nii.gz"
    os.symlink(case, link)
    assert _segment(case, link) == 2  # the same file through a link
    assert "is the input" in capsys.readouterr().err
    assert _segment(case, case.parent / "ct.prompts.json") == 2  # cannot write that type anyway, still refused
    assert case.read_bytes() == before


def test_segment_refuses_a_folder_as_output(case, tmp_path, capsys):
    (tmp_path / "x.nii.gz").mkdir()
    assert _segment(case, tmp_path / "x.nii.gz") == 2
    assert "is a folder" in capsys.readouterr().err
    assert list((tmp_path / "x.nii.gz").iterdir()) == []


def test_non_ascii_name_refused_before_work_for_seg_nrrd_written_elsewhere(case, tmp_path, capsys):
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"name": "Leber \u00fc", "label": 1, "boxes": PROMPTS["objects"][0]["boxes"]}]}), encoding="utf-8")
    assert _segment(case, tmp_path / "o" / "x.seg.nrrd", prompts=p) == 2
    assert "non-ASCII" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()
    assert _segment(case, tmp_path / "o" / "x.nii.gz", prompts=p) == 0  # NIfTI keeps no names: fine


def test_batch_into_its_input_folder_is_refused(case, capsys):
    before = case.read_bytes()
    assert main(["batch", str(case.parent), "-o", str(case.parent), "--engine", "baseline", "-q"]) == 2
    assert "is the input" in capsys.readouterr().err
    assert case.read_bytes() == before
    assert sorted(p.name for p in case.parent.iterdir()) == ["ct.nii.gz", "ct.prompts.json"]


def test_batch_rerun_with_other_settings_is_refused(case, tmp_path, capsys):
    out = tmp_path / "out"
    assert main(["batch", str(case.parent), "-o", str(out), "--engine", "baseline", "-q"]) == 0
    settings = json.loads((out / "batch_settings.json").read_text())["settings"]
    assert settings["engine"] == "baseline" and settings["axis"] is None
    assert main(["batch", str(case.parent), "-o", str(out), "--engine", "baseline", "--axis", "coronal", "-q"]) == 2
    err = capsys.readouterr().err
    assert "other settings" in err and "axis" in err
    assert main(["batch", str(case.parent), "-o", str(out), "--engine", "baseline", "-q"]) == 0  # same settings: resumes


def test_batch_goes_on_after_an_os_error_on_one_input(case, tmp_path, monkeypatch):
    """A full disk while writing one output (simulated by the writer raising ENOSPC, a test double of the
    disk) fails that input only; the next input is segmented and the report lists the failure."""
    import errno

    import sam2volume.io.writers as writers

    shutil.copy(case, case.parent / "ct2.nii.gz")
    (case.parent / "ct2.prompts.json").write_text(json.dumps(PROMPTS))
    real = writers.write_volume
    calls = []

    def disk_full_once(vol, path, **kw):
        calls.append(path)
        if len(calls) == 1:
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        return real(vol, path, **kw)

    monkeypatch.setattr(writers, "write_volume", disk_full_once)
    out = tmp_path / "out"
    assert main(["batch", str(case.parent), "-o", str(out), "--engine", "baseline", "-q"]) == 1
    report = json.loads((out / "batch_report.json").read_text())
    assert len(report["errors"]) == 1 and "No space left" in report["errors"][0]["error"]
    assert len(report["done"]) == 1
