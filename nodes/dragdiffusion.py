"""DragDiffusionDrag: DragDiffusion's latent optimisation (motion supervision + point tracking) on the
inverted latent, with gradients through ComfyUI's own model.

The loop runs as a k-diffusion sampler function through ``comfy.sample.sample_custom`` (like the
training node ``comfy_extras/nodes_train.py`` runs its training loop as a sampler): ComfyUI loads
and patches the model (LoRAs, weight patches, ControlNet conds and model patches all apply), and the
sampler function calls the wrapped model with gradients on. The decoder features come from
:class:`nodes.unet_features.DecoderFeatureTap` (an ``output_block_patch``); the maths is
:func:`fastdrag_core.dragdiffusion.optimise_latent`.
"""

from __future__ import annotations

import json
import logging
import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F
from comfy_api.latest import io, ui

import comfy.model_management
import comfy.sample
import comfy.samplers
import comfy.utils

from ..fastdrag_core import dragdiffusion as dd
from ..fastdrag_core import points as core_points
from . import comfy_adapter
from ..fastdrag_core.frozen_weights import FrozenWeights, frozen_parameters
from .invert import check_latent, check_model_schedule
from .model_support import SupportedModel, supported_model
from .patches import zero_conditioning
from .types import LATENT_TAG, DragSpec, FastDragDrag
from .unet_features import DecoderFeatureTap

log = logging.getLogger(__name__)
NODE = "DragDiffusionDrag"
FEATURE_UP_BLOCK = 2  # diffusers up_blocks[2]: official unet_feature_idx 3 of [mid, up0, up1, up2, up3]
BACKWARD_MEMORY_FACTOR = 4  # reserve ~4x ComfyUI's inference estimate for forward + backward


# -- checks shared by the DragDiffusion nodes -------------------------------------------------------

def dd_supported_model(model, node: str) -> SupportedModel:
    """The pack's one model rule (:func:`nodes.model_support.supported_model`) for the DragDiffusion
    nodes, called before any work: SD1.x and SD2.x UNets, eps or v-prediction, discrete time; LCM
    sampling runs as the plain eps model on the full 1000-step table (``SupportedModel.apply``), as in
    FastDragInvert, so the latent's schedule tag and the model's sigmas agree. SDXL-family models are
    refused by name: the method's supervision feature (diffusers ``up_blocks[2]``) and controlled
    attention layers (transformer blocks 10-15 of 16) are positions in the SD1.5 UNet, which SDXL's
    (no attention in ``up_blocks[2]``, 70 transformer blocks) does not have."""
    return supported_model(model, node, method="DragDiffusion")


def latent_schedule(latent, node: str, name: str = "latent"):
    """The FastDrag schedule tag FastDragInvert puts on its latent (the edit timestep comes from it)."""
    tag = latent.get(LATENT_TAG) if isinstance(latent, dict) else None
    sched = tag.get("schedule") if isinstance(tag, dict) else None
    if sched is None:
        raise ValueError(f"{node}: {name} has no FastDrag schedule tag, so its timestep is unknown; connect "
                         "the latent output of FastDragInvert (or of FastDragWarp / FastDragBNNI after it), "
                         "not a plain VAEEncode / KSampler latent")
    return sched


@dataclass(frozen=True)
class DragGeometry:
    """A drag mapped onto the DragDiffusion grids of one latent.

    handles / targets: float32 [N, 2] (row, col) on the feature grid (half the encoded image);
    mask: bool [h, w] latent mask (True = editable) or None; image_hw: the encoded (cropped) image
    size; offset: (y0, x0) of that crop in the drag's image; size: (H, W) of the drag's image.
    """

    handles: torch.Tensor
    targets: torch.Tensor
    mask: Optional[torch.Tensor]
    image_hw: tuple
    offset: tuple
    size: tuple

    @property
    def feature_hw(self) -> tuple:
        return dd.feature_grid_size(self.image_hw)

    def points_json(self, handles_rc: torch.Tensor, spec: DragSpec) -> str:
        """Points JSON (FastDragPoints' format, pixels of the drag's image): the given feature-grid
        handles, each with its original target."""
        xy = dd.feature_grid_to_image(handles_rc, self.image_hw)
        y0, x0 = self.offset
        handles = tuple((round(float(x) + x0, 3), round(float(y) + y0, 3)) for x, y in xy)
        return core_points.DragPoints(handles, spec.targets, spec.width, spec.height).to_json()


