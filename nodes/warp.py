"""FastDragWarp (LWF + latent relocation) and FastDragBNNI (null-region fill)."""

from __future__ import annotations

import logging
import math

import torch
from comfy_api.latest import io

from ..fastdrag_core import bnni_fill, image_mask_to_latent, image_points_to_latent, lwf_warp
from ..fastdrag_core.points import DragPoints, check_points_in_image
from .invert import check_latent
from .types import LATENT_TAG, DragSpec, FastDragDrag

log = logging.getLogger(__name__)

FILL_OPTIONS = ["bnni", "bnni_paper", "keep", "zero", "noise"]


def drag_to_latent(spec: DragSpec, latent_hw, node: str = "FastDragWarp"):
    """Map a DragSpec onto a latent grid by the official rules (method §1.7).

    The latent must be the VAE latent of the drag's image: h = H // 8, w = W // 8. When H or W is not
    a multiple of 8, VAEEncode has cropped the image centred to 8h x 8w; points and mask are shifted
    and cropped the same way.

    Returns:
        (handles [N, 2], targets [N, 2]) latent-grid (x, y) float32, and the bool [h, w] mask.
    """
    if not isinstance(spec, DragSpec):
        raise ValueError(f"{node}: drag must be a FASTDRAG_DRAG from FastDragPoints, got {type(spec).__name__}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    H, W = spec.height, spec.width
    if (h, w) != (H // 8, W // 8):
        raise ValueError(f"{node}: the latent is {w}x{h} (an image of {8 * w}x{8 * h} px) but the drag "
                         f"points belong to a {W}x{H} image; give FastDragPoints the image that was encoded")
    oy, ox = (H % 8) // 2, (W % 8) // 2
    hc, wc = 8 * h, 8 * w
    pts = DragPoints(tuple((x - ox, y - oy) for x, y in spec.handles),
                     tuple((x - ox, y - oy) for x, y in spec.targets), wc, hc)
    if ox or oy:
        try:
            check_points_in_image(pts, wc, hc)
        except ValueError as e:
            raise ValueError(f"{node}: after VAEEncode's centred crop of {W}x{H} to {wc}x{hc} "
                             f"(offset x={ox}, y={oy}): {e}") from None
    hs, ts = pts.as_tensors()
    handles = image_points_to_latent(hs, (hc, wc))
    targets = image_points_to_latent(ts, (hc, wc))
    if spec.mask is None:
        mask = torch.ones(h, w, dtype=torch.bool)
    else:
        mask = image_mask_to_latent(spec.mask[oy:oy + hc, ox:ox + wc], (h, w))
        if not bool(mask.any()):
            raise ValueError(f"{node}: the mask ({int(spec.mask.sum())} px) covers no latent cell "
                             f"at {w}x{h}; paint a larger editable region")
    return handles, targets, mask


class FastDragWarp(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragWarp",
            display_name="FastDrag Warp (LWF)",
            category="FastDrag/drag",
            description="Latent warpage function and latent relocation: moves the masked latent cells "
                        "along the drags in one step; reports the cells left empty.",
            inputs=[
                io.Latent.Input("latent", tooltip="The noisy latent at the edit timestep (FastDragInvert)."),
                FastDragDrag.Input("drag", tooltip="Drag points and mask (FastDragPoints) of the encoded image."),
                io.Combo.Input("handle_on_cell", options=["paper", "official"], default="paper",
                               tooltip="A masked latent cell exactly on a handle: paper = it moves by the "
                                       "full drag (the formula's limit); official = it is dropped, as the "
                                       "released code does."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The warped latent; empty cells keep their original values "
                                         "until FastDragBNNI fills them."),
                io.Mask.Output("null_mask", display_name="null_mask",
                               tooltip="Editable cells that received no value, [B, h, w] at latent "
                                       "resolution (1 = empty)."),
            ],
        )

    @classmethod
    def execute(cls, latent, drag, handle_on_cell="paper") -> io.NodeOutput:
        samples = check_latent(latent, "FastDragWarp")
        handles, targets, mask = drag_to_latent(drag, samples.shape[-2:])
        warped, null = lwf_warp(samples, handles, targets, mask, fill="keep", handle_on_cell=handle_on_cell)
        log.info("[FastDrag] FastDragWarp: %d drags, %d editable cells, %d left empty", len(handles),
                 int(mask.sum()), int(null.sum()))
        out = dict(latent)
        out["samples"] = warped
        return io.NodeOutput(out, null.to(device="cpu", dtype=torch.float32))


class FastDragBNNI(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragBNNI",
            display_name="FastDrag Fill (BNNI)",
            category="FastDrag/drag",
            description="Fills the latent cells left empty by FastDragWarp (bilateral nearest-neighbour "
                        "interpolation by default).",
            inputs=[
                io.Latent.Input("latent", tooltip="The warped latent (FastDragWarp)."),
                io.Mask.Input("null_mask", tooltip="The empty cells (FastDragWarp's null_mask, latent resolution)."),
                io.Combo.Input("fill", options=FILL_OPTIONS, default="bnni",
                               tooltip="bnni = official BNNI (raster order, in place; the paper's numbers); "
                                       "bnni_paper = BNNI as the paper's figure draws it (originally valued "
                                       "references only); keep = original values; zero = zeros; noise = "
                                       "uniform [0, 1) noise in the official latent scale (seed 42)."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The filled latent.")],
        )

    @classmethod
    def execute(cls, latent, null_mask, fill="bnni") -> io.NodeOutput:
        samples = check_latent(latent, "FastDragBNNI")
        b, _, h, w = samples.shape
        nm = null_mask if null_mask.ndim == 3 else null_mask.reshape(1, *null_mask.shape[-2:])
        if tuple(nm.shape[-2:]) != (h, w) or nm.shape[0] not in (1, b):
            raise ValueError(f"FastDragBNNI: null_mask {list(null_mask.shape)} does not match the latent "
                             f"{list(samples.shape)} (need [{b}, {h}, {w}] at latent resolution, "
                             "from FastDragWarp)")
        null = (nm > 0.5).expand(b, h, w).to(samples.device)
        keep = ~null[:, None]
        if fill == "keep" or not bool(null.any()):
            out_samples = samples.clone()
        elif fill == "zero":
            out_samples = samples * keep
        elif fill == "noise":
            tag = latent.get(LATENT_TAG) or {}
            sched, scale = tag.get("schedule"), tag.get("scale_factor")
            factor = math.sqrt(1.0 + sched.sigmas[0] ** 2) / scale if sched and scale else 1.0
            g = torch.Generator().manual_seed(42)
            noise = torch.rand(samples.shape, generator=g, dtype=torch.float32).to(samples) * factor
            out_samples = torch.where(keep, samples, noise)
        elif fill in ("bnni", "bnni_paper"):
            out_samples = bnni_fill(samples * keep, null, order="official" if fill == "bnni" else "paper")
        else:
            raise ValueError(f"FastDragBNNI: fill must be one of {FILL_OPTIONS}, got {fill!r}")
        out = dict(latent)
        out["samples"] = out_samples
        return io.NodeOutput(out)
