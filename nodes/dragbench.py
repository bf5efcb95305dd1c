"""DragBenchSample: one DragBench sample (image, mask, points, prompt) from ComfyUI's input folder."""

from __future__ import annotations

import os

import numpy as np
import torch
from comfy_api.latest import io, ui
from PIL import Image, ImageOps

import folder_paths

from ..fastdrag_core import dragbench as db
from ..fastdrag_core.dragbench_sheet import draw_drags

NODE = "DragBenchSample"


def dragbench_root(folder: str, node: str = NODE) -> str:
    """``folder`` (relative to ComfyUI's input folder) as a path; never outside the input folder."""
    rel = os.path.normpath(str(folder).strip() or ".")
    if os.path.isabs(rel) or rel == ".." or rel.startswith(".." + os.sep):
        raise ValueError(f"{node}: folder {folder!r} must be a path inside ComfyUI's input folder "
                         f"({folder_paths.get_input_directory()}), e.g. 'DragBench'")
    return os.path.join(folder_paths.get_input_directory(), rel)


def load_sample(folder: str, sample: str, node: str = NODE):
    """(SampleRef, RGB uint8 array, DragBenchMeta), validated; errors name the node and the file."""
    try:
        ref = db.find_sample(db.list_samples(dragbench_root(folder, node)), sample)
        meta = db.read_meta(ref.meta_path)
        with Image.open(ref.image_path) as im:
            rgb = np.asarray(ImageOps.exif_transpose(im).convert("RGB")).copy()
        db.check_sample(meta, rgb.shape[1], rgb.shape[0], ref.meta_path)
    except (db.DragBenchError, db.UnsafePickleError, OSError) as e:
        raise ValueError(f"{node}: {e}") from None
    return ref, rgb, meta


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
            ref = db.find_sample(db.list_samples(dragbench_root(folder)), sample)
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
