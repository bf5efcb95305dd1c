"""Warp preview for the points editor: request validation and the warp of a picture.

Pure Python + torch, no ComfyUI import: the server route in ``nodes/preview_route.py`` only reads
files and encodes the PNG; everything that can be wrong with a request is decided here, so it is
unit-tested without a server.

How the preview is computed (one implementation of the maths, the same calls as the nodes):
the RGB image is average-pooled onto the latent grid (H//8 x W//8, one cell per 8x8 pixel block,
the size of the SD latent the real edit warps), the points and mask are mapped with the official
image -> latent rules (``image_points_to_latent``, ``image_mask_to_latent``), and that 3-channel
"latent" goes through ``lwf_warp`` (LWF + relocation) and ``bnni_fill``. So the preview shows the
real geometry of the edit: which latent cells move where, and which cells are holes that BNNI
fills (tinted magenta when ``holes`` is on). It is at latent resolution on purpose; it does not
show what the diffusion pass will paint. The object moving / copy tasks go through ``move_object``
(``fastdrag_core.object_move``) on the same grid instead of the warp.

Each preview has a ``*_grid`` form that takes the picture already reduced to the grid (what the route
keeps, :func:`picture_grid`); the full-picture form pools (:func:`pool_to_grid`) and calls it.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

from .points import short_repr, vae_crop

LATENT_FACTOR = 8
FILE_TYPES = ("input", "temp", "output")  # the folders /view serves
MASK_CHANNELS = ("alpha", "red", "green", "blue")  # LoadImageMask's channels; alpha means 1 - alpha
MAX_POINTS_CHARS = 32_000  # 32 drags (the cap) take ~3,000
HOLE_TINT = (1.0, 0.0, 1.0)
TASKS = ("drag", "move object", "copy object")  # FastDragEdit's task choice
OVERLAPS = ("keep object", "official")          # FastDragMoveObject's overlap choice
EXIF_ORIENTATION = 0x0112


class PreviewRequestError(ValueError):
    """A request the route answers with 400 and this message."""


@dataclass(frozen=True)
class FileRef:
    """A file as ComfyUI's /view names it: ``filename`` in ``subfolder`` of the ``type`` folder."""

    filename: str
    subfolder: str = ""
    type: str = "input"


@dataclass(frozen=True)
class PreviewRequest:
    image: FileRef
    mask: FileRef | None
    mask_channel: str
    points: object  # fastdrag_core.points.DragPoints
    holes: bool
    task: str = "drag"
    overlap: str = "keep object"
    fill_region: FileRef | None = None
    fill_channel: str = "alpha"


def _prefixed(what: str, err: Exception) -> str:
    msg = str(err)
    return msg if msg.startswith(what + ":") else f"{what}: {msg}"


def parse_file_ref(obj, what: str) -> FileRef:
    """Validate ``{"filename", "subfolder"?, "type"?}``; the path itself is checked by
    :func:`resolve_in_folder` once the folder is known."""
    if isinstance(obj, str):
        obj = {"filename": obj}
    if not isinstance(obj, dict):
        raise PreviewRequestError(f"{what}: expected an object {{filename, subfolder, type}}, got {type(obj).__name__}")
    filename = obj.get("filename")
    subfolder = obj.get("subfolder", "") or ""
    ftype = obj.get("type", "input") or "input"
    if not isinstance(filename, str) or not filename.strip():
        raise PreviewRequestError(f"{what}.filename: a non-empty string is required")
    if not isinstance(subfolder, str):
        raise PreviewRequestError(f"{what}.subfolder: must be a string")
    if "\x00" in filename or "\x00" in subfolder:
        raise PreviewRequestError(f"{what}: NUL byte in the file name")
    try:
        filename.encode("utf-8"), subfolder.encode("utf-8")
    except UnicodeEncodeError:
        raise PreviewRequestError(f"{what}: the file name is not valid Unicode") from None
    if ftype not in FILE_TYPES:
        raise PreviewRequestError(f"{what}.type: {short_repr(ftype)} is not one of {', '.join(FILE_TYPES)}")
    return FileRef(filename, subfolder, ftype)


