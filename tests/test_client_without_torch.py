"""The client in a real venv that has numpy and nothing else (no torch, SAM2, FastAPI, readers), against a real server."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]

CHILD = textwrap.dedent("""
    import json, sys
    import numpy as np
    heavy = ("torch", "sam2", "hydra", "SimpleITK", "nibabel", "pydicom", "slicerio", "highdicom", "fastapi", "uvicorn", "scipy", "pydantic")
    for name in heavy:  # really absent from this environment, not just not imported
        try:
            __import__(name)
        except ImportError:
            pass
        else:
            raise SystemExit(f"{name} is importable in the bare venv")
    from sam2volume import Volume
    from sam2volume.client import RemoteSession, start_local_server
    assert not [m for m in heavy if m in sys.modules], [m for m in heavy if m in sys.modules]
    args = json.loads(sys.argv[1])
    geo = json.loads(open(args["geometry"]).read())
    vol = Volume(np.load(args["array"]), geo["spacing"], geo["origin"], geo["direction"], {"modality": "CT"})
    server = start_local_server(python=args["server_python"], device="cpu")
    try:
        with RemoteSession(server.url, vol, "axial", engine="baseline", token=server.token) as s:
            s.add_points(1, [args["point"]])
            s.propagate("both")
            np.save(args["out"], s.result().array)
    finally:
        server.stop()
    print("modules:", sorted(m for m in sys.modules if m.split(".")[0] in heavy))
""")


def test_client_in_a_venv_with_only_numpy(tmp_path, totalseg):
    from sam2volume import read_volume
    from sam2volume.baseline import BaselineSession

    venv = tmp_path / "bare"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = venv / "bin" / "python"
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True, timeout=60).stdout.strip())
    numpy_dir = Path(np.__file__).parent
    expose = tmp_path / "only_numpy"
    expose.mkdir()
    for item in (numpy_dir, numpy_dir.parent / "numpy.libs"):
        if item.exists():
            (expose / item.name).symlink_to(item)
    (site / "exposed.pth").write_text(f"{expose}\n{ROOT / 'core'}\n")

    ct = read_volume(totalseg / "example_ct_sm.nii.gz")
    np.save(tmp_path / "ct.npy", ct.array)
    (tmp_path / "geo.json").write_text(json.dumps({"spacing": ct.spacing.tolist(), "origin": ct.origin.tolist(),
                                                   "direction": ct.direction.tolist()}))
    args = {"array": str(tmp_path / "ct.npy"), "geometry": str(tmp_path / "geo.json"), "out": str(tmp_path / "remote.npy"),
            "point": [60, 50, 15], "server_python": sys.executable}
    proc = subprocess.run([str(py), "-I", "-c", CHILD, json.dumps(args)], capture_output=True, text=True, timeout=180,
                          cwd=tmp_path, env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "modules: []" in proc.stdout
    local = BaselineSession(ct)
    local.add_points(1, [[60, 50, 15]])
    local.propagate("both")
    assert np.array_equal(np.load(tmp_path / "remote.npy"), local.result().array)
