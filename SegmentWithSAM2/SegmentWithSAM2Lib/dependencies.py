"""Python packages the module needs in Slicer's Python, with version bounds, checked on module entry.

Remote mode needs nothing beyond what Slicer ships (numpy; ``sam2volume.client`` is standard library
otherwise). Local mode runs the engine server with Slicer's Python, so it needs the server (FastAPI,
uvicorn), the baseline engine (scipy) and, for SAM2, torch (from the PyTorch extension, which picks
the CUDA build for the driver) and SAM2 (Roboflow's wheel of Meta's SAM 2.1 code, installed without
its declared torchvision, which the video predictor never imports). Nothing is installed without
the user's consent, and never at Slicer start-up or inside a click handler.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from dataclasses import dataclass

from packaging.requirements import Requirement


@dataclass(frozen=True)
class Package:
    module: str  # import name
    requirement: str  # pip requirement with version bounds
    options: str = ""  # pip options
    distribution: str = ""  # distribution name when it differs from the requirement's

    @property
    def dist(self) -> str:
        return self.distribution or Requirement(self.requirement).name


TORCH = Package("torch", "torch>=2.3")
SERVER = [Package("fastapi", "fastapi>=0.110"), Package("uvicorn", "uvicorn>=0.29"), Package("scipy", "scipy>=1.10")]
SAM2 = [Package("sam2", "rf-sam-2==1.0.3", "--no-deps"), Package("hydra", "hydra-core>=1.3.2,<2"), Package("iopath", "iopath>=0.1.10"),
        Package("tqdm", "tqdm>=4.60"), Package("PIL", "pillow>=9")]
PACKAGES = [TORCH, *SERVER, *SAM2]


def needed(mode: str, engine: str) -> list[Package]:
    """What this mode and engine need in Slicer's Python."""
    if mode == "remote":
        return []
    return SERVER + ([TORCH, *SAM2] if engine == "sam2" else [])


def problems(packages: list[Package]) -> list[tuple[Package, str]]:
    """(package, what is wrong) for each package that is missing or outside its version bounds."""
    out = []
    for p in packages:
        if importlib.util.find_spec(p.module) is None:
            out.append((p, "missing"))
            continue
        try:
            version = importlib.metadata.version(p.dist)
        except importlib.metadata.PackageNotFoundError:
            continue  # importable but not from a distribution (e.g. a source checkout): accept
        if not Requirement(p.requirement).specifier.contains(version, prereleases=True):
            out.append((p, f"version {version}"))
    return out


def describe(found: list[tuple[Package, str]]) -> str:
    return "; ".join(
        f"{'PyTorch through the PyTorch extension' if p is TORCH else p.requirement} ({what})" for p, what in found
    )


DECLINED_SETTING = "SegmentWithSAM2/installDeclined"  # application settings (QSettings) key


def _declined_value(mode: str, engine: str, found: list[tuple[Package, str]]) -> str:
    return f"{mode}/{engine}: " + ", ".join(sorted(f"{p.requirement} ({what})" for p, what in found))


def ask_on_entry(settings, mode: str, engine: str, found: list[tuple[Package, str]]) -> bool:
    """Whether entering the module offers to install ``found``: not when the user declined exactly
    these packages for this mode and engine before (``settings``: Slicer's application settings,
    ``slicer.app.settings()``; the answer outlives the scene and the session). Initialize always offers."""
    return bool(found) and str(settings.value(DECLINED_SETTING, "") or "") != _declined_value(mode, engine, found)


def remember_declined(settings, mode: str, engine: str, found: list[tuple[Package, str]]) -> None:
    settings.setValue(DECLINED_SETTING, _declined_value(mode, engine, found))


def forget_declined(settings) -> None:
    settings.remove(DECLINED_SETTING)


def install(found: list[tuple[Package, str]], confirm: bool = True) -> bool:
    """Install or upgrade what :func:`problems` found, inside Slicer, after the user agrees."""
    import slicer  # only inside Slicer

    if not found:
        return True
    if slicer.app.testingEnabled():  # ctest, --testing: nobody to ask, and nothing is installed there
        return False
    if confirm and not slicer.util.confirmOkCancelDisplay(
        f"SegmentWithSAM2 needs these Python packages in Slicer's Python: {describe(found)}.\n"
        "Install them now? (A few minutes; PyTorch with CUDA is large. Remote mode needs none of them.)",
        "Install dependencies",
    ):
        return False
    packages = [p for p, _ in found]
    if TORCH in packages:
        try:
            import PyTorchUtils
        except ImportError:
            raise RuntimeError("the PyTorch extension is not installed: install 'PyTorch' from the Extensions Manager and "
                               "restart Slicer (or use remote mode)") from None
        if PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=False, torchVersionRequirement=">=2.3") is None:
            raise RuntimeError("PyTorch could not be installed; see the Python console for pip's messages")
    for p in packages:
        if p is not TORCH:
            slicer.util.pip_install(f"{p.requirement} {p.options}".strip())
    importlib.invalidate_caches()  # else this process may not find what pip just installed
    still = problems(packages)
    if still:
        raise RuntimeError(f"still not usable after installation: {describe(still)}")
    return True
