"""Test-only nodes for FastDrag on flow-matching DiTs (Flux.1, SD3.x). Never shipped.

* ``FastDragTestNarrowFlux``: a Flux.1 model of ComfyUI's own classes (config ``supported_models.Flux``,
  ``model_base.Flux``, ModelSamplingFlux, latent format Flux) at width 256 (2 heads x 128: Flux's head
  width and RoPE axes), 2 double + 2 single blocks, random weights. ComfyUI's detection fixes Flux's
  width at 3072 (24 heads), so a loader-detected Flux has >= 535M parameters (tiny_flux, 1.5 s per call
  on one CPU thread); this one runs the same code at a fraction of the cost.
* ``FastDragTestRefFlow``: float64 reference written from the equations, calling the DiT directly:
  the schedule from the shift formulas (Flux: e^mu / (e^mu + 1/t - 1); SD3: s t / (1 + (s - 1) t)) at
  ComfyUI's ``simple`` scheduler's times t_i = (T - floor(i T / n)) / T; Euler inversion x_{i+1} = x_i +
  v(x_i, sigma_{i+1}) (sigma_{i+1} - sigma_i); the image tokens' V (and K) of every block recorded at each sigma by
  forward hooks on the blocks' qkv projections (not the product's attention hooks); Euler sampling down
  from a given latent, replacing those projections' image-token V (and K) of the kept blocks by the
  recorded ones (the same tensor before / after QK-norm and RoPE, which are per token).
* ``FastDragTestMakeVAE16``: a random 16-channel TAESD VAE (ComfyUI detects it from its keys) in
  models/vae, for FastDragEdit on these 16-channel models.
"""

import math
import os

import torch

import comfy.latent_formats
import comfy.model_management
import comfy.model_patcher
import comfy.model_sampling
import comfy.supported_models
import folder_paths


def _save(path, obj):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(obj, path)
    return {"ui": {"text": [path]}}


def _fill(sd, seed, out_keys=("final_layer.linear",)):
    """make_tiny_dit.py's init: uniform +-1/sqrt(fan_in), norms near 1, output layer x 0.1."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, v in sd.items():
        if v.dim() >= 2:
            t = (torch.rand(v.shape, generator=g) * 2 - 1) / (v[0].numel() ** 0.5)
        else:
            t = torch.rand(v.shape, generator=g) * 0.1 + (1.0 if ("norm" in k or "scale" in k) and not k.endswith("bias") else 0.0)
        if any(k.startswith(o) for o in out_keys):
            t = t * 0.1
        out[k] = t.contiguous()
    return out


class FastDragTestNarrowFlux:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0}), "depth": ("INT", {"default": 2}),
                             "depth_single": ("INT", {"default": 2})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "FastDragTest"

    def run(self, seed, depth, depth_single):
        unet_config = {"image_model": "flux", "in_channels": 16, "out_channels": 16, "vec_in_dim": 768,
                       "context_in_dim": 768, "hidden_size": 256, "mlp_ratio": 4.0, "num_heads": 2, "depth": depth,
                       "depth_single_blocks": depth_single, "axes_dim": [16, 56, 56], "theta": 10000, "patch_size": 2,
                       "qkv_bias": True, "guidance_embed": True, "txt_ids_dims": []}
        config = comfy.supported_models.Flux(unet_config)
        config.set_inference_dtype(torch.float32, None)
        model = config.get_model({}, "")
        dm = model.diffusion_model
        dm.load_state_dict(_fill(dm.state_dict(), 20261209 + seed))
        return (comfy.model_patcher.ModelPatcher(model, load_device=comfy.model_management.get_torch_device(),
                                                 offload_device=comfy.model_management.unet_offload_device()),)


def reference_sigmas(ms, steps):
    """ComfyUI's ``simple`` schedule from the shift formulas, float64, descending, ending at 0."""
    if isinstance(ms, comfy.model_sampling.ModelSamplingFlux):
        table, mu = 10000, float(ms.shift)
        def sigma(t):
            return math.exp(mu) / (math.exp(mu) + (1.0 / t - 1.0))
    else:
        table, s = 1000, float(ms.shift)
        def sigma(t):
            return s * t / (1.0 + (s - 1.0) * t)
    return [sigma((table - int(i * table / steps)) / table) for i in range(steps)] + [0.0]


