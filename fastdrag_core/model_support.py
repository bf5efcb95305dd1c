"""Which diffusion models FastDrag's maths covers, decided from a plain description of the model.

Pure Python (no ComfyUI import): ``nodes/model_support.py`` reads a ComfyUI MODEL into a
:class:`ModelDescription`; :func:`decide` accepts it (returning :class:`Support`) or raises
``ValueError`` with a message naming the node, the model family, what is supported and what to change.

FastDrag needs (fastdrag-method.md §1.5-§1.6, §4):

* a discrete-time diffusion model with a table of abar_t (ComfyUI: ``ModelSamplingDiscrete``, sigma_t =
  sqrt((1 - abar_t)/abar_t)), because the official DDIM inversion and sampling step between table entries;
* a prediction ComfyUI turns into x_hat_0, so that eps = (x - x_hat_0)/sigma: eps and v-prediction (ComfyUI's wrapped
  model returns x_hat_0 for both; x0 / img_to_img sampling are not accepted);
* self-attention layers in a UNet decoder (the K/V of the consistency-preserving strategy);
* a 4-channel image latent of the SD1.x or SDXL VAE (the warp moves latent cells; scale from the model).

That is SD1.x, SD2.x (eps and v) and the SDXL family (eps and v fine-tunes). LCM sampling
(``ModelSamplingDiscrete(sampling="lcm")``: a 50-entry distilled table and LCM's boundary condition)
is accepted and replaced by the plain eps model on the full table, as the official code drives the LCM
UNet. Continuous-time EDM (Playground 2.5, CosXL, SVD), flow matching (SD3, Flux and newer), Stable
Cascade, video, non-4-channel latents and transformer (DiT) denoisers are refused, with one exception:

FastDrag (``method="FastDrag"`` only) also accepts the flow-matching DiTs **Flux.1** (dev, schnell and
their fine-tunes: ComfyUI's ``Flux`` / ``FluxSchnell`` configs, ``ModelSamplingFlux``) and **SD3.x**
(``SD3``, ``ModelSamplingDiscreteFlow``), both with CONST (velocity) prediction and 16-channel latents:
the inversion integrates the flow ODE on the model's own sigmas, and the K/V of the image tokens of
their joint-attention blocks replace the UNet decoder's (docs/flux-sd3.md). Every other DiT family
(Flux.2, Flux Fill, Chroma, Qwen-Image, HiDream, Lumina, AuraFlow, WAN, ...) stays refused by name.

The DragDiffusion nodes use the same rule (``method="DragDiffusion"``; LCM handled the same way, so their
timesteps match the latent's schedule tag from FastDragInvert) and also refuse the SDXL family, whose UNet
lacks the SD1.5 positions the method is defined on. DragMeanDistance (``"DIFT"``) and DragDiffusionLoRA
(``"the identity LoRA"``) take FastDrag's rule.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

__all__ = ["ModelDescription", "Support", "decide", "LCM_NOTE", "family_label", "METHODS"]

LCM_NOTE = ("LCM sampling detected: FastDrag runs the UNet as a plain eps model on the 1000-step DDIM "
            "schedule, as the official code")

SUPPORTED = ("SD1.x, SD2.x (eps and v-prediction) and SDXL-family (eps and v-prediction) checkpoints, "
             "and the flow-matching DiTs Flux.1 (dev, schnell) and SD3.x")
UNET_SUPPORTED = "SD1.x, SD2.x (eps and v-prediction) and SDXL-family (eps and v-prediction) checkpoints"
DRAGDIFFUSION_SUPPORTED = "SD1.x and SD2.x (eps and v-prediction) checkpoints"

# What each method's nodes accept (the message names it). DragDiffusion is FastDrag's rule without the
# SDXL family: its supervision feature (diffusers up_blocks[2]) and its controlled self-attention layers
# (transformer blocks 10-15 of 16) are positions in the SD1.5 UNet, which SD2.x shares and SDXL lacks.
METHODS = {"FastDrag": SUPPORTED, "DragDiffusion": DRAGDIFFUSION_SUPPORTED,
           "DIFT": UNET_SUPPORTED,  # DragBench's Mean Distance (DragMeanDistance): FastDrag's UNet rule
           "the identity LoRA": UNET_SUPPORTED}  # DragDiffusionLoRA: trains on SDXL too (DragDiffusionEdit refuses it)

# ComfyUI model config class names -> what users call them (anything else is shown as it is).
_FAMILY_LABELS = {
    "SD15": "SD1.x", "SD15_instructpix2pix": "SD1.x InstructPix2Pix",
    "SD20": "SD2.x", "SD21UnclipL": "SD2.1 unCLIP", "SD21UnclipH": "SD2.1 unCLIP", "LotusD": "Lotus (SD2.x)",
    "SDXL": "SDXL", "SDXLRefiner": "SDXL refiner", "SSD1B": "SSD-1B (SDXL family)",
    "Segmind_Vega": "Segmind Vega (SDXL family)", "KOALA_700M": "KOALA-700M (SDXL family)",
    "KOALA_1B": "KOALA-1B (SDXL family)", "SDXL_instructpix2pix": "SDXL InstructPix2Pix",
    "SVD_img2vid": "Stable Video Diffusion", "SV3D_u": "SV3D", "SV3D_p": "SV3D",
    "SD3": "SD3", "Flux": "Flux", "FluxSchnell": "Flux schnell", "AuraFlow": "AuraFlow",
    "Stable_Cascade_C": "Stable Cascade (stage C)", "Stable_Cascade_B": "Stable Cascade (stage B)",
    "PixArtAlpha": "PixArt-alpha", "PixArtSigma": "PixArt-Sigma", "HunyuanDiT": "Hunyuan-DiT",
    "Flux2": "Flux.2", "FluxInpaint": "Flux Fill (inpainting)", "Chroma": "Chroma", "ChromaRadiance": "Chroma Radiance",
    "QwenImage": "Qwen-Image", "HiDream": "HiDream", "Lumina2": "Lumina 2", "HunyuanImage21": "HunyuanImage 2.1",
    "Omnigen2": "OmniGen2", "CosmosT2IPredict2": "Cosmos Predict2",
}

# Flow-matching DiT families FastDrag runs on (config class name -> what the message calls them), with the
# model sampling class, latent format and denoiser class each must have (anything else is refused).
FLOW_FAMILIES = {"Flux": "Flux.1", "FluxSchnell": "Flux.1 schnell", "SD3": "SD3.x"}
_FLOW_SAMPLING = {"Flux": "ModelSamplingFlux", "FluxSchnell": "ModelSamplingFlux", "SD3": "ModelSamplingDiscreteFlow"}
_FLOW_DENOISERS = {"Flux": ("Flux",), "FluxSchnell": ("Flux",), "SD3": ("OpenAISignatureMMDITWrapper", "MMDiT")}

_FLOW = ("CONST", "ModelSamplingDiscreteFlow", "ModelSamplingFlux", "COSMOS_RFLOW", "ModelSamplingCosmosRFlow")
_EDM = ("EDM", "ModelSamplingContinuousEDM", "ModelSamplingContinuousV", "ModelSamplingDiscreteEDM")


def family_label(config_name: str) -> str:
    return _FAMILY_LABELS.get(config_name, config_name or "unknown model")


@dataclass(frozen=True)
class ModelDescription:
    """What :func:`decide` looks at.

    Attributes:
        family: the model config class name (``"SD15"``, ``"SDXL"``, ``"SD20"``, ``"Flux"``, ...).
        sampling: class names of the model sampling object's MRO (its table class and prediction mixin),
            e.g. ``("ModelSampling", "ModelSamplingDiscrete", "Module", "V_PREDICTION", "EPS", "object")``.
        sampling_patched: True when a node replaced the checkpoint's own model sampling (object patch).
        latent_format: latent format class name (``"SD15"``, ``"SDXL"``, ``"SD3"``, ...).
        latent_channels, latent_dimensions: of that latent format (4 and 2 for SD images).
        decoder_attn1: self-attention layers in the UNet decoder; 0 when the denoiser has no UNet decoder.
        denoiser: class name of the diffusion model (``"UNetModel"``, ``"MMDiT"``, ...).
    """

    family: str
    sampling: tuple[str, ...]
    latent_format: str
    latent_channels: int
    latent_dimensions: int
    decoder_attn1: int
    denoiser: str = "UNetModel"
    sampling_patched: bool = False


@dataclass(frozen=True)
class Support:
    """An accepted model: ``prediction`` is ``"eps"``, ``"v_prediction"`` or ``"flow"`` (Flux.1 / SD3.x:
    CONST velocity prediction on a flow-matching schedule); ``lcm`` = the model's LCM sampling is replaced
    by the plain discrete eps model on the full table (see :data:`LCM_NOTE`)."""

    family: str
    prediction: str
    lcm: bool = False

    @property
    def flow(self) -> bool:
        """True for the flow-matching DiTs (Flux.1, SD3.x)."""
        return self.prediction == "flow"

    def describe(self) -> str:
        return f"{family_label(self.family)}, {self.prediction}" + (" (LCM sampling replaced)" if self.lcm else "")


def _sampling_name(desc: ModelDescription) -> str:
    names = [n for n in desc.sampling if n not in ("object", "Module", "ModelSampling", "ModelSamplingAdvanced")]
    return "+".join(names[:3]) or "none"


def decide(desc: ModelDescription, node: str, method: str = "FastDrag") -> Support:
    """Accept ``desc`` or raise ``ValueError('<node>: <family> ... is not supported ...; <what to change>')``.

    ``method`` names the nodes asking (see :data:`METHODS`): ``"FastDrag"``; ``"DragDiffusion"`` (the same
    rule, LCM included, and SDXL-family UNets refused); ``"DIFT"`` (DragMeanDistance) and ``"the identity
    LoRA"`` (DragDiffusionLoRA), both FastDrag's rule. Messages name it."""
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; one of {sorted(METHODS)}")
    fam = family_label(desc.family)
    what = f"{fam} model"
    change = ("remove the model sampling node in front of it" if desc.sampling_patched
              else "use one of those checkpoints")

    def refuse(why: str, fix: Optional[str] = None) -> ValueError:
        return ValueError(f"{node}: this {what} {why}; {method} supports {METHODS[method]}: {fix or change}")

    if method == "FastDrag" and desc.family in FLOW_FAMILIES and desc.latent_dimensions == 2:
        return _decide_flow(desc, refuse)
    if desc.latent_dimensions != 2:
        kind = "video" if desc.latent_dimensions == 3 else "audio or 3-D"
        raise refuse(f"is a {kind} model ({desc.latent_dimensions}-D latents of format {desc.latent_format}), "
                     "not an image model", "use an image checkpoint")
    if desc.latent_channels != 4:
        raise refuse(f"uses {desc.latent_channels}-channel latents (format {desc.latent_format}, as SD3, Flux "
                     f"and newer), {method} works on 4-channel SD/SDXL VAE latents", "use an image checkpoint of "
                     "those families")
    s = set(desc.sampling)
    sampling = _sampling_name(desc)
    needs = "FastDrag's DDIM inversion needs" if method == "FastDrag" else f"{method} needs"
    if s & set(_FLOW):
        raise refuse(f"uses flow-matching sampling ({sampling}, as SD3, Flux, AuraFlow and newer); {needs} a "
                     "discrete eps or v-prediction schedule")
    if s & set(_EDM):
        raise refuse(f"uses continuous-time EDM sampling ({sampling}, as Playground 2.5, CosXL or Stable Video "
                     f"Diffusion); {needs} the discrete 1000-step schedule")
    if "StableCascadeSampling" in s:
        raise refuse(f"uses Stable Cascade sampling ({sampling})")
    if "IMG_TO_IMG" in s:
        raise refuse(f"uses img_to_img sampling ({sampling}), which has no noise schedule to invert")
    if "X0" in s:
        raise refuse(f"predicts x0 directly ({sampling}); {method} needs eps or v-prediction",
                     "remove the ModelSamplingDiscrete(x0) node or choose eps / v_prediction there"
                     if desc.sampling_patched else None)
    if "ModelSamplingDiscrete" not in s or not s & {"EPS", "V_PREDICTION"}:
        raise refuse(f"uses an unknown model sampling ({sampling}); {method} needs ComfyUI's discrete eps or "
                     "v-prediction sampling")
    prediction = "v_prediction" if "V_PREDICTION" in s else "eps"
    lcm = "ModelSamplingDiscreteDistilled" in s
    if desc.latent_format not in ("SD15", "SDXL"):
        raise refuse(f"uses {desc.latent_format} latents; {method} supports the SD1.x/SD2.x (SD15) and SDXL "
                     "latent formats")
    if desc.decoder_attn1 <= 0:
        raise refuse(f"has no self-attention layers in a UNet decoder (denoiser {desc.denoiser}); "
                     + ("FastDrag's consistency strategy stores the K/V of those layers" if method == "FastDrag"
                        else f"{method} needs a Stable Diffusion UNet"))
    if method == "DragDiffusion" and desc.latent_format == "SDXL":
        raise refuse("is an SDXL-family UNet: DragDiffusion's supervision feature (the output of diffusers' "
                     "up_blocks[2]) and its controlled self-attention layers (transformer blocks 10-15 of 16) "
                     "are positions in the SD1.5 UNet, which SDXL's does not have (its up_blocks[2] has no "
                     "attention, it has 70 transformer blocks), and no official setting exists to transfer",
                     "use an SD1.x or SD2.x checkpoint, or FastDrag (FastDragEdit) on this one")
    return Support(family=desc.family, prediction=prediction, lcm=lcm)


def _decide_flow(desc: ModelDescription, refuse) -> Support:
    """A Flux.1 / SD3.x model: its own flow sampling (any shift), CONST prediction, 16-channel latents of
    its own format and its own DiT; anything else (e.g. a ModelSamplingDiscrete node in front) is refused."""
    s = set(desc.sampling)
    want = _FLOW_SAMPLING[desc.family]
    if want not in s or "CONST" not in s:
        raise refuse(f"uses {_sampling_name(desc)} sampling; FastDrag runs {FLOW_FAMILIES[desc.family]} on its "
                     f"flow-matching sampling ({want} with CONST prediction)")
    if desc.latent_channels != 16 or desc.latent_format not in ("Flux", "SD3"):
        raise refuse(f"uses {desc.latent_channels}-channel {desc.latent_format} latents; FastDrag runs "
                     f"{FLOW_FAMILIES[desc.family]} on its 16-channel latents")
    if desc.denoiser not in _FLOW_DENOISERS[desc.family]:
        raise refuse(f"has the denoiser {desc.denoiser}; FastDrag captures K/V in the joint-attention blocks "
                     f"of {' / '.join(_FLOW_DENOISERS[desc.family])}")
    return Support(family=desc.family, prediction="flow")