def drag_geometry(spec, latent_hw, node: str) -> DragGeometry:
    """Map a FASTDRAG_DRAG onto the latent's grids by the official DragDiffusion rules.

    The encoded image is the drag's image cropped like VAEEncode (8h x 8w, centred); points shift
    with the crop, then ``row = round(y / H * H//2)`` on the feature grid; the mask is nearest-resized
    to the feature grid, then to the latent. A handle that rounds onto the grid's far edge (the last
    pixel row/column of an even-sized image) is moved one cell in, where the official code fails.
    """
    if not isinstance(spec, DragSpec):
        raise ValueError(f"{node}: drag must be a FASTDRAG_DRAG from FastDragPoints, got {type(spec).__name__}")
    h, w = int(latent_hw[0]), int(latent_hw[1])
    if (h, w) != (spec.height // 8, spec.width // 8):
        raise ValueError(f"{node}: the latent is {w}x{h} (an image of {8 * w}x{8 * h} px) but the drag points "
                         f"belong to a {spec.width}x{spec.height} image; give FastDragPoints the image that "
                         "was encoded")
    y0, x0, kept_h, kept_w = core_points.vae_crop((spec.height, spec.width))
    shifted = core_points.DragPoints(tuple((x - x0, y - y0) for x, y in spec.handles),
                                     tuple((x - x0, y - y0) for x, y in spec.targets), kept_w, kept_h)
    try:
        core_points.check_points_in_image(shifted, kept_w, kept_h)
    except ValueError as e:
        raise ValueError(f"{node}: {e} (after VAEEncode's centred crop of {spec.width}x{spec.height} to "
                         f"{kept_w}x{kept_h})") from None
    hs, ts = shifted.as_tensors()
    handles = dd.points_to_feature_grid(hs, (kept_h, kept_w))
    targets = dd.points_to_feature_grid(ts, (kept_h, kept_w))
    h2, w2 = dd.feature_grid_size((kept_h, kept_w))
    handles[:, 0].clamp_(0, h2 - 1)
    handles[:, 1].clamp_(0, w2 - 1)
    mask = None
    if spec.mask is not None:
        mask = dd.mask_to_latent(spec.mask[y0:y0 + kept_h, x0:x0 + kept_w], (kept_h, kept_w), (h, w))
        if not bool(mask.any()):
            raise ValueError(f"{node}: the mask ({int(spec.mask.sum())} px) covers no latent cell at {w}x{h} "
                             "by DragDiffusion's nearest rule; paint a larger editable region, or leave the "
                             "mask unconnected (no mask = no regularisation)")
    return DragGeometry(handles, targets, mask, (kept_h, kept_w), (y0, x0), (spec.height, spec.width))


@dataclass
class DragJob:
    """Everything the sampler function needs for one node run (passed through KSAMPLER's options)."""

    tap: DecoderFeatureTap
    geometry: DragGeometry
    settings: dd.DragSettings
    reference: Optional[torch.Tensor]  # LATENT samples of the unedited latent, or None
    on_iteration: Callable
    result: Optional[dd.DragResult] = None
    weights: FrozenWeights = field(default_factory=FrozenWeights)
    iteration_times: list = field(default_factory=list)


def sample_dragdiffusion(model, x, sigmas, extra_args=None, callback=None, disable=None, job: DragJob = None):
    """The drag loop as a k-diffusion sampler function.

    ``sigmas`` = [sigma_t, sigma_{t-1}]; ``x`` = z_t·sqrt(sigma_t²+1) in model space (ComfyUI's convention).
    Optimises z_t (official: ``init_code``), with x_{t-1}(z) = sqrt(abar_{t-1}) x_hat0 + sqrt(1 - abar_{t-1}) eps
    from ComfyUI's denoised x_hat0 and eps = (x - x_hat0)/sigma_t. Returns the optimised x at sigma_t.

    The UNet's weights take part as constants: :func:`fastdrag_core.frozen_weights.frozen_parameters`
    gives each one, for the loop only, a stand-in on the same memory that autograd may save and that
    does not require grad (ComfyUI's weights are inference tensors that require grad). No weight is
    copied; every original Parameter is back in place when the loop ends, on any path out."""
    extra_args = {} if extra_args is None else extra_args
    base_model = comfy_adapter.sampler_base_model(model, NODE)  # KSamplerX0Inpaint -> CFGGuider -> BaseModel
    device = x.device
    sigma, sigma_prev = float(sigmas[0]), float(sigmas[1])
    scale_in = math.sqrt(sigma * sigma + 1.0)
    a_prev = 1.0 / (1.0 + sigma_prev * sigma_prev)
    sup_hw = job.geometry.feature_hw

    def forward(z):
        x_in = z * scale_in
        job.tap.clear()
        denoised = model(x_in, sigmas[0] * x_in.new_ones([x_in.shape[0]]), **extra_args)
        feat = job.tap.features.get(FEATURE_UP_BLOCK)
        if feat is None:
            raise RuntimeError(f"{NODE}: the decoder feature (up_blocks[{FEATURE_UP_BLOCK}]) was not recorded; "
                               "another model patch skipped the UNet's output blocks")
        feat = F.interpolate(feat.float(), size=sup_hw, mode="bilinear")
        eps = (x_in - denoised) / sigma
        x_prev = math.sqrt(a_prev) * denoised + math.sqrt(1.0 - a_prev) * eps
        return x_prev.float(), feat

    with torch.inference_mode(False), torch.enable_grad(), \
            frozen_parameters(base_model.diffusion_model) as weights:
        job.weights = weights
        z = (x.detach().clone().float() / scale_in)
        ref = None
        if job.reference is not None:
            ref = base_model.process_latent_in(job.reference.to(device).clone().float()) / scale_in
        job.result = dd.optimise_latent(forward, z, job.geometry.handles, job.geometry.targets,
                                        job.geometry.mask, job.settings, reference=ref,
                                        compute_dtype=unet_compute_dtype(base_model),
                                        on_iteration=job.on_iteration)
        if job.result.steps_taken == 0:  # nothing moved: hand back x itself, not z * scale_in rounded
            return x
        out = job.result.z.to(x.dtype) * scale_in
    return out.detach()


def unet_compute_dtype(base_model) -> torch.dtype:
    """The dtype ComfyUI's UNet computes in: the manual-cast dtype when weights are stored in another
    one (e.g. ``--fp16-unet`` on a CPU: fp16 weights, float32 compute), else the weights' dtype."""
    return base_model.manual_cast_dtype or base_model.get_dtype()


def _mib(n: Optional[int]) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.0f} MiB"


