"""The extension's Extensions Index submission: the catalog entry files for the index branches
(``extension_index/<branch>/SegmentWithSAM2.json``), the top-level ``CMakeLists.txt`` metadata and the
screenshot.

Every check that Slicer's index validator (Slicer/ExtensionsIndex ``scripts/check_description_files.py``)
makes without a network is restated here, named after the validator's function it mirrors; the catalog
entry rules are those of Slicer's schema ``slicer-extension-catalog-entry-schema-v1.0.1.json`` (Slicer/Slicer
``Schemas/``, also in the index's ``schemas/``), which no installed package ships. The checks that need a
network (the schema download, the image URLs answering with an image, the repository clone and its GitHub
topic) are listed in README ("Submitting to the Extensions Index").

With ``SLICER_EXTENSIONS_INDEX`` set to a checkout of Slicer/ExtensionsIndex, ``test_slicers_own_validator_offline``
runs that checkout's own validator functions on these files (its network-bound image check replaced by a
labelled offline test double) and validates the entry against the checkout's schema file.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import urllib.parse
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXTENSION = "SegmentWithSAM2"
BRANCHES = ("main", "5.12", "5.10")
ENTRIES = {b: ROOT / "extension_index" / b / f"{EXTENSION}.json" for b in BRANCHES}
SCHEMA_URL = "https://raw.githubusercontent.com/Slicer/Slicer/main/Schemas/slicer-extension-catalog-entry-schema-v1.0.1.json#"
SCREENSHOT_MAX_BYTES = 300_000
ICON_SIZE = (128, 128)  # Slicer's SlicerExtensionDescriptionSpec.cmake: "Url to an icon (png, size 128x128 pixels)"

# slicer-extension-catalog-entry-schema-v1.0.1.json: required keys, and every key it allows
# ("additionalProperties": false) with its type
SCHEMA_REQUIRED = ("$schema", "category", "scm_url")
SCHEMA_TYPES = {"$schema": str, "category": str, "scm_url": str, "scm_revision": str, "scm_type": str,
                "build_dependencies": list, "build_subdirectory": str, "enabled": bool, "tier": int}
SCHEMA_SCM_TYPES = ("git", "local")
SCHEMA_TIERS = range(1, 6)
# check_description_files.py
REPOSITORY_PREFIXES = ("Slicer", "Slicer-", "Slicer_", "SlicerExtension-", "SlicerExtension_")  # check_git_repository_name
SCM_SCHEMES = ("git", "https")  # check_scm_url_syntax
CATEGORY = "Segmentation"  # one of its ACCEPTED_EXTENSION_CATEGORIES (check_category)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".gif")  # validate_image_url: what an image URL may end with
REPOSITORY_SIZE_LIMIT = 100 * 1024 * 1024  # check_repository_size
LICENSE_NAMES = ("LICENSE", "LICENCE", "License.txt", "license.txt", "LICENSE.txt", "COPYING", "COPYING.txt")
# check_cmakelists_content's patterns (the screenshot one takes no space before ")")
PROJECT_RE = re.compile(r'project\s*\(\s*([^\s\)\n\r]+)', re.IGNORECASE | re.MULTILINE)
ICON_RE = re.compile(r'set\s*\(EXTENSION_ICONURL\s*"([^"]+)"[ ]*\)', re.IGNORECASE | re.MULTILINE)
SCREENSHOTS_RE = re.compile(r'set\s*\(EXTENSION_SCREENSHOTURLS\s*"([^"]+)"\)', re.IGNORECASE | re.MULTILINE)
# SlicerExtensionDescriptionSpec.cmake: "Firstname1 Lastname1 ([SubOrg1, ]Org1), Firstname2 Lastname2 ([SubOrg2, ]Org2)"
CONTRIBUTOR_RE = re.compile(r"[^,()]+ \([^()]+\)")

# The metadata before issue 20 (CMakeLists.txt at 1d259e9): the validator failed it
OLD_CMAKE = '''project(SegmentWithSAM2)
set(EXTENSION_HOMEPAGE "https://github.com/SegmentWithSAM2/SegmentWithSAM2#3d-slicer")
set(EXTENSION_CATEGORY "Segmentation")
set(EXTENSION_CONTRIBUTORS "SegmentWithSAM2 team")
set(EXTENSION_ICONURL "https://raw.githubusercontent.com/SegmentWithSAM2/SegmentWithSAM2/main/SegmentWithSAM2/Resources/Icons/SegmentWithSAM2.png")
set(EXTENSION_SCREENSHOTURLS "")
set(EXTENSION_DEPENDS "PyTorch")
'''
OLD_SCM_URL = "https://github.com/SegmentWithSAM2/SegmentWithSAM2"


# ------------------------------------------------------------------------------------------ checks
def entry_problems(text: str, extension_name: str = EXTENSION) -> list[str]:
    """What the validator (and the schema) would fail in a catalog entry file's text."""
    problems = []
    if "\r" in text:
        problems.append("check_json_file_format: CR or CRLF line endings")
    try:
        entry = json.loads(text)
    except json.JSONDecodeError as exc:
        return problems + [f"check_json_file_format: not JSON: {exc}"]
    if not isinstance(entry, dict):
        return problems + ["check_json_schema: not an object"]
    problems += [f"check_json_schema: {key} is required" for key in SCHEMA_REQUIRED if key not in entry]
    for key, value in entry.items():
        kind = SCHEMA_TYPES.get(key)
        if kind is None:
            problems.append(f"check_json_schema: {key} is not allowed (additionalProperties false)")
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            problems.append(f"check_json_schema: {key} must be {kind.__name__}")
    if not all(isinstance(d, str) for d in entry.get("build_dependencies") or []):
        problems.append("check_json_schema: build_dependencies items must be strings")
    if entry.get("scm_type", "git") not in SCHEMA_SCM_TYPES:
        problems.append(f"check_json_schema: scm_type must be one of {SCHEMA_SCM_TYPES}")
    if entry.get("tier", 1) not in SCHEMA_TIERS:
        problems.append("check_json_schema: tier must be 1..5")
    if entry.get("$schema") != SCHEMA_URL:
        problems.append(f"check_json_schema: $schema must be {SCHEMA_URL} (the schema every index branch has)")
    if extension_name.lower().startswith("slicer"):
        problems.append("check_extension_name: the extension name must not start with Slicer")
    if entry.get("category") != CATEGORY:
        problems.append(f"check_category: {entry.get('category')!r} (this extension's is {CATEGORY!r})")
    url = str(entry.get("scm_url", ""))
    repo = os.path.splitext(urllib.parse.urlsplit(url.strip().strip("/")).path.split("/")[-1])[0]
    if not repo.startswith(REPOSITORY_PREFIXES):
        problems.append(f"check_git_repository_name: repository {repo!r} does not start with Slicer")
    if "://" not in url or urllib.parse.urlsplit(url).scheme not in SCM_SCHEMES:
        problems.append(f"check_scm_url_syntax: {url!r} is not git:// or https://")
    if text != json.dumps(entry, indent=2, sort_keys=True) + "\n":
        problems.append("index format: 2-space indent, sorted keys, LF, one final newline (as the index's files)")
    return problems


