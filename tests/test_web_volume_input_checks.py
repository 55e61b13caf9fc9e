"""``sam2volume web``'s volume input without a browser: --series-uid on the command line, the upload's name and
.zip checks (``sam2volume.web.uploads``) and raw multipart POSTs to a running page (several files, a DICOM series,
a .nhdr + data pair, refusals leaving no temporary folder). The page itself: tests/test_web_volume_input.py."""

from __future__ import annotations

import http.client
import json
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from web_upload_data import multipart, nhdr_pair, two_series_folder, zip_bomb, zip_of, zip_symlink, zip_with_member

from sam2volume import read_volume
from sam2volume.web import uploads

ROOT = Path(__file__).resolve().parents[1]


def _left(folder: Path) -> list:
    """Upload folders in an app's temporary folder (its own TMPDIR: other tests' apps may upload meanwhile)."""
    return sorted(folder.glob(uploads.UPLOAD_PREFIX + "*"))


def _web(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sam2volume", "web", *args], capture_output=True, text=True, timeout=120,
                          cwd=ROOT)


@pytest.fixture(scope="module")
def two_series(totalseg, tmp_path_factory):
    return two_series_folder(totalseg / "example_ct_dicom", tmp_path_factory.mktemp("dicom") / "two")


def test_list_series_describes_each_series_as_the_several_series_error_does(two_series):
    from sam2volume.errors import InputError
    from sam2volume.io.dicom_series import list_series

    folder, first, second = two_series
    series = list_series(folder)
    assert [(s.uid, s.modality, s.files, s.description) for s in series] == [
        (first, "CT", 20, "CT Body 3.0"), (second, "CT", 10, "every other slice")]
    with pytest.raises(InputError) as err:
        read_volume(folder)
    assert all(s.line() in str(err.value) for s in series)  # the same words as core's listing


def test_series_uid_that_the_folder_lacks_is_one_sentence_exit_2(two_series, totalseg):
    folder, first, second = two_series
    proc = _web(str(folder), "--series-uid", "1.2.3.4", "--engine", "baseline")
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "Traceback" not in proc.stderr, proc.stderr[-2000:]
    assert "--series-uid 1.2.3.4 is not a series of" in lines[0] and second in lines[0] and "10 files" in lines[0]
    proc = _web(str(totalseg / "example_ct_sm.nii.gz"), "--series-uid", second)
    lines = [x for x in proc.stderr.splitlines() if x.strip()]
    assert proc.returncode == 2 and len(lines) == 1 and "is a file" in lines[0], proc.stderr[-2000:]


@pytest.mark.parametrize("name, base", [("ct.nii.gz", "ct.nii.gz"), ("../../etc/ct.nii.gz", "ct.nii.gz"),
                                        ("C:\\Users\\me\\ct.nrrd", "ct.nrrd"), ("IM0001", "IM0001")])
def test_safe_name_keeps_the_base_name_only(name, base):
    assert uploads.safe_name(name) == base


@pytest.mark.parametrize("name", ["", "..", "../", ".hidden.dcm", "dir/", "a\x00b.dcm", "new\nline.dcm", "x" * 300])
def test_safe_name_refuses_hidden_empty_and_odd_names(name):
    with pytest.raises(uploads.UploadError) as err:
        uploads.safe_name(name)
    assert err.value.status == 400 and "rename the file" in err.value.message


@pytest.mark.parametrize("member, why", [("../x.dcm", "points outside"), ("a/../../x.dcm", "points outside"),
                                         ("/etc/x.dcm", "absolute path"), ("C:/x.dcm", "absolute path"),
                                         ("a\\..\\x.dcm", "absolute path"), ("a//x.dcm", "empty")])
def test_zip_members_outside_the_folder_are_refused_before_any_is_written(tmp_path, member, why):
    path = zip_with_member(tmp_path / "bad.zip", member)
    with pytest.raises(uploads.UploadError) as err:
        uploads.extract_zip(path, tmp_path / "out", 1 << 20)
    assert err.value.status == 400 and why in err.value.message and "bad.zip" in err.value.message
    assert not (tmp_path / "out").exists() and not (tmp_path / "x.dcm").exists()


def test_zip_symlink_member_is_refused(tmp_path):
    with pytest.raises(uploads.UploadError) as err:
        uploads.extract_zip(zip_symlink(tmp_path / "link.zip"), tmp_path / "out", 1 << 20)
    assert "symbolic link" in err.value.message and not (tmp_path / "out").exists()


