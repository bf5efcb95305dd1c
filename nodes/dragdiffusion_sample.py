"""DragDiffusionSample: DDIM from the edit timestep with DragDiffusion's reference-latent control.

The reference (unedited inverted) latent and the optimised one are sampled as one batch
``[reference, edited]`` through ComfyUI's sampler machinery (``DDIM_SAMPLER`` of FastDragSample);
attn1 replace patches on the controlled transformer blocks give the edited branch the reference
branch's K/V (policy: :class:`fastdrag_core.dragdiffusion_attn.ReferenceAttention`).
"""

from __future__ import annotations

import logging

import torch
from comfy_api.latest import io, ui

import comfy.sample
import comfy.utils

from ..fastdrag_core.dragdiffusion_attn import ReferenceAttention
from .dragdiffusion import dd_supported_model, latent_schedule
from .invert import check_latent, check_model_schedule, warn_noise_mask
from .patches import DDIM_SAMPLER, ReferenceRun, attn1_sites_in_call_order, patch_model_reference, zero_conditioning
from .types import LATENT_TAG

log = logging.getLogger(__name__)
NODE = "DragDiffusionSample"

START_LAYER_HELP = (
    "First controlled transformer block, counting every transformer block of the UNet in call order "
    "(input blocks, middle, output blocks). SD1.x/SD2.x have 16, so 10 (official) = the last six, the "
    "decoder's two highest-resolution attention levels (diffusers up_blocks[2] and [3]); >= 16 = no "
    "control (plain DDIM). Other UNets count their own blocks (the status line says how many).")


class DragDiffusionSample(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="DragDiffusionSample",
            display_name="DragDiffusion Sample (reference-latent control)",
            category="FastDrag/dragdiffusion",
            description="DDIM from the edit timestep to a clean latent, denoising the reference latent "
                        "alongside; in the controlled self-attention layers the edited latent attends to "
                        "the reference's keys and values (DragDiffusion's latent-MasaCtrl).",
            inputs=[
                io.Model.Input("model", tooltip="The model used for the inversion and the drag (patches apply)."),
                io.Conditioning.Input("positive", tooltip="Prompt conditioning (as in FastDragInvert)."),
                io.Latent.Input("latent", tooltip="The optimised latent (DragDiffusionDrag)."),
                io.Latent.Input("reference", tooltip="The inverted, unoptimised latent (FastDragInvert's latent)."),
                io.Int.Input("start_step", default=0, min=0, max=1000,
                             tooltip="First controlled denoising step, counted from the edit timestep "
                                     "(official 0 = every step)."),
                io.Int.Input("start_layer", default=10, min=0, max=1000, tooltip=START_LAYER_HELP),
                io.Float.Input("cfg", default=1.0, min=0.0, max=30.0, step=0.1, round=0.01,
                               tooltip="Classifier-free guidance (official 1: no negative pass). The control "
                                       "applies to the positive and the negative pass alike."),
                io.Conditioning.Input("negative", optional=True,
                                      tooltip="Negative conditioning, used only when cfg != 1."),
            ],
            outputs=[io.Latent.Output("latent", display_name="latent", tooltip="The edited clean latent.")],
        )

    @classmethod
    def execute(cls, model, positive, latent, reference, start_step, start_layer, cfg,
                negative=None) -> io.NodeOutput:
        sm = dd_supported_model(model, NODE)  # refuses other families before any work
        samples = check_latent(latent, NODE)
        ref = check_latent(reference, NODE)
        sched = latent_schedule(latent, NODE)
        ref_sched = latent_schedule(reference, NODE, "reference")
        if tuple(ref.shape) != tuple(samples.shape):
            raise ValueError(f"{NODE}: reference is {list(ref.shape)} but latent is {list(samples.shape)}; "
                             "connect FastDragInvert's latent as reference")
        if not ref_sched.same_as(sched):
            raise ValueError(f"{NODE}: reference was inverted with {ref_sched.describe()} but latent with "
                             f"{sched.describe()}; both must come from the same FastDragInvert")
        check_model_schedule(sm.model_sampling, sched, NODE)
        model = sm.apply(model)  # LCM: the plain eps sampling (an object patch on a clone)
        if sm.note:
            log.info("[FastDrag] %s: %s", NODE, sm.note)
        sites = attn1_sites_in_call_order(model, NODE)
        policy = ReferenceAttention(start_layer=int(start_layer), start_step=int(start_step), num_layers=len(sites))
        steps = len(sched.timesteps)
        controlled = len(policy.controlled_layers(len(sites))) > 0 and policy.start_step < steps
        batch = samples.shape[0]
        run = ReferenceRun(sched, policy)
        if controlled:
            m = patch_model_reference(model, run, sites)
            x = torch.cat([ref.to(samples), samples])
        else:  # nothing is controlled: plain DDIM on the edited latent alone
            m, x = model, samples
        if negative is None:
            negative = zero_conditioning(positive)
        pbar = comfy.utils.ProgressBar(steps)

        def callback(step, x0, xx, total):
            pbar.update_absolute(step + 1, total)

        warn_noise_mask(latent, NODE)
        out = comfy.sample.sample_custom(m, torch.zeros_like(x), cfg, DDIM_SAMPLER, torch.tensor(sched.sigmas),
                                         positive, negative, x, callback=callback, disable_pbar=True, seed=0)
        if controlled:
            out = out[batch:]
            expected_min = len(policy.controlled_layers(len(sites))) * (steps - policy.start_step)
            msg = (f"t={sched.edit_timestep} -> 0 in {steps} steps on {sm.support.describe()}; reference control "
                   f"on blocks {policy.start_layer}-{len(sites) - 1} of {len(sites)} from step {policy.start_step}: "
                   f"{run.controlled_calls} controlled attention calls (>= {expected_min} expected)")
            if run.shadowed:
                msg += (f"; another exact-site attn1 replace hid the control on {len(run.shadowed)} layers, e.g. "
                        f"{sorted(run.shadowed, key=repr)[0]}")
            if run.unexpected_sigmas or run.controlled_calls < expected_min or run.shadowed:
                log.warning("[FastDrag] %s: %s; unexpected sigmas %s", NODE, msg, sorted(run.unexpected_sigmas))
            else:
                log.info("[FastDrag] %s: %s", NODE, msg)
        else:
            msg = (f"t={sched.edit_timestep} -> 0 in {steps} steps on {sm.support.describe()}; no block controlled "
                   f"(start_layer {start_layer} of {len(sites)} blocks, start_step {start_step} of {steps}): plain DDIM")
            log.info("[FastDrag] %s: %s", NODE, msg)
        if sm.note:
            msg = sm.note + "\n" + msg
        out_latent = {k: v for k, v in latent.items() if k != LATENT_TAG}
        out_latent["samples"] = out
        return io.NodeOutput(out_latent, ui=ui.PreviewText(msg))
