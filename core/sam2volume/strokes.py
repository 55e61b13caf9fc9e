"""Scribbles and lassos drawn on one slice, mapped to the prompts SAM2 takes.

Coordinates are frame pixels: ``x`` = column, ``y`` = row, pixel centres at whole numbers.

* A **lasso** (a closed polygon) becomes a mask prompt: its filled region on the frame's pixel
  grid, rasterised by ``PIL.ImageDraw.polygon`` (the pixels whose centres lie inside the polygon
  and the pixels its outline passes through).
* A **scribble** (an open polyline) becomes point prompts, all positive or all negative, sampled
  by arc length: its first and last vertices and evenly spaced points between them, at least
  ``SCRIBBLE_SPACING_PX`` pixels apart, and at most ``SCRIBBLE_MAX_POINTS`` points per scribble
  (a longer stroke gets them spread evenly over its whole length).

Why points and not a mask for a scribble: SAM2 takes a mask prompt as the slice's mask itself
(``use_mask_input_as_output_without_sam``), so a scribble given as a mask would come back as the
thin line that was drawn; and SAM2 is trained with a handful of clicks per frame (upstream's
training configs sample up to 7 correction clicks), so a stroke is cut to at most 10 of them.
"""

from __future__ import annotations

import numpy as np

from .errors import InputError

SCRIBBLE_SPACING_PX = 10.0  #: the least distance between two points sampled along a scribble (frame pixels)
SCRIBBLE_MAX_POINTS = 10  #: points one scribble becomes, at most
MAX_STROKE_POINTS = 1000  #: vertices of one scribble or lasso, at most (the server's MAX_POINTS)


def check_count(n: int, kind: str, minimum: int) -> None:
    """A stroke's number of vertices: ``minimum`` (1 for a scribble, 3 for a lasso) to MAX_STROKE_POINTS."""
    if not minimum <= n <= MAX_STROKE_POINTS:
        raise InputError(f"a {kind} needs {minimum} to {MAX_STROKE_POINTS} points, got {n}"
                         + ("; draw a closed outline around the object" if kind == "lasso" else ""))


def polygon_area(xy: np.ndarray) -> float:
    """The area (pixels squared) a polygon encloses (shoelace formula; a self-crossing one nets its loops)."""
    x, y = np.asarray(xy, dtype=np.float64).reshape(-1, 2).T
    return abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1)))) / 2


def sample_scribble(xy: np.ndarray, spacing: float = SCRIBBLE_SPACING_PX, max_points: int = SCRIBBLE_MAX_POINTS) -> np.ndarray:
    """Points (M, 2) along the polyline through ``xy`` (N, 2): both ends and evenly spaced points
    between them, at least ``spacing`` apart along the line, at most ``max_points`` of them."""
    xy = np.asarray(xy, dtype=np.float64).reshape(-1, 2)
    seg = np.linalg.norm(np.diff(xy, axis=0), axis=1)
    length = float(seg.sum())
    if length <= 0:  # a click, or a stroke that never moved
        return xy[:1].copy()
    n = int(min(max_points, np.floor(length / spacing) + 1))
    n = max(n, 2)
    at = np.linspace(0.0, length, n)
    cum = np.concatenate([[0.0], np.cumsum(seg)])
    return np.stack([np.interp(at, cum, xy[:, 0]), np.interp(at, cum, xy[:, 1])], axis=-1)


def rasterise_polygon(xy: np.ndarray, frame_shape: tuple[int, int]) -> np.ndarray:
    """The filled region (bool, ``frame_shape`` = (rows, cols)) of the polygon through ``xy`` (N, 2)."""
    from PIL import Image, ImageDraw

    h, w = frame_shape
    img = Image.new("1", (int(w), int(h)), 0)
    ImageDraw.Draw(img).polygon([(float(x), float(y)) for x, y in np.asarray(xy, dtype=np.float64).reshape(-1, 2)], fill=1, outline=1)
    return np.array(img, dtype=bool)
