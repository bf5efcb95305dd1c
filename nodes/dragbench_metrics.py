"""DragBench metrics as nodes: DragMeanDistance (DIFT point matching) and DragImageFidelity (LPIPS).

They run on ComfyUI's model loading and device. The formulas (matching, noise, image preparation)
are in ``fastdrag_core.metrics``; this module runs the DIFT UNet pass and loads LPIPS.

DIFT pass (``dift_sd.py``): z = VAE latent of the image, E copies noised to t = 261 with the
model's own DDPM schedule, ``x_t = sqrt(a_t) z + sqrt(1 - a_t) eps``, one prompt-conditioned UNet
call, output of ``up_blocks[1]`` averaged over the E copies. It runs as a one-evaluation sampler
through ``comfy.sample.sample_custom``: ComfyUI adds ``sigma_t * eps`` to the scaled latent and
divides by ``sqrt(sigma_t^2 + 1)``, which is exactly that x_t (sigma_t^2 = (1 - a_t) / a_t),
and evaluates the model at timestep 261; LoRA, hooks and other patches apply. The features are
read with :class:`nodes.unet_features.DecoderFeatureTap`.

ComfyUI's VAE encode returns the posterior mean (TAESD has no posterior at all); the official
code samples the posterior. The SD VAE's posterior standard deviation is small next to the
t = 261 noise, and the mean is what every ComfyUI encode gives, so the mean is used.
"""

from __future__ import annotations

import json
import logging
import os
import sys

import torch
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.sample
import comfy.samplers

from ..fastdrag_core import metrics
from ..fastdrag_core import points as fd_points
from .model_support import supported_model
from .unet_features import DecoderFeatureTap, FeaturesReady, feature_entry_block

log = logging.getLogger(__name__)

LPIPS_PIP = "lpips==0.1.4"


def _one_image(image: torch.Tensor, name: str, node: str) -> torch.Tensor:
    if image.ndim != 4 or image.shape[0] != 1:
        raise ValueError(f"{node}: {name} must be one IMAGE [1, H, W, C], got shape {list(image.shape)}")
    return image[0, ..., :3]


def dift_model(model, node: str):
    """(MODEL to run, its model sampling) for DIFT, by the pack's model rule (:func:`supported_model`,
    method ``"DIFT"`` = FastDrag's: SD1.x, SD2.x and SDXL families, eps or v-prediction; flow, EDM, x0 and
    the rest refused by name). An LCM model runs as the plain eps model on the full 1000-step table, the
    DDPM schedule the official ``dift_sd.py`` noises with."""
    sm = supported_model(model, node, method="DIFT")
    if len(sm.model_sampling.sigmas) <= metrics.DIFT_TIMESTEP:
        raise ValueError(f"{node}: DIFT noises to timestep {metrics.DIFT_TIMESTEP}; this model's schedule has "
                         f"only {len(sm.model_sampling.sigmas)} steps")
    return sm.apply(model), sm.model_sampling


def _features_only(model, x, sigmas, extra_args=None, callback=None, disable=None):
    """A k-diffusion-style sampler function that evaluates the model once at ``sigmas[0]``."""
    model(x, sigmas[0] * x.new_ones([x.shape[0]]), **(extra_args or {}))
    return x


