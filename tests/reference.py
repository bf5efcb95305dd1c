"""Slow references written straight from the method spec (``shared/docs/fastdrag-method.md``).

They share no code with ``fastdrag_core``: plain Python loops over cells, the LWF in float64 with
the spec's closed form (rho, alpha = |rho - |p - s|| / rho), BNNI as the spec's sequential
pseudo-code. Tests compare the fast implementation against them.
"""

from __future__ import annotations

import math

import torch


def lwf_destinations_f64(mask, handles_xy, targets_xy, handle_on_cell="paper"):
    """Per mask cell (raster order): (row, col, exact destination (y, x) before rounding, or None).

    ``None`` marks an undefined vector (p = s_i in official mode, or a negative discriminant).
    Also returns ``sensitive``: True when a ray is nearly tangent to circle O (the discriminant is
    ~0 relative to its terms), where float32 and float64 can disagree on whether it is defined.
    """
    sensitive = False
    cells = [(r, c) for r in range(mask.shape[0]) for c in range(mask.shape[1]) if mask[r, c]]
    ys = [r for r, _ in cells]
    xs = [c for _, c in cells]
    cy, cx = (min(ys) + max(ys)) / 2, (min(xs) + max(xs)) / 2
    radius = math.hypot(cy - min(ys) + 1e-6, cx - min(xs) + 1e-6)  # PairwiseDistance eps
    drags = [((float(h[1]), float(h[0])), (float(t[1]), float(t[0]))) for h, t in zip(handles_xy, targets_xy)]
    out = []
    for r, c in cells:
        vy = vx = 0.0
        weights, comps = [], []
        undefined = False
        for (sy, sx), (ey, ex) in drags:
            dist = math.hypot(r - sy, c - sx)
            if dist == 0:
                if handle_on_cell == "official":
                    undefined = True
                    break
                alpha = 1.0
            else:
                uy, ux = (r - sy) / dist, (c - sx) / dist
                lam = (sy - cy) * uy + (sx - cx) * ux
                disc = radius**2 - ((sy - cy) ** 2 + (sx - cx) ** 2) + lam**2
                sensitive |= abs(disc) < 1e-5 * max(1.0, lam**2)
                if disc < 0:
                    if handle_on_cell == "official":
                        undefined = True
                        break
                    disc = 0.0
                rho = math.sqrt(disc) - lam
                alpha = abs(rho - dist) / abs(rho)
            comps.append((alpha * (ey - sy), alpha * (ex - sx)))
            weights.append(1.0 / (dist + 1e-4))
        if undefined:
            out.append((r, c, None))
            continue
        total = sum(weights)
        for w, (dy, dx) in zip(weights, comps):
            vy += w / total * dy
            vx += w / total * dx
        out.append((r, c, (r + vy, c + vx)))
    return out, sensitive


def relocate_reference(latent, mask, destinations, fill="zero"):
    """Spec §2.5 relocation loop: first come wins, clamp to the grid, copy pre-warp values."""
    height, width = mask.shape
    warped = latent.clone()
    if fill == "zero":
        warped[:, :, mask] = 0
    claimed = set()
    for r, c, dest in destinations:
        if dest is None:
            continue
        qy = min(max(round(dest[0]), 0), height - 1)  # Python round: half to even
        qx = min(max(round(dest[1]), 0), width - 1)
        if (qy, qx) in claimed:
            continue
        claimed.add((qy, qx))
        warped[:, :, qy, qx] = latent[:, :, r, c]
    null = mask.clone()
    for qy, qx in claimed:
        null[qy, qx] = False
    return warped, null


def near_tie(destinations, margin=1e-3):
    """True if any exact destination is within ``margin`` of a rounding tie (x.5)."""
    for _, _, dest in destinations:
        if dest is None:
            continue
        for v in dest:
            if abs(abs(v - math.floor(v)) - 0.5) < margin:
                return True
    return False


def bnni_official_reference(latent, null_mask):
    """Spec §3 official pseudo-code: raster order, in place, "valued" = channel 0 != 0 now.

    Runs in the latent's dtype with Python-float weights, summing left, right, up, down. As in the
    official pipeline, the null cells must hold zeros (``lwf_warp(..., fill="zero")``).
    """
    x = latent.clone()
    _, _, height, width = x.shape
    for b in range(x.shape[0]):
        null0 = (x[b, 0] == 0) | null_mask[b]
        for i in range(height):
            for j in range(width):
                if not null0[i, j]:
                    continue
                refs = []
                for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                    k, ii, jj = 1, i + di, j + dj
                    while 0 <= ii < height and 0 <= jj < width:
                        if x[b, 0, ii, jj] != 0:
                            refs.append((1 / k, x[b, :, ii, jj].clone()))
                            break
                        k, ii, jj = k + 1, ii + di, jj + dj
                if refs:
                    total = sum(w for w, _ in refs)
                    x[b, :, i, j] = sum(w * v for w, v in refs) / total
    return x


def bnni_paper_reference(latent, null_mask, order=None):
    """Paper reading: references only among cells valued before filling, in float64.

    ``order`` is an optional permutation of the null cells to visit (the result must not depend on it).
    """
    x = latent.to(torch.float64)
    out = x.clone()
    _, _, height, width = x.shape
    for b in range(x.shape[0]):
        cells = [(i, j) for i in range(height) for j in range(width) if null_mask[b, i, j]]
        if order is not None:
            cells = [cells[k] for k in order]
        for i, j in cells:
            num, total = 0.0, 0.0
            for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
                k, ii, jj = 1, i + di, j + dj
                while 0 <= ii < height and 0 <= jj < width:
                    if not null_mask[b, ii, jj]:
                        num = num + x[b, :, ii, jj] / k
                        total += 1 / k
                        break
                    k, ii, jj = k + 1, ii + di, jj + dj
            if total:
                out[b, :, i, j] = num / total
    return out