def cmake_metadata(text: str) -> dict[str, str]:
    """The EXTENSION_* values a top-level CMakeLists.txt sets: {"HOMEPAGE": "...", ...}."""
    return dict(re.findall(r'^\s*set\s*\(\s*EXTENSION_(\w+)\s+"([^"]*)"', text, re.MULTILINE))


def cmake_problems(text: str, extension_name: str = EXTENSION) -> list[str]:
    """What check_cmakelists_content fails without a network, and the contributors format."""
    problems = []
    project = PROJECT_RE.findall(text)
    if not project or project[0].strip("\"'") != extension_name:
        problems.append(f"check_cmakelists_content: project() is {project[:1]}, not {extension_name}")
    urls = {"EXTENSION_ICONURL": ICON_RE.findall(text)[:1]}
    shots = SCREENSHOTS_RE.findall(text)
    urls["EXTENSION_SCREENSHOTURLS"] = shots[0].split() if shots else []
    for name, found in urls.items():
        if not found:
            problems.append(f"check_cmakelists_content: no {name} found")
        for url in found:
            if not url.startswith("http") or not url.lower().endswith(IMAGE_SUFFIXES):
                problems.append(f"check_cmakelists_content: {name} {url!r} is not an http URL of an image file")
    contributors = cmake_metadata(text).get("CONTRIBUTORS", "")
    if not contributors or not all(CONTRIBUTOR_RE.fullmatch(c.strip()) for c in re.split(r",\s*(?![^()]*\))", contributors)):
        problems.append(f"EXTENSION_CONTRIBUTORS {contributors!r} is not 'Name (Organisation), ...'")
    return problems


