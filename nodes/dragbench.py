"""DragBenchSample: one DragBench sample (image, mask, points, prompt) from ComfyUI's input folder."""

from __future__ import annotations

import os

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image

import folder_paths

from ..fastdrag_core import dragbench as db
from ..fastdrag_core.dragbench_sheet import draw_drags

NODE = "DragBenchSample"


def dragbench_root(folder: str, node: str = NODE) -> tuple[str, str]:
    """(path, shown name) of ``folder`` inside ComfyUI's input folder; never outside it, links
    included. Messages name it relative to the input folder, never by its server path."""
    text = str(folder).strip()
    if "\0" in text or len(text) > 1024:
        raise ValueError(f"{node}: folder must be a folder name inside ComfyUI's input folder, e.g. 'DragBench'")
    rel = os.path.normpath(text or ".")
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        raise ValueError(f"{node}: folder {text[:80]!r} must be a path inside ComfyUI's input folder, e.g. "
                         "'DragBench'")
    return os.path.join(folder_paths.get_input_directory(), rel), rel.replace(os.sep, "/")


def list_samples(folder: str, node: str = NODE) -> list:
    """The samples of ``folder`` (see :func:`dragbench_root`); errors name the node."""
    root, shown = dragbench_root(folder, node)
    try:
        return db.list_samples(root, shown=shown, within=folder_paths.get_input_directory())
    except db.DragBenchError as e:
        raise ValueError(f"{node}: {e} (inside ComfyUI's input folder)") from None


def load_sample(folder: str, sample: str, node: str = NODE):
    """(SampleRef, RGB uint8 array, DragBenchMeta), validated; errors name the node and the file
    (relative to ComfyUI's input folder)."""
    try:
        ref = db.find_sample(list_samples(folder, node), sample)
        img, meta = db.load_sample(ref, within=folder_paths.get_input_directory())
    except (db.DragBenchError, db.UnsafePickleError) as e:
        raise ValueError(f"{node}: {e}") from None
    return ref, np.asarray(img).copy(), meta


class DragBenchSample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragBenchSample",
            display_name="DragBench Sample",
            category="FastDrag/dragbench",
            description="One DragBench sample (original_image.png + meta_data.pkl, read with a restricted "
                        "unpickler that runs no code): image, editable-region mask, drag points and prompt.",
            inputs=[
                io.String.Input("folder", default="DragBench",
                                tooltip="The DragBench folder inside ComfyUI's input folder "
                                        "(<category>/<sample>/original_image.png + meta_data.pkl)."),
                io.String.Input("sample", default="0",
                                tooltip="An index (0 = first sample in the official category order, then by "
                                        "name; -1 = last), 'category/sample', or a sample folder name."),
            ],
            outputs=[
                io.Image.Output("image", tooltip="original_image.png"),
                io.Mask.Output("mask", tooltip="The editable region (1 = editable); all ones when the sample "
                                               "has no mask (the whole image is editable)."),
                io.String.Output("points", tooltip="The drags as the pack's points JSON (for FastDragPoints)."),
                io.String.Output("prompt", tooltip="The sample's prompt."),
                io.String.Output("name", tooltip="category/sample of the loaded sample."),
            ],
        )

    @classmethod
    def fingerprint_inputs(cls, folder, sample):
        try:
            ref = db.find_sample(list_samples(folder), sample)
            return tuple((p, os.path.getmtime(p)) for p in (ref.meta_path, ref.image_path) if os.path.exists(p))
        except (ValueError, OSError):
            return float("nan")

    @classmethod
    def execute(cls, folder, sample) -> io.NodeOutput:
        ref, rgb, meta = load_sample(folder, sample)
        height, width = rgb.shape[:2]
        image = torch.from_numpy(rgb).float().div(255.0)[None]
        mask = (torch.ones(1, height, width) if meta.mask is None
                else torch.from_numpy(meta.mask.astype(np.float32))[None])
        preview = draw_drags(Image.fromarray(rgb), meta.handles, meta.targets, meta.mask)
        shown = torch.from_numpy(np.asarray(preview).copy()).float().div(255.0)[None]
        text = f"{ref.key}: {len(meta.handles)} drag(s), prompt {meta.prompt!r}"
        return io.NodeOutput(image, mask, meta.points_json(width, height), meta.prompt, ref.key,
                             ui={**ui.PreviewImage(shown, cls=cls).as_dict(), "text": (text,)})