def resolve_in_folder(base_dir: str, ref: FileRef) -> str:
    """Absolute path of ``ref`` inside ``base_dir``; PreviewRequestError if it leaves the folder
    (``..``, absolute names, symlinks pointing out) or is not a file."""
    base = os.path.realpath(base_dir)
    full = os.path.realpath(os.path.join(base, ref.subfolder, ref.filename))
    if os.path.commonpath([base, full]) != base or full == base:
        raise PreviewRequestError(
            f"image {os.path.join(ref.subfolder, ref.filename)!r}: the path leaves ComfyUI's {ref.type} folder")
    if not os.path.isfile(full):
        raise PreviewRequestError(
            f"image {os.path.join(ref.subfolder, ref.filename)!r}: no such file in ComfyUI's {ref.type} folder")
    return full


def parse_preview_request(body) -> PreviewRequest:
    """Validate the JSON body of POST /fastdrag/preview:

    ``{"image": {"filename", "subfolder", "type"}, "points": "<points JSON>" | {...} | [[x, y], ...],
    "mask": null | {"filename", "subfolder", "type", "channel": "alpha"|"red"|"green"|"blue"},
    "holes": true}``

    Point *values* are checked against the image size later (:func:`warp_preview`), once the
    image is read.
    """
    from .points import parse_points

    if not isinstance(body, dict):
        raise PreviewRequestError("request body: expected a JSON object")
    image = parse_file_ref(body.get("image"), "image")
    mask = None
    channel = "alpha"
    if body.get("mask") not in (None, "", {}):
        mask = parse_file_ref(body["mask"], "mask")
        channel = body["mask"].get("channel", "alpha") if isinstance(body["mask"], dict) else "alpha"
        if channel not in MASK_CHANNELS:
            raise PreviewRequestError(f"mask.channel: {short_repr(channel)} is not one of {', '.join(MASK_CHANNELS)}")
    raw = body.get("points")
    if raw is None:
        raise PreviewRequestError("points: missing (the points JSON of the FastDragPoints node)")
    if isinstance(raw, str) and len(raw) > MAX_POINTS_CHARS:
        raise PreviewRequestError(f"points: longer than {MAX_POINTS_CHARS} characters")
    try:
        points = parse_points(raw)
    except (ValueError, TypeError, KeyError) as e:
        raise PreviewRequestError(_prefixed("points", e)) from None
    holes = body.get("holes", True)
    if not isinstance(holes, bool):
        raise PreviewRequestError("holes: must be true or false")
    return PreviewRequest(image, mask, channel, points, holes, *_parse_object_task(body))


def _parse_object_task(body: dict):
    """The object moving / copy fields: ``"task"`` (drag, move object, copy object), ``"overlap"``
    (keep object, official) and ``"fill_region"`` (null or a file ref with a ``channel``)."""
    task = body.get("task", "drag")
    if task not in TASKS:
        raise PreviewRequestError(f"task: {short_repr(task)} is not one of {', '.join(TASKS)}")
    overlap = body.get("overlap", "keep object")
    if overlap not in OVERLAPS:
        raise PreviewRequestError(f"overlap: {short_repr(overlap)} is not one of {', '.join(OVERLAPS)}")
    fill, channel = None, "alpha"
    if body.get("fill_region") not in (None, "", {}):
        fill = parse_file_ref(body["fill_region"], "fill_region")
        channel = body["fill_region"].get("channel", "alpha") if isinstance(body["fill_region"], dict) else "alpha"
        if channel not in MASK_CHANNELS:
            raise PreviewRequestError(f"fill_region.channel: {short_repr(channel)} is not one of {', '.join(MASK_CHANNELS)}")
    return task, overlap, fill, channel


