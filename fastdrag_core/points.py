"""Drag instructions: the points JSON, and the official image -> latent mapping of points and masks.

Points JSON (image pixels, x to the right, y down; ``width``/``height`` = the image the points were
placed on)::

    {"version": 1, "width": W, "height": H, "drags": [{"handle": [x, y], "target": [x, y]}, ...]}

DragBench's flat list ``[[x, y], [x, y], ...]`` (handle, target, handle, target, ...) is accepted too.
"""

from __future__ import annotations

import json
import math
import reprlib
from dataclasses import dataclass

import torch
import torch.nn.functional as F

POINTS_VERSION = 1
Point = tuple[float, float]

# Limits on one drag request (the editor's preview, FastDragPoints and FastDragWarp apply the same).
# DragBench has 349 handle/target pairs on 205 images (1.7 per image, a handful at most), so 32 drags
# is far beyond any real edit. The warp's memory grows with latent cells x drags: about 80-120 bytes
# per cell-drag for lwf_warp on the CPU (benchmarks/warp_memory.py: 128x128 cells x 32 drags = +39 MiB,
# 256x256 x 32 = +204 MiB), so cells x drags is bounded too: 2^22 cell-drags is at most ~0.4 GB
# (a 2048x2048 image with all 32 drags; 4096x4096 with 16).
MAX_DRAGS = 32
MAX_CELL_DRAGS = 1 << 22


def too_many_drags(n: int) -> str:
    return f"points: {n} drags, at most {MAX_DRAGS} are accepted (FastDrag edits use a handful); remove some"


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


_short = reprlib.Repr()
_short.maxlevel, _short.maxstring, _short.maxother = 3, 60, 60


def short_repr(value) -> str:
    """repr for error messages: bounded in depth and length whatever a request nests."""
    return _short.repr(value)


