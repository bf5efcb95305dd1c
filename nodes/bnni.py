"""FastDragBNNI: fills the latent cells left empty by FastDragWarp."""

from __future__ import annotations

import math

import torch
from comfy_api.latest import io

from ..fastdrag_core import bnni_fill
from .invert import check_latent
from .types import LATENT_TAG

FILL_OPTIONS = ["bnni", "bnni_paper", "keep", "zero", "noise"]


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
