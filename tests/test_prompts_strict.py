"""Prompts files are checked strictly before any model work: types, lengths, ranges, keys, mask files.

Each case here was accepted silently or crashed with a traceback before (issue 13); now each gets exit
code 2 and a message naming the value, and nothing is written.
"""

import json
import shutil

import pytest

from sam2volume.cli import main

P = [5, 5, 5]


def _args(totalseg, out, prompts):
    return ["segment", str(totalseg / "example_ct_sm.nii.gz"), "--prompts", str(prompts), "-o", str(out),
            "--random-weights", "--image-size", "128", "--device", "cpu", "-q"]


def obj(**kw):
    base = {"name": "a", "points": [P]}
    base.update(kw)
    return {"objects": [base]}


BAD_JSON = {
    "positive as a string": (obj(points=[{"position": P, "positive": "false"}]), '"positive" must be true or false'),
    "positive as 0": (obj(points=[{"position": P, "positive": 0}]), '"positive" must be true or false'),
    "color not numbers": (obj(color=["red", 0, 0]), "color must be three numbers"),
    "color too long": (obj(color=[0.1, 0.2, 0.3, 0.4]), "color must be three numbers"),
    "color out of range": (obj(color=[255, 0, 0]), "color must be three numbers in [0, 1]"),
    "name with newline": (obj(name="liver\nSegment0_Name:=x"), "one line of printable characters"),
    "name not a string": (obj(name=7), "name must be a non-empty string"),
    "label a float": (obj(label=1.0), "label must be an integer"),
    "label a bool": (obj(label=True), "label must be an integer"),
    "mask file a number": (obj(points=[], masks=[{"file": 3, "slice": 4}]), '"file" must be a path string'),
    "mask slice a string": (obj(points=[], masks=[{"file": "m.nii.gz", "slice": "4"}]), '"slice" must be a slice number'),
    "mask value a float": (obj(points=[], masks=[{"file": "m.nii.gz", "slice": 4, "value": 1.5}]), '"value" must be a positive integer'),
    "mask path a directory": (obj(points=[], masks=[{"file": "/proc", "slice": 4}]), "it is a directory"),
    "unknown object key": (obj(postive=[P]), "unknown key(s) 'postive'"),
    "unknown point key": (obj(points=[{"position": P, "postive": True}]), "unknown key(s) 'postive'"),
    "points not a list": (obj(points={"position": P}), '"points" must be a list'),
    "axis unknown": ({"axis": "oblique", **obj()}, "unknown slice axis 'oblique'"),
    "coordinate a string": (obj(points=[["5", 5, 5]]), "finite numbers"),
}

BAD_TEXT = {
    "integer too large for a float": ('{"objects": [{"name": "a", "points": [[1' + "0" * 400 + ', 5, 5]]}]}', "finite numbers"),
    "deeply nested": ('{"objects": ' + "[" * 100000 + "]" * 100000 + "}", "nested too deeply"),
    # JSON readers keep the last of a repeated key: the file would not say what it seems to say
    "duplicate key in a point": ('{"objects": [{"name": "a", "points": [[5, 5, 5]]}, {"name": "b", "label": 2, "points": '
                                 '[{"position": [5, 5, 5], "positive": true, "positive": false}]}]}',
                                 "key 'positive' appears twice in objects[1].points[0]; keep one of them"),
    "duplicate object name key": ('{"objects": [{"name": "liver", "name": "spleen", "points": [[5, 5, 5]]}]}',
                                  "key 'name' appears twice in objects[0]"),
    "duplicate top-level key": ('{"objects": [{"name": "a", "points": [[5, 5, 5]]}], "objects": [{"name": "b", "points": [[6, 6, 6]]}]}',
                                "key 'objects' appears twice in the top-level object"),
}


def _run(tmp_path, totalseg, capsys, monkeypatch, path):
    import sam2volume.engine.predictor as pred

    def no_build(*a, **k):  # test double: proves the model is never built for bad input
        raise AssertionError("model was built")

    monkeypatch.setattr(pred, "build_predictor", no_build)
    out = tmp_path / "out" / "x.nii.gz"
    code = main(_args(totalseg, out, path))
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
    return err


@pytest.mark.parametrize("case", list(BAD_JSON))
def test_bad_prompt_values_are_refused(tmp_path, totalseg, capsys, monkeypatch, case):
    data, pattern = BAD_JSON[case]
    p = tmp_path / "p.json"
    p.write_text(json.dumps(data))
    assert pattern in _run(tmp_path, totalseg, capsys, monkeypatch, p)


@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_bad_prompt_text_is_refused(tmp_path, totalseg, capsys, monkeypatch, case):
    text, pattern = BAD_TEXT[case]
    p = tmp_path / "p.json"
    p.write_text(text)
    assert pattern in _run(tmp_path, totalseg, capsys, monkeypatch, p)


def test_prompts_file_not_utf8(tmp_path, totalseg, capsys, monkeypatch):
    p = tmp_path / "p.json"
    p.write_bytes('{"objects": [{"name": "Leber\u00fc", "points": [[5, 5, 5]]}]}'.encode("latin-1"))
    assert "not UTF-8 text" in _run(tmp_path, totalseg, capsys, monkeypatch, p)


@pytest.mark.parametrize("case", ["value absent", "empty slice", "the CT itself"])
def test_bad_mask_prompts_are_refused(tmp_path, totalseg, capsys, monkeypatch, case):
    shutil.copy(totalseg / "example_seg.nii.gz", tmp_path / "seg.nii.gz")
    mask = {"value absent": {"file": "seg.nii.gz", "slice": 14, "value": 250},
            "empty slice": {"file": "seg.nii.gz", "slice": 0, "value": 4},  # label 4 is absent on the lowest slice
            "the CT itself": {"file": str(totalseg / "example_ct_sm.nii.gz"), "slice": 14}}[case]
    pattern = {"value absent": "value 250 does not occur", "empty slice": "the mask is empty on axial slice 0",
               "the CT itself": "not a labelmap"}[case]
    p = tmp_path / "p.json"
    p.write_text(json.dumps({"objects": [{"name": "liver", "masks": [mask]}]}))
    err = _run(tmp_path, totalseg, capsys, monkeypatch, p)
    assert pattern in err and "'liver'" in err