def test_zip_bombs_and_too_many_members_are_refused_on_the_declared_sizes(tmp_path):
    bomb = zip_bomb(tmp_path / "bomb.zip", 64 << 20)  # 64 MiB of zeros in a ~64 kB file
    assert bomb.stat().st_size < 1 << 20
    with pytest.raises(uploads.UploadError) as err:  # over the cap
        uploads.extract_zip(bomb, tmp_path / "out", 32 << 20)
    assert err.value.status == 413 and "larger than the 32 MB limit" in err.value.message and "--max-upload-mb" in err.value.message
    with pytest.raises(uploads.UploadError) as err:  # under the cap, but expanding ~1000 times
        uploads.extract_zip(bomb, tmp_path / "out", 128 << 20)
    assert err.value.status == 413 and "zip bomb" in err.value.message
    assert not (tmp_path / "out").exists()
    many = tmp_path / "many.zip"
    with zipfile.ZipFile(many, "w") as zf:
        for n in range(uploads.MAX_FILES + 1):
            zf.writestr(f"f{n}.dcm", b"")
    with pytest.raises(uploads.UploadError) as err:
        uploads.extract_zip(many, tmp_path / "out", 1 << 30)
    assert err.value.status == 413 and f"more than {uploads.MAX_FILES}" in err.value.message


def test_zip_of_folders_is_unpacked_with_its_folders_and_without_mac_metadata(totalseg, tmp_path):
    files = sorted((totalseg / "example_ct_dicom").iterdir())
    path = zip_of(files, tmp_path / "series.zip", prefix="DICOM/SE1/")
    with zipfile.ZipFile(path, "a") as zf:
        zf.writestr("__MACOSX/DICOM/._IM0", b"apple double")
        zf.writestr("DICOM/.DS_Store", b"finder")
    size = uploads.extract_zip(path, tmp_path / "out", 64 << 20)
    got = sorted(p.relative_to(tmp_path / "out") for p in (tmp_path / "out").rglob("*") if p.is_file())
    assert got == [Path("DICOM/SE1") / f.name for f in files] and size == sum(f.stat().st_size for f in files)
    assert all(p.stat().st_mode & 0o077 == 0 for p in (tmp_path / "out").rglob("*"))  # private
    got = uploads.read_upload(tmp_path / "out", "series.zip")
    assert [s.files for s in got.series] == [20] and got.volume.shape == (512, 512, 20)
    assert len(got.read[got.series[0].uid][1]) == 20 and "dicom_files" not in got.volume.meta


# ---------------------------------------------------------------- raw POSTs to a running page
@pytest.fixture(scope="module")
def small_cap_app(totalseg, tmp_path_factory):
    """The page on the MR with --max-upload-mb 2 (the shared CT DICOM series is 3.1 MB)."""
    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    from web_helpers import web_app

    tmpdir = tmp_path_factory.mktemp("apptmp")
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path_factory.mktemp("web") / "web.log", "--max-upload-mb", "2",
                 tmpdir=tmpdir) as app:
        app.tmpdir = tmpdir
        yield app


def _post(app, files: list[tuple[str, bytes]], **headers: str):
    body, content_type = multipart(files)
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=120)
    conn.request("POST", "/sam2volume-upload", body=body, headers={
        "Content-Type": content_type, "Cookie": f"sam2volume-web-token-{app.port}={app.token}", **headers})
    response = conn.getresponse()
    status, data = response.status, response.read()
    conn.close()
    return status, json.loads(data)