def warp_preview(image: torch.Tensor, points, mask: torch.Tensor | None = None, *, holes: bool = True,
                 handle_on_cell: str = "paper"):
    """Warp ``image`` ([H, W, 3] float 0..1, image pixels) by ``points`` (DragPoints) on the latent grid.

    The request is checked by :func:`fastdrag_core.points.check_drag`, the same validation
    FastDragPoints and FastDragWarp run, so the preview refuses exactly what the nodes refuse (an
    empty mask, a point outside the image or in VAEEncode's crop margin, too many drags, ...).

    Args:
        image: [H, W, 3] float tensor in 0..1.
        points: a ``DragPoints``; rescaled to the image when it was placed on another size.
        mask: [H, W] editable region (> 0 = editable) or None = whole image (as FastDragPoints with
            its mask input unconnected). An all-zero mask is refused, as the node refuses it.
        holes: tint the null cells (filled by BNNI) magenta.

    Returns:
        (preview [h, w, 3] float 0..1 on the latent grid of VAEEncode's crop, info dict with
        ``grid`` [w, h], ``holes`` (null cells), ``mask_cells``, ``drags``, ``whole_image`` (no mask)).

    Raises:
        PreviewRequestError: whatever :func:`check_drag` refuses, or an image that is not [H, W, 3].
    """
    grid, image_hw = pool_to_grid(image)
    return warp_preview_grid(grid, image_hw, points, mask, holes=holes, handle_on_cell=handle_on_cell)


def pool_to_grid(image: torch.Tensor):
    """``image`` ([H, W, 3] float 0..1) average-pooled onto the latent grid of VAEEncode's crop:
    ([h, w, 3] mean colour per 8x8 cell, (H, W)), what the ``*_grid`` previews take."""
    if image.ndim != 3 or image.shape[-1] != 3:
        raise PreviewRequestError(f"image: expected [H, W, 3], got {tuple(image.shape)}")
    H, W = int(image.shape[0]), int(image.shape[1])
    y0, x0, kept_h, kept_w = vae_crop((H, W))
    x = image.permute(2, 0, 1)[None].float()[..., y0:y0 + kept_h, x0:x0 + kept_w]  # like VAEEncode
    grid = F.avg_pool2d(x, LATENT_FACTOR)[0].permute(1, 2, 0) if kept_h and kept_w else image.new_zeros(0, 0, 3)
    return grid, (H, W)


def _grid_size(grid: torch.Tensor, drag) -> tuple[int, int]:
    """(h, w) of the latent grid of a checked drag; refuses a ``grid`` of another shape."""
    _, _, kept_h, kept_w = drag.crop
    h, w = kept_h // LATENT_FACTOR, kept_w // LATENT_FACTOR
    if tuple(grid.shape) != (h, w, 3):
        raise PreviewRequestError(f"image: expected a [{h}, {w}, 3] latent-grid picture, got {tuple(grid.shape)}")
    return h, w


def warp_preview_grid(grid: torch.Tensor, image_hw, points, mask: torch.Tensor | None = None, *,
                      holes: bool = True, handle_on_cell: str = "paper"):
    """:func:`warp_preview` of a picture already reduced to the latent grid: ``grid`` [h, w, 3]
    float 0..1 is the mean colour of each 8x8 cell of VAEEncode's crop of the (H, W) = ``image_hw``
    picture (the route reduces the file while it decodes it, never holding it at full size as float).
    ``points`` and ``mask`` are in pixels of the full picture, as for :func:`warp_preview`."""
    from . import bnni_fill, lwf_warp
    from .points import check_drag

    H, W = int(image_hw[0]), int(image_hw[1])
    try:
        drag = check_drag(points, (H, W), mask)
    except ValueError as e:
        raise PreviewRequestError(str(e)) from None
    h, w = _grid_size(grid, drag)
    # +1: pixel values live in 1..2 so no valued cell is exactly 0; the official BNNI order treats
    # channel 0 == 0 as "no value" (quirk Q4), which black / pure blue pixels would otherwise hit.
    # The warp moves values and BNNI averages them (weights sum to 1), so the offset comes back out.
    lat = grid.float().permute(2, 0, 1)[None] + 1.0  # [1, 3, h, w]
    warped, null = lwf_warp(lat, drag.handles, drag.targets, drag.mask, fill="zero", handle_on_cell=handle_on_cell)
    out = bnni_fill(warped, null, order="official")
    null = null.reshape(-1, h, w)[0]
    out = (out[0].permute(1, 2, 0) - 1.0).clamp(0, 1)
    if holes and bool(null.any()):
        tint = torch.tensor(HOLE_TINT, dtype=out.dtype)
        out = torch.where(null[..., None], 0.45 * out + 0.55 * tint, out)
    info = {"grid": [w, h], "holes": int(null.sum()), "mask_cells": int(drag.mask.sum()),
            "drags": len(drag.points), "whole_image": drag.image_mask is None}
    return out, info


