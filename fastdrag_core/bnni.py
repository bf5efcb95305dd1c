"""BNNI: bilateral nearest-neighbour interpolation of the null region (FastDrag §3.3, spec §3).

A null cell q is filled with sum_loc w_loc * ref_loc / sum_loc w_loc over the nearest valued cell
in each of the four directions (left, right, up, down), w_loc = 1 / len_loc (cells along the row
or column). A direction without a valued cell is dropped and the weights renormalised; a cell
with no reference at all keeps its value.

Two readings exist:

* ``order="official"`` (the released code, which produced the paper's DragBench numbers): null
  cells are filled one by one in raster order, in place, so a cell already filled serves as the
  left/up reference of later ones, and "valued" means channel 0 != 0 in the current tensor (an
  exact zero anywhere in the latent counts as null too). Here it runs exactly, bit for bit, as an
  anti-diagonal wavefront: cell (i, j) reads only finished cells on earlier anti-diagonals (left
  and up) and originally valued cells (right and down, which are never written).
* ``order="paper"`` (the paper's figure): only cells that had a value before filling are
  references, skipping over other null cells, so the result does not depend on any order.

The arithmetic repeats the official per-cell expression: products ``(1/k) * ref`` rounded to the
latent's dtype, summed left, right, up, down, divided by the float64 weight sum (cast to float32).
The fill runs on the CPU with numpy (it is a short sequential recurrence); the result goes back to
the latent's device and dtype.
"""

from __future__ import annotations

import numpy as np
import torch

from ._validate import as_latent, as_mask

BNNI_ORDERS = ("official", "paper")


def _rounder(dtype: torch.dtype):
    """Function rounding a float32 array to ``dtype`` precision (round to nearest even), kept float32."""
    if dtype == torch.float16:
        return lambda a: a.astype(np.float16).astype(np.float32)
    if dtype == torch.bfloat16:
        def to_bf16(a):
            bits = np.ascontiguousarray(a, dtype=np.float32).view(np.uint32)
            rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) & np.uint32(0xFFFF0000)
            return np.where(np.isnan(a), a, rounded.view(np.float32))
        return to_bf16
    return lambda a: a


def _nearest_valued(valued: np.ndarray):
    """Static nearest valued cell in each direction, strictly beyond the cell itself.

    Args:
        valued: bool [B, H, W].
    Returns:
        left, right (column indices; -1 / W when none) and up, down (row indices; -1 / H when none),
        each int64 [B, H, W].
    """
    _, height, width = valued.shape
    cols = np.arange(width)[None, None, :]
    rows = np.arange(height)[None, :, None]
    left_incl = np.maximum.accumulate(np.where(valued, cols, -1), axis=2)
    right_incl = np.minimum.accumulate(np.where(valued, cols, width)[:, :, ::-1], axis=2)[:, :, ::-1]
    up_incl = np.maximum.accumulate(np.where(valued, rows, -1), axis=1)
    down_incl = np.minimum.accumulate(np.where(valued, rows, height)[:, ::-1, :], axis=1)[:, ::-1, :]
    left = np.full_like(left_incl, -1)
    left[:, :, 1:] = left_incl[:, :, :-1]
    right = np.full_like(right_incl, width)
    right[:, :, :-1] = right_incl[:, :, 1:]
    up = np.full_like(up_incl, -1)
    up[:, 1:, :] = up_incl[:, :-1, :]
    down = np.full_like(down_incl, height)
    down[:, :-1, :] = down_incl[:, 1:, :]
    return left, right, up, down


def _inverse_distance(present: np.ndarray, dist: np.ndarray) -> np.ndarray:
    """1 / k as float64 where a reference exists, else 0 (the official Python-float weight)."""
    return np.where(present, 1.0 / np.maximum(dist, 1), 0.0)


def _weighted_term(values: np.ndarray, weight64: np.ndarray, present: np.ndarray, rnd, opmath) -> np.ndarray:
    """round_dtype(ref * (1/k)) with the weight cast to the op precision; 0 where absent."""
    prod = rnd(values * weight64.astype(opmath)[:, None])
    return np.where(present[:, None], prod, opmath(0))


