"""FastDragWarp: LWF + latent relocation of the noisy latent along the drags."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..fastdrag_core import lwf_warp
from ..fastdrag_core import points as core_points
from .invert import check_latent
from .types import DragSpec, FastDragDrag

log = logging.getLogger(__name__)


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
    try:  # the same validation as FastDragPoints and the editor's preview
        checked = core_points.check_drag(core_points.DragPoints(spec.handles, spec.targets, W, H), (H, W), spec.mask)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    return checked.handles, checked.targets, checked.mask


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
