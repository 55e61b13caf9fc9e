#!/usr/bin/env bash
# Create (or update) the project's virtual environment in .venv. Idempotent.
# - Never replaces a torch the machine already offers: if the base python imports torch, the venv
#   sees it (--system-site-packages); otherwise torch==${TORCH_VERSION:-2.13.0} is installed
#   (a local CPU wheel where pip's find-links offers one, the normal PyPI build elsewhere).
# - SAM2 comes from rf-sam-2, installed with --no-deps (it declares torchvision, which the video
#   predictor never imports and which has no CPU build for this torch).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
VENV=.venv
TORCH_VERSION=${TORCH_VERSION:-2.13.0}

if [ ! -x "$VENV/bin/python" ]; then
  if "$PY" -c "import torch" >/dev/null 2>&1; then
    echo "setup: using the machine's torch $("$PY" -c 'import torch; print(torch.__version__)')"
    "$PY" -m venv --system-site-packages "$VENV"
  else
    "$PY" -m venv "$VENV"
  fi
fi
VPY="$VENV/bin/python"
pipi() {
  local log rc=0
  log=$("$VPY" -m pip install -q --disable-pip-version-check "$@" 2>&1) || rc=$?
  printf '%s\n' "$log" | grep -v -e "is ignored: it is neither a file nor a directory" -e "^$" -e "dependency resolver does not currently" -e "rf-sam-2 .* requires torchvision" >&2 || true
  return $rc
}

if ! "$VPY" -c "import torch" >/dev/null 2>&1; then
  echo "setup: installing torch==$TORCH_VERSION"
  pipi "torch==$TORCH_VERSION"
fi
"$VPY" -c "import torch" || { echo "setup: torch failed to install" >&2; exit 1; }

if ! "$VPY" -c "import sam2.sam2_video_predictor" >/dev/null 2>&1; then
  echo "setup: installing SAM2 (rf-sam-2, without torchvision)"
  pipi --no-deps "rf-sam-2==1.0.3"
fi
# our package with its declared dependencies; torch is already satisfied so pip adds nothing to it
pipi -e ".[engine,metrics,plots,server,slicer,distributed,test,web]"
# the web front-end's trame-slicer needs slicer-layer-dm, whose 2.0.0 declares slicer-core 5.11 only; it loads and
# is tested against the slicer-core above (tests/test_web_frontend.py), so it is installed without its declared pin
if ! "$VPY" -m pip show -q slicer-layer-dm >/dev/null 2>&1; then
  pipi --no-deps "slicer-layer-dm==2.0.0"
fi
"$VPY" -c "import torch, sam2.sam2_video_predictor, sam2volume, monai, fastapi, uvicorn, slicer_core, ray" || { echo "setup: import check failed" >&2; exit 1; }
if "$VPY" -c "import torchvision" >/dev/null 2>&1; then :; else
  "$VPY" -m pip show -q torchvision >/dev/null 2>&1 && { echo "setup: an unusable torchvision is installed; removing it"; "$VPY" -m pip uninstall -y -q torchvision; }
fi
# optional: dicom3tools' dciodvfy validates our DICOM-SEG in the tests (skipped where it cannot be installed)
if ! command -v dciodvfy >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q dicom3tools >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q dicom3tools >/dev/null 2>&1; }) \
    || echo "setup: dicom3tools not installed (DICOM-SEG validation with dciodvfy will be skipped)"
fi
# optional: the system Chromium that Playwright drives in the web front-end's tests (skipped without it);
# "playwright install" would download a browser instead
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q chromium >/dev/null 2>&1; }) \
    || echo "setup: chromium not installed (the web front-end's browser tests will be skipped)"
elif ! command -v chromium >/dev/null 2>&1; then
  echo "setup: chromium not installed (needs root and apt-get; the web front-end's browser tests will be skipped)"
fi
echo "setup: ready ($("$VPY" -c 'import torch, sam2volume; print("torch", torch.__version__, "| sam2volume", sam2volume.__version__)'))"