def object_move_preview(image: torch.Tensor, points, mask: torch.Tensor | None, task: str, *,
                        overlap: str = "keep object", fill_region: torch.Tensor | None = None,
                        holes: bool = True):
    """Object moving / copy of ``image`` ([H, W, 3] float 0..1) on the latent grid, as
    FastDragMoveObject does it to the latent (``fastdrag_core.object_move``): the average-pooled
    picture is the "latent", the object is pasted at the target and, when moving, its old place
    filled from the tiled patch. With ``holes`` the filled cells are tinted magenta (the fill is
    blended in with the soft mask, so partly filled cells are tinted in proportion).

    Args:
        task: "move object" or "copy object".
        overlap: "keep object" (the moved object stays on top) or "official".
        fill_region: [H, W] image-resolution fill region (> 0 = set) or None.
    Returns:
        (preview [h, w, 3], info dict as :func:`warp_preview`'s, ``holes`` = the filled cells,
        plus ``moved`` = object cells and ``shift`` = [dx, dy] latent cells).
    Raises:
        PreviewRequestError: what the nodes refuse (several drags, no mask, a fill region of another
        size, ...).
    """
    grid, image_hw = pool_to_grid(image)
    return object_move_preview_grid(grid, image_hw, points, mask, task, overlap=overlap,
                                    fill_region=fill_region, holes=holes)


def object_move_preview_grid(grid: torch.Tensor, image_hw, points, mask: torch.Tensor | None, task: str, *,
                             overlap: str = "keep object", fill_region: torch.Tensor | None = None,
                             holes: bool = True):
    """:func:`object_move_preview` of a picture already reduced to the latent grid (``grid`` and
    ``image_hw`` as for :func:`warp_preview_grid`). ``points``, ``mask`` and ``fill_region`` are in
    pixels of the full picture, mapped to the grid by the nodes' rules (``check_drag``,
    ``region_to_latent``)."""
    from .object_move import move_object, object_move_from_drag, region_to_latent, shift_cells
    from .points import check_drag

    H, W = int(image_hw[0]), int(image_hw[1])
    try:
        drag = check_drag(points, (H, W), mask)
        args = object_move_from_drag(drag)
    except ValueError as e:
        raise PreviewRequestError(str(e)) from None
    h, w = _grid_size(grid, drag)
    fill = None
    if fill_region is not None:
        if tuple(fill_region.shape) != (H, W):
            raise PreviewRequestError(f"fill_region: {'x'.join(str(d) for d in reversed(fill_region.shape))} (WxH) "
                                      f"does not match the {W}x{H} image")
        fill = region_to_latent(fill_region, drag.crop, (h, w))
    lat = grid.float().permute(2, 0, 1)[None]  # [1, 3, h, w]
    mode = task.split()[0]
    try:
        moved = move_object(lat, args.mask, args.shift, args.target, mode, fill, keep_object=overlap == "keep object")
    except ValueError as e:
        raise PreviewRequestError(str(e)) from None
    out = moved[0].permute(1, 2, 0).clamp(0, 1)
    filled = torch.zeros(h, w)
    if mode == "move":
        filled = args.mask[0, 0].clone()
        if overlap == "keep object":  # the pasted object covers the fill
            filled = filled * (1 - shift_cells(args.mask, *args.shift)[0, 0])
    if holes and bool((filled > 0).any()):
        a = (0.55 * filled)[..., None]
        out = (1 - a) * out + a * torch.tensor(HOLE_TINT, dtype=out.dtype)
    info = {"grid": [w, h], "holes": int((filled > 0).sum()), "mask_cells": int(drag.mask.sum()),
            "drags": len(drag.points), "whole_image": drag.image_mask is None,
            "moved": int((args.mask > 0).sum()), "shift": [args.shift[1], args.shift[0]]}
    return out, info


