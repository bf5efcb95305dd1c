"""The official object moving / copy computations (XuanjiaZ/FastDrag def3c4e, ``utils/shift_test.py``
and the preprocessing of ``utils/ui_utils.py:run_drag``), transcribed operation for operation,
torch only (torchvision's 0.15 tensor ``resize`` is bilinear without antialias, i.e.
``F.interpolate(..., "bilinear", align_corners=False, antialias=False)``).

The reference of the tests, written from the official code and kept deliberately close to it (the
cat-based shift, the repeat-based tiling, the if/else bounds, the failures): no import from the
pack. Used by tests/test_object_move.py and the server-side float64 pipeline reference.
"""

import torch
import torch.nn.functional as F


def shift_matrix(matrix, x, y):
    """Shift columns by x and rows by y, zeros entering; fails (shape mismatch later) beyond the size."""
    b, c = matrix.size(0), matrix.size(1)
    mtype = matrix.dtype
    if x > 0:
        matrix = torch.cat([torch.zeros(b, c, matrix.size(2), x, dtype=matrix.dtype), matrix[:, :, :, :-x]], dim=3)
    elif x < 0:
        matrix = torch.cat([matrix[:, :, :, -x:], torch.zeros(b, c, matrix.size(2), -x, dtype=matrix.dtype)], dim=3)
    if y > 0:
        matrix = torch.cat([torch.zeros(b, c, y, matrix.size(3), dtype=matrix.dtype), matrix[:, :, :-y]], dim=2)
    elif y < 0:
        matrix = torch.cat([matrix[:, :, -y:], torch.zeros(b, c, -y, matrix.size(3), dtype=matrix.dtype)], dim=2)
    return matrix.to(dtype=mtype)


def copy_past(ori_x, mask_target, shift_yx):
    shift_y, shift_x = int(shift_yx[0] / 4), int(shift_yx[1] / 4)
    dtype = ori_x.dtype
    x_cp_target = shift_matrix(ori_x.clone(), shift_x, shift_y) * mask_target
    return (ori_x * (1 - mask_target) + x_cp_target).to(dtype=dtype)


def part_to_all(ori_x, target_point):
    """target_point: float32 tensor (y, x). The official names x for rows and y for columns."""
    R = 6
    maxp_h, maxp_w = int(ori_x.shape[2]), int(ori_x.shape[3])
    y0 = (target_point - R).to(dtype=torch.int)[1] if ((target_point - R)[1] >= 0).all() else 0
    y1 = (target_point + R).to(dtype=torch.int)[1] if ((target_point + R)[1] < maxp_w).all() else maxp_w
    x0 = (target_point - R).to(dtype=torch.int)[0] if ((target_point - R)[0] >= 0).all() else 0
    x1 = (target_point + R).to(dtype=torch.int)[0] if ((target_point + R)[0] < maxp_h).all() else maxp_h
    rep_h = int((maxp_h / (x1 - x0)) + 1)
    rep_w = int((maxp_w / (y1 - y0)) + 1)
    all_x = ori_x[:, :, x0:x1, y0:y1].repeat(1, 1, rep_h, rep_w)
    return all_x[:, :, :maxp_h, :maxp_w]


def paint_past(invert_code, invert_code_d, mask_cp_handle, mask_cp_target, target_point=None, mask_fill=None):
    if target_point is None:
        all_x = invert_code_d
    elif mask_fill is not None:
        index_1 = torch.nonzero(mask_fill)
        if len(index_1) == 0:
            all_x = part_to_all(invert_code_d, target_point)
        else:
            min_y, min_x = torch.min(index_1, dim=0)[0][-2:]
            max_y, max_x = torch.max(index_1, dim=0)[0][-2:]
            all_x = part_to_all(invert_code_d, torch.Tensor([(min_y + max_y) / 2, (min_x + max_x) / 2]))
    else:
        all_x = part_to_all(invert_code_d, target_point)
    invert_code = invert_code * (1 - mask_cp_handle) + all_x * mask_cp_handle
    return invert_code.to(dtype=invert_code_d.dtype)


def latent_edit(invert_code, mask_cp_handle, shift_yx, target_point, task, mask_fill=None):
    """``run_drag``'s one-step latent copy: copy_past, then paint_past for "object moving".
    ``shift_yx``: half-resolution (dy, dx) tensor; ``target_point``: half-resolution target / 4."""
    shift_y, shift_x = int(shift_yx[0] / 4), int(shift_yx[1] / 4)
    mask_cp_target = shift_matrix(mask_cp_handle, shift_x, shift_y)
    invert_code_d = invert_code.clone()
    invert_code = copy_past(invert_code, mask_cp_target, shift_yx)
    if task == "object moving":
        invert_code = paint_past(invert_code, invert_code_d, mask_cp_handle, mask_cp_target, target_point,
                                 mask_fill=mask_fill)
    return invert_code


def preprocess(points, mask, full_h, full_w, mask_fill=None):
    """``run_drag``'s meta data: points [[x, y], ...] (handle, target, ...) in image pixels and
    [H, W] masks (numbers, > 0 = set) -> (mask_cp_handle, shift_yx, target_point, mask_fill)."""
    sup_h, sup_w = int(0.5 * full_h), int(0.5 * full_w)

    def to_latent_soft(m):
        m = torch.as_tensor(m).float().clone()
        m[m > 0.0] = 1.0
        m = m.reshape(1, 1, *m.shape[-2:])
        m = F.interpolate(m, (sup_h, sup_w), mode="nearest")
        return F.interpolate(m, (int(m.shape[-2] / 4), int(m.shape[-1] / 4)), mode="bilinear",
                             align_corners=False, antialias=False)

    handles, targets = [], []
    for idx, point in enumerate(points):
        cur = torch.round(torch.tensor([point[1] / full_h * sup_h, point[0] / full_w * sup_w]))
        (handles if idx % 2 == 0 else targets).append(cur)
    shift_yx = targets[0] - handles[0]
    return (to_latent_soft(mask), shift_yx, targets[0] / 4,
            None if mask_fill is None else to_latent_soft(mask_fill))