def _point(value, where: str) -> Point:
    if (not isinstance(value, (list, tuple)) or len(value) != 2
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ValueError(f"points: {where} must be [x, y] with two numbers, got {short_repr(value)}")
    try:
        x, y = float(value[0]), float(value[1])
    except OverflowError:
        raise ValueError(f"points: {where} = {short_repr(value)} is too large") from None
    if not (math.isfinite(x) and math.isfinite(y)):
        raise ValueError(f"points: {where} = {short_repr(value)} is not finite")
    return x, y


def _size(obj: dict, key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    # an int is compared as it is (math.isfinite would overflow on a 401-digit one)
    if (isinstance(value, bool) or not isinstance(value, (int, float))
            or (isinstance(value, float) and not (math.isfinite(value) and value == int(value)))
            or value <= 0 or value > 1 << 20):
        raise ValueError(f"points: '{key}' must be a positive whole number of pixels, got {short_repr(value)}")
    return int(value)


NO_DRAGS = "no drag points given; place at least one handle -> target pair"


def parse_points(value, *, allow_empty: bool = False) -> DragPoints:
    """Parse the points STRING (JSON text) or an already decoded object into :class:`DragPoints`.

    Args:
        allow_empty: return zero drags instead of raising (FastDragPoints then still sends its picture
            to the editor before it stops).
    Raises:
        ValueError: malformed JSON, an unknown version, a malformed point, more than
            :data:`MAX_DRAGS` drags, or (unless ``allow_empty``) no drags at all.
    """
    obj = value
    if isinstance(value, str):
        if not value.strip():
            if allow_empty:
                return DragPoints((), ())
            raise ValueError(f"points: {NO_DRAGS} (the points string is empty)")
        try:
            obj = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"points: not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
        except RecursionError:
            raise ValueError("points: not valid JSON (nested too deeply)") from None
        except ValueError:  # an integer longer than Python's digit limit (4300)
            raise ValueError("points: not valid JSON (a number has too many digits)") from None
    if isinstance(obj, list):
        if len(obj) > 2 * MAX_DRAGS:
            raise ValueError(too_many_drags(len(obj) // 2))
        if len(obj) % 2:
            raise ValueError(f"points: a flat list needs handle/target pairs, got an odd count of {len(obj)} points")
        pts = [_point(p, f"point {k}") for k, p in enumerate(obj)]
        drags = DragPoints(tuple(pts[0::2]), tuple(pts[1::2]))
    elif isinstance(obj, dict):
        version = obj.get("version", POINTS_VERSION)
        if version != POINTS_VERSION:
            raise ValueError(f"points: unsupported version {short_repr(version)} (this pack reads version {POINTS_VERSION})")
        raw = obj.get("drags")
        if not isinstance(raw, list):
            raise ValueError(f"points: 'drags' must be a list of {{'handle': [x, y], 'target': [x, y]}}, got {short_repr(raw)}")
        if len(raw) > MAX_DRAGS:
            raise ValueError(too_many_drags(len(raw)))
        handles, targets = [], []
        for k, drag in enumerate(raw):
            if not isinstance(drag, dict) or "handle" not in drag or "target" not in drag:
                raise ValueError(f"points: drags[{k}] must have 'handle' and 'target', got {short_repr(drag)}")
            handles.append(_point(drag["handle"], f"drags[{k}].handle"))
            targets.append(_point(drag["target"], f"drags[{k}].target"))
        width, height = _size(obj, "width"), _size(obj, "height")
        if (width is None) != (height is None):
            raise ValueError("points: give both 'width' and 'height' (the image the points were placed on), "
                             f"or neither; got width={width}, height={height}")
        drags = DragPoints(tuple(handles), tuple(targets), width, height)
    else:
        raise ValueError(f"points: expected a JSON object or list, got {type(obj).__name__}")
    if len(drags) == 0 and not allow_empty:
        raise ValueError(f"points: {NO_DRAGS}")
    return drags


def check_points_in_image(points: DragPoints, width: int, height: int) -> None:
    """Raise ``ValueError`` naming the first handle or target outside [0, width) x [0, height)."""
    for kind, pts in (("handle", points.handles), ("target", points.targets)):
        for k, (x, y) in enumerate(pts):
            if not (0 <= x < width and 0 <= y < height):
                raise ValueError(f"points: drag {k} {kind} ({x:g}, {y:g}) is outside the {width}x{height} image")


def handles_outside_mask(handles, mask) -> list[int]:
    """Indices of the drags whose handle (x, y image pixels, rounded half up as the editor rounds)
    lies on a pixel that ``mask`` ([H, W] or [1, H, W], > 0 = editable; None = all editable) leaves
    fixed. FastDrag moves only masked latent cells and DragDiffusion keeps the rest, so such a
    drag pulls the masked region rather than what is under its handle: worth a warning, not an error."""
    if mask is None:
        return []
    m = torch.as_tensor(mask)
    m = m.reshape(m.shape[-2:]) if m.dim() == 3 else m
    height, width = int(m.shape[0]), int(m.shape[1])
    out = []
    for k, (x, y) in enumerate(handles):
        col = min(width - 1, max(0, math.floor(float(x) + 0.5)))
        row = min(height - 1, max(0, math.floor(float(y) + 0.5)))
        if not bool(m[row, col] > 0):
            out.append(k)
    return out


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
    return image_mask_to_latent_soft(mask, latent_hw) > 0


def image_mask_to_latent_soft(mask: torch.Tensor, latent_hw) -> torch.Tensor:
    """The soft latent mask before the "> 0" test of :func:`image_mask_to_latent` (the official
    ``mask_cp_handle`` of the object-moving task): float32 in [0, 1], same shapes and device."""
    if mask.dim() not in (2, 3):
        raise ValueError(f"image_mask_to_latent: mask must be [H, W] or [B, H, W], got shape {tuple(mask.shape)}")
    m = (mask > 0).to(torch.float32)
    m4 = m.reshape(-1, 1, *m.shape[-2:])
    half = F.interpolate(m4, size=(m.shape[-2] // 2, m.shape[-1] // 2), mode="nearest")
    lat = F.interpolate(half, size=(int(latent_hw[0]), int(latent_hw[1])), mode="bilinear",
                        align_corners=False, antialias=False)[:, 0]
    return lat[0] if mask.dim() == 2 else lat


LATENT_FACTOR = 8  # VAE downscale of SD1.x: one latent cell per 8x8 pixels


def vae_crop(image_hw) -> tuple[int, int, int, int]:
    """The centred crop VAEEncode applies to an image that is not a multiple of 8.

    Returns:
        (y0, x0, height, width) of the kept region: height = floor(H/8)*8, y0 = (H mod 8) // 2.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    kept_h, kept_w = height // LATENT_FACTOR * LATENT_FACTOR, width // LATENT_FACTOR * LATENT_FACTOR
    return (height % LATENT_FACTOR) // 2, (width % LATENT_FACTOR) // 2, kept_h, kept_w


@dataclass(frozen=True)
class LatentDrag:
    """A drag request that passed :func:`check_drag`, in image pixels and on the latent grid.

    Attributes:
        points: the drags in pixels of this image (rescaled if they were placed on another size).
        handles, targets: float32 [N, 2] latent-grid (x, y) by the official rule, after VAEEncode's crop.
        mask: bool [h, w] latent editable region (all True when no mask was given).
        image_mask: bool [H, W] image mask on the CPU, or None for "whole image".
        crop: (y0, x0, kept_h, kept_w) of VAEEncode's centred crop.
    """

    points: DragPoints
    handles: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor
    image_mask: torch.Tensor | None
    crop: tuple[int, int, int, int]


def _check_in_crop(points: DragPoints, image_hw, crop) -> None:
    height, width = image_hw
    y0, x0, kept_h, kept_w = crop
    for kind, pts in (("handle", points.handles), ("target", points.targets)):
        for k, (x, y) in enumerate(pts):
            if not (x0 <= x < x0 + kept_w and y0 <= y < y0 + kept_h):
                raise ValueError(
                    f"points: drag {k} {kind} ({x:g}, {y:g}) is in the border VAEEncode crops away: a "
                    f"{width}x{height} image is encoded as its centred {kept_w}x{kept_h} part "
                    f"(x from {x0} to below {x0 + kept_w}, y from {y0} to below {y0 + kept_h}); move the point "
                    "inside, or give an image whose sides are multiples of 8")


def check_drag(points: DragPoints, image_hw, mask=None) -> LatentDrag:
    """The one validation of a drag request, shared by the editor's preview, FastDragPoints and
    FastDragWarp, run before any UNet call. Messages start with what is wrong ("points: ...",
    "the mask ...", "image ..."); callers prefix their node name.

    Checks, in order: the image holds at least one latent cell; 1..MAX_DRAGS drags; the points
    (rescaled to this image when they carry another ``width``/``height``) lie inside the image and
    inside the part VAEEncode keeps (its centred crop to multiples of 8); latent cells x drags <=
    MAX_CELL_DRAGS; the mask (``None`` = whole image; [H, W] or [1, H, W], > 0 = editable) is not
    empty, matches the image, and covers at least one latent cell.

    Args:
        points: parsed drags (:func:`parse_points`).
        image_hw: (H, W) of the image.
        mask: image mask or None.
    Returns:
        :class:`LatentDrag`.
    Raises:
        ValueError: the first problem found, with the value and what to do.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    if height < LATENT_FACTOR or width < LATENT_FACTOR:
        raise ValueError(f"image: {width}x{height} is smaller than one latent cell ({LATENT_FACTOR}x{LATENT_FACTOR} px)")
    n = len(points)
    if n == 0:
        raise ValueError(f"points: {NO_DRAGS}")
    if n > MAX_DRAGS:
        raise ValueError(too_many_drags(n))
    if points.width and points.height and (points.width, points.height) != (width, height):
        points = points.scaled_to(width, height)
    else:
        points = DragPoints(points.handles, points.targets, width, height)
    check_points_in_image(points, width, height)
    crop = vae_crop((height, width))
    y0, x0, kept_h, kept_w = crop
    _check_in_crop(points, (height, width), crop)
    latent_hw = (kept_h // LATENT_FACTOR, kept_w // LATENT_FACTOR)
    cells = latent_hw[0] * latent_hw[1]
    if cells * n > MAX_CELL_DRAGS:
        raise ValueError(f"points: {n} drags on {latent_hw[1]}x{latent_hw[0]} latent cells are {cells * n:,} "
                         f"cell-drags, more than the {MAX_CELL_DRAGS:,} the warp accepts (its memory grows with "
                         "both); use fewer drags or a smaller image")
    image_mask = None
    if mask is not None:
        m = torch.as_tensor(mask)
        if m.dim() == 3:
            if m.shape[0] != 1:
                raise ValueError(f"the mask is a batch of {m.shape[0]}; give one mask")
            m = m[0]
        m = m.detach().to("cpu")
        if not bool((m > 0).any()):  # also LoadImage's 64x64 placeholder for a picture without alpha
            raise ValueError("the mask is empty; paint the region to edit (mask editor or Load Image (as Mask)), "
                             "or leave the mask input unconnected to make the whole image editable")
        if m.dim() != 2 or tuple(m.shape) != (height, width):
            raise ValueError(f"the mask is {'x'.join(str(d) for d in reversed(m.shape))} (WxH), which does not "
                             f"match the {width}x{height} image; give a mask of the image's size")
        image_mask = m > 0
    shifted = DragPoints(tuple((x - x0, y - y0) for x, y in points.handles),
                         tuple((x - x0, y - y0) for x, y in points.targets), kept_w, kept_h)
    handles, targets = shifted.as_tensors()
    if image_mask is None:
        lat_mask = torch.ones(latent_hw, dtype=torch.bool)
    else:
        lat_mask = image_mask_to_latent(image_mask[y0:y0 + kept_h, x0:x0 + kept_w], latent_hw)
        if not bool(lat_mask.any()):
            raise ValueError(f"the mask ({int(image_mask.sum())} px) covers no latent cell of the "
                             f"{latent_hw[1]}x{latent_hw[0]} grid (one cell per 8x8 px); paint a larger editable region")
    return LatentDrag(points, image_points_to_latent(handles, (kept_h, kept_w)),
                      image_points_to_latent(targets, (kept_h, kept_w)), lat_mask, image_mask, crop)
