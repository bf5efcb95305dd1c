"""FastDragEdit: the whole pipeline behind one node, as a node expansion into the stage nodes.

The node expands into VAEEncode -> FastDragInvert -> FastDragWarp -> FastDragBNNI ->
FastDragSample -> VAEDecode. Its MODEL/VAE/CONDITIONING/IMAGE/DRAG inputs are taken as raw links, so
the expanded nodes are wired to the real upstream nodes and ComfyUI caches them like hand-wired stage
nodes: when only the points change, VAEEncode and FastDragInvert come from the cache and only warp,
fill, sampling and decoding run again.

With ``task`` "move object" / "copy object", FastDragMoveObject (the official object moving / copy)
takes the place of FastDragWarp + FastDragBNNI.
"""

from __future__ import annotations

from comfy_api.latest import io

from comfy_execution.graph_utils import GraphBuilder

from ..fastdrag_core.dit_kv import DEFAULT_KEEP as DIT_DEFAULT_KEEP, KEEP_OPTIONS as DIT_KEEP_OPTIONS
from .types import FastDragDrag
from .bnni import FILL_OPTIONS
from .object_move import OVERLAP_OPTIONS

TASKS = ["drag", "move object", "copy object"]


class FastDragEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="FastDragEdit",
            display_name="FastDrag Edit",
            category="FastDrag",
            description="One-step drag editing (FastDrag): encode, invert with K/V capture, warp, fill, "
                        "sample with K/V injection, decode. Re-drags reuse the cached inversion.",
            enable_expand=True,
            inputs=[
                io.Model.Input("model", raw_link=True,
                               tooltip="An SD1.x, SD2.x or SDXL-family model, eps or v-prediction (official: "
                                       "LCM-Dreamshaper v7 UNet as a plain eps model), or Flux.1 / SD3.x; LoRA "
                                       "and other patches apply."),
                io.Vae.Input("vae", raw_link=True, tooltip="The VAE that encodes and decodes the image."),
                io.Conditioning.Input("positive", raw_link=True,
                                      tooltip="Prompt conditioning (the image prompt or the empty prompt)."),
                io.Image.Input("image", raw_link=True,
                               tooltip="The image to edit (the one given to FastDragPoints). Sizes that are "
                                       "not multiples of 8 are cropped centred, like VAEEncode."),
                FastDragDrag.Input("drag", raw_link=True, tooltip="Drag points and mask (FastDragPoints)."),
                io.Int.Input("steps", default=10, min=1, max=1000,
                             tooltip="Total DDIM steps of the ddim_uniform schedule (official: 10)."),
                io.Float.Input("strength", default=0.7, min=0.01, max=1.0, step=0.01,
                               tooltip="Inversion strength: round(strength x steps) inversion and sampling "
                                       "steps (official: 0.7)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (official: 1, no negative pass)."),
                io.Conditioning.Input("negative", optional=True, raw_link=True,
                                      tooltip="Negative conditioning, used only when cfg != 1."),
                io.Combo.Input("fill", options=FILL_OPTIONS, default="bnni", optional=True,
                               tooltip="How the cells left empty by the warp are filled (see FastDragBNNI)."),
                io.Combo.Input("handle_on_cell", options=["paper", "official"], default="paper", optional=True,
                               tooltip="A masked latent cell exactly on a handle (see FastDragWarp)."),
                io.Boolean.Input("consistency", default=True, optional=True,
                                 tooltip="Replace decoder self-attention K/V with the inversion's while "
                                         "sampling (FastDrag's consistency-preserving strategy)."),
                io.Combo.Input("kv_device", options=["auto", "cpu", "device"], default="auto", optional=True,
                               tooltip="Where the captured K/V live (see FastDragInvert): auto = the GPU for "
                                       "small stores, system memory for large ones."),
                io.Combo.Input("task", options=TASKS, default="drag", optional=True,
                               tooltip="drag = FastDrag's drag (warp + fill); move object / copy object = the "
                                       "official object moving / copy: one drag, the mask is the object (see "
                                       "FastDragMoveObject)."),
                io.Combo.Input("overlap", options=OVERLAP_OPTIONS, default="keep object", optional=True,
                               tooltip="move object: where the object overlaps its old place, keep object = it "
                                       "stays whole; official = the fill overwrites it."),
                io.Mask.Input("fill_region", optional=True, raw_link=True,
                              tooltip="move object: the region whose patch fills the old place (default: around "
                                      "the target)."),
                io.Combo.Input("dit_kv", options=list(DIT_KEEP_OPTIONS), default=DIT_DEFAULT_KEEP, optional=True,
                               tooltip="Flux / SD3: which joint-attention K/V are kept (see FastDragInvert)."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The dragged image."),
                io.Latent.Output("latent", display_name="latent", tooltip="The dragged clean latent."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, image, drag, steps, strength, cfg, negative=None, fill="bnni",
                handle_on_cell="paper", consistency=True, kv_device="auto", task="drag", overlap="keep object",
                fill_region=None, dit_kv=DIT_DEFAULT_KEEP) -> io.NodeOutput:
        g = GraphBuilder()
        neg = {} if negative is None else {"negative": negative}
        enc = g.node("VAEEncode", pixels=image, vae=vae)
        inv = g.node("FastDragInvert", model=model, positive=positive, latent=enc.out(0), steps=steps,
                     strength=strength, cfg=cfg, kv_device=kv_device, dit_kv=dit_kv, **neg)
        if task in ("move object", "copy object"):
            region = {} if fill_region is None else {"fill_region": fill_region}
            filled = g.node("FastDragMoveObject", latent=inv.out(0), drag=drag, mode=task.split()[0],
                            overlap=overlap, **region)
        elif task == "drag":
            warp = g.node("FastDragWarp", latent=inv.out(0), drag=drag, handle_on_cell=handle_on_cell)
            filled = g.node("FastDragBNNI", latent=warp.out(0), null_mask=warp.out(1), fill=fill)
        else:
            raise ValueError(f"FastDragEdit: task must be one of {', '.join(TASKS)}, got {task!r}")
        samp = g.node("FastDragSample", model=model, positive=positive, latent=filled.out(0), kv=inv.out(1),
                      cfg=cfg, consistency=consistency, **neg)
        dec = g.node("VAEDecode", samples=samp.out(0), vae=vae)
        return io.NodeOutput(dec.out(0), samp.out(0), expand=g.finalize())
