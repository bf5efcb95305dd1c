"""Test-only references for the DragBench metric nodes (never shipped).

``FastDragTestDiftRef`` computes DIFT features the way the official ``dift_sd.py`` does, written
independently of the pack's node: the DDPM schedule from SD's scheduler config (scaled_linear
0.00085 -> 0.012, 1000 steps, float64), ``x_t = sqrt(a_t) z + sqrt(1 - a_t) eps`` on the 0.18215-scaled
latent, a direct UNet call at t = 261 (no sampler, no patch) that walks the UNet's blocks itself and
stops after diffusers' ``up_blocks[1]`` of the SD1.5 layout (= after ``output_blocks[5]``), mean over
the ensemble. Saves the features with torch.save.
"""

import os

import torch

import comfy.model_management
from comfy.ldm.modules.diffusionmodules.openaimodel import forward_timestep_embed
from comfy.ldm.modules.diffusionmodules.util import timestep_embedding

SD15_UP1_LAST_OUTPUT_BLOCK = 5  # diffusers up_blocks[1] = ComfyUI output_blocks 3, 4, 5 (SD1.5 layout)


def ddpm_alphas_cumprod():
    betas = torch.linspace(0.00085 ** 0.5, 0.012 ** 0.5, 1000, dtype=torch.float64) ** 2
    return torch.cumprod(1.0 - betas, dim=0)


@torch.no_grad()
def up1_features(dm, x, t, context):
    emb = dm.time_embed(timestep_embedding(torch.full((x.shape[0],), float(t)), dm.model_channels).to(x.dtype))
    opts = {"original_shape": list(x.shape), "transformer_index": 0}
    hs, h = [], x
    for module in dm.input_blocks:
        h = forward_timestep_embed(module, h, emb, context, opts)
        hs.append(h)
    h = forward_timestep_embed(dm.middle_block, h, emb, context, opts)
    for i in range(SD15_UP1_LAST_OUTPUT_BLOCK + 1):
        h = torch.cat([h, hs.pop()], dim=1)
        h = forward_timestep_embed(dm.output_blocks[i], h, emb, context, opts, hs[-1].shape if hs else None)
    return h


class FastDragTestDiftRef:
    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"model": ("MODEL",), "clip": ("CLIP",), "vae": ("VAE",), "source": ("IMAGE",),
                             "edited": ("IMAGE",), "prompt": ("STRING", {"default": ""}),
                             "ensemble": ("INT", {"default": 8}), "seed": ("INT", {"default": 42}),
                             "path": ("STRING", {"default": ""})}}

    RETURN_TYPES = ()
    FUNCTION = "run"
    OUTPUT_NODE = True
    CATEGORY = "FastDragTest"

    @torch.no_grad()
    def run(self, model, clip, vae, source, edited, prompt, ensemble, seed, path):
        cond = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))[0][0]
        comfy.model_management.load_models_gpu([model])
        dm = model.get_model_object("diffusion_model")
        device, dtype = next(dm.parameters()).device, next(dm.parameters()).dtype
        a_t = float(ddpm_alphas_cumprod()[261])
        g = torch.Generator().manual_seed(seed)
        out = {}
        for name, image in (("source", source), ("edited", edited)):  # official order: source noise first
            z0 = vae.encode(image[..., :3]).float().cpu() * 0.18215
            noise = torch.randn((ensemble,) + tuple(z0.shape[1:]), generator=g)
            x_t = a_t ** 0.5 * z0 + (1 - a_t) ** 0.5 * noise
            ctx = cond.to(device, dtype).repeat(ensemble, 1, 1)
            ft = up1_features(dm, x_t.to(device, dtype), 261, ctx)
            out[name] = ft.float().mean(0, keepdim=True).cpu()
        os.makedirs(os.path.dirname(path), exist_ok=True)
        torch.save(out, path)
        return {"ui": {"text": [path]}}


NODES = {"FastDragTestDiftRef": FastDragTestDiftRef}