def github_repository(url: str) -> tuple[str, str]:
    """(owner, repository) of a github.com or raw.githubusercontent.com URL."""
    parts = urllib.parse.urlsplit(url)
    assert parts.netloc in ("github.com", "raw.githubusercontent.com"), url
    owner, repo = parts.path.strip("/").split("/")[:2]
    return owner, os.path.splitext(repo)[0]


def agreement_problems(metadata: dict[str, str], entry: dict) -> list[str]:
    """CMake metadata and a catalog entry that disagree, and image URLs that are not files of this
    repository at the entry's revision."""
    problems = []
    depends = metadata.get("DEPENDS", "NA")
    if entry.get("build_dependencies", []) != ([] if depends == "NA" else depends.split()):
        problems.append(f"build_dependencies {entry.get('build_dependencies')} != EXTENSION_DEPENDS {depends!r}")
    if entry.get("category") != metadata.get("CATEGORY"):
        problems.append(f"category {entry.get('category')!r} != EXTENSION_CATEGORY {metadata.get('CATEGORY')!r}")
    repo = github_repository(entry["scm_url"])
    for name in ("HOMEPAGE", "ICONURL", "SCREENSHOTURLS"):
        for url in metadata.get(name, "").split():
            if github_repository(url) != repo:
                problems.append(f"EXTENSION_{name} {url} is not on {'/'.join(repo)}")
            elif name != "HOMEPAGE":
                path = urllib.parse.urlsplit(url).path.strip("/").split("/")
                if path[2] != entry.get("scm_revision"):
                    problems.append(f"EXTENSION_{name} {url} is not at revision {entry.get('scm_revision')}")
                if not (ROOT.joinpath(*path[3:])).is_file():
                    problems.append(f"EXTENSION_{name} {url}: {'/'.join(path[3:])} is not in this repository")
    return problems


def image_urls() -> list[str]:
    m = cmake_metadata((ROOT / "CMakeLists.txt").read_text())
    return [m["ICONURL"], *m["SCREENSHOTURLS"].split()]


def local_file(url: str) -> Path:
    """The file of this repository a raw.githubusercontent.com/<owner>/<repo>/<revision>/<path> URL names."""
    return ROOT.joinpath(*urllib.parse.urlsplit(url).path.strip("/").split("/")[3:])


# ------------------------------------------------------------------------------------------ tests
@pytest.mark.parametrize("branch", BRANCHES)
def test_catalog_entry_of_each_index_branch_passes_the_validators_checks(branch):
    path = ENTRIES[branch]
    assert path.is_file(), f"no catalog entry for the index's {branch} branch at {path}"
    assert path.stem == EXTENSION  # the validator takes the extension name from the file name
    assert entry_problems(path.read_bytes().decode("utf-8"), path.stem) == []


def test_cmake_metadata_passes_the_validators_checks():
    text = (ROOT / "CMakeLists.txt").read_text()
    assert cmake_problems(text) == []
    assert 'EXTENSION_DEPENDS "PyTorch"' in text  # torch comes from the PyTorch extension


@pytest.mark.parametrize("branch", BRANCHES)
def test_cmake_metadata_and_catalog_entry_agree_on_one_repository(branch):
    metadata = cmake_metadata((ROOT / "CMakeLists.txt").read_text())
    entry = json.loads(ENTRIES[branch].read_text())
    assert agreement_problems(metadata, entry) == []
    owner, repo = github_repository(entry["scm_url"])
    assert repo == "Slicer" + EXTENSION  # Slicer's convention: the repository is "Slicer" + the extension name
    assert repo != "SlicerSegmentWithSAM"  # the rival extension SegmentWithSAM's repository (mazurowski-lab)


