"""The JSON requests the server takes, checked strictly (unknown fields and wrong types are refused)."""

from __future__ import annotations

from typing import Annotated, Any, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError

MAX_POINTS = 1000  #: points in one prompt (a click adds one; the bound keeps one request's work small)
Pair = Annotated[list[float], Field(min_length=2, max_length=2)]

from ..errors import InputError
from ..prompts import check_color, check_name


class _Req(BaseModel):
    # JSON NaN and Infinity are refused in every number (Python's json writes them for float("nan"))
    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)


class WindowReq(_Req):
    low: float
    high: float


class OpenSession(_Req):
    volume: str
    axis: str = "axial"
    engine: str = "sam2"
    config: Optional[dict[str, Any]] = None
    window: Optional[WindowReq] = None


class LoadModel(_Req):
    config: Optional[dict[str, Any]] = None  # the engine settings a session would send (OpenSession.config)


class AddObject(_Req):
    label: int
    name: Optional[str] = None
    color: Optional[Annotated[list[float], Field(min_length=3, max_length=3)]] = None  # red, green, blue in [0, 1]


class AddPoints(_Req):
    label: int
    slice: int
    points: Annotated[list[Pair], Field(min_length=1, max_length=MAX_POINTS)]  # frame pixels (x = column, y = row)
    point_labels: Optional[Annotated[list[int], Field(max_length=MAX_POINTS)]] = None
    name: Optional[str] = None


class AddBox(_Req):
    label: int
    slice: int
    box: Annotated[list[float], Field(min_length=4, max_length=4)]  # x0, y0, x1, y1 in frame pixels
    name: Optional[str] = None


class AddMask(_Req):
    label: int
    slice: int
    mask: dict[str, Any]  # {"shape": [rows, cols], "bits": base64 of np.packbits}
    name: Optional[str] = None


class AddScribble(_Req):
    label: int
    slice: int
    points: Annotated[list[Pair], Field(min_length=1, max_length=MAX_POINTS)]  # a polyline in frame pixels (x, y)
    positive: bool = True
    name: Optional[str] = None


class AddLasso(_Req):
    label: int
    slice: int
    points: Annotated[list[Pair], Field(min_length=3, max_length=MAX_POINTS)]  # a polygon in frame pixels (x, y)
    name: Optional[str] = None


class ChooseMask(_Req):
    label: int
    slice: int
    index: int  # which of the slice's multimask candidates


class StartJob(_Req):
    direction: str = "both"
    objects: Optional[Annotated[list[int], Field(max_length=65535)]] = None
    start: Optional[int] = None
    slice_range: Optional[Annotated[list[int], Field(min_length=2, max_length=2)]] = None
    stop_after: Optional[int] = 3


def parse(model: type[_Req], body: bytes) -> Any:
    """Validate a request body; malformed JSON or wrong fields raise InputError naming them. Names and
    colours get the prompts file's checks (one printable line of at most 128 characters; RGB in [0, 1])."""
    try:
        req = model.model_validate_json(body or b"{}")
    except ValidationError as exc:
        problems = []
        for err in exc.errors()[:5]:
            where = ".".join(str(p) for p in err.get("loc", ())) or "body"
            problems.append(f"{where}: {err.get('msg')}")
        if any(e.get("type") == "json_invalid" for e in exc.errors()):
            raise InputError(f"request body is not valid JSON ({problems[0]})") from None
        raise InputError(f"bad {model.__name__} request: " + "; ".join(problems)) from None
    if getattr(req, "name", None) is not None:
        check_name(req.name, f"{model.__name__} request")
    if getattr(req, "color", None) is not None:
        check_color(req.color, f"{model.__name__} request")
    return req