def _rope_float64(xq, xk, freqs_cis):
    """Flux's RoPE as ComfyUI's pure-PyTorch fallback (comfy/ldm/flux/math.py), in any dtype: comfy_kitchen's
    kernel refuses float64, so the reference swaps this in while it runs (test pack only)."""
    def one(x):
        x_ = x.to(dtype=freqs_cis.dtype).reshape(*x.shape[:-1], -1, 1, 2)
        out = freqs_cis[..., 0] * x_[..., 0] + freqs_cis[..., 1] * x_[..., 1]
        return out.reshape(*x.shape).type_as(x)
    return one(xq), one(xk)


def _qkv_modules(dm, txt_len):
    """(layer id, qkv Linear, image-token slice of its output) of every block, in call order."""
    if hasattr(dm, "double_blocks"):
        return ([(("double_block", i), b.img_attn.qkv, slice(0, None)) for i, b in enumerate(dm.double_blocks)]
                + [(("single_block", i), b.linear1, slice(txt_len, None)) for i, b in enumerate(dm.single_blocks)])
    return [(("double_block", i), b.x_block.attn.qkv, slice(0, None)) for i, b in enumerate(dm.joint_blocks)]


class FastDragTestRefFlow:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "positive": ("CONDITIONING",), "latent": ("LATENT",),
                             "start": ("LATENT",), "steps": ("INT", {"default": 4}),
                             "strength": ("FLOAT", {"default": 0.5}),
                             "keep": (["none", "v_last_third", "kv_all"],), "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    @torch.no_grad()
    def run(self, model, positive, latent, start, steps, strength, keep, path):
        comfy.model_management.load_models_gpu([model])
        ms = model.get_model_object("model_sampling")
        lf = model.get_model_object("latent_format")
        import copy
        dm = copy.deepcopy(model.get_model_object("diffusion_model")).to("cpu", torch.float64)
        hidden = dm.hidden_size if hasattr(dm, "hidden_size") else dm.joint_blocks[0].x_block.attn.qkv.out_features // 3
        flux = hasattr(dm, "double_blocks")
        z0 = lf.process_in(latent["samples"].to("cpu", torch.float64))
        emb, opts = positive[0]
        conds = model.model.extra_conds(**dict(opts, cross_attn=emb, device="cpu", noise=z0, width=z0.shape[3] * 8,
                                               height=z0.shape[2] * 8, prompt_type="positive"))
        ctx = conds["c_crossattn"].cond.to("cpu", torch.float64)
        extra = {"y": conds["y"].cond.to("cpu", torch.float64)}
        if "guidance" in conds:
            extra["guidance"] = conds["guidance"].cond.to("cpu", torch.float64)
        multiplier = 1.0 if flux else float(ms.multiplier)

        def velocity(x, s):
            return dm(x, torch.tensor([s * multiplier], dtype=torch.float64), context=ctx, **extra)

        sig = reference_sigmas(ms, steps)
        k = min(steps, max(1, int(round(strength * steps))))
        sig = sig[-(k + 1):]  # sigma_k, ..., sigma_1, 0
        modules = _qkv_modules(dm, ctx.shape[1])
        n = len(modules)
        kept = {"none": [], "v_last_third": [m[0] for m in modules[n - math.ceil(n / 3):]],
                "kv_all": [m[0] for m in modules]}[keep]
        keep_k = keep == "kv_all"
        recorded = {}  # (layer, label) -> (K, V) image tokens of the qkv output, [B, N, hidden]
        state = {"label": None, "mode": "record"}

        def hook(layer, tokens):
            def fn(mod, inp, out):
                key = (layer, state["label"])
                if state["mode"] == "record":
                    recorded[key] = (out[:, tokens, hidden:2 * hidden].clone(), out[:, tokens, 2 * hidden:3 * hidden].clone())
                    return None
                if layer not in kept:
                    return None
                out = out.clone()
                rk, rv = recorded[key]
                out[:, tokens, 2 * hidden:3 * hidden] = rv
                if keep_k:
                    out[:, tokens, hidden:2 * hidden] = rk
                return out
            return fn

        handles = [mod.register_forward_hook(hook(layer, tokens)) for layer, mod, tokens in modules]
        import comfy.ldm.flux.math as flux_math
        saved_rope = flux_math.apply_rope
        flux_math.apply_rope = _rope_float64
        try:
            up = sig[::-1]  # 0, sigma_1, ..., sigma_k
            x = z0
            for i in range(k):
                state["label"] = i + 1
                x = x + velocity(x, up[i + 1]) * (up[i + 1] - up[i])
            inverted = lf.process_out(x / (1.0 - sig[0]))
            state["mode"] = "inject"
            x = lf.process_in(start["samples"].to("cpu", torch.float64)) * (1.0 - sig[0])
            for i in range(k):
                state["label"] = k - i
                x = x + velocity(x, sig[i]) * (sig[i + 1] - sig[i])
            sampled = lf.process_out(x)
        finally:
            flux_math.apply_rope = saved_rope
            for h in handles:
                h.remove()
        return _save(path, {"inverted": inverted, "sampled": sampled, "sigmas": sig, "kept": kept,
                            "recorded_v": {key: v for key, (_, v) in recorded.items()}, "hidden": hidden})


