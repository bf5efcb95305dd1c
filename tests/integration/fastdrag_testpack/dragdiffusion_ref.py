"""Test-only nodes for DragDiffusion: a float64 reference of the first drag step with the UNet called
directly, a forward + backward timer for the benchmark, and the UNet-weight gradient probes (a model
whose weights require grad as after a GPU load, and a report of the weights' gradients). Never shipped.

The reference shares no code with the pack: features are read with a forward hook on the last
layer of the output block that ends diffusers' ``up_blocks[2]``, the motion-supervision loss is
written from the equation with explicit bilinear corner weights, and Adam's first step is
z - lr * g / (|g| + eps) (m_hat = g, v_hat = g^2).
"""

import copy
import json
import math
import os
import statistics
import time

import torch
import torch.nn.functional as F

import comfy.model_management

from .dd_equations import motion_loss


def _up_block_end(dm, up_index):
    """Index of the output block whose last layer produces diffusers' up_blocks[up_index] output."""
    start = 0
    for n in reversed(list(dm.num_res_blocks)):
        end = start + n + 1
        if up_index == 0:
            return end - 1
        up_index -= 1
        start = end
    raise ValueError("no such up block")


class FastDragTestDDFirstStep:
    """z after DragDiffusion's first Adam step (no mask), float64, UNet called directly.

    ``handles`` / ``targets``: JSON [[row, col], ...] on the feature grid (half the image)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent": ("LATENT",),
                             "handles": ("STRING", {"default": "[]"}), "targets": ("STRING", {"default": "[]"}),
                             "lr": ("FLOAT", {"default": 0.01}), "r_m": ("INT", {"default": 1}),
                             "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, positive, latent, handles, targets, lr, r_m, path):
        comfy.model_management.load_models_gpu([model])
        ms = model.get_model_object("model_sampling")
        lf = model.get_model_object("latent_format")
        sched = latent["fastdrag"]["schedule"]
        t, sigma = sched.timesteps[0], sched.sigmas[0]
        handles, targets = json.loads(handles), json.loads(targets)
        with torch.inference_mode(False), torch.enable_grad():
            dm = copy.deepcopy(model.get_model_object("diffusion_model")).to("cpu", torch.float64)
            for p in dm.parameters():
                p.requires_grad_(False)
            got = {}
            layer = dm.output_blocks[_up_block_end(dm, 2)][-1]
            hook = layer.register_forward_hook(lambda mod, inp, out: got.__setitem__("f", out))
            ctx = positive[0][0].clone().to("cpu", torch.float64)
            x = lf.process_in(latent["samples"].clone().to("cpu", torch.float64))
            z = (x / math.sqrt(sigma * sigma + 1)).clone().requires_grad_(True)
            dm(z, timesteps=torch.tensor([float(t)], dtype=torch.float64), context=ctx)
            hook.remove()
            h2, w2 = 4 * z.shape[-2], 4 * z.shape[-1]  # half the 8x image
            feat = F.interpolate(got["f"], size=(h2, w2), mode="bilinear")
            loss = motion_loss(feat, handles, targets, r_m)
            (g,) = torch.autograd.grad(loss, z)
            z1 = z.detach() - lr * g / (g.abs() + 1e-8)
            samples = lf.process_out(z1 * math.sqrt(sigma * sigma + 1))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save({"latent": samples.float(), "grad": g, "loss": float(loss), "timestep": t}, path)
        return {"ui": {"text": [f"loss {float(loss):.6g} at t={t}"]}}


class FastDragTestUNetFwdBwd:
    """Median time of one forward + backward (w.r.t. the input) of the model's UNet at the latent's
    size, with ordinary (non-inference) weight copies, for benchmarks/bench_dragdiffusion.py."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent": ("LATENT",),
                             "runs": ("INT", {"default": 5})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, positive, latent, runs):
        comfy.model_management.load_models_gpu([model])
        device = model.load_device
        dtype = model.model.manual_cast_dtype or model.model.get_dtype()
        times = []
        with torch.inference_mode(False), torch.enable_grad():
            dm = copy.deepcopy(model.get_model_object("diffusion_model")).to(device)
            for p in dm.parameters():
                p.requires_grad_(False)
            ctx = positive[0][0].clone().to(device, dtype)
            x0 = latent["samples"].clone().to(device, dtype)
            for _ in range(runs + 1):
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                t0 = time.perf_counter()
                x = x0.clone().requires_grad_(True)
                out = dm(x, timesteps=torch.tensor([681.0], device=device), context=ctx)
                (g,) = torch.autograd.grad(out.float().square().mean(), x)
                if device.type == "cuda":
                    torch.cuda.synchronize(device)
                times.append(time.perf_counter() - t0)
            del dm
        med = statistics.median(times[1:])
        return {"ui": {"text": [f"unet forward+backward median {med:.4f} s over {runs} runs"]}}


class FastDragTestTrainableWeights:
    """The model with its UNet replaced (object patch on a clone; the checkpoint's model is untouched) by
    a copy whose weights are ordinary tensors that require grad: the state ComfyUI's UNet is in after
    it is moved to a GPU outside inference mode (``Module.to`` keeps ``requires_grad=True`` and the new
    tensors are no longer inference tensors), which a CPU run never reaches. For the gradient checks
    of DragDiffusionDrag."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",)}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "FastDragTest"

    def run(self, model):
        with torch.inference_mode(False):
            dm = copy.deepcopy(model.get_model_object("diffusion_model"))
            for mod in dm.modules():
                for name, p in list(mod._parameters.items()):
                    if p is not None:
                        mod._parameters[name] = torch.nn.Parameter(p.detach().clone(), requires_grad=True)
        assert all(p.requires_grad and not p.is_inference() for p in dm.parameters())
        m = model.clone()
        m.add_object_patch("diffusion_model", dm)
        return (m,)


class FastDragTestParamGrads:
    """After ``latent`` is computed, saves how many parameters of ``model``'s UNet (object patches
    honoured) hold a ``.grad``, require grad, or are inference tensors."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "latent": ("LATENT",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, latent, path):
        info = param_state(model, path)
        return {"ui": {"text": [json.dumps(info)]}}


class FastDragTestParamState(FastDragTestParamGrads):
    """The same record, taken before the model is used: passes ``model`` through, so that a node fed
    by its output runs after it."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ("MODEL",)
    OUTPUT_NODE = False

    def run(self, model, path):
        param_state(model, path)
        return (model,)


def param_state(model, path) -> dict:
    """Counts of ``model``'s UNet parameters holding a ``.grad``, requiring grad, inference tensors;
    and each parameter's (name, tensor identity, requires_grad, is_inference), saved to ``path``."""
    named = list(model.get_model_object("diffusion_model").named_parameters())
    params = [p for _, p in named]
    info = {"total": len(params), "with_grad": sum(p.grad is not None for p in params),
            "requires_grad": sum(p.requires_grad for p in params),
            "inference": sum(p.is_inference() for p in params)}
    state = [(n, id(p), p.requires_grad, p.is_inference()) for n, p in named]
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save({**info, "params": state}, path)
    return info


NODES = {  # registered by the test pack's __init__
    "FastDragTestDDFirstStep": FastDragTestDDFirstStep,
    "FastDragTestUNetFwdBwd": FastDragTestUNetFwdBwd,
    "FastDragTestTrainableWeights": FastDragTestTrainableWeights,
    "FastDragTestParamGrads": FastDragTestParamGrads,
    "FastDragTestParamState": FastDragTestParamState,
}