@torch.no_grad()
def dift_features(model, ms, positive, latent: torch.Tensor, noise: torch.Tensor, node: str) -> torch.Tensor:
    """Ensemble-mean ``up_blocks[1]`` features [1, C, h, w] of a VAE latent [1, c, h, w] (see module doc);
    ``model`` and its model sampling ``ms`` as :func:`dift_model` gives them."""
    tap = DecoderFeatureTap.for_up_blocks(model.get_model_object("diffusion_model"), [metrics.DIFT_UP_INDEX], node,
                                          stop_when_done=True)  # the decoder after up_blocks[1] is not run
    patched = model.clone()
    patched.set_model_output_block_patch(tap)
    if tuple(noise.shape[1:]) != tuple(latent.shape[1:]):
        raise ValueError(f"{node}: noise {list(noise.shape)} does not fit the latent {list(latent.shape)}")
    latents = latent.repeat(noise.shape[0], 1, 1, 1)
    sigmas = torch.stack([ms.sigmas[metrics.DIFT_TIMESTEP].float().cpu(), torch.zeros(())])
    try:
        comfy.sample.sample_custom(patched, noise, 1.0, comfy.samplers.KSAMPLER(_features_only), sigmas, positive,
                                   positive, latents, disable_pbar=True, seed=0)
    except FeaturesReady:
        pass
    ft = tap.features.get(metrics.DIFT_UP_INDEX)
    if ft is None or ft.shape[0] != noise.shape[0]:
        raise RuntimeError(f"{node}: the UNet call did not give up_blocks[{metrics.DIFT_UP_INDEX}] features for the "
                           f"whole ensemble (got {None if ft is None else list(ft.shape)})")
    return ft.float().mean(0, keepdim=True)


class DragMeanDistance(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragMeanDistance",
            display_name="DragBench Mean Distance (DIFT)",
            category="FastDrag/dragbench",
            description="DragBench's Mean Distance: where DIFT feature matching finds each handle's content in "
                        "the edited image, and its distance in source pixels to the target (lower is better). "
                        "Official protocol: SD 2.1, t = 261, up_blocks[1], ensemble of 8.",
            is_output_node=True,
            inputs=[
                io.Model.Input("model", tooltip="The DIFT model (official: Stable Diffusion 2.1). Any SD1.x / SD2.x "
                                                "/ SDXL UNet works; the numbers are comparable only with the same one."),
                io.Clip.Input("clip", tooltip="The DIFT model's text encoder (the prompt conditions the UNet)."),
                io.Vae.Input("vae", tooltip="The DIFT model's VAE."),
                io.Image.Input("source", tooltip="The original image (the points are in its pixels)."),
                io.Image.Input("edited", tooltip="The edited image; resized to the source size (bilinear, as the "
                                                 "official script) when it differs."),
                io.String.Input("points", default='{"version": 1, "drags": []}',
                                tooltip="The drags (the pack's points JSON or DragBench's flat list), in source "
                                        "pixels; rescaled when width/height differ from the source."),
                io.String.Input("prompt", default="", multiline=True, tooltip="The sample's prompt."),
                io.Int.Input("ensemble", default=metrics.DIFT_ENSEMBLE, min=1, max=64, optional=True,
                             tooltip="Noisy copies averaged (official: 8)."),
                io.Int.Input("seed", default=metrics.DIFT_SEED, min=0, max=2**63 - 1, optional=True,
                             tooltip="Seed of the DIFT noise, per sample (official: seed_everything(42))."),
            ],
            outputs=[
                io.Float.Output("md", tooltip="Mean distance over the drags, in source pixels."),
                io.String.Output("distances", tooltip='JSON list, per drag: {"handle", "target", "matched", '
                                                      '"distance"} (matched = where DIFT found the handle).'),
            ],
        )

    @classmethod
    def execute(cls, model, clip, vae, source, edited, points, prompt, ensemble=metrics.DIFT_ENSEMBLE,
                seed=metrics.DIFT_SEED) -> io.NodeOutput:
        node = "DragMeanDistance"
        src = _one_image(source, "source", node)
        height, width = int(src.shape[0]), int(src.shape[1])
        edt = metrics.resize_like_source(_one_image(edited, "edited", node), height, width)
        try:
            drags = fd_points.parse_points(points).scaled_to(width, height)
            fd_points.check_points_in_image(drags, width, height)
        except ValueError as e:
            raise ValueError(f"{node}: {e} (source is {width}x{height})") from None
        model, ms = dift_model(model, node)  # before any work
        feature_entry_block(model.get_model_object("diffusion_model"), metrics.DIFT_UP_INDEX, node)  # fail early
        positive = clip.encode_from_tokens_scheduled(clip.tokenize(prompt))
        z_src, z_edt = vae.encode(src[None]), vae.encode(edt[None])  # the posterior mean (module doc)
        noise_src, noise_edt = metrics.dift_noise(z_src.shape, ensemble, seed)
        ft_src = dift_features(model, ms, positive, z_src, noise_src, node)
        comfy.model_management.throw_exception_if_processing_interrupted()
        ft_edt = dift_features(model, ms, positive, z_edt, noise_edt, node)
        matches = metrics.match_points(ft_src, ft_edt, drags.handles, drags.targets, (height, width),
                                       check_interrupt=comfy.model_management.throw_exception_if_processing_interrupted)
        md = metrics.mean_distance(matches)
        text = f"MD {md:.2f} px over {len(matches)} drag(s): " + ", ".join(f"{m['distance']:.1f}" for m in matches)
        # "dragbench": the values for HTTP clients (benchmarks/dragbench.py reads them from /history)
        return io.NodeOutput(md, json.dumps(matches), ui={**ui.PreviewText(text).as_dict(),
                                                          "dragbench": ({"md": md, "matches": matches},)})