def test_the_modules_contributors_are_the_extensions():
    """Slicer shows the module's ``parent.contributors`` in its Help & Acknowledgement; the index the
    extension's EXTENSION_CONTRIBUTORS: the same people, written the same way."""
    import ast

    tree = ast.parse((ROOT / "SegmentWithSAM2" / "SegmentWithSAM2.py").read_text(encoding="utf-8"))
    module = [ast.literal_eval(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
              and any(ast.unparse(t) == "self.parent.contributors" for t in n.targets)]
    extension = cmake_metadata((ROOT / "CMakeLists.txt").read_text(encoding="utf-8"))["CONTRIBUTORS"]
    assert module == [[c.strip() for c in re.split(r",\s*(?![^()]*\))", extension)]], (module, extension)


def test_the_checks_fail_the_metadata_the_validator_failed_before():
    """The checks are the validator's: the old metadata fails them where the validator failed it."""
    old = entry_problems(json.dumps({"$schema": SCHEMA_URL, "build_dependencies": ["PyTorch"], "category": CATEGORY,
                                     "scm_revision": "main", "scm_url": OLD_SCM_URL}, indent=2, sort_keys=True) + "\n")
    assert [p.split(":")[0] for p in old] == ["check_git_repository_name"]
    problems = cmake_problems(OLD_CMAKE)
    assert any("no EXTENSION_SCREENSHOTURLS" in p for p in problems)
    assert any(p.startswith("EXTENSION_CONTRIBUTORS") for p in problems)
    spaced = OLD_CMAKE.replace('SCREENSHOTURLS ""', 'SCREENSHOTURLS "https://example.org/a.png" ')
    assert any("no EXTENSION_SCREENSHOTURLS" in p for p in cmake_problems(spaced))  # its pattern takes no space
    good = ENTRIES["main"].read_text()
    entry = json.loads(good)
    for bad, rule in [(good.replace("\n", "\r\n"), "check_json_file_format"),
                      ({**entry, "homepage": "x"}, "check_json_schema"),
                      ({**entry, "tier": 0}, "check_json_schema"),
                      ({**entry, "tier": True}, "check_json_schema"),
                      ({**entry, "scm_url": "ssh://github.com/a/SlicerX"}, "check_scm_url_syntax"),
                      ({k: v for k, v in entry.items() if k != "category"}, "check_json_schema")]:
        text = bad if isinstance(bad, str) else json.dumps(bad, indent=2, sort_keys=True) + "\n"
        assert any(p.startswith(rule) for p in entry_problems(text)), (bad, rule)
    assert any(p.startswith("check_extension_name") for p in entry_problems(good, "SlicerSegmentWithSAM2"))
    assert cmake_problems(OLD_CMAKE.replace("project(SegmentWithSAM2)", "project(Other)"))[0].startswith("check_cmakelists")
    wrong_repo = cmake_metadata(OLD_CMAKE)
    assert len(agreement_problems(wrong_repo, entry)) == 2  # homepage and icon on another repository; no screenshot


def test_icon_and_screenshot_are_pngs_in_this_repository():
    from PIL import Image

    icon, *screenshots = image_urls()
    assert screenshots
    with Image.open(local_file(icon)) as im:
        assert im.format == "PNG" and im.size == ICON_SIZE
    for url in screenshots:
        path = local_file(url)
        assert path.stat().st_size < SCREENSHOT_MAX_BYTES, f"{path} is over {SCREENSHOT_MAX_BYTES} bytes"
        with Image.open(path) as im:
            assert im.format == "PNG" and im.width >= 600 and im.height >= 300, (path, im.format, im.size)
            im.verify()


def _tracked_files() -> list[Path]:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                         capture_output=True, check=True).stdout
    return [ROOT / p for p in out.decode().split("\0") if p and (ROOT / p).is_file()]


def test_repository_is_under_the_index_size_limit_and_has_a_license():
    """check_repository_size (100 MB of checked-out files) and check_license_file."""
    assert sum(p.stat().st_size for p in _tracked_files()) < REPOSITORY_SIZE_LIMIT
    assert any((ROOT / name).is_file() for name in LICENSE_NAMES)


