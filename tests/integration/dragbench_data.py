"""A small DragBench-format set made by the tests: textured images, real pickle files, one unsafe one."""

from __future__ import annotations

import io
import math
import os
import pickle
import subprocess

import numpy as np


def texture(h: int, w: int, seed: int = 0, freq: tuple[float, float] = (0.02, 0.25)) -> np.ndarray:
    """A smooth, non-repeating colour texture (sum of 12 random plane waves, each frequency component
    drawn in ``freq`` cycles per pixel), uint8 H x W x 3."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:h, 0:w].astype(np.float64)
    img = np.zeros((h, w, 3))
    for _ in range(12):
        fx, fy = rng.uniform(freq[0], freq[1], 2) * rng.choice([-1, 1], 2)
        img += rng.uniform(0.2, 1.0, 3) * np.sin(2 * np.pi * (fx * x + fy * y)[..., None] + rng.uniform(0, 2 * np.pi, 3))
    img = (img - img.min()) / (img.max() - img.min())
    return (img * 255).round().astype(np.uint8)


def png(a: np.ndarray) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(a).save(buf, format="PNG")
    return buf.getvalue()


class Unsafe:
    """Unpickling this runs ``touch <marker>`` (with plain pickle.load)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# (category, sample, (width, height), points [(x, y) handle, target, ...], mask box (x0, y0, x1, y1) or None, seed)
SAMPLES = [
    ("animals", "T1_2026-01-01-0000-00", (64, 64), [(20, 24), (30, 28)], (8, 8, 56, 56), 1),
    ("animals", "T1_2026-01-01-0000-01", (72, 60), [(40, 30), (34, 22), (16, 40), (20, 44)], None, 2),
    ("art_work", "T2_2026-01-02-0000-00", (64, 64), [(32, 32), (40, 36)], (16, 16, 60, 60), 3),
]
UNSAFE = ("art_work", "T2_2026-01-02-0000-99")


def make_dragbench(root: str, marker: str | None = None, with_unsafe: bool = True) -> list[tuple]:
    """Writes SAMPLES (and the unsafe sample) under ``root``; returns SAMPLES."""
    for cat, name, (w, h), points, box, seed in SAMPLES:
        d = os.path.join(root, cat, name)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "original_image.png"), "wb") as f:
            f.write(png(texture(h, w, seed)))
        if box is None:
            mask = np.zeros((h, w), np.float32)  # no mask drawn: the labeling tool stores float zeros
        else:
            mask = np.zeros((h, w), np.uint8)
            mask[box[1]:box[3], box[0]:box[2]] = 1
        with open(os.path.join(d, "meta_data.pkl"), "wb") as f:
            pickle.dump({"prompt": f"a texture {seed}", "points": [tuple(p) for p in points], "mask": mask}, f)
    if with_unsafe:
        d = os.path.join(root, *UNSAFE)
        os.makedirs(d, exist_ok=True)
        with open(os.path.join(d, "original_image.png"), "wb") as f:
            f.write(png(texture(64, 64, 9)))
        with open(os.path.join(d, "meta_data.pkl"), "wb") as f:
            pickle.dump({"prompt": "x", "points": [(1, 1), (2, 2)], "mask": Unsafe(marker or "/tmp/never")}, f)
    return SAMPLES


# ------------------------------------------------------------------------------------------ LPIPS
ALEXNET_FILE = "alexnet-owt-7be5be79.pth"  # torchvision's AlexNet_Weights.IMAGENET1K_V1


def random_alexnet(seed: int = 0) -> dict:
    """A torchvision AlexNet state dict: random conv weights; the unused classifier as zero-stride
    expansions (a few bytes on disk, still the shapes load_state_dict checks)."""
    import torch

    g = torch.Generator().manual_seed(seed)
    sd = {}
    for idx, (cin, cout, k) in {0: (3, 64, 11), 3: (64, 192, 5), 6: (192, 384, 3), 8: (384, 256, 3),
                                10: (256, 256, 3)}.items():
        sd[f"features.{idx}.weight"] = torch.randn(cout, cin, k, k, generator=g) * math.sqrt(2.0 / (cin * k * k))
        sd[f"features.{idx}.bias"] = torch.randn(cout, generator=g) * 0.01
    for idx, (cin, cout) in {1: (9216, 4096), 4: (4096, 4096), 6: (4096, 1000)}.items():
        sd[f"classifier.{idx}.weight"] = torch.zeros(1).expand(cout, cin)
        sd[f"classifier.{idx}.bias"] = torch.zeros(1).expand(cout)
    return sd


def install_random_alexnet(server, seed: int = 0, overwrite: bool = False) -> dict:
    """Random AlexNet weights where torchvision looks in the test server's own TORCH_HOME
    (``<base>/torch_home``, set by ComfyServer: never the user's torch hub cache)."""
    import torch

    sd = random_alexnet(seed)
    path = os.path.join(server.base, "torch_home", "hub", "checkpoints", ALEXNET_FILE)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    if overwrite or not os.path.exists(path):
        torch.save(sd, path + ".tmp")
        os.replace(path + ".tmp", path)
    return sd


def lpips_lin_weights(server) -> str | None:
    """The lpips package's linear-head weights file in ComfyUI's python, or None when that python
    cannot import lpips (or the package lacks the file)."""
    out = subprocess.run([server.py, "-c", "import os, lpips; p = os.path.join(os.path.dirname(lpips.__file__), "
                          "'weights', 'v0.1', 'alex.pth'); print(p if os.path.exists(p) else '')"],
                         capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}).stdout.strip()
    return out or None