def bnni_fill(latent: torch.Tensor, null_mask: torch.Tensor, *, order: str = "official") -> torch.Tensor:
    """Fill the null region of a warped latent by BNNI.

    Args:
        latent: [B, C, H, W] float32/float16/bfloat16, any device (the warped z_t).
        null_mask: [H, W] or [B, H, W], bool (non-zero = null), e.g. the ``null_mask`` of
            :func:`fastdrag_core.lwf_warp`. The values under it are never used as references.
        order: ``"official"`` (raster order, in place; the paper's numbers) or ``"paper"``
            (references only among originally valued cells; order-independent).
    Returns:
        A new latent, same shape, dtype and device.
    """
    if order not in BNNI_ORDERS:
        raise ValueError(f"bnni_fill: order must be one of {BNNI_ORDERS}, got {order!r}")
    batch, channels, height, width = as_latent(latent, "bnni_fill").shape
    null = as_mask(null_mask, batch, height, width, "bnni_fill", name="null_mask", allow_empty=True).numpy()
    opmath = np.float64 if latent.dtype == torch.float64 else np.float32
    rnd = _rounder(latent.dtype)
    x = latent.detach().to("cpu", torch.float64 if opmath is np.float64 else torch.float32, copy=True)
    x = np.ascontiguousarray(x.permute(0, 2, 3, 1).numpy())  # [B, H, W, C]
    if order == "official":
        null = null | (x[..., 0] == 0)  # "has a value" is channel 0 != 0 (quirk Q4)
    if not null.any():
        return latent.clone()

    left_s, right_s, up_s, down_s = _nearest_valued(~null)
    nb, ni, nj = np.nonzero(null)  # null cells, raster order
    flat = x.reshape(batch * height * width, channels)
    row_base = (nb * height + ni) * width  # flat index of (b, i, 0)
    cell = row_base + nj
    has_r = right_s[nb, ni, nj] < width
    has_d = down_s[nb, ni, nj] < height
    w_r = _inverse_distance(has_r, right_s[nb, ni, nj] - nj)
    w_d = _inverse_distance(has_d, down_s[nb, ni, nj] - ni)
    # Right and down references are originally valued cells, which are never written: precompute.
    p_r = _weighted_term(flat[row_base + np.minimum(right_s[nb, ni, nj], width - 1)], w_r, has_r, rnd, opmath)
    p_d = _weighted_term(
        flat[(nb * height + np.minimum(down_s[nb, ni, nj], height - 1)) * width + nj], w_d, has_d, rnd, opmath
    )

    if order == "paper":
        left, up = left_s[nb, ni, nj], up_s[nb, ni, nj]
        _fill_cells(flat, cell, row_base, nb, ni, nj, left, up, w_r, w_d, p_r, p_d, rnd, opmath, height, width)
    else:
        backup = flat[cell].copy()
        if not _official_neighbour_wavefront(flat, cell, nb, ni, nj, ~null, w_r, w_d, p_r, p_d, rnd, opmath,
                                             height, width):
            flat[cell] = backup
            _official_wavefront(flat, cell, row_base, nb, ni, nj, left_s, up_s, w_r, w_d, p_r, p_d,
                                rnd, opmath, batch, height, width)
    out = torch.from_numpy(x).permute(0, 3, 1, 2)
    return out.to(dtype=latent.dtype).contiguous().to(latent.device)


def _fill_cells(flat, cell, row_base, nb, ni, nj, left, up, w_r, w_d, p_r, p_d, rnd, opmath, height, width):
    """Fill the given null cells from their left/up reference indices; returns (filled, new values)."""
    has_l, has_u = left >= 0, up >= 0
    w_l = _inverse_distance(has_l, nj - left)
    w_u = _inverse_distance(has_u, ni - up)
    p_l = _weighted_term(flat[row_base + np.maximum(left, 0)], w_l, has_l, rnd, opmath)
    p_u = _weighted_term(flat[(nb * height + np.maximum(up, 0)) * width + nj], w_u, has_u, rnd, opmath)
    total = ((w_l + w_r) + w_u) + w_d  # Python's sum over present weights, in float64
    acc = rnd(opmath(0) + p_l)
    acc = rnd(acc + p_r)
    acc = rnd(acc + p_u)
    acc = rnd(acc + p_d)
    filled = total > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        value = rnd(acc / total.astype(opmath)[:, None])
    flat[cell[filled]] = value[filled]
    return filled, value