# ------------------------------------------------------------------------------------------- LPIPS
def alexnet_weights_file() -> tuple[str, str]:
    """(path torchvision loads the AlexNet weights from, URL it downloads them from)."""
    from torchvision.models import AlexNet_Weights

    url = AlexNet_Weights.IMAGENET1K_V1.url
    return os.path.join(torch.hub.get_dir(), "checkpoints", os.path.basename(url)), url


def lpips_model(node: str = "DragImageFidelity"):
    """LPIPS(net='alex') on ComfyUI's device, loaded for this call (no module-level cache: a V3 node's
    execute runs on a fresh class clone; torchvision's 233 MiB AlexNet file loads in 0.7-1 s on CPU from
    the page cache); clear errors when the package or the backbone weights are missing."""
    try:
        import lpips
        path, url = alexnet_weights_file()
    except ImportError as e:
        raise ValueError(f"{node}: Image Fidelity needs the 'lpips' package ({e}). Install it into ComfyUI's "
                         f"Python: {sys.executable} -m pip install {LPIPS_PIP}") from None
    device = comfy.model_management.get_torch_device()
    try:
        return lpips.LPIPS(net="alex", verbose=False).eval().requires_grad_(False).to(device)
    except Exception as e:  # noqa: BLE001  torchvision's download or load failed
        if os.path.exists(path):
            raise ValueError(f"{node}: could not load the AlexNet weights {path} ({type(e).__name__}: {e}); "
                             f"replace the file with {url}") from None
        raise ValueError(f"{node}: LPIPS needs torchvision's AlexNet weights and could not download them "
                         f"({type(e).__name__}: {e}). Download {url} and put it at {path} (the torch hub "
                         f"checkpoints folder; TORCH_HOME moves it).") from None


class DragImageFidelity(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragImageFidelity",
            display_name="DragBench Image Fidelity (LPIPS)",
            category="FastDrag/dragbench",
            description="DragBench's Image Fidelity: 1 - LPIPS (AlexNet) between the source and the edited image, "
                        "both resized to 224x224 (higher = closer to the source).",
            is_output_node=True,
            inputs=[
                io.Image.Input("source", tooltip="The original image."),
                io.Image.Input("edited", tooltip="The edited image; resized to the source size first (bilinear, "
                                                 "as the official script) when it differs."),
            ],
            outputs=[io.Float.Output("fidelity", tooltip="1 - LPIPS.")],
        )

    @classmethod
    def execute(cls, source, edited) -> io.NodeOutput:
        node = "DragImageFidelity"
        src = _one_image(source, "source", node)
        edt = metrics.resize_like_source(_one_image(edited, "edited", node), int(src.shape[0]), int(src.shape[1]))
        model = lpips_model(node)
        device = next(model.parameters()).device
        with torch.no_grad():
            distance = float(model(metrics.lpips_input(src).to(device), metrics.lpips_input(edt).to(device)).item())
        fidelity = 1.0 - distance
        return io.NodeOutput(fidelity, ui={**ui.PreviewText(f"IF {fidelity:.4f} (LPIPS {distance:.4f})").as_dict(),
                                           "dragbench": ({"if": fidelity, "lpips": distance},)})
