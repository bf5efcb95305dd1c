"""FastDragPoints: points JSON (+ optional mask) for an image -> FASTDRAG_DRAG."""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui
from comfy_execution.graph_utils import ExecutionBlocker

from ..fastdrag_core import points as fd_points
from .types import DragSpec, FastDragDrag

log = logging.getLogger(__name__)

POINTS_HELP = (
    'Drag points in pixels of this image, x to the right, y down: {"version": 1, "width": W, '
    '"height": H, "drags": [{"handle": [x, y], "target": [x, y]}, ...]} where W x H is the image '
    "the points were placed on (they are rescaled when the image differs), or DragBench's flat "
    "list [[x, y], [x, y], ...] (handle, target, handle, target, ...).")


def to_drag_spec(image: torch.Tensor, points: str, mask: torch.Tensor | None,
                 node: str = "FastDragPoints", *, allow_empty: bool = False) -> DragSpec | None:
    """Validate ComfyUI IMAGE [B, H, W, C] / points STRING / MASK and build the DragSpec.

    The points and mask go through :func:`fastdrag_core.points.check_drag`, the validation the
    editor's preview and FastDragWarp run too (crop margin, drag cap and mask included), so a drag
    the warp would refuse is refused here, before any UNet call.

    Returns None for zero drags when ``allow_empty``. Raises ValueError naming ``node`` and the
    offending value.
    """
    if image.ndim != 4:
        raise ValueError(f"{node}: image must be an IMAGE [B, H, W, C], got shape {list(image.shape)}")
    if image.shape[0] != 1:
        raise ValueError(f"{node}: got a batch of {image.shape[0]} images; FastDrag edits one image "
                         "at a time (use an ImageFromBatch node).")
    height, width = int(image.shape[1]), int(image.shape[2])
    try:
        parsed = fd_points.parse_points(points, allow_empty=allow_empty)
    except ValueError as e:
        raise ValueError(f"{node}: {e} (points = {_clip(points)!r})") from None
    if len(parsed) == 0:
        return None
    if parsed.width and parsed.height and (parsed.width, parsed.height) != (width, height):
        log.info("[FastDrag] %s: points were placed on %dx%d, rescaling to the %dx%d image",
                 node, parsed.width, parsed.height, width, height)
    try:
        checked = fd_points.check_drag(parsed, (height, width), mask)
    except ValueError as e:
        msg = str(e)  # the size, unless the message names it already
        raise ValueError(f"{node}: {msg}" + ("" if f"{width}x{height}" in msg else f" (image is {width}x{height})")) from None
    if width % 8 or height % 8:
        log.warning("[FastDrag] %s: image %dx%d is not a multiple of 8; VAEEncode crops it to %dx%d "
                    "(centred) and the points are shifted with it.", node, width, height,
                    width // 8 * 8, height // 8 * 8)
    m = None if checked.image_mask is None else checked.image_mask.clone()
    return DragSpec(handles=tuple(tuple(map(float, p)) for p in checked.points.handles),
                    targets=tuple(tuple(map(float, p)) for p in checked.points.targets),
                    width=width, height=height, mask=m)


def _clip(s: str, n: int = 200) -> str:
    s = str(s)
    return s if len(s) <= n else s[:n] + "..."


PICTURE_EVENT = "fastdrag.picture"


def send_picture(node_id, shown: dict) -> None:
    """Send the node's picture to the editor of node ``node_id`` in the front end that queued the
    prompt (a custom event: a failing node's ``ui`` output never reaches the front end)."""
    from server import PromptServer

    srv = PromptServer.instance
    if node_id is None or srv.client_id is None:
        return
    srv.send_sync(PICTURE_EVENT, {"node": str(node_id), **shown}, srv.client_id)


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
            hidden=[io.Hidden.unique_id, io.Hidden.dynprompt],
        )

    @classmethod
    def execute(cls, image, points, mask=None) -> io.NodeOutput:
        try:
            spec = to_drag_spec(image, points, mask, allow_empty=True)
        except ValueError as e:
            # The picture still goes to the editor (whatever feeds `image`), with the reason, so the
            # user can see and fix the drags there, linked ones included.
            if image.ndim == 4 and image.shape[0] >= 1 and image.shape[-1] in (3, 4):
                send_picture(cls.hidden.unique_id, {**picture(image[:1], cls), "fastdrag_error": [str(e)]})
            raise
        # The points editor (web/js/fastdrag_points.js) shows these; custom keys keep ComfyUI's
        # generic image preview from drawing a second copy of the picture under the editor.
        # `fastdrag_points` are the drags the node uses, validated and in this image's pixels: the
        # editor draws them when `points` comes from a link (DragBenchSample, a text node...);
        # `fastdrag_points_from` says which: [node id, output slot] of that link, or None (the widget).
        shown = {**picture(image, cls), "fastdrag_points_from": [points_origin(cls)]}
        if spec is None:
            # No drags yet: the picture may come from any upstream node (Image Scale, a sampler...),
            # so it goes to the editor, where the first drag is placed. Not an error: the nodes after
            # this one are skipped without one (ExecutionBlocker(None) blocks silently) and the editor
            # says what to do next.
            shown["fastdrag_points"] = [fd_points.DragPoints((), (), image.shape[2], image.shape[1]).to_json()]
            shown["fastdrag_notice"] = [NO_DRAGS_YET]
            log.info("[FastDrag] FastDragPoints: %s", NO_DRAGS_YET)
            return io.NodeOutput(ExecutionBlocker(None), ui=shown)
        log.info("[FastDrag] FastDragPoints: %r", spec)
        shown["fastdrag_points"] = [used_points_json(spec)]
        outside = fd_points.handles_outside_mask(spec.handles, spec.mask)
        if outside:
            warning = handles_outside_warning(spec, outside)
            log.warning("[FastDrag] FastDragPoints: %s", warning)
            shown["fastdrag_warning"] = [warning]
        if spec.mask is not None:
            shown["fastdrag_mask"] = ui.PreviewMask(spec.mask[None].float(), cls=cls).values
        return io.NodeOutput(spec, ui=shown)


