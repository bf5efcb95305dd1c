"""Drag instructions: the points JSON, and the official image -> latent mapping of points and masks.

Points JSON (image pixels, x to the right, y down; ``width``/``height`` = the image the points were
placed on)::

    {"version": 1, "width": W, "height": H, "drags": [{"handle": [x, y], "target": [x, y]}, ...]}

DragBench's flat list ``[[x, y], [x, y], ...]`` (handle, target, handle, target, ...) is accepted too.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POINTS_VERSION = 1
Point = tuple[float, float]


@dataclass(frozen=True)
class DragPoints:
    """Handle -> target pairs in image pixels (x, y); ``width``/``height`` of the image they were placed on."""

    handles: tuple[Point, ...]
    targets: tuple[Point, ...]
    width: int | None = None
    height: int | None = None

    def __len__(self) -> int:
        return len(self.handles)

    def scaled_to(self, width: int, height: int) -> "DragPoints":
        """The same drags on an image of ``width`` x ``height`` (rescaled when the sizes differ)."""
        sx = width / self.width if self.width else 1.0
        sy = height / self.height if self.height else 1.0

        def scale(points):
            return tuple((x * sx, y * sy) for x, y in points)

        return DragPoints(scale(self.handles), scale(self.targets), int(width), int(height))

    def as_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(handles, targets) as float64 [N, 2] (x, y) image-pixel tensors."""
        return (torch.tensor(self.handles, dtype=torch.float64).reshape(-1, 2),
                torch.tensor(self.targets, dtype=torch.float64).reshape(-1, 2))

    def to_json(self) -> str:
        """The version-1 points JSON of these drags."""
        return json.dumps({
            "version": POINTS_VERSION, "width": self.width, "height": self.height,
            "drags": [{"handle": list(h), "target": list(t)} for h, t in zip(self.handles, self.targets)],
        })


def _point(value, where: str) -> Point:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"points: {where} must be [x, y] with two numbers, got {value!r}")
    try:
        x, y = float(value[0]), float(value[1])
    except OverflowError:
        raise ValueError(f"points: {where} = {value!r} is too large") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"points: {where} = {value!r} is not finite")
    return x, y


def _size(obj: dict, key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or value != int(value) or value <= 0 or value > 1 << 20):
        raise ValueError(f"points: '{key}' must be a positive whole number of pixels, got {value!r}")
    return int(value)


def parse_points(value) -> DragPoints:
    """Parse the points STRING (JSON text) or an already decoded object into :class:`DragPoints`.

    Raises:
        ValueError: malformed JSON, an unknown version, a malformed point, or no drags at all.
    """
    obj = value
    if isinstance(value, str):
        if not value.strip():
            raise ValueError("points: no drag points given (the points string is empty); "
                             "place at least one handle -> target pair")
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"points: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    if isinstance(obj, list):
        if len(obj) % 2:
            raise ValueError(f"points: a flat list needs handle/target pairs, got an odd count of {len(obj)} points")
        pts = [_point(p, f"point {k}") for k, p in enumerate(obj)]
        drags = DragPoints(tuple(pts[0::2]), tuple(pts[1::2]))
    elif isinstance(obj, dict):
        version = obj.get("version", POINTS_VERSION)
        if version != POINTS_VERSION:
            raise ValueError(f"points: unsupported version {version!r} (this pack reads version {POINTS_VERSION})")
        raw = obj.get("drags")
        if not isinstance(raw, list):
            raise ValueError(f"points: 'drags' must be a list of {{'handle': [x, y], 'target': [x, y]}}, got {raw!r}")
        handles, targets = [], []
        for k, drag in enumerate(raw):
            if not isinstance(drag, dict) or "handle" not in drag or "target" not in drag:
                raise ValueError(f"points: drags[{k}] must have 'handle' and 'target', got {drag!r}")
            handles.append(_point(drag["handle"], f"drags[{k}].handle"))
            targets.append(_point(drag["target"], f"drags[{k}].target"))
        width, height = _size(obj, "width"), _size(obj, "height")
        if (width is None) != (height is None):
            raise ValueError("points: give both 'width' and 'height' (the image the points were placed on), "
                             f"or neither; got width={width}, height={height}")
        drags = DragPoints(tuple(handles), tuple(targets), width, height)
    else:
        raise ValueError(f"points: expected a JSON object or list, got {type(obj).__name__}")
    if len(drags) == 0:
        raise ValueError("points: no drag points given; place at least one handle -> target pair")
    return drags


def check_points_in_image(points: DragPoints, width: int, height: int) -> None:
    """Raise ``ValueError`` naming the first handle or target outside [0, width) x [0, height)."""
    for kind, pts in (("handle", points.handles), ("target", points.targets)):
        for k, (x, y) in enumerate(pts):
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"points: drag {k} {kind} ({x:g}, {y:g}) is outside the {width}x{height} image")


