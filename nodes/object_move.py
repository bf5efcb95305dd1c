"""FastDragMoveObject: the official FastDrag's object moving / object copy on the inverted latent."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..fastdrag_core import points as core_points
from ..fastdrag_core.object_move import move_object, object_move_from_drag, region_to_latent
from .invert import check_latent
from .types import DragSpec, FastDragDrag

log = logging.getLogger(__name__)
NODE = "FastDragMoveObject"
MODES = ("move", "copy")
OVERLAP_OPTIONS = ["keep object", "official"]


def check_fill_region(fill_region, spec: DragSpec, crop, latent_hw, node: str = NODE):
    """The fill-region MASK ([H, W] or [1, H, W] at the drag's image size) as the official soft
    latent mask, or None when it is not given."""
    if fill_region is None:
        return None
    m = fill_region
    if m.ndim == 3:
        if m.shape[0] != 1:
            raise ValueError(f"{node}: fill_region is a batch of {m.shape[0]} masks; give one mask")
        m = m[0]
    if m.ndim != 2 or tuple(m.shape) != (spec.height, spec.width):
        raise ValueError(f"{node}: fill_region is {'x'.join(str(d) for d in reversed(m.shape))} (WxH), which does "
                         f"not match the {spec.width}x{spec.height} image of the drag; give a mask of the image's size")
    return region_to_latent(m.detach().cpu(), crop, latent_hw)


def move_latent(latent: dict, drag, mode: str, overlap: str = "keep object", fill_region=None, node: str = NODE):
    """The LATENT with its object moved or copied (validation with errors naming ``node``)."""
    samples = check_latent(latent, node)
    if mode not in MODES:
        raise ValueError(f"{node}: mode must be one of {', '.join(MODES)}, got {mode!r}")
    if overlap not in OVERLAP_OPTIONS:
        raise ValueError(f"{node}: overlap must be one of {', '.join(OVERLAP_OPTIONS)}, got {overlap!r}")
    if not isinstance(drag, DragSpec):
        raise ValueError(f"{node}: drag must be a FASTDRAG_DRAG from FastDragPoints, got {type(drag).__name__}")
    h, w = samples.shape[-2:]
    if (h, w) != (drag.height // 8, drag.width // 8):
        raise ValueError(f"{node}: the latent is {w}x{h} (an image of {8 * w}x{8 * h} px) but the drag "
                         f"points belong to a {drag.width}x{drag.height} image; give FastDragPoints the image "
                         "that was encoded")
    try:
        checked = core_points.check_drag(core_points.DragPoints(drag.handles, drag.targets, drag.width, drag.height),
                                         (drag.height, drag.width), drag.mask)
        args = object_move_from_drag(checked)
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    fill = check_fill_region(fill_region, drag, checked.crop, (h, w), node)
    try:
        out = move_object(samples, args.mask.to(samples.device), args.shift, args.target, mode,
                          None if fill is None else fill.to(samples.device), keep_object=overlap == "keep object")
    except ValueError as e:
        raise ValueError(f"{node}: {e}") from None
    log.info("[FastDrag] %s: %s the object by (%d, %d) latent cells (dx, dy), %d object cells%s", node,
             "moved" if mode == "move" else "copied", args.shift[1], args.shift[0],
             int((args.mask > 0).sum()), "" if mode == "copy" else
             f", source filled from {'the fill region' if fill is not None and bool((fill > 0).any()) else 'around the target'}")
    result = dict(latent)
    result["samples"] = out
    return result


class FastDragMoveObject(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id=NODE,
            display_name="FastDrag Move / Copy Object",
            category="FastDrag/drag",
            description="The official FastDrag's object moving and object copy: the masked object of the "
                        "inverted latent is pasted at the drag's target (whole latent cells) and, when moving, "
                        "its old place is filled with a tiled patch of the latent. Use instead of Warp + BNNI "
                        "before FastDragSample. One drag; the mask of FastDragPoints is the object.",
            inputs=[
                io.Latent.Input("latent", tooltip="The noisy latent at the edit timestep (FastDragInvert)."),
                FastDragDrag.Input("drag", tooltip="One drag (handle on the object, target where it goes) and the "
                                                   "object's mask (FastDragPoints)."),
                io.Combo.Input("mode", options=["move", "copy"], default="move",
                               tooltip="move = paste at the target and fill the old place; copy = paste only."),
                io.Combo.Input("overlap", options=OVERLAP_OPTIONS, default="keep object",
                               tooltip="Where the moved object overlaps its old place: keep object = the object "
                                       "stays whole (filled first, pasted last); official = the fill overwrites "
                                       "it, as the released code does."),
                io.Mask.Input("fill_region", optional=True,
                              tooltip="Optional region (image size) whose bounding-box centre gives the 12x12-cell "
                                      "patch that fills the old place; unconnected or empty = around the target."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent",
                                      tooltip="The edited noisy latent, for FastDragSample.")],
        )

    @classmethod
    def execute(cls, latent, drag, mode="move", overlap="keep object", fill_region=None) -> io.NodeOutput:
        with torch.no_grad():
            return io.NodeOutput(move_latent(latent, drag, mode, overlap, fill_region))
