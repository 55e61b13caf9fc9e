"""The JSON requests the server takes, checked strictly (unknown fields and wrong types are refused)."""

from __future__ import annotations

from typing import Any, Optional

from pydantic import BaseModel, ConfigDict, ValidationError

from ..errors import InputError


class _Req(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class WindowReq(_Req):
    low: float
    high: float


class OpenSession(_Req):
    volume: str
    axis: str = "axial"
    engine: str = "sam2"
    config: Optional[dict[str, Any]] = None
    window: Optional[WindowReq] = None


class AddObject(_Req):
    label: int
    name: Optional[str] = None
    color: Optional[list[float]] = None


class AddPoints(_Req):
    label: int
    slice: int
    points: list[list[float]]  # frame pixels (x = column, y = row)
    point_labels: Optional[list[int]] = None
    name: Optional[str] = None


class AddBox(_Req):
    label: int
    slice: int
    box: list[float]  # x0, y0, x1, y1 in frame pixels
    name: Optional[str] = None


class AddMask(_Req):
    label: int
    slice: int
    mask: dict[str, Any]  # {"shape": [rows, cols], "bits": base64 of np.packbits}
    name: Optional[str] = None


class StartJob(_Req):
    direction: str = "both"
    objects: Optional[list[int]] = None
    start: Optional[int] = None
    slice_range: Optional[list[int]] = None
    stop_after: Optional[int] = 3


def parse(model: type[_Req], body: bytes) -> Any:
    """Validate a request body; malformed JSON or wrong fields raise InputError naming them."""
    try:
        return model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            problems.append(f"{where}: {err.get('msg')}")
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            raise InputError(f"request body is not valid JSON ({problems[0]})") from None
        raise InputError(f"bad {model.__name__} request: " + "; ".join(problems)) from None