class PreviewPicture:
    """What the preview needs of a picture: its size as LoadImage reads it (``size`` = (H, W)) and
    ``grid``, its mean colour per latent cell of VAEEncode's crop ([H//8, W//8, 3] uint8)."""

    def __init__(self, grid: np.ndarray, size: tuple[int, int]):
        self.grid, self.size = grid, size

    @property
    def nbytes(self) -> int:
        return self.grid.nbytes


def picture_grid(img: Image.Image) -> PreviewPicture:
    """Reduce a lazily opened picture (``Image.open``, nothing decoded yet) to the latent grid of
    :func:`warp_preview_grid` while decoding it, as LoadImage reads it (first frame, EXIF orientation,
    alpha dropped): a JPEG is decoded at 1/8 scale (``draft``: its DCT does the reduction), any
    other format once, then box-averaged per 8x8 cell of VAEEncode's crop. At most one full-size
    copy exists, and only while this runs; the caller checks ``img.size`` first."""
    raw_w, raw_h = img.size
    if img.format == "JPEG":
        img.draft("RGB", (max(1, raw_w // LATENT_FACTOR), max(1, raw_h // LATENT_FACTOR)))
    swapped = img.getexif().get(EXIF_ORIENTATION, 1) in (5, 6, 7, 8)  # a quarter turn (exif_transpose's rule)
    ImageOps.exif_transpose(img, in_place=True)  # in place: no second full-size copy
    W, H = (raw_h, raw_w) if swapped else (raw_w, raw_h)
    y0, x0, kept_h, kept_w = vae_crop((H, W))
    h, w = kept_h // LATENT_FACTOR, kept_w // LATENT_FACTOR
    if h == 0 or w == 0:  # smaller than one cell: check_drag refuses it with the reason
        return PreviewPicture(np.zeros((h, w, 3), dtype=np.uint8), (H, W))
    if img.mode == "I":
        img = img.point(lambda v: v * (1 / 255))
    sx, sy = img.size[0] / W, img.size[1] / H  # 1, or about 1/8 for a JPEG decoded by draft
    if img.mode != "RGB":
        img = img.convert("RGB")
    grid = img.resize((w, h), Image.BOX, box=(x0 * sx, y0 * sy, (x0 + kept_w) * sx,
                                                               (y0 + kept_h) * sy))
    return PreviewPicture(np.array(grid, dtype=np.uint8), (H, W))


class DecodedImageCache:
    """Decoded files keyed by (path, mtime, size, what), least recently used first out, bounded by
    the bytes of the arrays it holds (an array larger than the bound is returned, not kept)."""

    def __init__(self, max_bytes: int):
        self.max_bytes = int(max_bytes)
        self.nbytes = 0
        self._items: OrderedDict = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: str, what: str, load):
        st = os.stat(path)
        key = (path, st.st_mtime_ns, st.st_size, what)
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
        value = load(path)
        size = value.nbytes
        with self._lock:
            if size <= self.max_bytes and key not in self._items:
                self._items[key] = value
                self.nbytes += size
                while self.nbytes > self.max_bytes:
                    _, old = self._items.popitem(last=False)
                    self.nbytes -= old.nbytes
        return value