class FastDragTestMakeVAE16:
    """A random 16-channel TAESD VAE written to models/vae/<name> (ComfyUI's VAE loader detects TAESD from
    ``taesd_decoder.1.weight`` and its latent channels from that weight)."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"name": ("STRING", {"default": "fastdrag_test_vae16.safetensors"})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, name):
        from safetensors.torch import save_file

        import comfy.taesd.taesd
        path = os.path.join(folder_paths.get_folder_paths("vae")[0], name)
        if not os.path.exists(path):
            m = comfy.taesd.taesd.TAESD(latent_channels=16)  # comfy ops: parameters left uninitialised
            sd = {f"taesd_encoder.{k}": v for k, v in m.taesd_encoder.state_dict().items()}
            sd.update({f"taesd_decoder.{k}": v for k, v in m.taesd_decoder.state_dict().items()})
            g = torch.Generator().manual_seed(16)
            sd = {k: ((torch.rand(v.shape, generator=g) * 2 - 1) * (3.0 / v[0].numel()) ** 0.5 if v.dim() > 1
                      else torch.zeros(v.shape)) for k, v in sd.items()}
            sd.update(vae_scale=torch.tensor(1.0), vae_shift=torch.tensor(0.0))
            os.makedirs(os.path.dirname(path), exist_ok=True)
            save_file({k: v.contiguous() for k, v in sd.items()}, path)
        return {"ui": {"text": [path]}}


# Calls counted by FastDragTestDiTPatches, by tag (module-level on purpose, test pack only: ModelPatcher.clone
# copies patch objects, and the report node must read what every copy counted).
DIT_CALLS = {}


class FastDragTestDiTPatches:
    """Another pack's DiT hooks: a pass-through block replace on every joint / double block and a
    pass-through ``optimized_attention_override``, each counting its calls under ``tag``."""

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "tag": ("STRING", {"default": "t"})}}

    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"
    CATEGORY = "FastDragTest"

    def run(self, model, tag):
        rec = DIT_CALLS.setdefault(tag, {"blocks": 0, "attention": 0})

        def block(args, extra):
            rec["blocks"] += 1
            return extra["original_block"](args)

        def override(func, *args, **kwargs):
            rec["attention"] += 1
            return func(*args, **kwargs)

        m = model.clone()
        dm = m.get_model_object("diffusion_model")
        n = len(dm.joint_blocks) if hasattr(dm, "joint_blocks") else len(dm.double_blocks)
        for i in range(n):
            m.set_model_patch_replace(block, "dit", "double_block", i)
        m.model_options.setdefault("transformer_options", {})["optimized_attention_override"] = override
        return (m,)


class FastDragTestDiTReport:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent": ("LATENT",), "tag": ("STRING", {"default": "t"}),
                             "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    def run(self, latent, tag, path):
        return _save(path, dict(DIT_CALLS.get(tag, {})))


NODES = {"FastDragTestDiTPatches": FastDragTestDiTPatches, "FastDragTestDiTReport": FastDragTestDiTReport,
                       "FastDragTestNarrowFlux": FastDragTestNarrowFlux, "FastDragTestRefFlow": FastDragTestRefFlow,
                       "FastDragTestMakeVAE16": FastDragTestMakeVAE16}
