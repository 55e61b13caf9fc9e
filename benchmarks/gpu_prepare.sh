#!/usr/bin/env bash
# Run HERE (not on the GPU machine): packs what benchmarks/gpu_table.sh needs there into .gpu/
# (git-ignored through .git/info/exclude), to be carried to the device machine, whose image has
# Python 3.12 with a CUDA torch but no SAM2, hydra or SimpleITK, and no network.
#   .gpu/whl/   pure-Python wheels: rf-sam-2, hydra-core, omegaconf, antlr4 runtime, iopath
#   .gpu/ct.npz the benchmark's real CT (array and geometry), so neither SimpleITK nor ../shared is needed
# Then: run(command="bash benchmarks/gpu_table.sh", carry=[".gpu"], timeout_s=600).
set -euo pipefail
cd "$(dirname "$0")/.."
grep -qx '/.gpu/' .git/info/exclude 2>/dev/null || echo '/.gpu/' >> .git/info/exclude
mkdir -p .gpu/whl
PY=${PY:-.venv/bin/python}
# all pure Python (py3-none-any): built or fetched here, they install on the GPU machine's 3.12
"$PY" -m pip wheel -q --no-deps -w .gpu/whl rf-sam-2==1.0.3 hydra-core==1.3.2 omegaconf==2.3.0 \
  antlr4-python3-runtime==4.9.3 iopath==0.1.10
PYTHONPATH=core "$PY" - <<'PY'
import os
from pathlib import Path

import numpy as np

from sam2volume import read_volume

data = Path(os.environ.get("SAM2VOLUME_SHARED_DATA", "../shared/data"))
ct = read_volume(data / "totalseg" / "example_ct_sm.nii.gz")
np.savez_compressed(".gpu/ct.npz", array=ct.array, spacing=ct.spacing, origin=ct.origin, direction=ct.direction)
PY
ls -la .gpu .gpu/whl
du -sh .gpu
