"""Test-only nodes that look at memory from inside the server: the bytes of all live tensors (after a
full garbage collection), and how the UNet's weights look to autograd while a model is evaluated with
gradients on (inside the pack's drag / LoRA loops). Never shipped."""

import gc
import os

import torch


def live_tensor_bytes() -> tuple[int, int]:
    """(bytes of the distinct storages of every live tensor object, number of tensor objects), after
    ``gc.collect()``: what a node run leaves behind shows up here (cycles included)."""
    gc.collect()
    seen, total, count = set(), 0, 0
    for obj in gc.get_objects():
        try:
            if not isinstance(obj, torch.Tensor) or obj.device.type == "meta":
                continue
            st = obj.untyped_storage()
            key = (st.data_ptr(), obj.device)
        except Exception:  # tensor subclasses without a plain storage
            continue
        count += 1
        if key not in seen:
            seen.add(key)
            total += st.nbytes()
    return total, count


class FastDragTestLiveTensors:
    """Saves the live-tensor census to ``path`` and passes ``latent`` through (wire it before and after
    the node under test)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("LATENT",)
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, latent, path):
        nbytes, count = live_tensor_bytes()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"bytes": nbytes, "count": count}, path)
        return (latent,)


class FastDragTestWeightProbe:
    """A clone of ``model`` with a model-function wrapper that, at the first UNet evaluation with
    gradients enabled, records for every UNet parameter whether it is an inference tensor, requires
    grad, and shares the memory of the weight the loaded model holds outside the loop; which modules
    carry weight functions (ComfyUI copies such a weight at every call) and which forward hooks.
    Saved to ``path``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "FastDragTest"

    def run(self, model, path):
        m = model.clone()
        state = {"done": False}

        def wrapper(apply_model, args):
            if torch.is_grad_enabled() and not state["done"]:
                state["done"] = True
                dm = m.model.diffusion_model
                params = dict(dm.named_parameters())
                info = {"total": len(params),
                        "inference": sum(p.is_inference() for p in params.values()),
                        "requires_grad": sum(p.requires_grad for p in params.values()),
                        "ptrs": {n: p.data_ptr() for n, p in params.items()},
                        "with_weight_function": sorted(n for n, mod in dm.named_modules()
                                                       if getattr(mod, "weight_function", None)),
                        "with_bias_function": sorted(n for n, mod in dm.named_modules()
                                                     if getattr(mod, "bias_function", None)),
                        "with_forward_hook": sorted(n for n, mod in dm.named_modules() if mod._forward_hooks)}
                os.makedirs(os.path.dirname(path), exist_ok=True)
                torch.save(info, path)
            return apply_model(args["input"], args["timestep"], **args["c"])

        m.set_model_unet_function_wrapper(wrapper)
        return (m,)


class FastDragTestWeightPointers:
    """Saves the data pointer of every UNet parameter of ``model`` as loaded now (after ``latent`` was
    computed: the model is loaded), to compare with :class:`FastDragTestWeightProbe`'s record."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "latent": ("LATENT",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, latent, path):
        dm = model.model.diffusion_model
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({n: p.data_ptr() for n, p in dm.named_parameters()}, path)
        return ()


NODES = {  # registered by the test pack's __init__
    "FastDragTestLiveTensors": FastDragTestLiveTensors,
    "FastDragTestWeightProbe": FastDragTestWeightProbe,
    "FastDragTestWeightPointers": FastDragTestWeightPointers,
}
