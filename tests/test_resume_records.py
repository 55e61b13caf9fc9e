"""A resumed `evaluate` trusts a case record only when it is that case's record under the run's settings:
every other one (copied from another case or run, wrong types, damaged) is redone with a warning."""

import csv
import json
import shutil
import warnings

import pytest
from eval_helpers import plain_ct_dataset

from sam2volume.cli import main
from sam2volume.evaluation import evaluate
from sam2volume.evaluation.case_records import ResumeWarning

CASES = ["a", "b"]
ORGANS = ["liver", "spleen"]


@pytest.fixture()
def finished_run(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", CASES, ORGANS)
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", overlays=False)
    return root, run


def _scored_cases(run):
    with open(run / "scores.csv", newline="") as fh:
        return sorted((r["case"], r["object"]) for r in csv.DictReader(fh))


def _resume(root, run, **kwargs):
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        report = evaluate(root, "box-middle", run, engine="baseline", overlays=False, **kwargs)
    return report, [str(w.message) for w in caught if issubclass(w.category, ResumeWarning)]


def _edit(path, change):
    record = json.loads(path.read_text())
    change(record)
    path.write_text(json.dumps(record))


def _copy_of_a(run):
    shutil.copy(run / "cases/a.json", run / "cases/b.json")


CORRUPTIONS = {
    "copied from another case": (_copy_of_a, "record of case 'a'"),
    "rows not a list": (lambda run: _edit(run / "cases/b.json", lambda r: r.update(rows=None)), '"rows" is NoneType'),
    "a metric as text": (lambda run: _edit(run / "cases/b.json", lambda r: r["rows"][0].update(dice="0.9")), "dice '0.9'"),
    "a row of another case": (lambda run: _edit(run / "cases/b.json", lambda r: r["rows"][0].update(case="a")), "row is for case 'a'"),
    "a row dropped": (lambda run: _edit(run / "cases/b.json", lambda r: r["rows"].pop()), "do not cover"),
    "no settings digest (older version)": (lambda run: _edit(run / "cases/b.json", lambda r: r.pop("settings_digest")), "other settings"),
    "a list, not a record": (lambda run: (run / "cases/b.json").write_text("[1, 2]"), "JSON list"),
    "nested too deeply": (lambda run: (run / "cases/b.json").write_text("[" * 100000 + "]" * 100000), "cannot be read"),
}


@pytest.mark.parametrize("corruption", list(CORRUPTIONS))
def test_an_untrusted_record_is_redone_with_a_warning(finished_run, corruption):
    root, run = finished_run
    expected_rows = _scored_cases(run)
    good_a = (run / "cases/a.json").read_text()
    spoil, reason = CORRUPTIONS[corruption]
    spoil(run)
    report, warned = _resume(root, run)
    assert _scored_cases(run) == expected_rows  # every case once, none lost, none twice
    assert report["resumed"]["cases_already_done"] == 1
    assert [r["case"] for r in report["resumed"]["cases_redone"]] == ["b"]
    assert reason in report["resumed"]["cases_redone"][0]["reason"]
    assert len(warned) == 1 and "b.json" in warned[0] and reason in warned[0] and "redoing" in warned[0]
    assert json.loads((run / "cases/b.json").read_text())["case"] == "b"
    assert (run / "cases/a.json").read_text() == good_a  # the trusted record is kept as it was
    again, warned = _resume(root, run)  # the redone record is trusted from now on
    assert again["resumed"]["cases_already_done"] == 2 and again["resumed"]["cases_redone"] == [] and warned == []


def test_a_record_from_a_run_with_other_settings_is_redone(totalseg, tmp_path, finished_run):
    root, run = finished_run
    other = tmp_path / "other"
    evaluate(root, "box-middle", other, engine="baseline", overlays=False, stop_after=1, limit=1)
    shutil.copy(other / "cases/a.json", run / "cases/a.json")
    report, warned = _resume(root, run)
    assert [r["case"] for r in report["resumed"]["cases_redone"]] == ["a"] and len(warned) == 1
    assert json.loads((run / "cases/a.json").read_text())["settings_digest"] != json.loads((other / "cases/a.json").read_text())["settings_digest"]


def test_another_shards_bad_record_is_left_out_of_the_tables_and_redone_by_that_shard(totalseg, tmp_path):
    root = plain_ct_dataset(totalseg, tmp_path / "ds", CASES, ORGANS)
    run = tmp_path / "run"
    evaluate(root, "box-middle", run, engine="baseline", overlays=False, num_parts=2, part_id=1)  # case b
    evaluate(root, "box-middle", run, engine="baseline", overlays=False, num_parts=2, part_id=0)  # case a
    _copy_of_a(run)  # shard 1's record overwritten by shard 0's
    report, warned = _resume(root, run, num_parts=2, part_id=0)
    assert _scored_cases(run) == [("a", "liver"), ("a", "spleen")]  # b is not counted as a second a
    assert report["cases"]["not_finished"] == ["b"] and report["resumed"]["records_not_counted"][0]["case"] == "b"
    assert len(warned) == 1 and "run of its shard redoes it" in warned[0]
    report, warned = _resume(root, run, num_parts=2, part_id=1)
    assert report["resumed"]["cases_redone"][0]["case"] == "b" and report["cases"]["finished"] == 2
    assert _scored_cases(run) == sorted((c, o) for c in CASES for o in ORGANS)


def test_the_cli_says_which_cases_it_redoes_in_one_line_each(finished_run, capsys):
    root, run = finished_run
    _copy_of_a(run)
    code = main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(run), "--engine", "baseline", "-q", "--no-overlays"])
    out, err = capsys.readouterr()
    assert code == 0 and "1 redone" in out
    lines = [line for line in err.splitlines() if "warning" in line]
    assert lines == [f"sam2volume evaluate: warning: {run / 'cases/b.json'}: record not trusted, it is the record of case 'a'; redoing the case"]
    assert "Traceback" not in err and "warnings.warn" not in err


def test_batch_redoes_an_input_whose_report_is_another_inputs(totalseg, tmp_path, capsys):
    from pathlib import Path

    from eval_helpers import link

    inputs = tmp_path / "in"
    prompts = json.loads((Path(__file__).resolve().parents[1] / "examples" / "prompts_ct_abdomen.json").read_text())
    prompts["objects"] = [o for o in prompts["objects"] if not o.get("masks")][:1]
    for name in ("one", "two"):
        link(totalseg / "example_ct_sm.nii.gz", inputs / f"{name}.nii.gz")
        (inputs / f"{name}.prompts.json").write_text(json.dumps(prompts))
    out = tmp_path / "out"
    assert main(["batch", str(inputs), "-o", str(out), "--engine", "baseline", "-q"]) == 0
    shutil.copy(out / "one.nii.gz.report.json", out / "two.nii.gz.report.json")
    capsys.readouterr()
    assert main(["batch", str(inputs), "-o", str(out), "--engine", "baseline", "-q"]) == 0
    err = capsys.readouterr().err
    report = json.loads((out / "batch_report.json").read_text())
    assert [Path(p).name for p in report["done"]] == ["two.nii.gz"] and len(report["skipped_finished"]) == 1
    assert report["redone"][0]["input"].endswith("two.nii.gz") and "one.nii.gz" in report["redone"][0]["reason"]
    assert err.startswith("sam2volume batch: warning: ") and "two.nii.gz.report.json: report not trusted" in err and len(err.splitlines()) == 1
    assert Path(json.loads((out / "two.nii.gz.report.json").read_text())["output"]).name == "two.nii.gz"