class DragDiffusionDrag(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragDiffusionDrag",
            display_name="DragDiffusion Drag (latent optimisation)",
            category="FastDrag/dragdiffusion",
            description="DragDiffusion's latent optimisation: Adam on the inverted latent with motion "
                        "supervision on UNet decoder features and point tracking, until the handles reach "
                        "their targets (SD1.x / SD2.x models).",
            inputs=[
                io.Model.Input("model", tooltip="The model used for FastDragInvert (optionally with the "
                                                "DragDiffusionLoRA); LoRAs and model patches apply."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (as in FastDragInvert)."),
                io.Latent.Input("latent", tooltip="The inverted latent from FastDragInvert (official: steps 50, "
                                                  "strength 0.7 -> t = 681); its schedule tag gives the timestep. "
                                                  "May be FastDragWarp/BNNI's warped latent (connect reference)."),
                FastDragDrag.Input("drag", tooltip="Drag points and optional mask (FastDragPoints) of the encoded "
                                                   "image. A mask adds the regulariser that keeps the rest fixed."),
                io.Int.Input("steps", default=80, min=1, max=1000,
                             tooltip="Maximum iterations (official n_pix_step 80); each is one UNet forward + "
                                     "backward. Stops earlier when every handle is within 2 feature pixels "
                                     "(4 image pixels) of its target."),
                io.Float.Input("learning_rate", default=0.01, min=1e-5, max=1.0, step=0.001, round=1e-5,
                               tooltip="Adam learning rate on the latent (official 0.01; the authors suggest "
                                       "0.02-0.04 for speed at some quality cost)."),
                io.Float.Input("lam", default=0.1, min=0.0, max=100.0, step=0.01,
                               tooltip="Weight of the mask regulariser |x_{t-1}(z) - x_{t-1}(z0)| outside the "
                                       "mask (official 0.1; raise it to keep the outside fixed). Used only "
                                       "when the drag has a mask."),
                io.Int.Input("r_m", default=1, min=0, max=16,
                             tooltip="Motion-supervision patch radius in feature pixels (official 1: 3x3)."),
                io.Int.Input("r_p", default=3, min=0, max=32,
                             tooltip="Point-tracking search radius in feature pixels (official 3: 7x7)."),
                io.Latent.Input("reference", optional=True,
                                tooltip="Optional: the unedited inverted latent, when `latent` was already moved "
                                        "(e.g. by FastDragWarp). The handle features and the mask anchor come "
                                        "from it, and the first iteration looks for each handle along its path."),
            ],
            outputs=[
                io.Latent.Output("latent", display_name="latent",
                                 tooltip="The optimised latent z_t (same schedule tag) for DragDiffusionSample."),
                io.String.Output("points", display_name="points",
                                 tooltip="Where point tracking ended: points JSON (FastDragPoints' format, "
                                         "image pixels) with each tracked handle and its target."),
            ],
        )

    @classmethod
    def execute(cls, model, positive, latent, drag, steps, learning_rate, lam, r_m, r_p,
                reference=None) -> io.NodeOutput:
        sm = dd_supported_model(model, NODE)  # refuses other families before any work
        samples = check_latent(latent, NODE)
        sched = latent_schedule(latent, NODE)
        if samples.shape[0] != 1:
            raise ValueError(f"{NODE}: latent is a batch of {samples.shape[0]}; DragDiffusion edits one image")
        if int(steps) < 1:
            raise ValueError(f"{NODE}: steps must be at least 1, got {steps}")
        ref_samples = None
        if reference is not None:
            ref_samples = check_latent(reference, NODE)
            ref_sched = latent_schedule(reference, NODE, "reference")
            if tuple(ref_samples.shape) != tuple(samples.shape) or not ref_sched.same_as(sched):
                raise ValueError(f"{NODE}: reference ({list(ref_samples.shape)}, {ref_sched.describe()}) is not the "
                                 f"same inversion as latent ({list(samples.shape)}, {sched.describe()})")
        check_model_schedule(sm.model_sampling, sched, NODE)
        geometry = drag_geometry(drag, samples.shape[-2:], NODE)
        try:
            settings = dd.DragSettings(steps=int(steps), lr=float(learning_rate), lam=float(lam), r_m=int(r_m),
                                       r_p=int(r_p))
        except ValueError as e:
            raise ValueError(f"{NODE}: {e}") from None

        tap = DecoderFeatureTap.for_up_blocks(model.get_model_object("diffusion_model"), [FEATURE_UP_BLOCK], NODE)
        m = sm.apply(model).clone()  # LCM: the plain eps sampling as an object patch
        m.set_model_output_block_patch(tap)
        if sm.note:
            log.info("[FastDrag] %s: %s", NODE, sm.note)
        pbar = comfy.utils.ProgressBar(settings.steps)
        job = DragJob(tap=tap, geometry=geometry, settings=settings, reference=ref_samples, on_iteration=None)
        t_last = [time.perf_counter()]

        def on_iteration(i, result):
            now = time.perf_counter()
            job.iteration_times.append(now - t_last[0])
            t_last[0] = now
            pbar.update_absolute(settings.steps if result.reached else i + 1, settings.steps)
            comfy.model_management.throw_exception_if_processing_interrupted()

        job.on_iteration = on_iteration
        sigmas = torch.tensor([sched.sigmas[0], sched.sigmas[1]])
        with torch.inference_mode(False):  # weights loaded to the device now are ordinary tensors (not cloned)
            comfy.model_management.load_models_gpu(
                [m], memory_required=BACKWARD_MEMORY_FACTOR * m.model.memory_required(list(samples.shape)))
        sampler = comfy.samplers.KSAMPLER(sample_dragdiffusion, extra_options={"job": job})
        try:
            out = comfy.sample.sample_custom(m, torch.zeros_like(samples), 1.0, sampler, sigmas, positive,
                                             zero_conditioning(positive), samples, disable_pbar=True, seed=0)
        finally:
            tap.clear()  # the last feature map holds the last iteration's autograd graph
        res = job.result
        times = job.iteration_times[1:] or job.iteration_times  # the first includes warm-up
        msg = (f"t={sched.edit_timestep}: {res.iterations} iterations, {res.steps_taken} Adam steps, "
               + ("handles reached their targets" if res.reached else "stopped at the step limit")
               + f"; handles (row, col) {res.history[0].int().tolist()} -> {res.handles.int().tolist()}, "
               f"targets {geometry.targets.int().tolist()} on the {geometry.feature_hw[1]}x{geometry.feature_hw[0]} "
               f"feature grid; {statistics.median(times):.3f} s/iteration (median); UNet weights requiring grad "
               f"in the loop: {job.weights.requires_grad} of {job.weights.total}; weights copied for the loop "
               f"{_mib(job.weights.copied_bytes)}"
               + (f"; {res.skipped_steps} fp16 steps skipped by the loss scaler (inf/NaN gradient)"
                  if res.skipped_steps else ""))
        log.info("[FastDrag] %s: %s", NODE, msg)
        if sm.note:
            msg = sm.note + "\n" + msg
        log.debug("[FastDrag] %s: handles per iteration %s", NODE, json.dumps([h.int().tolist() for h in res.history]))
        out_latent = dict(latent)
        out_latent["samples"] = out
        return io.NodeOutput(out_latent, geometry.points_json(res.handles, drag), ui=ui.PreviewText(msg))