def image_points_to_latent(points_xy, image_hw) -> torch.Tensor:
    """Official image -> latent mapping of points (spec §1.7).

    ``x_lat = round(x / W * floor(W/2)) / 4`` and ``y_lat = round(y / H * floor(H/2)) / 4``: the
    ratio in float64, rounded half-to-even in float32, no half-pixel offset (latent cell (r, c) is
    image pixel (8r, 8c)), not snapped or clamped to the grid.

    Args:
        points_xy: [N, 2] (x, y) image pixels.
        image_hw: (H, W) of the image.
    Returns:
        float32 [N, 2] latent-grid (x, y).
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    pts = torch.as_tensor(points_xy, dtype=torch.float64).reshape(-1, 2)
    half = torch.stack((pts[:, 0] / width * (width // 2), pts[:, 1] / height * (height // 2)), dim=1)
    return torch.round(half.to(torch.float32)) / 4


def image_mask_to_latent(mask: torch.Tensor, latent_hw) -> torch.Tensor:
    """Official image -> latent mapping of a mask (spec §1.7).

    Binarise (> 0), legacy-nearest resize to (floor(H/2), floor(W/2)), bilinear resize without
    antialias (align_corners=False) to ``latent_hw``, then > 0. For 512x512 a latent cell (r, c)
    is set iff any pixel at rows {8r+2, 8r+4} x cols {8c+2, 8c+4} is set.

    Args:
        mask: [H, W] or [B, H, W] image-resolution mask (bool or numeric).
        latent_hw: (h, w) of the latent grid.
    Returns:
        bool [h, w] (or [B, h, w]) on the mask's device.
    """
    if mask.dim() not in (2, 3):
        raise ValueError(f"image_mask_to_latent: mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}")
    m = (mask > 0).to(torch.float32)
    m4 = m.reshape(-1, 1, *m.shape[-2:])
    half = F.interpolate(m4, size=(m.shape[-2] // 2, m.shape[-1] // 2), mode="nearest")
    lat = F.interpolate(half, size=(int(latent_hw[0]), int(latent_hw[1])), mode="bilinear",
                        align_corners=False, antialias=False)
    out = lat[:, 0] > 0
    return out[0] if mask.dim() == 2 else out


LATENT_FACTOR = 8  # VAE downscale of SD1.x: one latent cell per 8x8 pixels


def vae_crop(image_hw) -> tuple[int, int, int, int]:
    """The centred crop VAEEncode applies to an image that is not a multiple of 8.

    Returns:
        (y0, x0, height, width) of the kept region: height = floor(H/8)*8, y0 = (H mod 8) // 2.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    kept_h, kept_w = height // LATENT_FACTOR * LATENT_FACTOR, width // LATENT_FACTOR * LATENT_FACTOR
    return (height % LATENT_FACTOR) // 2, (width % LATENT_FACTOR) // 2, kept_h, kept_w


def drag_to_latent(points: DragPoints, mask, image_hw):
    """Drag points and mask of an image -> the latent grid VAEEncode makes of it.

    Crops like VAEEncode (:func:`vae_crop`), shifts the points with the crop, then applies the
    official rules (:func:`image_points_to_latent`, :func:`image_mask_to_latent`).

    Args:
        points: drags in pixels of this image (already :meth:`DragPoints.scaled_to` it).
        mask: [H, W] image mask or None.
        image_hw: (H, W) of the image.
    Returns:
        (handles, targets) float32 [N, 2] latent-grid (x, y), and the bool [h, w] latent mask (or None).
    Raises:
        ValueError: a point falls outside the cropped image (the message gives the crop).
    """
    y0, x0, kept_h, kept_w = vae_crop(image_hw)
    shifted = DragPoints(tuple((x - x0, y - y0) for x, y in points.handles),
                         tuple((x - x0, y - y0) for x, y in points.targets), kept_w, kept_h)
    try:
        check_points_in_image(shifted, kept_w, kept_h)
    except ValueError as exc:
        raise ValueError(f"after VAEEncode's centred crop of {int(image_hw[1])}x{int(image_hw[0])} to "
                         f"{kept_w}x{kept_h} (offset x={x0}, y={y0}): {exc}") from None
    handles, targets = shifted.as_tensors()
    latent_hw = (kept_h // LATENT_FACTOR, kept_w // LATENT_FACTOR)
    lat_mask = None
    if mask is not None:
        lat_mask = image_mask_to_latent(mask[..., y0:y0 + kept_h, x0:x0 + kept_w], latent_hw)
    return (image_points_to_latent(handles, (kept_h, kept_w)),
            image_points_to_latent(targets, (kept_h, kept_w)), lat_mask)
