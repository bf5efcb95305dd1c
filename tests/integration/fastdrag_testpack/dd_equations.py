"""DragDiffusion's motion-supervision loss written from the equation, float64, no ComfyUI or pack import:
the reference of the unit tests (tests/test_dragdiffusion.py, loaded by path) and of the server-side
first-step node (dragdiffusion_ref.py). Explicit bilinear corner weights, loops over patch cells."""

import math


def bilinear(feat, y, x):
    """feat [C, H, W] at real (y, x); rows/cols outside are the border ones (replicate)."""
    _, height, width = feat.shape
    y0, x0 = math.floor(y), math.floor(x)
    fy, fx = y - y0, x - x0

    def at(r, c):
        return feat[:, min(max(r, 0), height - 1), min(max(c, 0), width - 1)]

    return ((1 - fy) * (1 - fx) * at(y0, x0) + fy * (1 - fx) * at(y0 + 1, x0)
            + (1 - fy) * fx * at(y0, x0 + 1) + fy * fx * at(y0 + 1, x0 + 1))


def motion_loss(feat, handles, targets, r_m):
    """L_ms = sum_i (2r+1)^2 * mean over patch cells and channels of |sg F_q - F_{q+d}|, d the unit step
    from handle i towards its target; handles within 2 feature px of their targets add nothing.
    ``feat`` [1, C, H, W]; ``handles``, ``targets``: [[row, col], ...] (lists or tensors)."""
    f = feat[0]
    channels, height, width = f.shape
    total = feat.new_zeros(())
    as_list = (lambda p: p.tolist() if hasattr(p, "tolist") else p)
    for (hr, hc), (tr, tc) in zip(as_list(handles), as_list(targets)):
        dist = math.hypot(tr - hr, tc - hc)
        if dist < 2.0:
            continue
        dr, dc = (tr - hr) / dist, (tc - hc) / dist
        rows = range(max(0, int(hr) - r_m), min(height, int(hr) + r_m + 1))
        cols = range(max(0, int(hc) - r_m), min(width, int(hc) + r_m + 1))
        acc = feat.new_zeros(())
        for r in rows:
            for c in cols:
                acc = acc + (f[:, r, c].detach() - bilinear(f, r + dr, c + dc)).abs().sum()
        total = total + (2 * r_m + 1) ** 2 * acc / (channels * len(rows) * len(cols))
    return total