def _official_neighbour_wavefront(flat, cell, nb, ni, nj, valued, w_r, w_d, p_r, p_d, rnd, opmath,
                                  height, width) -> bool:
    """The official order in its usual case, where every null cell ends up filled and valued.

    Then the left reference of (i, j) is always its neighbour (i, j-1), and the up reference
    (i-1, j): either they were valued to begin with or they are null cells filled earlier. Each
    anti-diagonal is a handful of vector operations. Returns False, leaving a partial result,
    when the premise fails (a null cell whose whole row and column are null, or a filled value
    whose channel 0 is exactly 0); the caller then runs the general wavefront.
    """
    row_has_valued = valued.any(axis=2)  # [B, H]
    col_has_valued = valued.any(axis=1)  # [B, W]
    if not (row_has_valued[nb, ni] | col_has_valued[nb, nj]).all():
        return False
    zero_cell = flat.shape[0]  # an extra all-zero row: the "reference" of a missing direction
    flat_z = np.concatenate([flat, np.zeros((1, flat.shape[1]), flat.dtype)])
    # Left/up references sit at k = 1, so their weight is 1 (ref * 1 is exact) or absent (the zero row).
    src_left = np.where(nj > 0, cell - 1, zero_cell)
    src_up = np.where(ni > 0, cell - width, zero_cell)
    total = (((((nj > 0) + w_r) + (ni > 0)) + w_d)).astype(opmath)[:, None]  # left, right, up, down
    diag = ni + nj
    by_diag = np.argsort(diag, kind="stable")
    bounds = np.flatnonzero(np.diff(diag[by_diag])) + 1
    src = np.stack([src_left, src_up], axis=1)[by_diag]
    cell_d, p_r_d, p_d_d, total_d = cell[by_diag], p_r[by_diag], p_d[by_diag], total[by_diag]
    start = 0
    for stop in [*bounds.tolist(), len(by_diag)]:
        refs = flat_z[src[start:stop]]  # [m, 2, C]: left and up neighbours, already final
        acc = rnd(rnd(rnd(refs[:, 0] + p_r_d[start:stop]) + refs[:, 1]) + p_d_d[start:stop])
        flat_z[cell_d[start:stop]] = rnd(acc / total_d[start:stop])
        start = stop
    if not flat_z[cell, 0].all():
        return False  # a fill came out with channel 0 == 0: it is no reference for later cells
    flat[cell] = flat_z[cell]
    return True


def _official_wavefront(flat, cell, row_base, nb, ni, nj, left_s, up_s, w_r, w_d, p_r, p_d,
                        rnd, opmath, batch, height, width):
    """Raster-order, in-place BNNI run diagonal by diagonal (bit-identical to the sequential scan).

    The nearest valued cell to the left of (i, j) at its turn is the later of the nearest
    originally valued one and the last null cell of row i already filled with channel 0 != 0;
    likewise upwards. Those "last filled" pointers are the only state carried between diagonals.
    """
    last_in_row = np.full(batch * height, -1, dtype=np.int64)
    last_in_col = np.full(batch * width, -1, dtype=np.int64)
    row_id = nb * height + ni
    col_id = nb * width + nj
    diag = ni + nj
    by_diag = np.argsort(diag, kind="stable")
    bounds = np.flatnonzero(np.diff(diag[by_diag])) + 1
    for idx in np.split(by_diag, bounds):
        left = np.maximum(left_s[nb[idx], ni[idx], nj[idx]], last_in_row[row_id[idx]])
        up = np.maximum(up_s[nb[idx], ni[idx], nj[idx]], last_in_col[col_id[idx]])
        filled, value = _fill_cells(flat, cell[idx], row_base[idx], nb[idx], ni[idx], nj[idx], left, up,
                                    w_r[idx], w_d[idx], p_r[idx], p_d[idx], rnd, opmath, height, width)
        valued = filled & (value[:, 0] != 0)
        last_in_row[row_id[idx][valued]] = nj[idx][valued]
        last_in_col[col_id[idx][valued]] = ni[idx][valued]
