"""Known SAM2 checkpoints: where they come from, which config builds them, which image size.

Pure data, no torch. ``sha256`` is the published digest where we hold one; where it is None the
weights manager verifies against the digest the server publishes (Hugging Face serves the
SHA-256 of LFS files in ``X-Linked-Etag``) and records it beside the file, so every later load
is checked against the same digest.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import ModelError

_FB = "https://dl.fbaipublicfiles.com/segment_anything_2"
_MEDSAM2 = "https://huggingface.co/wanglab/MedSAM2/resolve/main"


@dataclass(frozen=True)
class ModelSpec:
    name: str
    config: str  #: config name inside the sam2 package (hydra), or a path to a .yaml file
    url: str | None
    filename: str
    image_size: int
    sha256: str | None = None
    description: str = ""

    @property
    def is_custom(self) -> bool:
        return self.url is None


def _sam(version: str, size: str, letter: str, date: str) -> ModelSpec:
    prefix = "sam2.1" if version == "2.1" else "sam2"
    cfg_dir = "configs/sam2.1" if version == "2.1" else "configs/sam2"
    filename = f"{prefix}_hiera_{size}.pt"
    return ModelSpec(
        name=f"{prefix}-hiera-{size.replace('_', '-')}",
        config=f"{cfg_dir}/{prefix}_hiera_{letter}.yaml",
        url=f"{_FB}/{date}/{filename}",
        filename=filename,
        image_size=1024,
        description=f"SAM {version} Hiera {size.replace('_', ' ')} (Meta), 1024 px",
    )


MODELS: dict[str, ModelSpec] = {}
for _version, _date in (("2.1", "092824"), ("2.0", "072824")):
    for _size, _letter in (("tiny", "t"), ("small", "s"), ("base_plus", "b+"), ("large", "l")):
        _spec = _sam(_version, _size, _letter, _date)
        MODELS[_spec.name] = _spec

# MedSAM2 (Ma et al. 2025): SAM 2.1 tiny fine-tuned on 3D medical images and videos at 512 px.
for _file, _what in (
    ("MedSAM2_latest.pt", "latest general model"),
    ("MedSAM2_2411.pt", "first release"),
    ("MedSAM2_CTLesion.pt", "CT lesions"),
    ("MedSAM2_MRI_LiverLesion.pt", "MRI liver lesions"),
    ("MedSAM2_US_Heart.pt", "heart ultrasound"),
):
    _name = _file[:-3].replace("_", "-").lower()
    MODELS[_name] = ModelSpec(
        name=_name,
        config="configs/sam2.1/sam2.1_hiera_t.yaml",
        url=f"{_MEDSAM2}/{_file}",
        filename=_file,
        image_size=512,
        description=f"MedSAM2 ({_what}), SAM 2.1 tiny at 512 px",
    )

DEFAULT_MODEL = "medsam2-latest"


def list_models() -> list[ModelSpec]:
    return list(MODELS.values())


def get_model(name: str) -> ModelSpec:
    key = name.lower()
    if key in MODELS:
        return MODELS[key]
    raise ModelError(
        f"unknown model {name!r}; choose one of: {', '.join(MODELS)} "
        "(or a custom checkpoint with --checkpoint FILE.pt --config FILE.yaml)"
    )


def custom_model(checkpoint: str, config: str, image_size: int = 1024) -> ModelSpec:
    """A user's own checkpoint plus a config (a sam2 config name or a .yaml path)."""
    from pathlib import Path

    return ModelSpec(
        name=f"custom:{Path(checkpoint).name}",
        config=config,
        url=None,
        filename=Path(checkpoint).name,
        image_size=image_size,
        description=f"custom checkpoint {checkpoint}",
    )
