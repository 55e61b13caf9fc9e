"""Python packages the module needs inside Slicer, checked at first use and installed only with consent.

torch comes from the PyTorch extension's installer (it picks the CUDA build that matches the GPU
driver); SAM2 is Roboflow's wheel of Meta's SAM 2.1 code, installed without its declared
torchvision (the video predictor never imports it). Nothing is installed at Slicer start-up.
"""

from __future__ import annotations

import importlib.util

# (import name, pip requirement, pip options)
PACKAGES: list[tuple[str, str, str]] = [
    ("sam2", "rf-sam-2==1.0.3", "--no-deps"),
    ("hydra", "hydra-core>=1.3", ""),
    ("iopath", "iopath>=0.1.10", ""),
    ("tqdm", "tqdm", ""),
    ("scipy", "scipy", ""),
    ("PIL", "pillow", ""),
]


def missing(include_torch: bool = True) -> list[str]:
    """Import names that cannot be found (``torch`` first when it is missing)."""
    names = (["torch"] if include_torch else []) + [name for name, _, _ in PACKAGES]
    return [n for n in names if importlib.util.find_spec(n) is None]


def describe(names: list[str]) -> str:
    reqs = {name: req for name, req, _ in PACKAGES}
    return ", ".join("PyTorch (through the PyTorch extension)" if n == "torch" else reqs[n] for n in names)


def install(names: list[str], confirm: bool = True) -> bool:
    """Install what is missing, inside Slicer, after the user agrees; returns False if declined."""
    import slicer  # only inside Slicer

    if not names:
        return True
    if confirm and not slicer.util.confirmOkCancelDisplay(
        f"SegmentWithSAM2 needs these Python packages: {describe(names)}.\n"
        "They will be downloaded and installed into Slicer's Python now (a few minutes; PyTorch with CUDA is large).",
        "Install dependencies",
    ):
        return False
    if "torch" in names:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager and restart Slicer") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False) is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console for pip's messages")
    for name, req, opts in PACKAGES:
        if name in names:
            slicer.util.pip_install(f"{req} {opts}".strip())
    still = missing()
    if still:
        raise RuntimeError(f"still missing after installation: {describe(still)}")
    return True
