"""The web page's volume input in headless Chromium: a DICOM folder holding two series (the series menu, the
status line, --series-uid), uploads of a DICOM series' files, a .nhdr + data pair and a .zip of two series,
the upload's progress, and refused uploads (nothing left in the temporary folder, the volume kept).

The app runs as a real process on 127.0.0.1 with a local baseline engine (tests/web_helpers.py); the second
series is made with pydicom from the shared CT series in tmp_path (tests/web_upload_data.py). Raw-request and
.zip-check tests without a browser: tests/test_web_volume_input_checks.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("trame_slicer", reason="the web extra is not installed (pip install 'segment-with-sam2[web]')")
pytest.importorskip("playwright.sync_api", reason="playwright is not installed (extra 'web')")
from web_helpers import CHROMIUM, STEP_S, click_voxel, open_page, shown_index, state, view_box, wait, web_app  # noqa: E402
from web_upload_data import nhdr_pair, two_series_folder, zip_bomb, zip_of, zip_with_member  # noqa: E402

if CHROMIUM is None:
    pytest.skip("no system chromium (apt-get install chromium; scripts/setup_env.sh does it)", allow_module_level=True)

from web_fixtures import browser  # noqa: E402,F401 - the fixture

from sam2volume import read_labelmap, read_volume  # noqa: E402

UPLOAD_S = 180  # longest wait for an upload to be read (20 DICOM files on a shared CPU)


@pytest.fixture(scope="module")
def two_series(totalseg, tmp_path_factory):
    """(folder, first UID (blank in the shared series), second UID): the shared series and every other file of it."""
    return two_series_folder(totalseg / "example_ct_dicom", tmp_path_factory.mktemp("dicom") / "two")


def _left(folder: Path) -> list:
    """Upload folders in an app's temporary folder (its own TMPDIR: other tests' apps may upload meanwhile)."""
    return sorted(folder.glob("sam2volume-web-upload-*"))


def _status(page) -> str:
    return page.inner_text("#status")


def _words(text: str) -> str:
    """Text as the page shows it (HTML folds runs of spaces into one)."""
    return " ".join(text.split())


def _liver_voxel(vol, k: int, totalseg: Path) -> tuple:
    """A voxel (i, j, k) deep in the liver on slice k of ``vol``, a series on the shared DICOM CT's rows and
    columns (the series itself or every other slice of it): the label of the shared series' slice at that place."""
    from scipy import ndimage

    ref = read_volume(totalseg / "example_ct_dicom")
    labels = np.asarray(read_labelmap(totalseg / "example_seg_dicom.nii.gz", reference=ref).array)
    lps = vol.origin + vol.direction @ (vol.spacing * np.array([0.0, 0.0, k]))
    k_ref = int(round(np.linalg.solve(ref.direction * ref.spacing, lps - ref.origin)[2]))
    depth = ndimage.distance_transform_edt(labels[:, :, k_ref] == 5)
    assert depth.max() > 10
    return (*(int(x) for x in np.unravel_index(int(np.argmax(depth)), depth.shape)), k)


def _sop_uids(files) -> set:
    """The files' SOP Instance UIDs (the shared series has them blank in the data set, set in the file meta)."""
    import pydicom

    found = [pydicom.dcmread(f, stop_before_pixels=True) for f in files]
    return {str(ds.get("SOPInstanceUID", "") or ds.file_meta.MediaStorageSOPInstanceUID) for ds in found}


def _click_propagate_download(page, vol, totalseg: Path, folder: Path) -> tuple:
    """A + point deep in the liver on the axial slice shown, Propagate, the NIfTI and DICOM-SEG downloads:
    (NIfTI Volume, the DICOM-SEG's referenced SOP Instance UIDs, its number of frames)."""
    import highdicom as hd
    import pydicom

    k = shown_index(vol, view_box(page, "axial")[0], 2)
    click_voxel(page, vol, "axial", _liver_voxel(vol, k, totalseg))
    assert len(state(page, "prompt_points")) == 1, _status(page)
    page.click("#propagate")
    wait(lambda: _status(page).startswith(("propagated", "not propagated", "propagation failed")), 300, "the propagation")
    assert _status(page).startswith("propagated"), _status(page)
    with page.expect_download() as download:
        page.click("#download-nifti")
    download.value.save_as(folder / "segmentation.nii.gz")
    with page.expect_download() as download:
        page.click("#download-dicom")
    download.value.save_as(folder / "segmentation.dcm")
    seg = hd.seg.segread(folder / "segmentation.dcm")
    sops = {uids[2] for uids in seg.get_source_image_uids()}
    return read_volume(folder / "segmentation.nii.gz"), sops, int(pydicom.dcmread(folder / "segmentation.dcm").NumberOfFrames)


