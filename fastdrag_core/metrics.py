"""DragBench metrics in pure PyTorch: DIFT point matching (Mean Distance) and LPIPS input handling.

Mean Distance (``drag_bench_evaluation/run_eval_point_matching.py`` + ``dift_sd.py``, field.md §2.2):
DIFT features F = mean over an ensemble of E = 8 noisy copies of the image of the UNet's
``up_blocks[1]`` output at t = 261 (prompt-conditioned), for the source and for the edited image
(resized bilinearly to the source size). Both maps are upsampled bilinearly to the source H x W;
for each handle h (row, col) the source vector F_s(h) is compared by cosine similarity with
*every* pixel of F_e, and the matched point m = argmax; the distance is ``||target - m||`` in
source pixels. MD = mean over all points.

Image Fidelity (``run_eval_similarity.py``, §2.3): both images in [-1, 1], bilinearly resized to
224 x 224, IF = 1 - LPIPS(AlexNet).

The UNet and the LPIPS network run in the nodes; this module holds what is checked against
independent float64 implementations: the noise draws, the matching and the image preparation.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

DIFT_TIMESTEP = 261
DIFT_UP_INDEX = 1
DIFT_ENSEMBLE = 8
DIFT_SEED = 42
LPIPS_SIZE = 224


def dift_noise(latent_shape, ensemble: int = DIFT_ENSEMBLE, seed: int = DIFT_SEED):
    """The ensemble noises for the source and the edited image of one sample.

    The official script seeds once per run (``seed_everything(42)``) and draws
    ``randn_like(latents)`` of shape [E, C, h, w] for the source, then for the edited image, from
    the global CUDA stream. Here one CPU generator seeded with ``seed`` per sample draws the two
    batches in that order, so a sample's MD does not depend on which samples ran before it
    (resumed runs give the same numbers).

    Returns:
        (noise_source, noise_edited), float32 [E, C, h, w] each.
    """
    shape = (int(ensemble),) + tuple(int(s) for s in latent_shape[-3:])
    g = torch.Generator(device="cpu").manual_seed(int(seed))
    return torch.randn(shape, generator=g), torch.randn(shape, generator=g)


def handle_pixels(points_xy, height: int, width: int) -> list[tuple[int, int]]:
    """(row, col) pixels to read the source features at: the official code indexes the feature map
    with the integer points; non-integer points (rescaled) are rounded, then clamped into the image."""
    out = []
    for x, y in points_xy:
        r = min(max(int(round(float(y))), 0), height - 1)
        c = min(max(int(round(float(x))), 0), width - 1)
        out.append((r, c))
    return out


def _upsample(ft: torch.Tensor, size) -> torch.Tensor:
    return F.interpolate(ft, size=size, mode="bilinear")  # the official call: align_corners=False, no antialias


@torch.no_grad()
def match_points(ft_source: torch.Tensor, ft_edited: torch.Tensor, handles_xy, targets_xy, image_hw,
                 channel_chunk: int = 64, check_interrupt=None):
    """DIFT matching: where each handle's source feature is found in the edited image.

    Args:
        ft_source, ft_edited: [1, C, h, w] ensemble-mean features.
        handles_xy, targets_xy: (x, y) image pixels of the source image.
        image_hw: (H, W) of the source image; both maps are upsampled to it.
        channel_chunk: channels upsampled at once (bilinear upsampling acts per channel, so the
            chunks give exactly the full map's values while holding only chunk x H x W floats).
        check_interrupt: optional callable, called between chunks (cancel).

    Returns:
        list of ``{"handle": [x, y], "target": [x, y], "matched": [x, y], "distance": px}``.
    """
    if ft_source.shape != ft_edited.shape or ft_source.ndim != 4 or ft_source.shape[0] != 1:
        raise ValueError(f"match_points: feature maps must both be [1, C, h, w], got {list(ft_source.shape)} "
                         f"and {list(ft_edited.shape)}")
    height, width = int(image_hw[0]), int(image_hw[1])
    pix = handle_pixels(handles_xy, height, width)
    rows = torch.tensor([p[0] for p in pix])
    cols = torch.tensor([p[1] for p in pix])
    n, channels = len(pix), ft_source.shape[1]
    src = torch.empty(n, channels, dtype=torch.float32, device=ft_source.device)
    dot = torch.zeros(n, height, width, dtype=torch.float32, device=ft_source.device)
    norm2 = torch.zeros(height, width, dtype=torch.float32, device=ft_source.device)
    for c0 in range(0, channels, channel_chunk):
        c1 = min(channels, c0 + channel_chunk)
        up_s = _upsample(ft_source[:, c0:c1].float(), (height, width))[0]  # [c, H, W]
        src[:, c0:c1] = up_s[:, rows, cols].T
        del up_s
        up_e = _upsample(ft_edited[:, c0:c1].float(), (height, width))[0]
        dot += torch.einsum("nc,chw->nhw", src[:, c0:c1], up_e)
        norm2 += (up_e * up_e).sum(0)
        del up_e
        if check_interrupt is not None:
            check_interrupt()
    # torch.nn.CosineSimilarity (eps 1e-8): w12 / sqrt(clamp_min(w1 * w2, eps^2))
    w1 = (src * src).sum(1)[:, None, None]
    cos = dot / torch.sqrt(torch.clamp_min(w1 * norm2[None], 1e-16))
    out = []
    for k, (target, handle) in enumerate(zip(targets_xy, handles_xy)):
        flat = int(torch.argmax(cos[k].reshape(-1)))  # first maximum in raster order, like np.argmax
        r, c = divmod(flat, width)
        tx, ty = float(target[0]), float(target[1])
        out.append({"handle": [float(handle[0]), float(handle[1])], "target": [tx, ty],
                    "matched": [c, r], "distance": math.hypot(ty - r, tx - c)})
    return out


def mean_distance(matches) -> float:
    return float(np.mean([m["distance"] for m in matches]))


# ------------------------------------------------------------------------------------------ images
def to_uint8(image: torch.Tensor) -> np.ndarray:
    """IMAGE [H, W, C] in 0..1 -> uint8 H x W x 3, as a PNG round trip stores it (round to nearest)."""
    a = image[..., :3].detach().float().clamp(0, 1).mul(255).round().to(torch.uint8).cpu().numpy()
    return np.ascontiguousarray(a)


def resize_like_source(edited: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """The edited IMAGE [H', W', C] resized to the source size the way the official scripts do:
    ``PIL.Image.resize(size, BILINEAR)`` on the 8-bit image. Same size: returned unchanged."""
    if tuple(edited.shape[:2]) == (height, width):
        return edited[..., :3]
    from PIL import Image  # pillow: only needed when the sizes differ

    pil = Image.fromarray(to_uint8(edited)).resize((width, height), Image.BILINEAR)
    return torch.from_numpy(np.asarray(pil).copy()).float().div(255.0)


def lpips_input(image: torch.Tensor, size: int = LPIPS_SIZE) -> torch.Tensor:
    """IMAGE [H, W, C] 0..1 -> [1, 3, size, size] in [-1, 1] (``x / 127.5 - 1`` of the 8-bit image,
    then ``F.interpolate(..., (224, 224), mode='bilinear')``)."""
    x = image[..., :3].float().permute(2, 0, 1)[None] * 2.0 - 1.0
    return F.interpolate(x, size=(size, size), mode="bilinear")