def test_uploads_of_pairs_series_and_zips_and_their_refusals(small_cap_app, totalseg, tmp_path):
    """A .nhdr + data pair and the second series' 10 files are read (shape and series in the reply); refused with
    a JSON error naming the value, leaving no temporary folder: over the total cap, more than MAX_FILES files,
    a duplicate or hidden name, a .zip among other files, a zip member ../x, a zip bomb over the cap, a header
    whose data file is not uploaded or lies outside its folder, a bare (not multipart) body. A .mhd + .zraw too."""
    app = small_cap_app
    before = _left(app.tmpdir)
    header = nhdr_pair(totalseg / "example_ct_sm.nii.gz", tmp_path / "pair")
    status, reply = _post(app, [(header.name, header.read_bytes()), ("ct.raw.gz", (header.parent / "ct.raw.gz").read_bytes())])
    assert status == 200 and reply["shape"] == list(read_volume(header).shape) and reply["series"] == [], reply
    import SimpleITK as sitk

    mhd = tmp_path / "mhd" / "ct.mhd"
    mhd.parent.mkdir()
    sitk.WriteImage(sitk.ReadImage(str(totalseg / "example_ct_sm.nii.gz")), str(mhd), useCompression=True)  # + ct.zraw
    status, reply = _post(app, [(f.name, f.read_bytes()) for f in sorted(mhd.parent.iterdir())])
    assert status == 200 and reply["shape"] == [122, 101, 30] and (mhd.parent / "ct.zraw").exists(), reply
    outside = header.read_text().replace("data file: ct.raw.gz", "data file: ../ct.raw.gz")
    folder, first, second = two_series_folder(totalseg / "example_ct_dicom", tmp_path / "two")
    seconds = sorted(folder.glob("second_*.dcm"))
    status, reply = _post(app, [(f.name, f.read_bytes()) for f in seconds])
    assert status == 200 and reply["series"] == [second] and reply["shape"] == [512, 512, 10], reply
    assert _left(app.tmpdir) == before

    all_files = [(f.name, f.read_bytes()) for f in sorted((totalseg / "example_ct_dicom").iterdir())]
    refusals = [
        (all_files, 413, ["larger than the 2 MB limit", "--max-upload-mb"]),
        ([(f"f{n}.dcm", b"") for n in range(uploads.MAX_FILES + 1)], 413, [f"more than {uploads.MAX_FILES} files"]),
        ([("a.dcm", b"1"), ("a.dcm", b"2")], 400, ["two files are named 'a.dcm'"]),
        ([(".hidden.nii.gz", b"1")], 400, ["'.hidden.nii.gz' cannot be used"]),
        ([("a.zip", b"1"), ("b.dcm", b"2")], 400, [".zip must be uploaded alone"]),
        ([("bad.zip", zip_with_member(tmp_path / "bad.zip", "../x.dcm").read_bytes())], 400, ["bad.zip", "'../x.dcm'", "outside"]),
        ([("bomb.zip", zip_bomb(tmp_path / "bomb.zip", 16 << 20).read_bytes())], 413, ["bomb.zip unpacked", "2 MB limit"]),
        ([("ct.nhdr", header.read_bytes())], 400, ["ct.nhdr", "ct.raw.gz"]),  # its data file is not in the upload
        ([("ct.nhdr", outside.encode()), ("ct.raw.gz", b"x")], 400, ["ct.nhdr", "../ct.raw.gz"]),  # core's header check
    ]
    for files, want_status, words in refusals:
        status, reply = _post(app, files)
        assert status == want_status and all(w in reply["error"]["message"] for w in words), (files[0][0], reply)
        assert str(app.tmpdir) not in reply["error"]["message"]  # no server-side path named
        assert _left(app.tmpdir) == before, files[0][0]
    conn = http.client.HTTPConnection("127.0.0.1", app.port, timeout=60)
    conn.request("POST", "/sam2volume-upload", body=b"x", headers={
        "Content-Type": "application/octet-stream", "Cookie": f"sam2volume-web-token-{app.port}={app.token}"})
    response = conn.getresponse()
    assert response.status == 415 and "multipart/form-data" in json.loads(response.read())["error"]["message"]
    conn.close()
    assert _left(app.tmpdir) == before
    # an accepted upload still works after the refusals
    status, reply = _post(app, [(f.name, f.read_bytes()) for f in seconds])
    assert status == 200 and np.array_equal(reply["shape"], [512, 512, 10])


def test_an_unreadable_series_of_an_upload_is_listed_with_its_reason_and_the_readable_one_shown(totalseg, tmp_path):
    """A scout (one 2D image, its own series, listed first) beside the shared series: the upload shows the CT
    series, and the scout keeps read_volume's reason (said in the page when it is chosen); no path in it."""
    import pydicom
    from pydicom.uid import generate_uid

    folder = tmp_path / "study"
    folder.mkdir()
    files = sorted((totalseg / "example_ct_dicom").iterdir())
    for f in files:
        (folder / f.name).write_bytes(f.read_bytes())
    scout = pydicom.dcmread(files[0])
    scout.SeriesInstanceUID, scout.SeriesDescription = generate_uid(), "scout"
    scout.save_as(folder / "A_scout.dcm", enforce_file_format=True)
    got = uploads.read_upload(folder, "study.zip")
    assert [s.description for s in got.series] == ["scout", "CT Body 3.0"]
    assert got.volume.shape == (512, 512, 20) and got.read[got.series[1].uid][0] is got.volume
    reason = got.read[got.series[0].uid]
    assert isinstance(reason, str) and "single 2D DICOM image" in reason and str(folder) not in reason, reason


def test_an_upload_in_progress_is_removed_when_the_app_is_stopped(totalseg, tmp_path):
    """The app stopped (SIGTERM, as a service manager stops it) while an upload is half sent: its temporary
    folder does not outlive the app."""
    import socket

    pytest.importorskip("trame_slicer", reason="the web extra is not installed")
    from web_helpers import wait, web_app

    tmpdir = tmp_path / "apptmp"
    tmpdir.mkdir()
    before = _left(tmpdir)
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path / "web.log", tmpdir=tmpdir) as app:
        body, content_type = multipart([("ct.nii.gz", bytes(4 << 20))])
        sock = socket.create_connection(("127.0.0.1", app.port), timeout=30)
        sock.sendall((f"POST /sam2volume-upload HTTP/1.1\r\nHost: 127.0.0.1:{app.port}\r\nContent-Type: {content_type}\r\n"
                      f"Content-Length: {len(body)}\r\nCookie: sam2volume-web-token-{app.port}={app.token}\r\n\r\n").encode()
                     + body[: 2 << 20])  # half of it, then nothing
        # the upload's temporary folder, once the first bytes are in its file (mkdtemp comes a moment before)
        wait(lambda: [p for p in _left(tmpdir) if p not in before and (p / "received" / "ct.nii.gz").exists()], 60,
             "the upload's temporary file")
        app.process.terminate()
        app.process.wait(60)
        sock.close()
    assert _left(tmpdir) == before