def _same_grid(a, b) -> bool:
    return a.shape == b.shape and all(np.allclose(x, y, atol=1e-4) for x, y in
                                      ((a.spacing, b.spacing), (a.origin, b.origin), (a.direction, b.direction)))


def _upload(page, files) -> str:
    """The files chosen in the page's volume control; the status line once the upload is read or refused."""
    page.evaluate("window.trame.state.set('status', 'choosing files')")  # the app's status: an earlier upload's stays
    wait(lambda: _status(page) == "choosing files", STEP_S, "the status reset")
    page.set_input_files("#upload-file", [str(f) for f in files])
    wait(lambda: _status(page).startswith(("uploaded", "no volume")), UPLOAD_S, "the upload")
    return _status(page)


def test_folder_with_two_series_opens_on_the_first_and_the_menu_shows_the_second(browser, totalseg, two_series, tmp_path):
    """Without --series-uid: the series menu lists both series as core describes them, the status says the folder
    holds 2 series, which is shown and where to choose; choosing the second shows it (prompts reset), and a click
    + Propagate downloads a NIfTI on read_volume(folder, series_uid=second)'s grid and a DICOM-SEG referencing
    exactly the second series' SOP instances."""
    from sam2volume.io.dicom_series import list_series

    folder, first, second = two_series
    vol = read_volume(folder, series_uid=second)
    with web_app(folder, tmp_path / "web.log") as app:
        page = open_page(browser, app.url)
        try:
            labels = [s.line() for s in list_series(folder)]
            assert [s["label"] for s in state(page, "series")] == labels
            lines = [_words(x) for x in labels]
            assert [_words(x) for x in page.locator("#series option").all_inner_texts()] == lines
            assert state(page, "current_series") == first
            status = _status(page)
            assert status.startswith("the folder holds 2 DICOM series; shown: " + lines[0]) and \
                "choose another in the series menu" in status, status
            assert str(folder) not in page.content()  # the page names no server-side path
            shown = read_volume(folder, series_uid=first)
            k = shown_index(shown, view_box(page, "axial")[0], 2)
            click_voxel(page, shown, "axial", (256, 256, k))  # a prompt on the first series, reset by the choice
            assert len(state(page, "prompt_points")) == 1, _status(page)
            page.select_option("#series", value=second)
            wait(lambda: _status(page).startswith(("the folder holds", "series")) and second in _status(page)
                 and "shown: " + lines[1] in _status(page), UPLOAD_S, "the second series")
            assert state(page, "prompt_points") == [] and state(page, "current_series") == second
            nifti, sops, frames = _click_propagate_download(page, vol, totalseg, tmp_path)
        finally:
            page.close()
    assert _same_grid(nifti, vol), (nifti.shape, vol.shape)
    assert sops == _sop_uids(sorted(folder.glob("second_*.dcm"))) and frames == 10


def test_series_uid_opens_that_series(browser, two_series, tmp_path):
    folder, first, second = two_series
    with web_app(folder, tmp_path / "web.log", "--series-uid", second) as app:
        page = open_page(browser, app.url)
        try:
            assert state(page, "current_series") == second
            wait(lambda: "shown: " + second in _status(page), STEP_S, "the status")
            assert _status(page).startswith("the folder holds 2 DICOM series")
            view, _ = view_box(page, "axial")
            assert shown_index(read_volume(folder, series_uid=second), view, 2) in range(10)
        finally:
            page.close()


@pytest.fixture(scope="module")
def mr_app(totalseg, tmp_path_factory):
    """The page started on the MR (NIfTI): every upload replaces it."""
    tmpdir = tmp_path_factory.mktemp("apptmp")
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path_factory.mktemp("web") / "web.log", tmpdir=tmpdir) as app:
        app.tmpdir = tmpdir
        yield app


def test_uploaded_dicom_series_files_propagate_and_download_a_dicom_seg(browser, mr_app, totalseg, tmp_path):
    """The shared series' 20 files chosen together: the progress element reaches 100 %, the series is the volume
    (no series menu: one series), a click + Propagate downloads a DICOM-SEG referencing its 20 slices; the upload's
    temporary folder is gone."""
    files = sorted((totalseg / "example_ct_dicom").iterdir())
    vol = read_volume(totalseg / "example_ct_dicom")
    before = _left(mr_app.tmpdir)
    page = open_page(browser, mr_app.url)
    try:
        assert not state(page, "from_dicom")
        page.evaluate("""() => { window.statuses = [];
            new MutationObserver(() => window.statuses.push(document.getElementById('status').innerText))
                .observe(document.getElementById('status'), {childList: true, subtree: true, characterData: true}); }""")
        status = _upload(page, files)
        assert status.startswith("uploaded 20 files ("), status
        seen = page.evaluate("window.statuses")
        assert any(s.startswith("reading the uploaded volume (20 files, 3.") for s in seen), seen  # while read_volume runs
        wait(lambda: "100 %" in page.inner_text("#upload-progress"), STEP_S, "the upload's progress")
        assert state(page, "from_dicom") and page.locator("#series").count() == 0
        nifti, sops, frames = _click_propagate_download(page, vol, totalseg, tmp_path)
    finally:
        page.close()
    assert _same_grid(nifti, vol) and sops == _sop_uids(files) and frames == 20
    assert _left(mr_app.tmpdir) == before


