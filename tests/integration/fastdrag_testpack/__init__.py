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
import comfy.model_sampling
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
                             "image": ("IMAGE",), "kv_tensors": ("BOOLEAN", {"default": False})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, path, latent=None, mask=None, kv=None, image=None, kv_tensors=False):
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
            out["kv_writes"], out["kv_repeats"] = kv.writes, kv.repeats
            if kv_tensors:
                out["kv"] = {(tuple(k[0]), k[1], k[2]): tuple(t.cpu().clone() for t in kv.get(*k)) for k in kv.keys()}
        return _save(path, out)


class FastDragTestRefInvert:
    """Official DDIM inversion (fastdrag-method.md §1.5) in float64, UNet called directly.

    eps-prediction UNets give eps; v-prediction UNets give v, and eps = sqrt(abar_t)·v + sqrt(1 - abar_t)·z_t
    (diffusers' DDIM ``pred_epsilon`` for ``prediction_type="v_prediction"``). SDXL's extra input y
    (pooled text + size embedding) is built as ComfyUI's samplers do (``extra_conds``)."""

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
        v_pred = isinstance(ms, comfy.model_sampling.V_PREDICTION)
        dm = copy.deepcopy(model.get_model_object("diffusion_model")).to("cpu", torch.float64)
        lf = model.get_model_object("latent_format")
        ac = (1.0 / (1.0 + ms.sigmas.double().cpu() ** 2))
        n = steps
        k = int(round(strength * n))
        ratio = 1000 // n
        ts = [i * ratio + 1 for i in range(k)]  # ascending 1, 1+ratio, ... (leading + offset 1)
        z = lf.process_in(latent["samples"].to("cpu", torch.float64))
        emb, opts = positive[0]
        params = dict(opts, cross_attn=emb, device="cpu", noise=z, width=z.shape[3] * 8, height=z.shape[2] * 8,
                      prompt_type="positive")
        conds = model.model.extra_conds(**params)
        ctx = conds["c_crossattn"].cond.to("cpu", torch.float64)
        extra = {"y": conds["y"].cond.to("cpu", torch.float64)} if "y" in conds else {}
        a_prev = float(ac[0])
        for t in ts:
            a_t = float(ac[t])
            out = dm(z, timesteps=torch.tensor([float(t)], dtype=torch.float64), context=ctx, **extra)
            eps = math.sqrt(a_t) * out + math.sqrt(1 - a_t) * z if v_pred else out
            x0 = (z - math.sqrt(1 - a_prev) * eps) / math.sqrt(a_prev)
            z = math.sqrt(a_t) * x0 + math.sqrt(1 - a_t) * eps
            a_prev = a_t
        # back to ComfyUI's LATENT convention: samples = z / sqrt(abar_t) / scale
        samples = lf.process_out(z / math.sqrt(a_prev))
        return _save(path, {"latent": samples, "timesteps": ts, "v_pred": v_pred, "has_y": bool(extra)})


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


# Calls of FastDragTestAttn1Replace patches, by tag: {tag: {"calls": int, "k_sums": [float, ...],
# "blocks": [(block name, id), ...], "k_halves_equal": [bool, ...]}} (per call; halves of the batch).
# Module-level on purpose (test pack only): the patches are deep-copied by ModelPatcher.clone and the
# report node must read what every copy counted.
ATTN1_CALLS = {}


class FastDragTestAttn1Replace:
    """Another pack's attn1 replace on every decoder self-attention layer, as packs install them:
    ``site`` = (block, id, transformer_index) keys, ``block`` = (block, id) keys. It computes plain
    attention times ``scale`` and counts its calls under ``tag``, with the sum of the K it was given, the
    block it ran in, and whether the two halves of the batch got equal K (DragDiffusionSample's
    [reference, edited] batch)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "t"}),
                             "mode": (["site", "block"],), "scale": ("FLOAT", {"default": 1.0})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "FastDragTest"

    def run(self, model, tag, mode, scale):
        from comfy.ldm.modules.attention import SpatialTransformer, optimized_attention

        record = ATTN1_CALLS.setdefault(tag, {"calls": 0, "k_sums": [], "blocks": [], "k_halves_equal": []})

        def replace(q, k, v, extra_options):
            record["calls"] += 1
            record["k_sums"].append(float(k.double().sum()))
            record["blocks"].append(tuple(extra_options.get("block", ())))
            half = k.shape[0] // 2
            record["k_halves_equal"].append(bool(k.shape[0] % 2 == 0 and torch.equal(k[:half], k[half:])))
            return optimized_attention(q, k, v, extra_options["n_heads"]) * scale

        m = model.clone()
        dm = m.get_model_object("diffusion_model")
        for i, blk in enumerate(dm.output_blocks):
            for layer in blk:
                if isinstance(layer, SpatialTransformer):
                    if mode == "block":
                        m.set_model_attn1_replace(replace, "output", i)
                    else:
                        for j in range(len(layer.transformer_blocks)):
                            m.set_model_attn1_replace(replace, "output", i, j)
        return (m,)


class FastDragTestAttn1Report:
    """Writes the calls FastDragTestAttn1Replace counted under ``tag`` (after ``latent`` is computed)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "tag": ("STRING", {"default": "t"}),
                             "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, latent, tag, path):
        rec = ATTN1_CALLS.get(tag, {"calls": 0, "k_sums": [], "blocks": [], "k_halves_equal": []})
        return _save(path, {k: (list(v) if isinstance(v, list) else v) for k, v in rec.items()})


_NODES = {  # see the end of the file
    "FastDragTestSave": FastDragTestSave,
    "FastDragTestRefInvert": FastDragTestRefInvert,
    "FastDragTestMakeLora": FastDragTestMakeLora,
    "FastDragTestMakeControlNet": FastDragTestMakeControlNet,
    "FastDragTestAttn1Replace": FastDragTestAttn1Replace,
    "FastDragTestAttn1Report": FastDragTestAttn1Report,
}

from .dragbench_ref import NODES as _DRAGBENCH_REF_NODES  # noqa: E402  (DragBench metric references)

_NODES.update(_DRAGBENCH_REF_NODES)

from .dragdiffusion_ref import NODES as _DD_NODES  # noqa: E402

_NODES.update(_DD_NODES)

from .object_move_ref import NODES as _OBJECT_MOVE_NODES  # noqa: E402

_NODES.update(_OBJECT_MOVE_NODES)

from .flow_ref import NODES as _FLOW_NODES  # noqa: E402  (Flux / SD3 references)

_NODES.update(_FLOW_NODES)

from .device_peak import NODES as _PEAK_NODES  # noqa: E402  (benchmarks/device_check.py)

_NODES.update(_PEAK_NODES)

from .memory_probe import NODES as _MEMORY_NODES  # noqa: E402  (live tensors, weights in the loops)

_NODES.update(_MEMORY_NODES)

# ComfyUI reads a V1 pack's NODE_CLASS_MAPPINGS; built from _NODES (not a dict literal) so that registry
# tooling reading the repository statically (comfy-test coverage) does not count these test-only nodes
# as the pack's (tests/test_registry_tooling.py)
NODE_CLASS_MAPPINGS = dict(_NODES)
