"""DragDiffusionEdit: the whole DragDiffusion pipeline behind one node, as a node expansion.

VAEEncode -> [DragDiffusionLoRA, when lora_steps > 0] -> FastDragInvert (no K/V capture) ->
DragDiffusionDrag -> DragDiffusionSample (reference = the inverted latent) -> VAEDecode. The expanded
nodes are wired to the real upstream nodes (the inputs' links), so ComfyUI caches them like hand-wired
stages: a re-drag (new points) reuses the encoding, the LoRA and the inversion.

``model`` is the one input ComfyUI evaluates before this node runs: the model rule of the DragDiffusion
nodes and DragDiffusionDrag's feature check (a UNet deep enough for ``up_blocks[2]``) are applied to it first, so an unsupported model (SDXL, EDM, flow, ...) is refused before the LoRA
training and the inversion; its link, for the expansion, is read from the (dynamic) prompt. The other
inputs are raw links, never evaluated here.
"""

from __future__ import annotations

from comfy_api.latest import io

from comfy_execution.graph_utils import GraphBuilder

from .dragdiffusion import FEATURE_UP_BLOCK, dd_supported_model
from .unet_features import feature_entry_block
from .types import FastDragDrag

NODE = "DragDiffusionEdit"
LORA_NODE = "DragDiffusionLoRA"


def input_link(dynprompt, unique_id, name: str):
    """The link ``[node id, output index]`` feeding input ``name`` of node ``unique_id`` in the prompt as
    it runs (expanded nodes included)."""
    link = dynprompt.get_node(unique_id)["inputs"].get(name)
    if not (isinstance(link, list) and len(link) == 2):
        raise ValueError(f"{NODE}: input {name!r} must be connected to a node's output, got {link!r}")
    return link


class DragDiffusionEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragDiffusionEdit",
            display_name="DragDiffusion Edit",
            category="FastDrag/dragdiffusion",
            description="DragDiffusion (CVPR 2024) in one node: identity LoRA on the image, DDIM inversion, "
                        "latent optimisation with motion supervision and point tracking, sampling with "
                        "reference-latent control, decode. Slower than FastDragEdit, keeps identity better.",
            enable_expand=True,
            hidden=[io.Hidden.unique_id, io.Hidden.dynprompt],
            inputs=[
                io.Model.Input("model", tooltip="An SD1.x / SD2.x model (official: SD1.5); eps or v-prediction, LCM "
                                                "sampling runs as plain eps. SDXL-family models are refused "
                                                "(use FastDragEdit for those)."),
                io.Vae.Input("vae", raw_link=True, tooltip="The VAE that encodes and decodes the image."),
                io.Conditioning.Input("positive", raw_link=True,
                                      tooltip="Prompt conditioning (official: a prompt describing the image; "
                                              "also the LoRA's training prompt)."),
                io.Image.Input("image", raw_link=True,
                               tooltip="The image to edit (the one given to FastDragPoints); sizes that are "
                                       "not multiples of 8 are cropped centred, like VAEEncode."),
                FastDragDrag.Input("drag", raw_link=True, tooltip="Drag points and optional mask (FastDragPoints)."),
                io.Int.Input("steps", default=50, min=1, max=1000,
                             tooltip="DDIM steps of the schedule (official 50)."),
                io.Float.Input("strength", default=0.7, min=0.01, max=1.0, step=0.01,
                               tooltip="Inversion strength: round(strength x steps) inversion and sampling steps "
                                       "(official 0.7 -> 35 steps, t = 681)."),
                io.Int.Input("drag_steps", default=80, min=1, max=1000,
                             tooltip="Maximum drag iterations (DragDiffusionDrag steps; official 80)."),
                io.Int.Input("lora_steps", default=80, min=0, max=10000,
                             tooltip="Identity-LoRA training steps (official 80); 0 = no LoRA (faster, "
                                     "identity less well kept)."),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance of the final sampling (official 1)."),
                io.Conditioning.Input("negative", optional=True, raw_link=True,
                                      tooltip="Negative conditioning, used only when cfg != 1."),
                io.Float.Input("learning_rate", default=0.01, min=1e-5, max=1.0, step=0.001, round=1e-5,
                               optional=True, tooltip="Adam learning rate of the drag (official 0.01)."),
                io.Float.Input("lam", default=0.1, min=0.0, max=100.0, step=0.01, optional=True,
                               tooltip="Mask regulariser weight (official 0.1; only with a mask)."),
                io.Int.Input("r_m", default=1, min=0, max=16, optional=True,
                             tooltip="Motion-supervision patch radius (official 1)."),
                io.Int.Input("r_p", default=3, min=0, max=32, optional=True,
                             tooltip="Point-tracking search radius (official 3)."),
                io.Int.Input("start_step", default=0, min=0, max=1000, optional=True,
                             tooltip="First denoising step with reference control (official 0)."),
                io.Int.Input("start_layer", default=10, min=0, max=1000, optional=True,
                             tooltip="First controlled transformer block in call order (official 10 of 16)."),
                io.Float.Input("lora_learning_rate", default=5e-4, min=1e-6, max=1.0, step=1e-5, round=1e-6,
                               optional=True, tooltip="LoRA learning rate (official 5e-4)."),
                io.Int.Input("lora_rank", default=16, min=1, max=256, optional=True,
                             tooltip="LoRA rank (official 16)."),
                io.Int.Input("lora_batch_size", default=4, min=1, max=64, optional=True,
                             tooltip="LoRA batch size (official 4)."),
                io.Int.Input("seed", default=0, min=0, max=0xFFFFFFFFFFFFFFFF, optional=True,
                             tooltip="Seed of the LoRA training."),
            ],
            outputs=[
                io.Image.Output("image", display_name="image", tooltip="The dragged image."),
                io.Latent.Output("latent", display_name="latent", tooltip="The dragged clean latent."),
                io.String.Output("points", display_name="points",
                                 tooltip="Where point tracking ended (points JSON, image pixels)."),
            ],
        )

    @classmethod
    def execute(cls, model, vae, positive, image, drag, steps, strength, drag_steps, lora_steps, cfg,
                negative=None, learning_rate=0.01, lam=0.1, r_m=1, r_p=3, start_step=0, start_layer=10,
                lora_learning_rate=5e-4, lora_rank=16, lora_batch_size=4, seed=0) -> io.NodeOutput:
        dd_supported_model(model, NODE)  # before the LoRA training and the inversion
        feature_entry_block(model.get_model_object("diffusion_model"), FEATURE_UP_BLOCK, NODE)  # as DragDiffusionDrag
        model = input_link(cls.hidden.dynprompt, cls.hidden.unique_id, "model")
        g = GraphBuilder()
        neg = {} if negative is None else {"negative": negative}
        enc = g.node("VAEEncode", pixels=image, vae=vae)
        if lora_steps > 0:
            lora = g.node(LORA_NODE, model=model, positive=positive, latent=enc.out(0), steps=lora_steps,
                          learning_rate=lora_learning_rate, rank=lora_rank, batch_size=lora_batch_size, seed=seed)
            model = lora.out(0)
        inv = g.node("FastDragInvert", model=model, positive=positive, latent=enc.out(0), steps=steps,
                     strength=strength, cfg=1.0, capture_kv=False)
        dragged = g.node("DragDiffusionDrag", model=model, positive=positive, latent=inv.out(0), drag=drag,
                         steps=drag_steps, learning_rate=learning_rate, lam=lam, r_m=r_m, r_p=r_p)
        samp = g.node("DragDiffusionSample", model=model, positive=positive, latent=dragged.out(0),
                      reference=inv.out(0), start_step=start_step, start_layer=start_layer, cfg=cfg, **neg)
        dec = g.node("VAEDecode", samples=samp.out(0), vae=vae)
        return io.NodeOutput(dec.out(0), samp.out(0), dragged.out(1), expand=g.finalize())