def _offscreen_rendering_works() -> bool:
    probe = "import vtk; w = vtk.vtkRenderWindow(); w.SetOffScreenRendering(1); w.SetSize(8, 8); w.Render()"
    try:
        return subprocess.run([sys.executable, "-c", probe], capture_output=True, timeout=120).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def test_screenshot_script_draws_the_ct_and_the_modules_segment(totalseg, tmp_path):
    """scripts/make_screenshot.py on slicer-core: Slicer's slice logic draws the CT and the segmentations
    displayable manager the segment the module's logic made (baseline engine, local server)."""
    if not _offscreen_rendering_works():
        pytest.skip("VTK cannot render off screen here (no EGL, OSMesa or X display)")
    import numpy as np
    from PIL import Image

    out = tmp_path / "shot.png"
    run = subprocess.run([sys.executable, str(ROOT / "scripts/make_screenshot.py"), "-o", str(out),
                          "--data", str(totalseg.parent)], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-3000:]
    assert [p.name for p in tmp_path.iterdir()] == ["shot.png"]  # no temporary file left
    rgb = np.asarray(Image.open(out).convert("RGB")).astype(int)
    assert rgb.shape == (400, 804, 3)
    axial = rgb[:, :400]
    r, g, b = axial[..., 0], axial[..., 1], axial[..., 2]
    grey = (abs(r - g) < 6) & (abs(g - b) < 6) & (r > 60)  # CT tissue in the abdomen window
    segment = (g > r + 40) & (g > b + 40)  # the green segment fill over the CT
    assert grey.mean() > 0.2 and 0.05 < segment.mean() < 0.5, (grey.mean(), segment.mean())
    # the liver is on the image's left (patient right, as Slicer's axial view shows it)
    cols = np.nonzero(segment)[1]
    assert np.median(cols) < 200
    for view in (rgb[:198, 404:], rgb[-198:, 404:]):  # sagittal and coronal: CT and segment too
        vr, vg, vb = view[..., 0], view[..., 1], view[..., 2]
        assert ((vg > vr + 40) & (vg > vb + 40)).any() and ((abs(vr - vg) < 6) & (vr > 60)).any()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/make_screenshot.py"), "-o", str(tmp_path / "x.jpg")],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "must end in .png" in bad.stderr and not (tmp_path / "x.jpg").exists()
    bad = subprocess.run([sys.executable, str(ROOT / "scripts/make_screenshot.py"), "-o", str(tmp_path / "y.png"),
                          "--data", str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "holds no totalseg/example_ct_sm.nii.gz" in bad.stderr
    assert not (tmp_path / "y.png").exists() and "Traceback" not in bad.stderr


# ---------------------------------------------------- Slicer's own validator, when a checkout is given
INDEX = os.environ.get("SLICER_EXTENSIONS_INDEX")


@pytest.mark.skipif(not INDEX, reason="set SLICER_EXTENSIONS_INDEX to a checkout of Slicer/ExtensionsIndex")
def test_slicers_own_validator_offline(tmp_path, monkeypatch):
    index = Path(INDEX)
    script = index / "scripts" / "check_description_files.py"
    assert script.is_file(), f"SLICER_EXTENSIONS_INDEX={INDEX} holds no scripts/check_description_files.py"
    branch = os.environ.get("SLICER_EXTENSIONS_INDEX_BRANCH") or subprocess.run(
        ["git", "-C", str(index), "branch", "--show-current"], capture_output=True, text=True).stdout.strip() or "main"
    spec = importlib.util.spec_from_file_location("check_description_files", script)
    validator = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(validator)
    except SyntaxError as exc:  # its f-strings need Python 3.12 (the index's CI runs 3.12)
        pytest.skip(f"{script} does not compile on Python {sys.version_info[0]}.{sys.version_info[1]}: {exc.msg}")
    path = ENTRIES[branch]
    metadata = validator.parse_json(str(path))

    def offline_image_check(url, url_type, extension_name, check_name):
        """TEST DOUBLE for validate_image_url (which downloads the URL): the same 'http' rule, then the
        file the URL names must be an image in this repository."""
        if not url.startswith("http"):
            raise validator.ExtensionCheckError(extension_name, check_name, f"{url_type} {url!r} is not http")
        if not local_file(url).is_file() or local_file(url).suffix.lower() not in IMAGE_SUFFIXES:
            raise validator.ExtensionCheckError(extension_name, check_name, f"{url_type} {url!r}: no such image here")

    monkeypatch.setattr(validator, "validate_image_url", offline_image_check)
    checkout = tmp_path / "checkout"  # the repository as the validator's clone would hold it
    for f in _tracked_files():
        (checkout / f.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, checkout / f.relative_to(ROOT))
    validator.check_json_file_format(EXTENSION, metadata, str(path))
    validator.check_extension_name(EXTENSION, metadata)
    validator.check_category(EXTENSION, metadata)
    validator.check_git_repository_name(EXTENSION, metadata)
    validator.check_scm_url_syntax(EXTENSION, metadata)
    validator.check_cmakelists_content(EXTENSION, metadata, cloned_repository_folder=str(checkout))
    validator.check_license_file(EXTENSION, metadata, str(checkout))
    if hasattr(validator, "check_repository_size"):  # main only
        validator.check_repository_size(EXTENSION, metadata, cloned_repository_folder=str(checkout))
    # check_json_schema downloads the schema: the checkout's copy instead, as its pre-commit hook does
    import jsonschema

    schema_file = index / "schemas" / metadata["$schema"].split("#")[0].rsplit("/", 1)[-1]
    jsonschema.validate(metadata, json.loads(schema_file.read_text()))
    # check_dependencies: every build dependency is an extension of that branch
    folder = tmp_path / "descriptions"
    folder.mkdir()
    for f in index.glob("*.json"):
        (folder / f.name).symlink_to(f)
    shutil.copy(path, folder / path.name)
    validator.check_dependencies(str(folder))
