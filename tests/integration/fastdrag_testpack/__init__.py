"""Test-only ComfyUI node pack, loaded next to comfyui-fastdrag by the integration tests.

It gets tensors out of the server (torch.save to a given path), computes a float64 reference of
the official DDIM inversion by calling the UNet directly (allowed here: it is the reference, not
the product), and writes small random LoRA / ControlNet files for the loaded model. Never shipped.
"""

import copy
import math
import os

import torch
from safetensors.torch import save_file

import comfy.cldm.cldm
import comfy.model_management
import comfy.ops
import folder_paths


def _save(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)
    return {"ui": {"text": [path]}}


class FastDragTestSave:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"path": ("STRING", {"default": ""})},
                "optional": {"latent": ("LATENT",), "mask": ("MASK",), "kv": ("FASTDRAG_KV",),
                             "image": ("IMAGE",)}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, path, latent=None, mask=None, kv=None, image=None):
        out = {}
        if latent is not None:
            out["latent"] = latent["samples"].detach().cpu().clone()
            tag = latent.get("fastdrag")
            if tag:
                out["timesteps"] = list(tag["schedule"].timesteps)
                out["sigmas"] = list(tag["schedule"].sigmas)
        if mask is not None:
            out["mask"] = mask.detach().cpu().clone()
        if image is not None:
            out["image"] = image.detach().cpu().clone()
        if kv is not None:
            out["kv_keys"] = [(tuple(k[0]), k[1], k[2]) for k in kv.keys()]
            out["kv_nbytes"] = kv.nbytes
            out["kv_dtypes"] = sorted({str(kv.get(*k)[0].dtype) for k in kv.keys()})
            out["kv_timesteps"] = list(kv.schedule.timesteps)
        return _save(path, out)


class FastDragTestRefInvert:
    """Official DDIM inversion (fastdrag-method.md §1.5) in float64, UNet called directly."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent": ("LATENT",),
                             "steps": ("INT", {"default": 10}), "strength": ("FLOAT", {"default": 0.7}),
                             "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    @torch.no_grad()
    def run(self, model, positive, latent, steps, strength, path):
        comfy.model_management.load_models_gpu([model])
        ms = model.get_model_object("model_sampling")
        dm = copy.deepcopy(model.get_model_object("diffusion_model")).to("cpu", torch.float64)
        lf = model.get_model_object("latent_format")
        ac = (1.0 / (1.0 + ms.sigmas.double().cpu() ** 2))
        n = steps
        k = int(round(strength * n))
        ratio = 1000 // n
        ts = [i * ratio + 1 for i in range(k)]  # ascending 1, 1+ratio, ... (leading + offset 1)
        ctx = positive[0][0].to("cpu", torch.float64)
        z = lf.process_in(latent["samples"].to("cpu", torch.float64))
        a_prev = float(ac[0])
        for t in ts:
            a_t = float(ac[t])
            eps = dm(z, timesteps=torch.tensor([float(t)], dtype=torch.float64), context=ctx)
            x0 = (z - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            z = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
            a_prev = a_t
        # back to ComfyUI's LATENT convention: samples = z / sqrt(ᾱ_t) / scale
        samples = lf.process_out(z / math.sqrt(a_prev))
        return _save(path, {"latent": samples, "timesteps": ts})


class FastDragTestMakeLora:
    """A random LoRA on every attention projection of the UNet, written to models/loras/<name>."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "fastdrag_test_lora.safetensors"}),
                             "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, name, seed):
        g = torch.Generator().manual_seed(seed)
        dm = model.get_model_object("diffusion_model")
        sd, rank = {}, 4
        for mod_name, mod in dm.named_modules():
            if isinstance(mod, torch.nn.Linear) and (".attn1." in mod_name or ".attn2." in mod_name):
                key = "lora_unet_" + mod_name.replace(".", "_")
                sd[key + ".lora_down.weight"] = torch.randn(rank, mod.in_features, generator=g) * 0.05
                sd[key + ".lora_up.weight"] = torch.randn(mod.out_features, rank, generator=g) * 0.05
                sd[key + ".alpha"] = torch.tensor(float(rank))
        path = os.path.join(folder_paths.get_folder_paths("loras")[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file({k: v.contiguous().half() for k, v in sd.items()}, path)
        return {"ui": {"text": [f"{path}: {len(sd) // 3} layers"]}}


class FastDragTestMakeControlNet:
    """A random ControlNet shaped like the loaded UNet, written to models/controlnet/<name>."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "name": ("STRING", {"default": "fastdrag_test_cn.safetensors"}),
                             "seed": ("INT", {"default": 0})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, model, name, seed):
        cfg = dict(model.model.model_config.unet_config)
        for key in ("out_channels",):
            cfg.pop(key, None)
        cfg.update(hint_channels=3, operations=comfy.ops.disable_weight_init, dtype=torch.float32, device="cpu")
        torch.manual_seed(seed)
        cn = comfy.cldm.cldm.ControlNet(**cfg)
        g = torch.Generator().manual_seed(seed)
        sd = {}
        for k, v in cn.state_dict().items():
            sd["control_model." + k] = (torch.randn(v.shape, generator=g) * (0.02 if v.ndim > 1 else 0.0)).half()
        path = os.path.join(folder_paths.get_folder_paths("controlnet")[0], name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_file(sd, path)
        return {"ui": {"text": [f"{path}: {len(sd)} tensors"]}}


NODE_CLASS_MAPPINGS = {
    "FastDragTestSave": FastDragTestSave,
    "FastDragTestRefInvert": FastDragTestRefInvert,
    "FastDragTestMakeLora": FastDragTestMakeLora,
    "FastDragTestMakeControlNet": FastDragTestMakeControlNet,
}

from .dragdiffusion_ref import NODE_CLASS_MAPPINGS as _DD_NODES  # noqa: E402

NODE_CLASS_MAPPINGS.update(_DD_NODES)
