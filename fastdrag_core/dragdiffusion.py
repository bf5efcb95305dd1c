"""DragDiffusion's latent optimisation (Shi et al., CVPR 2024) in pure PyTorch (no ComfyUI import).

The official code is ``utils/drag_utils.py`` and ``utils/ui_utils.py::run_drag`` of
github.com/Yujun-Shi/DragDiffusion (HEAD ebe659a); where the paper and that code differ, this
module follows the code. Symbols:

* z_t: the DDIM-inverted latent at the edit timestep t (z-space: the VAE latent times its scale
  factor, as the UNet sees it); the only variable optimised.
* F(z): UNet decoder features (output of diffusers' ``up_blocks[2]``) bilinearly resized to half the
  image size, the *feature grid* (h2, w2) = (H // 2, W // 2). Points live on it as (row, col).
* h_i, g_i: handle and target points on the feature grid; h_i^0 the initial handles.
* d_i = (g_i - h_i) / ||g_i - h_i||: unit step towards the target.
* Motion supervision (official ``drag_diffusion_update``)::

      L_ms = sum_i (2 r_m + 1)^2 * mean_{q in patch(h_i, r_m)} | sg(F_q(z)) - F_{q + d_i}(z) |

  with the patch clipped to the grid and F_{q + d_i} bilinear (``interpolate_feature_patch``);
  points already within ``reach`` (2 feature pixels) of their target are skipped.
* Mask term (only when a mask is given; M = 1 editable)::

      lam * sum | x_{t-1}(z) - x_{t-1}(z_0) | * (1 - M)

  on the one-step DDIM prediction x_{t-1} at latent resolution.
* Point tracking after each Adam step: h_i <- argmin_{q in window(h_i, r_p)} || F_q(z) - F_{h_i^0}(z_0) ||_1.
* Stop when every ||h_i - g_i|| < reach, or after ``steps`` iterations.

:func:`optimise_latent` runs the loop around a caller-given ``forward(z) -> (x_{t-1}(z), F(z))``,
so the same loop drives ComfyUI's UNet in the node and small differentiable stand-ins in tests.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional, Sequence

import torch
import torch.nn.functional as F

from .grad_step import GradientStep

__all__ = [
    "DragSettings",
    "DragResult",
    "feature_grid_size",
    "points_to_feature_grid",
    "feature_grid_to_image",
    "mask_to_latent",
    "interpolate_feature_patch",
    "motion_supervision_loss",
    "mask_regulariser",
    "track_points",
    "handles_reached",
    "optimise_latent",
]

REACH = 2.0  # feature pixels: official ``check_handle_reach_target`` and the per-point skip


@dataclass(frozen=True)
class DragSettings:
    """Hyper-parameters of the drag loop (official defaults: ``run_drag`` / DragBench runner).

    Attributes:
        steps: maximum iterations (``n_pix_step``, 80); each runs one UNet forward (+ backward).
        lr: Adam learning rate on z_t (``latent_lr``, 0.01).
        lam: weight of the mask term (0.1); used only when a mask is given.
        r_m: motion-supervision patch radius (1: 3x3 patch).
        r_p: point-tracking search radius (3: 7x7 window).
        reach: stop / skip distance in feature pixels (2).
    """

    steps: int = 80
    lr: float = 0.01
    lam: float = 0.1
    r_m: int = 1
    r_p: int = 3
    reach: float = REACH

    def __post_init__(self):
        if int(self.steps) < 1:
            raise ValueError(f"steps must be >= 1, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise ValueError(f"lr must be a positive number, got {self.lr}")
        if not (math.isfinite(self.lam) and self.lam >= 0):
            raise ValueError(f"lam must be >= 0, got {self.lam}")
        if int(self.r_m) < 0 or int(self.r_p) < 0:
            raise ValueError(f"r_m and r_p must be >= 0, got r_m={self.r_m}, r_p={self.r_p}")


@dataclass
class DragResult:
    """What :func:`optimise_latent` returns.

    Attributes:
        z: the optimised latent (detached, the dtype/device of the input).
        handles: final tracked handles [N, 2] (row, col) on the feature grid.
        history: handles after tracking at every iteration, ``history[0]`` = the start positions.
        losses: loss of every iteration that took an optimiser step.
        iterations: UNet forwards run; ``steps_taken`` = optimiser steps (``len(losses)``).
        reached: whether the stop rule ended the loop (all handles within ``reach``).
        skipped_steps: steps skipped for inf / NaN gradients (float16 compute only, see ``grad_step``).
    """

    z: torch.Tensor
    handles: torch.Tensor
    history: list = field(default_factory=list)
    losses: list = field(default_factory=list)
    iterations: int = 0
    reached: bool = False
    skipped_steps: int = 0

    @property
    def steps_taken(self) -> int:
        return len(self.losses)


# -- mapping: image pixels <-> feature grid, mask -> latent --------------------------------------

def feature_grid_size(image_hw) -> tuple[int, int]:
    """(h2, w2) = (int(0.5 H), int(0.5 W)): the official supervision resolution ``sup_res``."""
    return int(0.5 * int(image_hw[0])), int(0.5 * int(image_hw[1]))


def points_to_feature_grid(points_xy, image_hw) -> torch.Tensor:
    """Official ``run_drag`` point mapping: image (x, y) -> feature grid (row, col).

    ``row = round(y / H * h2)``, ``col = round(x / W * w2)``: the ratio in float64 (Python floats),
    then float32 and ``torch.round`` (halves to even).

    Returns:
        float32 [N, 2] (row, col), integer-valued.
    """
    height, width = int(image_hw[0]), int(image_hw[1])
    h2, w2 = feature_grid_size(image_hw)
    pts = torch.as_tensor(points_xy, dtype=torch.float64).reshape(-1, 2)
    rc = torch.stack((pts[:, 1] / height * h2, pts[:, 0] / width * w2), dim=1)
    return torch.round(rc.to(torch.float32))


def feature_grid_to_image(points_rc, image_hw) -> torch.Tensor:
    """Feature grid (row, col) -> image (x, y) pixels: the inverse of the mapping above without the
    rounding (``x = col * W / w2``). Returns float64 [N, 2]."""
    height, width = int(image_hw[0]), int(image_hw[1])
    h2, w2 = feature_grid_size(image_hw)
    rc = torch.as_tensor(points_rc, dtype=torch.float64).reshape(-1, 2)
    return torch.stack((rc[:, 1] * width / w2, rc[:, 0] * height / h2), dim=1)


def mask_to_latent(mask: torch.Tensor, image_hw, latent_hw) -> torch.Tensor:
    """Official mask rule: binarise (> 0), legacy-nearest resize to the feature grid (h2, w2)
    (``run_drag``), then legacy-nearest to the latent (``drag_diffusion_update``).

    Args:
        mask: [H, W] image mask (bool or numeric), 1 = editable.
    Returns:
        bool [h, w] on the mask's device.
    """
    if mask.dim() != 2 or tuple(mask.shape) != (int(image_hw[0]), int(image_hw[1])):
        raise ValueError(f"mask must be [H, W] = {list(image_hw)}, got shape {list(mask.shape)}")
    m = (mask > 0).to(torch.float32)[None, None]
    m = F.interpolate(m, size=feature_grid_size(image_hw), mode="nearest")
    m = F.interpolate(m, size=(int(latent_hw[0]), int(latent_hw[1])), mode="nearest")
    return m[0, 0] > 0


# -- motion supervision ----------------------------------------------------------------------------

def _patch_bounds(point: torch.Tensor, radius: int, size_hw) -> tuple[int, int, int, int]:
    """Official clipped square around ``int(point)``: (r1, r2, c1, c2), half-open."""
    r, c = int(point[0]), int(point[1])
    return (max(0, r - radius), min(int(size_hw[0]), r + radius + 1),
            max(0, c - radius), min(int(size_hw[1]), c + radius + 1))


def interpolate_feature_patch(feat: torch.Tensor, y1, y2, x1, x2) -> torch.Tensor:
    """Bilinear sample of ``feat`` [B, C, H, W] on the patch whose corners are (y1, x1) and
    (y2, x2) (exclusive), all cells sharing one fractional offset: the official
    ``interpolate_feature_patch``, same arithmetic (weights from float32 corners, four slices).

    The official slicing breaks when the shifted patch touches the border (a negative start
    wraps, a slice past the end is cut short); there the feature map is padded by two replicated
    rows/columns first (a unit shift needs at most two), so border cells reuse their nearest
    feature instead of failing.
    """
    y1, y2, x1, x2 = (torch.as_tensor(v, dtype=torch.float32) for v in (y1, y2, x1, x2))
    x1_floor = torch.floor(x1).long()
    x1_cell = x1_floor + 1
    dx = int(torch.floor(x2).long() - x1_floor)
    y1_floor = torch.floor(y1).long()
    y1_cell = y1_floor + 1
    dy = int(torch.floor(y2).long() - y1_floor)

    wa = (x1_cell.float() - x1) * (y1_cell.float() - y1)
    wb = (x1_cell.float() - x1) * (y1 - y1_floor.float())
    wc = (x1 - x1_floor.float()) * (y1_cell.float() - y1)
    wd = (x1 - x1_floor.float()) * (y1 - y1_floor.float())

    yf, yc, xf, xc = int(y1_floor), int(y1_cell), int(x1_floor), int(x1_cell)
    height, width = feat.shape[-2:]
    if yf < 0 or xf < 0 or yc + dy > height or xc + dx > width:
        feat = F.pad(feat, (2, 2, 2, 2), mode="replicate")
        yf, yc, xf, xc = yf + 2, yc + 2, xf + 2, xc + 2
        if yf < 0 or xf < 0 or yc + dy > height + 4 or xc + dx > width + 4:
            raise ValueError(f"patch rows [{float(y1)}, {float(y2)}) x cols [{float(x1)}, {float(x2)}) "
                             f"lies more than two cells outside the {height}x{width} feature map")
    ia = feat[:, :, yf:yf + dy, xf:xf + dx]
    ib = feat[:, :, yc:yc + dy, xf:xf + dx]
    ic = feat[:, :, yf:yf + dy, xc:xc + dx]
    id_ = feat[:, :, yc:yc + dy, xc:xc + dx]
    return ia * wa + ib * wb + ic * wc + id_ * wd


def motion_supervision_loss(feat: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor,
                            r_m: int = 1, reach: float = REACH):
    """L_ms of the current features ``feat`` [1, C, h2, w2] (see the module docstring).

    Args:
        handles, targets: float32 [N, 2] (row, col) on the feature grid.
    Returns:
        a scalar tensor, or the float 0.0 when every point is within ``reach`` of its target.
    """
    loss = 0.0
    size = feat.shape[-2:]
    for pi, ti in zip(handles, targets):
        if (ti - pi).norm() < reach:
            continue
        di = (ti - pi) / (ti - pi).norm()
        r1, r2, c1, c2 = _patch_bounds(pi, r_m, size)
        f0_patch = feat[:, :, r1:r2, c1:c2].detach()
        f1_patch = interpolate_feature_patch(feat, r1 + di[0], r2 + di[0], c1 + di[1], c2 + di[1])
        if f1_patch.shape != f0_patch.shape:  # float rounding of r + d changed the patch size
            f1_patch = f1_patch[:, :, :r2 - r1, :c2 - c1]
        loss = loss + ((2 * r_m + 1) ** 2) * F.l1_loss(f0_patch, f1_patch)
    return loss


def mask_regulariser(x_prev: torch.Tensor, x_prev_0: torch.Tensor, mask_latent: torch.Tensor,
                     lam: float) -> torch.Tensor:
    """lam * sum |x_{t-1}(z) - x_{t-1}(z_0)| * (1 - M); ``mask_latent`` bool [h, w], True = editable."""
    keep = 1.0 - mask_latent.to(device=x_prev.device, dtype=x_prev.dtype)
    return lam * ((x_prev - x_prev_0) * keep).abs().sum()


# -- point tracking and the stop rule --------------------------------------------------------------

def track_points(feat0: torch.Tensor, feat1: torch.Tensor, handles: torch.Tensor,
                 handles_init: torch.Tensor, r_p: int = 3, windows: Optional[Sequence] = None) -> torch.Tensor:
    """Official ``point_tracking``: each handle moves to the cell of ``feat1`` nearest (L1 over
    channels) to the initial handle feature ``feat0[h_i^0]``, searched in the clipped
    (2 r_p + 1)^2 window around the current handle; ties go to the first cell in raster order.

    Args:
        feat0, feat1: [1, C, h2, w2].
        handles, handles_init: float32 [N, 2] (row, col).
        windows: optional per-point (r1, r2, c1, c2) search boxes replacing the default window.
    Returns:
        new float32 [N, 2] handles (the input is not modified).
    """
    size = feat0.shape[-2:]
    out = handles.clone()
    with torch.no_grad():
        for i in range(len(handles)):
            f0 = feat0[:, :, int(handles_init[i][0]), int(handles_init[i][1])]
            r1, r2, c1, c2 = windows[i] if windows is not None else _patch_bounds(handles[i], r_p, size)
            neighbour = feat1[:, :, r1:r2, c1:c2]
            dist = (f0.unsqueeze(-1).unsqueeze(-1) - neighbour).abs().sum(dim=1).squeeze(dim=0)
            row, col = divmod(int(dist.argmin().item()), dist.shape[-1])
            out[i, 0] = r1 + row
            out[i, 1] = c1 + col
    return out


def handles_reached(handles: torch.Tensor, targets: torch.Tensor, reach: float = REACH) -> bool:
    """Official ``check_handle_reach_target``: every ||h_i - g_i|| < reach (float32 norms)."""
    dists = [(p - q).norm() for p, q in zip(handles, targets)]
    return bool((torch.tensor(dists) < reach).all())


def _path_windows(handles_init: torch.Tensor, targets: torch.Tensor, r_p: int, size_hw) -> list:
    """Search boxes spanning each handle and its target, grown by r_p and clipped to the grid."""
    boxes = []
    for h, t in zip(handles_init, targets):
        r_lo, r_hi = sorted((int(h[0]), int(t[0])))
        c_lo, c_hi = sorted((int(h[1]), int(t[1])))
        boxes.append((max(0, r_lo - r_p), min(int(size_hw[0]), r_hi + r_p + 1),
                      max(0, c_lo - r_p), min(int(size_hw[1]), c_hi + r_p + 1)))
    return boxes


# -- the loop --------------------------------------------------------------------------------------

Forward = Callable[[torch.Tensor], tuple]


def optimise_latent(forward: Forward, z: torch.Tensor, handles: torch.Tensor, targets: torch.Tensor,
                    mask_latent: Optional[torch.Tensor], settings: DragSettings = DragSettings(), *,
                    reference: Optional[torch.Tensor] = None, compute_dtype: torch.dtype = torch.float32,
                    on_iteration: Optional[Callable[[int, "DragResult"], None]] = None) -> DragResult:
    """DragDiffusion's latent optimisation (official ``drag_diffusion_update``, real-image path).

    Each iteration: ``x_prev, feat = forward(z)``; from the second iteration on, track the handles;
    stop if all reached; else loss = L_ms (+ mask term) and one Adam step on z, by the pack's precision
    rule (:class:`fastdrag_core.grad_step.GradientStep`: float32 z, loss scaling when the network
    computes in float16, a step skipped on inf / NaN gradients). The gradient is taken with respect to
    z alone: parameters of the network behind ``forward`` get no gradient and no ``.grad``, whether or
    not they require grad.

    F(z_0) and x_{t-1}(z_0) are the first iteration's own outputs (detached): with no reference they
    come from the very computation the loop repeats, so the first mask-term gradient is exactly zero.

    Args:
        forward: ``forward(z) -> (x_prev [1, C, h, w], feat [1, C', h2, w2])``, differentiable in z.
        z: z_t [1, C, h, w]; not modified (a copy is optimised, in float32 unless float64).
        handles, targets: float32 [N, 2] (row, col) on the feature grid.
        mask_latent: bool [h, w] (True = editable) or None = no mask term (official: empty mask).
        reference: optional unedited z_0 (e.g. when ``z`` was already warped by FastDrag): F(z_0)
            and x_{t-1}(z_0) come from it, and the first iteration tracks every handle in the box
            spanning its start and its target (grown by r_p), since the content may already have moved.
        compute_dtype: the dtype the network behind ``forward`` computes in (float16: loss scaling).
        on_iteration: ``on_iteration(i, partial_result)`` after every iteration (progress, cancel).
    """
    if z.dim() != 4 or z.shape[0] != 1:
        raise ValueError(f"z must be one latent [1, C, h, w], got shape {list(z.shape)}")
    if handles.shape != targets.shape or handles.dim() != 2 or handles.shape[1] != 2 or len(handles) == 0:
        raise ValueError(f"handles {list(handles.shape)} and targets {list(targets.shape)} must both be [N, 2], N >= 1")
    handles = handles.to(torch.float32).cpu().clone()
    targets = targets.to(torch.float32).cpu().clone()
    handles_init = handles.clone()
    work_dtype = torch.float64 if z.dtype == torch.float64 else torch.float32
    code = z.detach().to(work_dtype).clone().requires_grad_(True)
    step_rule = GradientStep(torch.optim.Adam([code], lr=settings.lr), [code], compute_dtype, code.device.type)
    using_mask = mask_latent is not None and bool(mask_latent.any())
    result = DragResult(z=z.detach(), handles=handles.clone(), history=[handles.clone()])

    feat0 = x_prev_0 = None
    if reference is not None:
        with torch.no_grad():
            x_prev_0, feat0 = forward(reference.detach().to(work_dtype))
            x_prev_0, feat0 = x_prev_0.detach(), feat0.detach()

    for step in range(int(settings.steps)):
        x_prev, feat = forward(code)
        if feat0 is None:
            feat0, x_prev_0 = feat.detach(), x_prev.detach()
        elif step != 0:
            handles = track_points(feat0, feat, handles, handles_init, settings.r_p)
        else:  # reference given: where did the (possibly pre-moved) handles go?
            handles = track_points(feat0, feat, handles, handles_init, settings.r_p,
                                   windows=_path_windows(handles_init, targets, settings.r_p, feat.shape[-2:]))
        result.iterations = step + 1
        result.handles = handles.clone()
        if step != 0 or reference is not None:
            result.history.append(handles.clone())
        if handles_reached(handles, targets, settings.reach):
            result.reached = True
            if on_iteration is not None:
                on_iteration(step, result)
            break

        loss = motion_supervision_loss(feat, handles, targets, settings.r_m, settings.reach)
        if using_mask:
            loss = loss + mask_regulariser(x_prev, x_prev_0, mask_latent, settings.lam)
        if not isinstance(loss, torch.Tensor):  # nothing to pull and no mask term
            break
        if step_rule(loss):
            result.losses.append(float(loss.detach()))
        else:
            result.skipped_steps += 1
        del x_prev, feat, loss
        if on_iteration is not None:
            on_iteration(step, result)

    result.z = code.detach().to(z.dtype)
    return result
