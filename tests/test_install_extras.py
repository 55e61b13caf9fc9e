"""`pip install .` installs only the core: a command that needs an optional package says, in one line,
what to install (issue 12), instead of a traceback. The missing package is made unimportable for one
subprocess with a meta-path blocker (a test double of an environment without it)."""

import subprocess
import sys

import pytest

BLOCK = """
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split('.')[0] == {name!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Block())
from sam2volume.cli import main
raise SystemExit(main({argv!r}))
"""


@pytest.mark.parametrize("missing, argv, expected", [
    ("torch", ["segment", "{ct}", "--prompts", "{prompts}", "-o", "{out}", "--random-weights", "--image-size", "64"], "pip install torch"),
    ("sam2", ["segment", "{ct}", "--prompts", "{prompts}", "-o", "{out}", "--random-weights", "--image-size", "64"], "rf-sam-2"),
    ("monai", ["evaluate", "{ds}", "--protocol", "box-middle", "-o", "{run}", "--engine", "baseline", "--no-overlays"], "[metrics]"),
    ("trame_slicer", ["web", "{ct}", "--engine", "baseline"], "[web]"),
])
def test_missing_optional_package_gives_one_line(tmp_path, totalseg, missing, argv, expected):
    from eval_helpers import plain_ct_dataset

    root = ROOT = __import__("pathlib").Path(__file__).resolve().parents[1]
    ds = plain_ct_dataset(totalseg, tmp_path / "ds", ["ct_a"], ["liver"]) if missing == "monai" else tmp_path
    fill = {"ct": str(totalseg / "example_ct_sm.nii.gz"), "prompts": str(ROOT / "examples" / "prompts_ct_abdomen.json"),
            "out": str(tmp_path / "o.nii.gz"), "ds": str(ds), "run": str(tmp_path / "run")}
    args = [a.format(**fill) for a in argv]
    proc = subprocess.run([sys.executable, "-c", BLOCK.format(name=missing, argv=args)], capture_output=True, text=True,
                          timeout=300, cwd=root)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    lines = [line for line in proc.stderr.splitlines() if "error:" in line]
    assert len(lines) == 1 and repr(missing) in lines[0] and expected in lines[0], proc.stderr[-2000:]
