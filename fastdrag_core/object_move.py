"""Object moving and object copy: the official FastDrag's second task (method spec §5).

The official UI's "Object Moving/Copy" tab (XuanjiaZ/FastDrag ``utils/ui_utils.py:run_drag`` with
``task_cat`` "object moving" / "object copy", and ``utils/shift_test.py``, commit def3c4e) edits the
noisy latent z_t at the edit timestep without LWF or BNNI:

* copy (``copy_past``): ``z <- z (1 - M_t) + S(z) M_t``, where ``S`` shifts the grid by the integer
  latent shift (dy, dx), filling with zeros, and ``M_t = S(M)`` is the soft object mask M shifted
  the same way;
* move (``paint_past`` after the copy): the source region is filled with a tiling of a 12 x 12
  patch (radius 6, cut at the grid's edges, bounds truncated toward zero) of the ORIGINAL latent
  centred on the target point, or on the centre of the bounding box of a "fill" region when one is
  given and not empty, blended in with the soft source mask M over the whole source region:
  ``z <- z (1 - M) + T M``. Where source and target overlap, the fill therefore overwrites the moved
  object (an official quirk; ``keep_object=True`` pastes the object last instead);
* the official ``shift_matrix`` fails for a shift larger than the latent (``allow_out_of_grid=True``
  moves the object out of the picture instead).

The arithmetic repeats the official expressions operation for operation, so the result matches
them to the last bit in the latent's dtype (the masks are float32, as the official ones).

The image -> latent mapping (spec §1.7): points at half resolution, rounded half-to-even, divided
by 4 (:func:`fastdrag_core.points.image_points_to_latent`); the shift is the difference of the
first drag's target and handle truncated toward zero; the soft mask is the binary image mask
legacy-nearest resized to half resolution and bilinearly (no antialias) to the latent grid
(:func:`fastdrag_core.points.image_mask_to_latent_soft`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

MODES = ("move", "copy")
PATCH_RADIUS = 6  # the official fill patch is 2 x 6 latent cells wide


def shift_cells(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
    """``S(x)``: ``out[..., r, c] = x[..., r - dy, c - dx]``, zeros where that leaves the grid.

    Shifts of the grid's size or more give all zeros (the official ``shift_matrix`` does so for
    exactly the size and fails beyond; :func:`move_object` decides what to do there).
    """
    h, w = x.shape[-2:]
    out = torch.zeros_like(x)
    if abs(dy) >= h or abs(dx) >= w:
        return out
    out[..., max(dy, 0):h + min(dy, 0), max(dx, 0):w + min(dx, 0)] = \
        x[..., max(-dy, 0):h - max(dy, 0), max(-dx, 0):w - max(dx, 0)]
    return out


def _patch_bounds(centre: float, size: int, axis: str) -> tuple[int, int]:
    """The official ``part_to_all`` bounds on one axis: [trunc(c - 6), trunc(c + 6)) in float32,
    replaced by 0 / ``size`` where they leave the grid."""
    c = torch.tensor(centre, dtype=torch.float32)
    lo, hi = float(c - PATCH_RADIUS), float(c + PATCH_RADIUS)
    start = math.trunc(lo) if lo >= 0 else 0
    stop = math.trunc(hi) if hi < size else size
    if stop <= start:
        raise ValueError(f"the fill patch centred at {axis} = {centre:g} lies outside the latent grid "
                         f"(0 to {size} cells); choose a target or fill region inside the picture")
    return start, stop


def fill_centre(target, fill_region: torch.Tensor | None) -> tuple[float, float]:
    """Centre (y, x) in latent cells of the fill patch: the centre of the bounding box of the
    non-zero cells of ``fill_region``, or ``target`` when there is none or it is empty."""
    if fill_region is not None:
        idx = torch.nonzero(fill_region.reshape(fill_region.shape[-2:]))
        if len(idx):
            lo, hi = idx.min(dim=0).values, idx.max(dim=0).values
            return (int(lo[0] + hi[0]) / 2, int(lo[1] + hi[1]) / 2)
    return float(target[0]), float(target[1])


def fill_tiling(z: torch.Tensor, centre) -> torch.Tensor:
    """``T``: the whole grid tiled with the latent patch around ``centre`` (y, x) (official
    ``part_to_all``), starting at the grid's top-left corner."""
    h, w = z.shape[-2:]
    y0, y1 = _patch_bounds(float(centre[0]), h, "y")
    x0, x1 = _patch_bounds(float(centre[1]), w, "x")
    patch = z[..., y0:y1, x0:x1]
    reps = (-(-h // (y1 - y0)), -(-w // (x1 - x0)))
    return patch.repeat(1, 1, *reps)[..., :h, :w]


def move_object(z: torch.Tensor, mask: torch.Tensor, shift, target, mode: str = "move",
                fill_region: torch.Tensor | None = None, *, keep_object: bool = False,
                allow_out_of_grid: bool = False) -> torch.Tensor:
    """Move or copy the object under ``mask`` by ``shift`` latent cells (official FastDrag, §5).

    Args:
        z: [B, C, h, w] noisy latent at the edit timestep.
        mask: [1, 1, h, w] (or [h, w]) soft object mask M in [0, 1] (official ``mask_cp_handle``).
        shift: (dy, dx) integer latent cells.
        target: (y, x) latent cells (floats): centre of the fill patch when ``fill_region`` is
            absent or empty.
        mode: "move" (paste at the target and fill the source) or "copy" (paste only).
        fill_region: None or a soft latent mask like ``mask``: the fill patch is taken around the
            centre of the bounding box of its non-zero cells.
        keep_object: fill the source first and paste the object last, so the moved object stays
            whole where it overlaps its old place (off = official: the fill overwrites it).
        allow_out_of_grid: a shift larger than the grid moves the object out of the picture
            (off = official: refused, as ``shift_matrix`` fails there).
    Returns:
        z' with z's shape and dtype.
    Raises:
        ValueError: a bad mode, shapes that do not match, a non-integer shift, a shift beyond the
            grid (unless ``allow_out_of_grid``), or a fill patch that lies outside the grid.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}, got {mode!r}")
    if not isinstance(z, torch.Tensor) or z.ndim != 4:
        raise ValueError(f"z must be a [B, C, h, w] latent, got {getattr(z, 'shape', type(z).__name__)}")
    h, w = z.shape[-2:]
    m = _as_latent_mask(mask, (h, w), "mask").to(z.device)
    fill = None if fill_region is None else _as_latent_mask(fill_region, (h, w), "fill_region")
    dy, dx = (int(s) for s in shift)
    if (dy, dx) != tuple(shift):
        raise ValueError(f"shift must be whole latent cells (dy, dx), got {tuple(shift)}")
    if (abs(dy) > h or abs(dx) > w) and not allow_out_of_grid:
        raise ValueError(f"the shift of ({dy}, {dx}) latent cells (dy, dx) is larger than the {w}x{h} latent "
                         "grid, which the official code cannot do; move the target inside the picture")
    if mode == "copy" and (dy, dx) == (0, 0):
        return z.clone()  # nothing moves; the official blend z (1 - M) + z M is z up to rounding
    m_t = shift_cells(m, dy, dx)
    pasted = shift_cells(z, dy, dx) * m_t
    if mode == "copy":
        return (z * (1 - m_t) + pasted).to(z.dtype)
    tiles = fill_tiling(z, fill_centre(target, fill))
    if keep_object:
        filled = (z * (1 - m) + tiles * m).to(z.dtype)
        return (filled * (1 - m_t) + pasted).to(z.dtype)
    copied = (z * (1 - m_t) + pasted).to(z.dtype)
    return (copied * (1 - m) + tiles * m).to(z.dtype)


def _as_latent_mask(mask, hw, name: str) -> torch.Tensor:
    if not isinstance(mask, torch.Tensor) or mask.numel() != hw[0] * hw[1] or tuple(mask.shape[-2:]) != tuple(hw):
        raise ValueError(f"{name} must be a [1, 1, h, w] latent mask matching the {hw[1]}x{hw[0]} latent, got "
                         f"{list(getattr(mask, 'shape', [])) or type(mask).__name__}")
    return mask.reshape(1, 1, *hw).to(torch.float32)


@dataclass(frozen=True)
class ObjectMove:
    """The latent-grid arguments of :func:`move_object` for one drag, by the official rules.

    Attributes:
        mask: float32 [1, 1, h, w] soft object mask (official ``mask_cp_handle``).
        shift: (dy, dx) whole latent cells: trunc(target - handle).
        target: (y, x) latent cells of the target (official ``target_points[0] / 4``).
    """

    mask: torch.Tensor
    shift: tuple[int, int]
    target: tuple[float, float]


def object_move_args(handle_xy, target_xy, soft_mask: torch.Tensor) -> ObjectMove:
    """Official arguments from one drag on the latent grid.

    Args:
        handle_xy, target_xy: latent-grid (x, y) float32 points from
            :func:`fastdrag_core.points.image_points_to_latent` (multiples of 1/4).
        soft_mask: [h, w] soft latent mask (:func:`fastdrag_core.points.image_mask_to_latent_soft`).
    """
    handle = torch.as_tensor(handle_xy, dtype=torch.float32).reshape(2)
    target = torch.as_tensor(target_xy, dtype=torch.float32).reshape(2)
    # official: shift at half resolution, int(shift / 4); the latent points are half-res / 4 exactly
    d = target - handle
    shift = (math.trunc(float(d[1])), math.trunc(float(d[0])))
    m = soft_mask.to(torch.float32).reshape(1, 1, *soft_mask.shape[-2:])
    return ObjectMove(m, shift, (float(target[1]), float(target[0])))


def several_drags_message(n: int) -> str:
    return (f"moving or copying an object takes one drag (handle on the object, target where it goes), "
            f"got {n}; remove the others (the official code silently uses the first) or use the task 'drag'")


def region_to_latent(region: torch.Tensor, crop, latent_hw) -> torch.Tensor:
    """An image-resolution region ([H, W], > 0 = set; a fill region or the object's mask) as the
    official soft latent mask: cropped like VAEEncode (``crop`` from
    :func:`fastdrag_core.points.vae_crop`), then :func:`fastdrag_core.points.image_mask_to_latent_soft`."""
    from .points import image_mask_to_latent_soft

    y0, x0, kept_h, kept_w = crop
    return image_mask_to_latent_soft(region[y0:y0 + kept_h, x0:x0 + kept_w] > 0, tuple(latent_hw))


def object_move_from_drag(drag) -> ObjectMove:
    """:class:`ObjectMove` of a checked drag request (:func:`fastdrag_core.points.check_drag`).

    Raises:
        ValueError: several drags (:func:`several_drags_message`) or no mask (the whole picture
            would move).
    """
    if len(drag.handles) != 1:
        raise ValueError(several_drags_message(len(drag.handles)))
    if drag.image_mask is None:
        raise ValueError("moving or copying an object needs a mask of the object (without one the whole picture "
                         "would move); paint it (mask editor or Load Image (as Mask)) and connect it to "
                         "FastDragPoints' mask")
    soft = region_to_latent(drag.image_mask, drag.crop, drag.mask.shape)
    return object_move_args(drag.handles[0], drag.targets[0], soft)
