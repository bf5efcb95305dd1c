"""Time FastDrag's latent edit (LWF + relocation + official-order BNNI) in fastdrag_core.

Compares, in one run and on one CPU thread (and on CUDA when present):
  * fastdrag_core        : lwf_warp(fill="zero") + bnni_fill(order="official")
  * straightforward torch: the same maths vectorised the obvious way (per-drag loop for the LWF,
                           scatter for the relocation, BNNI as a torch wavefront over every
                           anti-diagonal of the grid)
  * per-cell torch loops : the spec's equations evaluated cell by cell and drag by drag with torch
                           scalar ops, then the spec's BNNI pseudo-code (tests/reference.py): the
                           shape, and roughly the cost, of the released code's Python loops

Usage: python benchmarks/bench_core.py [--repeats 30] [--sizes 64 128]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fastdrag_core import bnni_fill, lwf_warp  # noqa: E402
from tests.reference import bnni_official_reference, relocate_reference  # noqa: E402


def make_case(size: int, device: str):
    """A disc mask of ~2,750 cells at 64x64 (scaled with the grid) and 5 drags."""
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    radius = 29.6 * size / 64
    mask = (yy - size / 2 + 0.5) ** 2 + (xx - size / 2 + 0.5) ** 2 <= radius**2
    s = size / 64
    handles = torch.tensor([[32.0, 32], [27, 22], [35, 40], [44, 29], [20, 37]]) * s + 0.25
    targets = handles + torch.tensor([[4.0, 3], [-3, 2], [2, -4], [3, 3], [-2, -3]]) * s
    latent = torch.randn(1, 4, size, size, generator=torch.Generator().manual_seed(0)).to(device)
    return latent, handles, targets, mask.to(device)


def edit_fastdrag(latent, handles, targets, mask):
    warped, null = lwf_warp(latent, handles, targets, mask, fill="zero", handle_on_cell="official")
    return bnni_fill(warped, null, order="official")


def edit_straightforward(latent, handles, targets, mask):
    """The obvious vectorised torch version (float32 maths, torch ops only)."""
    _, _, h, w = latent.shape
    dev = latent.device
    cells = torch.nonzero(mask)
    p = cells.float()
    lo, hi = p.min(0).values, p.max(0).values
    centre = (lo + hi) / 2
    radius = torch.linalg.vector_norm(centre - lo + 1e-6)
    v = torch.zeros_like(p)
    wsum = torch.zeros(len(p), device=dev)
    for s_xy, e_xy in zip(handles.to(dev), targets.to(dev)):
        s, e = s_xy.flip(0), e_xy.flip(0)
        d = torch.linalg.vector_norm(p - s, dim=1)
        u = (p - s) / d[:, None]
        lam = ((s - centre) * u).sum(1)
        rho = torch.sqrt(radius**2 - ((s - centre) ** 2).sum() + lam**2) - lam
        alpha = (rho - d).abs() / rho
        omega = 1 / (d + 1e-4)
        v += omega[:, None] * alpha[:, None] * (e - s)
        wsum += omega
    dest = torch.round(p + v / wsum[:, None])
    ok = torch.isfinite(dest).all(1)
    src = (cells[:, 0] * w + cells[:, 1])[ok]
    dest = dest[ok]
    dflat = dest[:, 0].clamp(0, h - 1).long() * w + dest[:, 1].clamp(0, w - 1).long()
    winner = torch.full((h * w,), h * w, dtype=torch.long, device=dev).scatter_reduce(0, dflat, src, "amin")
    keep = winner[dflat] == src
    out = latent.clone().view(1, -1, h * w)
    out[:, :, mask.view(-1)] = 0
    out[:, :, dflat[keep]] = latent.view(1, -1, h * w)[:, :, src[keep]]
    z = out.view_as(latent)[0]
    null = z[0] == 0
    for diag in range(h + w - 1):  # torch wavefront over all anti-diagonals, searching each direction
        i = torch.arange(max(0, diag - w + 1), min(h, diag + 1), device=dev)
        j = diag - i
        todo = null[i, j]
        if not todo.any():
            continue
        i, j = i[todo], j[todo]
        num = torch.zeros(z.shape[0], len(i), device=dev)
        den = torch.zeros(len(i), device=dev)
        for di, dj in ((0, -1), (0, 1), (-1, 0), (1, 0)):
            found = torch.zeros(len(i), dtype=torch.bool, device=dev)
            for k in range(1, max(h, w)):
                ii, jj = i + di * k, j + dj * k
                inside = (ii >= 0) & (ii < h) & (jj >= 0) & (jj < w) & ~found
                if not inside.any():
                    break
                val = z[:, ii.clamp(0, h - 1), jj.clamp(0, w - 1)]
                hit = inside & (val[0] != 0)
                num += torch.where(hit, val / k, torch.zeros_like(val))
                den += hit.float() / k
                found |= hit
        filled = den > 0
        z[:, i[filled], j[filled]] = num[:, filled] / den[filled]
    return z[None]


def edit_loops(latent, handles, targets, mask):
    """Per-cell, per-drag torch scalar maths (spec §2.3-2.5), then the spec's BNNI loop."""
    mask = mask.cpu()
    cells = torch.nonzero(mask).float()
    lo, hi = cells.min(0).values, cells.max(0).values
    centre = (lo + hi) / 2
    radius = torch.linalg.vector_norm(centre - lo + 1e-6)
    drags = [(s.flip(0), e.flip(0)) for s, e in zip(handles, targets)]
    dest = []
    for p in cells:
        v, wsum = torch.zeros(2), torch.zeros(())
        for s, e in drags:
            d = torch.linalg.vector_norm(p - s)
            u = (p - s) / d
            lam = torch.dot(s - centre, u)
            rho = torch.sqrt(radius**2 - torch.dot(s - centre, s - centre) + lam**2) - lam
            omega = 1 / (d + 1e-4)
            v = v + omega * (rho - d).abs() / rho * (e - s)
            wsum = wsum + omega
        q = p + v / wsum
        dest.append((int(p[0]), int(p[1]), None if not torch.isfinite(q).all() else tuple(q.tolist())))
    warped, null = relocate_reference(latent.cpu(), mask, dest)
    return bnni_official_reference(warped, null[None])


def median_ms(fn, args, repeats, sync):
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        fn(*args)
        sync()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    ap.add_argument("--loop-repeats", type=int, default=3, help="repeats of the slow per-cell loops (64x64 only)")
    args = ap.parse_args()
    torch.set_num_threads(1)
    devices = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    print(f"torch {torch.__version__}, 1 CPU thread, medians of {args.repeats} runs (ms)")
    print(f"{'device':6} {'grid':>8} {'mask':>6} {'fastdrag_core':>14} {'straightforward':>16} {'ratio':>7} "
          f"{'per-cell torch loops':>21} {'ratio':>8}")
    for device in devices:
        sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
        for size in args.sizes:
            case = make_case(size, device)
            for fn in (edit_fastdrag, edit_straightforward):
                fn(*case)  # warm-up
            fast = median_ms(edit_fastdrag, case, args.repeats, sync)
            plain = median_ms(edit_straightforward, case, max(3, args.repeats // 3), sync)
            loops = ""
            if device == "cpu" and size == 64 and args.loop_repeats > 0:
                slow = median_ms(edit_loops, case, args.loop_repeats, sync)
                loops = f"{slow:21.1f} {slow / fast:7.0f}x"
            print(f"{device:6} {size:>4}x{size:<3} {int(case[3].sum()):6d} {fast:14.2f} {plain:16.2f} "
                  f"{plain / fast:6.1f}x {loops}")


if __name__ == "__main__":
    main()