NO_DRAGS_YET = ("the run stopped here, as it should: no drags yet. The picture is below: place drags on it "
                "(press on the handle and drag to the target), then run again")


def handles_outside_warning(spec: DragSpec, outside: list[int]) -> str:
    """The warning for drags whose handle is outside the mask (indices 0-based, shown 1-based)."""
    which = ", ".join(f"{k + 1} ({spec.handles[k][0]:g}, {spec.handles[k][1]:g})" for k in outside[:4])
    more = f" and {len(outside) - 4} more" if len(outside) > 4 else ""
    return (f"WARNING: handle of drag {which}{more} is outside the mask: only the masked region moves, so the "
            "edit moves that region instead of what is under the handle; put the handle inside, or paint the mask over it")


def points_origin(cls) -> list | None:
    """[node id, output slot] of the link feeding `points` in the prompt being run, or None when the
    points are the widget's text."""
    prompt, node_id = cls.hidden.dynprompt, cls.hidden.unique_id
    if prompt is None or node_id is None or not prompt.has_node(node_id):
        return None
    value = prompt.get_node(node_id).get("inputs", {}).get("points")
    return [str(value[0]), int(value[1])] if isinstance(value, list) and len(value) == 2 else None


def picture(image: torch.Tensor, cls) -> dict:
    """The node's picture for the editor (a temp PNG), under the editor's own ui key."""
    return {"fastdrag_image": ui.PreviewImage(image, cls=cls).values}


def used_points_json(spec: DragSpec) -> str:
    """The drags of ``spec`` as points JSON in pixels of its image (what the warp uses)."""
    return fd_points.DragPoints(spec.handles, spec.targets, spec.width, spec.height).to_json()
