"""Latent warpage function (LWF) and latent relocation F_WR (FastDrag §3.2, method spec §2).

Every masked latent cell p is a "feature point". Each drag d_i = (s_i -> e_i) pulls p by a
component vector v_i(p) = alpha_i(p) * delta_i, where alpha_i is the stretch factor of the ray
from the handle s_i through p to the circle O around the mask's bounding box. The components are
mixed with normalised inverse-distance weights w_i(p) and the cell's value is copied (forward
mapping, nearest cell, round-half-even) to round(p + v(p)). The first source in raster order wins a
collision; cells of the mask that nobody claims form the null region N, filled later by BNNI.

The float32 arithmetic below repeats the official implementation operation for operation
(XuanjiaZ/FastDrag ``utils/continuous_drag.py``, commit def3c4e), but for all cells and drags at
once, so destinations are bit-identical on CPU. Geometry is always computed on the CPU in float32
(it is a few thousand numbers); only the final gather/scatter runs on the latent's device.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ._validate import as_coords, as_latent, as_mask

FILL_MODES = ("zero", "keep")
HANDLE_ON_CELL_MODES = ("paper", "official")

_RADIUS_EPS = 1e-6  # eps of torch.nn.PairwiseDistance, which the official circle radius uses
_WEIGHT_EPS = 1e-4  # omega_i(p) = 1 / (||p - s_i|| + 1e-4)


@dataclass(frozen=True)
class RelocationPlan:
    """Where each kept source cell goes, for one mask on an H x W grid.

    ``sources`` and ``destinations`` are flat raster indices (r * W + c), int64, CPU; sources are
    increasing. ``claimed`` is a bool [H, W] map of the cells that received a relocated value.
    """

    sources: torch.Tensor
    destinations: torch.Tensor
    claimed: torch.Tensor


def circle_of_mask(cells_rc: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Circle O through the corners of the mask cells' bounding box (spec §2.2).

    Args:
        cells_rc: int64 [M, 2] (row, col) of the mask cells.
    Returns:
        centre c_O as float32 [2] in (y, x), radius R as a float32 scalar tensor
        (R = ||c_O - corner + 1e-6||, the official PairwiseDistance).
    """
    lo = cells_rc.min(dim=0).values.to(torch.float32)
    hi = cells_rc.max(dim=0).values.to(torch.float32)
    centre = torch.stack(((lo[0] + hi[0]) / 2, (lo[1] + hi[1]) / 2))
    radius = F.pairwise_distance(centre, lo, p=2.0, eps=_RADIUS_EPS)
    return centre, radius


def displacement_field(
    cells_rc: torch.Tensor,
    handles_yx: torch.Tensor,
    targets_yx: torch.Tensor,
    centre: torch.Tensor,
    radius: torch.Tensor,
    handle_on_cell: str,
) -> torch.Tensor:
    """v(p) = sum_i w_i(p) alpha_i(p) delta_i for every mask cell p (spec §2.3-2.4), float32 [M, 2] (y, x).

    Cells whose vector is undefined come out non-finite with ``handle_on_cell="official"``
    (p = s_i exactly, or a negative discriminant from round-off); ``"paper"`` gives them
    alpha_i = 1 (the limit at the handle) and clamps the discriminant to 0.
    """
    cy, cx = cells_rc.to(torch.float32).unbind(dim=1)  # C, [M] each
    ay, ax = handles_yx.unbind(dim=1)  # A = s_i, [N] each
    oa = handles_yx - centre  # OA, [N, 2]
    oay, oax = oa.unbind(dim=1)
    d_oa = torch.linalg.vector_norm(oa, dim=-1)  # |OA|, [N]
    # Components are kept as separate contiguous [M, N] planes (fast elementwise maths); the norms
    # run torch's kernel on contiguous [..., 2] pairs, the one torch.norm uses on the official
    # per-cell [2] vectors (another layout takes another kernel that can round differently).
    acy = cy[:, None] - ay  # AC = p - s_i
    acx = cx[:, None] - ax
    d_ac = _norm2(acy, acx)  # |AC|
    e_y, e_x = acy / d_ac, acx / d_ac  # unit ray direction u
    # lambda = (s_i - c_O) . u, as dot(AC, OA) / |AC| (float32 products, then one add: torch.dot)
    l0 = (acy * oay + acx * oax) / d_ac
    disc = radius**2 - d_oa**2 + l0**2
    if handle_on_cell == "paper":
        disc = disc.clamp_min(0.0)
    rho = torch.sqrt(disc) - l0  # |s_i -> o|, along u
    apy, apx = rho * e_y, rho * e_x
    alpha = _norm2(acy - apy, acx - apx) / _norm2(apy, apx)  # |o -> p| / |s_i -> o|
    if handle_on_cell == "paper":
        alpha = torch.where(d_ac == 0, torch.ones_like(alpha), alpha)
    delta = targets_yx - handles_yx  # delta_i, [N, 2]
    v_i = alpha[..., None] * delta  # component warpage vectors, [M, N, 2]
    omega = torch.reciprocal(d_ac + _WEIGHT_EPS)  # 1 / (|p - s_i| + 1e-4)
    w = omega / omega.sum(dim=-1, keepdim=True)
    return (w[..., None] * v_i).sum(dim=1)