def test_uploaded_nhdr_and_data_file_is_the_volume(browser, mr_app, totalseg, tmp_path):
    header = nhdr_pair(totalseg / "example_ct_sm.nii.gz", tmp_path / "pair")
    want = read_volume(header)
    before = _left(mr_app.tmpdir)
    page = open_page(browser, mr_app.url)
    try:
        status = _upload(page, [header, header.parent / "ct.raw.gz"])
        assert status.startswith("uploaded 2 files"), status
        assert not state(page, "from_dicom")
        with page.expect_download() as download:
            page.click("#download-nifti")
        download.value.save_as(tmp_path / "segmentation.nii.gz")
    finally:
        page.close()
    assert _same_grid(read_volume(tmp_path / "segmentation.nii.gz"), want)
    assert _left(mr_app.tmpdir) == before


def test_uploaded_zip_of_two_series_offers_the_series_menu(browser, mr_app, totalseg, two_series, tmp_path):
    """A .zip of the two-series folder: the series menu lists both, the status says so; the second chosen (read
    at upload, kept in memory: the folder is gone) gets a DICOM-SEG referencing its own SOP instances."""
    folder, first, second = two_series
    archive = zip_of(sorted(folder.iterdir()), tmp_path / "two series.zip", prefix="study/")
    before = _left(mr_app.tmpdir)
    vol = read_volume(folder, series_uid=second)
    page = open_page(browser, mr_app.url)
    try:
        status = _upload(page, [archive])
        assert status.startswith("uploaded two series.zip (") and "the upload holds 2 DICOM series" in status and \
            "choose another in the series menu" in status, status
        assert _left(mr_app.tmpdir) == before  # read already: the folder is gone before any series is chosen
        assert len(state(page, "series")) == 2 and state(page, "current_series") == first
        page.select_option("#series", value=second)
        wait(lambda: "shown: " + second in _status(page), UPLOAD_S, "the second series")
        nifti, sops, frames = _click_propagate_download(page, vol, totalseg, tmp_path)
    finally:
        page.close()
    assert _same_grid(nifti, vol) and sops == _sop_uids(sorted(folder.glob("second_*.dcm"))) and frames == 10
    assert _left(mr_app.tmpdir) == before


def test_refused_uploads_say_why_keep_the_volume_and_leave_nothing(browser, totalseg, tmp_path):
    """--max-upload-mb 2: a zip member ../x, a zip bomb of zeros over the cap, more than 4096 files, the shared
    series (3.1 MB) over the total cap: each one sentence in the status naming the value and the fix, the MR kept,
    no temporary folder left."""
    bad = zip_with_member(tmp_path / "bad.zip", "../x.dcm")
    bomb = zip_bomb(tmp_path / "bomb.zip", 16 << 20)
    many = tmp_path / "many"
    many.mkdir()
    for n in range(4097):
        (many / f"f{n:04d}.dcm").write_bytes(b"")
    cases = [
        ([bad], ["no volume uploaded: bad.zip: the member '../x.dcm' points outside the .zip"]),
        ([bomb], ["no volume uploaded: bomb.zip unpacked (16.0 MB) is larger than the 2 MB limit", "--max-upload-mb"]),
        (sorted(many.iterdir()), ["no volume uploaded: the upload holds more than 4096 files"]),
        (sorted((totalseg / "example_ct_dicom").iterdir()), ["is larger than the 2 MB limit", "--max-upload-mb"]),
    ]
    tmpdir = tmp_path / "apptmp"
    tmpdir.mkdir()
    before = _left(tmpdir)
    with web_app(totalseg / "example_mr_sm.nii.gz", tmp_path / "web.log", "--max-upload-mb", "2", tmpdir=tmpdir) as app:
        page = open_page(browser, app.url)
        try:
            for files, words in cases:
                status = _upload(page, files)
                assert all(w in status for w in words), (files[0].name, status)
                assert state(page, "volume_name") == "example_mr_sm.nii.gz"
                assert _left(tmpdir) == before, files[0].name
        finally:
            page.close()
    assert _left(tmpdir) == before
