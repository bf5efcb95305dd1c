"""ComfyUI glue of the FastDrag pack: V3 node classes, one pipeline stage per module.

Everything numerical lives in ``fastdrag_core`` (pure PyTorch, no ``comfy`` import); these modules
translate ComfyUI types, validate inputs with errors naming the node and the value, and run the
diffusion loops through ComfyUI's sampler machinery (``nodes/patches.py``).
"""

from comfy_api.latest import ComfyExtension, io

from . import comfy_adapter
from .bnni import FastDragBNNI
from .dd_lora import DragDiffusionLoRA
from .dragbench import DragBenchSample
from .dragbench_metrics import DragImageFidelity, DragMeanDistance
from .dragdiffusion import DragDiffusionDrag
from .dragdiffusion_edit import DragDiffusionEdit
from .dragdiffusion_sample import DragDiffusionSample
from .edit import FastDragEdit
from .invert import FastDragInvert
from .points import FastDragPoints
from .sample import FastDragSample
from .warp import FastDragWarp

NODE_LIST: list[type[io.ComfyNode]] = [
    # FastDrag
    FastDragPoints, FastDragInvert, FastDragWarp, FastDragBNNI, FastDragSample, FastDragEdit,
    # DragDiffusion
    DragDiffusionLoRA, DragDiffusionDrag, DragDiffusionSample, DragDiffusionEdit,
    # DragBench: sample loader and metrics
    DragBenchSample, DragMeanDistance, DragImageFidelity,
]


class FastDragExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return comfy_adapter.available_nodes(NODE_LIST)  # without those a missing ComfyUI internal disables