def _norm2(y: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """||(y, x)|| elementwise, exactly as torch.norm computes it on a [2] vector."""
    return torch.linalg.vector_norm(torch.stack((y, x), dim=-1), dim=-1)


def relocation_plan(
    mask_hw: torch.Tensor,
    handles_xy: torch.Tensor,
    targets_xy: torch.Tensor,
    handle_on_cell: str = "paper",
) -> RelocationPlan:
    """F_WR: destinations of every mask cell, collisions resolved first-come in raster order.

    Args:
        mask_hw: bool [H, W] on the CPU, at least one True.
        handles_xy, targets_xy: float32 [N, 2] latent-grid (x, y) on the CPU.
    """
    height, width = mask_hw.shape
    cells = torch.nonzero(mask_hw)  # raster order, (row, col)
    centre, radius = circle_of_mask(cells)
    v = displacement_field(
        cells, handles_xy.flip(-1), targets_xy.flip(-1), centre, radius, handle_on_cell
    )
    dest = torch.round(cells.to(torch.float32) + v)  # round half to even, like torch.round
    defined = torch.isfinite(dest).all(dim=-1)
    src_flat = cells[:, 0] * width + cells[:, 1]
    cells_kept = src_flat[defined]
    dest = dest[defined]
    dest_r = dest[:, 0].clamp(0, height - 1).to(torch.int64)
    dest_c = dest[:, 1].clamp(0, width - 1).to(torch.int64)
    dest_flat = dest_r * width + dest_c
    # First come wins: the smallest raster index of the sources aimed at a cell claims it.
    no_source = height * width
    winner = torch.full((height * width,), no_source, dtype=torch.int64)
    winner.scatter_reduce_(0, dest_flat, cells_kept, reduce="amin")
    wins = winner[dest_flat] == cells_kept
    claimed = (winner < no_source).view(height, width)
    return RelocationPlan(cells_kept[wins], dest_flat[wins], claimed)


def lwf_warp(
    latent: torch.Tensor,
    handles: torch.Tensor,
    targets: torch.Tensor,
    mask: torch.Tensor,
    *,
    fill: str = "zero",
    handle_on_cell: str = "paper",
) -> tuple[torch.Tensor, torch.Tensor]:
    """Warp a latent by FastDrag's LWF and latent relocation.

    Args:
        latent: [B, C, H, W] float32/float16/bfloat16 on any device (z_t at the edit timestep).
        handles, targets: [N, 2] latent-grid (x, y): x = column, y = row; latent[..., r, c] is
            centred at (x=c, y=r). Fractional values allowed; one set of drags for the batch.
        mask: [H, W] or [B, H, W], bool or float; non-zero = editable.
        fill: ``"zero"`` clears the masked cells before relocation (official "interpolation"
            and "0" modes); ``"keep"`` relocates onto the untouched latent (official "ori").
        handle_on_cell: ``"official"`` drops cells whose warp vector is undefined (a cell exactly
            on a handle, or a negative discriminant from round-off), as the released code does
            (which crashes when that cell is the first in raster order; here it never does).
            ``"paper"`` (default) gives such a cell the full drag vector (alpha = 1, the limit of
            the paper's formula) and clamps the discriminant to 0. Both give identical results
            whenever no cell is degenerate; the paper's DragBench numbers came from the official
            behaviour.
    Returns:
        (warped, null_mask): warped has the latent's dtype and device; null_mask is bool
        [B, H, W], the editable cells that received no relocated value (the region BNNI fills).
    """
    if fill not in FILL_MODES:
        raise ValueError(f"lwf_warp: fill must be one of {FILL_MODES}, got {fill!r}")
    if handle_on_cell not in HANDLE_ON_CELL_MODES:
        raise ValueError(
            f"lwf_warp: handle_on_cell must be one of {HANDLE_ON_CELL_MODES}, got {handle_on_cell!r}"
        )
    batch, channels, height, width = as_latent(latent, "lwf_warp").shape
    handles_xy, targets_xy = as_coords(handles, targets, "lwf_warp")
    masks = as_mask(mask, batch, height, width, "lwf_warp")  # bool [B, H, W] on the CPU

    warped = latent.clone()
    null_mask = torch.zeros(batch, height, width, dtype=torch.bool)
    flat_src = latent.reshape(batch, channels, height * width)
    flat_dst = warped.view(batch, channels, height * width)
    plans: dict[bytes, RelocationPlan] = {}
    for b in range(batch):
        key = masks[b].numpy().tobytes()
        plan = plans.get(key)
        if plan is None:
            plan = relocation_plan(masks[b], handles_xy, targets_xy, handle_on_cell)
            plans[key] = plan
        if fill == "zero":
            flat_dst[b, :, masks[b].view(-1).to(latent.device)] = 0
        src = plan.sources.to(latent.device)
        dst = plan.destinations.to(latent.device)
        flat_dst[b, :, dst] = flat_src[b, :, src]
        null_mask[b] = masks[b] & ~plan.claimed
    return warped, null_mask.to(latent.device)
