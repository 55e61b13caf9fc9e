"""Every option is checked before any work (issue 13): before, `--limit -1` dropped the last case,
`--stop-after -1` marked every case finished with no scores, `--feature-cache-mb nan` never evicted,
and `--allow-uneven-spacing` (which the uneven-spacing error suggests) was refused by segment and batch."""

import pytest

from sam2volume import InputError
from sam2volume.cli import main
from sam2volume.engine.config import EngineConfig

EX = __import__("pathlib").Path(__file__).resolve().parents[1] / "examples" / "prompts_ct_abdomen.json"


@pytest.mark.parametrize("argv, message", [
    (["evaluate", "DS", "--protocol", "box-middle", "-o", "R", "--limit", "-1"], "'-1' is not an integer >= 1"),
    (["evaluate", "DS", "--protocol", "box-middle", "-o", "R", "--limit", "0"], "'0' is not an integer >= 1"),
    (["evaluate", "DS", "--protocol", "box-middle", "-o", "R", "--seed", "-1"], "'-1' is not an integer >= 0"),
    (["evaluate", "DS", "--protocol", "box-middle", "-o", "R", "--stop-after", "-1"], "'-1' is not an integer >= 0"),
    (["segment", "IMG", "--prompts", "P", "-o", "x.nii.gz", "--feature-cache-mb", "nan"], "'nan' is not a finite number >= 0"),
    (["segment", "IMG", "--prompts", "P", "-o", "x.nii.gz", "--feature-cache-mb", "-5"], "'-5' is not a finite number >= 0"),
    (["batch", "IN", "-o", "OUT", "--stop-after", "-2"], "'-2' is not an integer >= 0"),
])
def test_bad_options_are_refused_by_the_parser(argv, message, capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_python_api_checks_the_same_values(tmp_path, totalseg):
    from sam2volume.api import segment
    from sam2volume.evaluation import evaluate

    with pytest.raises(InputError, match="limit must be an integer >= 1"):
        evaluate(tmp_path / "nowhere", "box-middle", tmp_path / "run", engine="baseline", limit=-1)
    with pytest.raises(InputError, match="stop_after must be an integer >= 1"):
        segment(totalseg / "example_ct_sm.nii.gz", EX, tmp_path / "x.nii.gz", engine="baseline", stop_after=-1)
    with pytest.raises(InputError, match="feature_cache_mb must be a finite number"):
        EngineConfig(feature_cache_mb=float("nan"))
    with pytest.raises(InputError, match="image_size 100 must be a multiple of 32"):
        EngineConfig(image_size=100)
    assert list(tmp_path.iterdir()) == []


def test_segment_and_batch_accept_allow_uneven_spacing(tmp_path, pydicom_data, capsys):
    series = pydicom_data / "dicomdirtests" / "77654033" / "CT2"
    p = tmp_path / "p.json"
    p.write_text('{"objects": [{"name": "a", "points": [[8, 8, 1]]}]}')
    assert main(["segment", str(series), "--prompts", str(p), "-o", str(tmp_path / "a.nii.gz"), "--engine", "baseline", "-q"]) == 2
    assert "--allow-uneven-spacing" in capsys.readouterr().err
    with pytest.warns(UserWarning):
        code = main(["segment", str(series), "--prompts", str(p), "-o", str(tmp_path / "a.nii.gz"), "--engine", "baseline", "-q",
                     "--allow-uneven-spacing"])
    assert code == 0 and (tmp_path / "a.nii.gz").is_file()
    capsys.readouterr()
    # batch shows the library's warnings as one line each on stderr (cli_evaluate.warnings_as_lines)
    code = main(["batch", str(series), "--prompts", str(p), "-o", str(tmp_path / "b"), "--engine", "baseline", "-q",
                 "--allow-uneven-spacing"])
    assert code == 0 and (tmp_path / "b" / "CT2.nii.gz").is_file()
    err = capsys.readouterr().err
    assert "sam2volume batch: warning:" in err and "unevenly spaced" in err
