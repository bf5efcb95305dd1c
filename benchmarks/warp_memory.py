"""Peak memory of lwf_warp versus latent cells x drags (why MAX_DRAGS / MAX_CELL_DRAGS are what they are).

    python3 benchmarks/warp_memory.py                      # the default cases
    python3 benchmarks/warp_memory.py --case 128x128x32    # one case (latent H x W x drags), repeatable

Each case runs in a fresh process (peak RSS is per process); prints the extra peak memory of one
lwf_warp call on a whole-image mask with random drags, and bytes per cell-drag.
"""
import argparse
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CASES = [(64, 64, 8), (128, 128, 1), (128, 128, 8), (128, 128, 32), (128, 128, 64), (256, 256, 8), (256, 256, 32)]

ONE = r"""
import resource, sys, time, torch
sys.path.insert(0, sys.argv[1])
from fastdrag_core import lwf_warp
h, w, n = map(int, sys.argv[2:5])
torch.manual_seed(0)
lat = torch.randn(1, 4, h, w)
hs, ts = torch.rand(n, 2) * torch.tensor([w - 1, h - 1]), torch.rand(n, 2) * torch.tensor([w - 1, h - 1])
mask = torch.ones(h, w, dtype=torch.bool)
lwf_warp(lat[..., :8, :8], hs[:1] % 7, ts[:1] % 7, mask[:8, :8])  # warm-up: allocator, kernels
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
t0 = time.perf_counter()
lwf_warp(lat, hs, ts, mask)
dt = time.perf_counter() - t0
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(f"{w}x{h}|{h * w}|{n}|{(peak - base) / 1024:.1f}|{(peak - base) * 1024 / (h * w * n):.0f}|{dt * 1000:.0f}")
"""


def case(text: str) -> tuple[int, int, int]:
    """'HxWxN' (latent rows x columns x drags) -> (h, w, n)."""
    try:
        h, w, n = (int(v) for v in text.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give latent rows x columns x drags, e.g. 128x128x32") from None
    if min(h, w, n) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every number must be at least 1")
    return h, w, n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--case", type=case, action="append", metavar="HxWxN",
                    help="latent grid rows x columns x drags to measure (repeatable); default: "
                         + ", ".join(f"{h}x{w}x{n}" for h, w, n in CASES))
    args = ap.parse_args()
    env = dict(os.environ, OMP_NUM_THREADS="1")
    print("| latent grid | cells | drags | extra peak RSS (MiB) | bytes per cell-drag | time (ms) |")
    print("| --- | --- | --- | --- | --- | --- |")
    for h, w, n in args.case or CASES:
        out = subprocess.run([sys.executable, "-c", ONE, ROOT, str(h), str(w), str(n)], env=env,
                             capture_output=True, text=True, check=True).stdout.strip()
        print("| " + " | ".join(out.split("|")) + " |")


if __name__ == "__main__":
    main()
