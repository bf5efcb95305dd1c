"""FastDragPoints: points JSON (+ optional mask) for an image -> FASTDRAG_DRAG."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

from ..fastdrag_core import points as fd_points
from .types import DragSpec, FastDragDrag

log = logging.getLogger(__name__)

POINTS_HELP = (
    'Drag points in pixels of this image, x to the right, y down: {"version": 1, "width": W, '
    '"height": H, "drags": [{"handle": [x, y], "target": [x, y]}, ...]} where W x H is the image '
    "the points were placed on (they are rescaled when the image differs), or DragBench's flat "
    "list [[x, y], [x, y], ...] (handle, target, handle, target, ...).")


def to_drag_spec(image: torch.Tensor, points: str, mask: torch.Tensor | None,
                 node: str = "FastDragPoints") -> DragSpec:
    """Validate ComfyUI IMAGE [B, H, W, C] / points STRING / MASK and build the DragSpec.

    Raises ValueError naming ``node`` and the offending value.
    """
    if image.ndim != 4:
        raise ValueError(f"{node}: image must be an IMAGE [B, H, W, C], got shape {list(image.shape)}")
    if image.shape[0] != 1:
        raise ValueError(f"{node}: got a batch of {image.shape[0]} images; FastDrag edits one image "
                         "at a time (use an ImageFromBatch node).")
    height, width = int(image.shape[1]), int(image.shape[2])
    try:
        parsed = fd_points.parse_points(points)
    except ValueError as e:
        raise ValueError(f"{node}: {e} (points = {_clip(points)!r})") from None
    if parsed.width and parsed.height and (parsed.width, parsed.height) != (width, height):
        log.info("[FastDrag] %s: points were placed on %dx%d, rescaling to the %dx%d image",
                 node, parsed.width, parsed.height, width, height)
    try:
        parsed = parsed.scaled_to(width, height)
        fd_points.check_points_in_image(parsed, width, height)
    except ValueError as e:
        raise ValueError(f"{node}: {e} (image is {width}x{height})") from None
    if width % 8 or height % 8:
        log.warning("[FastDrag] %s: image %dx%d is not a multiple of 8; VAEEncode crops it to %dx%d "
                    "(centred) and the points are shifted with it.", node, width, height,
                    width // 8 * 8, height // 8 * 8)

    m = None
    if mask is not None:
        mm = mask
        if mm.ndim == 3:
            if mm.shape[0] != 1:
                raise ValueError(f"{node}: mask is a batch of {mm.shape[0]}; give one mask")
            mm = mm[0]
        if not bool((mm > 0).any()):  # also LoadImage's 64x64 placeholder for a picture without alpha
            raise ValueError(f"{node}: the mask is empty; paint the region to edit, or leave the mask "
                             "input unconnected to make the whole image editable")
        if mm.ndim != 2 or tuple(mm.shape) != (height, width):
            raise ValueError(f"{node}: mask size {list(mask.shape)} does not match the image "
                             f"{width}x{height} (need [{height}, {width}] or [1, {height}, {width}])")
        m = (mm > 0).detach().to("cpu", copy=True)
    return DragSpec(handles=tuple(tuple(map(float, p)) for p in parsed.handles),
                    targets=tuple(tuple(map(float, p)) for p in parsed.targets),
                    width=width, height=height, mask=m)


def _clip(s: str, n: int = 200) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n] + "..."


class FastDragPoints(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragPoints",
            display_name="FastDrag Points",
            category="FastDrag/points",
            description="Drag points (handle -> target, image pixels) and the editable region of an "
                        "image, for FastDragWarp / FastDragEdit.",
            inputs=[
                io.Image.Input("image", tooltip="The image the points are placed on (one image)."),
                io.String.Input("points", default='{"version": 1, "drags": []}', multiline=False,
                                tooltip=POINTS_HELP),
                io.Mask.Input("mask", optional=True,
                              tooltip="Editable region, same size as the image (> 0 = editable). "
                                      "Not connected = the whole image is editable."),
            ],
            outputs=[FastDragDrag.Output("drag", tooltip="Handles, targets, image size and mask.")],
        )

    @classmethod
    def execute(cls, image, points, mask=None) -> io.NodeOutput:
        spec = to_drag_spec(image, points, mask)
        log.info("[FastDrag] FastDragPoints: %r", spec)
        # The points editor (web/js/fastdrag_points.js) shows these; a custom key keeps ComfyUI's
        # generic image preview from drawing a second copy of the picture under the editor.
        shown = {"fastdrag_image": ui.PreviewImage(image, cls=cls).values}
        if spec.mask is not None:
            shown["fastdrag_mask"] = ui.PreviewMask(spec.mask[None].float(), cls=cls).values
        return io.NodeOutput(spec, ui=shown)
