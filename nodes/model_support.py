"""Reads a ComfyUI MODEL into the plain description ``fastdrag_core.model_support.decide`` judges, and
provides the model sampling the FastDrag nodes run with.

The rule (one function, :func:`supported_model`, used by FastDragInvert and FastDragSample alike, and by
the DragDiffusion nodes with ``method="DragDiffusion"``, which also refuses the SDXL family):

* SD1.x, SD2.x and SDXL-family models with discrete eps or v-prediction sampling run with their own
  sampling object and latent format;
* with LCM sampling (``ModelSamplingDiscrete(sampling="lcm")``) the nodes put, on their own clone, a
  plain discrete eps model sampling built from the same model config (same betas, full 1000-entry
  table) in its place (an object patch, as the ModelSampling* nodes do): the official code drives the
  LCM UNet exactly so, as an eps model on the 1000-step DDIM schedule;
* everything else is refused before any UNet call (see ``decide``).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch

from . import comfy_adapter
from ..fastdrag_core.model_support import LCM_NOTE, ModelDescription, Support, decide
from .patches import decoder_attn1_sites

log = logging.getLogger(__name__)


class DiscreteEPS(comfy_adapter.base_class("ModelSamplingDiscrete"), comfy_adapter.base_class("EPS")):
    """ComfyUI's plain discrete eps model sampling (what ``ModelSamplingDiscrete(sampling="eps")`` builds)."""


@dataclass(frozen=True)
class SupportedModel:
    """An accepted model: ``support`` (family, prediction, LCM) and ``model_sampling``, the sampling
    object the nodes run with (the model's own, or the plain eps replacement for LCM)."""

    support: Support
    model_sampling: object

    @property
    def note(self) -> str:
        return LCM_NOTE if self.support.lcm else ""

    def apply(self, model_patcher):
        """``model_patcher`` itself, or (LCM) a clone whose model sampling is the plain eps one."""
        if not self.support.lcm:
            return model_patcher
        m = model_patcher.clone()
        m.add_object_patch("model_sampling", self.model_sampling)
        return m


def describe_model(model_patcher) -> ModelDescription:
    """The plain facts ``decide`` needs, read from a MODEL (honours object patches)."""
    ms = model_patcher.get_model_object("model_sampling")
    lf = model_patcher.get_model_object("latent_format")
    dm = model_patcher.get_model_object("diffusion_model")
    config = getattr(getattr(model_patcher, "model", None), "model_config", None)
    try:
        n_attn1 = len(decoder_attn1_sites(model_patcher, "FastDrag"))
    except ValueError:
        n_attn1 = 0
    return ModelDescription(
        family=type(config).__name__ if config is not None else "unknown",
        sampling=tuple(c.__name__ for c in type(ms).__mro__),
        latent_format=type(lf).__name__,
        latent_channels=int(getattr(lf, "latent_channels", 4)),
        latent_dimensions=int(getattr(lf, "latent_dimensions", 2)),
        decoder_attn1=n_attn1,
        denoiser=type(dm).__name__,
        sampling_patched="model_sampling" in getattr(model_patcher, "object_patches", {}),
    )


def _full_table_eps(model_patcher, ms, node: str):
    """The plain discrete eps sampling on the full table of the model whose LCM sampling is ``ms``."""
    full = DiscreteEPS(model_patcher.model.model_config, zsnr=bool(getattr(ms, "zsnr", False)))
    skip = int(getattr(ms, "skip_steps", 0) or 0)
    distilled = ms.sigmas.detach().cpu()
    if skip < 1 or not torch.equal(full.sigmas[skip - 1::skip], distilled):
        raise ValueError(f"{node}: the model's LCM sampling table ({len(distilled)} sigmas) is not a subset of "
                         "its model config's 1000-step schedule; load the checkpoint without the LCM "
                         "ModelSamplingDiscrete node")
    return full


def supported_model(model_patcher, node: str, method: str = "FastDrag") -> SupportedModel:
    """Decide whether ``method``'s nodes (``"FastDrag"`` or ``"DragDiffusion"``, which also refuses the
    SDXL family) run on ``model_patcher`` (ValueError naming the family if not)."""
    support = decide(describe_model(model_patcher), node, method)
    ms = model_patcher.get_model_object("model_sampling")
    if support.lcm:
        ms = _full_table_eps(model_patcher, ms, node)
    return SupportedModel(support, ms)
