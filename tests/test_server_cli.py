"""`--server` on segment, batch and evaluate writes what a local run writes; `serve` refuses an open bind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest

from sam2volume import read_volume
from sam2volume.cli import main
from sam2volume.io import read_labelmap

from eval_helpers import plain_ct_dataset
from server_helpers import local_server

PROMPTS = Path(__file__).resolve().parents[1] / "examples" / "prompts_ct_abdomen.json"


@pytest.fixture(scope="module")
def server():
    with local_server(random_weights=True) as s:
        yield s


@pytest.fixture()
def token_file(tmp_path, server):
    f = tmp_path / "token"
    f.write_text(server.token + "\n")
    return f


def _same_labelmaps(a: Path, b: Path, ct) -> None:
    la, lb = read_labelmap(a, reference=ct), read_labelmap(b, reference=ct)
    assert np.array_equal(la.array, lb.array) and la.array.any()
    assert [s["name"] for s in la.meta.get("segments", [])] == [s["name"] for s in lb.meta.get("segments", [])]


@pytest.mark.parametrize("engine", ["baseline"])  # SAM2 through a server: test_server_equivalence
def test_segment_on_a_server_writes_the_local_files(tmp_path, totalseg, server, token_file, engine):
    ct_file = totalseg / "example_ct_sm.nii.gz"
    extra = ["--engine", engine] + (["--random-weights", "--image-size", "128", "--device", "cpu"] if engine == "sam2" else [])
    local, remote = tmp_path / "local" / "ct.seg.nrrd", tmp_path / "remote" / "ct.seg.nrrd"
    assert main(["segment", str(ct_file), "--prompts", str(PROMPTS), "-o", str(local), "-q", *extra]) == 0
    assert main(["segment", str(ct_file), "--prompts", str(PROMPTS), "-o", str(remote), "-q", *extra,
                 "--server", server.url, "--token-file", str(token_file)]) == 0
    _same_labelmaps(local, remote, read_volume(ct_file))
    assert sorted(p.name for p in remote.parent.iterdir()) == sorted(p.name for p in local.parent.iterdir())
    rep_l, rep_r = (json.loads(p.with_name(p.name + ".report.json").read_text()) for p in (local, remote))
    assert rep_r["server"] == server.url and rep_l["server"] is None
    assert rep_r["objects"] == rep_l["objects"] and rep_r["slices_run"] == rep_l["slices_run"]


def test_batch_and_evaluate_on_a_server(tmp_path, totalseg, server, monkeypatch):
    monkeypatch.setenv("SAM2VOLUME_TOKEN", server.token)  # the token from the environment
    ct_file = totalseg / "example_ct_sm.nii.gz"
    for where, extra in (("local", []), ("remote", ["--server", server.url])):
        assert main(["batch", str(ct_file), "--prompts", str(PROMPTS), "-o", str(tmp_path / f"batch_{where}"),
                     "--engine", "baseline", "-q", *extra]) == 0
    _same_labelmaps(tmp_path / "batch_local" / "example_ct_sm.nii.gz", tmp_path / "batch_remote" / "example_ct_sm.nii.gz",
                    read_volume(ct_file))
    root = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver", "spleen"])
    rows = {}
    for where, extra in (("local", []), ("remote", ["--server", server.url])):
        run = tmp_path / f"eval_{where}"
        assert main(["evaluate", str(root), "--protocol", "box-middle", "-o", str(run), "--engine", "baseline",
                     "--no-overlays", "-q", *extra]) == 0
        with open(run / "scores.csv", newline="") as f:
            rows[where] = [(r["object"], r["engine"], r["dice"], r["nsd"]) for r in csv.DictReader(f)]
    assert rows["local"] == rows["remote"] and len(rows["local"]) == 2
    # every session was closed
    from server_helpers import stats

    assert stats(server)["sessions"] == 0


def test_server_errors_on_the_command_line(tmp_path, totalseg, server, capsys):
    ct_file = totalseg / "example_ct_sm.nii.gz"
    bad = tmp_path / "bad_token"
    bad.write_text("x" * 40)
    assert main(["segment", str(ct_file), "--prompts", str(PROMPTS), "-o", str(tmp_path / "o.nii.gz"), "--engine", "baseline",
                 "-q", "--server", server.url, "--token-file", str(bad)]) == 2
    assert "token" in capsys.readouterr().err
    assert not (tmp_path / "o.nii.gz").exists()
    assert main(["segment", str(ct_file), "--prompts", str(PROMPTS), "-o", str(tmp_path / "o.nii.gz"), "-q",
                 "--server", server.url, "--token-file", str(bad.with_name("none"))]) == 2
    assert "token file" in capsys.readouterr().err


def test_serve_refuses_an_open_bind_without_a_token(capsys):
    # refused before any socket is opened: nothing listens beyond loopback
    assert main(["serve", "--host", "0.0.0.0", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert "refusing to listen on 0.0.0.0 without a token" in err and "--token-file" in err and "secrets.token_urlsafe" in err
